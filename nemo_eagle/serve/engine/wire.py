"""What crosses the wire between the REST front and the model side: a job (JSON header + encoded images), the
events streamed back, the front's plan for a request, and the error type both sides raise."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from nemo_eagle.tiling import TilePlan


class EngineError(Exception):
    """A request the model cannot serve, with the HTTP status and OpenAI error code the front answers with."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.param = message, status, code, param

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "status": self.status, "code": self.code, "param": self.param}


@dataclass(kw_only=True)
class GenerationJob:
    """One completion to generate: what the front sends to a backend (JSON header + encoded image files)."""

    request_id: str
    prompt: str  # the rendered chat prompt, image placeholders not yet expanded
    max_tiles: int | None  # tile limit to apply, already lowered to fit the context
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # logits processing, structured output and log-probabilities (engine/sampling.py)
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[str, float] | None = None  # token id (as a JSON key) -> bias added to its logit
    min_tokens: int = 0
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely ones
    guide: dict[str, Any] | None = None  # structured output: json_schema | json_object | regex | choice
    stop: list[str] = field(default_factory=list)
    stream: bool = True  # False: only the first and the last event (less traffic for non-streaming requests)
    tiling: list[dict[str, Any]] | None = None  # the front's plan per image (TilePlan.to_dict); applied as sent
    max_image_pixels: int | None = None  # the server's decode limit (width * height) for these images
    images: list[bytes] = field(default_factory=list, repr=False)

    def header(self) -> bytes:
        d = asdict(self)
        d.pop("images")
        return json.dumps(d).encode()

    @classmethod
    def from_wire(cls, header: bytes, images: list[bytes]) -> GenerationJob:
        return cls(**json.loads(header), images=list(images))

    @property
    def group_key(self) -> tuple:
        """Jobs with the same key decode together; seeded jobs run alone so a seed reproduces its answer."""
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", self.request_id)
        return ("sample", self.temperature, self.top_p)


@dataclass(kw_only=True)
class GenerationEvent:
    """A piece of one job's output. The first event of a job carries its prompt size and tiling plans."""

    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled | error
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # of prompt_tokens, copied from the KV cache (prefix reuse); first event only
    batch_size: int | None = None
    tiling: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None
    logprobs: list[list] | None = None  # per token of this event: [id, logprob, [[top id, logprob], ...]]

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, "")}).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> GenerationEvent:
        return cls(**json.loads(data))


@dataclass
class RequestPlan:
    """What ``Engine.plan`` decided for one request."""

    prompt: str
    prompt_tokens: int
    max_tiles: int | None  # the limit to send to the backend (None when there are no images)
    max_new_tokens: int
    plans: list[TilePlan]

    @property
    def tiling(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.plans]
