"""Test-only: run megatron-core on a CPU-only torch build.

megatron-core allocates some buffers with ``device=torch.cuda.current_device()`` or a literal ``"cuda"`` (rotary
``inv_freq``, the global attention buffer, the default causal mask, optimizer scalars, TP gathers). Inside
``megatron_on_cpu()`` those land on the CPU instead. Nothing in ``nemo_eagle`` imports this module.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments of tensor factories and ``.to``/``.cuda`` calls to the CPU, and reports CPU
    tensors' ``.type()`` under the CUDA names megatron's optimizer checks for."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and args[1:] and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(out, str):
            # the distributed optimizer accepts only "torch.cuda.*Tensor" type names
            return out.replace("torch.", "torch.cuda.", 1)
        return out


@contextlib.contextmanager
def megatron_on_cpu():
    """Patch the CUDA call sites megatron-core hits on CPU for the duration of the block."""
    saved = {name: getattr(torch.cuda, name) for name in ("current_device", "synchronize")}
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        with _CudaToCpu():
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch.cuda, name, fn)


def enable() -> None:
    """Enter ``megatron_on_cpu`` for the rest of the process (spawned test workers)."""
    stack = contextlib.ExitStack()
    stack.enter_context(megatron_on_cpu())
    enable.stack = stack  # keep it alive
