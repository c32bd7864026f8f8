"""``project_tokens`` on the GPU: pixel shuffle + LayerNorm fused into the first GEMM, GELU(erf) in its epilogue.

Forward: one small kernel computes each shuffled row's mean and 1/std straight from the vision features (the
shuffle is only an address pattern, never materialised); the GEMM kernel gathers its A tiles through the same
pattern, normalises them in its prologue (in fp32, rounded to the input dtype as ``F.layer_norm`` would), and
adds the bias and the exact erf GELU in its epilogue. The second Linear is a cuBLAS ``addmm``: a plain GEMM
with a bias that a hand-written kernel would not beat. Backward (``register_autograd``) recomputes the
normalised rows with the same gather, runs the weight/input GEMMs in torch, and fuses the LayerNorm backward
with the inverse shuffle (a scatter) in one kernel.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from nemo_eagle.ops.registry import register
from triton_kernels._runtime import INTERPRETED, can_launch, check_launch

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _row_offsets(rows, tokens, grid_side, factor, stride_n, stride_p):
    """Offset of channel 0 of shuffled row m = (image n, token t = a * (side/f) + b): patch (f*a, f*b) of image n."""
    out_side = grid_side // factor
    n = rows // tokens
    t = rows - n * tokens
    a = t // out_side
    b = t - a * out_side
    return n.to(tl.int64) * stride_n + (factor * a * grid_side + factor * b).to(tl.int64) * stride_p


@triton.jit
def _col_offsets(k0, K, channels, grid_side, factor, stride_p, stride_c, BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr):
    """Offsets (relative to the row's) of shuffled channels k0 .. k0+BLOCK_K-1; k = (r * f + c) * C + ch reads
    channel ch of patch (f*a + r, f*b + c). ALIGNED (C % BLOCK_K == 0): the block lies in one (r, c) group, so the
    divisions are scalar instead of per element."""
    if ALIGNED:
        rc = k0 // channels
        ch = k0 - rc * channels + tl.arange(0, BLOCK_K)
    else:
        ks = k0 + tl.arange(0, BLOCK_K)
        rc = ks // channels
        ch = ks - rc * channels
    r = rc // factor
    c = rc - r * factor
    return (r * grid_side + c).to(tl.int64) * stride_p + ch.to(tl.int64) * stride_c


@triton.jit
def _row_stats_kernel(
    x_ptr, mean_ptr, rstd_ptr,
    M, K, tokens, grid_side, channels, factor, stride_n, stride_p, stride_c, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr,
):
    """Mean and 1/sqrt(var + eps) of every shuffled row, one pass (Chan's merge of per-block mean and M2)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    row_off = _row_offsets(rows, tokens, grid_side, factor, stride_n, stride_p)
    mean = tl.zeros((BLOCK_M,), tl.float32)
    m2 = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (ks < K)[None, :]
        offs = row_off[:, None] + _col_offsets(k0, K, channels, grid_side, factor, stride_p, stride_c,
                                               BLOCK_K, ALIGNED)[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        seen = k0 * 1.0  # every block before this one is full
        n_blk = tl.minimum(K - k0, BLOCK_K) * 1.0
        blk_mean = tl.sum(x, axis=1) / n_blk
        d = tl.where(ok, x - blk_mean[:, None], 0.0)
        blk_m2 = tl.sum(d * d, axis=1)
        total = seen + n_blk
        delta = blk_mean - mean
        mean = mean + delta * (n_blk / total)
        m2 = m2 + blk_m2 + delta * delta * (seen * n_blk / total)
    rstd = 1.0 / tl.sqrt(m2 / K + eps)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _ln_linear_gelu_kernel(
    x_ptr, mean_ptr, rstd_ptr, g_ptr, beta_ptr, w_ptr, bias_ptr, h_ptr, z_ptr,
    M, N, K, tokens, grid_side, channels, factor, stride_n, stride_p, stride_c,
    stride_wn, stride_wk,
    STORE_PRE: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """h = GELU(LayerNorm(shuffle(x)) @ W^T + bias), optionally also z = the pre-activation (for backward)."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: neighbouring programs share A rows, so W tiles and A tiles stay in L2
    width = GROUP_M * grid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    row_off = _row_offsets(rows, tokens, grid_side, factor, stride_n, stride_p)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        offs = row_off[:, None] + _col_offsets(k0, K, channels, grid_side, factor, stride_p, stride_c,
                                               BLOCK_K, ALIGNED)[None, :]
        x = tl.load(x_ptr + offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        g = tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        a = (x.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
        a = tl.where(k_ok[None, :], a, 0.0).to(x_ptr.dtype.element_ty)  # LayerNorm output in the input dtype
        w = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT_FP32:  # the interpreter's bf16 dot is wrong; the exact values are the same in fp32
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        elif IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    z = acc + bias[None, :]
    h = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    out = rows[:, None].to(tl.int64) * N + cols[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(h_ptr + out, h.to(h_ptr.dtype.element_ty), mask=ok)
    if STORE_PRE:
        tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _shuffle_ln_kernel(
    x_ptr, mean_ptr, rstd_ptr, g_ptr, beta_ptr, y_ptr,
    M, K, tokens, grid_side, channels, factor, stride_n, stride_p, stride_c,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr,
):
    """y (M, K) = LayerNorm(shuffle(x)) in the input dtype: the GEMM's A operand, materialised for backward."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = tl.program_id(1) * BLOCK_K
    ks = k0 + tl.arange(0, BLOCK_K)
    row_off = _row_offsets(rows, tokens, grid_side, factor, stride_n, stride_p)
    row_ok = rows < M
    k_ok = ks < K
    ok = row_ok[:, None] & k_ok[None, :]
    offs = row_off[:, None] + _col_offsets(k0, K, channels, grid_side, factor, stride_p, stride_c, BLOCK_K,
                                           ALIGNED)[None, :]
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
    y = (x - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
    tl.store(y_ptr + rows[:, None].to(tl.int64) * K + ks[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _ln_backward_unshuffle_kernel(
    x_ptr, mean_ptr, rstd_ptr, g_ptr, dy_ptr, dx_ptr, dg_part_ptr, db_part_ptr,
    M, K, tokens, grid_side, channels, factor, stride_n, stride_p, stride_c,
    dx_stride_n, dx_stride_p, dx_stride_c,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr,
):
    """LayerNorm backward of BLOCK_M shuffled rows, written back through the inverse shuffle.

    dx = rstd * (dy*g - mean(dy*g) - xhat * mean(dy*g*xhat)); per-program column sums of dy*xhat and dy go to
    ``dg_part`` / ``db_part`` (num_programs, K), summed by the caller.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    row_off = _row_offsets(rows, tokens, grid_side, factor, stride_n, stride_p)
    dx_row_off = _row_offsets(rows, tokens, grid_side, factor, dx_stride_n, dx_stride_p)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    sum_dxhat = tl.zeros((BLOCK_M,), tl.float32)
    sum_dxhat_xhat = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        ok = row_ok[:, None] & k_ok[None, :]
        offs = row_off[:, None] + _col_offsets(k0, K, channels, grid_side, factor, stride_p, stride_c,
                                               BLOCK_K, ALIGNED)[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dy = tl.load(dy_ptr + rows[:, None].to(tl.int64) * K + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        dxhat = dy * g[None, :]
        sum_dxhat += tl.sum(dxhat, axis=1)
        sum_dxhat_xhat += tl.sum(dxhat * xhat, axis=1)
    c_mean = sum_dxhat / K
    c_proj = sum_dxhat_xhat / K
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        ok = row_ok[:, None] & k_ok[None, :]
        offs = row_off[:, None] + _col_offsets(k0, K, channels, grid_side, factor, stride_p, stride_c,
                                               BLOCK_K, ALIGNED)[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dy = tl.load(dy_ptr + rows[:, None].to(tl.int64) * K + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        dx = rstd[:, None] * (dy * g[None, :] - c_mean[:, None] - xhat * c_proj[:, None])
        dx_offs = dx_row_off[:, None] + _col_offsets(k0, K, channels, grid_side, factor, dx_stride_p, dx_stride_c,
                                                     BLOCK_K, ALIGNED)[None, :]
        tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)
        tl.store(dg_part_ptr + pid * K + ks, tl.sum(tl.where(ok, dy * xhat, 0.0), axis=0), mask=k_ok)
        tl.store(db_part_ptr + pid * K + ks, tl.sum(dy, axis=0), mask=k_ok)


# ------------------------------------------------------------------------------------------------ launch
def _geometry(features: Tensor, factor: int) -> tuple[int, int, int, int, int]:
    """(M rows, K channels, tokens per image, patch grid side, C) of the shuffled features."""
    n, p, c = features.shape
    side = math.isqrt(p)
    tokens = p // factor**2
    return n * tokens, factor * factor * c, tokens, side, c


def _gemm_blocks(interpreted: bool, dtype: torch.dtype, channels: int) -> dict:
    if interpreted:
        blocks = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8)
    elif dtype == torch.float32:
        blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    else:
        blocks = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    return dict(blocks, ALIGNED=channels % blocks["BLOCK_K"] == 0)


def _row_blocks(interpreted: bool, channels: int) -> dict:
    """Blocks of the row-wise kernels: the widest power-of-two BLOCK_K (16..128) dividing C, else the generic path."""
    widest = 64 if interpreted else 128
    block_k = next((b for b in (128, 64, 32, 16) if b <= widest and channels % b == 0), None)
    return dict(BLOCK_M=32 if interpreted else 16, BLOCK_K=block_k or widest, ALIGNED=block_k is not None)


def _stats(features: Tensor, factor: int, eps: float) -> tuple[Tensor, Tensor]:
    m, k, tokens, side, c = _geometry(features, factor)
    mean = torch.empty(m, dtype=torch.float32, device=features.device)
    rstd = torch.empty(m, dtype=torch.float32, device=features.device)
    blocks = _row_blocks(features.device.type == "cpu", c)
    _row_stats_kernel[(triton.cdiv(m, blocks["BLOCK_M"]),)](
        features, mean, rstd, m, k, tokens, side, c, factor, *features.stride(), eps, **blocks,
    )
    return mean, rstd


@torch.library.custom_op("nemo_eagle::project_tokens_fwd", mutates_args=())
def project_tokens_fwd(
    features: Tensor, ln_weight: Tensor, ln_bias: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
    shuffle_factor: int, eps: float, keep_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out (N, P/f^2, H2), mean (M,), rstd (M,), pre-GELU z (M, H1) or an empty tensor)."""
    n, p, _ = features.shape
    m, k, tokens, side, c = _geometry(features, shuffle_factor)
    hidden = w1.shape[0]
    mean, rstd = _stats(features, shuffle_factor, eps)
    h = torch.empty((m, hidden), dtype=features.dtype, device=features.device)
    z = torch.empty((m, hidden) if keep_for_backward else (0, hidden), dtype=features.dtype, device=features.device)
    interpreted = features.device.type == "cpu"
    blocks = _gemm_blocks(interpreted, features.dtype, c)
    grid = (triton.cdiv(m, blocks["BLOCK_M"]) * triton.cdiv(hidden, blocks["BLOCK_N"]),)
    _ln_linear_gelu_kernel[grid](
        features, mean, rstd, ln_weight, ln_bias, w1, b1, h, z if keep_for_backward else h,
        m, hidden, k, tokens, side, c, shuffle_factor, *features.stride(), *w1.stride(),
        STORE_PRE=keep_for_backward, DOT_FP32=interpreted and features.dtype == torch.bfloat16,
        IEEE=features.dtype == torch.float32, **blocks,
    )
    out = torch.addmm(b2, h, w2.t())
    return out.view(n, tokens, w2.shape[0]), mean, rstd, z


@torch.library.custom_op("nemo_eagle::project_tokens_bwd", mutates_args=())
def project_tokens_bwd(
    grad_out: Tensor, features: Tensor, ln_weight: Tensor, ln_bias: Tensor, w1: Tensor, w2: Tensor,
    mean: Tensor, rstd: Tensor, z: Tensor, shuffle_factor: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients for (features, ln_weight, ln_bias, w1, b1, w2, b2)."""
    m, k, tokens, side, c = _geometry(features, shuffle_factor)
    interpreted = features.device.type == "cpu"
    dy = grad_out.reshape(m, w2.shape[0])
    h = torch.nn.functional.gelu(z)
    grad_w2 = dy.t() @ h
    grad_b2 = dy.sum(0, dtype=torch.float32).to(w2.dtype)
    dz = torch.ops.aten.gelu_backward(dy @ w2, z)
    grad_b1 = dz.sum(0, dtype=torch.float32).to(w1.dtype)
    # the normalised rows (GEMM A operand), rebuilt from the features with the same gather
    rows = _row_blocks(interpreted, c)
    xln = torch.empty((m, k), dtype=features.dtype, device=features.device)
    _shuffle_ln_kernel[(triton.cdiv(m, rows["BLOCK_M"]), triton.cdiv(k, rows["BLOCK_K"]))](
        features, mean, rstd, ln_weight, ln_bias, xln, m, k, tokens, side, c, shuffle_factor,
        *features.stride(), **rows,
    )
    grad_w1 = dz.t() @ xln
    dxln = dz @ w1
    grad_x = torch.empty(features.shape, dtype=features.dtype, device=features.device)
    programs = triton.cdiv(m, rows["BLOCK_M"])
    dg_part = torch.empty((programs, k), dtype=torch.float32, device=features.device)
    db_part = torch.empty((programs, k), dtype=torch.float32, device=features.device)
    _ln_backward_unshuffle_kernel[(programs,)](
        features, mean, rstd, ln_weight, dxln, grad_x, dg_part, db_part,
        m, k, tokens, side, c, shuffle_factor, *features.stride(), *grad_x.stride(), **rows,
    )
    grad_g = dg_part.sum(0).to(ln_weight.dtype)
    grad_beta = db_part.sum(0).to(ln_bias.dtype)
    return grad_x, grad_g, grad_beta, grad_w1, grad_b1, grad_w2, grad_b2


@project_tokens_fwd.register_fake
def _(features, ln_weight, ln_bias, w1, b1, w2, b2, shuffle_factor, eps, keep_for_backward):
    n = features.shape[0]
    m, _, tokens, _, _ = _geometry(features, shuffle_factor)
    hidden = w1.shape[0]
    return (
        features.new_empty((n, tokens, w2.shape[0])),
        features.new_empty((m,), dtype=torch.float32),
        features.new_empty((m,), dtype=torch.float32),
        features.new_empty((m if keep_for_backward else 0, hidden)),
    )


@project_tokens_bwd.register_fake
def _(grad_out, features, ln_weight, ln_bias, w1, w2, mean, rstd, z, shuffle_factor):
    return (features.new_empty(features.shape), torch.empty_like(ln_weight), torch.empty_like(ln_bias),
            torch.empty_like(w1), w1.new_empty((w1.shape[0],)), torch.empty_like(w2), w2.new_empty((w2.shape[0],)))


def _setup_context(ctx, inputs, output) -> None:
    features, ln_weight, ln_bias, w1, b1, w2, b2, shuffle_factor, eps, keep = inputs
    _, mean, rstd, z = output
    if not keep:
        ctx.unusable = True
        return
    ctx.unusable = False
    ctx.shuffle_factor = shuffle_factor
    ctx.save_for_backward(features, ln_weight, ln_bias, w1, w2, mean, rstd, z)
    ctx.mark_non_differentiable(mean, rstd, z)


def _backward(ctx, grad_out, *_unused):
    if ctx.unusable:
        raise RuntimeError("project_tokens ran with keep_for_backward=False; call it through the public "
                           "triton_kernels.projector.project_tokens so gradients can be computed")
    features, ln_weight, ln_bias, w1, w2, mean, rstd, z = ctx.saved_tensors
    grads = torch.ops.nemo_eagle.project_tokens_bwd(
        grad_out.contiguous(), features, ln_weight, ln_bias, w1, w2, mean, rstd, z, ctx.shuffle_factor
    )
    return (*grads, None, None, None)


project_tokens_fwd.register_autograd(_backward, setup_context=_setup_context)


def _supports(features, ln_weight, ln_bias, w1, b1, w2, b2, shuffle_factor=2, eps=1e-5) -> bool:
    tensors = (features, ln_weight, ln_bias, w1, b1, w2, b2)
    if not all(isinstance(t, Tensor) for t in tensors) or features.dim() != 3:
        return False
    if features.dtype not in _DTYPES or any(t.dtype != features.dtype for t in tensors):
        return False
    side = math.isqrt(features.shape[1])
    if side * side != features.shape[1] or side % shuffle_factor:
        return False
    k = features.shape[2] * shuffle_factor**2
    shapes_ok = (ln_weight.shape == (k,) and ln_bias.shape == (k,) and w1.dim() == 2 and w1.shape[1] == k
                 and b1.shape == (w1.shape[0],) and w2.dim() == 2 and w2.shape[1] == w1.shape[0]
                 and b2.shape == (w2.shape[0],))
    return shapes_ok and can_launch(*tensors)


# Opt-in: on an H100 the fused GEMM ran at 0.5x cuBLAS (benchmarks/RESULTS.md), so `auto` keeps the reference.
@register("project_tokens", "triton", supports=_supports, in_auto=False)
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
    """Vision features (N, P, C) -> (N, P/f^2, H); same contract and numbers as ``reference.project_tokens``."""
    if not _supports(features, ln_weight, ln_bias, w1, b1, w2, b2, shuffle_factor):
        check_launch("project_tokens", *(t for t in (features, ln_weight, ln_bias, w1, b1, w2, b2)
                                         if isinstance(t, Tensor)))
        raise ValueError(
            "triton project_tokens got unsupported inputs: need features (N, P, C) with P a square grid divisible "
            f"by {shuffle_factor}, LayerNorm/Linear shapes that match C*{shuffle_factor}**2, and one dtype of "
            f"{[str(d) for d in _DTYPES]} for all tensors; got features {tuple(features.shape)} {features.dtype}, "
            f"w1 {tuple(w1.shape)} {w1.dtype}, w2 {tuple(w2.shape)}"
        )
    tensors = (features, ln_weight, ln_bias, w1, b1, w2, b2)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return project_tokens_fwd(features, ln_weight, ln_bias, w1, b1, w2, b2, int(shuffle_factor), float(eps), keep)[0]


__all__ = ["INTERPRETED", "project_tokens", "project_tokens_bwd", "project_tokens_fwd"]
