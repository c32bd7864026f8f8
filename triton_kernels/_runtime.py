"""Where the Triton kernels can run: a CUDA device, or CPU tensors under the Triton interpreter.

``@triton.jit`` decides at decoration time whether a kernel is compiled or interpreted, so the mode is
captured once when this package is imported; ``can_launch`` also requires ``TRITON_INTERPRET=1`` at call
time for CPU tensors, so ``auto`` on a CPU machine keeps using the torch reference.
"""

from __future__ import annotations

import os

import torch
from triton import knobs

# True when the kernels below were decorated as interpreted functions (TRITON_INTERPRET=1 at import).
INTERPRETED: bool = bool(knobs.runtime.interpret)


def interpreting_now() -> bool:
    return INTERPRETED and os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_launch(*tensors: torch.Tensor) -> bool:
    """All tensors on one device where the kernels can run (CUDA, or CPU while interpreting)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return False
    device = devices.pop()
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreting_now()


def check_launch(op: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error instead of a launcher failure when ``op`` is called where it cannot run."""
    if not can_launch(*tensors):
        where = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"triton {op} needs all tensors on one CUDA device (or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton_kernels is imported); got {where}. Use backend='auto' or 'torch' to fall back."
        )
