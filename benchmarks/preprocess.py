"""Images/s of EagleProcessor's preprocessing against a straightforward per-tile PIL pipeline of the same rule.

Both run here, in one process, on the same images (1, 4 and 13 tiles); the script prints the ratio.
Usage: python benchmarks/preprocess.py [--seconds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from nemo_eagle.config import TilingConfig
from nemo_eagle.data.images import load_image
from nemo_eagle.ops import get_op
from nemo_eagle.tiling import plan_tiles

SIZES = {"1 tile (448x448)": (448, 448), "4 tiles (1344x448)": (1344, 448), "13 tiles (1792x1344)": (1792, 1344)}


def make_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 256)], -1).astype(np.int16)
    noise = rng.integers(-8, 8, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def pil_per_tile(img: Image.Image, cfg: TilingConfig) -> np.ndarray:
    """The naive baseline: PIL bicubic resize, crop tile by tile, per-tile float conversion and normalisation."""
    rgb = img.convert("RGB")
    plan = plan_tiles(rgb.width, rgb.height, min_tiles=cfg.min_tiles, max_tiles=cfg.max_tiles,
                      use_thumbnail=cfg.use_thumbnail, tile_size=cfg.tile_size)
    cols, rows = plan.grid
    s = cfg.tile_size
    resized = rgb.resize((cols * s, rows * s), Image.BICUBIC)
    crops = [
        resized.crop(((k % cols) * s, (k // cols) * s, (k % cols + 1) * s, (k // cols + 1) * s))
        for k in range(cols * rows)
    ]
    if plan.has_thumbnail:
        crops.append(rgb.resize((s, s), Image.BICUBIC))
    tiles = []
    for c in crops:
        a = np.asarray(c, dtype=np.float32) / 255.0
        tiles.append(((a - 0.5) / 0.5).transpose(2, 0, 1))
    return np.stack(tiles)


def ours(img: Image.Image, cfg: TilingConfig, tile_op) -> torch.Tensor:
    t = load_image(img)
    plan = plan_tiles(int(t.shape[-1]), int(t.shape[-2]), min_tiles=cfg.min_tiles, max_tiles=cfg.max_tiles,
                      use_thumbnail=cfg.use_thumbnail, tile_size=cfg.tile_size)
    return tile_op(t, plan.grid, cfg.tile_size, cfg.use_thumbnail, cfg.image_mean, cfg.image_std)


def rate(fn, seconds: float) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TilingConfig()
    tile_op = get_op("tile_images", args.backend)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tile_images backend={args.backend}")
    print(f"{'image':<22}{'tiles':>6}{'ours img/s':>12}{'PIL img/s':>12}{'ratio':>8}")
    for name, (w, h) in SIZES.items():
        img = make_image(w, h)
        n = ours(img, cfg, tile_op).shape[0]
        assert pil_per_tile(img, cfg).shape[0] == n
        a, b = rate(lambda: ours(img, cfg, tile_op), args.seconds), rate(lambda: pil_per_tile(img, cfg), args.seconds)
        print(f"{name:<22}{n:>6}{a:>12.1f}{b:>12.1f}{a / b:>7.2f}x")


if __name__ == "__main__":
    main()
