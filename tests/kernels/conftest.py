"""Kernel tests: on a CPU-only machine the Triton kernels run on CPU tensors through the Triton interpreter.

``@triton.jit`` picks compiled vs interpreted when a kernel is decorated, so Triton and ``triton_kernels`` are
imported here with ``TRITON_INTERPRET=1``. The variable is then restored, so the rest of the suite (one pytest
process) still sees ``auto`` choose the torch reference on CPU; the ``interpreter`` fixture sets it again only
around the interpreter tests. On a GPU machine nothing is switched: the kernels compile and
``test_kernels_gpu.py`` runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

TRITON_MISSING = importlib.util.find_spec("triton") is None


def _import_kernels_interpreted() -> str:
    """Import ``triton_kernels`` with every kernel interpreted; returns a skip reason, or "" on success.

    ``@triton.jit`` picks compiled vs interpreted at decoration time, and that holds for Triton's own
    ``triton.language`` helpers too, so Triton must be imported in interpreter mode, not just our kernels.
    Other test modules import it earlier (transformers and torch._dynamo do, in compiled mode), so its pure-Python
    modules are dropped and imported again with ``TRITON_INTERPRET=1``; the native ``triton._C`` stays loaded.
    Modules imported before keep the compiled-mode objects they hold, which they never launch on a CPU machine.
    """
    if "triton_kernels" in sys.modules:
        if sys.modules["triton_kernels"].INTERPRETED:
            return ""
        return "triton_kernels was imported in compiled mode before tests/kernels could switch on the interpreter"
    loaded = sys.modules.get("triton")
    if loaded is not None and not loaded.knobs.runtime.interpret:
        for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
            if not name.startswith("triton._C"):
                del sys.modules[name]
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton_kernels

        assert triton_kernels.INTERPRETED, "triton_kernels did not import in interpreter mode"
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return ""


if TRITON_MISSING:
    SKIP_REASON = "triton is not installed; install nemo-eagle[kernels]"
elif torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    SKIP_REASON = "a CUDA GPU is present, so the kernels are compiled; the interpreter tier runs on CPU-only machines"
else:
    SKIP_REASON = _import_kernels_interpreted()


@pytest.fixture
def interpreter(monkeypatch):
    """Run the test with the Triton interpreter active (CPU tensors go to the kernels)."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def no_interpreter(monkeypatch):
    """A CPU-only process as users run it: the interpreter is off, so CPU tensors cannot go to the kernels."""
    if TRITON_MISSING:
        pytest.skip("triton is not installed; install nemo-eagle[kernels]")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    yield
