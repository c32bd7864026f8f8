"""Named ops with a torch reference implementation (the spec) and optional fast backends.

``get_op(name, backend)`` returns a callable with the same signature for every backend; ``use_kernels``
binds the choice once on a built model. Nothing here imports ``triton_kernels`` at import time.
"""

from nemo_eagle.ops.registry import KernelConfig, available_backends, get_op, register, resolve, use_kernels

__all__ = ["KernelConfig", "available_backends", "get_op", "register", "resolve", "use_kernels"]
