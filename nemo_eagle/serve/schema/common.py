"""What every route shares: the strict request base (JSON types as declared, lone surrogates refused), integer
and text types, OpenAI-shaped errors and token usage."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

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



# ------------------------------------------------------------------------------------------------- usage
class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="prompt tokens whose keys/values came from the KV cache (prefix reuse) "
                               "instead of being computed")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = Field(
        None, description="reported by the continuous-batching engine (OpenAI's field)")
