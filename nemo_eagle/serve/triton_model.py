"""The Triton Python-backend model: decoupled (one response per text piece), over ``serve.engine``. The model
repository's ``model.py`` only re-exports ``TritonPythonModel`` from here.

``scheduler=continuous`` (default): ``execute`` hands each generation request to the engine's ``Scheduler``
and returns at once; the scheduler thread sends the responses, so requests join the running batch between
decode steps instead of waiting for the batch Triton formed before them. ``scheduler=static``: ``execute``
decodes the batch Triton's dynamic batcher formed until its longest request ends (the old behaviour).

Inputs: ``REQUEST`` (BYTES [1]: a JSON job header) and optional ``IMAGES`` (BYTES [-1], ragged: encoded
image files). Output: ``EVENT`` (BYTES [1]: a JSON ``GenerationEvent``, or an embedding/ranking result).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from nemo_eagle.serve.engine import Engine, EngineError, GenerationEvent, GenerationJob
from nemo_eagle.serve.metrics import ENGINE_COUNTERS, ENGINE_GAUGES

log = logging.getLogger("nemo_eagle.serve.triton_model")

CANCEL_CHECK_S = 0.05
METRICS_S = 0.25  # how often a running request asks Triton whether its client cancelled
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]


def model_params(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb  # only importable inside the Triton stub

        self.pb = pb
        params = model_params(args)
        level = params.get("log_level", "INFO").upper()
        logging.basicConfig(level=getattr(logging, "DEBUG" if level == "TRACE" else level, logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s [triton]: %(message)s")
        self.engine = Engine.from_pretrained(params["model_path"], device=params.get("device") or None,
                                             dtype=params.get("dtype") or None,
                                             max_model_len=int(params.get("max_model_len") or 0) or None,
                                             kernels=params.get("kernels") or "auto")
        labels = {"model": args["model_name"]}
        family = pb.MetricFamily
        self.families = [
            family("nemo_eagle_triton_batch_size", "jobs per execute() of the Eagle model", family.HISTOGRAM),
            family("nemo_eagle_triton_generated_tokens", "tokens generated inside Triton", family.COUNTER),
            family("nemo_eagle_triton_cancelled", "jobs stopped early because the client cancelled", family.COUNTER),
            family("nemo_eagle_triton_image_tiles", "image tiles encoded inside Triton", family.COUNTER),
        ]
        self.m_batch = self.families[0].Metric(labels=labels, buckets=BATCH_BUCKETS)
        self.m_tokens, self.m_cancelled, self.m_tiles = (f.Metric(labels=labels) for f in self.families[1:])
        self.scheduler = None
        if params.get("scheduler", "continuous") == "continuous":
            self.scheduler = self.engine.scheduler(**json.loads(params.get("scheduler_options") or "{}"))
            gauges, counters = ENGINE_GAUGES, ENGINE_COUNTERS
            self.families += [family(f"nemo_eagle_engine_{k}", v, family.GAUGE) for k, v in gauges.items()]
            self.families += [family(f"nemo_eagle_engine_{k}", v, family.COUNTER) for k, v in counters.items()]
            self.m_engine = {k: f.Metric(labels=labels) for k, f in zip([*gauges, *counters], self.families[4:])}
            self.m_counted = dict.fromkeys(counters, 0.0)
            self.m_set: dict[str, int] = {}
            self.m_last = 0.0
            self.scheduler.on_step = self._observe
            self.scheduler.start()

    def _observe(self, stats: Any) -> None:
        """Scheduler counters -> Triton metrics, at most every METRICS_S (each update is an IPC round trip)."""
        now = time.monotonic()
        if now - self.m_last < METRICS_S and not stats.idle:
            return
        self.m_last = now
        values = {"waiting": stats.waiting, "preparing": stats.preparing, "running": stats.running,
                  "free_slots": len(self.scheduler.runner.cache.free), "slots": stats.slots}
        for k, v in values.items():
            if self.m_set.get(k) != v:  # each update is an IPC round trip: only the ones that changed
                self.m_engine[k].set(float(v))
                self.m_set[k] = v
        for k in self.m_counted:
            v = float(getattr(stats, k))
            if v > self.m_counted[k]:
                self.m_engine[k].increment(v - self.m_counted[k])
                self.m_counted[k] = v

    # ------------------------------------------------------------------------------------------ helpers
    def _event(self, payload: bytes) -> Any:
        out = self.pb.Tensor("EVENT", np.array([[payload]], dtype=np.object_))
        return self.pb.InferenceResponse(output_tensors=[out])

    def _read(self, request: Any) -> tuple[dict[str, Any], list[bytes]]:
        header = self.pb.get_input_tensor_by_name(request, "REQUEST").as_numpy().reshape(-1)[0]
        images = self.pb.get_input_tensor_by_name(request, "IMAGES")
        data = [] if images is None else [bytes(x) for x in images.as_numpy().reshape(-1)]
        return json.loads(header), data

    # ------------------------------------------------------------------------------------------ execute
    def execute(self, requests: list[Any]) -> None:
        if self.scheduler is not None:
            return self._submit(requests)
        return self._execute_static(requests)

    def _submit(self, requests: list[Any]) -> None:
        """Continuous batching: each generation job goes to the scheduler, whose thread answers it."""
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            job, payload = self._job_or_reply(request)
            if job is not None:
                self.scheduler.submit(job, self._sink(sender), request.is_cancelled)
            else:
                sender.send(self._event(payload), flags=final)
        self.m_batch.observe(float(len(requests)))  # an IPC round trip: after the jobs are on their way

    def _job_or_reply(self, request: Any) -> tuple[GenerationJob | None, bytes | None]:
        """A generation job to schedule, or the one reply to send now (embeddings, ranking, a refused request)."""
        try:
            header, images = self._read(request)
            if header.get("task") in ("embed", "rank"):
                return None, json.dumps(self.engine.run_task(header)).encode()
            return GenerationJob(**header, images=images), None
        except EngineError as e:
            return None, GenerationEvent(finish_reason="error", error=e.to_dict()).to_json()
        except (ValueError, TypeError, KeyError) as e:
            err = EngineError(f"malformed request to the Triton model: {e}")
            return None, GenerationEvent(finish_reason="error", error=err.to_dict()).to_json()

    def _sink(self, sender: Any):
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def send(ev: GenerationEvent) -> None:
            # the response first, the metrics (each an IPC round trip) after it: they are not on the client's clock
            if ev.finish_reason == "cancelled":
                sender.send(flags=final)
            else:
                sender.send(self._event(ev.to_json()), flags=final if ev.finish_reason is not None else 0)
            if ev.tiling:
                self.m_tiles.increment(float(sum(t["num_tiles"] for t in ev.tiling)))
            if ev.finish_reason is not None:
                self.m_tokens.increment(float(ev.completion_tokens))
            if ev.finish_reason == "cancelled":
                self.m_cancelled.increment(1.0)

        return send

    def _execute_static(self, requests: list[Any]) -> None:
        pb, final = self.pb, self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        senders = [r.get_response_sender() for r in requests]
        done = [False] * len(requests)
        jobs, owner = [], []
        for k, request in enumerate(requests):
            job, payload = self._job_or_reply(request)
            if job is not None:
                jobs.append(job)
                owner.append(k)
                continue
            senders[k].send(self._event(payload), flags=final)
            done[k] = True
        if jobs:
            self.m_batch.observe(float(len(jobs)))
        checked: dict[int, tuple[float, bool]] = {}

        def cancelled(i: int) -> bool:
            """Ask Triton (an IPC round trip) at most every CANCEL_CHECK_S per request."""
            now = time.monotonic()
            last, value = checked.get(i, (-1.0, False))
            if not value and now - last >= CANCEL_CHECK_S:
                value = bool(requests[owner[i]].is_cancelled())
                checked[i] = (now, value)
            return value

        try:
            for i, ev in self.engine.run_batch(jobs, cancelled):
                k = owner[i]
                if ev.tiling:
                    self.m_tiles.increment(float(sum(t["num_tiles"] for t in ev.tiling)))
                if ev.finish_reason is None:
                    senders[k].send(self._event(ev.to_json()))
                    continue
                self.m_tokens.increment(float(ev.completion_tokens))
                if ev.finish_reason == "cancelled":
                    self.m_cancelled.increment(1.0)
                    senders[k].send(flags=final)
                else:
                    senders[k].send(self._event(ev.to_json()), flags=final)
                done[k] = True
        except Exception as e:  # fail this batch's requests, keep the model alive
            log.exception("generation failed for a batch of %d", len(jobs))
            for k, sender in enumerate(senders):
                if not done[k]:
                    sender.send(pb.InferenceResponse(error=pb.TritonError(f"generation failed: {type(e).__name__}: "
                                                                          f"{e}")), flags=final)
                    done[k] = True

    def finalize(self) -> None:
        if self.scheduler is not None:  # Triton waited for in-flight requests (--exit-timeout-secs) before this
            self.scheduler.close(timeout=30)
        log.info("Eagle model unloading")
