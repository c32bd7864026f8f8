"""The REST contract (API.md) as pydantic models, defined once: OpenAI chat completions, NeMo Retriever
embeddings and ranking, models, health, and OpenAI-shaped errors.

Request models reject wrong types and values out of range (a 400 naming the field); every limit a field has is
declared here, so the OpenAPI document shows it. Unknown OpenAI fields are accepted and ignored, as OpenAI-compatible
servers do, so clients that send e.g. ``user`` or ``presence_penalty=0`` keep working.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_STOP_SEQUENCES = 4
NonEmpty = Annotated[str, Field(min_length=1)]


def _has_text(v: str) -> str:
    if not v.strip():
        raise ValueError("holds no text (empty or only whitespace)")
    return v


# What the embedder can embed: something besides whitespace (in JSON Schema, a match of \S).
Text = Annotated[str, AfterValidator(_has_text), WithJsonSchema({"type": "string", "pattern": r"\S"})]


def _integral(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def Int(**limits: Any) -> Any:
    """An integer as JSON Schema has it: 3 and 3.0, never "3", true or 3.5 (strict models refuse 3.0 otherwise).
    ``limits`` (ge, le) go before the validator, so the schema shows them as minimum / maximum."""
    return Annotated[int, Field(**limits), BeforeValidator(_integral)]


class _Strict(BaseModel):
    """Request parts take JSON types as declared (no ``"5"`` for 5, no ``0`` for false), as the schema says."""

    model_config = ConfigDict(strict=True)


class _Request(_Strict):
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
class ImageURL(_Strict):
    url: str = Field(description="data:image/...;base64,... or an http(s) URL on the server's allow-list")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[ContentPart] = Field(description="text, or text and image parts (images only here)")
    name: str | None = None


class AssistantTurn(_Strict):
    role: Literal["assistant"]
    content: str | list[TextPart]
    name: str | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantTurn, Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int(ge=1) | None = None
    max_completion_tokens: Int(ge=1) | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (default)")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # a 64-bit generator seed; choice i of n uses seed + i
    seed: Int(ge=-(2**63), le=2**63 - 1) | None = None
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description=f"up to {MAX_STOP_SEQUENCES} non-empty strings; generation stops before the first one")
    n: Int(ge=1, le=16) = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extra body fields of this server
    max_tiles: Int(ge=1) | None = Field(None, description="per-image tile limit for this request (request-time "
                                  "tiling); lowered automatically when the prompt would not fit the context")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        return [v] if isinstance(v, str) else v

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
    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="text, an image data URL, or text followed by an image data URL; or a non-empty list of them")
    input_type: Literal["query", "passage"] | None = None
    truncate: Literal["NONE", "START", "END"] = "NONE"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int(ge=1) | None = None


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


class RankingText(_Strict):
    text: Text


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
class ModelPermission(BaseModel):
    """The permission object NIM and vLLM attach to each model card (OpenAI's former field)."""

    id: str = Field(default_factory=lambda: f"modelperm-{uuid.uuid4().hex}")
    object: Literal["model_permission"] = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "system"
    root: str
    parent: str | None = None
    max_model_len: int
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission(
        allow_logprobs="logprobs" in ChatCompletionRequest.model_fields)])


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    object: Literal["health.response"] = "health.response"
    message: str


class ModelInfo(BaseModel):
    shortName: str = Field(description="the model id clients send as `model`")
    modelUrl: str = Field(description="where the weights come from: the hub id as given, or a local checkpoint's "
                          "folder name (never a path of the server)")


class TilingInfo(BaseModel):
    tile_size: int
    min_tiles: int
    max_tiles: int
    max_tiles_per_request: int = Field(description="the highest `max_tiles` a chat request may ask for")
    use_thumbnail: bool
    tokens_per_tile: int


class LimitsInfo(BaseModel):
    max_request_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_images_per_request: int
    max_concurrent_requests: int
    max_batch_inputs: int = Field(description="most inputs of one /v1/embeddings or passages of one /v1/ranking")


class BackendInfo(BaseModel):
    backend: str = Field(description="triton, local or fake")
    triton_version: str | None = None
    scheduler: str | None = None
    max_batch_size: int | None = None


class MetadataResponse(BaseModel):
    object: Literal["metadata"] = "metadata"
    version: str = Field(description="nemo_eagle release")
    api_version: str
    modelInfo: list[ModelInfo]
    max_model_len: int
    tiling: TilingInfo
    limits: LimitsInfo
    backend: BackendInfo
    chat_completions: bool = Field(description="POST /v1/chat/completions is served")
    completions: bool = Field(description="POST /v1/completions is served")
    embeddings: bool = Field(description="POST /v1/embeddings is served")
    ranking: bool = Field(description="POST /v1/ranking is served")


class VersionResponse(BaseModel):
    release: str = Field(description="nemo_eagle release")
    api: str = Field(description="version of this REST API")
    triton: str | None = Field(None, description="tritonserver version (triton backend only)")


class LicenseResponse(BaseModel):
    object: Literal["license"] = "license"
    name: str
    text: str
