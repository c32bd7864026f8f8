"""Prometheus metrics of the REST front, in a registry owned by one app (no process-global collectors).

``/v1/metrics`` serves these followed by Triton's own metrics (batch executions, queue times, and the
``nemo_eagle_triton_*`` metrics the Triton model reports), so one scrape shows the whole path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("nemo_eagle_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("nemo_eagle_request_latency_seconds", "time to the last byte of the response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("nemo_eagle_time_to_first_token_seconds", "time to the first generated text",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("nemo_eagle_queue_depth", "generation jobs submitted and not finished", registry=r)
        self.in_flight = Gauge("nemo_eagle_requests_in_flight", "HTTP requests being served", registry=r)
        self.prompt_tokens = Counter("nemo_eagle_prompt_tokens", "prompt tokens (image tokens included)", registry=r)
        self.completion_tokens = Counter("nemo_eagle_completion_tokens", "generated tokens", registry=r)
        self.batch_size = Histogram("nemo_eagle_batch_size", "rows decoded together, as seen by each job",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("nemo_eagle_images", "images received", registry=r)
        self.image_tiles = Counter("nemo_eagle_image_tiles", "image tiles processed", registry=r)
        self.tiling_reduced = Counter("nemo_eagle_tiling_reduced", "requests whose tiling was lowered to fit the "
                                      "context", registry=r)
        self.cancelled = Counter("nemo_eagle_cancelled", "generation jobs cancelled because the client left",
                                 registry=r)
        self.rejected = Counter("nemo_eagle_rejected", "requests refused before generation, by reason", ["code"],
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
