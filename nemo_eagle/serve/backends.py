"""Where generation runs, behind one small protocol: ``TritonBackend`` (a tritonserver process, over gRPC
streaming), ``LocalBackend`` (the model in this process, with the same engine: continuous batching, or static
batching for comparison) and ``FakeBackend`` (canned answers for schema and error tests).

``stream(job)`` yields ``GenerationEvent``s until one carries a ``finish_reason``; closing the iterator early
(client gone) cancels the job wherever it runs.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nemo_eagle.serve.engine import Engine, EngineError, GenerationEvent, GenerationJob

log = logging.getLogger(__name__)

TRITON_MODEL_NAME = "eagle"
READY_TTL_S = 1.0
INPUT_REQUEST, INPUT_IMAGES, OUTPUT_EVENT = "REQUEST", "IMAGES", "EVENT"


class BackendError(RuntimeError):
    """The backend failed for a reason that is not the client's (answered with 503 and ``Retry-After``)."""

    retry_after = 1


class BackendUnavailable(BackendError):
    """The backend is down (being restarted, or the server is shutting down): 503, retry later."""

    def __init__(self, message: str, retry_after: int = 1, code: str = "backend_unavailable"):
        super().__init__(message)
        self.retry_after, self.code = retry_after, code


def _task_result(payload: dict[str, Any]) -> dict[str, Any]:
    """A task's result, or the client error the engine reported for it, raised as ``EngineError``."""
    if payload.get("finish_reason") == "error":
        err = dict(payload.get("error") or {})
        raise EngineError(err.pop("message", "request failed"), **err)
    return payload


@runtime_checkable
class Backend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def is_ready(self) -> bool: ...

    def stream(self, job: GenerationJob) -> AsyncIterator[GenerationEvent]: ...

    async def call(self, task: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------------ Triton
class TritonBackend:
    """Speaks to the decoupled ``eagle`` model of a running tritonserver with ``tritonclient.grpc.aio``.

    With ``server`` (our ``TritonServer``) every call carries the server's secret header, and a ``supervisor``
    (``supervisor.Supervisor``) is started with the client: while it reports the backend down, calls fail at once
    with ``BackendUnavailable``, and it reconnects the client after each restart."""

    name = "triton"

    def __init__(self, grpc_url: str, *, model_name: str = TRITON_MODEL_NAME, server: Any = None,
                 supervisor: Any = None):
        self.grpc_url, self.model_name, self.server, self.supervisor = grpc_url, model_name, server, supervisor
        self.headers = getattr(server, "grpc_headers", None)
        self.client = None
        self.server_version: str | None = None
        self.ready_at = 0.0
        self.calls: set[Any] = set()  # the gRPC calls in flight, for abort()
        self.aborted: str | None = None

    def abort(self, reason: str) -> None:
        """End every call in flight with ``BackendUnavailable(reason)`` (the drain timeout passed)."""
        self.aborted = reason
        for call in list(self.calls):
            call.cancel()

    def _cancelled(self) -> BackendError | None:
        """A call cancelled by ``abort`` (not the caller's own cancellation) as the error its caller gets."""
        task = asyncio.current_task()
        if self.aborted is not None and (task is None or not task.cancelling()):
            return BackendUnavailable(self.aborted, 5, code="draining")
        return None

    async def start(self) -> None:
        await self._connect()
        if self.supervisor is not None:
            self.supervisor.start(self.reconnect)

    async def _connect(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            meta = await self.client.get_server_metadata(headers=self.headers, as_json=True)
            self.server_version = meta.get("version")
        except Exception as e:  # noqa: BLE001 - readiness reports it; metadata is informational
            log.warning("could not read Triton server metadata: %s", e)

    async def reconnect(self) -> None:
        """A new gRPC channel to the restarted tritonserver; the old one is closed (its calls failed already)."""
        old, self.ready_at = self.client, 0.0
        await self._connect()
        if old is not None:
            await old.close()

    def _check(self) -> None:
        if self.client is None:
            raise BackendError("Triton backend not started")
        sup = self.supervisor
        if sup is not None and not sup.healthy():
            what = "has failed and the server is exiting" if sup.failed else "is restarting"
            raise BackendUnavailable(f"the model backend {what}; retry in a few seconds", sup.retry_after)

    def _failure(self, e: BaseException) -> BackendError:
        """A gRPC failure as the client sees it: 503, without Triton's internal addresses."""
        log.warning("Triton call failed: %s", e)
        sup, code = self.supervisor, getattr(e, "code", None)
        status = code().name if callable(code) else type(e).__name__
        # UNAVAILABLE: the connection to tritonserver is gone (it died, maybe a moment before its exit is visible)
        if status == "UNAVAILABLE" or sup is not None and not sup.healthy() or (
                self.server is not None and not self.server.is_alive()):
            return BackendUnavailable("the model backend went down during the request; retry in a few seconds",
                                      getattr(sup, "retry_after", 1))
        return BackendError(f"the model backend failed ({status})")

    async def is_ready(self) -> bool:
        """Triton's model readiness; a positive answer is reused for READY_TTL_S (a health probe then costs no gRPC
        round trip), a negative one never is. A dead tritonserver or model stub is seen at once."""
        if self.client is None or (self.server is not None and not self.server.is_alive()):
            return False
        if self.supervisor is not None and not self.supervisor.healthy():
            self.ready_at = 0.0
            return False
        now = time.monotonic()
        if now - self.ready_at < READY_TTL_S:
            return True
        try:
            ready = bool(await self.client.is_model_ready(self.model_name, headers=self.headers))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            ready = False
        self.ready_at = now if ready else 0.0
        return ready

    def _inputs(self, job: GenerationJob) -> list[Any]:
        from tritonclient.grpc import InferInput

        req = InferInput(INPUT_REQUEST, [1, 1], "BYTES")
        req.set_data_from_numpy(np.array([[job.header()]], dtype=np.object_))
        inputs = [req]
        if job.images:
            imgs = InferInput(INPUT_IMAGES, [1, len(job.images)], "BYTES")
            imgs.set_data_from_numpy(np.array([job.images], dtype=np.object_))
            inputs.append(imgs)
        return inputs

    async def stream(self, job: GenerationJob) -> AsyncIterator[GenerationEvent]:
        self._check()
        inputs = self._inputs(job)

        async def requests():
            yield {"model_name": self.model_name, "inputs": inputs, "request_id": job.request_id}

        responses = self.client.stream_infer(requests(), headers=self.headers)
        self.calls.add(responses)
        finished = False
        try:
            try:
                async for result, error in responses:
                    if error is not None:
                        raise BackendError(f"Triton: {error}")
                    event = GenerationEvent.from_json(result.as_numpy(OUTPUT_EVENT).reshape(-1)[0])
                    finished = event.finish_reason is not None
                    yield event
                    if finished:
                        return
            except asyncio.CancelledError:
                if (err := self._cancelled()) is not None:
                    raise err from None
                raise
            except (BackendError, GeneratorExit):
                raise
            except Exception as e:  # noqa: BLE001 - gRPC errors (the server went away): 503, not 500
                raise self._failure(e) from e
            raise self._failure(BackendError("Triton closed the stream before the answer was complete"))
        finally:
            self.calls.discard(responses)
            if not finished:  # client went away (or we failed): Triton marks the request cancelled
                responses.cancel()

    async def call(self, task: dict[str, Any]) -> dict[str, Any]:
        """A one-response task (embeddings, ranking) through the same model and batcher."""
        from tritonclient.grpc import InferInput

        self._check()
        req = InferInput(INPUT_REQUEST, [1, 1], "BYTES")
        req.set_data_from_numpy(np.array([[json.dumps(task).encode()]], dtype=np.object_))

        async def requests():
            yield {"model_name": self.model_name, "inputs": [req]}

        responses = self.client.stream_infer(requests(), headers=self.headers)
        self.calls.add(responses)
        answered = False
        try:
            async for result, error in responses:
                if error is not None:
                    raise BackendError(f"Triton: {error}")
                answered = True
                return _task_result(json.loads(result.as_numpy(OUTPUT_EVENT).reshape(-1)[0]))
        except asyncio.CancelledError:
            if (err := self._cancelled()) is not None:
                raise err from None
            raise
        except (BackendError, EngineError):
            raise
        except Exception as e:  # noqa: BLE001 - gRPC errors (the server went away): 503, not 500
            raise self._failure(e) from e
        finally:
            self.calls.discard(responses)
            if not answered:  # cancelling a finished request can leave Triton waiting for it at shutdown
                responses.cancel()
        raise self._failure(BackendError("Triton closed the stream without an answer"))

    async def close(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.client is not None:
            await self.client.close()
            self.client = None

    def info(self) -> dict[str, Any]:  # client-visible (/v1/metadata): no internal addresses
        return {"backend": self.name, "triton_version": self.server_version, "triton_model": self.model_name}


# ------------------------------------------------------------------------------------------------- local
class _LocalRequest:
    def __init__(self, job: GenerationJob | dict[str, Any], loop: asyncio.AbstractEventLoop):
        self.job, self.loop = job, loop
        self.events: asyncio.Queue[GenerationEvent | dict | BaseException] = asyncio.Queue()
        self.cancelled = False

    def put(self, item: GenerationEvent | dict | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class LocalBackend:
    """The engine in this process. ``scheduler="continuous"``: jobs go to the engine's ``Scheduler`` (continuous
    batching), as inside the Triton model. ``"static"``: one worker thread takes whatever jobs are waiting (up to
    ``max_batch_size``) and decodes them as one batch, the way Triton's dynamic batcher fed the Triton model.
    Embedding and ranking tasks run on the worker thread in both modes."""

    name = "local"

    def __init__(self, engine: Engine, *, max_batch_size: int = 16, scheduler: str = "continuous",
                 scheduler_options: dict[str, Any] | None = None):
        if scheduler not in ("continuous", "static"):
            raise ValueError(f"scheduler must be 'continuous' or 'static', got {scheduler!r}")
        self.engine, self.max_batch_size, self.mode = engine, max_batch_size, scheduler
        self.scheduler_options = dict(scheduler_options or {"max_num_seqs": max_batch_size})
        self.scheduler: Any = None
        self.pending: queue.Queue[_LocalRequest | None] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        # (request_id, (finish_reason, completion_tokens)) of recent jobs, cancelled ones included
        self.finished: collections.deque[tuple[str, tuple[str, int]]] = collections.deque(maxlen=1000)

    async def start(self) -> None:
        if self.mode == "continuous" and self.scheduler is None:
            self.scheduler = self.engine.scheduler(**self.scheduler_options).start()
        self.worker = threading.Thread(target=self._loop, name="eagle-local-engine", daemon=True)
        self.worker.start()

    async def is_ready(self) -> bool:
        alive = self.scheduler is None or (self.scheduler.thread is not None and self.scheduler.thread.is_alive())
        return self.worker is not None and self.worker.is_alive() and alive

    def stats(self) -> dict[str, Any]:
        """The continuous scheduler's counters (queue, running, cache slots, vision cache), for ``/v1/metrics``."""
        if self.scheduler is None:
            return {}
        from dataclasses import asdict

        return {**asdict(self.scheduler.stats), "free_slots": len(self.scheduler.runner.cache.free)}

    def _loop(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch_size:
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.pending.put(None)  # stop after this batch
                    break
                batch.append(item)
            for task in [r for r in batch if isinstance(r.job, dict)]:
                try:
                    task.put(self.engine.run_task(task.job))
                except EngineError as e:
                    task.put(e)
                except Exception as e:  # a bug, not the client's fault: 5xx, keep serving
                    log.exception("local engine failed on a %s task", task.job.get("task"))
                    task.put(BackendError(f"{type(e).__name__}: {e}"))
            batch = [r for r in batch if not r.cancelled and not isinstance(r.job, dict)]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                for i, event in self.engine.run_batch([r.job for r in batch], lambda i, b=batch: b[i].cancelled):
                    batch[i].put(event)
                    if event.finish_reason is not None:
                        self.finished.append((batch[i].job.request_id, (event.finish_reason, event.completion_tokens)))
            except Exception as e:  # report to every waiting request, keep serving
                log.exception("local engine failed on a batch of %d", len(batch))
                for r in batch:
                    r.put(BackendError(f"generation failed: {type(e).__name__}: {e}"))

    async def stream(self, job: GenerationJob) -> AsyncIterator[GenerationEvent]:
        req = _LocalRequest(job, asyncio.get_running_loop())
        if self.scheduler is not None:
            def sink(ev: GenerationEvent, req: _LocalRequest = req) -> None:
                if ev.finish_reason is not None:
                    self.finished.append((job.request_id, (ev.finish_reason, ev.completion_tokens)))
                req.put(ev)

            self.scheduler.submit(job, sink, lambda: req.cancelled)
        else:
            self.pending.put(req)
        finished = False
        try:
            while True:
                item = await req.events.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:
                req.cancelled = True

    async def call(self, task: dict[str, Any]) -> dict[str, Any]:
        req = _LocalRequest(task, asyncio.get_running_loop())
        self.pending.put(req)
        item = await req.events.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.close)
            self.scheduler = None
        if self.worker is not None:
            self.pending.put(None)
            await asyncio.to_thread(self.worker.join)
            self.worker = None

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "scheduler": self.mode, "max_batch_size": self.max_batch_size}


# -------------------------------------------------------------------------------------------------- fake
class FakeBackend:
    """Deterministic stand-in for tests: answers ``"echo: <last user text>"`` one word per event.

    ``max_new_tokens`` counts words, a stop string cuts the text, and ``fail_with`` makes every job fail with
    that error dict (as the engine reports client errors).
    """

    name = "fake"

    def __init__(self, *, ready: bool = True, fail_with: dict[str, Any] | None = None, delay: float = 0.0):
        self.ready, self.fail_with, self.delay = ready, fail_with, delay
        self.jobs: list[GenerationJob] = []
        self.cancelled: list[str] = []

    async def start(self) -> None:
        pass

    async def is_ready(self) -> bool:
        return self.ready

    async def stream(self, job: GenerationJob) -> AsyncIterator[GenerationEvent]:
        self.jobs.append(job)
        if self.fail_with is not None:
            yield GenerationEvent(finish_reason="error", error=self.fail_with)
            return
        last = job.prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]
        words = ("echo: " + last).split(" ")
        text, done = "", False
        try:
            for k, word in enumerate(words):
                if self.delay:
                    await asyncio.sleep(self.delay)
                candidate = text + (word if k == 0 else " " + word)
                hits = [candidate.index(s) for s in job.stop if s in candidate]
                if hits:
                    done = True
                    yield GenerationEvent(text=candidate[len(text):min(hits)], completion_tokens=k + 1,
                                          finish_reason="stop", batch_size=1 if k == 0 else None)
                    return
                piece, text = candidate[len(text):], candidate
                finish = "stop" if k == len(words) - 1 else "length" if k + 1 >= job.max_new_tokens else None
                done = finish is not None
                yield GenerationEvent(text=piece, completion_tokens=k + 1, finish_reason=finish,
                                      batch_size=1 if k == 0 else None)
                if done:
                    return
        finally:
            if not done:
                self.cancelled.append(job.request_id)

    async def call(self, task: dict[str, Any]) -> dict[str, Any]:
        """Embeddings: an 8-d unit vector hashed from the text; ranking: shared-word counts as logits."""
        if self.fail_with is not None:
            return _task_result({"finish_reason": "error", "error": self.fail_with})
        if task["task"] == "embed":
            vecs = []
            for text in task["input"]:
                v = np.frombuffer(hashlib.sha256(text.encode()).digest()[:32], dtype=np.uint8)[:8].astype(np.float32)
                v = v[: task.get("dimensions") or 8]
                vecs.append((v / np.linalg.norm(v)).tolist())
            return {"embeddings": vecs, "num_tokens": [len(t.split()) for t in task["input"]]}
        query = set(task["query"].lower().split())
        logits = [float(len(query & set(p.lower().split()))) for p in task["passages"]]
        order = sorted(range(len(logits)), key=lambda i: -logits[i])
        return {"rankings": [{"index": i, "logit": logits[i]} for i in order]}

    async def close(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}
