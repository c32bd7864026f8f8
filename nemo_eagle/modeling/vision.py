"""Vision towers: transformers' SigLIP, and the Eagle2-9B mixture of SigLIP + ConvNeXt (channel concatenation).

``select_layer == -1`` returns the output after SigLIP's ``post_layernorm``; any other k returns
``hidden_states[k]`` (before post_layernorm), as NVIDIA's code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ConvNextConfig, ConvNextModel, SiglipVisionConfig, SiglipVisionModel

from nemo_eagle.config import VisionConfig, vision_hf_dict


SUPPORTED_TOWERS = ("siglip_vision_model", "eagle_moe_siglip_convnext")


def siglip_config(cfg: VisionConfig, attn_implementation: str) -> SiglipVisionConfig:
    d = vision_hf_dict(cfg)
    d.pop("model_type", None)
    d.pop("convnext_config", None)
    d["vision_use_head"] = False  # checkpoints may carry head.*; EAGLE2 never uses it
    c = SiglipVisionConfig(**d)
    c._attn_implementation = attn_implementation
    return c


class VisionEncoder(nn.Module):
    """pixel_values (N, 3, S, S) -> features (N, P, C), P = (S / patch)**2, no CLS token."""

    def __init__(self, cfg: VisionConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        if cfg.model_type not in SUPPORTED_TOWERS:
            raise NotImplementedError(f"vision tower {cfg.model_type!r} is not supported; supported: {SUPPORTED_TOWERS}")
        self.select_layer = cfg.select_layer
        self.tower = SiglipVisionModel(siglip_config(cfg, attn_implementation))
        self.convnext = None
        if cfg.convnext:
            cn = dict(cfg.convnext)
            self.convnext_size = int(cn.pop("image_size", 512))
            self.convnext = ConvNextModel(ConvNextConfig(**cn))
        self.grid = cfg.grid_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.to(self.dtype)
        if self.select_layer == -1:
            feats = self.tower(pixel_values=pixel_values).last_hidden_state
        else:
            feats = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.select_layer]
        if self.convnext is None:
            return feats
        # Mixture of encoders: ConvNeXt at its own resolution, its features resized to the SigLIP patch grid,
        # channel concat. NVIDIA's tower resizes both ways with bilinear, align_corners=True, in float32.
        x = F.interpolate(pixel_values.float(), size=(self.convnext_size,) * 2, mode="bilinear", align_corners=True)
        cn = self.convnext(pixel_values=x.to(pixel_values.dtype)).last_hidden_state  # (N, C2, h, w)
        if cn.shape[-1] != self.grid:
            cn = F.interpolate(cn.float(), size=(self.grid, self.grid), mode="bilinear", align_corners=True)
        cn = cn.flatten(2).transpose(1, 2)  # (N, C2, g, g) -> (N, g*g, C2)
        return torch.cat([feats, cn.to(feats.dtype)], dim=-1)
