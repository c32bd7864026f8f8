"""The server's own answers: models (OpenAI's model card), health, NIM metadata, version and license."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from nemo_eagle.serve.schema.chat import ChatCompletionRequest


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
