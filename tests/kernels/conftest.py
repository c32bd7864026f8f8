"""Kernel tests: on a CPU-only machine the Triton kernels run on CPU tensors through the Triton interpreter.

``@triton.jit`` picks compiled vs interpreted when a kernel is decorated, so ``triton_kernels`` is imported here
with ``TRITON_INTERPRET=1``. The variable is then restored, so the rest of the suite (one pytest process) still
sees ``auto`` choose the torch reference on CPU; the ``interpreter`` fixture sets it again only around the
interpreter tests. On a GPU machine nothing is switched: the kernels compile and ``test_kernels_gpu.py`` runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

TRITON_MISSING = importlib.util.find_spec("triton") is None
SKIP_REASON = ""
if TRITON_MISSING:
    SKIP_REASON = "triton is not installed; install nemo-eagle[kernels]"
elif torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    SKIP_REASON = "a CUDA GPU is present, so the kernels are compiled; the interpreter tier runs on CPU-only machines"
elif "triton_kernels" in sys.modules:
    if not sys.modules["triton_kernels"].INTERPRETED:
        SKIP_REASON = "triton_kernels was imported (compiled mode) before tests/kernels could switch on the interpreter"
else:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton_kernels  # noqa: F401  (decorates every kernel as an interpreted function)
    except ModuleNotFoundError as e:  # the `kernels` extra is not installed
        if e.name != "triton":
            raise
        SKIP_REASON = f"triton is not installed ({e}); install nemo-eagle[kernels]"
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous


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
