"""Per-module freezing and LoRA (peft) on the LLM and the vision tower, with merged export.

Module groups of ``EagleModel``: ``vision`` (the tower), ``projector``, ``llm`` (``language_model``), and for
Eagle2-9B ``convnext`` (its ConvNeXt branch; frozen with ``vision`` unless ``FreezeConfig.convnext`` says).
The unused classification / pooling heads of the 9B towers never train.
With LoRA, the base weights of every group that carries adapters are frozen and the adapters train; the other
groups follow ``FreezeConfig``. ``merged_state_dict`` folds the adapters into plain weights under the
original parameter names without touching the training model, so every export is a plain EagleModel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torch import nn

from nemo_eagle.training.config import FreezeConfig, PeftConfig

log = logging.getLogger(__name__)

GROUPS = {"convnext": "vision.convnext.", "vision": "vision.", "projector": "projector.", "llm": "language_model."}
# Tensors kept for the checkpoint layout but never used in the forward pass (Eagle2-9B).
UNUSED = ("vision.convnext.head_fc.*", "vision.convnext.model.layernorm.*", "vision.tower.head.*",
          "vision.tower.vision_model.head.*")
ADAPTER = "default"


def group_of(name: str) -> str:
    for group, prefix in GROUPS.items():
        if name.startswith(prefix):
            return group
    raise KeyError(f"parameter {name!r} belongs to no module group ({sorted(GROUPS)})")


def linear_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """FQNs of the ``nn.Linear`` modules matching any glob in ``patterns``."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(fnmatch(n, p) for p in patterns)]


def apply_lora(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Inject LoRA adapters into the Linear layers matching ``cfg.targets``; returns their names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = linear_names(model, cfg.targets)
    if not targets:
        raise ValueError(f"peft.targets {list(cfg.targets)} match no Linear layer of the model")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(lora, model, adapter_name=ADAPTER)
    log.info("LoRA r=%d alpha=%d on %d Linear layers (%s)", cfg.r, cfg.alpha, len(targets),
             ", ".join(sorted({group_of(t) for t in targets})))
    return targets


def set_trainable(model: nn.Module, freeze: FreezeConfig) -> dict[str, int]:
    """requires_grad per parameter; returns trainable parameter counts per group (and ``lora``)."""
    lora_groups = {group_of(n) for n, _ in model.named_parameters() if ".lora_" in n}
    counts = {"vision": 0, "convnext": 0, "projector": 0, "llm": 0, "lora": 0, "frozen": 0}
    for name, p in model.named_parameters():
        group = group_of(name)
        if ".lora_" in name:
            p.requires_grad_(True)
            counts["lora"] += p.numel()
            continue
        frozen = freeze.vision if group == "convnext" and freeze.convnext is None else getattr(freeze, group)
        trainable = group not in lora_groups and not frozen and not any(fnmatch(name, u) for u in UNUSED)
        p.requires_grad_(trainable)
        counts[group if trainable else "frozen"] += p.numel()
    if not any(counts[k] for k in ("vision", "convnext", "projector", "llm", "lora")):
        raise ValueError("every parameter is frozen: nothing to train (check model.freeze and peft)")
    log.info("trainable parameters: %s", {k: v for k, v in counts.items() if v})
    return counts


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain EagleModel state dict: LoRA deltas added to the base weights, adapter tensors dropped."""
    state = model.state_dict()
    layers = lora_layers(model) if any(".lora_" in k for k in state) else []
    if not layers:
        return state
    merged: dict[str, torch.Tensor] = {}
    deltas = {f"{n}.base_layer.weight": m.get_delta_weight(ADAPTER) for n, m in layers}
    for k, t in state.items():
        if ".lora_" in k:
            continue
        if k in deltas:
            t = t + deltas[k].to(t.dtype)
        merged[k.replace(".base_layer.", ".")] = t
    return merged


def merge_lora_(model: nn.Module) -> int:
    """Fold LoRA into the base layers in place and put the plain Linear modules back; returns how many."""
    layers = lora_layers(model)
    for name, layer in layers:
        layer.merge(adapter_names=[ADAPTER])
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], layer.get_base_layer())
    return len(layers)
