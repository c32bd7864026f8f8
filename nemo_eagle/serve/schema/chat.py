"""OpenAI chat completions: messages and their parts, the sampling and structured-output fields chat and
/v1/completions share, the request, the answer and its stream chunks."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from nemo_eagle.serve.schema.common import MAX_STOP_SEQUENCES, Int, NonEmpty, Usage, _Request, _Strict


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
