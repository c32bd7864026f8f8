"""Soak: a bounded mixed load against a real ``nemo-eagle serve`` (tiny model, loopback only) with faults injected.

Clients keep sending chat requests, streams, embeddings, streams they abandon mid-way, and client errors
(oversized ``max_tokens``, a body over the size limit, malformed JSON, a lone surrogate, a malformed image URL).
A third of the way in the model's Python stub is killed, two thirds in tritonserver itself; the supervisor must
bring the backend back each time. Printed: requests served by kind, answers by status code, how streams ended,
detection and recovery time of each fault, the peak RSS of each process (front, tritonserver, stub; over every
restart), and the checks: no 5xx for a client error, no 5xx outside an outage other than the 503s it announces,
no stream cut without ``[DONE]``, every process within ``--memory-budget``, a clean exit with no shared memory
left behind. Exit code 1 if a check fails.

    python benchmarks/soak.py --quick          # about two minutes
    python benchmarks/soak.py --duration 300   # five minutes
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "tiny-eagle2"
MODEL = "tiny-eagle2"
CLIENT_ERRORS = ("huge_max_tokens", "oversized_body", "malformed_json", "surrogate", "bad_image_url")
KINDS = {"chat": 30, "stream": 20, "embeddings": 15, "disconnect": 10, **{k: 5 for k in CLIENT_ERRORS}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_size(text: str) -> int:
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30}
    m = re.fullmatch(r"([\d.]+)\s*(kib|mib|gib)?", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 3GiB)")
    return int(float(m.group(1)) * units.get(m.group(2) or "", 1))


# ----------------------------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    end = raw.rindex(b")")
    return raw[raw.index(b"(") + 1:end].decode(), int(raw[end + 2:].split()[1])


def processes(front: int) -> dict[str, list[int]]:
    """{role: pids} of the server: the front, its tritonserver(s) and their Python stubs."""
    children: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            children[st[1]].append((int(d.name), st[0]))
    triton = [p for p, name in children[front] if name == "tritonserver"]
    stubs = [p for t in triton for p, name in children[t] if name.startswith("triton_python")]
    return {"front": [front], "tritonserver": triton, "stub": stubs}


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peak RSS of each role every 0.2 s, across restarts."""

    def __init__(self, front: int):
        super().__init__(daemon=True)
        self.front, self.peak = front, collections.Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for role, pids in processes(self.front).items():
                for pid in pids:
                    self.peak[role] = max(self.peak[role], rss(pid))


# ------------------------------------------------------------------------------------------------ requests
def request_for(kind: str) -> tuple[str, dict]:
    """(path, httpx keyword arguments) of one request of ``kind``."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": f"soak {random.random()}"}], "max_tokens": 16}
    if kind in ("chat", "huge_max_tokens"):
        return "/v1/chat/completions", {"json": {**chat, "max_tokens": 10**7 if kind != "chat" else 16}}
    if kind in ("stream", "disconnect"):
        return "/v1/chat/completions", {"json": {**chat, "max_tokens": 64 if kind == "stream" else 400,
                                                 "stream": True}}
    if kind == "embeddings":
        return "/v1/embeddings", {"json": {"model": MODEL, "input": ["soak one", "soak two"]}}
    if kind == "oversized_body":
        return "/v1/chat/completions", {"content": b'{"model": "' + b"x" * (33 * 2**20) + b'"}',
                                        "headers": {"content-type": "application/json"}}
    if kind == "malformed_json":
        return "/v1/chat/completions", {"content": b'{"model": ', "headers": {"content-type": "application/json"}}
    if kind == "surrogate":
        return "/v1/chat/completions", {"content": b'{"model": "tiny-eagle2", "messages": [{"role": "user", '
                                        b'"content": "a \\ud800 b"}]}', "headers": {"content-type": "application/json"}}
    assert kind == "bad_image_url"
    parts = [{"type": "image_url", "image_url": {"url": "http://[::1/x.png"}}, {"type": "text", "text": "hi"}]
    return "/v1/chat/completions", {"json": {**chat, "messages": [{"role": "user", "content": parts}]}}


class Stats:
    def __init__(self):
        self.by_kind = collections.Counter()
        self.codes = collections.Counter()
        self.streams = collections.Counter()  # how streams ended: done, error_event, cut
        self.bad: list[str] = []  # check failures, with the request that caused them
        self.outage = False  # set by the fault injector between a kill and the recovery


async def one(client: httpx.AsyncClient, kind: str, stats: Stats) -> None:
    path, kw = request_for(kind)
    during_outage = stats.outage
    try:
        if kind in ("stream", "disconnect"):
            async with client.stream("POST", path, **kw) as resp:
                status, lines = resp.status_code, []
                if status == 503:
                    await asyncio.sleep(min(1.0, float(resp.headers.get("retry-after", 1))))
                if status == 200:
                    async for line in resp.aiter_lines():
                        if line:
                            lines.append(line)
                        if kind == "disconnect" and len(lines) >= 3:
                            break  # the client goes away mid-stream
                if status == 200 and kind == "stream":
                    ended = ("done" if lines[-1:] == ["data: [DONE]"] and '"error"' not in "".join(lines[-2:])
                             else "error_event" if lines[-1:] == ["data: [DONE]"] else "cut")
                    stats.streams[ended] += 1
                    if ended == "cut":
                        stats.bad.append(f"stream cut without [DONE]: {lines[-2:]}")
        else:
            resp = await client.post(path, **kw)
            status = resp.status_code
            if status == 503:  # a well-behaved client waits as told (at most a second here)
                await asyncio.sleep(min(1.0, float(resp.headers.get("retry-after", 1))))
    except httpx.HTTPError as e:
        status = type(e).__name__
        if not (kind == "oversized_body" and isinstance(e, (httpx.WriteError, httpx.RemoteProtocolError))):
            stats.bad.append(f"{kind}: transport error {e!r}")
    stats.by_kind[kind] += 1
    stats.codes[status] += 1
    if not isinstance(status, int):
        return
    if kind in CLIENT_ERRORS and not 400 <= status < 500:
        stats.bad.append(f"{kind}: status {status} (a client error must be a 4xx)")
    elif kind not in CLIENT_ERRORS and status >= 500 and not (status == 503 and (during_outage or stats.outage)):
        stats.bad.append(f"{kind}: status {status} outside an outage")


async def load(base: str, stop_at: float, concurrency: int, stats: Stats) -> None:
    kinds, weights = zip(*KINDS.items())
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                await one(client, rng.choices(kinds, weights)[0], stats)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


def inject(base: str, front: int, role: str, stats: Stats, out: dict) -> None:
    """Kill one process of ``role``; record how long readiness took to turn 503 and to come back."""
    victim = processes(front)[role][0]
    t0 = time.monotonic()
    stats.outage = True
    os.kill(victim, signal.SIGKILL)
    seen_down = None
    while time.monotonic() - t0 < 300:
        try:
            code = httpx.get(base + "/v1/health/ready", timeout=5).status_code
        except httpx.HTTPError:
            code = None
        if code == 503 and seen_down is None:
            seen_down = time.monotonic() - t0
        if code == 200 and seen_down is not None:
            out[role] = (seen_down, time.monotonic() - t0)
            break
        time.sleep(0.05)
    else:
        stats.bad.append(f"no recovery within 300 s after killing the {role}")
    stats.outage = False


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=240.0, help="seconds of load (default 240)")
    ap.add_argument("--quick", action="store_true", help="90 s of load")
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--memory-budget", type=parse_size, default=parse_size("3GiB"),
                    help="most RSS any one process (front, tritonserver, stub) may reach (default 3GiB)")
    ap.add_argument("--kv-cache-memory", default="64MiB", help="the server's --kv-cache-memory")
    args = ap.parse_args(argv)
    duration = 90.0 if args.quick else args.duration
    random.seed(0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkdtemp(prefix="soak-")) / "serve.log"
    cmd = [sys.executable, "-m", "nemo_eagle.cli", "serve", "--model", str(TINY), "--port", str(port),
           "--triton-grpc-port", "0", "--triton-http-port", "0", "--triton-metrics-port", "0",
           "--max-model-len", "4096", "--kv-cache-memory", args.kv_cache_memory, "--disable-log-requests",
           "--backend-max-restarts", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while httpx.get(base + "/v1/health/ready").status_code != 200 if _listening(port) else True:
            if server.poll() is not None or time.monotonic() - t0 > 300:
                print(log_path.read_text()[-3000:])
                return 1
            time.sleep(0.5)
        sampler = Sampler(server.pid)
        sampler.start()
        stats, recovery = Stats(), {}
        stop_at = time.monotonic() + duration
        faults = [(duration / 3, "stub"), (2 * duration / 3, "tritonserver")]
        start = time.monotonic()

        def injector() -> None:
            for at, role in faults:
                time.sleep(max(0.0, start + at - time.monotonic()))
                inject(base, server.pid, role, stats, recovery)

        inj = threading.Thread(target=injector, daemon=True)
        inj.start()
        asyncio.run(load(base, stop_at, args.concurrency, stats))
        inj.join(300)
        shm_prefixes = set(re.findall(r"shm-region-prefix-name=(\S+?_)\W", _cmdlines(server.pid)))
        sampler.stop.set()
        server.send_signal(signal.SIGTERM)
        code = server.wait(120)
    finally:
        if server.poll() is None:
            server.kill()
    left = [n for n in os.listdir("/dev/shm") if n.startswith("nemo_eagle_" + str(server.pid) + "_")]
    wall = time.monotonic() - start

    print(f"soak: {wall:.0f} s, {args.concurrency} clients, tiny model, loopback; server log {log_path}")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_kind.items()))
    print(f"requests: {sum(stats.by_kind.values())} ({kinds})")
    print(f"answers by status: {', '.join(f'{k}: {v}' for k, v in sorted(stats.codes.items(), key=str))}")
    print(f"streams: {', '.join(f'{k} {v}' for k, v in sorted(stats.streams.items()))}")
    for role in ("stub", "tritonserver"):
        if role in recovery:
            down, up = recovery[role]
            print(f"fault: killed the {role}: readiness 503 after {down:.2f} s, ready again after {up:.1f} s")
    for role in ("front", "tritonserver", "stub"):
        peak = sampler.peak[role]
        print(f"peak RSS {role}: {peak / 2**20:.0f} MiB (budget {args.memory_budget / 2**20:.0f} MiB)")
        if peak > args.memory_budget:
            stats.bad.append(f"{role} peak RSS {peak / 2**20:.0f} MiB over the budget")
    if code != 0:
        stats.bad.append(f"server exit code {code} after SIGTERM")
    if left or not shm_prefixes:
        stats.bad.append(f"shared memory left behind: {left}" if left else "no shared-memory prefix seen")
    if len(recovery) != len(faults):
        stats.bad.append(f"recovered from {len(recovery)} of {len(faults)} faults")
    print(f"exit code after SIGTERM: {code}; shared-memory regions left: {len(left)}")
    print("checks: " + ("all passed (no 5xx for client errors, no 5xx outside outages, no cut stream, memory "
                        "within budget, clean exit)" if not stats.bad else f"{len(stats.bad)} FAILED"))
    for line in stats.bad[:20]:
        print("  " + line)
    return 1 if stats.bad else 0


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cmdlines(front: int) -> str:
    out = []
    for pid in processes(front)["tritonserver"]:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() + " ")
        except OSError:
            pass
    return " ".join(out)


if __name__ == "__main__":
    sys.exit(main())
