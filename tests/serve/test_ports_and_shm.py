"""Ports are checked before anything loads: a port in use is one line naming its flag and exit code 2, long before
a model could have loaded. Shared-memory regions left by a server that was killed outright (its pid is in their
name) are removed by the next one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from serve_helpers import REPO, free_port

from nemo_eagle.serve.supervisor import SHM_PREFIX, remove_orphaned_shm


@pytest.mark.parametrize("flag", ["--port", "--triton-grpc-port", "--triton-http-port", "--triton-metrics-port"])
def test_port_in_use_is_one_clear_line_before_loading(tiny_ckpt, flag):
    ports = {f: str(free_port()) for f in ("--port", "--triton-grpc-port", "--triton-http-port",
                                            "--triton-metrics-port")}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports[flag] = str(holder.getsockname()[1])
        cmd = [sys.executable, "-m", "nemo_eagle.cli", "serve", "--model", str(tiny_ckpt),
               *[x for kv in ports.items() for x in kv]]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"port {ports[flag]} on 127.0.0.1 ({flag}) is not free: already in use" in errors[0]
    assert "Traceback" not in done.stderr and "tritonserver" not in done.stderr


def test_orphaned_shared_memory_of_dead_servers_is_removed(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    orphan = f"/dev/shm/{SHM_PREFIX}{dead}_abcdef_test"
    live = f"/dev/shm/{SHM_PREFIX}{os.getppid()}_abcdef_test"  # a running process: its regions stay
    for path in (orphan, live):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        remove_orphaned_shm()
        assert not os.path.exists(orphan)
        assert os.path.exists(live)
    finally:
        for path in (orphan, live):
            if os.path.exists(path):
                os.unlink(path)


def test_a_port_held_by_another_process_is_not_taken_for_ours():
    """After Triton is ready, its gRPC and HTTP ports must be held by our tritonserver: a port someone else
    listens on (here this test process) is an error naming the flag."""
    from nemo_eagle.serve.settings import ServeSettings
    from nemo_eagle.serve.supervisor import listening_pids
    from nemo_eagle.serve.triton import TritonServer

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert listening_pids(port) == {os.getpid()}
        server = TritonServer(ServeSettings(triton_grpc_port=port, triton_http_port=0, triton_metrics_port=0), "m")
        server.process = subprocess.Popen(["sleep", "30"])
        try:
            with pytest.raises(RuntimeError, match=rf"port {port} \(--triton-grpc-port\) is held by \[{os.getpid()}\]"):
                server._check_owns_ports()
        finally:
            server.process.kill()
            server.process.wait()
