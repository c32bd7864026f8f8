"""Vector stores: embedded Qdrant stores page multi-vectors natively and scores them with MaxSim exactly."""

from __future__ import annotations

import pytest
import torch

from nemo_eagle.embed.store import MemoryStore, QdrantStore, open_store, parse_uri, point_id


def test_uri_switch(tmp_path):
    assert parse_uri(str(tmp_path / "db")) == ("local", {"path": str(tmp_path / "db")}, "pages")
    assert parse_uri(f"file://{tmp_path}/db?collection=docs") == ("local", {"path": f"{tmp_path}/db"}, "docs")
    assert parse_uri(":memory:") == ("local", {"location": ":memory:"}, "pages")
    assert parse_uri("http://qdrant.internal:6333?collection=c&api_key=k") == (
        "server", {"url": "http://qdrant.internal:6333", "api_key": "k"}, "c")
    assert parse_uri("qdrant://db:6333")[1] == {"url": "http://db:6333"}
    assert parse_uri("memory://")[0] == "memory"
    with pytest.raises(ValueError, match="unsupported vector-store URI scheme 'ftp'"):
        parse_uri("ftp://x")
    with pytest.raises(ValueError, match="unknown vector-store URI option"):
        parse_uri("memory://?colection=x")


def _reference_maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
    return sum(max(float(qt @ dt) for dt in d) for qt in q)


@pytest.mark.parametrize("which", ["single_embedder", "multi_embedder"])
def test_indexed_image_queried_with_itself_ranks_first(which, pages, tmp_path, request):
    emb = request.getfixturevalue(which)
    vectors = emb.embed_documents(pages)
    keys = [f"page{i}.png" for i in range(len(pages))]
    store = open_store(str(tmp_path / "db"))
    store.ensure(emb.dim, emb.mode == "multi", {"embedder": {"mode": emb.mode}})
    store.upsert([point_id(k) for k in keys], list(vectors), [{"key": k} for k in keys])
    store.close()

    store = open_store(str(tmp_path / "db"))  # reopened from disk
    try:
        assert isinstance(store, QdrantStore) and store.count() == len(pages)
        assert (
            store.layout()["multi"] == (emb.mode == "multi")
            and store.layout()["metadata"]["embedder"]["mode"] == emb.mode
        )
        queries = emb.embed(pages, "passage")  # each page again, as a passage
        for i, query in enumerate(queries):
            hits = store.search(query, top_k=3)
            assert hits[0].payload["key"] == keys[i]
            if emb.mode == "multi":  # the engine's MaxSim == a brute-force reference
                for h in hits:
                    j = keys.index(h.payload["key"])
                    assert h.score == pytest.approx(_reference_maxsim(query, vectors[j]), rel=1e-4, abs=1e-3)
    finally:
        store.close()


def test_memory_store_agrees_with_qdrant(multi_embedder, pages):
    vectors = multi_embedder.embed_documents(pages[:4])
    query = multi_embedder.embed_queries(["which page is red"])[0]
    ids = [point_id(str(i)) for i in range(4)]
    results = []
    for store in (MemoryStore(), open_store(":memory:")):
        store.ensure(32, True)
        store.upsert(ids, list(vectors), [{"i": i} for i in range(4)])
        store.upsert(ids[:1], [vectors[0]], [{"i": 0}])  # an upsert of an existing id replaces, never duplicates
        assert store.count() == 4 and store.existing_ids([ids[0], point_id("nope")]) == {ids[0]}
        results.append([(h.payload["i"], round(h.score, 3)) for h in store.search(query, top_k=4)])
        store.close()
    assert results[0] == results[1]


def test_layout_mismatch_is_refused(tmp_path):
    store = open_store(str(tmp_path / "db"))
    store.ensure(32, True)
    with pytest.raises(ValueError, match="holds 32-d multi-vector points, but this embedder makes 64-d single"):
        store.ensure(64, False)
    store.close()
