"""The REST contract (API.md) as pydantic models, defined once: OpenAI chat completions, NeMo Retriever
embeddings and ranking, models, health, and OpenAI-shaped errors.

Request models reject wrong types (422); unknown OpenAI fields are accepted and ignored, as OpenAI-compatible
servers do, so clients that send e.g. ``user`` or ``presence_penalty=0`` keep working.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 4


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        from nemo_eagle.serve.limits import reject_surrogates  # a 400 naming the field (EngineError passes through)

        reject_surrogates(data)
        return data

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


# ------------------------------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ----------------------------------------------------------------------------------------------- chat in
class ImageURL(BaseModel):
    url: str = Field(description="data:image/...;base64,... or an http(s) URL on the server's allow-list")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (default)")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # a 64-bit generator seed; choice i of n uses seed + i
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extra body fields of this server
    max_tiles: int | None = Field(None, ge=1, description="per-image tile limit for this request (request-time "
                                  "tiling); lowered automatically when the prompt would not fit the context")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @model_validator(mode="after")
    def _unsupported(self) -> ChatCompletionRequest:
        extra = self.model_extra or {}
        for name in ("logprobs", "tools", "functions"):
            if extra.get(name):
                raise ValueError(f"{name!r} is not supported by this server")
        return self

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---------------------------------------------------------------------------------------------- chat out
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    tiling: list[dict[str, Any]] = Field(default_factory=list, description="the tiling plan applied to each image")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    tiling: list[dict[str, Any]] | None = None


# ------------------------------------------------------------------------------------ embeddings, ranking
class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] = Field(description="text, an image data URL, or text followed by an image data URL")
    input_type: Literal["query", "passage"] | None = None
    truncate: Literal["NONE", "START", "END"] = "NONE"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        return v


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[list[float]] | str  # multi-vector models: one vector per token


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class RankingText(BaseModel):
    text: str


class RankingRequest(_Request):
    model: str
    query: RankingText
    passages: list[RankingText] = Field(min_length=1)
    truncate: Literal["NONE", "START", "END"] = "NONE"


class Ranking(BaseModel):
    index: int
    logit: float


class RankingResponse(BaseModel):
    rankings: list[Ranking]


# ---------------------------------------------------------------------------------------- models, health
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nvidia"
    root: str
    parent: str | None = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    object: Literal["health.response"] = "health.response"
    message: str
