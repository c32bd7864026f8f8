"""The REST contract (API.md) as pydantic models, defined once: OpenAI chat completions, NeMo Retriever
embeddings and ranking, models, health, and OpenAI-shaped errors.

Request models reject wrong types and values out of range (a 400 naming the field); every limit a field has is
declared here, so the OpenAPI document shows it. Unknown fields are accepted and ignored, as OpenAI-compatible
servers do, so clients that send e.g. ``user`` keep working, except the known ones this server cannot honour
(tools, beam search, ...: ``serve/params.py`` refuses them with a 400 naming the parameter).
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
MAX_PROMPTS = 16  # prompts in one completions request
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


# ------------------------------------------------------------------------------ sampling, structured output
class JsonSchemaFormat(_Strict):
    name: str = Field("response", description="a name for the schema (informational)")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON Schema the answer must validate against")
    strict: bool | None = Field(None, description="accepted; the answer always follows the schema")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description="required with type json_schema")

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs`` extra parameter: exactly one of these."""

    json_: dict[str, Any] | str | None = Field(None, alias="json", description="a JSON Schema")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    json_object: bool | None = None


class SamplingFields(_Strict):
    """Logits processing and structured output, shared by chat and completions (applied per sequence)."""

    top_k: Int(ge=-1) | None = Field(None, description="vLLM extra: keep the k most likely tokens (-1 or 0: all)")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="subtracted from the logit of every "
                                           "token already generated (OpenAI's definition)")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="times the number of times a token "
                                            "was generated, subtracted from its logit (OpenAI's definition)")
    repetition_penalty: float | None = Field(None, ge=0.01, le=10.0, description="vLLM extra (CTRL / transformers): "
                                             "logits of prompt and generated tokens divided (if > 0) or multiplied")
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, description="token id -> bias in [-100, 100] added to its logit")
    min_tokens: Int(ge=0) | None = Field(None, description="vLLM extra: the end of turn is masked until this many "
                                   "tokens were generated")
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM extra: a JSON Schema to follow")
    guided_regex: str | None = Field(None, description="vLLM extra: a regular expression the answer matches")
    guided_choice: list[str] | None = Field(None, min_length=1, description="vLLM extra: the answer is one of these")
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM extra: json, regex, choice or "
                                                         "json_object")
    return_tokens_as_token_ids: bool = Field(False, description="vLLM extra: log-probability tokens as "
                                             "'token_id:<id>'")

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k in v or {}:
            if not k.isdigit():
                raise ValueError(f"logit_bias keys are token ids (non-negative integers), got {k!r}")
        return v


class ChatCompletionRequest(_Request, SamplingFields):
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
    logprobs: bool = Field(False, description="return the log-probability of each generated token")
    top_logprobs: Int(ge=0, le=20) | None = Field(None, description="with logprobs: this many most likely "
                                                  "tokens per position")
    # extra body fields of this server
    max_tiles: Int(ge=1) | None = Field(None, description="per-image tile limit for this request (request-time "
                                  "tiling); lowered automatically when the prompt would not fit the context")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        return [v] if isinstance(v, str) else v

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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: ChoiceLogprobs | None = None


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
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    tiling: list[dict[str, Any]] | None = None


# ------------------------------------------------------------------------------------------ completions
class CompletionRequest(_Request, SamplingFields):
    model: str
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description="raw text (no chat template); a list is several prompts, answered as choices in order, n per "
                    "prompt")
    max_tokens: Int(ge=1) | None = Field(16, description="16 when not given (OpenAI's default)")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (default)")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: Int(ge=-(2**63), le=2**63 - 1) | None = Field(None, description="choice j of every prompt uses seed + j")
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description=f"up to {MAX_STOP_SEQUENCES} non-empty strings; generation stops before the first one")
    n: Int(ge=1, le=16) = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Int(ge=0, le=20) | None = Field(None, description="the log-probability of each token and of this "
                                             "many most likely alternatives")
    echo: bool = Field(False, description="the prompt text precedes each answer")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        return [v] if isinstance(v, str) else v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


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
