"""Fixtures for the data tests: a small-tile processor over the tiny checkpoint's tokenizer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_processor(tiny_ckpt):
    """The tiny checkpoint's tokenizer and chat template with 28 px tiles (1 image token per tile), max 4 tiles."""
    from data_helpers import small_processor as make

    return make(tiny_ckpt)
