"""Serving settings: one pydantic-settings model read from ``NIM_*`` environment variables and CLI flags.

The flag set of ``nemo-eagle serve`` is generated from the fields below (name, help, type), so an option is
declared exactly once. Precedence: command line > environment > default.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nemo_eagle.data.images import DEFAULT_MAX_PIXELS

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}


def parse_bytes(v: Any) -> int | None:
    """``4GiB``, ``512MiB``, ``1.5GB`` or a plain number of bytes -> bytes."""
    if v is None or isinstance(v, int):
        return v
    text = str(v).strip().lower().replace(" ", "")
    if not text or text == "none":
        return None
    num = text.rstrip("kmgtib")
    unit = text[len(num):]
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit in {v!r}; use bytes or KiB/MiB/GiB (KB/MB/GB)")
    try:
        return int(float(num) * _SIZE_UNITS[unit])
    except ValueError as e:
        raise ValueError(f"not a size: {v!r} (examples: 4GiB, 512MiB, 1000000)") from e


def _flags(*names: str) -> dict[str, Any]:
    """Extra CLI spellings of a field (besides ``--field-name``)."""
    return {"cli_flags": list(names)}


class ServeSettings(BaseSettings):
    """Everything ``nemo-eagle serve`` can be told. Environment names are ``NIM_<FIELD>`` (API.md)."""

    model_config = SettingsConfigDict(env_prefix="NIM_", extra="forbid", validate_default=True)

    # --- model ----------------------------------------------------------------------------------------
    model_path: str | None = Field(None, description="HF checkpoint directory, hub id or hf://id of the model to serve",
                                   json_schema_extra=_flags("--model"))
    served_model_name: str | None = Field(None, description="model id in the API (default: the checkpoint's name)")
    max_model_len: int | None = Field(None, ge=16, description="context length in tokens (default: the model's "
                                      "max_position_embeddings); prompts that would exceed it get fewer tiles")
    cache_path: Path | None = Field(None, description="where hub downloads are cached (container: /opt/nim/.cache)")
    device: str | None = Field(None, description="cpu | cuda (default: cuda when available)")
    dtype: str | None = Field(
        None, description="float32 | bfloat16 | float16 (default: bfloat16 on GPU, float32 on CPU)"
    )
    max_tiles: int | None = Field(None, ge=1, le=64, description="highest per-image tile limit a request may ask for "
                                  "(default: the checkpoint's max_dynamic_tiles)")
    default_max_tokens: int = Field(512, ge=1, description="completion length when a request gives no max_tokens")
    kernels: Literal["auto", "torch", "triton"] = Field("auto", description="image tiling op on the model side: "
                                                        "triton (fused GPU kernel; fails if it cannot load), torch, "
                                                        "or auto (triton on a GPU when it loads)")

    # --- engine ---------------------------------------------------------------------------------------
    scheduler: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: requests join and leave the running batch between decode steps; "
        "static: a batch formed on arrival decodes until its longest request ends (kept for comparison)")
    max_num_seqs: int = Field(16, ge=1, description="continuous: sequences decoded together (KV-cache slots); "
                              "requests beyond wait in a queue")
    kv_cache_memory: Annotated[int | None, NoDecode] = Field(
        None, description="continuous: bytes (or 4GiB, 512MiB) preallocated for the KV cache at start-up; the "
        "slot count is what fits, capped by --max-num-seqs (default: --max-num-seqs slots)")
    prefill_chunk: int = Field(512, ge=16, description="continuous: prompt tokens prefilled per scheduler step, so "
                               "a long image prompt never stalls the running sequences for longer")
    vision_cache_memory: Annotated[int, NoDecode] = Field(
        256 * 2**20, ge=0, description="bytes (or 256MiB) of vision-tower outputs kept for repeated images "
        "(0: off)")
    enable_prefix_caching: bool = Field(True, description="continuous: a prompt that begins like a sequence still "
                                        "in the KV cache (an earlier chat turn, a shared system prompt) copies that "
                                        "prefix's keys/values instead of computing them")
    preprocess_workers: int | None = Field(None, ge=1, description="threads decoding, tiling and encoding images "
                                           "while others decode (default: half the CPU threads on CPU, 2 on GPU)")
    cuda_graphs: bool = Field(True, description="continuous, GPU only: capture the decode step as one CUDA graph per "
                              "batch-size bucket and replay it")
    license_path: Path | None = Field(
        None, description="file served by /v1/license (default: LICENSE in the checkpoint)"
    )

    # --- REST front -----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address the REST API binds to (container: 0.0.0.0)")
    server_port: int = Field(8000, ge=0, le=65535, description="REST port (0 = pick a free one)",
                             json_schema_extra=_flags("--port"))
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer KEY' on /v1 routes and "
                                      "/openapi.json (health and metrics stay open); prefer NIM_API_KEY or "
                                      "--api-key-file, which ps does not show")
    api_key_file: Path | None = Field(None, description="file holding the API key (surrounding whitespace ignored)")
    backend: Literal["triton", "local"] = Field("triton", description="triton: a tritonserver process hosts the "
                                                "model; local: the model runs inside the REST process")
    log_level: Literal[LOG_LEVELS] = Field("INFO", description="TRACE | DEBUG | INFO | WARNING | ERROR")  # type: ignore[valid-type]
    jsonl_logging: bool = Field(False, description="log one JSON object per line")
    disable_log_requests: bool = Field(False, description="do not log one line per request")
    enable_otel: bool = Field(False, description="export OpenTelemetry traces to OTEL_EXPORTER_OTLP_ENDPOINT")
    drain_timeout: float = Field(30.0, ge=0, description="seconds SIGTERM waits for in-flight requests (new "
                                 "ones get 503 meanwhile); streams still running then end with an error event")

    # --- limits (each violation is a 4xx, never a crash) ---------------------------------------------
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description="largest request body (413 above)")
    max_image_bytes: int = Field(16 * 2**20, ge=1, description="largest encoded image (413 above)")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest width*height of an image; "
                                  "refuses decompression bombs before decoding (413 above)")
    max_images_per_request: int = Field(16, ge=0, description="most images in one request (400 above)")
    max_messages: int = Field(2048, ge=1, description="most messages in one chat request (400 above; OpenAI's "
                              "limit), checked before the chat template is rendered")
    max_prompt_chars: int | None = Field(
        None, ge=1, description="most characters of message text in one request, checked before tokenising (400 "
        "above; default: the context length times the longest token, which no longer text can fit)")
    max_tokens_limit: int | None = Field(
        None, ge=1, description="most completion tokens (max_tokens / max_completion_tokens) one request may ask "
        "for (400 above; default: the context length, which one KV-cache slot holds)")
    max_batch_inputs: int = Field(1024, ge=1, description="most inputs of one /v1/embeddings request or passages "
                                  "of one /v1/ranking request (400 above)")
    max_concurrent_requests: int = Field(256, ge=1, description="generation jobs in flight before new requests "
                                         "get 429")
    allowed_image_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated hosts (or *.domain, or *) whose http(s) image URLs "
        "may be fetched; empty: only data: URLs")
    allow_private_image_urls: bool = Field(False, description="allow image URLs that resolve to private, "
                                           "loopback or link-local addresses")
    image_fetch_timeout: float = Field(10.0, gt=0, description="seconds to fetch one image URL")

    # --- Triton Inference Server ----------------------------------------------------------------------
    triton_address: str = Field("127.0.0.1", description="address Triton's gRPC and metrics ports bind to")
    triton_grpc_port: int = Field(8001, ge=0, le=65535, description="Triton gRPC port (0 = pick a free one)")
    triton_http_port: int = Field(8080, ge=0, le=65535, description="Triton HTTP port, internal (0 = free one)")
    triton_metrics_port: int = Field(8002, ge=0, le=65535, description="Triton metrics port (0 = free one)")
    triton_max_batch_size: int = Field(16, ge=1, description="largest batch Triton's dynamic batcher forms")
    triton_dynamic_batching_max_queue_delay_microseconds: int = Field(
        100, ge=0, description="how long Triton waits to fill a batch")
    triton_startup_timeout: float = Field(600.0, gt=0, description="seconds to wait for the model to load")
    triton_log_verbose: int = Field(0, ge=0, description="tritonserver --log-verbose level")
    triton_workspace: Path | None = Field(None, description="where the Triton model repository is written "
                                          "(default: a temporary directory)")
    backend_max_restarts: int = Field(3, ge=0, description="restarts of a dead tritonserver or model stub allowed "
                                      "within 10 minutes; beyond, the server exits with code 3 (0: exit at once)")
    backend_restart_backoff: float = Field(1.0, ge=0, description="seconds before retrying a failed backend "
                                           "restart, doubled at each further try")

    @model_validator(mode="after")
    def _key_from_file(self) -> ServeSettings:
        if self.api_key_file is None:
            return self
        if self.api_key is not None:
            raise ValueError("give the API key once: --api-key (NIM_API_KEY) or --api-key-file, not both")
        try:
            key = self.api_key_file.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read --api-key-file {self.api_key_file}: {e.strerror or e}") from None
        if not key:
            raise ValueError(f"--api-key-file {self.api_key_file} is empty")
        self.api_key = SecretStr(key)
        return self

    @field_validator("allowed_image_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [h.strip().lower() for h in v.split(",") if h.strip()]
        return v

    @field_validator("kv_cache_memory", "vision_cache_memory", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return parse_bytes(v)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    def scheduler_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Engine.scheduler`` (the continuous-batching engine)."""
        return {"kv_cache_memory": self.kv_cache_memory, "max_num_seqs": self.max_num_seqs,
                "prefill_chunk": self.prefill_chunk, "vision_cache_bytes": self.vision_cache_memory,
                "preprocess_workers": self.preprocess_workers, "graphs": None if self.cuda_graphs else False,
                "prefix_caching": self.enable_prefix_caching}

    @property
    def model_name(self) -> str:
        """The id clients pass as ``model``."""
        if self.served_model_name:
            return self.served_model_name
        if not self.model_path:
            return "eagle2"
        name = self.model_path.removeprefix("hf://").rstrip("/")
        return name if "/" in name and not Path(name).exists() else Path(name).name


# ------------------------------------------------------------------------------------------- CLI flags
def _field_flags(name: str, info: Any) -> list[str]:
    extra = info.json_schema_extra or {}
    return [*extra.get("cli_flags", []), f"--{name.replace('_', '-')}"]  # the short spelling shows in usage


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; defaults are suppressed so only flags actually given override the env."""
    for name, info in ServeSettings.model_fields.items():
        flags = _field_flags(name, info)
        env = f"NIM_{name.upper()}"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": f"{info.description} [env {env}]"}
        if info.annotation is bool:
            kw["action"] = argparse.BooleanOptionalAction
        parser.add_argument(*flags, **kw)


def settings_from_argv(argv: list[str], prog: str = "nemo-eagle serve") -> ServeSettings:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve an Eagle2 model: OpenAI-compatible REST in front "
        "of Triton Inference Server. Every flag also reads NIM_<NAME> from the environment.",
    )
    add_settings_args(parser)
    ns = parser.parse_args(argv)
    return ServeSettings(**vars(ns))
