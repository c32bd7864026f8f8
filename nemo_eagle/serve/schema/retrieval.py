"""NeMo Retriever embeddings and ranking."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from nemo_eagle.serve.schema.common import Int, Text, _Request, _Strict


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
