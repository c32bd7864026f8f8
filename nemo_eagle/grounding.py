"""Grounding: ``<ref>``/``<box>`` prompts and parsing box outputs into pixel coordinates of the original image.

InternVL-family models (Eagle2 inherits the convention from InternVL2's grounding data) write boxes as
``<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>`` with coordinates normalised to 0-1000 of the image's width
and height. ``convention`` selects how numbers are read: ``norm1000`` (default), ``norm1`` or ``pixel``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONVENTIONS = ("norm1000", "norm1", "pixel")
_REF_BOX = re.compile(r"(?:<ref>(?P<ref>.*?)</ref>\s*)?<box>(?P<boxes>.*?)</box>", re.S)
_NUM = r"-?\d+(?:\.\d+)?"
_ONE_BOX = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


@dataclass(frozen=True)
class Box:
    label: str | None
    x1: float
    y1: float
    x2: float
    y2: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def grounding_prompt(phrase: str) -> str:
    """The prompt text asking for the location of ``phrase``."""
    return f"Please provide the bounding box coordinate of the region this sentence describes: <ref>{phrase}</ref>"


def parse_boxes(text: str, width: int, height: int, *, convention: str = "norm1000") -> list[Box]:
    """Boxes in ``text`` as pixel coordinates of a width x height image (clamped to the image)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown box convention {convention!r}; choose one of {CONVENTIONS}")
    sx, sy = {"norm1000": (width / 1000, height / 1000), "norm1": (width, height), "pixel": (1.0, 1.0)}[convention]
    boxes = []
    for m in _REF_BOX.finditer(text):
        label = m.group("ref").strip() if m.group("ref") is not None else None
        for b in _ONE_BOX.finditer(m.group("boxes")):
            x1, y1, x2, y2 = (float(v) for v in b.groups())
            x1, x2 = sorted((min(max(x1 * sx, 0.0), width), min(max(x2 * sx, 0.0), width)))
            y1, y2 = sorted((min(max(y1 * sy, 0.0), height), min(max(y2 * sy, 0.0), height)))
            boxes.append(Box(label, x1, y1, x2, y2))
    return boxes


def draw_boxes(image, boxes: list[Box], out: str | Path) -> Path:
    """Draw ``boxes`` (pixel coordinates) with their labels on a copy of ``image`` and save it."""
    from PIL import Image, ImageDraw

    img = (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]
    for i, b in enumerate(boxes):
        c = colors[i % len(colors)]
        draw.rectangle(b.as_tuple(), outline=c, width=max(2, img.width // 300))
        if b.label:
            draw.text((b.x1 + 3, max(b.y1 - 12, 0)), b.label, fill=c)
    out = Path(out)
    img.save(out)
    return out
