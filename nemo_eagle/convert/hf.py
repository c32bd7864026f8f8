"""The one table between official HF Eagle checkpoint names and EagleModel parameter names, and weight I/O.

transformers 5.x flattened ``SiglipVisionModel`` (its keys are ``embeddings.*``) while checkpoints say
``vision_model.vision_model.embeddings.*`` (transformers 4.51 still nests); the layout is detected from the
module's own keys, in both directions.

Eagle2-9B (mixture of encoders) names its towers ``vision_model.vision_model.vision_towers.{i}.vision_tower.``:
the SigLIP tower's names go on with ``vision_model.``, the ConvNeXt's are timm's (``stem.``, ``stages.``,
``head.``; mapped by ``modeling.convnext``). Which index is which tower is read from the names, never assumed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import torch
from safetensors.torch import load_file, save_file

# The one table: (HF prefix, our prefix); the rest of each name carries over unchanged. ``{vt}`` is the SigLIP
# module's own prefix ("" or "vision_model."), detected from the module's keys.
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("vision_model.vision_model.embeddings.", "vision.tower.{vt}embeddings."),
    ("vision_model.vision_model.encoder.", "vision.tower.{vt}encoder."),
    ("vision_model.vision_model.post_layernorm.", "vision.tower.{vt}post_layernorm."),
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


MOE_PREFIX = "vision_model.vision_model.vision_towers."
_MOE_NAME = re.compile(re.escape(MOE_PREFIX) + r"(\d+)\.vision_tower\.(.+)")
DEFAULT_TOWERS = ("siglip", "convnext")
CONVNEXT = "vision.convnext."


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not fit the model; the message names the tensors."""


class VisionLayout(str):
    """The SigLIP module prefix ("" or "vision_model.") plus, for Eagle2-9B, the checkpoint's tower order."""

    towers: tuple[str, ...] | None

    def __new__(cls, vt: str, towers: Iterable[str] | None = None) -> Self:
        obj = super().__new__(cls, vt)
        obj.towers = tuple(towers) if towers is not None else None
        return obj


def vision_prefix(our_keys: Iterable[str], towers: Iterable[str] | None = None) -> VisionLayout:
    """"vision_model." when the SigLIP module nests (transformers 4.x), "" when flat (5.x); with a ConvNeXt
    branch (Eagle2-9B) it also carries the tower order (``towers``, SigLIP first unless given)."""
    keys = list(our_keys)
    vt = "vision_model." if any(k.startswith("vision.tower.vision_model.") for k in keys) else ""
    mixture = any(k.startswith(CONVNEXT) for k in keys)
    return VisionLayout(vt, (towers or DEFAULT_TOWERS) if mixture else None)


def towers_from_names(hf_keys: Iterable[str]) -> tuple[str, ...]:
    """The kind of each ``vision_towers.{i}`` of an Eagle2-9B checkpoint, in index order, read from its names."""
    kinds: dict[int, set[str]] = {}
    for name in hf_keys:
        m = _MOE_NAME.fullmatch(name)
        if m is None:
            continue
        rest = m.group(2)
        kind = "siglip" if rest.startswith("vision_model.") else "convnext" if rest.split(".")[0] in (
            "stem", "stages", "head") else None
        if kind is None:
            raise CheckpointError(f"tensor {name!r}: vision tower {m.group(1)} is neither a SigLIP "
                                  "(vision_model.*) nor a ConvNeXt (stem/stages/head.*)")
        kinds.setdefault(int(m.group(1)), set()).add(kind)
    if sorted(kinds) != [0, 1]:
        raise CheckpointError(f"Eagle2-9B checkpoint needs vision towers 0 and 1 ({MOE_PREFIX}{{i}}.vision_tower.*), "
                              f"found {sorted(kinds) or 'none'}")
    for i, k in kinds.items():
        if len(k) != 1:
            raise CheckpointError(f"vision tower {i} holds both SigLIP and ConvNeXt tensors")
    order = tuple(next(iter(kinds[i])) for i in (0, 1))
    if sorted(order) != ["convnext", "siglip"]:
        raise CheckpointError(f"Eagle2-9B checkpoint needs one SigLIP and one ConvNeXt tower, found {list(order)}")
    return order


def config_for_tensors(cfg, tensors):
    """``cfg`` with what only the tensors tell: the 9B tower order and the size of the unused ConvNeXt head.

    ``tensors`` maps checkpoint names to tensors or to their shapes (``tensor_shapes``)."""
    has_moe = any(k.startswith(MOE_PREFIX) for k in tensors)
    if not cfg.vision.is_mixture:
        if has_moe:
            raise CheckpointError("checkpoint holds mixture-of-encoders tensors (vision_towers.*) but config.json "
                                  "describes a single SigLIP tower")
        return cfg
    towers = towers_from_names(tensors)
    cn = {**cfg.vision.convnext, "towers": list(towers)}
    head = f"{MOE_PREFIX}{towers.index('convnext')}.vision_tower.head.fc.weight"
    if head in tensors:
        cn["num_classes"] = int(next(iter(getattr(tensors[head], "shape", tensors[head]))))
    return cfg.replace(vision={"convnext": cn})


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a checkpoint directory, from the safetensors headers only."""
    from safetensors import safe_open

    path = Path(path)
    if (path / WEIGHTS_NAME).exists():
        files = [path / WEIGHTS_NAME]
    elif (path / INDEX_NAME).exists():
        files = [path / f for f in sorted(set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values()))]
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}")
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            out.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})  # noqa: SIM118 (not a dict)
    return out


def _moe_hf_to_ours(name: str, vt: str, towers: tuple[str, ...]) -> str:
    m = _MOE_NAME.fullmatch(name)
    idx, rest = int(m.group(1)), m.group(2)
    if idx >= len(towers):
        raise CheckpointError(f"unexpected tensor {name!r}: the model has {len(towers)} vision towers")
    if towers[idx] == "siglip":
        if not rest.startswith("vision_model."):
            raise CheckpointError(f"unexpected tensor {name!r}: vision tower {idx} is the SigLIP tower")
        return "vision.tower." + vt + rest[len("vision_model."):]
    from nemo_eagle.modeling.convnext import timm_to_ours

    ours = timm_to_ours(rest)
    if ours is None:
        raise CheckpointError(f"unexpected tensor {name!r}: not a ConvNeXt tensor of vision tower {idx}")
    return CONVNEXT + ours


def hf_to_ours(name: str, vt: str) -> str | None:
    """Our parameter name for an HF checkpoint name; None for ignored names; raises for unknown ones."""
    towers = getattr(vt, "towers", None)
    if towers is not None:
        if name.startswith(MOE_PREFIX):
            return _moe_hf_to_ours(name, vt, towers)
        if name.startswith("vision_model."):
            raise CheckpointError(f"unexpected tensor {name!r}: an Eagle2-9B checkpoint names its vision tensors "
                                  f"{MOE_PREFIX}{{i}}.vision_tower.*")
    elif name.startswith(MOE_PREFIX):
        raise CheckpointError(f"unexpected tensor {name!r}: a mixture-of-encoders tensor, but the model has a "
                              "single SigLIP tower")
    if any(p.fullmatch(name) for p in IGNORED):
        return None
    for hf, ours in KEY_TABLE:
        if name.startswith(hf):
            return ours.replace("{vt}", vt) + name[len(hf):]
    raise CheckpointError(f"unexpected tensor {name!r} in checkpoint (not part of an Eagle2 model)")


def ours_to_hf(name: str, vt: str) -> str:
    """The HF checkpoint name of one of our parameter names (inverse of ``hf_to_ours``)."""
    towers = getattr(vt, "towers", None)
    if towers is not None:
        if name.startswith(CONVNEXT):
            from nemo_eagle.modeling.convnext import ours_to_timm

            return f"{MOE_PREFIX}{towers.index('convnext')}.vision_tower.{ours_to_timm(name[len(CONVNEXT):])}"
        siglip = "vision.tower." + vt
        if name.startswith(siglip):
            return f"{MOE_PREFIX}{towers.index('siglip')}.vision_tower.vision_model.{name[len(siglip):]}"
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
    vt = vision_prefix(own, towers_from_names(hf_tensors) if any(k.startswith(CONVNEXT) for k in own) else None)
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
    cfg = getattr(model, "config", None)
    vt = vision_prefix(own, cfg.vision.convnext.get("towers") if cfg is not None and cfg.vision.is_mixture else None)
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
    (out_dir / INDEX_NAME).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
