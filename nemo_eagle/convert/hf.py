"""The one table between official HF Eagle checkpoint names and EagleModel parameter names, and weight I/O.

transformers 5.x flattened ``SiglipVisionModel`` (its keys are ``embeddings.*``) while checkpoints say
``vision_model.vision_model.embeddings.*`` (transformers 4.51 still nests); the layout is detected from the
module's own keys, in both directions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

# The one table: (HF prefix, our prefix); the rest of each name carries over unchanged. ``{vt}`` is the SigLIP
# module's own prefix ("" or "vision_model."), detected from the module's keys.
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("vision_model.vision_model.embeddings.", "vision.tower.{vt}embeddings."),
    ("vision_model.vision_model.encoder.", "vision.tower.{vt}encoder."),
    ("vision_model.vision_model.post_layernorm.", "vision.tower.{vt}post_layernorm."),
    ("vision_model.vision_model.convnext.", "vision.convnext."),
    ("mlp1.0.", "projector.norm."),
    ("mlp1.1.", "projector.fc1."),
    ("mlp1.3.", "projector.fc2."),
    ("language_model.", "language_model."),
)
# Present in some checkpoints, never used by EAGLE2.
IGNORED = (re.compile(r"vision_model\.vision_model\.head\..*"),)

LM_HEAD = "language_model.lm_head.weight"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not fit the model; the message names the tensors."""


def vision_prefix(our_keys: Iterable[str]) -> str:
    """"vision_model." when the SigLIP module nests (transformers 4.x), "" when flat (5.x)."""
    return "vision_model." if any(k.startswith("vision.tower.vision_model.") for k in our_keys) else ""


def hf_to_ours(name: str, vt: str) -> str | None:
    """Our parameter name for an HF checkpoint name; None for ignored names; raises for unknown ones."""
    if any(p.fullmatch(name) for p in IGNORED):
        return None
    for hf, ours in KEY_TABLE:
        if name.startswith(hf):
            return ours.replace("{vt}", vt) + name[len(hf):]
    raise CheckpointError(f"unexpected tensor {name!r} in checkpoint (not part of an Eagle2 model)")


def ours_to_hf(name: str, vt: str) -> str:
    """The HF checkpoint name of one of our parameter names (inverse of ``hf_to_ours``)."""
    for hf, ours in KEY_TABLE:
        prefix = ours.replace("{vt}", vt)
        if name.startswith(prefix):
            return hf + name[len(prefix):]
    raise KeyError(f"no checkpoint name for parameter {name!r}")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""
    path = Path(path)
    if (path / WEIGHTS_NAME).exists():
        return load_file(str(path / WEIGHTS_NAME))
    if (path / INDEX_NAME).exists():
        index = json.loads((path / INDEX_NAME).read_text())
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            out.update(load_file(str(path / shard)))
        return out
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}")


def hf_has_lm_head(hf_keys: Iterable[str]) -> bool:
    return LM_HEAD in set(hf_keys)


def load_hf_state_dict(model: torch.nn.Module, hf_tensors: dict[str, torch.Tensor], *, tied: bool) -> None:
    """Copy HF-named tensors into ``model``; every missing, unexpected or mis-shaped tensor is named."""
    own = model.state_dict()
    vt = vision_prefix(own)
    mapped: dict[str, torch.Tensor] = {}
    for name, t in hf_tensors.items():
        ours = hf_to_ours(name, vt)
        if ours is not None:
            mapped[ours] = t
    expected = {k for k in own if not (tied and k == "language_model.lm_head.weight")}
    missing = sorted(expected - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(ours_to_hf(k, vt) for k in missing[:10])
                        + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(ours_to_hf(k, vt) for k in unexpected[:10]))
    for k in sorted(set(mapped) & set(own)):
        if mapped[k].shape != own[k].shape:
            problems.append(f"tensor {ours_to_hf(k, vt)} has shape {tuple(mapped[k].shape)}, "
                            f"the model config expects {tuple(own[k].shape)}")
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in mapped.items():
            own[k].copy_(t)


def hf_state_dict(model: torch.nn.Module, *, tied: bool) -> dict[str, torch.Tensor]:
    """The model's tensors under official HF names (tied ``lm_head`` omitted, as the checkpoints do)."""
    own = model.state_dict()
    vt = vision_prefix(own)
    out = {}
    for k, t in own.items():
        if tied and k == "language_model.lm_head.weight":
            continue
        out[ours_to_hf(k, vt)] = t.detach().contiguous()
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], out_dir: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model.safetensors`` (or shards + index past ``max_shard_bytes``)."""
    out_dir = Path(out_dir)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    meta = {"format": "pt"}
    if total <= max_shard_bytes:
        save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata=meta)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        n = tensors[k].numel() * tensors[k].element_size()
        if size + n > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += n
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    (out_dir / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
