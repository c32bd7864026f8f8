"""Serving overhead: the full REST -> Triton -> model path against the same model called in-process.

Sends the same bounded set of chat requests (count and time limited, 127.0.0.1 only) with the same concurrency
through ``nemo-eagle serve`` and through the in-process engine with the same batching policy (alternating
rounds, so load drift hits both alike), then prints throughput and p50/p95 latency of both and their ratios,
measured in this run on this machine.

    python benchmarks/serve.py --model tests/fixtures/tiny-eagle2 --requests 48 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "tests" / "fixtures" / "tiny-eagle2"
log = logging.getLogger("benchmarks.serve")


@dataclass
class Result:
    latencies: list[float]
    completion_tokens: int
    wall: float
    errors: int

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall if self.wall else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def merge(results: list[Result]) -> Result:
    return Result([x for r in results for x in r.latencies], sum(r.completion_tokens for r in results),
                  sum(r.wall for r in results), sum(r.errors for r in results))


def png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x % 256, y % 256, (x * y) % 256], -1) + rng.integers(0, 16, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_requests(n: int, images: int, seed: int = 0) -> list[tuple[str, list[bytes]]]:
    """(question, images) pairs; the same list feeds both paths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = images if images >= 0 else int(rng.integers(0, 2))
        out.append((f"Question {i}: what does the image show?", [png(320 + 32 * (i % 5), 240, i) for _ in range(k)]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "nemo_eagle.cli", "serve", "--model", str(args.model), "--port", str(port),
           "--host", "127.0.0.1", "--triton-grpc-port", "0", "--triton-http-port", "0", "--triton-metrics-port", "0",
           "--max-model-len", str(args.max_model_len), "--triton-max-batch-size", str(args.max_batch_size),
           "--max-num-seqs", str(args.max_batch_size),
           "--log-level", "WARNING", "--disable-log-requests", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"nemo-eagle serve exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/v1/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f}s")


async def bounded(requests, concurrency: int, max_seconds: float, one) -> Result:
    """Run ``one(request)`` over ``requests`` with at most ``concurrency`` in flight, stopping new submissions
    after ``max_seconds``."""
    sem = asyncio.Semaphore(concurrency)
    latencies, tokens, errors = [], 0, 0
    start = time.perf_counter()

    async def run(req):
        nonlocal tokens, errors
        async with sem:
            if time.perf_counter() - start > max_seconds:
                return
            t0 = time.perf_counter()
            try:
                n = await one(req)  # NOTE: `tokens += await ...` would read `tokens` before the await
                tokens += n
                latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors += 1
                log.warning("request failed: %s", e)

    await asyncio.gather(*(run(r) for r in requests))
    return Result(latencies, tokens, time.perf_counter() - start, errors)


def rest_path(url: str, model_id: str, args):
    """``one(request)`` over REST with the official client."""
    import base64

    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    async def one(req) -> int:
        text, imgs = req
        parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b).decode()}}
                 for b in imgs]
        r = await client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": parts + [{"type": "text", "text": text}]}],
            max_tokens=args.max_tokens, temperature=0, extra_body={"max_tiles": args.max_tiles})
        return r.usage.completion_tokens

    return one, client.close


async def local_path(args):
    """``one(request)`` through the in-process engine: same planning, same batching policy, no REST or Triton."""
    from nemo_eagle.serve.backends import LocalBackend
    from nemo_eagle.serve.engine import Engine, GenerationJob
    from nemo_eagle.serve.media import inspect_image

    engine = Engine.from_pretrained(args.model, max_model_len=args.max_model_len)
    backend = LocalBackend(engine, max_batch_size=args.max_batch_size)
    await backend.start()
    counter = iter(range(10**9))

    async def one(req) -> int:
        text, imgs = req
        sizes = [(im.width, im.height) for im in (inspect_image(b, name="img", max_pixels=10**9) for b in imgs)]
        prompt = engine.render([{"role": "user", "content": [{"type": "image"}] * len(imgs) +
                                 [{"type": "text", "text": text}]}])
        plan = engine.plan(prompt, sizes, max_tiles=args.max_tiles, max_new_tokens=args.max_tokens,
                           default_max_tokens=args.max_tokens)
        job = GenerationJob(request_id=str(next(counter)), prompt=plan.prompt, max_tiles=plan.max_tiles,
                            max_new_tokens=plan.max_new_tokens, tiling=plan.tiling, images=imgs)
        tokens = 0
        async for ev in backend.stream(job):
            tokens = ev.completion_tokens
            if ev.finish_reason == "error":
                raise RuntimeError(ev.error)
        return tokens

    return one, backend.close


async def compare(url: str, model_id: str, requests, args) -> tuple[Result, Result]:
    """Both paths over the same requests, in alternating rounds so load drift on the machine hits both alike."""
    rest_one, rest_close = rest_path(url, model_id, args)
    local_one, local_close = await local_path(args)
    try:
        for one in (rest_one, local_one):  # warm-up (first-call costs, caches)
            await bounded(requests[:2], 2, args.max_seconds, one)
        size = max(args.concurrency, -(-len(requests) // args.rounds))
        rest, local = [], []
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            rest.append(await bounded(chunk, args.concurrency, args.max_seconds / args.rounds, rest_one))
            local.append(await bounded(chunk, args.concurrency, args.max_seconds / args.rounds, local_one))
            log.info("round %d: REST %.2f req/s, in-process %.2f req/s", len(rest), rest[-1].throughput,
                     local[-1].throughput)
        return merge(rest), merge(local)
    finally:
        await rest_close()
        await local_close()


def plain_path(url: str, model_id: str, args):
    """``one(request)`` over one kept-alive HTTP/1.1 connection with the standard library's ``http.client``: what
    the server adds, without a client SDK's own cost. Blocking: only for the sequential overhead measurement."""
    import http.client
    import json

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Content-Type": "application/json"}

    async def one(req) -> int:
        text, imgs = req
        if imgs:
            raise ValueError("the plain path sends text-only chats")
        body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": text}],
                           "max_tokens": args.max_tokens, "temperature": 0})
        conn.request("POST", "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return json.loads(data)["usage"]["completion_tokens"]

    async def close() -> None:
        conn.close()

    return one, close


async def overhead(url: str, model_id: str, args, local_url: str | None = None) -> str:
    """Fixed cost per request: 1-token text-only chats one at a time, REST -> Triton -> model against the
    in-process engine, alternating. REST is called twice: with a plain HTTP client (what the server adds) and with
    the ``openai`` client (what an SDK user sees: the SDK's own request building and response parsing included).
    With ``local_url`` (a ``--backend local`` server) also REST -> model in the REST process, which splits the
    server's added time into the REST front and the Triton hop; and a readiness probe."""
    import httpx

    one_token = argparse.Namespace(**{**vars(args), "max_tokens": 1, "max_tiles": 1})
    paths = {"triton": plain_path(url, model_id, one_token), "engine": await local_path(one_token),
             "triton_sdk": rest_path(url, model_id, one_token)}
    if local_url:
        paths["rest_local"] = plain_path(local_url, model_id, one_token)
    times: dict[str, list[float]] = {k: [] for k in paths}
    ready = []
    try:
        req = ("Hi", [])
        for _ in range(3):  # warm-up
            for one, _ in paths.values():
                await one(req)
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(args.overhead_requests):
                for name, (one, _) in paths.items():
                    t0 = time.perf_counter()
                    await one(req)
                    times[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await client.get(url + "/v1/health/ready")
                ready.append(time.perf_counter() - t0)
    finally:
        for _, close in paths.values():
            await close()
    p50 = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    engine = p50["engine"]
    out = (f"fixed overhead, 1 output token, {args.overhead_requests} sequential requests, p50: in-process engine "
           f"{engine:.1f} ms; REST -> Triton -> model {p50['triton']:.1f} ms with a plain HTTP client, added by "
           f"serving {p50['triton'] - engine:+.1f} ms (target <= 5 ms); {p50['triton_sdk']:.1f} ms with the openai "
           f"client ({p50['triton_sdk'] - engine:+.1f} ms, the SDK's own {p50['triton_sdk'] - p50['triton']:+.1f} ms "
           f"included); /v1/health/ready p50 {statistics.median(ready) * 1e3:.1f} ms")
    if "rest_local" in p50:
        out += (f"\n  where the server's time goes: REST front (uvicorn/FastAPI + planning, engine in the REST "
                f"process) {p50['rest_local'] - engine:+.1f} ms, Triton hop (gRPC stream + Python-backend IPC) "
                f"{p50['triton'] - p50['rest_local']:+.1f} ms")
    return out


def report(rest: Result, local: Result, args) -> str:
    rows = [("REST -> Triton -> model", rest), ("in-process engine", local)]
    lines = [(f"{len(rest.latencies)}/{args.requests} requests, concurrency {args.concurrency}, max_tokens "
              f"{args.max_tokens}, {args.images} image(s)/request, max_tiles {args.max_tiles}"),
             f"{'path':<26}{'req/s':>9}{'tok/s':>10}{'p50 s':>9}{'p95 s':>9}{'errors':>8}"]
    for name, r in rows:
        lines.append(f"{name:<26}{r.throughput:>9.2f}{r.tokens_per_s:>10.1f}{r.pct(0.5):>9.3f}{r.pct(0.95):>9.3f}"
                     f"{r.errors:>8}")
    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    lines.append(f"ratio REST/in-process: throughput {ratio(rest.throughput, local.throughput):.2f}x, "
                 f"p50 latency {ratio(rest.pct(0.5), local.pct(0.5)):.2f}x, "
                 f"p95 latency {ratio(rest.pct(0.95), local.pct(0.95)):.2f}x")
    if rest.latencies and local.latencies:
        overhead = statistics.mean(rest.latencies) - statistics.mean(local.latencies)
        lines.append(f"mean serving overhead per request: {overhead:+.3f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="HF checkpoint directory")
    p.add_argument("--url", default=None, help="an already running server on 127.0.0.1 (default: start one)")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--images", type=int, default=1, help="images per request (-1: a random 0 or 1)")
    p.add_argument("--max-tiles", type=int, default=2)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop submitting after this long, per path")
    p.add_argument("--rounds", type=int, default=4, help="alternate the two paths this many times")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--overhead-requests", type=int, default=30, help="sequential 1-token requests per path for the "
                   "fixed-overhead measurement (0: skip)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 256:
        p.error("--requests must be in 1..10000 and --concurrency in 1..256")
    if args.url is not None and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost"):
        p.error("--url must point at 127.0.0.1: this load generator only targets the local machine")
    if not (args.model / "config.json").exists():
        p.error(f"--model {args.model} is not an HF checkpoint directory")

    requests = make_requests(args.requests, args.images)
    proc, url = (None, args.url) if args.url else start_server(args)
    try:
        wait_ready(url, proc, args.startup_timeout)
        import httpx

        model_id = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        log.info("%d requests at concurrency %d: REST (%s) and in-process, alternating in %d rounds",
                 len(requests), args.concurrency, url, args.rounds)
        rest, local = asyncio.run(compare(url, model_id, requests, args))
        fixed, local_proc = "", None
        if args.overhead_requests:
            local_proc, local_url = start_server(args, "--backend", "local")
            wait_ready(local_url, local_proc, args.startup_timeout)
            fixed = asyncio.run(overhead(url, model_id, args, local_url))
    finally:
        for p_ in (proc, locals().get("local_proc")):
            if p_ is not None:
                p_.terminate()
                p_.wait(120)
    print(report(rest, local, args))
    if fixed:
        print(fixed)
    return 0 if not rest.errors and not local.errors else 1


if __name__ == "__main__":
    sys.exit(main())
