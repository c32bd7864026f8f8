"""Vision towers: transformers' SigLIP, and the Eagle2-9B mixture of SigLIP + ConvNeXt.

``select_layer == -1`` returns the output after SigLIP's ``post_layernorm``; any other k returns
``hidden_states[k]`` (before post_layernorm), as NVIDIA's code does.

The mixture (``VisionConfig.is_mixture``) follows NVIDIA's 9B code: per 448 tile, SigLIP features are pixel
shuffled to (256, 4*Cs) and the ConvNeXt's last stage (16 x 16 at 512 px) adds Cc channels to each token, so
the tower returns projector inputs (N, 256, 4*Cs + Cc) and the projector does not shuffle again.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from nemo_eagle.config import MOE_TOWER, VisionConfig, siglip_hf_dict
from nemo_eagle.modeling.convnext import ConvNeXtBranch
from nemo_eagle.ops.reference import pixel_shuffle

SUPPORTED_TOWERS = ("siglip_vision_model", MOE_TOWER)


def siglip_config(cfg: VisionConfig, attn_implementation: str, *, use_head: bool = False) -> SiglipVisionConfig:
    d = siglip_hf_dict(cfg)
    d.pop("model_type", None)
    d["vision_use_head"] = use_head
    c = SiglipVisionConfig(**d)
    c._attn_implementation = attn_implementation
    return c


class VisionEncoder(nn.Module):
    """pixel_values (N, 3, S, S) -> features (N, P, C), P = (S / patch)**2, no CLS token.

    With a ConvNeXt branch (Eagle2-9B): (N, P / f**2, f**2 * Cs + Cc), already pixel shuffled.
    """

    def __init__(self, cfg: VisionConfig, attn_implementation: str = "sdpa", shuffle_factor: int = 2):
        super().__init__()
        if cfg.model_type not in SUPPORTED_TOWERS:
            raise NotImplementedError(
                f"vision tower {cfg.model_type!r} is not supported; supported: {SUPPORTED_TOWERS}"
            )
        self.select_layer = cfg.select_layer
        self.shuffle_factor = shuffle_factor
        # The 9B checkpoint carries SigLIP's pooling head; it is built (so a save writes it back) but never run.
        self.tower = SiglipVisionModel(siglip_config(cfg, attn_implementation, use_head=cfg.is_mixture))
        if cfg.is_mixture:
            for m in self.tower.modules():
                if getattr(m, "use_head", False):
                    m.use_head = False
                    m.head.requires_grad_(False)
        self.convnext = ConvNeXtBranch(cfg.convnext) if cfg.is_mixture else None
        self.grid = cfg.grid_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def siglip_features(self, pixel_values: Tensor) -> Tensor:
        """The SigLIP tower's features (N, P, Cs) at ``select_layer``."""
        pixel_values = pixel_values.to(self.dtype)
        if self.select_layer == -1:
            return self.tower(pixel_values=pixel_values).last_hidden_state
        return self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.select_layer]

    def forward(self, pixel_values: Tensor) -> Tensor:
        feats = self.siglip_features(pixel_values)
        if self.convnext is None:
            return feats
        cn = self.convnext(pixel_values)
        shuffled = pixel_shuffle(feats, self.shuffle_factor)
        if cn.shape[1] != shuffled.shape[1]:
            raise ValueError(
                f"ConvNeXt gives {cn.shape[1]} tokens per tile but the shuffled SigLIP grid has "
                f"{shuffled.shape[1]}: convnext image_size / 32 must equal the SigLIP grid / shuffle factor"
            )
        return torch.cat([shuffled, cn.to(shuffled.dtype)], dim=-1)
