"""OpenAI /v1/completions: raw-text prompts (no chat template), the answer and its logprobs."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from nemo_eagle.serve.schema.chat import SamplingFields, StreamOptions
from nemo_eagle.serve.schema.common import MAX_PROMPTS, MAX_STOP_SEQUENCES, Int, NonEmpty, Usage, _Request


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
