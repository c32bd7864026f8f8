"""Pure-torch reference ops: the spec every fast backend is tested against.

``pixel_shuffle`` follows InternVL's ps_version v2 channel order (EAGLE2_SPEC.md, forward pass step 2);
``tile_images`` is the processor's resize + crop + thumbnail + normalise on one uint8 image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nemo_eagle.ops.registry import register


def pixel_shuffle(x: Tensor, factor: int) -> Tensor:
    """(N, H*W, C) -> (N, H*W/factor**2, C*factor**2); token a*(W/f)+b holds [x(fa+r, fb+c) for r, c]."""
    n, hw, c = x.shape
    h = w = math.isqrt(hw)
    if h * w != hw or h % factor:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {factor}, got {hw} patches")
    x = x.view(n, h // factor, factor, w // factor, factor, c).permute(0, 1, 3, 2, 4, 5)  # (N, H/f, W/f, f, f, C)
    return x.reshape(n, (h // factor) * (w // factor), factor * factor * c)


@register("project_tokens", "torch")
def project_tokens(
    features: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    shuffle_factor: int = 2,
    eps: float = 1e-5,
) -> Tensor:
    """Vision features (N, P, C) -> pixel shuffle -> LayerNorm -> Linear -> GELU(erf) -> Linear -> (N, P/f^2, H)."""
    x = pixel_shuffle(features, shuffle_factor)
    x = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
    x = F.gelu(F.linear(x, w1, b1))
    return F.linear(x, w2, b2)


def resize_uint8(image: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bicubic resize of a uint8 (3, H, W) image, in uint8 as the reference does; no-op on same size."""
    if image.shape[-2:] == (height, width):
        return image
    out = F.interpolate(image.unsqueeze(0), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out.squeeze(0)


def tile_images_uint8(image: Tensor, grid: tuple[int, int], tile_size: int = 448, use_thumbnail: bool = True) -> Tensor:
    """uint8 (3, H, W) -> uint8 (num_tiles, 3, S, S): tiles row-major, then the thumbnail of the original, last."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {tuple(image.shape)} {image.dtype}")
    cols, rows = grid
    s = tile_size
    resized = resize_uint8(image, rows * s, cols * s)
    tiles = (
        resized.reshape(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, s, s)
    )  # (rows*cols, 3, S, S)
    if use_thumbnail and rows * cols != 1:
        tiles = torch.cat([tiles, resize_uint8(image, s, s).unsqueeze(0)])
    return tiles.contiguous()


def normalize(
    tiles: Tensor, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)
) -> Tensor:
    """uint8 -> float32 ``(x - 255*mean) / (255*std)``; for SigLIP's 0.5/0.5 this is exactly (x - 127.5) / 127.5."""
    if len(set(mean)) == 1 and len(set(std)) == 1:  # scalar path: same bits, far faster than broadcasting
        return (tiles.float() - 255.0 * mean[0]) / (255.0 * std[0])
    m = torch.tensor([255.0 * v for v in mean], dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor([255.0 * v for v in std], dtype=torch.float32).view(-1, 1, 1)
    return (tiles.float() - m) / s


@register("tile_images", "torch")
def tile_images(
    image: Tensor,
    grid: tuple[int, int],
    tile_size: int = 448,
    use_thumbnail: bool = True,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> Tensor:
    """uint8 (3, H, W) -> float32 (num_tiles, 3, S, S), normalised as the processor does."""
    return normalize(tile_images_uint8(image, grid, tile_size, use_thumbnail), mean, std)


@register("merge_embeddings", "torch")
def merge_embeddings(inputs_embeds: Tensor, input_ids: Tensor, image_embeds: Tensor, image_token_id: int) -> Tensor:
    """Write ``image_embeds`` (T, D) in order into the positions of ``input_ids`` equal to ``image_token_id``."""
    mask = input_ids == image_token_id
    n = int(mask.sum())
    if n != image_embeds.shape[0]:
        raise ValueError(
            f"image features and image tokens do not match: {n} <IMG_CONTEXT> tokens in input_ids but "
            f"{image_embeds.shape[0]} image embeddings (check num_tiles / the prompt's image placeholders)"
        )
    out = inputs_embeds.clone()
    out[mask] = image_embeds.to(out.dtype)
    return out
