"""The ConvNeXt branch of the Eagle2-9B mixture-of-encoders tower, built on transformers' ``ConvNextModel``.

NVIDIA's tower is timm's ``convnext_xxlarge`` (CLIP-LAION weights). timm imports torchvision, which does not
import next to a CPU torch, so the branch is transformers' ``ConvNextModel`` with the same arithmetic; two
settings differ from transformers' defaults and are set here: the stem, downsampling and block LayerNorms
use eps 1e-5 (transformers hard-codes 1e-6), and the input is the SigLIP-normalised 448 tile resized to the
branch's size (bilinear, ``align_corners=True``) and moved to CLIP normalisation as ``x * a + b``.

The checkpoint keeps timm's names; ``TIMM_TO_HF`` maps them (``convert.hf`` applies it). The classification
head (``head.norm``, ``head.fc``) is in the checkpoint and unused; it is kept so a save writes it back.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ConvNextConfig, ConvNextModel

from nemo_eagle.config import CLIP_MEAN, CLIP_STD

# (timm name pattern, name inside ConvNeXtBranch); group references carry stage / block indices.
TIMM_TO_HF: tuple[tuple[str, str], ...] = (
    (r"stem\.0\.(weight|bias)", r"model.embeddings.patch_embeddings.\1"),
    (r"stem\.1\.(weight|bias)", r"model.embeddings.layernorm.\1"),
    (r"stages\.(\d+)\.downsample\.([01])\.(weight|bias)", r"model.encoder.stages.\1.downsampling_layer.\2.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)", r"model.encoder.stages.\1.layers.\2.dwconv.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)", r"model.encoder.stages.\1.layers.\2.layernorm.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"model.encoder.stages.\1.layers.\2.pwconv1.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"model.encoder.stages.\1.layers.\2.pwconv2.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.(?:weight|gamma)", r"model.encoder.stages.\1.layers.\2.layer_scale_parameter"),
    (r"head\.norm\.(weight|bias)", r"model.layernorm.\1"),
    (r"head\.fc\.(weight|bias)", r"head_fc.\1"),
)
# The inverse, written as the checkpoint names it (timm >= 0.9 saves the layer scale as ``weight``).
HF_TO_TIMM: tuple[tuple[str, str], ...] = (
    (r"model\.embeddings\.patch_embeddings\.(weight|bias)", r"stem.0.\1"),
    (r"model\.embeddings\.layernorm\.(weight|bias)", r"stem.1.\1"),
    (r"model\.encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.(weight|bias)", r"stages.\1.downsample.\2.\3"),
    (r"model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.(weight|bias)", r"stages.\1.blocks.\2.conv_dw.\3"),
    (r"model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.(weight|bias)", r"stages.\1.blocks.\2.norm.\3"),
    (r"model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.(weight|bias)", r"stages.\1.blocks.\2.mlp.fc1.\3"),
    (r"model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.(weight|bias)", r"stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter", r"stages.\1.blocks.\2.weight"),
    (r"model\.layernorm\.(weight|bias)", r"head.norm.\1"),
    (r"head_fc\.(weight|bias)", r"head.fc.\1"),
)
_FWD = tuple((re.compile(p), r) for p, r in TIMM_TO_HF)
_BWD = tuple((re.compile(p), r) for p, r in HF_TO_TIMM)


def timm_to_ours(name: str) -> str | None:
    """Our name (inside the branch) of a timm ConvNeXt tensor name; None if it is not one."""
    for pat, rep in _FWD:
        if pat.fullmatch(name):
            return pat.sub(rep, name)
    return None


def ours_to_timm(name: str) -> str:
    for pat, rep in _BWD:
        if pat.fullmatch(name):
            return pat.sub(rep, name)
    raise KeyError(f"no ConvNeXt checkpoint name for parameter {name!r}")


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
