"""Fixtures for the data tests: a small-tile processor over the tiny checkpoint's tokenizer, one CPU thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread is faster, and avoids oversubscribing a shared CPU.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_processor(tiny_ckpt):
    """The tiny checkpoint's tokenizer and chat template with 28 px tiles (1 image token per tile), max 4 tiles."""
    from data_helpers import small_processor as make

    return make(tiny_ckpt)
