"""Embedders over the tiny parity checkpoint (loaded once per session) and small synthetic page images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def make_page(i: int, size: tuple[int, int] = (40, 56)) -> Image.Image:
    """A small, distinct RGB "page": a seeded noise field over a colour that depends on ``i``."""
    rng = np.random.default_rng(1000 + i)
    w, h = size
    base = np.array([(37 * i) % 256, (91 * i + 40) % 256, (53 * i + 120) % 256], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-60, 60, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="session")
def single_embedder(tiny_ckpt):
    from nemo_eagle.embed import EagleEmbedder

    return EagleEmbedder.from_pretrained(tiny_ckpt, mode="single", max_tiles=1)


@pytest.fixture(scope="session")
def multi_embedder(tiny_ckpt):
    from nemo_eagle.embed import EagleEmbedder

    return EagleEmbedder.from_pretrained(tiny_ckpt, mode="multi", max_tiles=1, projection_dim=32, bidirectional=True)


@pytest.fixture(scope="session")
def pages():
    return [make_page(i) for i in range(6)]


@pytest.fixture(scope="session")
def page_factory():
    return make_page
