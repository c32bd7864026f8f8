"""``create_app(settings, backend)``: the OpenAI-compatible FastAPI front of API.md.

All state lives on ``app.state.serve`` (a ``ServeState``); nothing is module-global, so tests build as many
apps as they like. Every error, including schema violations and unknown routes, has OpenAI's shape.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from nemo_eagle._version import __version__
from nemo_eagle.serve.backends import Backend, BackendError, BackendUnavailable
from nemo_eagle.serve.engine import Engine, EngineError
from nemo_eagle.serve.media import ImageFetcher
from nemo_eagle.serve.metrics import PrometheusResponse, render_engine_stats
from nemo_eagle.serve.openapi import build_openapi, error_responses, param_of
from nemo_eagle.serve.schema import (
    BackendInfo,
    HealthResponse,
    LicenseResponse,
    LimitsInfo,
    MetadataResponse,
    ModelCard,
    ModelInfo,
    ModelList,
    TilingInfo,
    VersionResponse,
)
from nemo_eagle.serve.settings import ServeSettings
from nemo_eagle.serve.state import ERROR_TYPES, ServeState, error_response  # noqa: F401 - re-exported

log = logging.getLogger("nemo_eagle.serve")

API_VERSION = "1.0.0"
OPEN_ROUTES = ("/v1/health/live", "/v1/health/ready", "/v1/metrics")


class BodyTooLarge(Exception):
    pass


class FrontMiddleware:
    """Pure ASGI: caps the request body (413), counts requests and times them to the last response byte."""

    def __init__(self, app: Any, state_getter: Any):
        self.app, self.state_getter = app, state_getter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st: ServeState = self.state_getter()
        if st.draining and scope.get("path") not in OPEN_ROUTES:  # the listener stays up while draining: answer
            st.metrics.rejected.labels("draining").inc()
            resp = error_response(503, "the server is shutting down; retry on another instance", code="draining",
                                  headers={"Retry-After": "5", "Connection": "close"})
            return await resp(scope, receive, send)
        limit = st.settings.max_request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            st.metrics.rejected.labels("payload_too_large").inc()
            resp = error_response(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes",
                                  code="payload_too_large")
            return await resp(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        start, status = time.perf_counter(), 500
        st.in_flight += 1
        st.metrics.in_flight.inc()

        async def timed_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, timed_send)
        finally:
            st.in_flight -= 1
            st.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            st.metrics.requests.labels(route, str(status)).inc()
            st.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _validation_message(exc: RequestValidationError) -> tuple[str, str, str | None]:
    """(code, message, param) of a request that fails the schema: a 400 naming the field, as OpenAI and vLLM answer."""
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return "invalid_json", f"malformed JSON body{': ' + str(detail) if detail else ''}", None
    found = [(param_of(e.get("loc", ()), exc.body), e.get("msg")) for e in errors]
    # A union (``str | list[part]``) reports each branch: where one branch went inside the value, the errors of
    # the others (on the value as a whole) are noise, so an error on an ancestor of another error's field goes.
    inner = {p for p, _ in found if p}
    found = [(p, m) for p, m in found if not any(q.startswith(f"{p}.") for q in inner if p)]
    parts = [f"{p or 'body'}: {m}" for p, m in found[:5]]
    more = f" (+{len(found) - 5} more)" if len(found) > 5 else ""
    return "invalid_schema", "invalid request: " + "; ".join(parts) + more, found[0][0] if found else None


async def require_api_key(request: Request) -> None:  # async: a sync dependency costs a thread hop
    st: ServeState = request.app.state.serve
    key = st.settings.api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise EngineError("missing API key: send 'Authorization: Bearer <key>'", status=401, code="missing_api_key")
    if not secrets.compare_digest(given.strip().encode(), key.get_secret_value().encode()):
        raise EngineError("invalid API key", status=401, code="invalid_api_key")


_INTERNAL = re.compile(r"(?:ipv[46]:)?\b\d{1,3}(?:\.\d{1,3}){3}:\d+\b|(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*")


def public_model_source(settings: ServeSettings) -> str:
    """Where the model came from, as a client may see it: a hub id as given, a local checkpoint by its name only."""
    source = (settings.model_path or "").removeprefix("hf://")
    return Path(source).name if source and Path(source).exists() else source or settings.model_name


def redact(text: str, settings: ServeSettings) -> str:
    """``text`` without server paths (the checkpoint's becomes the model id) and without internal addresses."""
    if settings.model_path:
        text = text.replace(str(Path(settings.model_path).resolve()), settings.model_name)
        text = text.replace(settings.model_path, settings.model_name)
    return _INTERNAL.sub("<internal>", text)


def create_app(settings: ServeSettings, backend: Backend, *, engine: Engine | None = None,
               embedder: Any = None, triton_metrics_url: str | None = None) -> FastAPI:
    """The REST app over ``backend``. ``engine`` (tokenizer + tiling, no weights needed) is loaded from
    ``settings.model_path`` when not given."""
    if engine is None:
        engine = getattr(backend, "engine", None) or Engine.from_pretrained(
            settings.model_path, load_model=False, max_model_len=settings.max_model_len)
    state = ServeState(settings=settings, backend=backend, engine=engine, fetcher=ImageFetcher(settings),
                       embedder=embedder, triton_metrics_url=triton_metrics_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        log.info("serving %r (%s backend, context %d tokens)", state.model_name, backend.name, engine.max_model_len)
        try:
            yield
        finally:
            state.draining = True
            await backend.close()
            await state.fetcher.aclose()

    # /openapi.json is served below, behind the API key like every /v1 route (FastAPI's own would be open)
    app = FastAPI(title="nemo_eagle", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.serve = state
    app.add_middleware(FrontMiddleware, state_getter=lambda: app.state.serve)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        state.metrics.rejected.labels(exc.code).inc()
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        code, message, param = _validation_message(exc)
        state.metrics.rejected.labels(code).inc()
        return error_response(400, message, code=code, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps body-read errors (a chunked body) in a 400
            return await _too_large(request, exc.__cause__)
        if exc.status_code == 405:  # Starlette names the route's methods in Allow (RFC 9110 requires it)
            allow = (exc.headers or {}).get("Allow", "")
            return error_response(405, f"method {request.method} is not allowed on {request.url.path}; allowed: "
                                  f"{allow}", code="method_not_allowed", headers={"Allow": allow})
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, code="not_found" if exc.status_code == 404 else None,
                              headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        state.metrics.rejected.labels("payload_too_large").inc()
        return error_response(413, str(exc), code="payload_too_large")

    @app.exception_handler(BackendError)
    async def _backend(request: Request, exc: BackendError):
        log.log(logging.WARNING if isinstance(exc, BackendUnavailable) else logging.ERROR, "backend failure on %s: %s",
                request.url.path, exc)
        message = str(exc) if isinstance(exc, BackendUnavailable) else f"the model backend failed: {exc}"
        return error_response(503, redact(message, state.settings), code=exc.code if isinstance(
            exc, BackendUnavailable) else "backend_error", headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__})", code="internal_error")

    app.include_router(_open_routes())
    app.include_router(_model_routes(), dependencies=[Depends(require_api_key)])

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    from nemo_eagle.serve.chat import router as chat_router
    from nemo_eagle.serve.completions import router as completions_router
    from nemo_eagle.serve.retrieval import router as retrieval_router

    app.include_router(chat_router, dependencies=[Depends(require_api_key)])
    app.include_router(completions_router, dependencies=[Depends(require_api_key)])
    app.include_router(retrieval_router, dependencies=[Depends(require_api_key)])

    def document() -> dict[str, Any]:  # built once, on first use, with this app's limits
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, state)
        return app.openapi_schema

    app.openapi = document
    return app


def _state(request: Request) -> ServeState:
    return request.app.state.serve


class GetRoute(APIRoute):
    """A GET route that answers HEAD too (load balancers probe with HEAD): the GET's status and headers, no body.
    The OpenAPI document lists the GET only; any other method is a 405 with ``Allow: GET, HEAD``."""

    def matches(self, scope: dict) -> tuple[Match, dict]:
        if scope["type"] == "http" and scope["method"] == "HEAD" and "GET" in self.methods:
            return super().matches({**scope, "method": "GET"})
        return super().matches(scope)

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["method"] == "HEAD" and "GET" in self.methods:
            async def headers_only(message: dict) -> None:
                await send({**message, "body": b""} if message["type"] == "http.response.body" else message)

            return await super().handle({**scope, "method": "GET"}, receive, headers_only)
        if scope["method"] not in self.methods:
            raise StarletteHTTPException(405, headers={"Allow": ", ".join(sorted({*self.methods, "HEAD"}))})
        await super().handle(scope, receive, send)


def _open_routes() -> APIRouter:
    r = APIRouter(route_class=GetRoute)

    @r.get("/v1/health/live")
    async def live() -> HealthResponse:
        return HealthResponse(message="Service is live.")

    @r.get("/v1/health/ready", response_model=HealthResponse, responses=error_responses(503))
    async def ready(request: Request):
        st = _state(request)
        if st.draining:
            return error_response(503, "Service is shutting down.", code="draining")
        if not await st.backend.is_ready():
            sup = getattr(st.backend, "supervisor", None)
            if sup is not None and not sup.healthy() and st.backend.client is not None:
                return error_response(503, "Service is not ready: the model backend is restarting.",
                                      code="backend_unavailable", headers={"Retry-After": str(sup.retry_after)})
            return error_response(503, "Service is not ready: the model is not loaded yet.", code="not_ready")
        return HealthResponse(message="Service is ready.")

    @r.get("/v1/metrics", response_class=PrometheusResponse,
           responses={200: {"description": "Prometheus text exposition format"}})
    async def metrics(request: Request) -> Response:
        st = _state(request)
        body = st.metrics.render()
        stats = getattr(st.backend, "stats", None)
        if callable(stats):
            body += render_engine_stats(stats())
        if st.triton_metrics_url:
            body += await _fetch_triton_metrics(st.triton_metrics_url)
        return PrometheusResponse(body)

    return r


async def _fetch_triton_metrics(url: str) -> bytes:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            resp = await client.get(url)
        return b"# Triton Inference Server metrics\n" + resp.content
    except httpx.HTTPError as e:
        return f"# Triton metrics unavailable: {type(e).__name__}\n".encode()


def _model_routes() -> APIRouter:
    r = APIRouter(responses=error_responses(401), route_class=GetRoute)

    @r.get("/v1/models")
    async def models(request: Request) -> ModelList:
        st = _state(request)
        return ModelList(data=[ModelCard(id=st.model_name, created=st.created, root=public_model_source(st.settings),
                                         max_model_len=st.engine.max_model_len)])

    @r.get("/v1/metadata")
    async def metadata(request: Request) -> MetadataResponse:
        st = _state(request)
        t = st.engine.processor.tiling
        served = request.app.openapi()["paths"]  # the routes this app answers
        return MetadataResponse(
            version=__version__, api_version=API_VERSION,
            modelInfo=[ModelInfo(shortName=st.model_name, modelUrl=public_model_source(st.settings))],
            max_model_len=st.engine.max_model_len,
            tiling=TilingInfo(tile_size=t.tile_size, min_tiles=t.min_tiles, max_tiles=t.max_tiles,
                              max_tiles_per_request=st.settings.max_tiles or t.max_tiles,
                              use_thumbnail=t.use_thumbnail, tokens_per_tile=st.engine.processor.tokens_per_tile),
            limits=LimitsInfo(**{k: getattr(st.settings, k) for k in LimitsInfo.model_fields}),
            backend=BackendInfo.model_validate(st.backend.info()),  # its addresses stay out
            **{name: f"/v1/{route}" in served for name, route in (
                ("chat_completions", "chat/completions"), ("completions", "completions"),
                ("embeddings", "embeddings"), ("ranking", "ranking"))})

    @r.get("/v1/version")
    async def version(request: Request) -> VersionResponse:
        info = _state(request).backend.info()
        return VersionResponse(release=__version__, api=API_VERSION, triton=info.get("triton_version"))

    @r.get("/v1/license")
    async def license_(request: Request) -> LicenseResponse:
        st = _state(request)
        path = st.settings.license_path or _checkpoint_license(st)
        text = path.read_text(errors="replace") if path is not None and path.is_file() else (
            "nemo_eagle is licensed under Apache-2.0. The model weights are covered by the license on their model "
            "card; this checkpoint ships no LICENSE file.")
        return LicenseResponse(name=path.name if path is not None and path.is_file() else "Apache-2.0", text=text)

    return r


def _checkpoint_license(st: ServeState) -> Path | None:
    model_path = st.settings.model_path
    if not model_path or not Path(model_path).is_dir():
        return None
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "license.txt"):
        if (Path(model_path) / name).is_file():
            return Path(model_path) / name
    return None

