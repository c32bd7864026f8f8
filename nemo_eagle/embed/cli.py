"""``nemo-eagle embed | index | search | eval-retrieval``: the embedder from the command line.

``index`` is resumable: every page has a stable id, so a rerun after a crash (or kill -9) embeds only the
pages the store lacks, and no page is ever stored twice. The store records the embedder settings it was built
with, and ``search`` reuses them.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from nemo_eagle.cli import add_device_arg, add_dtype_arg, add_out_arg

log = logging.getLogger("nemo_eagle.embed")

# Settings that change the vectors: an index built with one value cannot be searched with another.
VECTOR_SETTINGS = ("mode", "pooling", "bidirectional", "normalize", "projection_dim", "query_prefix", "passage_prefix")
_ERRORS = (ValueError, FileNotFoundError, ImportError, RuntimeError, OSError)


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("nemo_eagle").setLevel(level)


def _add_model_args(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    g = p.add_argument_group("embedder")
    g.add_argument("--model", required=model_required, help="EAGLE2 checkpoint directory or hub id")
    g.add_argument("--mode", choices=("single", "multi"), help="one vector per input, or per-token late interaction")
    g.add_argument("--pooling", choices=("mean", "last"), help="single mode: mean or last-token pooling")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                   help="let every token attend to every other token (ColEmbed style)")
    g.add_argument("--projection-dim", type=int, help="multi mode: width of the per-token projection")
    g.add_argument("--max-tiles", type=int, help="per-image tile limit (default: the checkpoint's)")
    g.add_argument("--max-length", type=int, help="tokens per input (default: the model's context)")
    g.add_argument("--batch-size", type=int, help="inputs per forward pass")
    add_dtype_arg(g, help_default="the checkpoint's")
    add_device_arg(g, help_default="cpu")
    g.add_argument("-v", "--verbose", action="store_true")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("mode", "pooling", "bidirectional", "projection_dim", "max_tiles", "max_length", "batch_size")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _load_embedder(args: argparse.Namespace, model: str | None = None, **defaults: Any):
    from nemo_eagle.embed.embedder import EagleEmbedder

    settings = {**defaults, **_overrides(args)}
    t0 = time.perf_counter()
    emb = EagleEmbedder.from_pretrained(model or args.model, dtype=args.dtype, device=args.device, **settings)
    log.info("loaded embedder from %s in %.1fs (%s-vector, %d-d)", model or args.model, time.perf_counter() - t0,
             emb.mode, emb.dim)
    return emb


def _run(name: str, fn, argv: list[str] | None) -> int:
    try:
        return fn(argv)
    except _ERRORS as e:
        print(f"nemo-eagle {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nemo-eagle {name}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------- embed
def embed_main(argv: list[str] | None = None) -> int:
    """``nemo-eagle embed --model PATH [--image FILE]... [TEXT]...``: vectors as OpenAI-style JSON."""
    return _run("embed", _embed, argv)


def _embed(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="nemo-eagle embed", description="Embed texts and images to vectors (JSON).")
    _add_model_args(p)
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    p.add_argument("--jsonl", type=Path, help='a file of {"text": ..., "image": path} lines to embed')
    p.add_argument("--input-type", choices=("query", "passage"), default="passage")
    p.add_argument("--truncate", choices=("NONE", "START", "END"), default="NONE")
    p.add_argument("--dimensions", type=int, help="shorter (Matryoshka) vectors, renormalised")
    p.add_argument("--encoding-format", choices=("float", "base64"), default="float")
    add_out_arg(p, aliases=("--output",), type=Path, help="write the JSON here instead of stdout")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    inputs: list[Any] = list(args.texts) + [Path(f) for f in args.image]
    if args.jsonl:
        base = args.jsonl.parent
        for n, line in enumerate(args.jsonl.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{args.jsonl}:{n}: each line must be a JSON object")
                if isinstance(row.get("image"), str) and not row["image"].startswith("data:"):
                    row["image"] = str(base / row["image"])
                inputs.append(row)
    if not inputs:
        p.error("nothing to embed: give TEXT arguments, --image files or --jsonl")
    emb = _load_embedder(args)
    vectors, counts = emb.embed_with_usage(
        inputs,
        args.input_type,
        truncate=args.truncate,
        dimensions=args.dimensions,
        show_progress=len(inputs) > emb.config.batch_size,
    )
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, args.encoding_format)}
            for i, v in enumerate(vectors)]
    out = {"object": "list", "model": str(args.model), "data": data,
           "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}
    text = json.dumps(out)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


def _encode_vector(v, fmt: str) -> Any:
    if fmt == "float":
        return v.tolist()
    return base64.b64encode(v.float().contiguous().numpy().astype("<f4").tobytes()).decode()


# ---------------------------------------------------------------------------------------------- index
def index_main(argv: list[str] | None = None) -> int:
    """``nemo-eagle index --model PATH --input DIR --db URI``: embed every page into a vector store, resumably."""
    return _run("index", _index, argv)


IN_PROCESS_DBS = ("memory://", ":memory:")


def _persistent_db(uri: str, command: str) -> None:
    """Refuse stores that live only inside one process: ``index`` and ``search`` are separate processes."""
    if uri.partition("?")[0] in IN_PROCESS_DBS:
        raise ValueError(f"--db {uri} keeps vectors only inside one process, so what `nemo-eagle index` stores is gone "
                         f"before `nemo-eagle {command}` could use it: pass a folder (embedded Qdrant, e.g. --db "
                         "./pages.qdrant) or a Qdrant server URL (http://host:6333); in-memory stores are for the "
                         "Python API (nemo_eagle.embed.store.open_store)")


def _load_pages(chunk: list, dpi: float, skip: bool, skipped: list[tuple[Path, str]]) -> list:
    """(page, id, image) for the pages of ``chunk`` that decode; a bad one raises naming its file, or is skipped."""
    from nemo_eagle.embed.pages import load_page

    out = []
    for pg, i in chunk:
        try:
            out.append((pg, i, load_page(pg, dpi=dpi)))
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError / truncated file are OSErrors
            reason = f"{type(e).__name__}: {e}"
            if not skip:
                raise ValueError(f"cannot read {pg.source} ({pg.key}): {reason}; pass --on-bad-file skip to index "
                                 "the other files") from e
            log.warning("skipping %s: %s", pg.key, reason)
            skipped.append((pg.source, reason))
    return out


def _check_settings(stored: dict[str, Any], current: dict[str, Any], where: str) -> None:
    diff = {
        k: (stored.get(k), current.get(k)) for k in (*VECTOR_SETTINGS, "dimensions") if stored.get(k) != current.get(k)
    }
    if diff:
        desc = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{where} was built with other embedder settings ({desc}); use the same settings or another --db"
        )


def _index(argv: list[str] | None) -> int:
    from tqdm.auto import tqdm

    from nemo_eagle.embed.pages import discover_pages
    from nemo_eagle.embed.store import open_store, point_id

    p = argparse.ArgumentParser(prog="nemo-eagle index",
                                description="Index a folder of images and PDF pages into a vector store (resumable).")
    _add_model_args(p)
    p.add_argument("--input", required=True, type=Path, help="folder of images / PDFs (or one file)")
    p.add_argument("--db", required=True, help="vector store URI: a folder (embedded Qdrant) or http(s)://host:6333 "
                   "(Qdrant server); add ?collection=NAME")
    p.add_argument("--dimensions", type=int, help="store shorter (Matryoshka) vectors")
    p.add_argument("--pdf-dpi", type=float, default=144.0, help="resolution PDF pages are rendered at")
    p.add_argument("--on-bad-file", choices=("skip", "error"), default="skip",
                   help="an unreadable image or PDF: skip it (counted and named at the end; default) or stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)

    skip = args.on_bad_file == "skip"
    skipped: list[tuple[Path, str]] = []
    pages = discover_pages(args.input, bad=skipped if skip else None)
    for path, reason in skipped:
        log.warning("skipping %s: %s", path, reason)
    if not pages:
        raise ValueError(f"no readable images or PDFs found under {args.input}")
    _persistent_db(args.db, "search")
    store = open_store(args.db)
    try:
        stored = store.layout()["metadata"].get("embedder", {}) if store.exists() else {}
        emb = _load_embedder(args, **{k: v for k, v in stored.items() if k in VECTOR_SETTINGS})
        dimensions = args.dimensions if args.dimensions is not None else stored.get("dimensions")
        settings = {**{k: getattr(emb.config, k) for k in VECTOR_SETTINGS}, "dimensions": dimensions}
        if stored:
            _check_settings(stored, settings, f"collection {store.collection!r} at {args.db}")
        store.ensure(dimensions or emb.dim, emb.mode == "multi",
                     {"embedder": settings, "model": Path(str(args.model)).name})
        ids = [point_id(pg.key) for pg in pages]
        done: set[str] = set()
        for start in range(0, len(ids), 1000):
            done |= store.existing_ids(ids[start:start + 1000])
        todo = [(pg, i) for pg, i in zip(pages, ids) if i not in done]
        log.info(
            "%d pages under %s: %d already in %s, %d to embed", len(pages), args.input, len(done), args.db, len(todo)
        )
        size = emb.config.batch_size
        bar = tqdm(total=len(pages), initial=len(done), unit="page", desc="index", disable=args.no_progress)
        t0, n = time.perf_counter(), 0
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            loaded = _load_pages(chunk, args.pdf_dpi, skip, skipped)
            if loaded:
                vectors = emb.embed([im for _, _, im in loaded], "passage", dimensions=dimensions, batch_size=size)
                store.upsert([i for _, i, _ in loaded], list(vectors), [pg.payload() for pg, _, _ in loaded])
            n += len(loaded)
            bar.update(len(chunk))
            log.info("indexed %d/%d pages (%.2f pages/s)", len(done) + n, len(pages), n / (time.perf_counter() - t0))
        bar.close()
        total = store.count()
        log.info("done: %d new pages in %.1fs; the store holds %d points", n, time.perf_counter() - t0, total)
    finally:
        store.close()
    if skipped:
        names = ", ".join(str(path) for path, _ in skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        print(f"nemo-eagle index: skipped {len(skipped)} unreadable file(s)/page(s): {names} "
              "(reasons in the log above; fix them and rerun to add them)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- search
def search_main(argv: list[str] | None = None) -> int:
    """``nemo-eagle search --model PATH --db URI [--top-k K] [--rerank] "query"``: ranked JSON."""
    return _run("search", _search, argv)


def _search(argv: list[str] | None) -> int:
    from nemo_eagle.embed.pages import Page, load_page
    from nemo_eagle.embed.store import open_store

    p = argparse.ArgumentParser(
        prog="nemo-eagle search", description="Search a vector store built by `nemo-eagle index`."
    )
    _add_model_args(p)
    p.add_argument("--db", required=True, help="the folder or server URL given to `nemo-eagle index`")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--rerank", action="store_true",
                   help="re-score the first --rerank-depth hits by re-embedding their pages with the reranker")
    p.add_argument("--rerank-depth", type=int, default=None, help="candidates to rerank (default 4 x top-k)")
    p.add_argument("--rerank-model", default=None, help="reranker checkpoint (default: --model)")
    p.add_argument("--rerank-mode", choices=("single", "multi"), default="multi",
                   help="reranker scoring: multi = late-interaction MaxSim (default)")
    p.add_argument("--pdf-dpi", type=float, default=144.0)
    p.add_argument("query", help="the query text")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    depth = max(args.rerank_depth or 4 * args.top_k, args.top_k)
    _persistent_db(args.db, "search")
    store = open_store(args.db)
    try:
        if not store.exists():
            raise ValueError(f"{args.db} has no collection {store.collection!r}: run `nemo-eagle index` first")
        if store.count() == 0:  # no page could ever match: say so rather than print an empty result list
            raise ValueError(f"collection {store.collection!r} at {args.db} holds no pages: run `nemo-eagle index` "
                             "(a run stopped before its first page was stored leaves it empty)")
        stored = store.layout()["metadata"].get("embedder", {})
        emb = _load_embedder(args, **{k: v for k, v in stored.items() if k in VECTOR_SETTINGS})
        settings = {**{k: getattr(emb.config, k) for k in VECTOR_SETTINGS}, "dimensions": stored.get("dimensions")}
        if stored:
            _check_settings(stored, settings, f"collection {store.collection!r} at {args.db}")
        t0 = time.perf_counter()
        q = emb.embed([args.query], "query", truncate="END", dimensions=stored.get("dimensions"))
        hits = store.search(q[0], depth if args.rerank else args.top_k)
        search_ms = (time.perf_counter() - t0) * 1e3
    finally:
        store.close()
    results = [{"id": h.id, "score": h.score, **h.payload} for h in hits]
    if args.rerank and results:
        reranker = emb
        if args.rerank_model or args.rerank_mode != emb.mode:
            reranker = _load_embedder(argparse.Namespace(**{**vars(args), "mode": args.rerank_mode}),
                                      model=args.rerank_model or args.model)
        pages = [load_page(Page(r["key"], Path(r["source"]), r.get("page")), dpi=args.pdf_dpi) for r in results]
        ranked = reranker.rank(args.query, pages, truncate="END")
        results = [{**results[r["index"]], "retrieval_score": results[r["index"]]["score"], "score": r["logit"]}
                   for r in ranked]
    results = results[:args.top_k]
    for rank, r in enumerate(results, 1):
        r["rank"] = rank
    print(json.dumps({"query": args.query, "reranked": bool(args.rerank), "search_ms": round(search_ms, 2),
                      "results": results}, indent=2))
    return 0


# ------------------------------------------------------------------------------------- eval-retrieval
def eval_main(argv: list[str] | None = None) -> int:
    """``nemo-eagle eval-retrieval --model PATH --data DIR``: nDCG@k, recall@k, MRR@k on a ViDoRe-format set."""
    return _run("eval-retrieval", _eval, argv)


def _eval(argv: list[str] | None) -> int:
    import torch

    from nemo_eagle.embed.vidore import evaluate, load_dataset

    p = argparse.ArgumentParser(prog="nemo-eagle eval-retrieval",
                                description="nDCG@k / recall@k / MRR@k on a ViDoRe-format dataset folder.")
    _add_model_args(p)
    p.add_argument("--data", required=True, type=Path, help="folder with queries.jsonl, corpus.jsonl, qrels")
    p.add_argument("--k", default="1,5,10", help="cut-offs, comma separated")
    p.add_argument("--dimensions", type=int)
    p.add_argument("--truncate", choices=("NONE", "START", "END"), default="END")
    add_out_arg(p, aliases=("--output",), type=Path, help="also write the metrics JSON here")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError as e:
        raise ValueError(f"--k must be comma-separated integers, got {args.k!r}") from e
    if not ks or ks[0] < 1:
        raise ValueError(f"--k needs positive cut-offs, got {args.k!r}")
    data = load_dataset(args.data)
    emb = _load_embedder(args)
    doc_ids = list(data.corpus)
    query_ids = [q for q in data.queries if q in data.qrels]
    t0 = time.perf_counter()
    docs = emb.embed([data.corpus[d] for d in doc_ids], "passage", truncate=args.truncate, dimensions=args.dimensions,
                     show_progress=True)
    queries = emb.embed([data.queries[q] for q in query_ids], "query", truncate=args.truncate,
                        dimensions=args.dimensions, show_progress=True)
    scores = emb.score(queries, docs)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    run = {q: [doc_ids[j] for j in order[i].tolist()] for i, q in enumerate(query_ids)}
    metrics = evaluate(run, data.qrels, ks)
    out = {"dataset": str(args.data), "model": str(args.model), "mode": emb.mode, "num_queries": len(query_ids),
           "num_documents": len(doc_ids), "seconds": round(time.perf_counter() - t0, 3), "metrics": metrics}
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    commands = {"embed": embed_main, "index": index_main, "search": search_main, "eval-retrieval": eval_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: python -m nemo_eagle.embed.cli {{{','.join(commands)}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
