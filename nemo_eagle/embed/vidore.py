"""Retrieval metrics (nDCG@k, recall@k, MRR@k as trec_eval / BEIR compute them) and ViDoRe-format datasets.

A dataset folder holds ``queries.jsonl`` (``query-id``, ``query``), ``corpus.jsonl`` (``corpus-id`` and ``image``,
a path relative to the folder, and/or ``text``) and ``qrels.jsonl`` (``query-id``, ``corpus-id``, ``score``) or a
BEIR ``qrels.tsv`` / ``qrels/test.tsv`` with a header line. These are the columns of the ViDoRe benchmark sets.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------------ metrics


def ndcg_at_k(ranked: Sequence[str], relevance: dict[str, float], k: int) -> float:
    """nDCG@k with linear gain (trec_eval's ndcg_cut, used by BEIR/MTEB/ViDoRe): sum rel_i / log2(i + 1)."""
    dcg = sum(relevance.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: dict[str, float], k: int) -> float:
    """Share of the relevant documents (score > 0) found in the top ``k``."""
    relevant = {d for d, r in relevance.items() if r > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], relevance: dict[str, float], k: int) -> float:
    """1 / rank of the first relevant document within the top ``k`` (0 when none is there)."""
    for i, d in enumerate(ranked[:k]):
        if relevance.get(d, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(run: dict[str, Sequence[str]], qrels: dict[str, dict[str, float]], ks: Sequence[int] = (1, 5, 10)
             ) -> dict[str, float]:
    """Mean metrics over the queries that have at least one relevant document.

    Args:
        run: query id -> document ids, best first.
        qrels: query id -> {document id: graded relevance}.
    """
    judged = [q for q, rel in qrels.items() if any(r > 0 for r in rel.values())]
    if not judged:
        raise ValueError("qrels hold no query with a relevant document")
    missing = [q for q in judged if q not in run]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no ranking (first: {missing[0]!r})")
    out: dict[str, float] = {}
    for k in ks:
        for name, fn in (("ndcg", ndcg_at_k), ("recall", recall_at_k), ("mrr", mrr_at_k)):
            out[f"{name}@{k}"] = sum(fn(run[q], qrels[q], k) for q in judged) / len(judged)
    return out


# ------------------------------------------------------------------------------------------------ dataset


@dataclass
class RetrievalDataset:
    queries: dict[str, str]
    corpus: dict[str, Any]  # corpus id -> an embedder input (an image Path, text, or an (image, text) pair)
    qrels: dict[str, dict[str, float]]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
    return rows


def _field(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    for n in names:
        if n in row:
            return row[n]
    raise ValueError(f"{where}: missing field {names[0]!r} (or one of {list(names[1:])})")


def load_dataset(root: str | Path) -> RetrievalDataset:
    """Read a ViDoRe-format folder (see the module docstring)."""
    root = Path(root)
    for name in ("queries.jsonl", "corpus.jsonl"):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root} is not a ViDoRe-format dataset: {name} is missing")
    queries = {}
    for i, row in enumerate(_read_jsonl(root / "queries.jsonl"), 1):
        queries[str(_field(row, ("query-id", "_id", "id"), f"queries.jsonl row {i}"))] = str(
            _field(row, ("query", "text"), f"queries.jsonl row {i}"))
    corpus: dict[str, Any] = {}
    for i, row in enumerate(_read_jsonl(root / "corpus.jsonl"), 1):
        cid = str(_field(row, ("corpus-id", "_id", "id"), f"corpus.jsonl row {i}"))
        image, text = row.get("image"), row.get("text") or ""
        if image is None and not text:
            raise ValueError(f"corpus.jsonl row {i} ({cid}): needs 'image' or 'text'")
        if image is not None:
            path = root / image
            if not path.exists():
                raise FileNotFoundError(f"corpus.jsonl row {i} ({cid}): image {path} not found")
            corpus[cid] = (path, text) if text else path
        else:
            corpus[cid] = text
    qrels: dict[str, dict[str, float]] = {}
    for qid, cid, score in _read_qrels(root):
        if qid not in queries:
            raise ValueError(f"qrels name query {qid!r}, which queries.jsonl lacks")
        if cid not in corpus:
            raise ValueError(f"qrels name document {cid!r}, which corpus.jsonl lacks")
        qrels.setdefault(qid, {})[cid] = score
    return RetrievalDataset(queries, corpus, qrels)


def _read_qrels(root: Path) -> list[tuple[str, str, float]]:
    if (root / "qrels.jsonl").exists():
        return [(str(_field(r, ("query-id",), "qrels")), str(_field(r, ("corpus-id",), "qrels")),
                 float(r.get("score", 1))) for r in _read_jsonl(root / "qrels.jsonl")]
    for tsv in (root / "qrels.tsv", root / "qrels" / "test.tsv"):
        if tsv.exists():
            with tsv.open(newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            return [(r["query-id"], r["corpus-id"], float(r.get("score") or 1)) for r in rows]
    raise FileNotFoundError(f"{root}: no qrels.jsonl, qrels.tsv or qrels/test.tsv")
