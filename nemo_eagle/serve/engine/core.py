"""The one place where a chat request becomes model inputs, for every backend.

``Engine.plan`` (REST front, tokenizer only): render the prompt, count its tokens, and shrink the tiling until
prompt + completion fit the context; the plans travel with the job. ``Engine.prepare`` (model side): decode the
images under the server's pixel limit, apply the front's plans (a mismatch is an error), tile and tokenise.
Generation: ``Engine.scheduler()`` (continuous batching, ``scheduler.py``) or ``Engine.run_batch`` (static
batching: a group decodes together until its longest job ends, kept to compare against).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nemo_eagle.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image, load_pil
from nemo_eagle.data.padding import pad_rows
from nemo_eagle.data.processor import IMG_CONTEXT, IMG_END, IMG_START, EagleProcessor
from nemo_eagle.data.processor import _size as image_size
from nemo_eagle.modeling.detokenizer import Detokenizer
from nemo_eagle.serve.engine.vision_cache import image_key
from nemo_eagle.serve.engine.wire import EngineError, GenerationEvent, GenerationJob, RequestPlan
from nemo_eagle.tiling import TilePlan, fit_plans_to_budget

log = logging.getLogger(__name__)

RESERVED_MARKUP = (IMG_CONTEXT, IMG_START, IMG_END)  # only the processor writes these


@dataclass
class PreparedJob:
    """A job's model inputs: its prompt ids, and per image the tiles, the plan applied and the cache key."""

    input_ids: Tensor  # (1, L)
    pixels: list[Tensor]  # per image (tiles, 3, S, S)
    plans: list[TilePlan]
    image_keys: list[tuple]
    embeds: Tensor | None = None  # (1, L, H) once the scheduler's worker encoded the images and merged them
    sampler: Any = None  # the job's TokenSampler (engine/sampling.py), built by the scheduler's worker
    position_keys: Tensor | None = None  # (L,) identities of the prompt positions, for KV prefix reuse

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def tiling(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.plans]


def plan_from_dict(d: dict[str, Any], *, tile_size: int, tokens_per_tile: int, max_tiles: int) -> TilePlan:
    """The front's plan of one image, checked for self-consistency (not re-planned: it is applied as sent)."""
    try:
        cols, rows = (int(x) for x in d["grid"])
        num_tiles, width, height = int(d["num_tiles"]), int(d["width"]), int(d["height"])
        limit, requested = int(d.get("max_tiles", cols * rows)), int(d.get("requested_max_tiles", cols * rows))
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(f"malformed tiling plan {d!r}: {e}", param="tiling") from e
    if cols < 1 or rows < 1 or cols * rows > max_tiles or num_tiles not in (cols * rows, cols * rows + 1):
        raise EngineError(f"tiling plan {d!r} is not a valid grid of at most {max_tiles} tiles", param="tiling")
    if num_tiles == cols * rows + 1 and cols * rows == 1:
        raise EngineError(f"tiling plan {d!r}: a single tile has no thumbnail", param="tiling")
    return TilePlan(width=width, height=height, grid=(cols, rows), num_tiles=num_tiles, tile_size=tile_size,
                    use_thumbnail=num_tiles != cols * rows, max_tiles=limit, requested_max_tiles=requested,
                    tokens_per_tile=tokens_per_tile)


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
        self._grammars = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, load_model: bool = True, device: str | None = None,
                        dtype: str | None = None, max_model_len: int | None = None, kernels: str = "auto") -> Engine:
        """``kernels`` (auto | torch | triton) picks the tiling op; on a GPU the model side tiles there."""
        from nemo_eagle.checkpoint import open_checkpoint

        ckpt = open_checkpoint(path)
        path, cfg = ckpt.path, ckpt.config
        if load_model:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tile_on = device if load_model and str(device).startswith("cuda") else None
        processor = EagleProcessor.from_contract(ckpt.contract_dir, cfg, kernels=kernels, device=tile_on)
        limit = max_model_len or cfg.llm.max_position_embeddings
        embedder_config = ckpt.embedder_config()
        model = None
        if load_model:
            from nemo_eagle.modeling.eagle import EagleModel

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
            what = f"{text_tokens} text tokens" + (
                f" + at least {n_images * per_tile} image tokens" if n_images else ""
            )
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
    def prepare(self, job: GenerationJob) -> PreparedJob:
        """Decode, check, tile and tokenise one job's inputs. Raises ``EngineError`` (400/413) for bad input."""
        proc = self.processor
        limit = job.max_image_pixels or DEFAULT_MAX_PIXELS
        try:
            tensors = [self._load(data, f"image {i}", limit) for i, data in enumerate(job.images)]
        except ImageError as e:
            too_big = "exceeds the limit" in str(e)
            raise EngineError(str(e), status=413 if too_big else 400,
                              code="image_too_large" if too_big else "invalid_image") from e
        if job.tiling is None:  # a caller without a plan (tests, tools): plan here, the same function the front uses
            plans = [proc.plan(x, max_tiles=job.max_tiles) for x in tensors]
        else:
            if len(job.tiling) != len(tensors):
                raise EngineError(f"{len(job.tiling)} tiling plans for {len(tensors)} images", param="tiling")
            t = proc.tiling
            plans = [plan_from_dict(d, tile_size=t.tile_size, tokens_per_tile=proc.tokens_per_tile,
                                    max_tiles=max(t.max_tiles, job.max_tiles or 0)) for d in job.tiling]
            for i, (x, p) in enumerate(zip(tensors, plans)):
                w, h = image_size(x)
                if (w, h) != (p.width, p.height):
                    raise EngineError(f"image {i}: the tiling plan is for a {p.width}x{p.height} image but the image "
                                      f"decodes to {w}x{h}", param="tiling")
        n = proc.count_image_placeholders(job.prompt)
        if n != len(tensors):
            raise EngineError(f"the prompt has {n} image placeholders but {len(tensors)} images were given")
        pixels = [proc.tile(x, p) for x, p in zip(tensors, plans)]
        ids = proc.tokenizer.encode(proc.expand_prompt(job.prompt, [p.num_tiles for p in plans]))
        keys = [image_key(data, p) for data, p in zip(job.images, plans)]
        return PreparedJob(torch.tensor([ids], dtype=torch.long), pixels, plans, keys)

    def _load(self, data: bytes, name: str, max_pixels: int) -> Any:
        """One image as this checkpoint's contract tiles it (``EagleProcessor.load``), under the pixel limit."""
        if self.processor.tiling.resize == "pil":
            return load_pil(data, name=name, max_pixels=max_pixels, alpha=self.processor.tiling.alpha)
        return load_image(data, name=name, max_pixels=max_pixels)

    def sampler(self, job: GenerationJob, prepared: PreparedJob) -> Any:
        """The job's per-sequence ``TokenSampler`` (raises ``EngineError`` for a grammar that does not compile)."""
        from nemo_eagle.serve.engine.sampling import Grammars, make_sampler

        if job.guide and self._grammars is None:
            self._grammars = Grammars(self.tokenizer, int(self.model.language_model.config.vocab_size))
        return make_sampler(job, eos_token_id=self.tokenizer.eos_token_id, grammars=self._grammars,
                            prompt_ids=prepared.input_ids[0].tolist())

    def scheduler(self, **kwargs: Any) -> Any:
        """A continuous-batching ``Scheduler`` over this engine's model (see ``scheduler.py`` for the options)."""
        from nemo_eagle.serve.engine.scheduler import Scheduler

        if self.model is None:
            raise RuntimeError("this Engine was built without a model (load_model=False)")
        return Scheduler(self, **kwargs)

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
                batch = self.prepare(job)
                batch.sampler = self.sampler(job, batch)
            except (EngineError, ValueError) as e:
                err = e if isinstance(e, EngineError) else EngineError(str(e))
                yield i, GenerationEvent(finish_reason="error", error=err.to_dict())
                continue
            length = batch.prompt_tokens
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

    def _collate(self, batches: list[PreparedJob]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Left-pad single-prompt batches into one (B, L) batch; tiles stay in row order."""
        ids, mask = pad_rows([b.input_ids[0] for b in batches], self.tokenizer.pad_token_id, side="left")
        pixels = [p for b in batches for p in b.pixels]
        pixel_values = torch.cat(pixels).to(self.model.dtype) if pixels else None
        return ids, mask, pixel_values

    @torch.inference_mode()  # without it every step's autograd graph stays alive through the cache: O(n^2) memory
    def _generate(self, group: list[tuple[int, GenerationJob, Any]],
                  cancelled: Callable[[int], bool]) -> Iterator[tuple[int, GenerationEvent]]:
        from nemo_eagle.modeling.generation import GenerationConfig, iter_tokens
        from nemo_eagle.serve.engine.sampling import sample_rows

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
        logprobs: list[list] = [[] for _ in group]  # per row, the records not yet sent
        samplers = [b.sampler for _, _, b in group]
        picked: list[list] = [[]]  # the last step's (token, logprob record) per row

        def pick(logits: torch.Tensor) -> torch.Tensor:
            picked[0] = sample_rows(logits, samplers)
            return torch.tensor([t for t, _ in picked[0]], device=logits.device)
        eos = self.tokenizer.eos_token_id

        def event(r: int, text: str = "", finish_reason: str | None = None) -> tuple[int, GenerationEvent] | None:
            i, job, batch = group[r]
            if finish_reason is None and started[r] and not job.stream:
                held[r] += text
                return None
            kw: dict[str, Any] = {}
            if not started[r]:
                started[r] = True
                kw.update(prompt_tokens=batch.prompt_tokens, batch_size=len(group), tiling=batch.tiling)
            if finish_reason is not None:
                active[r] = False
            text, held[r] = held[r] + text, ""
            if logprobs[r]:
                kw["logprobs"], logprobs[r] = logprobs[r], []
            return i, GenerationEvent(text=text, finish_reason=finish_reason, completion_tokens=counts[r], **kw)

        steps = iter_tokens(self.model, ids, mask, pixel_values, cfg, pick=pick)
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
                    if samplers[r].failed:  # that row only: its neighbours go on
                        active[r] = False
                        err = EngineError(samplers[r].failed, status=500, code="internal_error").to_dict()
                        out.append((i, GenerationEvent(finish_reason="error", completion_tokens=counts[r], error=err)))
                        continue
                    if picked[0][r][1] is not None and token != eos:
                        logprobs[r].append(picked[0][r][1])
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
