"""The one place where a chat request becomes model inputs and generated text, for every backend.

``Engine.plan`` (REST front, tokenizer only): render the prompt, count its tokens, and shrink the tiling until
prompt + completion fit the context. ``Engine.run_batch`` (inside Triton, or in-process): preprocess through
``EagleProcessor``, decode a batch of jobs together with ``generation.iter_tokens``, and stream text per job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nemo_eagle.data.images import ImageError
from nemo_eagle.data.padding import pad_rows
from nemo_eagle.data.processor import IMG_CONTEXT, IMG_END, IMG_START, EagleProcessor
from nemo_eagle.tiling import TilePlan, fit_plans_to_budget

log = logging.getLogger(__name__)

MAX_CHAR_TOKENS = 4  # byte-level tokens one UTF-8 character can span
RESERVED_MARKUP = (IMG_CONTEXT, IMG_START, IMG_END)  # only the processor writes these


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
    stop: list[str] = field(default_factory=list)
    stream: bool = True  # False: only the first and the last event (less traffic for non-streaming requests)
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
    batch_size: int | None = None
    tiling: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None

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


class Detokenizer:
    """Incremental decoding of one row: printable text only (no half UTF-8 characters), stop strings cut off
    (OpenAI semantics: the stop sequence is not returned) and never half-emitted."""

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.prefix = self.read = 0  # decode window: ids[prefix:read] is already reflected in `text`
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Feed one generated token; return the newly printable text (possibly empty)."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        # Wait for the rest of a multi-byte character, but not forever: a UTF-8 character spans at most
        # MAX_CHAR_TOKENS byte tokens, so after that the bytes are invalid and come out as U+FFFD.
        if len(after) > len(before) and (not after.endswith("\ufffd") or len(self.ids) - self.read >= MAX_CHAR_TOKENS):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
        self._find_stop()
        return self._release(final=self.stopped)

    def flush(self) -> str:
        """Everything not yet returned, including a trailing incomplete character (as U+FFFD)."""
        if self.read < len(self.ids) and not self.stopped:
            before = self.tokenizer.decode(self.ids[self.prefix:self.read])
            self.text += self.tokenizer.decode(self.ids[self.prefix:])[len(before):]
            self.prefix = self.read = len(self.ids)
            self._find_stop()
        return self._release(final=True)

    def _find_stop(self) -> None:
        hits = [at for at in (self.text.find(s) for s in self.stop) if at >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True

    def _release(self, final: bool) -> str:
        safe = len(self.text)
        if not final:  # hold back a tail that could still become a stop sequence
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
        out = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out


class Engine:
    """Preprocessing and batched generation for one checkpoint. ``model`` is None in the REST front."""

    def __init__(self, processor: EagleProcessor, model: Any = None, *, max_model_len: int,
                 embedder_config: dict[str, Any] | None = None):
        self.processor = processor
        self.model = model
        self.max_model_len = max_model_len
        self.tokenizer = processor.tokenizer
        self.embedder_config = embedder_config or {}
        self._embedder = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, load_model: bool = True, device: str | None = None,
                        dtype: str | None = None, max_model_len: int | None = None) -> Engine:
        from nemo_eagle.checkpoint import open_checkpoint

        ckpt = open_checkpoint(path)
        path, cfg = ckpt.path, ckpt.config
        processor = EagleProcessor.from_contract(ckpt.contract_dir, cfg)
        limit = max_model_len or cfg.llm.max_position_embeddings
        embedder_config = ckpt.embedder_config()
        model = None
        if load_model:
            from nemo_eagle.modeling.eagle import EagleModel

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
            model = EagleModel.from_pretrained(path, dtype=dtype, device=device)
            log.info("engine ready: %s on %s (%s), context %d tokens", path, device, dtype, limit)
        return cls(processor, model, max_model_len=limit, embedder_config=embedder_config)

    # ------------------------------------------------------------------------------------ REST front side
    def render(self, messages: list[dict[str, Any]]) -> str:
        for m in messages:  # image markup typed by the user would desynchronise image tokens and features
            parts = [m["content"]] if isinstance(m["content"], str) else [p.get("text", "") for p in m["content"]]
            for token in RESERVED_MARKUP:
                if any(token in text for text in parts):
                    raise EngineError(f"message text may not contain the reserved image markup {token!r}",
                                      param="messages")
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        except ValueError as e:
            raise EngineError(str(e), param="messages") from e

    def plan(self, prompt: str, image_sizes: list[tuple[int, int]], *, max_tiles: int | None,
             max_new_tokens: int | None, default_max_tokens: int, max_tiles_cap: int | None = None) -> RequestPlan:
        """Fit prompt + images + completion into the context, lowering the tile limit when needed.

        Raises ``EngineError`` (400, ``context_length_exceeded``) only when even one tile per image does not fit.
        """
        tiling = self.processor.tiling
        cap = max_tiles_cap or tiling.max_tiles
        if max_tiles is not None and max_tiles > cap:
            raise EngineError(f"max_tiles={max_tiles} exceeds this server's limit of {cap} tiles per image",
                              param="max_tiles")
        limit = max_tiles or min(tiling.max_tiles, cap)
        n_images = self.processor.count_image_placeholders(prompt)
        if n_images != len(image_sizes):
            raise EngineError(f"the prompt has {n_images} image placeholders but {len(image_sizes)} images were given")
        # <img></img> around each image are real tokens; the image tokens themselves are added per plan below.
        text_tokens = len(self.tokenizer.encode(self.processor.expand_prompt(prompt, [0] * n_images)))
        per_tile = self.processor.tokens_per_tile
        reserve = max_new_tokens or default_max_tokens
        room = self.max_model_len - text_tokens - n_images * per_tile  # left after one tile per image
        if max_new_tokens is None:
            reserve = max(1, min(reserve, room))
        if room < reserve:
            what = f"{text_tokens} text tokens" + (f" + at least {n_images * per_tile} image tokens" if n_images else "")
            raise EngineError(f"the prompt needs {what}, and with max_tokens={reserve} this exceeds the context of "
                              f"{self.max_model_len} tokens; shorten the prompt, send fewer images or lower max_tokens",
                              code="context_length_exceeded", param="messages")
        plans: list[TilePlan] = []
        if image_sizes:
            plans = fit_plans_to_budget(image_sizes, self.max_model_len - text_tokens - reserve,
                                        min_tiles=min(tiling.min_tiles, limit), max_tiles=limit,
                                        use_thumbnail=tiling.use_thumbnail, tile_size=tiling.tile_size,
                                        tokens_per_tile=per_tile)
        prompt_tokens = text_tokens + sum(p.num_tokens for p in plans)
        new_tokens = max_new_tokens or max(1, min(default_max_tokens, self.max_model_len - prompt_tokens))
        if any(p.reduced for p in plans):
            log.info("tiling reduced to fit %d tokens: %s", self.max_model_len, "; ".join(p.describe() for p in plans))
        return RequestPlan(prompt=prompt, prompt_tokens=prompt_tokens, max_tiles=plans[0].max_tiles if plans else None,
                           max_new_tokens=new_tokens, plans=plans)

    # ----------------------------------------------------------------------------------------- model side
    def run_batch(self, jobs: list[GenerationJob],
                  cancelled: Callable[[int], bool] | None = None) -> Iterator[tuple[int, GenerationEvent]]:
        """Generate every job, yielding ``(job index, event)``; each job ends with one event with a finish_reason.

        A job that fails preprocessing gets an error event and does not disturb the others.
        """
        if self.model is None:
            raise RuntimeError("this Engine was built without a model (load_model=False)")
        cancelled = cancelled or (lambda i: False)
        started = time.perf_counter()
        ready: dict[tuple, list[tuple[int, GenerationJob, Any]]] = {}
        for i, job in enumerate(jobs):
            try:
                batch = self.processor(text=job.prompt, images=job.images, max_tiles=job.max_tiles)
            except (ImageError, EngineError, ValueError) as e:
                err = e if isinstance(e, EngineError) else EngineError(str(e), code="invalid_image" if
                                                                      isinstance(e, ImageError) else "invalid_request")
                yield i, GenerationEvent(finish_reason="error", error=err.to_dict())
                continue
            length = int(batch["input_ids"].shape[1])
            if length + job.max_new_tokens > self.max_model_len:
                err = EngineError(f"prompt of {length} tokens + max_tokens={job.max_new_tokens} exceeds the context "
                                  f"of {self.max_model_len} tokens", code="context_length_exceeded")
                yield i, GenerationEvent(finish_reason="error", error=err.to_dict())
                continue
            ready.setdefault(job.group_key, []).append((i, job, batch))
        log.debug("preprocessed %d job(s) in %.3fs (threads=%d)", len(jobs), time.perf_counter() - started,
                  torch.get_num_threads())
        for group in ready.values():
            t0 = time.perf_counter()
            yield from self._generate(group, cancelled)
            log.debug("decoded a group of %d in %.3fs", len(group), time.perf_counter() - t0)

    # ------------------------------------------------------------------------------ embeddings, ranking
    @property
    def embedder(self) -> Any:
        """``EagleEmbedder`` over this engine's model (same weights, no second copy); built on first use."""
        if self._embedder is None:
            from nemo_eagle.embed.embedder import EagleEmbedder, EmbedderConfig

            cfg = EmbedderConfig.from_dict({**self.embedder_config, "max_length": self.max_model_len})
            self._embedder = EagleEmbedder(self.model, self.processor, cfg)
            self._embedder.eval()
        return self._embedder

    def run_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """One embedding or ranking request (``task["task"]`` is ``embed`` or ``rank``); raises EngineError."""
        from nemo_eagle.embed.inputs import InputTooLongError

        if self.model is None:
            raise RuntimeError("this Engine was built without a model (load_model=False)")
        kind = task.get("task")
        try:
            if kind == "embed":
                vecs, counts = self.embedder.embed_with_usage(task["input"], task.get("input_type") or "query",
                                                              truncate=task.get("truncate", "NONE"),
                                                              dimensions=task.get("dimensions"))
                rows = vecs.tolist() if isinstance(vecs, torch.Tensor) else [v.tolist() for v in vecs]
                return {"embeddings": rows, "num_tokens": counts}
            if kind == "rank":
                truncate = task.get("truncate", "NONE")
                rankings = self.embedder.rank({"text": task["query"]}, [{"text": p} for p in task["passages"]],
                                              truncate=truncate)
                return {"rankings": rankings}
        except InputTooLongError as e:
            raise EngineError(str(e), code="input_too_long", param="input") from e
        except (ImageError, ValueError) as e:
            raise EngineError(str(e), code="invalid_input", param="input") from e
        raise EngineError(f"unknown task {kind!r}")

    def _collate(self, batches: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Left-pad single-prompt batches into one (B, L) batch; tiles stay in row order."""
        ids, mask = pad_rows([b["input_ids"][0] for b in batches], self.tokenizer.pad_token_id, side="left")
        pixels = [b["pixel_values"] for b in batches if b["pixel_values"].numel()]
        pixel_values = torch.cat(pixels).to(self.model.dtype) if pixels else None
        return ids, mask, pixel_values

    def _generate(self, group: list[tuple[int, GenerationJob, Any]],
                  cancelled: Callable[[int], bool]) -> Iterator[tuple[int, GenerationEvent]]:
        from nemo_eagle.modeling.generation import GenerationConfig, iter_tokens

        first = group[0][1]
        cfg = GenerationConfig(max_new_tokens=max(job.max_new_tokens for _, job, _ in group),
                               do_sample=first.temperature > 0, temperature=first.temperature or 1.0,
                               top_p=first.top_p, seed=first.seed, eos_token_id=self.tokenizer.eos_token_id,
                               pad_token_id=self.tokenizer.pad_token_id)
        ids, mask, pixel_values = self._collate([b for _, _, b in group])
        log.debug("decoding a batch of %d (%s), %d prompt tokens", len(group), "greedy" if not cfg.do_sample else
                  f"T={cfg.temperature} top_p={cfg.top_p}", int(mask.sum()))
        detok = [Detokenizer(self.tokenizer, job.stop) for _, job, _ in group]
        counts = [0] * len(group)
        active = [True] * len(group)
        started = [False] * len(group)
        held = [""] * len(group)  # text of non-streaming jobs, sent with their last event
        eos = self.tokenizer.eos_token_id

        def event(r: int, text: str = "", finish_reason: str | None = None) -> tuple[int, GenerationEvent] | None:
            i, job, batch = group[r]
            if finish_reason is None and started[r] and not job.stream:
                held[r] += text
                return None
            kw: dict[str, Any] = {}
            if not started[r]:
                started[r] = True
                kw.update(prompt_tokens=int(batch["attention_mask"].sum()), batch_size=len(group),
                          tiling=[p.to_dict() for p in batch.plans])
            if finish_reason is not None:
                active[r] = False
            text, held[r] = held[r] + text, ""
            return i, GenerationEvent(text=text, finish_reason=finish_reason, completion_tokens=counts[r], **kw)

        steps = iter_tokens(self.model, ids, mask, pixel_values, cfg)
        try:
            for nxt, _ in steps:
                out: list[tuple[int, GenerationEvent] | None] = []
                for r in range(len(group)):
                    if not active[r]:
                        continue
                    i, job, _ = group[r]
                    if cancelled(i):
                        out.append(event(r, finish_reason="cancelled"))
                        continue
                    token = int(nxt[r])
                    counts[r] += 1
                    if token == eos:
                        out.append(event(r, detok[r].flush(), "stop"))
                        continue
                    text = detok[r].add(token)
                    if detok[r].stopped or counts[r] >= job.max_new_tokens:
                        out.append(event(r, text + detok[r].flush(), "stop" if detok[r].stopped else "length"))
                    elif text or not started[r]:
                        out.append(event(r, text))
                yield from (e for e in out if e is not None)
                if not any(active):
                    break
        finally:
            steps.close()
        for r in range(len(group)):  # iter_tokens ended early (every row hit EOS on the model's side)
            if active[r]:
                yield event(r, detok[r].flush(), "stop")
