"""What the embedder accepts as one input (text, image, image+text) and how an over-long input is truncated.

Truncation follows the NIM embedding API (API.md): ``NONE`` raises, ``END`` / ``START`` cut that side. An
``<img>...</img>`` block is never cut in half: a cut that would land inside one drops the whole image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nemo_eagle.data.images import ImageInput

TRUNCATE_MODES = ("NONE", "START", "END")
INPUT_TYPES = ("query", "passage")
# A base64 image data URL anywhere in a string, optionally wrapped in an HTML <img src="..."> tag.
_DATA_URL = re.compile(r"""(?:<img\s+src=["'])?(data:image/[\w.+-]+;base64,[A-Za-z0-9+/=]+)(?:["']\s*/?>)?""")
_IMAGE_TYPES = (Image.Image, np.ndarray, torch.Tensor, bytes, bytearray, Path)


class InputTooLongError(ValueError):
    """An input has more tokens than ``max_length`` and truncation is ``NONE``."""


@dataclass
class EmbedInput:
    """One thing to embed: text, images, or both (images come first in the prompt)."""

    text: str = ""
    images: list[ImageInput] = field(default_factory=list)

    @property
    def has_images(self) -> bool:
        return bool(self.images)


def _is_image(x: Any) -> bool:
    return isinstance(x, _IMAGE_TYPES)


def parse_input(x: Any, index: int = 0) -> EmbedInput:
    """Normalise one user input.

    Accepted: a string (text; a ``data:image/...;base64,`` URL inside it becomes an image), a PIL image,
    numpy array, uint8 tensor, bytes or ``pathlib.Path`` (an image), an ``(image, text)`` / ``(text, image)``
    pair, or a dict with ``text`` and/or ``image`` / ``images``. A plain ``str`` is never read as a file path.
    """
    name = f"input {index}"
    if isinstance(x, str):
        images = [m.group(1) for m in _DATA_URL.finditer(x)]
        text = " ".join(_DATA_URL.sub(" ", x).split()) if images else x
        out = EmbedInput(text=text, images=images)
    elif _is_image(x):
        out = EmbedInput(images=[x])
    elif isinstance(x, (tuple, list)):
        texts = [p for p in x if isinstance(p, str)]
        images = [p for p in x if _is_image(p)]
        if len(texts) + len(images) != len(x) or len(texts) > 1 or not x:
            raise ValueError(f"{name}: a tuple must hold images and at most one text, got "
                             f"({', '.join(type(p).__name__ for p in x)})")
        out = EmbedInput(text=texts[0] if texts else "", images=images)
    elif isinstance(x, dict):
        unknown = set(x) - {"text", "image", "images"}
        if unknown:
            raise ValueError(f"{name}: unknown keys {sorted(unknown)}; use 'text', 'image' or 'images'")
        images = list(x.get("images") or []) + ([x["image"]] if x.get("image") is not None else [])
        for img in images:
            if not (_is_image(img) or isinstance(img, str)):
                raise ValueError(f"{name}: image of unsupported type {type(img).__name__}")
        # In dicts a string image is explicit: a data URL or a file path.
        images = [Path(img) if isinstance(img, str) and not img.startswith("data:") else img for img in images]
        text = x.get("text") or ""
        if not isinstance(text, str):
            raise ValueError(f"{name}: 'text' must be a string, got {type(text).__name__}")
        out = EmbedInput(text=text, images=images)
    else:
        raise ValueError(f"{name}: unsupported input type {type(x).__name__}; pass text, an image, "
                         "an (image, text) pair or a dict")
    if not out.text.strip() and not out.images:
        raise ValueError(f"{name} is empty (no text and no image)")
    return out


def check_truncate(truncate: str) -> str:
    mode = str(truncate).upper()
    if mode not in TRUNCATE_MODES:
        raise ValueError(f"truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
    return mode


def check_input_type(input_type: str) -> str:
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
    return input_type


def image_blocks(ids: list[int], start_id: int, end_id: int) -> list[tuple[int, int]]:
    """(start, end) index pairs, inclusive, of every ``<img> ... </img>`` block in ``ids``."""
    blocks, open_at = [], None
    for i, t in enumerate(ids):
        if t == start_id:
            open_at = i
        elif t == end_id and open_at is not None:
            blocks.append((open_at, i))
            open_at = None
    return blocks


def truncate_ids(ids: list[int], max_length: int, side: str, *, protected: int, blocks: list[tuple[int, int]]
                 ) -> tuple[list[int], list[int]]:
    """Cut ``ids`` to at most ``max_length`` tokens on ``side`` (``END`` or ``START``).

    The first ``protected`` tokens (the query/passage prefix) are always kept. A cut falling inside an image
    block moves to the block's edge, so the whole image goes.

    Returns:
        (kept ids, indices into ``blocks`` of the images that survived).
    """
    keep = max_length - protected
    if keep <= 0:
        raise InputTooLongError(f"max_length={max_length} leaves no room after the {protected}-token prefix")
    body = ids[protected:]
    if side == "END":
        cut = keep  # body[:cut] survives
        for s, e in blocks:
            s, e = s - protected, e - protected
            if s < cut <= e:
                cut = s
        kept = [i for i, (s, e) in enumerate(blocks) if e - protected < cut]
        return ids[:protected] + body[:cut], kept
    start = len(body) - keep  # body[start:] survives
    for s, e in blocks:
        s, e = s - protected, e - protected
        if s < start <= e:
            start = e + 1
    kept = [i for i, (s, e) in enumerate(blocks) if s - protected >= start]
    return ids[:protected] + body[start:], kept
