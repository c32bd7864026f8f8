"""Precision recipes: named functions returning what the Trainer needs, and the Transformer Engine FP8 swap.

Model files build plain ``nn.Linear``; FP8 is a post-build swap here (``swap_to_te``: ``te.Linear`` 1:1, so
checkpoint keys stay ``weight``/``bias``), and Lightning's TE precision plugin enters ``fp8_autocast``. The
vision tower, the projector, the first and last LLM layers and ``lm_head`` stay out of FP8 through FQN globs
in ``conf/precision/fp8_te.yaml`` (``{last}`` is the index of the last LLM layer). FP8 GEMMs need both
dimensions divisible by 16; other layers are left alone. Requesting FP8 where TE cannot load raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from types import ModuleType
from typing import Any

import torch
from torch import nn

from nemo_eagle.training.config import PrecisionConfig

log = logging.getLogger(__name__)


class PrecisionUnavailable(RuntimeError):
    """A precision recipe this machine cannot run; the message says what is missing."""


@dataclass
class PrecisionPlan:
    trainer_precision: str | None  # Lightning's precision string, or None when ``plugin`` is set
    plugin: Any = None
    prepare: Callable[[nn.Module], Any] | None = None  # post-build transform of the EagleModel


RECIPES: dict[str, Callable[[PrecisionConfig], PrecisionPlan]] = {}


def register(name: str):
    def deco(fn):
        assert name not in RECIPES, f"duplicate precision recipe {name}"
        RECIPES[name] = fn
        return fn
    return deco


@register("fp32")
def fp32(cfg: PrecisionConfig) -> PrecisionPlan:
    return PrecisionPlan("32-true")


@register("bf16_mixed")
def bf16_mixed(cfg: PrecisionConfig) -> PrecisionPlan:
    """fp32 master weights, bf16 autocast compute."""
    return PrecisionPlan("bf16-mixed")


@register("bf16_true")
def bf16_true(cfg: PrecisionConfig) -> PrecisionPlan:
    return PrecisionPlan("bf16-true")


@register("fp8_te")
def fp8_te(cfg: PrecisionConfig) -> PrecisionPlan:
    """bf16 weights, FP8 GEMMs (delayed scaling) in the swapped ``te.Linear`` layers."""
    te = require_te()
    from lightning.pytorch.plugins.precision import TransformerEnginePrecision

    recipe = {"fp8_format": cfg.fp8_format.upper(), "amax_history_len": cfg.amax_history_len,
              "amax_compute_algo": cfg.amax_compute_algo}
    plugin = TransformerEnginePrecision(weights_dtype=torch.bfloat16, recipe=recipe, replace_layers=False)
    return PrecisionPlan(None, plugin=plugin, prepare=lambda model: swap_for_fp8(model, cfg.exclude, te=te))


def swap_for_fp8(model: nn.Module, exclude: Sequence[str], *, te: ModuleType | None = None) -> list[str]:
    """``swap_to_te`` for a run that asked for FP8: a swap that leaves no layer in FP8 is an error, not bf16."""
    swapped = swap_to_te(model, exclude, te=te)
    if not swapped:
        raise PrecisionUnavailable(
            "precision=fp8_te: no Linear layer qualifies for FP8 (excluded by precision.exclude, wrapped by LoRA "
            "adapters, or dims not multiples of 16), so the run would train in bf16; use precision=bf16, "
            "peft=none, or a model with more decoder layers than the excluded first/last ones")
    return swapped


def build_precision(cfg: PrecisionConfig) -> PrecisionPlan:
    if cfg.recipe not in RECIPES:
        raise KeyError(f"unknown precision recipe {cfg.recipe!r}; known: {sorted(RECIPES)}")
    return RECIPES[cfg.recipe](cfg)


def require_te() -> ModuleType:
    """``transformer_engine.pytorch``, or a clear error (TE needs CUDA; a half install raises RuntimeError)."""
    if not torch.cuda.is_available():
        raise PrecisionUnavailable("precision=fp8_te needs an NVIDIA GPU with Transformer Engine, and no CUDA device "
                                   "is available here; use precision=bf16 (GPU) or precision=fp32 (CPU)")
    try:
        import transformer_engine.pytorch as te
    except Exception as e:  # TE raises RuntimeError, not ImportError, when its CUDA libraries are missing
        raise PrecisionUnavailable(f"precision=fp8_te needs Transformer Engine, which cannot be imported "
                                   f"({type(e).__name__}: {e}); install transformer-engine[pytorch] matching your "
                                   "CUDA, or use precision=bf16") from e
    return te


def resolve_globs(patterns: Sequence[str], model: nn.Module) -> list[str]:
    """Fill ``{last}`` with the index of the last LLM layer (``{first}`` is 0)."""
    n = _num_llm_layers(model)
    return [p.format(first=0, last=max(n - 1, 0)) for p in patterns]


def _num_llm_layers(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "llm"):
        return int(cfg.llm.num_hidden_layers)
    return 0


def swap_to_te(model: nn.Module, exclude: Sequence[str], *, te: ModuleType | None = None) -> list[str]:
    """Replace eligible ``nn.Linear`` by ``te.Linear`` in place (same keys); returns the swapped FQNs.

    Skipped: FQNs matching ``exclude`` globs, layers inside LoRA adapters, and layers whose in/out features
    are not multiples of 16.
    """
    te = te or require_te()
    globs = resolve_globs(exclude, model)
    targets, under_lora = [], []
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(fnmatch(fqn, g) for g in globs) or ".lora_" in fqn:
            continue
        if fqn.endswith(".base_layer"):
            under_lora.append(fqn)
            continue
        if module.in_features % 16 or module.out_features % 16:
            log.debug("fp8: keeping %s (%dx%d not divisible by 16)", fqn, module.in_features, module.out_features)
            continue
        targets.append(fqn)
    for fqn in targets:
        parent_name, _, attr = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, attr)
        new = te.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                        params_dtype=lin.weight.dtype, device=lin.weight.device)
        missing, unexpected = new.load_state_dict(lin.state_dict(), strict=False)
        if [k for k in missing if not k.endswith("_extra_state")] or unexpected:
            raise RuntimeError(f"fp8 swap of {fqn}: te.Linear keys differ (missing {missing}, unexpected {unexpected})")
        new.weight.requires_grad_(lin.weight.requires_grad)
        if lin.bias is not None:
            new.bias.requires_grad_(lin.bias.requires_grad)
        setattr(parent, attr, new)
    if under_lora:
        log.warning("fp8: %d Linear layers wrapped by LoRA adapters stay in bf16 (e.g. %s)", len(under_lora),
                    under_lora[0].removesuffix(".base_layer"))
    log.info("fp8: %d Linear layers swapped to te.Linear; excluded by %s", len(targets), list(globs))
    return targets
