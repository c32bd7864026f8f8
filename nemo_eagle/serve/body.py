"""Large JSON request bodies are decoded and validated on a worker thread, not on the event loop.

FastAPI parses and validates a body on the loop: for a 3 MB chat of 100k messages pydantic takes ~0.8 s, during
which no other request (health probes included) is answered. ``LargeBodyRoute`` leaves small bodies on FastAPI's
path and runs ``json.loads``, a count of the body's lists against the server's caps and the model's validation
for a larger one on ``ServeState.planner``. json.loads and pydantic-core hold the GIL while they run, so a worker
thread alone only interleaves them with the loop; the count check bounds the work: a list over its cap is
refused (the same 400 the route gives) before pydantic sees any of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from nemo_eagle.serve.limits import check_input_count, check_message_count
from nemo_eagle.serve.schema import ChatCompletionRequest, EmbeddingRequest, RankingRequest

# Below this a body is decoded on the loop as FastAPI does (a 64 KiB body holds at most ~2,200 messages: ~20 ms
# of validation; the thread hop would cost more than it saves on the small requests that dominate).
LARGE_BODY = 64 * 1024


# Per body model, the list a server cap bounds and the check of its length (what the route checks after
# validation, as a 400 naming the field)
LIST_CAPS: dict[type, tuple[str, Callable[[int, Any], None]]] = {
    ChatCompletionRequest: ("messages", lambda n, s: check_message_count(n, s.max_messages)),
    EmbeddingRequest: ("input", lambda n, s: check_input_count(n, s.max_batch_inputs, "input")),
    RankingRequest: ("passages", lambda n, s: check_input_count(n, s.max_batch_inputs, "passages")),
}


def check_counts(model: type, data: Any, settings: Any) -> None:
    """The cap on a body's list, on decoded JSON before validation: a list over it is refused before pydantic
    walks it."""
    cap = LIST_CAPS.get(model)
    if cap is not None and isinstance(data, dict) and isinstance(data.get(cap[0]), list):
        cap[1](len(data[cap[0]]), settings)


def decode_body(raw: bytes, field: Any, settings: Any) -> Any:
    """``raw`` as the route's body model (blocking; runs on a worker thread), validated by the route's own body
    field. Raises what FastAPI's path raises for the same body: RequestValidationError for bad JSON or a schema
    violation, EngineError from the model's validators and the count caps."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:  # the error FastAPI builds for a body it cannot decode
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": e.msg}}], body=e.doc) from e
    check_counts(field.field_info.annotation, data, settings)
    value, errors = field.validate(data, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors, body=data)
    return value


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class LargeBodyRoute(APIRoute):
    """An APIRoute whose JSON body, when larger than ``LARGE_BODY``, is decoded and validated off the loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        if field is None or not isinstance(field.field_info.annotation, type):
            return handler

        async def route(request: Request) -> Response:
            declared = request.headers.get("content-length")
            if (declared is not None and declared.isdigit() and int(declared) <= LARGE_BODY) or not _is_json(
                    request.headers.get("content-type")):
                return await handler(request)
            raw = await request.body()  # Starlette keeps it on the request: FastAPI's handler reads it from there
            if len(raw) > LARGE_BODY:
                st = request.app.state.serve
                # NOTE: Request.json() returns ``_json`` when set, and pydantic passes an instance of the model
                # through unvalidated (revalidate_instances="never"), so FastAPI's handler does no second pass.
                request._json = await asyncio.get_running_loop().run_in_executor(
                    st.planner, decode_body, raw, field, st.settings)
            return await handler(request)

        return route
