"""Oversized input against the REST front, and the static engine path's memory for a long completion.

1. A real ``nemo-eagle serve`` (tiny model, 127.0.0.1 only): health-probe latency while idle (the baseline) and
   while several large prompts (just under the default text cap) are being tokenised, the time to refuse a 30 MB
   text, and the front process's RSS (now and peak) after each phase.
2. Large request bodies (a chat of 100k one-character messages, 3.4 MB; one 30 MB message text) against the
   same front over FakeBackend in a child process, once with FastAPI decoding every body on the event loop (the
   large-body threshold raised past them: the behaviour before) and once as served now (decoded and validated on
   a worker thread, counts checked first): health-probe p50/max while they are answered vs idle, same process.
3. The static path's decode loop (``iter_tokens``, what ``Engine.run_batch`` runs) for one long completion, in a
   fresh process each: with autograd on (how the static path ran before) and under ``inference_mode`` (now);
   peak RSS of both and their ratio.

    python benchmarks/serve_input_limits.py --model tests/fixtures/tiny-eagle2 --tokens 3000 [--only bodies]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from serve import free_port, wait_ready  # the sibling benchmark's helpers (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]

DEFAULT_MODEL = REPO / "tests" / "fixtures" / "tiny-eagle2"


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def probe(client, url: str, seconds: float, interval: float = 0.05) -> list[float | None]:
    """Health-probe latencies (None: no answer within 2 s) over ``seconds``."""
    import httpx

    out: list[float | None] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        try:
            r = await client.get(url + "/v1/health/live", timeout=2.0)
            out.append(time.perf_counter() - t0 if r.status_code == 200 else None)
        except httpx.HTTPError:
            out.append(None)
        await asyncio.sleep(interval)
    return out


async def during(client, url: str, path: str, body: bytes, repeat: int) -> tuple[list[float | None], list, float]:
    """Send ``body`` ``repeat`` times in a row while probing health every 10 ms: (probe latencies, None for no
    answer within 2 s; answers as (status, error code); seconds per request)."""
    import httpx

    answers: list = []
    t0 = time.perf_counter()

    async def send() -> None:
        for _ in range(repeat):
            r = await client.post(url + path, content=body, headers={"content-type": "application/json"})
            answers.append((r.status_code, r.json().get("error", {}).get("code")))

    task = asyncio.create_task(send())
    lat: list[float | None] = []
    while not task.done():
        t1 = time.perf_counter()
        try:
            r = await client.get(url + "/v1/health/live", timeout=2.0)
            lat.append(time.perf_counter() - t1 if r.status_code == 200 else None)
        except httpx.HTTPError:
            lat.append(None)
        await asyncio.sleep(0.01)
    await task
    return lat, answers, (time.perf_counter() - t0) / repeat


def large_bodies(model: str) -> dict[str, bytes]:
    return {"100k messages": json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}] * 100_000}),
            "30 MB text": json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 30_000_000}]})}


def body_child(model: str, port: int, on_loop: bool) -> None:
    """A front over FakeBackend on ``port``; ``on_loop``: every body decoded by FastAPI on the event loop."""
    import uvicorn

    import nemo_eagle.serve.body as body_module
    from nemo_eagle.serve.app import create_app
    from nemo_eagle.serve.backends import FakeBackend
    from nemo_eagle.serve.engine import Engine
    from nemo_eagle.serve.settings import ServeSettings

    if on_loop:
        body_module.LARGE_BODY = 1 << 40
    engine = Engine.from_pretrained(model, load_model=False)
    app = create_app(ServeSettings(model_path=model, served_model_name="tiny"), FakeBackend(), engine=engine)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def bodies(args) -> None:
    import httpx

    p50 = {}
    for on_loop in (True, False):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--body-child", "loop" if on_loop else "worker", "--model",
                                 str(args.model), "--port", str(port)], cwd=REPO)
        url, label = f"http://127.0.0.1:{port}", "on the loop (before)" if on_loop else "off the loop (now)"
        try:
            wait_ready(url, proc, 600)
            async with httpx.AsyncClient(timeout=600) as client:
                idle = await probe(client, url, args.seconds, interval=0.01)
                print(f"bodies {label}, idle: {summary(idle)}")
                for name, raw in large_bodies("tiny").items():
                    lat, answers, per = await during(client, url, "/v1/chat/completions", raw.encode(), args.repeat)
                    print(f"bodies {label}, {args.repeat} x {name} ({len(raw) / 1e6:.1f} MB): {summary(lat)}; "
                          f"answers {sorted(set(answers))}, {per:.2f}s each")
                    ok = [x for x in lat if x is not None]
                    p50[on_loop, name] = (statistics.median(ok) if ok else float("nan"), max(ok, default=float("nan")))
        finally:
            proc.terminate()
            proc.wait(120)
    for name in large_bodies("tiny"):
        (b50, bmax), (n50, nmax) = p50[True, name], p50[False, name]
        print(f"{name}: probe p50 {b50 * 1e3:.1f} -> {n50 * 1e3:.1f} ms ({b50 / n50:.1f}x), max {bmax * 1e3:.0f} -> "
              f"{nmax * 1e3:.0f} ms ({bmax / nmax:.1f}x), before -> now")


def summary(lat: list[float | None]) -> str:
    ok = sorted(x for x in lat if x is not None)
    if not ok:
        return f"{len(lat)} probes, all failed"
    return (f"{len(lat)} probes, {len(lat) - len(ok)} failed, p50 {statistics.median(ok) * 1e3:.1f} ms, "
            f"max {ok[-1] * 1e3:.1f} ms")


async def front(args) -> None:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "nemo_eagle.cli", "serve", "--model", str(args.model), "--port", str(port),
           "--triton-grpc-port", "0", "--triton-http-port", "0", "--triton-metrics-port", "0", "--log-level",
           "WARNING", "--disable-log-requests"]
    proc = subprocess.Popen(cmd, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 600)
        async with httpx.AsyncClient(timeout=600) as client:
            meta = (await client.get(url + "/v1/models")).json()["data"][0]
            model, context = meta["id"], meta["max_model_len"]
            idle = await probe(client, url, args.seconds)
            print(f"idle:              {summary(idle)}; front RSS {rss_mib(proc.pid)[0]:.0f} MiB")

            # just under the default cap (context x longest token): tokenised, then refused for the context
            from nemo_eagle.serve.engine import Engine
            from nemo_eagle.serve.limits import longest_token_chars

            engine = Engine.from_pretrained(args.model, load_model=False)
            cap = context * longest_token_chars(engine.tokenizer)
            text = ("hello world " * (cap // 12 + 1))[: cap - 16]
            body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(client.post(url + "/v1/chat/completions", json=body))
                     for _ in range(args.large)]
            busy = await probe(client, url, args.seconds)
            codes = [r.status_code for r in await asyncio.gather(*tasks)]
            print(f"{args.large} x {len(text) / 1e6:.2f}M chars: {summary(busy)}; answers {sorted(set(codes))} after "
                  f"{time.perf_counter() - t0:.1f}s; front RSS now/peak {rss_mib(proc.pid)[0]:.0f}/"
                  f"{rss_mib(proc.pid)[1]:.0f} MiB")
            ratio = statistics.median(x for x in busy if x) / statistics.median(x for x in idle if x)
            print(f"probe p50 while tokenising / idle: {ratio:.2f}x")

            huge = {"model": model, "messages": [{"role": "user", "content": "x" * 30_000_000}]}
            t0 = time.perf_counter()
            r = await client.post(url + "/v1/chat/completions", json=huge)
            print(f"30 MB text: HTTP {r.status_code} {r.json()['error']['code']} in {time.perf_counter() - t0:.2f}s; "
                  f"front RSS now/peak {rss_mib(proc.pid)[0]:.0f}/{rss_mib(proc.pid)[1]:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(120)


def static_child(model: str, tokens: int, grad: bool) -> None:
    import resource

    import torch

    from nemo_eagle.modeling.generation import GenerationConfig, iter_tokens
    from nemo_eagle.serve.engine import Engine

    torch.set_num_threads(1)
    eng = Engine.from_pretrained(model, device="cpu")
    ids = torch.tensor([eng.tokenizer.encode("hello there")])
    cfg = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    t0 = time.perf_counter()
    with torch.enable_grad() if grad else torch.inference_mode():
        n = sum(1 for _ in iter_tokens(eng.model, ids, None, None, cfg))
    print(json.dumps({"tokens": n, "seconds": time.perf_counter() - t0,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def static(args) -> None:
    runs = {}
    for grad in (True, False):
        out = subprocess.run([sys.executable, __file__, "--static-child", "grad" if grad else "inference",
                              "--model", str(args.model), "--tokens", str(args.tokens)], capture_output=True,
                             text=True, cwd=REPO, check=True)
        runs[grad] = json.loads(out.stdout.strip().splitlines()[-1])
    before, now = runs[True], runs[False]
    print(f"static path, {args.tokens} tokens: autograd on (before) peak {before['peak_mib']:.0f} MiB in "
          f"{before['seconds']:.1f}s; inference_mode (now) peak {now['peak_mib']:.0f} MiB in {now['seconds']:.1f}s; "
          f"peak ratio {before['peak_mib'] / now['peak_mib']:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--tokens", type=int, default=3000, help="completion length for the static-path memory run")
    p.add_argument("--large", type=int, default=4, help="large prompts tokenised at once")
    p.add_argument("--seconds", type=float, default=5.0, help="probing time per phase")
    p.add_argument("--repeat", type=int, default=10, help="times each large body is sent while probing")
    p.add_argument("--only", choices=("front", "bodies", "static"), help="run one part")
    p.add_argument("--static-child", choices=("grad", "inference"), help=argparse.SUPPRESS)
    p.add_argument("--body-child", choices=("loop", "worker"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.static_child:
        return static_child(args.model, args.tokens, args.static_child == "grad")
    if args.body_child:
        return body_child(args.model, args.port, args.body_child == "loop")
    if args.only in (None, "front"):
        asyncio.run(front(args))
    if args.only in (None, "bodies"):
        asyncio.run(bodies(args))
    if args.only in (None, "static"):
        static(args)


if __name__ == "__main__":
    main()
