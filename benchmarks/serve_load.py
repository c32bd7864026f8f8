"""Open-loop load on the serving engine: continuous batching against static batching, in the same run.

Poisson arrivals (``--rate`` requests/s), output lengths drawn uniformly from ``--min-tokens``..``--max-tokens``
(end-of-sequence disabled, so every request generates exactly its length), a share of requests with an image
and a share of those repeating an earlier image (a multi-turn chat re-sends its image). Both engines run in
this process behind the same ``LocalBackend`` the server uses (``--scheduler continuous`` and ``static``) on
the same request list, each on a fresh backend, one after the other.

Printed per model and engine: output tokens/s, time to first token p50/p95, inter-token latency p50/p95, peak
memory (process RSS above the start, or CUDA peak allocated), and for the continuous engine the vision-cache
hits, the vision-tower time they saved and the prompt tokens KV prefix reuse copied; then the ratios continuous /
static, and the LM head alone at the batch size, as the model runs it and as the continuous engine does (on a CPU
with float32 weights the engine keeps a transposed copy of the head, ``OutputHead``: part of its lead on a
large-vocabulary model comes from there).

    python benchmarks/serve_load.py                         # tiny model + a mid-size CPU config (about 4 minutes)
    python benchmarks/serve_load.py --rate 32               # arrivals outrun both engines: tokens/s is capacity
    python benchmarks/serve_load.py --models tiny --requests 128 --rate 16

When both engines keep up with the arrivals (wall time about the arrival span), tokens/s measures the arrival
rate, not the engines: read it with the wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # import from the repository root

from benchmarks.serve import png  # noqa: E402 - the same test images as benchmarks/serve.py

TINY = REPO / "tests" / "fixtures" / "tiny-eagle2"


# ------------------------------------------------------------------------------------------------ models
def mid_size_checkpoint(out: Path, layers: int) -> Path:
    """Eagle2-1B shapes (SigLIP-so400m tower, Qwen2.5-0.5B width, 151k vocabulary) with ``layers`` vision and LLM
    layers, random weights, and the tiny checkpoint's tokenizer and processor files."""
    import torch

    from nemo_eagle.config import get_preset
    from nemo_eagle.data.processor import EagleProcessor
    from nemo_eagle.modeling.eagle import EagleModel

    proc = EagleProcessor.from_pretrained(TINY)
    cfg = get_preset("eagle2-1b").replace(image_token_id=proc.tokenizer.image_token_id,
                                          llm={"num_hidden_layers": layers}, vision={"num_hidden_layers": layers})
    torch.manual_seed(0)
    EagleModel(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
                 "processor_config.json", "generation_config.json"):
        if (TINY / name).exists():
            shutil.copyfile(TINY / name, out / name)
    return out


# ------------------------------------------------------------------------------------------------ load
@dataclass
class Request:
    arrival: float
    text: str
    images: list[bytes]
    max_tokens: int
    repeat: bool = False


def make_load(args, seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / args.rate, args.requests)
    arrivals = np.cumsum(gaps) - gaps[0]
    out, seen = [], []
    for i, t in enumerate(arrivals):
        images, repeat = [], False
        if rng.random() < args.image_share:
            if seen and rng.random() < args.repeat_share:
                images, repeat = [seen[int(rng.integers(len(seen)))]], True
            else:
                images = [png(int(rng.integers(200, 900)), int(rng.integers(200, 900)), i)]
                seen.append(images[0])
        n = int(rng.integers(args.min_tokens, args.max_tokens + 1))
        out.append(Request(float(t), f"Request {i}: describe what you see in some detail.", images, n, repeat))
    return out


@dataclass
class Trace:
    arrival: float
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # seconds per token between events


class PeakMemory:
    """Peak process RSS (CPU) or peak CUDA allocation above the level at start."""

    def __init__(self, cuda: bool):
        import psutil

        self.cuda, self.proc, self.peak, self.stop = cuda, psutil.Process(), 0, threading.Event()

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
        self.used = max(0, self.peak - self.base)


async def run_load(engine, mode: str, load: list[Request], args) -> dict:
    from nemo_eagle.serve.backends import LocalBackend
    from nemo_eagle.serve.engine import GenerationJob

    opts = {"max_num_seqs": args.max_num_seqs, "prefill_chunk": args.prefill_chunk,
            "vision_cache_bytes": args.vision_cache_mib * 2**20, "preprocess_workers": args.preprocess_workers,
            "decode_threads": args.decode_threads}
    backend = LocalBackend(engine, max_batch_size=args.max_num_seqs, scheduler=mode, scheduler_options=opts)
    eos = engine.tokenizer.eos_token_id
    engine.tokenizer.eos_token_id = -1  # every request runs to its drawn length in both engines
    with PeakMemory(engine.model.device.type == "cuda") as mem:
        await backend.start()
        traces = [Trace(r.arrival) for r in load]
        start = time.perf_counter()

        async def one(i: int, r: Request) -> None:
            await asyncio.sleep(max(0.0, start + r.arrival - time.perf_counter()))
            content = [{"type": "image"}] * len(r.images) + [{"type": "text", "text": r.text}]
            prompt = engine.render([{"role": "user", "content": content}])
            sizes = [(int(x.shape[-1]), int(x.shape[-2])) for x in map(_decode, r.images)]
            plan = engine.plan(prompt, sizes, max_tiles=args.max_tiles, max_new_tokens=r.max_tokens,
                               default_max_tokens=r.max_tokens)
            job = GenerationJob(request_id=f"{mode}-{i}", prompt=plan.prompt, max_tiles=plan.max_tiles,
                                max_new_tokens=plan.max_new_tokens, tiling=plan.tiling, images=r.images)
            tr, last = traces[i], None
            async for ev in backend.stream(job):
                now = time.perf_counter() - start
                if ev.finish_reason == "error":
                    raise RuntimeError(ev.error)
                if ev.completion_tokens > tr.tokens:
                    if tr.first is None:
                        tr.first = now
                    elif last is not None:
                        tr.gaps.append((now - last) / (ev.completion_tokens - tr.tokens))
                    tr.tokens, last = ev.completion_tokens, now
            tr.end = time.perf_counter() - start

        await asyncio.gather(*(one(i, r) for i, r in enumerate(load)))
        wall = max(t.end for t in traces)
        stats = backend.stats()
        await backend.close()
    engine.tokenizer.eos_token_id = eos
    ttft = [t.first - t.arrival for t in traces]
    itl = [g for t in traces for g in t.gaps]
    return {"mode": mode, "tokens": sum(t.tokens for t in traces), "wall": wall,
            "tok_s": sum(t.tokens for t in traces) / wall, "ttft50": _pct(ttft, 50), "ttft95": _pct(ttft, 95),
            "itl50": _pct(itl, 50), "itl95": _pct(itl, 95), "mem": mem.used, "stats": stats}


def _decode(data: bytes):
    from nemo_eagle.data.images import load_image

    return load_image(data)


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def report(name: str, load: list[Request], results: list[dict]) -> str:
    with_images = sum(1 for r in load if r.images)
    repeats = sum(1 for r in load if r.repeat)
    lines = [(f"{name}: {len(load)} requests over {load[-1].arrival:.1f}s (Poisson), output "
             f"{min(r.max_tokens for r in load)}-{max(r.max_tokens for r in load)} tokens "
             f"(total {sum(r.max_tokens for r in load)}), {with_images} with an image, {repeats} repeating one"),
             (f"  {'engine':<11}{'tok/s':>8}{'TTFT p50':>10}{'TTFT p95':>10}{'ITL p50':>9}{'ITL p95':>9}"
             f"{'peak MiB':>10}{'wall s':>8}")]
    for r in results:
        lines.append(f"  {r['mode']:<11}{r['tok_s']:>8.1f}{r['ttft50']:>10.3f}{r['ttft95']:>10.3f}"
                     f"{r['itl50'] * 1e3:>7.1f}ms{r['itl95'] * 1e3:>7.1f}ms{r['mem'] / 2**20:>10.0f}{r['wall']:>8.1f}")
    cont = next(r for r in results if r["mode"] == "continuous")
    static = next(r for r in results if r["mode"] == "static")
    s = cont["stats"]
    lines.append(
        f"  vision cache (continuous): {s.get('vision_hits', 0)} hits / {s.get('vision_misses', 0)} misses, "
        f"{s.get('vision_seconds_saved', 0.0):.3f}s of vision tower saved, {s.get('vision_seconds', 0.0):.3f}s "
        f"spent on misses; {repeats} repeated images in the load"
    )
    lines.append(f"  KV prefix reuse (continuous): {s.get('prefix_hits', 0)} requests, {s.get('prefix_tokens', 0)} "
                 "prompt tokens copied instead of computed")
    lines.append(f"  ratio continuous/static: tokens/s {cont['tok_s'] / static['tok_s']:.2f}x, TTFT p95 "
                 f"{cont['ttft95'] / static['ttft95']:.2f}x, TTFT p50 {cont['ttft50'] / static['ttft50']:.2f}x, "
                 f"ITL p95 {cont['itl95'] / static['itl95']:.2f}x")
    return "\n".join(lines)


def head_timing(engine, rows: int, repeats: int = 20) -> str:
    """The LM head on ``rows`` hidden states: the model's own module against the engine's ``OutputHead`` (what the
    continuous engine's decode step calls), so the part of the gap that comes from the head's layout is visible."""
    import torch

    from nemo_eagle.serve.engine.runner import OutputHead

    lm = engine.model.language_model
    own, head = lm.get_output_embeddings(), OutputHead(lm)
    hidden = torch.randn(rows, lm.config.hidden_size, dtype=engine.model.dtype, device=engine.model.device)
    times = {}
    with torch.inference_mode():
        for name, fn in (("own", own), ("engine", head)):
            fn(hidden)
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn(hidden)
            times[name] = (time.perf_counter() - t0) / repeats * 1e3
    how = "transposed weight copy" if head.transposed is not None else "the same module"
    return (f"  LM head, {rows} rows: the model's own {times['own']:.2f} ms, the engine's ({how}) "
            f"{times['engine']:.2f} ms ({times['own'] / times['engine']:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,mid", help="comma list of tiny (the test fixture) and mid "
                   "(Eagle2-1B shapes with --mid-layers layers)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--rate", type=float, default=None, help="arrivals per second (default: 8 tiny, 2 mid: above what "
                   "static batching sustains on a 2-core CPU, so the run measures capacity, not the arrival rate)")
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--mid-max-tokens", type=int, default=256, help="--max-tokens for the mid-size model (lower it "
                   "for a shorter run)")
    p.add_argument("--mid-max-tiles", type=int, default=1, help="--max-tiles for the mid-size model (CPU time)")
    p.add_argument("--image-share", type=float, default=0.3)
    p.add_argument("--repeat-share", type=float, default=0.5, help="of the image requests, share re-sending one")
    p.add_argument("--max-tiles", type=int, default=2)
    p.add_argument("--max-num-seqs", type=int, default=16, help="continuous: cache slots; static: batch size")
    p.add_argument("--prefill-chunk", type=int, default=512)
    p.add_argument("--vision-cache-mib", type=int, default=256)
    p.add_argument("--preprocess-workers", type=int, default=None, help="continuous: preprocessing threads "
                   "(default: the scheduler's choice)")
    p.add_argument("--decode-threads", type=int, default=None, help="continuous: torch threads of the decode loop "
                   "(default: the scheduler's choice)")
    p.add_argument("--mid-layers", type=int, default=2)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.requests < 1 or not 1 <= args.min_tokens <= args.max_tokens:
        p.error("--requests must be >= 1 and 1 <= --min-tokens <= --max-tokens")
    import torch

    from nemo_eagle.serve.engine import Engine

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch threads "
          f"{torch.get_num_threads()}, max_num_seqs {args.max_num_seqs}, max_tiles {args.max_tiles}")
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        for name in args.models.split(","):
            model_args = argparse.Namespace(**vars(args))
            if name == "tiny":
                path, model_args.rate = TINY, args.rate or 8.0
            elif name == "mid":
                path = mid_size_checkpoint(tmp / "mid", args.mid_layers)
                model_args.rate, model_args.max_tokens = args.rate or 2.0, min(args.max_tokens, args.mid_max_tokens)
                model_args.max_tiles = args.mid_max_tiles
                model_args.min_tokens = min(args.min_tokens, model_args.max_tokens)
            else:
                p.error(f"unknown model {name!r}: use tiny or mid")
            engine = Engine.from_pretrained(path, max_model_len=args.max_model_len, device=device)
            load = make_load(model_args)
            results = [asyncio.run(run_load(engine, mode, load, model_args)) for mode in ("continuous", "static")]
            label = "tiny (test fixture)" if name == "tiny" else f"mid (Eagle2-1B shapes, {args.mid_layers} layers)"
            print(report(label, load, results), flush=True)
            print(head_timing(engine, args.max_num_seqs), flush=True)
            del engine
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
