"""GPU tier: the compiled Triton kernels against the torch reference on the same GPU (bf16 / fp16 / fp32).

Skipped on CPU machines (conftest's ``gpu`` marker) and when the kernels were imported in interpreter mode.
Run on a GPU with ``pytest tests/kernels/test_kernels_gpu.py``; ``benchmarks/kernel_ops.py`` times the same ops.
"""

from __future__ import annotations

import pytest
import torch

from nemo_eagle.ops import get_op, reference
from nemo_eagle.tiling import plan_tiles

pytestmark = pytest.mark.gpu

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=5e-3, rtol=5e-3),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
GRAD_REL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}  # ||a - b|| / ||b||


@pytest.fixture(autouse=True)
def _compiled_kernels():
    import triton_kernels

    if triton_kernels.INTERPRETED:
        pytest.skip("triton_kernels was imported with TRITON_INTERPRET=1; the GPU tier needs compiled kernels")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be true fp32


def _projector_inputs(n, side, channels, hidden, out, dtype, factor=2):
    k = channels * factor**2
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale + shift).to(dtype)

    return [rand(n, side * side, channels, scale=1.5, shift=0.3), rand(k, scale=0.2, shift=1.0), rand(k, scale=0.1),
            rand(hidden, k, scale=k**-0.5), rand(hidden, scale=0.1), rand(out, hidden, scale=hidden**-0.5),
            rand(out, scale=0.1)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 6, 5, 24, 19), (3, 32, 1152, 1536, 1536), (2, 32, 1088, 200, 72)])
def test_project_tokens_gpu_matches_reference(shape, dtype):
    args = _projector_inputs(*shape, dtype)
    ours = [a.clone().requires_grad_(True) for a in args]
    theirs = [a.clone().requires_grad_(True) for a in args]
    got = get_op("project_tokens", "triton")(*ours)
    want = reference.project_tokens(*theirs)
    torch.testing.assert_close(got, want, **TOL[dtype])
    grad = torch.randn_like(got)
    got.backward(grad)
    want.backward(grad)
    for name, a, b in zip(("features", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2"), ours, theirs):
        rel = ((a.grad.float() - b.grad.float()).norm() / b.grad.float().norm().clamp_min(1e-12)).item()
        assert rel < GRAD_REL[dtype], f"{name}: relative gradient error {rel:.2e}"


def test_project_tokens_op_traces_under_torch_compile():
    args = _projector_inputs(2, 32, 64, 128, 96, torch.bfloat16)

    def fn(*a):
        return torch.ops.nemo_eagle.project_tokens_fwd(*a, 2, 1e-5, False)[0] * 2.0

    compiled = torch.compile(fn, fullgraph=True)  # no graph break: the op has a fake implementation
    torch.testing.assert_close(compiled(*args), fn(*args), atol=0, rtol=0)


@pytest.mark.parametrize("size", [(1920, 1080), (4000, 3000), (640, 480), (300, 900), (33, 17)])
def test_tile_images_gpu_matches_cpu_reference_exactly(size):
    width, height = size
    g = torch.Generator().manual_seed(width * height)
    # smooth content plus noise: both the interpolation and the clamping paths matter
    yy, xx = torch.meshgrid(torch.linspace(0, 6, height), torch.linspace(0, 9, width), indexing="ij")
    base = (torch.sin(xx) * torch.cos(yy) * 100 + 128)[None].expand(3, -1, -1)
    noise = torch.randint(-40, 41, (3, height, width), generator=g)
    image = (base + noise).clamp(0, 255).to(torch.uint8)
    plan = plan_tiles(width, height, max_tiles=12)
    want = reference.tile_images(image, plan.grid)
    got = get_op("tile_images", "triton")(image.cuda(), plan.grid)
    assert got.is_cuda and got.shape == want.shape == (plan.num_tiles, 3, 448, 448)
    assert torch.equal(got.cpu(), want)


def test_processor_on_cuda_images_uses_the_kernel(tiny_ckpt, fixtures_dir):
    from nemo_eagle import EagleProcessor
    from nemo_eagle.data.images import load_image

    image = load_image(fixtures_dir / "images" / "rgb_640x480.png")
    cpu = EagleProcessor.from_pretrained(tiny_ckpt, kernels="torch").preprocess_images([image])[0]
    gpu = EagleProcessor.from_pretrained(tiny_ckpt, kernels="triton").preprocess_images([image.cuda()])[0]
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
