"""``nemo-eagle serve``: start tritonserver with the Eagle model, then the OpenAI-compatible REST front.

Before anything loads, every port is checked (a clash: one line naming the flag, exit code 2). With the Triton
backend a ``Supervisor`` watches tritonserver and the model stub and restarts them (exit code 3 once it gives up).

SIGTERM / Ctrl-C: readiness and every new request turn 503 (the listener stays up, so clients get an answer rather
than a refused connection) while in-flight requests finish, up to ``--drain-timeout``; then the streams still
running end with an error event and ``data: [DONE]``, requests still waiting get 503, and Triton is stopped the same
way. A second signal stops at once. Runs as ``python -m`` too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

from nemo_eagle.serve.settings import ServeSettings, settings_from_argv

log = logging.getLogger("nemo_eagle.serve")
DRAIN_GRACE_S = 3.0  # after --drain-timeout: time for the cut streams to send their last events


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(settings: ServeSettings) -> None:
    level = logging.DEBUG if settings.log_level == "TRACE" else getattr(logging, settings.log_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if settings.jsonl_logging else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._nemo_eagle = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_nemo_eagle", False)] + [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "grpc"):  # one line per internal call (metrics scrape, gRPC polling)
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _uvicorn_server(app, settings: ServeSettings):
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """A signal marks the app as draining (ready and new requests -> 503) and keeps the listener up; uvicorn is
        told to stop once nothing is in flight, or ``DRAIN_GRACE_S`` after the drain timeout ended what was."""

        drain_started: float | None = None

        def handle_exit(self, sig, frame):  # uvicorn's signal hook
            st = app.state.serve
            if self.drain_started is not None or st.draining:  # a second signal, or a backend that gave up: stop
                super().handle_exit(sig, frame)
                return
            log.info("signal %s: draining in-flight requests (up to %.0fs); new requests get 503", sig,
                     settings.drain_timeout)
            self._captured_signals.append(sig)  # re-raised by uvicorn once it has stopped, as its own would be
            st.draining, self.drain_started = True, time.monotonic()

        async def on_tick(self, counter: int) -> bool:
            if await super().on_tick(counter):
                return True
            if self.drain_started is None:
                return False
            st = app.state.serve
            if st.in_flight == 0:
                return True
            waited = time.monotonic() - self.drain_started
            if waited >= settings.drain_timeout and not st.drain_expired:
                log.warning("drain timeout: ending the %d request(s) still in flight", st.in_flight)
                st.drain_expired = True
                abort = getattr(st.backend, "abort", None)
                if abort is not None:
                    abort("the server is shutting down: the drain timeout ended this request")
            return waited >= settings.drain_timeout + DRAIN_GRACE_S

    config = uvicorn.Config(app, host=settings.host, port=settings.server_port, log_config=None,
                            log_level="trace" if settings.log_level == "TRACE" else settings.log_level.lower(),
                            timeout_graceful_shutdown=int(DRAIN_GRACE_S),
                            access_log=not settings.disable_log_requests)
    return DrainingServer(config)


def _after_drain(sig: int, frame) -> None:
    log.debug("signal %s after the REST server stopped; continuing shutdown", sig)


def run(settings: ServeSettings) -> int:
    from nemo_eagle.serve.supervisor import EXIT_BACKEND_FAILED, PortInUse, Supervisor, check_ports

    if not settings.model_path:
        log.error("no model: pass --model PATH_OR_HF_ID or set NIM_MODEL_PATH")
        return 2
    try:
        check_ports(settings)  # before anything heavy: a clash is reported at once, not after the model loaded
    except PortInUse as e:
        log.error("%s", e)
        return 2
    from nemo_eagle.checkpoint import CheckpointError, open_checkpoint
    from nemo_eagle.serve.app import create_app
    from nemo_eagle.serve.backends import LocalBackend, TritonBackend
    from nemo_eagle.serve.engine import Engine

    if settings.cache_path is not None:
        os.environ["NIM_CACHE_PATH"] = str(settings.cache_path)
    try:
        local = open_checkpoint(settings.model_path).path
    except (FileNotFoundError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    triton = supervisor = server = None
    t0 = time.perf_counter()
    try:
        if settings.backend == "triton":
            from nemo_eagle.serve.supervisor import remove_orphaned_shm
            from nemo_eagle.serve.triton import TritonServer

            remove_orphaned_shm()
            triton = TritonServer(settings, str(local))
            triton.start()
            engine = Engine.from_pretrained(local, load_model=False, max_model_len=settings.max_model_len)
            triton.wait_ready()

            def give_up() -> None:  # the supervisor could not bring the backend back: stop, exit non-zero
                app.state.serve.draining = True
                server.should_exit = True

            supervisor = Supervisor(triton, max_restarts=settings.backend_max_restarts,
                                    backoff=settings.backend_restart_backoff, on_give_up=give_up)
            backend = TritonBackend(triton.grpc_url, server=triton, supervisor=supervisor)
        else:
            engine = Engine.from_pretrained(local, device=settings.device, dtype=settings.dtype,
                                            max_model_len=settings.max_model_len, kernels=settings.kernels)
            backend = LocalBackend(engine, max_batch_size=settings.triton_max_batch_size,
                                   scheduler=settings.scheduler, scheduler_options=settings.scheduler_options())
        app = create_app(settings, backend, engine=engine,
                         triton_metrics_url=triton.metrics_url if triton is not None else None)
        if settings.enable_otel:
            from nemo_eagle.serve.telemetry import instrument

            instrument(app)
        server = _uvicorn_server(app, settings)
        # uvicorn re-raises the signal it drained for once it returns; with these handlers in place that lands
        # here instead of killing the process, so Triton below is still stopped cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _after_drain)
        log.info("model loaded in %.1fs; REST API on http://%s:%d/v1 (model id %r)", time.perf_counter() - t0,
                 settings.host, settings.server_port, settings.model_name)
        server.run()
        return EXIT_BACKEND_FAILED if supervisor is not None and supervisor.failed else 0
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    finally:
        if triton is not None:
            triton.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_argv(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:  # pydantic ValidationError is a ValueError
        print(f"nemo-eagle serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    setup_logging(settings)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
