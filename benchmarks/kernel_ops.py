"""Kernel benchmarks; every ratio is against a baseline measured in the same run on the same machine.

GPU (default when CUDA is available), about 30-60 s:
  * the card's measured peaks: a large device-to-device copy (GB/s) and a large bf16 matmul (TFLOP/s);
  * ``tile_images`` on a 1920x1080 and a 4000x3000 image at max 12 tiles: kernel time, achieved bandwidth and
    its fraction of the measured copy peak, speed-up over the torch reference on the CPU (what the processor
    runs without the kernel) and over torch's float antialiased resize on the GPU (approximate: not bit-exact);
  * ``project_tokens`` at Eagle2-2B shapes (13 tiles x 1024 patches x 1152 -> 1536, bf16): forward and
    forward+backward time, TFLOP/s and its fraction of the measured matmul peak, speed-up over the torch
    reference on the same GPU.
CPU (``--cpu``, or no GPU): the torch reference tiling (the processor's path) against a per-tile PIL pipeline
(PIL bicubic resize, crop, per-tile ToTensor + Normalize), in images/s, and their ratio.

    python benchmarks/kernel_ops.py            # GPU if present
    python benchmarks/kernel_ops.py --cpu      # CPU preprocessing comparison
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_eagle.ops import reference  # noqa: E402
from nemo_eagle.tiling import plan_tiles  # noqa: E402

TILE = 448
IMAGE_SIZES = [(1920, 1080), (4000, 3000)]
EAGLE2_2B = dict(tiles=13, patches=1024, channels=1152, hidden=1536)


def synthetic_image(width: int, height: int, seed: int = 0) -> torch.Tensor:
    """uint8 (3, H, W): smooth gradients and edges plus noise, so no resize path is trivially cheap."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    planes = [255 * x * y, 255 * (0.5 + 0.5 * torch.sin(40 * x + 25 * y)), 255.0 * ((x * 17).floor() % 2)]
    img = torch.stack([p.expand(height, width) for p in planes])
    img = img + torch.randint(-20, 21, img.shape, generator=g)
    return img.clamp(0, 255).to(torch.uint8)


def cpu_time(fn, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------------- GPU
def gpu_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def measure_peaks() -> tuple[float, float]:
    """(copy bandwidth GB/s counting read + write, bf16 matmul TFLOP/s) of this card, measured now."""
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")  # 512 MiB: far beyond L2
    dst = torch.empty_like(src)
    ms = gpu_ms(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() / (ms * 1e-3) / 1e9
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = gpu_ms(lambda: a @ b)
    tflops = 2 * n**3 / (ms * 1e-3) / 1e12
    src = dst = a = b = None  # release the buffers before emptying the cache
    torch.cuda.empty_cache()
    return bandwidth, tflops


def tile_bytes(width: int, height: int, grid: tuple[int, int], num_tiles: int) -> int:
    """Minimum DRAM traffic of the two-pass resize: the image read by both horizontal passes, the uint8 buffers
    written and read once, the float32 tiles written."""
    cols, rows = grid
    image = 3 * width * height
    buffers = 3 * height * (cols * TILE + (TILE if num_tiles > cols * rows else 0))
    return 2 * image + 2 * buffers + num_tiles * 3 * TILE * TILE * 4


def torch_gpu_float_tiles(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The closest torch-on-GPU baseline: float antialiased bicubic (torch has no uint8 antialias on CUDA)."""
    import torch.nn.functional as F

    cols, rows = grid
    x = image[None].float()
    big = F.interpolate(x, size=(rows * TILE, cols * TILE), mode="bicubic", antialias=True, align_corners=False)
    thumb = F.interpolate(x, size=(TILE, TILE), mode="bicubic", antialias=True, align_corners=False)
    big = big.round_().clamp_(0, 255)[0].view(3, rows, TILE, cols, TILE).permute(1, 3, 0, 2, 4)
    tiles = torch.cat([big.reshape(rows * cols, 3, TILE, TILE), thumb.round_().clamp_(0, 255)])
    return (tiles - 127.5) / 127.5


def bench_tiles_gpu(peak_gbs: float) -> None:
    from nemo_eagle.ops import get_op

    tile = get_op("tile_images", "triton")
    for width, height in IMAGE_SIZES:
        plan = plan_tiles(width, height, max_tiles=12)
        image = synthetic_image(width, height)
        gpu_image = image.cuda()
        exact = torch.equal(tile(gpu_image, plan.grid).cpu(), reference.tile_images(image, plan.grid))
        ms = gpu_ms(lambda: tile(gpu_image, plan.grid))
        gbs = tile_bytes(width, height, plan.grid, plan.num_tiles) / (ms * 1e-3) / 1e9
        cpu_ms = 1e3 * cpu_time(lambda: reference.tile_images(image, plan.grid), repeat=3)
        try:
            float_ms = gpu_ms(lambda: torch_gpu_float_tiles(gpu_image, plan.grid))
            float_note = f"{float_ms:8.3f} ms torch GPU float resize (x{float_ms / ms:.1f})"
        except RuntimeError as e:  # an older torch without antialias on CUDA
            float_note = f"torch GPU float resize unavailable ({e})"
        pinned = image.pin_memory()
        h2d_ms = gpu_ms(lambda: pinned.to("cuda", non_blocking=True))
        print(f"tile_images {width}x{height} grid {plan.grid[0]}x{plan.grid[1]} ({plan.num_tiles} tiles): "
              f"{ms:8.3f} ms  {gbs:7.1f} GB/s = {gbs / peak_gbs:5.1%} of copy peak  exact={exact}")
        print(f"    vs {cpu_ms:8.2f} ms torch reference on CPU (x{cpu_ms / ms:.0f});  {float_note};  "
              f"uint8 upload {h2d_ms:.3f} ms (not included)")


def bench_projector_gpu(peak_tflops: float) -> None:
    from nemo_eagle.ops import get_op

    s = EAGLE2_2B
    k = 4 * s["channels"]
    h = s["hidden"]
    m = s["tiles"] * s["patches"] // 4
    dt = torch.bfloat16

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda") * scale).to(dt)

    args = [rand(s["tiles"], s["patches"], s["channels"]), 1 + rand(k, scale=0.1), rand(k, scale=0.1),
            rand(h, k, scale=k**-0.5), rand(h, scale=0.1), rand(h, h, scale=h**-0.5), rand(h, scale=0.1)]
    fast = get_op("project_tokens", "triton")
    flops = 2 * m * k * h + 2 * m * h * h
    err = (fast(*args).float() - reference.project_tokens(*args).float()).abs().max().item()
    with torch.no_grad():
        ms = gpu_ms(lambda: fast(*args))
        ref_ms = gpu_ms(lambda: reference.project_tokens(*args))
    tf = flops / (ms * 1e-3) / 1e12
    print(f"project_tokens fwd {s['tiles']}x{s['patches']}x{s['channels']} -> {h} bf16 (M={m}, K={k}): "
          f"{ms:7.3f} ms  {tf:6.1f} TFLOP/s = {tf / peak_tflops:5.1%} of matmul peak  "
          f"vs torch {ref_ms:7.3f} ms (x{ref_ms / ms:.2f})  max|diff| {err:.3g}")

    params = [a.clone().requires_grad_(True) for a in args]
    grad = torch.randn(s["tiles"], s["patches"] // 4, h, device="cuda", dtype=dt)

    def step(op):
        for p in params:
            p.grad = None
        op(*params).backward(grad)

    ms = gpu_ms(lambda: step(fast))
    ref_ms = gpu_ms(lambda: step(reference.project_tokens))
    tf = 3 * flops / (ms * 1e-3) / 1e12
    print(f"project_tokens fwd+bwd: {ms:7.3f} ms  {tf:6.1f} TFLOP/s = {tf / peak_tflops:5.1%} of matmul peak  "
          f"vs torch {ref_ms:7.3f} ms (x{ref_ms / ms:.2f})")


def run_gpu() -> None:
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name()
    print(f"device: {name}; torch {torch.__version__}")
    bandwidth, tflops = measure_peaks()
    print(f"measured peaks: copy {bandwidth:.0f} GB/s (read+write), bf16 matmul {tflops:.0f} TFLOP/s")
    bench_tiles_gpu(bandwidth)
    bench_projector_gpu(tflops)
    print(f"total {time.perf_counter() - t0:.1f} s")


# ----------------------------------------------------------------------------------------------------- CPU
def pil_per_tile(image, grid: tuple[int, int], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """The legacy InternVL pipeline: PIL bicubic resize, crop, thumbnail, then ToTensor + Normalize per tile."""
    from PIL import Image

    cols, rows = grid
    resized = image.resize((cols * TILE, rows * TILE), Image.BICUBIC)
    boxes = [(c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE) for r in range(rows) for c in range(cols)]
    crops = [resized.crop(box) for box in boxes]
    if cols * rows != 1:
        crops.append(image.resize((TILE, TILE), Image.BICUBIC))
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    per_tile = [(np.asarray(t, np.float32).transpose(2, 0, 1) / 255.0 - m) / s for t in crops]  # (3, S, S) each
    return torch.stack([torch.from_numpy(t) for t in per_tile])


def run_cpu(sizes: list[tuple[int, int]], repeat: int) -> None:
    from PIL import Image

    print(f"CPU preprocessing: torch {torch.__version__}, {torch.get_num_threads()} torch threads (PIL: 1 thread)")
    for width, height in sizes:
        plan = plan_tiles(width, height, max_tiles=12)
        image = synthetic_image(width, height)
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())

        def torch_path():  # what the processor does after decoding: PIL -> uint8 tensor -> tiles
            t = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
            return reference.tile_images(t, plan.grid)

        ours = cpu_time(torch_path, repeat)
        legacy = cpu_time(lambda: pil_per_tile(pil, plan.grid), repeat)
        levels = (torch_path() - pil_per_tile(pil, plan.grid)).abs().max().item() * 127.5
        print(f"{width}x{height} grid {plan.grid[0]}x{plan.grid[1]} ({plan.num_tiles} tiles): torch reference "
              f"{1 / ours:7.2f} images/s, PIL per-tile {1 / legacy:7.2f} images/s, ratio x{legacy / ours:.2f} "
              f"(max difference {levels:.1f} uint8 levels)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run the CPU preprocessing comparison even with a GPU")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in IMAGE_SIZES), help="CPU mode: WxH,WxH,...")
    p.add_argument("--repeat", type=int, default=5, help="CPU mode: timed calls per measurement (median)")
    args = p.parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        try:
            sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
        except ValueError:
            p.error(f"--sizes must look like 1920x1080,4000x3000, got {args.sizes!r}")
        run_cpu(sizes, args.repeat)
    else:
        run_gpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
