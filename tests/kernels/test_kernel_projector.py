"""project_tokens: the Triton kernels (interpreted on CPU) against the torch reference, forward and backward."""

from __future__ import annotations

import inspect

import pytest
import torch

from nemo_eagle.ops import get_op, reference

pytestmark = pytest.mark.usefixtures("interpreter")

FWD_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
           torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}
# fp16/bf16 gradients are sums over rows in a different order than the reference's: a few units in the last place
GRAD_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2),
            torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}
NAMES = ("features", "ln_weight", "ln_bias", "w1", "b1", "w2", "b2")


def _inputs(n: int, side: int, channels: int, factor: int, hidden: int, out: int, dtype: torch.dtype):
    k = channels * factor**2
    features = torch.randn(n, side * side, channels) * 1.5 + 0.3  # a mean offset, as real features have
    return [
        features.to(dtype),
        (1 + 0.2 * torch.randn(k)).to(dtype),
        (0.1 * torch.randn(k)).to(dtype),
        (torch.randn(hidden, k) / k**0.5).to(dtype),
        (0.1 * torch.randn(hidden)).to(dtype),
        (torch.randn(out, hidden) / hidden**0.5).to(dtype),
        (0.1 * torch.randn(out)).to(dtype),
    ]


# (images, patch grid side, channels, shuffle factor, hidden, out): odd sizes that leave every block ragged; C = 32
# and 48 take the kernels' aligned path (a channel block inside one shuffled patch), the odd C the generic one
SHAPES = [(3, 6, 5, 2, 24, 19), (1, 6, 7, 3, 17, 33), (2, 4, 9, 2, 40, 8), (2, 4, 32, 2, 24, 40), (1, 6, 48, 3, 20, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_project_tokens_forward_and_backward_match_reference(shape, dtype):
    *dims, factor, hidden, out = shape
    n, side, channels = dims
    args = _inputs(n, side, channels, factor, hidden, out, dtype)
    ours = [a.clone().requires_grad_(True) for a in args]
    theirs = [a.float().clone().requires_grad_(True) for a in args] if dtype == torch.bfloat16 else \
        [a.clone().requires_grad_(True) for a in args]
    # NOTE: bf16 is compared with an fp32 reference: CPU bf16 matmuls round differently from GPU ones anyway.

    got = get_op("project_tokens", "triton")(*ours, shuffle_factor=factor, eps=1e-5)
    want = reference.project_tokens(*theirs, shuffle_factor=factor, eps=1e-5)
    assert got.shape == (n, side * side // factor**2, out) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), **FWD_TOL[dtype])

    grad = torch.randn(got.shape).to(dtype)
    got.backward(grad)
    want.backward(grad.to(want.dtype))
    for name, a, b in zip(NAMES, ours, theirs):
        assert a.grad is not None and a.grad.dtype == dtype, name
        torch.testing.assert_close(a.grad.float(), b.grad.float(), **GRAD_TOL[dtype], msg=lambda m: f"{name}: {m}")


def test_project_tokens_without_grad_equals_with_grad_and_reads_strided_features():
    args = _inputs(2, 6, 5, 2, 24, 19, torch.float32)
    # (P, N, C) storage viewed as (N, P, C): the gather must follow the strides
    args[0] = args[0].transpose(0, 1).contiguous().transpose(0, 1)
    assert not args[0].is_contiguous()
    op = get_op("project_tokens", "triton")
    with torch.no_grad():
        plain = op(*args)
    with_grad = op(*[a.clone().requires_grad_(True) for a in args])
    torch.testing.assert_close(plain, with_grad.detach(), atol=0, rtol=0)
    torch.testing.assert_close(plain, reference.project_tokens(*args), atol=1e-5, rtol=1e-5)


def test_project_tokens_signature_equals_reference():
    assert inspect.signature(get_op("project_tokens", "triton")) == inspect.signature(reference.project_tokens)
    assert inspect.signature(get_op("tile_images", "triton")) == inspect.signature(reference.tile_images)


def test_project_tokens_rejects_unsupported_inputs_clearly():
    args = _inputs(1, 6, 5, 2, 16, 16, torch.float32)
    args[3] = args[3].half()  # mixed dtypes
    with pytest.raises(ValueError, match="one dtype"):
        get_op("project_tokens", "triton")(*args)
    args = _inputs(1, 5, 5, 2, 16, 16, torch.float32)  # 5x5 patches cannot be shuffled by 2
    with pytest.raises(ValueError, match="square grid divisible by 2"):
        get_op("project_tokens", "triton")(*args)


def test_project_tokens_ops_pass_opcheck():
    from triton_kernels.projector import project_tokens_fwd

    args = [a.requires_grad_(True) for a in _inputs(2, 4, 3, 2, 16, 16, torch.float32)]
    result = torch.library.opcheck(project_tokens_fwd, (*args, 2, 1e-5, True))
    assert set(result.values()) == {"SUCCESS"}, result
