"""Process-level guards of ``nemo-eagle serve``: its ports checked before anything loads, and the backend supervised.

Ports: every port the server will listen on (REST, Triton's gRPC, HTTP and metrics) is bound once and let go
before the model loads (this module imports nothing heavy), so a clash is one line naming the flag, at once.

The front supervises its backend: tritonserver and the model's Python stub process(es) it spawned.

Every ``poll`` seconds (and on every readiness probe) the supervisor reads /proc: the moment either process is
gone, the backend is *down*: readiness answers 503 and generation, embeddings and ranking get 503 with
``Retry-After``. What is left of the old backend is killed (its process group) and its shared-memory regions are
removed, then a new tritonserver is started on the same ports with the same secret and the gRPC client
reconnects. A restart that fails is retried with exponential back-off; once ``max_restarts`` restarts have
been tried within ``RESTART_WINDOW_S`` (a crash loop, or a model that no longer loads) the supervisor gives up
and the process exits with ``EXIT_BACKEND_FAILED``, so an orchestrator can restart the whole server.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import glob
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemo_eagle.serve.settings import ServeSettings

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
SHM_PREFIX = "nemo_eagle_"  # + the front's pid + a random part: several servers on one machine never collide
RESTART_WINDOW_S = 600.0
EXIT_BACKEND_FAILED = 3


class PortInUse(RuntimeError):
    """A port this server must bind is taken; ``flag`` is the option that sets it."""

    def __init__(self, flag: str, host: str, port: int, reason: str):
        self.flag, self.host, self.port = flag, host, port
        super().__init__(f"port {port} on {host} ({flag}) is not free: {reason}; stop what holds it or pass another "
                         f"{flag} (0 picks a free one)")


def check_port(host: str, port: int, flag: str) -> None:
    """Bind ``host:port`` once and let it go: raise ``PortInUse`` naming ``flag`` if that fails. Port 0 is free."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a server that just exited leaves TIME_WAIT only
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "already in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
            raise PortInUse(flag, host, port, reason) from None


def check_ports(settings: ServeSettings) -> None:
    """Every port ``nemo-eagle serve`` will listen on, before anything heavy starts."""
    check_port(settings.host, settings.server_port, "--port")
    if settings.backend == "triton":
        check_port(settings.triton_address, settings.triton_grpc_port, "--triton-grpc-port")
        check_port("127.0.0.1", settings.triton_http_port, "--triton-http-port")
        check_port(settings.triton_address, settings.triton_metrics_port, "--triton-metrics-port")


def _pid_alive(pid: int) -> bool:
    """True for a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def child_pids(pid: int, name: str) -> list[int]:
    """Pids of the live children of ``pid`` whose command name is ``name`` (from /proc)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat, "rb") as f:
                comm_end = (raw := f.read()).rindex(b")")
            comm, rest = raw[raw.index(b"(") + 1:comm_end].decode(errors="replace"), raw[comm_end + 2:].split()
        except (OSError, ValueError):
            continue
        if int(rest[1]) == pid and name.startswith(comm) and rest[0] not in (b"Z", b"X"):
            out.append(int(stat.split("/")[2]))
    return out


def remove_shm(prefix: str) -> list[str]:
    """Delete the shared-memory regions whose names start with ``prefix``; return their names."""
    gone = []
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        try:
            os.unlink(path)
            gone.append(os.path.basename(path))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove shared-memory region %s: %s", path, e)
    return gone


def remove_orphaned_shm() -> None:
    """Regions left by earlier servers that were killed outright (their pid is in the name and no longer runs)."""
    for path in glob.glob(os.path.join(SHM_DIR, SHM_PREFIX + "*")):
        m = re.match(re.escape(SHM_PREFIX) + r"(\d+)_", os.path.basename(path))
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(path)
                log.info("removed shared-memory region %s left by a server that no longer runs", path)
            except OSError:
                pass


def listening_pids(port: int) -> set[int]:
    """Pids holding a listening TCP socket on ``port`` (from /proc; only processes we may inspect)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    pids = set()
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in inodes:
                pids.add(int(fd.split("/")[2]))
        except OSError:
            continue
    return pids


class Supervisor:
    """Watches one ``TritonServer`` (``dead_process()``, ``kill()``, ``start()``, ``wait_ready()``)."""

    def __init__(self, server: Any, *, max_restarts: int = 3, backoff: float = 1.0, poll: float = 0.2,
                 on_give_up: Callable[[], None] | None = None):
        self.server, self.max_restarts, self.backoff, self.poll = server, max_restarts, backoff, poll
        self.on_give_up = on_give_up
        self.up = True
        self.failed = False
        self.down_since: float | None = None
        self.attempts: collections.deque[float] = collections.deque()
        self.recoveries: list[float] = []  # seconds from "down" to "up" of each outage, for logs and the soak
        self._task: asyncio.Task | None = None

    def healthy(self) -> bool:
        """Up, and both processes still running: a killed stub or tritonserver is seen here at once."""
        return self.up and self.server.dead_process() is None

    @property
    def retry_after(self) -> int:
        """Seconds a client is told to wait before retrying while the backend is down."""
        return max(1, round(self.backoff)) if not self.failed else 30

    def start(self, reconnect: Callable[[], Awaitable[None]]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(reconnect), name="backend-supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self, reconnect: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.poll)
            dead = self.server.dead_process()
            if dead is None:
                continue
            self.up, self.down_since = False, time.monotonic()
            log.error("backend down: %s is gone; answering 503 until it is restarted", dead)
            if not await self._recover(reconnect):
                return

    async def _recover(self, reconnect: Callable[[], Awaitable[None]]) -> bool:
        delay = 0.0
        while True:
            now = time.monotonic()
            while self.attempts and now - self.attempts[0] > RESTART_WINDOW_S:
                self.attempts.popleft()
            if len(self.attempts) >= self.max_restarts:
                self.failed = True
                log.error("backend restarted %d time(s) in the last %.0f s and is down again; giving up (exit code "
                          "%d) so that the orchestrator restarts the server", len(self.attempts), RESTART_WINDOW_S,
                          EXIT_BACKEND_FAILED)
                await asyncio.to_thread(self.server.kill)
                if self.on_give_up is not None:
                    self.on_give_up()
                return False
            if delay:
                await asyncio.sleep(delay)
            self.attempts.append(time.monotonic())
            await asyncio.to_thread(self.server.kill)  # the survivor of the pair, and the shared-memory regions
            try:
                self.server.start()  # on the event loop's thread, the main thread: the child dies with it
                await asyncio.to_thread(self.server.wait_ready)
                await reconnect()
            except Exception as e:  # noqa: BLE001 - any failure to come back is retried
                log.error("backend restart %d failed: %s", len(self.attempts), str(e).splitlines()[0])
                delay = self.backoff if not delay else delay * 2
                continue
            took = time.monotonic() - (self.down_since or now)
            self.recoveries.append(took)
            self.up, self.down_since = True, None
            log.warning("backend restarted and ready again after %.1f s", took)
            return True
