"""Vector stores for page embeddings: Qdrant (embedded local mode or a Qdrant server, one URI switch) and an
in-memory brute-force store (the baseline the benchmark compares against, and a dependency-free default).

Qdrant scores ColBERT late interaction natively (a multivector named ``colbert`` with the MAX_SIM comparator),
so a page's per-token vectors are stored as one point and searched without any client-side rescoring.

URIs:
    ``./pages.qdrant`` or ``file:///data/pages``  embedded Qdrant on disk (no server; one process at a time)
    ``:memory:``                                  embedded Qdrant in memory
    ``http://host:6333`` / ``qdrant://host:6333``  a Qdrant server or cluster (same client code)
    ``memory://``                                 brute force in this process (torch, no Qdrant)
    Append ``?collection=NAME`` to any of them (default ``pages``); ``?api_key=...`` for a server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import torch
from torch import Tensor

from nemo_eagle.embed import scoring

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "pages"
SINGLE_VECTOR, MULTI_VECTOR = "dense", "colbert"


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


def point_id(key: str) -> str:
    """A stable point id for a page key (Qdrant takes UUIDs): the same page always maps to the same point."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def _as_list(vector: Tensor | Sequence) -> list:
    return vector.detach().float().cpu().tolist() if isinstance(vector, Tensor) else list(vector)


class StoreCorrupt(RuntimeError):
    """An embedded Qdrant folder that cannot be read back as it was written."""


def check_local_store(path: Path) -> None:
    """Check an embedded Qdrant folder's files before the client opens it: the client silently recreates an
    empty table in a 0-byte or missing storage file, which loses every page without a word. A missing or empty
    folder is a new store; anything else that is not a readable store raises ``StoreCorrupt`` naming the folder
    and the fix."""
    if not path.is_dir() or not [p for p in path.iterdir() if p.name != ".lock"]:
        return
    fix = f"remove {path} (or pass another --db) and re-run `nemo-eagle index` to rebuild it"
    meta = path / "meta.json"
    if not meta.is_file():
        if (path / "collection").exists():
            raise StoreCorrupt(f"the vector store at {path} is damaged: meta.json is missing; {fix}")
        raise StoreCorrupt(f"{path} is not an embedded Qdrant store (it holds other files but no meta.json); "
                           "pass a new or empty folder, or the folder `nemo-eagle index` wrote")
    try:
        collections = json.loads(meta.read_text())["collections"]
        names = list(collections)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise StoreCorrupt(f"the vector store at {path} is damaged: meta.json is unreadable "
                           f"({type(e).__name__}: {e}); {fix}") from e
    for name in names:
        problem = _storage_problem(path / "collection" / str(name) / "storage.sqlite")
        if problem:
            raise StoreCorrupt(f"the vector store at {path} is damaged: collection {name!r} {problem}; {fix}")


def _storage_problem(storage: Path) -> str | None:
    if not storage.is_file():
        return f"has no storage file ({storage.name} is missing)"
    if storage.stat().st_size == 0:
        return f"has an empty storage file ({storage.name} is 0 bytes)"
    try:  # read-only: never let the check itself repair (and so hide) a damaged file
        with contextlib.closing(sqlite3.connect(storage.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='points'").fetchone() is None:
                return f"has a storage file without its points table ({storage.name})"
            db.execute("SELECT count(*) FROM points").fetchone()
    except sqlite3.Error as e:
        return f"has a storage file that is not a readable SQLite database ({storage.name}: {e})"
    return None


class QdrantStore:
    """Pages in one Qdrant collection, single- or multi-vector; the same code for local mode and a server."""

    def __init__(self, client: Any, collection: str = DEFAULT_COLLECTION, *, location: str = ""):
        self.client = client
        self.collection = collection
        self.location = location

    @classmethod
    def open(cls, target: dict[str, Any], collection: str) -> QdrantStore:
        try:
            from qdrant_client import QdrantClient
        except ImportError as e:
            raise ImportError("the vector store needs qdrant-client: pip install 'nemo-eagle[retrieval]' "
                              "(in Python, open_store('memory://') is an in-process brute-force store)") from e
        location = target.get("url") or target.get("path") or target.get("location")
        if "path" in target:
            check_local_store(Path(target["path"]))
            Path(target["path"]).mkdir(parents=True, exist_ok=True)
        try:
            client = QdrantClient(**target)
        except RuntimeError as e:  # local mode: another process holds the folder
            raise RuntimeError(f"cannot open the vector store at {location}: {e}") from e
        except Exception as e:  # local mode: points that no longer unpickle, a file damaged past the checks above
            if "path" not in target:
                raise
            raise StoreCorrupt(f"the vector store at {location} is damaged ({type(e).__name__}: {e}); remove it "
                               "(or pass another --db) and re-run `nemo-eagle index` to rebuild it") from e
        return cls(client, collection, location=str(location))

    # ----------------------------------------------------------------------------------------- schema
    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection))

    def ensure(self, dim: int, multi: bool, metadata: dict[str, Any] | None = None) -> None:
        """Create the collection, or check that an existing one has this vector layout."""
        from qdrant_client import models

        if self.exists():
            have = self.layout()
            if have["dim"] != dim or have["multi"] != multi:
                raise ValueError(
                    f"collection {self.collection!r} at {self.location} holds {have['dim']}-d "
                    f"{'multi' if have['multi'] else 'single'}-vector points, but this embedder makes {dim}-d "
                    f"{'multi' if multi else 'single'}-vector ones; use another --db or collection")
            return
        params = models.VectorParams(
            size=dim,
            distance=models.Distance.DOT,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
            if multi
            else None,
            # Multivectors are scored by exact MaxSim over all pages (as ColBERT rerankers do): an HNSW graph
            # over every token vector costs far more to build than it saves at page-collection sizes.
            hnsw_config=models.HnswConfigDiff(m=0) if multi else None,
        )
        self.client.create_collection(
            self.collection,
            vectors_config={MULTI_VECTOR if multi else SINGLE_VECTOR: params},
            metadata=metadata or None,
        )
        log.info("created collection %r at %s (%d-d, %s-vector)", self.collection, self.location, dim,
                 "multi" if multi else "single")

    def layout(self) -> dict[str, Any]:
        info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        name, params = next(iter(vectors.items()))
        return {"dim": int(params.size), "multi": params.multivector_config is not None, "vector_name": name,
                "metadata": dict(getattr(info.config, "metadata", None) or {})}

    # ------------------------------------------------------------------------------------------ write
    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids or not self.exists():
            return set()
        found = self.client.retrieve(self.collection, ids=list(ids), with_payload=False, with_vectors=False)
        return {str(p.id) for p in found}

    def upsert(self, ids: Sequence[str], vectors: Sequence[Any], payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_client import models

        name = self.layout()["vector_name"]
        points = [
            models.PointStruct(id=i, vector={name: _as_list(v)}, payload=p) for i, v, p in zip(ids, vectors, payloads)
        ]
        self.client.upsert(self.collection, points=points, wait=True)

    # ------------------------------------------------------------------------------------------- read
    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count) if self.exists() else 0

    def payloads(self, batch: int = 256) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's (id, payload)."""
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=batch, offset=offset, with_payload=True,
                                                with_vectors=False)
            for p in points:
                yield str(p.id), dict(p.payload or {})
            if offset is None:
                return

    def search(self, query: Tensor | Sequence, top_k: int = 10) -> list[Hit]:
        """Best ``top_k`` points for a (D,) single vector or a (T, D) multi-vector query."""
        layout = self.layout()
        res = self.client.query_points(self.collection, query=_as_list(query), using=layout["vector_name"],
                                       limit=top_k, with_payload=True)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def close(self) -> None:
        self.client.close()


class MemoryStore:
    """Brute-force exact search in this process (no persistence): the baseline and the no-dependency store."""

    def __init__(self, collection: str = DEFAULT_COLLECTION):
        self.collection = collection
        self.location = "memory://"
        self._dim: int | None = None
        self._multi = False
        self._metadata: dict[str, Any] = {}
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._vectors: list[Tensor] = []
        self._payloads: list[dict[str, Any]] = []
        self._matrix: tuple[Tensor, Tensor | None] | None = None  # stacked / padded vectors, rebuilt after writes

    def exists(self) -> bool:
        return self._dim is not None

    def ensure(self, dim: int, multi: bool, metadata: dict[str, Any] | None = None) -> None:
        if self._dim is not None and (self._dim, self._multi) != (dim, multi):
            raise ValueError(f"store holds {self._dim}-d {'multi' if self._multi else 'single'}-vector points, "
                             f"got {dim}-d {'multi' if multi else 'single'}-vector")
        self._dim, self._multi, self._metadata = dim, multi, dict(metadata or self._metadata)

    def layout(self) -> dict[str, Any]:
        return {"dim": self._dim, "multi": self._multi, "vector_name": MULTI_VECTOR if self._multi else SINGLE_VECTOR,
                "metadata": dict(self._metadata)}

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return {i for i in ids if i in self._index}

    def upsert(self, ids: Sequence[str], vectors: Sequence[Any], payloads: Sequence[dict[str, Any]]) -> None:
        self._matrix = None
        for i, v, p in zip(ids, vectors, payloads):
            v = v.detach().float().cpu() if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float32)
            if i in self._index:
                self._vectors[self._index[i]], self._payloads[self._index[i]] = v, dict(p)
            else:
                self._index[i] = len(self._ids)
                self._ids.append(i)
                self._vectors.append(v)
                self._payloads.append(dict(p))

    def count(self) -> int:
        return len(self._ids)

    def payloads(self, batch: int = 256) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from zip(self._ids, self._payloads)

    def search(self, query: Tensor | Sequence, top_k: int = 10) -> list[Hit]:
        if not self._ids:
            return []
        q = query.detach().float().cpu() if isinstance(query, Tensor) else torch.tensor(query, dtype=torch.float32)
        if self._matrix is None:
            self._matrix = scoring.pad_multi(self._vectors) if self._multi else (torch.stack(self._vectors), None)
        docs, mask = self._matrix
        if self._multi:
            scores = scoring.maxsim(q[None], torch.ones(1, q.shape[0], dtype=torch.bool), docs, mask)[0]
        else:
            scores = q @ docs.T
        top = torch.topk(scores, min(top_k, len(self._ids)))
        return [
            Hit(self._ids[i], float(s), dict(self._payloads[i]))
            for s, i in zip(top.values.tolist(), top.indices.tolist())
        ]

    def close(self) -> None:
        pass


def parse_uri(uri: str) -> tuple[str, dict[str, Any], str]:
    """``uri`` -> (kind, QdrantClient kwargs, collection). kind is ``memory``, ``local`` or ``server``."""
    if not uri:
        raise ValueError("empty vector-store URI")
    base, _, query = uri.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(opts) - {"collection", "api_key"}
    if unknown:
        raise ValueError(f"unknown vector-store URI option(s) {sorted(unknown)} in {uri!r}; known: collection, api_key")
    collection = opts.get("collection", DEFAULT_COLLECTION)
    if base == "memory://":
        return "memory", {}, collection
    if base == ":memory:":
        return "local", {"location": ":memory:"}, collection
    scheme = urlsplit(base).scheme
    if scheme in ("http", "https", "qdrant"):
        url = "http" + base[len("qdrant"):] if scheme == "qdrant" else base
        kwargs: dict[str, Any] = {"url": url}
        if "api_key" in opts:
            kwargs["api_key"] = opts["api_key"]
        return "server", kwargs, collection
    if scheme == "file":
        base = urlsplit(base).path
    elif scheme and len(scheme) > 1:
        raise ValueError(f"unsupported vector-store URI scheme {scheme!r} in {uri!r}; use a path, :memory:, "
                         "memory://, http(s)://host:port or qdrant://host:port")
    return "local", {"path": str(Path(base).expanduser())}, collection


def open_store(uri: str) -> QdrantStore | MemoryStore:
    """Open the store a URI names (see the module docstring)."""
    kind, kwargs, collection = parse_uri(uri)
    if kind == "memory":
        return MemoryStore(collection)
    return QdrantStore.open(kwargs, collection)
