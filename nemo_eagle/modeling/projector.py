"""The EAGLE2 projector ``mlp1``: pixel shuffle -> LayerNorm -> Linear -> GELU(erf) -> Linear.

The arithmetic lives in the ``project_tokens`` op (``nemo_eagle.ops``); this module owns the parameters and
names the op so ``use_kernels`` can rebind it to a fused kernel.
"""

from __future__ import annotations

from torch import Tensor, nn

from nemo_eagle.config import ProjectorConfig
from nemo_eagle.ops import reference


class Projector(nn.Module):
    op = "project_tokens"

    def __init__(self, in_channels: int, out_features: int, cfg: ProjectorConfig, *, extra_channels: int = 0):
        """``extra_channels`` > 0 (Eagle2-9B): the tower already shuffled and appended that many ConvNeXt channels."""
        super().__init__()
        if cfg.hidden_act != "gelu":
            raise ValueError(f"projector activation {cfg.hidden_act!r} is not supported (EAGLE2 uses exact 'gelu')")
        self.shuffle_factor = 1 if extra_channels else cfg.shuffle_factor
        in_features = in_channels * cfg.shuffle_factor**2 + extra_channels
        self.norm = nn.LayerNorm(in_features, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(in_features, out_features)
        self.fc2 = nn.Linear(out_features, out_features)
        self.impl = reference.project_tokens

    def forward(self, features: Tensor) -> Tensor:
        """(N, P, C) vision features -> (N, P / f**2, H) tokens for the LLM."""
        return self.impl(features, self.norm.weight, self.norm.bias, self.fc1.weight, self.fc1.bias,
                         self.fc2.weight, self.fc2.bias, shuffle_factor=self.shuffle_factor, eps=self.norm.eps)
