"""Autoregressive decoding for EagleModel: KV cache, greedy / seeded sampling, stop strings, streaming.

The first step runs the LM on the merged text+image embeddings and computes logits at the last position only
(``logits_to_keep=1``); later steps feed one token per row with the cache. ``use_cache=False`` recomputes the
whole sequence each step (the oracle the cache is tested against). Stop strings follow the one rule of
``modeling.detokenizer`` (shared with the server).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nemo_eagle.modeling.detokenizer import Detokenizer
from nemo_eagle.modeling.lm_io import cache_kwargs, output_cache, positions_from_mask

if TYPE_CHECKING:
    from nemo_eagle.modeling.eagle import EagleModel


def eos_set(cfg: GenerationConfig) -> set[int]:
    return set([cfg.eos_token_id] if isinstance(cfg.eos_token_id, int) else list(cfg.eos_token_id or []))


@dataclass(kw_only=True)
class GenerationConfig:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    stop_strings: Sequence[str] | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def make_config(model: EagleModel, kwargs: dict[str, Any]) -> GenerationConfig:
    names = {f.name for f in fields(GenerationConfig)}
    unknown = set(kwargs) - names
    if unknown:
        raise TypeError(f"unknown generation option(s): {sorted(unknown)}; known: {sorted(names)}")
    cfg = GenerationConfig(**kwargs)
    tok = model.tokenizer
    if cfg.eos_token_id is None and tok is not None:
        cfg.eos_token_id = tok.eos_token_id
    if cfg.pad_token_id is None:
        cfg.pad_token_id = tok.pad_token_id if tok is not None else 0
    if cfg.stop_strings and tok is None:
        raise ValueError("stop_strings need a tokenizer: load the model from a checkpoint with tokenizer.json")
    return cfg


def warp(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """(B, V) logits -> the float32 logits sampling draws from: divided by the temperature, tokens outside the
    top-k and outside the smallest prefix reaching ``top_p`` (at least one token) set to -inf."""
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, V) warped logits -> (B,) ids drawn from their softmax (on CPU when a seeded generator is given)."""
    probs = logits.softmax(-1)
    return (
        torch.multinomial(probs.cpu() if generator is not None else probs, 1, generator=generator)
        .squeeze(-1)
        .to(logits.device)
    )


def sample_next(logits: Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) next ids: argmax, or temperature / top-k / top-p sampling."""
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    return draw(warp(logits, cfg.temperature, cfg.top_k, cfg.top_p), generator)


def iter_tokens(model: EagleModel, input_ids: Tensor, attention_mask: Tensor | None, pixel_values: Tensor | None,
                cfg: GenerationConfig, pick: Callable[[Tensor], Tensor] | None = None,
                ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (next_ids (B,), finished (B,)) per step until every row stopped or max_new_tokens is reached.
    ``pick``: (B, V) last-position logits -> (B,) ids, replacing ``sample_next`` (the server's per-row sampling)."""
    device = model.device
    input_ids = input_ids.to(device)
    b = input_ids.shape[0]
    mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).to(device)
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    eos = eos_set(cfg)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    detok = [Detokenizer(model.tokenizer, cfg.stop_strings) for _ in range(b)] if cfg.stop_strings else []
    embeds = model.embed_inputs(input_ids, pixel_values.to(device) if pixel_values is not None else None)
    positions = positions_from_mask(mask)
    cache = None
    step_embeds, step_pos = embeds, positions
    for _ in range(cfg.max_new_tokens):
        with _decode_attention(device):
            out = _step(model, cfg, step_embeds, step_pos, mask, cache, embeds, positions)
        if cfg.use_cache:
            cache = output_cache(out)
        last = out.logits[:, -1, :]
        nxt = pick(last) if pick is not None else sample_next(last, cfg, generator)
        nxt = torch.where(finished, torch.full_like(nxt, cfg.pad_token_id), nxt)
        done_now = torch.tensor([int(t) in eos for t in nxt.tolist()], device=device) & ~finished
        for i, d in enumerate(detok):
            if not finished[i] and not done_now[i]:
                d.add(int(nxt[i]))
                done_now[i] = d.stopped
        yield nxt, finished | done_now
        finished |= done_now
        if bool(finished.all()):
            return
        new_embed = model.language_model.get_input_embeddings()(nxt[:, None])
        new_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)
        if not cfg.use_cache:  # only the recompute path needs the whole sequence again
            embeds = torch.cat([embeds, new_embed], dim=1)
            positions = torch.cat([positions, new_pos], dim=1)
        step_embeds, step_pos = new_embed, new_pos


def _decode_attention(device: torch.device):
    """SDPA backends for decoding: not cuDNN, which plans a new graph for every new KV length (tens of ms a step)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _step(model: EagleModel, cfg: GenerationConfig, step_embeds: Tensor, step_pos: Tensor, mask: Tensor, cache: Any,
          embeds: Tensor, positions: Tensor) -> Any:
    """One LM call: the new token(s) against the cache, or the whole sequence again without one."""
    last = last_logits_kwargs(model.language_model)  # prefill: the other prompt positions need no logits
    if cfg.use_cache:
        return model.language_model(inputs_embeds=step_embeds, attention_mask=mask, position_ids=step_pos,
                                    use_cache=True, **cache_kwargs(model.language_model, cache), **last)
    return model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                                **last)


_LOGITS_ARG: dict[type, str | None] = {}


def last_logits_kwargs(language_model: Any) -> dict[str, int]:
    """Keyword asking a transformers causal LM for the last position's logits only (``logits_to_keep`` in 5.x,
    ``num_logits_to_keep`` in some 4.x models; none: all positions)."""
    kind = type(language_model)
    if kind not in _LOGITS_ARG:
        import inspect

        params = inspect.signature(kind.forward).parameters
        _LOGITS_ARG[kind] = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
    name = _LOGITS_ARG[kind]
    return {name: 1} if name else {}


def generate(model: EagleModel, input_ids: Tensor, attention_mask: Tensor | None = None,
             pixel_values: Tensor | None = None, **kwargs: Any) -> Tensor:
    cfg = make_config(model, kwargs)
    steps = []
    was_finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=model.device)
    for nxt, finished in iter_tokens(model, input_ids, attention_mask, pixel_values, cfg):
        steps.append(torch.where(was_finished, torch.full_like(nxt, cfg.pad_token_id), nxt))
        was_finished = finished
    ids = torch.stack(steps, dim=1)
    if cfg.stop_strings:
        ids = _truncate_at_stop(model, ids, cfg)
    return ids


def _truncate_at_stop(model: EagleModel, ids: Tensor, cfg: GenerationConfig) -> Tensor:
    """Pad out the tokens after the one completing a stop string (ids cannot be cut inside that token)."""
    out = ids.clone()
    for i in range(ids.shape[0]):
        d = Detokenizer(model.tokenizer, cfg.stop_strings)
        for j, t in enumerate(ids[i].tolist()):
            d.add(t)
            if d.stopped:
                out[i, j + 1:] = cfg.pad_token_id
                break
    return out


def stream_text(model: EagleModel, input_ids: Tensor, attention_mask: Tensor | None = None,
                pixel_values: Tensor | None = None, **kwargs: Any) -> Iterator[str]:
    """Decoded text pieces of a single prompt, as they become printable (multi-byte characters held back; the
    text ends before a stop string, see ``modeling.detokenizer``)."""
    if input_ids.shape[0] != 1:
        raise ValueError(f"streaming takes one prompt, got a batch of {input_ids.shape[0]}")
    if model.tokenizer is None:
        raise ValueError("streaming needs a tokenizer: load the model from a checkpoint with tokenizer.json")
    cfg = make_config(model, kwargs)
    eos = eos_set(cfg)
    detok = Detokenizer(model.tokenizer, cfg.stop_strings or ())
    for nxt, _ in iter_tokens(model, input_ids, attention_mask, pixel_values, cfg):
        t = int(nxt[0])
        if t in eos:
            break
        piece = detok.add(t)
        if piece:
            yield piece
        if detok.stopped:
            return
    if tail := detok.flush():
        yield tail
