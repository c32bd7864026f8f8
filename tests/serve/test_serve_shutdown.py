"""SIGTERM drains: requests in flight when the signal arrives still complete, then Triton is stopped cleanly
and the process exits 0 (its own server, since this test ends it)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import httpx
import pytest
from serve_helpers import ServeProcess, metric_value

MODEL = "tiny-eagle2"


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_sigterm_drains_in_flight_requests_and_stops_triton(tiny_ckpt, tmp_path, scheduler):
    server = ServeProcess(tiny_ckpt, tmp_path / "serve.log", "--max-model-len", "4096", "--drain-timeout", "60",
                          "--scheduler", scheduler)
    try:
        server.wait_ready()
        results: dict[str, object] = {}

        # static batching decodes the second request after the first: shorter answers keep both within the drain
        stream_tokens, block_tokens = (800, 500) if scheduler == "continuous" else (300, 200)

        def streaming():
            body = {"model": MODEL, "messages": [{"role": "user", "content": "stream"}], "max_tokens": stream_tokens,
                    "temperature": 1.0, "seed": 2, "stream": True, "stream_options": {"include_usage": True}}
            with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=120) as resp:
                results["stream"] = [line for line in resp.iter_lines() if line]

        def blocking():
            body = {"model": MODEL, "messages": [{"role": "user", "content": "block"}], "max_tokens": block_tokens,
                    "temperature": 1.0, "seed": 3}
            results["plain"] = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120)

        threads = [threading.Thread(target=streaming), threading.Thread(target=blocking)]
        for t in threads:
            t.start()
        # both requests are with the backend (neither finished) -> SIGTERM
        deadline = time.monotonic() + 30
        while metric_value(httpx.get(server.base + "/v1/metrics").text, "nemo_eagle_queue_depth") < 2:
            assert time.monotonic() < deadline and not results, f"requests never in flight together: {results}\n" + \
                server.logs()[-3000:]
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        code = server.proc.wait(90)
    finally:
        server.stop()
    logs = server.logs()
    assert code == 0, logs[-3000:]
    events = results["stream"]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][6:])["usage"]
    finish = [json.loads(e[6:])["choices"][0].get("finish_reason") for e in events[:-2]]
    assert usage["completion_tokens"] == stream_tokens or "stop" in finish  # ran to its end, not cut off
    plain = results["plain"]
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert "draining in-flight requests" in logs and "tritonserver stopped (exit code 0)" in logs
    assert ("continuous batching:" in logs) == (scheduler == "continuous")  # the engine asked for ran
    pid = int(re.search(r"stopping tritonserver \(pid (\d+)\)", logs).group(1))
    time.sleep(0.2)
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, f"tritonserver (pid {pid}) still running"
