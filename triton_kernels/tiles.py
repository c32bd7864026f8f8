"""``tile_images`` on the GPU: antialiased bicubic resize + crop into tiles + thumbnail + normalise.

The resize reproduces torch's CPU uint8 path of ``F.interpolate(mode="bicubic", antialias=True)`` bit for bit:
Keys cubic (a = -0.5) widened by the downscale factor, weights normalised per output pixel in float64 and
rounded to int16 fixed point, a horizontal pass then a vertical pass, each rounded and clamped to uint8.
Two launches per resize target: the horizontal pass writes a uint8 buffer (rows x resized width); the vertical
pass reads it, cuts the tiles (or the thumbnail), maps each uint8 level through a 256-entry table built by the
reference ``normalize`` (so normalisation is exact) and writes float32 tiles in their final layout.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from nemo_eagle.ops import reference
from nemo_eagle.ops.registry import register
from triton_kernels._runtime import can_launch, check_launch

KEYS_A = -0.5  # Keys' cubic constant torch (and PIL) use for antialiased bicubic
MAX_PRECISION = 22  # torch's upper bound on the fixed-point precision of the weights


# ------------------------------------------------------------------------------------------ weight tables
def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel, written in the operation order torch evaluates it (float64)."""
    a = KEYS_A
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=128)
def axis_table(in_size: int, out_size: int) -> tuple[np.ndarray, int]:
    """Resampling table for one axis: int32 (out_size, 2 + taps) rows of [first, count, w_0 .. w_taps-1].

    Returns the table and the fixed-point precision ``p`` (weights are ``round(w * 2**p)``). Identical sizes give
    the identity (one tap of weight 2**1 at precision 1), which is how torch skips an axis that keeps its size.
    """
    if in_size == out_size:
        table = np.zeros((out_size, 3), np.int32)
        table[:, 0] = np.arange(out_size)
        table[:, 1] = 1
        table[:, 2] = 2
        return table, 1
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0  # bicubic has radius 2, widened when downscaling
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C++ casts truncate toward 0
    count = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    j = np.arange(taps)
    valid = j[None, :] < count[:, None]  # (out, taps)
    w = _keys_cubic(((j[None, :] + first[:, None]).astype(np.float64) - center[:, None] + 0.5) * invscale)
    w = np.where(valid, w, 0.0)
    total = np.zeros(out_size)
    for k in range(taps):  # sequential sum, as the reference accumulates
        total = total + w[:, k]
    nonzero = total != 0.0
    w = np.where(nonzero[:, None], w / np.where(nonzero, total, 1.0)[:, None], w)
    w_max = float(w[nonzero].max()) if nonzero.any() else 0.0
    precision = 0
    while precision < MAX_PRECISION and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * (1 << precision)
    w_int = np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5))  # round half away from zero
    table = np.concatenate([first[:, None], count[:, None], w_int], axis=1).astype(np.int32)
    return table, precision


_DEVICE_TABLES: dict[tuple, tuple[Tensor, int, int]] = {}


def _device_table(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, int, int]:
    """(table on ``device``, precision, taps); cached because serving sees the same sizes again and again."""
    key = (in_size, out_size, str(device))
    if key not in _DEVICE_TABLES:
        if len(_DEVICE_TABLES) > 256:
            _DEVICE_TABLES.clear()
        table, precision = axis_table(in_size, out_size)
        _DEVICE_TABLES[key] = (torch.from_numpy(table).to(device), precision, table.shape[1] - 2)
    return _DEVICE_TABLES[key]


_LUTS: dict[tuple, Tensor] = {}


def _level_lut(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> Tensor:
    """float32 (3 * 256,): the reference normalisation of every uint8 level, per channel."""
    key = (tuple(mean), tuple(std), str(device))
    if key not in _LUTS:
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256)
        _LUTS[key] = reference.normalize(levels, tuple(mean), tuple(std)).reshape(-1).contiguous().to(device)
    return _LUTS[key]


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _resize_rows_kernel(
    src_ptr, dst_ptr, table_ptr,
    num_rows, height, out_width,
    stride_c, stride_h, stride_w,
    taps, table_stride, precision,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Horizontal pass: dst[c, y, x] (uint8, contiguous) from src[c, y, first[x] : first[x] + count[x]]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened (channel, y)
    xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < num_rows
    x_ok = xs < out_width
    chan = rows // height
    row_base = chan.to(tl.int64) * stride_c + (rows - chan * height).to(tl.int64) * stride_h
    first = tl.load(table_ptr + xs * table_stride, mask=x_ok, other=0)
    count = tl.load(table_ptr + xs * table_stride + 1, mask=x_ok, other=0)
    acc = tl.zeros((BLOCK_R, BLOCK_W), tl.int32) + (1 << (precision - 1))
    for j in range(taps):
        w = tl.load(table_ptr + xs * table_stride + 2 + j, mask=x_ok & (j < count), other=0)
        col = (first + j).to(tl.int64) * stride_w
        ok = row_ok[:, None] & (x_ok & (j < count))[None, :]
        v = tl.load(src_ptr + row_base[:, None] + col[None, :], mask=ok, other=0)
        acc += v.to(tl.int32) * w[None, :]
    out = tl.minimum(tl.maximum(acc >> precision, 0), 255).to(tl.uint8)
    dst = dst_ptr + rows.to(tl.int64)[:, None] * out_width + xs[None, :]
    tl.store(dst, out, mask=row_ok[:, None] & x_ok[None, :])


@triton.jit
def _resize_cols_to_tiles_kernel(
    src_ptr, out_ptr, table_ptr, lut_ptr,
    cols, tile_size, first_tile,
    stride_c, stride_h, stride_w,
    taps, table_stride, precision,
    BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
):
    """Vertical pass + crop + normalise: out[first_tile + t, c] = lut[c, resize(src)[c, tile t's window]]."""
    pid = tl.program_id(0)  # (tile, channel)
    tile = pid // 3
    chan = pid - tile * 3
    tile_row = tile // cols
    tile_col = tile - tile_row * cols
    oy = tl.program_id(1) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    ox = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
    y_ok = oy < tile_size
    x_ok = ox < tile_size
    ys = tile_row * tile_size + oy  # rows of the resized image
    xs = tile_col * tile_size + ox
    first = tl.load(table_ptr + ys * table_stride, mask=y_ok, other=0)
    count = tl.load(table_ptr + ys * table_stride + 1, mask=y_ok, other=0)
    base = src_ptr + chan.to(tl.int64) * stride_c + xs.to(tl.int64)[None, :] * stride_w
    acc = tl.zeros((BLOCK_Y, BLOCK_X), tl.int32) + (1 << (precision - 1))
    for j in range(taps):
        tap_ok = y_ok & (j < count)
        w = tl.load(table_ptr + ys * table_stride + 2 + j, mask=tap_ok, other=0)
        v = tl.load(base + (first + j).to(tl.int64)[:, None] * stride_h, mask=tap_ok[:, None] & x_ok[None, :], other=0)
        acc += v.to(tl.int32) * w[:, None]
    level = tl.minimum(tl.maximum(acc >> precision, 0), 255)
    value = tl.load(lut_ptr + chan * 256 + level)
    plane = (first_tile + tile).to(tl.int64) * 3 + chan
    dst = out_ptr + plane * tile_size * tile_size + oy[:, None] * tile_size + ox[None, :]
    tl.store(dst, value, mask=y_ok[:, None] & x_ok[None, :])


# ------------------------------------------------------------------------------------------------ launch
def _blocks(interpreted: bool) -> tuple[int, int, int, int]:
    """(rows, cols) of the horizontal pass's blocks, then (rows, cols) of the vertical pass's blocks."""
    if interpreted:  # the interpreter runs each program as numpy: fewer, larger programs are much faster there
        return 64, 128, 32, 32
    return 8, 64, 16, 64  # 64 divides 448 and 512, the real tile sizes: no masked-off lanes


def _resize_into_tiles(
    image: Tensor, out: Tensor, lut: Tensor, rows: int, cols: int, tile_size: int, first_tile: int
) -> None:
    """Resize ``image`` (3, H, W) to (rows*S, cols*S) and write its rows*cols tiles at ``out[first_tile:]``."""
    _, height, width = image.shape
    out_h, out_w = rows * tile_size, cols * tile_size
    interpreted = image.device.type == "cpu"
    block_r, block_w, block_y, block_x = _blocks(interpreted)
    if out_w != width:
        h_table, h_prec, h_taps = _device_table(width, out_w, image.device)
        buf = torch.empty((3, height, out_w), dtype=torch.uint8, device=image.device)
        grid = (triton.cdiv(3 * height, block_r), triton.cdiv(out_w, block_w))
        _resize_rows_kernel[grid](
            image, buf, h_table, 3 * height, height, out_w, *image.stride(),
            h_taps, h_table.shape[1], h_prec, BLOCK_R=block_r, BLOCK_W=block_w,
        )
    else:  # torch skips a pass whose size does not change; read the image (any strides) directly
        buf = image
    v_table, v_prec, v_taps = _device_table(height, out_h, image.device)
    grid = (rows * cols * 3, triton.cdiv(tile_size, block_y), triton.cdiv(tile_size, block_x))
    _resize_cols_to_tiles_kernel[grid](
        buf, out, v_table, lut, cols, tile_size, first_tile, *buf.stride(),
        v_taps, v_table.shape[1], v_prec, BLOCK_Y=block_y, BLOCK_X=block_x,
    )


def _num_tiles(cols: int, rows: int, use_thumbnail: bool) -> int:
    return cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0)


@torch.library.custom_op("nemo_eagle::tile_images", mutates_args=())
def tile_images_op(
    image: Tensor, cols: int, rows: int, tile_size: int, use_thumbnail: bool, mean: list[float], std: list[float]
) -> Tensor:
    out = torch.empty((_num_tiles(cols, rows, use_thumbnail), 3, tile_size, tile_size), dtype=torch.float32,
                      device=image.device)
    lut = _level_lut(tuple(mean), tuple(std), image.device)
    _resize_into_tiles(image, out, lut, rows, cols, tile_size, first_tile=0)
    if use_thumbnail and rows * cols != 1:
        _resize_into_tiles(image, out, lut, 1, 1, tile_size, first_tile=rows * cols)
    return out


@tile_images_op.register_fake
def _(image, cols, rows, tile_size, use_thumbnail, mean, std):
    return image.new_empty((_num_tiles(cols, rows, use_thumbnail), 3, tile_size, tile_size), dtype=torch.float32)


def _supports(image, grid, tile_size=448, use_thumbnail=True, mean=None, std=None) -> bool:
    return (
        isinstance(image, Tensor) and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
        and can_launch(image)
    )


@register("tile_images", "triton", supports=_supports)
def tile_images(
    image: Tensor,
    grid: tuple[int, int],
    tile_size: int = 448,
    use_thumbnail: bool = True,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> Tensor:
    """uint8 (3, H, W) -> float32 (num_tiles, 3, S, S); same contract and numbers as ``reference.tile_images``."""
    if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"expected a uint8 (3, H, W) image, got {shape} {getattr(image, 'dtype', '')}")
    cols, rows = (int(g) for g in grid)
    if cols < 1 or rows < 1 or tile_size < 1:
        raise ValueError(f"grid and tile_size must be positive, got grid={tuple(grid)}, tile_size={tile_size}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image has no pixels ({image.shape[2]}x{image.shape[1]})")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    check_launch("tile_images", image)
    return tile_images_op(image, cols, rows, int(tile_size), bool(use_thumbnail),
                          [float(m) for m in mean], [float(s) for s in std])
