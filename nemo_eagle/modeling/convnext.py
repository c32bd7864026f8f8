"""The ConvNeXt branch of the Eagle2-9B mixture-of-encoders tower, built on transformers' ``ConvNextModel``.

NVIDIA's tower is timm's ``convnext_xxlarge`` (CLIP-LAION weights). timm imports torchvision, which does not
import next to a CPU torch, so the branch is transformers' ``ConvNextModel`` with the same arithmetic; two
settings differ from transformers' defaults and are set here: the stem, downsampling and block LayerNorms
use eps 1e-5 (transformers hard-codes 1e-6), and the input is the SigLIP-normalised 448 tile resized to the
branch's size (bilinear, ``align_corners=True``) and moved to CLIP normalisation as ``x * a + b``.

The checkpoint keeps timm's names; ``CONVNEXT_NAMES`` maps them both ways (``convert.hf`` applies it). The
classification head (``head.norm``, ``head.fc``) is in the checkpoint and unused; it is kept so a save writes it
back.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ConvNextConfig, ConvNextModel

from nemo_eagle.config import CLIP_MEAN, CLIP_STD

# (checkpoint name, name inside ConvNeXtBranch), one row per tensor kind, used both ways. Slots: {s} stage,
# {b} block, {d} downsampling layer (0 norm, 1 conv), {p} weight or bias. timm >= 0.9 saves the layer scale as
# ``weight``; older timm called it ``gamma``, which loads too (TIMM_ALIASES) and is written back as ``weight``.
CONVNEXT_NAMES: tuple[tuple[str, str], ...] = (
    ("stem.0.{p}", "model.embeddings.patch_embeddings.{p}"),
    ("stem.1.{p}", "model.embeddings.layernorm.{p}"),
    ("stages.{s}.downsample.{d}.{p}", "model.encoder.stages.{s}.downsampling_layer.{d}.{p}"),
    ("stages.{s}.blocks.{b}.conv_dw.{p}", "model.encoder.stages.{s}.layers.{b}.dwconv.{p}"),
    ("stages.{s}.blocks.{b}.norm.{p}", "model.encoder.stages.{s}.layers.{b}.layernorm.{p}"),
    ("stages.{s}.blocks.{b}.mlp.fc1.{p}", "model.encoder.stages.{s}.layers.{b}.pwconv1.{p}"),
    ("stages.{s}.blocks.{b}.mlp.fc2.{p}", "model.encoder.stages.{s}.layers.{b}.pwconv2.{p}"),
    ("stages.{s}.blocks.{b}.weight", "model.encoder.stages.{s}.layers.{b}.layer_scale_parameter"),
    ("head.norm.{p}", "model.layernorm.{p}"),
    ("head.fc.{p}", "head_fc.{p}"),
)
TIMM_ALIASES = ((re.compile(r"(stages\.\d+\.blocks\.\d+)\.gamma"), r"\1.weight"),)
_SLOTS = {"s": r"\d+", "b": r"\d+", "d": "[01]", "p": "weight|bias"}


def _pattern(template: str) -> re.Pattern:
    """``stages.{s}.downsample.{d}.{p}`` -> a regex whose named groups are the slots."""
    parts = re.split(r"\{(\w)\}", template)  # literal, slot, literal, slot, ...
    return re.compile("".join(re.escape(x) if i % 2 == 0 else f"(?P<{x}>{_SLOTS[x]})" for i, x in enumerate(parts)))


_FWD = tuple((_pattern(timm), ours) for timm, ours in CONVNEXT_NAMES)
_BWD = tuple((_pattern(ours), timm) for timm, ours in CONVNEXT_NAMES)


def _translate(name: str, table: tuple[tuple[re.Pattern, str], ...]) -> str | None:
    for pat, template in table:
        if (m := pat.fullmatch(name)) is not None:
            return template.format(**m.groupdict())
    return None


def timm_to_ours(name: str) -> str | None:
    """Our name (inside the branch) of a timm ConvNeXt tensor name; None if it is not one."""
    for pat, rep in TIMM_ALIASES:
        if pat.fullmatch(name):
            name = pat.sub(rep, name)
    return _translate(name, _FWD)


def ours_to_timm(name: str) -> str:
    if (timm := _translate(name, _BWD)) is None:
        raise KeyError(f"no ConvNeXt checkpoint name for parameter {name!r}")
    return timm


def convnext_config(cn: dict[str, Any]) -> ConvNextConfig:
    depths, dims = list(cn["depths"]), list(cn["hidden_sizes"])
    if len(depths) != len(dims):
        raise ValueError(f"ConvNeXt depths {depths} and hidden_sizes {dims} differ in length")
    return ConvNextConfig(depths=depths, hidden_sizes=dims, num_stages=len(depths), hidden_act="gelu",
                          layer_norm_eps=float(cn.get("layer_norm_eps", 1e-5)), drop_path_rate=0.0)


class ConvNeXtBranch(nn.Module):
    """SigLIP-normalised tiles (N, 3, S, S) -> last-stage ConvNeXt features (N, (size/32)**2, C), row-major."""

    def __init__(self, cn: dict[str, Any]):
        super().__init__()
        self.image_size = int(cn.get("image_size", 512))
        self.model = ConvNextModel(convnext_config(cn))
        eps = float(cn.get("layer_norm_eps", 1e-5))
        for module in self.model.modules():  # transformers hard-codes 1e-6 in the stem/downsample/block norms
            if isinstance(module, nn.LayerNorm):
                module.eps = eps
        self.head_fc = nn.Linear(int(cn["hidden_sizes"][-1]), int(cn.get("num_classes", 1024)))
        for p in [*self.model.layernorm.parameters(), *self.head_fc.parameters()]:
            p.requires_grad_(False)  # the classification head is never used
        mean = torch.tensor(cn.get("image_mean", CLIP_MEAN), dtype=torch.float32)
        std = torch.tensor(cn.get("image_std", CLIP_STD), dtype=torch.float32)
        # SigLIP-normalised y = (x - 0.5) / 0.5 -> CLIP-normalised (x - mean) / std
        #                                          = y * (0.5 / std) + (0.5 - mean) / std.
        # Plain float32 attributes, not buffers: a cast of the module to bf16 must not round them.
        self.clip_scale = (0.5 / std).view(1, 3, 1, 1)
        self.clip_shift = ((0.5 - mean) / std).view(1, 3, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.patch_embeddings.weight.dtype

    def prepare(self, pixel_values: Tensor) -> Tensor:
        """The ConvNeXt's input: resized to its size in float32 (align_corners=True), CLIP-normalised."""
        x = F.interpolate(pixel_values.float(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=True)
        return x * self.clip_scale.to(x.device) + self.clip_shift.to(x.device)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.prepare(pixel_values).to(self.dtype)
        out = self.model.encoder(self.model.embeddings(x)).last_hidden_state  # (N, C, h, w), no pooling head
        return out.flatten(2).transpose(1, 2)
