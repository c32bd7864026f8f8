"""The state of one REST app (``app.state.serve``) and the OpenAI error body; imported by the app and its routers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from nemo_eagle.serve.backends import Backend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.media import ImageFetcher
from nemo_eagle.serve.metrics import ServeMetrics
from nemo_eagle.serve.schema import ErrorBody, ErrorResponse
from nemo_eagle.serve.settings import ServeSettings

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


@dataclass
class ServeState:
    settings: ServeSettings
    backend: Backend
    engine: Engine
    fetcher: ImageFetcher
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    embedder: Any = None
    triton_metrics_url: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False  # a signal arrived: ready and new requests answer 503
    drain_expired: bool = False  # the drain timeout passed: requests still running are ended (streams: error event)
    in_flight: int = 0  # HTTP requests being served
    active_jobs: int = 0  # generation jobs submitted to the backend and not finished
    # chat-template rendering and tokenising run here, off the event loop; few threads bound the memory they use
    planner: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="plan"))
    _model_name: str | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        """``settings.model_name``, worked out once (it may look at the file system)."""
        if self._model_name is None:
            self._model_name = self.settings.model_name
        return self._model_name


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=ERROR_TYPES.get(status, "server_error"),
                                         param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
