"""The OpenAPI document of one app, telling the truth: error responses, the chat event stream, Prometheus text,
and the limits this server's settings enforce (FastAPI cannot know those from the models alone).

Also the dotted ``param`` of a schema violation (``messages.0.content``), as OpenAI and vLLM name it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from nemo_eagle.serve.limits import completion_cap, text_limit
from nemo_eagle.serve.schema import ChatCompletionChunk, ErrorResponse

_ERROR_WHEN = {
    400: "invalid request: a schema violation (`param` names the field), a bad image, a prompt that does not fit",
    401: "missing or wrong API key (only when the server was started with one)",
    404: "unknown model",
    413: "request body, image bytes or image pixels over this server's limits",
    429: "too many requests in flight; retry after `Retry-After` seconds",
    503: "the server is not ready, is shutting down, or its model backend failed or restarts",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status in OpenAI's error shape, with when it is answered."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorResponse, "description": _ERROR_WHEN[code]}
        if code in (429, 503):  # 503: sent while the backend restarts or the server drains
            out[code]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return out


CHUNK_REF = "#/components/schemas/ChatCompletionChunk"
ERROR_REF = "#/components/schemas/ErrorResponse"
# One event of the chat stream, in FastAPI's (and OpenAPI 3.2's) `itemSchema` form for text/event-stream.
CHAT_STREAM = {
    "description": "`stream: true`: server-sent events, each `data:` a chat.completion.chunk (or an error that ends "
                   "the stream), then `data: [DONE]`",
    "itemSchema": {
        "type": "object", "required": ["data"],
        "properties": {"data": {"anyOf": [
            {"type": "string", "contentMediaType": "application/json",
             "contentSchema": {"anyOf": [{"$ref": CHUNK_REF}, {"$ref": ERROR_REF}]}},
            {"const": "[DONE]"}]}},
    },
}


def param_of(loc: tuple | list, body: Any) -> str | None:
    """The dotted path of a pydantic error location inside ``body``, without pydantic's union-branch labels
    (``str``, ``list[...]``, a discriminator tag): a label is kept only where it indexes into the body."""
    parts: list[str] = []
    node = body
    names = [x for x in loc if x != "body"] if loc and loc[0] == "body" else list(loc)
    for i, key in enumerate(names):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        elif not (i == len(names) - 1 and isinstance(node, dict)):
            continue  # a union-branch label, or a field under a value of the wrong type
        parts.append(str(key))
    return ".".join(parts) or None


def _limit(schema: dict, name: str, kind: str, **limits: Any) -> None:
    """Add ``limits`` to property ``name``, in its branch of type ``kind`` when it is an ``anyOf``."""
    node = schema["properties"][name]
    node = next((b for b in node.get("anyOf", []) if b.get("type") == kind), node)
    node.update(limits)


def build_openapi(app: FastAPI, st: Any) -> dict[str, Any]:
    """The document ``/openapi.json`` serves: FastAPI's, plus what only this app's settings know."""
    s = st.settings
    t = st.engine.processor.tiling
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=(
        f"OpenAI-compatible chat and NeMo Retriever embeddings/ranking for `{st.model_name}`. Errors use OpenAI's "
        "shape `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; a schema violation is a 400 whose `param` "
        f"names the field. Request bodies over {s.max_request_bytes} bytes are answered 413; at most "
        f"{s.max_images_per_request} images per request, each at most {s.max_image_bytes} bytes and "
        f"{s.max_image_pixels} pixels; at most {s.max_concurrent_requests} generation jobs in flight (then 429)."))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for path in doc["paths"].values():  # FastAPI's own 422 is never answered: schema violations are our 400
        for op in path.values():
            op["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (ChatCompletionChunk, ErrorResponse):
        extra = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for name, sub in extra.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, extra)
    cap, chars = completion_cap(s, st.engine.max_model_len), text_limit(s, st.engine.tokenizer, st.engine.max_model_len)
    fits = f"; prompt tokens plus this must also fit the context of {st.engine.max_model_len} tokens"
    if "ChatCompletionRequest" in schemas:
        chat = schemas["ChatCompletionRequest"]
        _limit(chat, "max_tiles", "integer", maximum=s.max_tiles or t.max_tiles)
        _limit(chat, "messages", "array", maxItems=s.max_messages,
               description=f"at most {s.max_messages} messages and {chars} characters of text in all")
        for name in ("max_tokens", "max_completion_tokens"):
            _limit(chat, name, "integer", maximum=cap, description=f"at most {cap}{fits} (image tokens included; "
                   "max_completion_tokens wins over max_tokens)")
    if "CompletionRequest" in schemas:
        text = schemas["CompletionRequest"]
        _limit(text, "max_tokens", "integer", maximum=cap, description=f"at most {cap}{fits}; 16 when not given")
        text["properties"]["prompt"]["description"] = f"one prompt or a list; at most {chars} characters in all"
    if "ImageURL" in schemas:  # the fetcher refuses other schemes, and http(s) without an allow-list
        url = schemas["ImageURL"]["properties"]["url"]
        data = "data:[^,]*;base64[^,]*,"
        url["pattern"] = f"^({data}|https?://)" if s.allowed_image_hosts else f"^{data}"
    if "EmbeddingRequest" in schemas:
        _limit(schemas["EmbeddingRequest"], "input", "array", maxItems=s.max_batch_inputs)
    if "RankingRequest" in schemas:
        _limit(schemas["RankingRequest"], "passages", "array", maxItems=s.max_batch_inputs)
    return doc
