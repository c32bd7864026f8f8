"""The REST contract (API.md) as pydantic models, defined once: OpenAI chat completions, NeMo Retriever
embeddings and ranking, models, health, and OpenAI-shaped errors; one module per route family (``common``:
the shared request base, errors and usage), every name re-exported here.

Request models reject wrong types and values out of range (a 400 naming the field); every limit a field has is
declared here, so the OpenAPI document shows it. Unknown fields are accepted and ignored, as OpenAI-compatible
servers do, so clients that send e.g. ``user`` keep working, except the known ones this server cannot honour
(tools, beam search, ...: ``serve/params.py`` refuses them with a 400 naming the parameter).
"""

from __future__ import annotations

from nemo_eagle.serve.schema.chat import (
    AssistantMessage,
    AssistantTurn,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ContentPart,
    Delta,
    ImagePart,
    ImageURL,
    JsonSchemaFormat,
    ResponseFormat,
    SamplingFields,
    StreamOptions,
    StructuredOutputs,
    SystemMessage,
    TextPart,
    TokenLogprob,
    TopLogprob,
    UserMessage,
)
from nemo_eagle.serve.schema.common import (
    MAX_PROMPTS,
    MAX_STOP_SEQUENCES,
    ErrorBody,
    ErrorResponse,
    Int,
    NonEmpty,
    PromptTokensDetails,
    Text,
    Usage,
)
from nemo_eagle.serve.schema.completions import CompletionChoice, CompletionLogprobs, CompletionRequest, TextCompletion
from nemo_eagle.serve.schema.retrieval import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    Ranking,
    RankingRequest,
    RankingResponse,
    RankingText,
)
from nemo_eagle.serve.schema.service import (
    BackendInfo,
    HealthResponse,
    LicenseResponse,
    LimitsInfo,
    MetadataResponse,
    ModelCard,
    ModelInfo,
    ModelList,
    ModelPermission,
    TilingInfo,
    VersionResponse,
)

__all__ = [
    "MAX_STOP_SEQUENCES", "MAX_PROMPTS", "NonEmpty", "Text", "Int", "ErrorBody", "ErrorResponse", "ImageURL",
    "TextPart", "ImagePart", "ContentPart", "SystemMessage", "UserMessage", "AssistantTurn", "ChatMessage",
    "StreamOptions", "JsonSchemaFormat", "ResponseFormat", "StructuredOutputs", "SamplingFields",
    "ChatCompletionRequest", "PromptTokensDetails", "Usage", "AssistantMessage", "TopLogprob", "TokenLogprob",
    "ChoiceLogprobs", "Choice",
    "ChatCompletion", "Delta", "ChunkChoice", "ChatCompletionChunk", "CompletionRequest", "CompletionLogprobs",
    "CompletionChoice", "TextCompletion", "EmbeddingRequest", "Embedding", "EmbeddingUsage", "EmbeddingResponse",
    "RankingText", "RankingRequest", "Ranking", "RankingResponse", "ModelPermission", "ModelCard", "ModelList",
    "HealthResponse", "ModelInfo", "TilingInfo", "LimitsInfo", "BackendInfo", "MetadataResponse", "VersionResponse",
    "LicenseResponse",
]
