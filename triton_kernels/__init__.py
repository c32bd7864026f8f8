"""Triton-language kernels, registered into ``nemo_eagle.ops`` as the ``triton`` backend when imported.

``nemo_eagle`` never imports this package at import time; ``nemo_eagle.ops.registry`` does, lazily, when a
non-torch backend is asked for. Each kernel module registers its op with a ``supports`` check, so ``auto`` uses
the torch reference wherever a kernel cannot run (CPU tensors unless ``TRITON_INTERPRET=1``).
"""

from triton_kernels import projector, tiles  # noqa: F401  (importing registers the ops)
from triton_kernels._runtime import INTERPRETED, can_launch

__all__ = ["INTERPRETED", "can_launch", "projector", "tiles"]
