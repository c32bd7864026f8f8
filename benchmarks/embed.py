"""Embedding and retrieval speed: documents/s and queries/s, single- vs multi-vector, and vector-store index /
search latency as ratios against a brute-force in-memory baseline measured in the same run.

The baseline store is ``MemoryStore`` (exact torch matmul / MaxSim over every page); the store under test is the
URI given (default: embedded Qdrant in a temporary folder). Both get the same vectors, and the script also
reports how often their top-1 hits agree (they must: both are exact).

Usage: python benchmarks/embed.py [--model PATH] [--docs 48] [--queries 48] [--db URI] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nemo_eagle.embed import EagleEmbedder
from nemo_eagle.embed.store import MemoryStore, open_store, point_id

TINY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny-eagle2"


def make_page(i: int, w: int = 320, h: int = 420) -> Image.Image:
    """A synthetic document page: a light background with dark text-like bars (one tile at max_tiles=1)."""
    rng = np.random.default_rng(i)
    page = np.full((h, w, 3), 245, dtype=np.uint8)
    for row in range(20, h - 20, 18):
        length = int(rng.integers(w // 3, w - 40))
        page[row:row + 8, 20:20 + length] = rng.integers(0, 90, size=3)
    return Image.fromarray(page)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_mode(emb: EagleEmbedder, docs, queries, db_uri: str, top_k: int) -> dict:
    emb.embed(docs[:emb.config.batch_size], "passage")  # warm-up: first-call allocations at full batch shape
    doc_vecs, t_docs = timed(lambda: emb.embed(docs, "passage"))
    query_vecs, t_queries = timed(lambda: emb.embed(queries, "query"))
    ids = [point_id(f"page-{i}") for i in range(len(docs))]
    payloads = [{"key": f"page-{i}"} for i in range(len(docs))]
    out = {"docs_per_s": len(docs) / t_docs, "queries_per_s": len(queries) / t_queries}
    hits = {}
    for name, store in (("brute_force", MemoryStore()), ("store", open_store(db_uri))):
        store.ensure(emb.dim, emb.mode == "multi")
        _, t_index = timed(lambda s=store: s.upsert(ids, list(doc_vecs), payloads))
        latencies, top1 = [], []
        for q in query_vecs:
            res, t = timed(lambda s=store, q=q: s.search(q, top_k))
            latencies.append(t * 1e3)
            top1.append(res[0].id)
        out[f"{name}_index_s"] = t_index
        out[f"{name}_search_p50_ms"] = statistics.median(latencies)
        out[f"{name}_search_p95_ms"] = float(np.percentile(latencies, 95))
        hits[name] = top1
        store.close()
    out["top1_agreement"] = sum(a == b for a, b in zip(hits["brute_force"], hits["store"])) / len(queries)
    out["index_ratio"] = out["store_index_s"] / out["brute_force_index_s"]
    out["search_ratio"] = out["store_search_p50_ms"] / out["brute_force_search_p50_ms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(TINY), help="EAGLE2 checkpoint (default: the tiny test checkpoint)")
    p.add_argument("--docs", type=int, default=48)
    p.add_argument("--queries", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tiles", type=int, default=1)
    p.add_argument("--projection-dim", type=int, default=128)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--db", default=None, help="store under test (default: embedded Qdrant in a temp folder)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    single = EagleEmbedder.from_pretrained(args.model, mode="single", max_tiles=args.max_tiles,
                                           batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    # The multi-vector view shares the same model weights.
    multi = EagleEmbedder(single.model, single.processor, single.config, mode="multi",
                          projection_dim=args.projection_dim, bidirectional=True).to(single.model.device)
    docs = [make_page(i) for i in range(args.docs)]
    queries = [f"what does section {i} say about revenue in {2000 + i % 24}?" for i in range(args.queries)]

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, emb in (("single", single), ("multi", multi)):
            uri = args.db or str(Path(tmp) / f"qdrant-{mode}")
            if args.db:
                uri = f"{args.db}{'&' if '?' in args.db else '?'}collection=bench_{mode}"
            results[mode] = run_mode(emb, docs, queries, uri, args.top_k)

    dev = str(single.model.device)
    print(f"model {args.model} on {dev}, {args.docs} pages ({args.max_tiles} tile max), {args.queries} queries, "
          f"store {args.db or 'embedded Qdrant (temp folder)'} vs brute force in memory")
    print(f"{'':24}{'single':>12}{'multi':>12}{'multi/single':>14}")
    for key, label in (("docs_per_s", "documents/s"), ("queries_per_s", "queries/s")):
        s, m = results["single"][key], results["multi"][key]
        print(f"{label:24}{s:12.2f}{m:12.2f}{m / s:14.2f}x")
    print(f"{'':24}{'single':>12}{'multi':>12}   (store / brute-force baseline)")
    for key, label in (("index_ratio", "index time ratio"), ("search_ratio", "search p50 ratio")):
        print(f"{label:24}{results['single'][key]:11.2f}x{results['multi'][key]:11.2f}x")
    for key, label in (
        ("brute_force_search_p50_ms", "baseline search p50 ms"),
        ("store_search_p50_ms", "store search p50 ms"),
        ("store_search_p95_ms", "store search p95 ms"),
        ("top1_agreement", "top-1 agreement"),
    ):
        print(f"{label:24}{results['single'][key]:12.3f}{results['multi'][key]:12.3f}")
    print(
        json.dumps({"device": dev, **{f"{mode}.{k}": round(v, 4) for mode, r in results.items() for k, v in r.items()}})
    )


if __name__ == "__main__":
    main()
