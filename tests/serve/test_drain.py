"""SIGTERM with work still running past ``--drain-timeout``, against a real tritonserver: while draining, the listener
stays up and new requests (and readiness) get a 503 OpenAI error; at the timeout a stream still running ends with
an error event and ``data: [DONE]`` (not a cut connection) and a plain request still waiting gets 503; then the
process exits 0 with tritonserver stopped and its shared-memory regions removed."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
from serve_helpers import ServeProcess, metric_value

MODEL = "tiny-eagle2"
LONG = 4000  # tokens: far more than the tiny model decodes within the drain timeout


def test_drain_answers_503_and_ends_long_streams_with_an_error_event(tiny_ckpt, tmp_path):
    server = ServeProcess(tiny_ckpt, tmp_path / "serve.log", "--max-model-len", "4096", "--drain-timeout", "2")
    results: dict[str, object] = {}
    try:
        server.wait_ready()
        triton = int(re.findall(r"tritonserver pid (\d+)", server.logs())[-1])
        prefix = next(a for a in Path(f"/proc/{triton}/cmdline").read_bytes().decode().split("\0")
                      if "shm-region-prefix-name=" in a).rsplit("=", 1)[1]
        assert any(n.startswith(prefix) for n in os.listdir("/dev/shm"))

        def streaming():
            body = {"model": MODEL, "messages": [{"role": "user", "content": "stream"}], "max_tokens": LONG,
                    "stream": True}
            with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=120) as resp:
                results["stream"] = [line for line in resp.iter_lines() if line]

        def text_stream():  # /v1/completions streams end the same way
            body = {"model": MODEL, "prompt": "stream", "max_tokens": LONG, "stream": True}
            with httpx.stream("POST", server.base + "/v1/completions", json=body, timeout=120) as resp:
                results["text_stream"] = [line for line in resp.iter_lines() if line]

        def blocking():
            body = {"model": MODEL, "messages": [{"role": "user", "content": "block"}], "max_tokens": LONG}
            results["plain"] = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120)

        threads = [threading.Thread(target=f) for f in (streaming, text_stream, blocking)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while metric_value(httpx.get(server.base + "/v1/metrics").text, "nemo_eagle_queue_depth") < 3:
            assert time.monotonic() < deadline and not results, f"never in flight together: {results}"
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "draining in-flight requests" not in server.logs():
            assert time.monotonic() < deadline, server.logs()[-3000:]
            time.sleep(0.02)
        # during the drain: answered (not refused) with 503 and an OpenAI error
        ready = httpx.get(server.base + "/v1/health/ready")
        new = httpx.post(server.base + "/v1/chat/completions", timeout=30,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "late"}]})
        emb = httpx.post(server.base + "/v1/embeddings", json={"model": MODEL, "input": ["late"]}, timeout=30)
        for t in threads:
            t.join(120)
        code = server.proc.wait(60)
    finally:
        server.stop()
    logs = server.logs()
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
    for r in (new, emb):
        assert r.status_code == 503, r.text
        assert r.json()["error"] == {"message": "the server is shutting down; retry on another instance",
                                     "type": "service_unavailable", "param": None, "code": "draining"}
        assert int(r.headers["retry-after"]) >= 1
    for events in (results["stream"], results["text_stream"]):
        assert events[-1] == "data: [DONE]", events[-3:]
        err = json.loads(events[-2][6:])["error"]
        assert err["code"] == "draining" and err["type"] == "service_unavailable", err
        finish = [c.get("finish_reason") for e in events[:-2] for c in json.loads(e[6:])["choices"]]
        assert not any(finish), "the stream had finished on its own: the test proves nothing"
    plain = results["plain"]
    assert plain.status_code == 503, plain.text
    assert plain.json()["error"]["code"] == "draining" and "drain timeout" in plain.json()["error"]["message"]
    assert code == 0, logs[-3000:]
    assert "drain timeout: ending the 3 request(s) still in flight" in logs
    assert "tritonserver stopped" in logs
    assert not any(n.startswith(prefix) for n in os.listdir("/dev/shm"))
