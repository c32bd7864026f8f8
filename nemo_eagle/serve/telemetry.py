"""Optional OpenTelemetry traces (``NIM_ENABLE_OTEL``): one server span per HTTP request, exported over OTLP/HTTP
to ``OTEL_EXPORTER_OTLP_ENDPOINT``. Enabling it without the OpenTelemetry SDK installed is an error."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class TracingMiddleware:
    """Pure ASGI: a span per HTTP request with method, path and status."""

    def __init__(self, app: Any, tracer: Any, span_kind: Any):
        self.app, self.tracer, self.span_kind = app, tracer, span_kind

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with self.tracer.start_as_current_span(f"{scope['method']} {scope['path']}", kind=self.span_kind) as span:
            span.set_attribute("http.method", scope["method"])
            span.set_attribute("http.target", scope["path"])

            async def traced_send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, traced_send)


def instrument(app: Any) -> None:
    """Add tracing to an app from ``create_app`` (before it starts serving)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind
    except ImportError as e:
        raise RuntimeError("NIM_ENABLE_OTEL is set but OpenTelemetry is not installed: pip install "
                           "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http") from e
    service = os.environ.get("OTEL_SERVICE_NAME", "nemo-eagle")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    app.add_middleware(TracingMiddleware, tracer=provider.get_tracer("nemo_eagle.serve"), span_kind=SpanKind.SERVER)
    app.state.tracer_provider = provider
    log.info("OpenTelemetry tracing on (OTLP endpoint %s)", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "default"))
