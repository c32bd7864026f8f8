"""A supervised backend, against a real tritonserver: killing the model's Python stub or tritonserver itself turns
readiness 503 at once, requests get 503 with ``Retry-After`` (a stream in flight ends with an error event and
``[DONE]``), the backend is restarted with its shared-memory regions removed, and answers are the same as before.
Past ``--backend-max-restarts`` the server gives up and exits with code 3."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import ServeProcess

BODY = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 12}


def triton_pids(server: ServeProcess) -> tuple[int, int]:
    """(tritonserver, model stub) of the backend now serving, from the server's log."""
    found = re.findall(r"tritonserver pid (\d+), model stub pid\(s\) \[(\d+)", server.logs())
    assert found, server.logs()[-3000:]
    return int(found[-1][0]), int(found[-1][1])


def shm_prefix(triton_pid: int) -> str:
    cmdline = Path(f"/proc/{triton_pid}/cmdline").read_bytes().decode().split("\0")
    return next(a for a in cmdline if "shm-region-prefix-name=" in a).rsplit("=", 1)[1]


def shm_regions(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def wait_for(predicate, timeout: float, what: str, server: ServeProcess):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout}s\n{server.logs()[-3000:]}")


@pytest.fixture(scope="module")
def server(sensitive_ckpt, tmp_path_factory):
    proc = ServeProcess(sensitive_ckpt, tmp_path_factory.mktemp("sup") / "serve.log", "--max-model-len", "4096",
                        "--backend-max-restarts", "2")
    proc.gave_up = False
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == (3 if proc.gave_up else 0), proc.logs()[-3000:]


def chat(server: ServeProcess, **extra) -> httpx.Response:
    return httpx.post(server.base + "/v1/chat/completions", json={"model": "tiny-eagle2-sensitive", **BODY, **extra},
                      timeout=120)


def check_outage_and_recovery(server: ServeProcess, victim: int, prefix: str, before: str, *, kill: bool = True):
    if kill:
        os.kill(victim, signal.SIGKILL)
    # readiness turns 503 (not a cached 200) the moment the process is gone
    ready = wait_for(lambda: r if (r := httpx.get(server.base + "/v1/health/ready")).status_code == 503 else None,
                     10, "readiness did not turn 503", server)
    assert ready.json()["error"]["code"] == "backend_unavailable"
    assert int(ready.headers["retry-after"]) >= 1
    # requests get 503 with Retry-After and an OpenAI error (not a 500 carrying a gRPC error)
    for resp in (chat(server), httpx.post(server.base + "/v1/embeddings",
                                          json={"model": "tiny-eagle2-sensitive", "input": ["x"]})):
        assert resp.status_code == 503, resp.text
        assert int(resp.headers["retry-after"]) >= 1
        err = resp.json()["error"]
        assert err["type"] == "service_unavailable" and err["code"] == "backend_unavailable"
        assert "Rpc" not in err["message"] and "127.0.0.1" not in err["message"]
    # the dead backend's shared-memory regions are removed, then a new one serves the same answers
    wait_for(lambda: True if not shm_regions(prefix) else None, 30, "shared memory not removed", server)
    wait_for(lambda: True if httpx.get(server.base + "/v1/health/ready").status_code == 200 else None, 180,
             "backend not restarted", server)
    assert triton_pids(server)[0] != victim
    after = chat(server)
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["message"]["content"] == before


def test_killed_stub_is_seen_at_once_and_restarted(server):
    before = chat(server)
    assert before.status_code == 200, before.text
    triton, stub = triton_pids(server)
    check_outage_and_recovery(server, stub, shm_prefix(triton), before.json()["choices"][0]["message"]["content"])
    assert "the model's Python stub" in server.logs()


def test_killed_tritonserver_ends_streams_cleanly_and_is_restarted(server):
    before = chat(server).json()["choices"][0]["message"]["content"]
    triton, _ = triton_pids(server)
    prefix = shm_prefix(triton)
    lines: list[str] = []
    started = threading.Event()

    def stream():
        body = {"model": "tiny-eagle2-sensitive", "messages": [{"role": "user", "content": "stream"}],
                "max_tokens": 3000, "stream": True}  # greedy, this prompt runs far past 400 tokens
        with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=120) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60), server.logs()[-3000:]
    time.sleep(0.3)
    os.kill(triton, signal.SIGKILL)
    t.join(60)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    err = json.loads(lines[-2][6:])["error"]
    assert err["code"] == "backend_unavailable" and err["type"] == "service_unavailable", err
    assert not any(c.get("finish_reason") for e in lines[:-2] for c in json.loads(e[6:])["choices"])
    check_outage_and_recovery(server, triton, prefix, before, kill=False)
    assert "tritonserver (exit code -9) is gone" in server.logs()


def test_gives_up_past_the_restart_limit_and_exits_non_zero(server):
    """Last in this module: with --backend-max-restarts 2, the third outage ends the server with exit code 3 (the
    stub is killed until then, so this holds whichever tests ran before)."""
    for _ in range(3):
        wait_for(lambda: True if httpx.get(server.base + "/v1/health/ready").status_code == 200 else None, 180,
                 "backend not ready", server)
        restarts = server.logs().count("ready again")
        triton, stub = triton_pids(server)
        prefix = shm_prefix(triton)
        os.kill(stub, signal.SIGKILL)
        outcome = wait_for(lambda: "exited" if server.proc.poll() is not None else
                           "restarted" if server.logs().count("ready again") > restarts else None, 180,
                           "neither restarted nor exited", server)
        if outcome == "exited":
            break
    code = server.proc.wait(60)
    server.gave_up = True
    assert code == 3, server.logs()[-3000:]
    assert "giving up (exit code 3)" in server.logs()
    assert not shm_regions(prefix)
    with pytest.raises(ProcessLookupError):
        os.kill(triton, 0)
