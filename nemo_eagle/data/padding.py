"""The one padding helper: rows of token ids (lists or 1-D tensors) -> a padded (B, L) batch and its mask.

Generation left-pads (real tokens end at the last column, so every row's next token is sampled from the same
place); training and embedding right-pad. Used by the processor, the training collator, the embedder and the
serving engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SIDES = ("left", "right")


def pad_rows(rows: Sequence[Sequence[int] | Tensor], value: int, *, side: str = "right",
             multiple_of: int = 1) -> tuple[Tensor, Tensor]:
    """``(ids, mask)``: each row padded with ``value`` to the longest row, rounded up to ``multiple_of``;
    ``mask`` is 1 on real tokens."""
    if side not in SIDES:
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    if not rows:
        raise ValueError("nothing to pad: no rows")
    tensors = [r.reshape(-1).long() if isinstance(r, Tensor) else torch.tensor(list(r), dtype=torch.long)
               for r in rows]
    longest = max(int(t.numel()) for t in tensors)
    length = (longest + multiple_of - 1) // multiple_of * multiple_of
    ids = torch.full((len(tensors), length), value, dtype=torch.long)
    mask = torch.zeros((len(tensors), length), dtype=torch.long)
    for i, t in enumerate(tensors):
        n = int(t.numel())
        sl = slice(length - n, length) if side == "left" else slice(0, n)
        ids[i, sl] = t
        mask[i, sl] = 1
    return ids, mask
