"""``POST /v1/embeddings`` and ``POST /v1/ranking`` (NeMo Retriever API, API.md) over ``EagleEmbedder``.

The backend runs them next to generation on the same weights (inside Triton, or in-process). Images arrive as
data URLs inside the input strings; the front checks their size and pixels before anything is decoded.
"""

from __future__ import annotations

import base64
import logging

import numpy as np
from fastapi import APIRouter, Request

from nemo_eagle.serve.body import LargeBodyRoute
from nemo_eagle.serve.engine import EngineError
from nemo_eagle.serve.limits import check_input_count
from nemo_eagle.serve.openapi import error_responses
from nemo_eagle.serve.schema import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    Ranking,
    RankingRequest,
    RankingResponse,
)
from nemo_eagle.serve.state import ServeState

log = logging.getLogger("nemo_eagle.serve")
router = APIRouter(route_class=LargeBodyRoute)  # large bodies are decoded off the event loop
ERRORS = error_responses(400, 401, 404, 413, 503)


def _check_model(st: ServeState, model: str) -> None:
    if model != st.model_name:
        raise EngineError(f"model {model!r} does not exist; this server serves {st.model_name!r}", status=404,
                          code="model_not_found", param="model")


async def _check_images(st: ServeState, inputs: list[str], input_type: str) -> None:
    from nemo_eagle.embed.inputs import parse_input

    total = 0
    for i, text in enumerate(inputs):
        try:
            images = parse_input(text, i).images
        except ValueError as e:
            raise EngineError(str(e), param=f"input.{i}") from e
        if images and input_type != "passage":
            raise EngineError(f"input {i} holds an image; images are only accepted with input_type='passage'",
                              param="input_type")
        total += len(images)
        if total > st.settings.max_images_per_request:
            raise EngineError(f"more than {st.settings.max_images_per_request} images in one request",
                              code="too_many_images", param="input")
        for url in images:
            await st.fetcher.fetch(url, name=f"input.{i}")


def encode_vector(vector: list, fmt: str) -> list | str:
    if fmt == "base64":  # OpenAI's encoding: little-endian float32 bytes, base64
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


@router.post("/v1/embeddings", responses=ERRORS)
async def embeddings(req: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    st: ServeState = request.app.state.serve
    _check_model(st, req.model)
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    check_input_count(len(inputs), st.settings.max_batch_inputs, "input")
    input_type = req.input_type or "query"
    await _check_images(st, inputs, input_type)
    result = await st.backend.call({"task": "embed", "input": inputs, "input_type": input_type,
                                    "truncate": req.truncate, "dimensions": req.dimensions})
    tokens = int(sum(result["num_tokens"]))
    st.metrics.prompt_tokens.inc(tokens)
    data = [Embedding(index=i, embedding=encode_vector(v, req.encoding_format))
            for i, v in enumerate(result["embeddings"])]
    return EmbeddingResponse(data=data, model=st.model_name,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


@router.post("/v1/ranking", responses=ERRORS)
async def ranking(req: RankingRequest, request: Request) -> RankingResponse:
    st: ServeState = request.app.state.serve
    _check_model(st, req.model)
    check_input_count(len(req.passages), st.settings.max_batch_inputs, "passages")
    result = await st.backend.call({"task": "rank", "query": req.query.text,
                                    "passages": [p.text for p in req.passages], "truncate": req.truncate})
    return RankingResponse(rankings=[Ranking(**r) for r in result["rankings"]])
