"""Collate encoded samples into a padded batch or one packed row.

Padded: right padding, a 2-D attention mask, positions 0..n-1 per row.
Packed: all samples of the micro-batch in one row, positions restarting at 0 for each sample, and no
attention across samples, either through ``position_ids`` alone (transformers builds the block-causal mask
from the position resets when no attention mask is given) or an explicit 4-D additive block-diagonal mask.
Image tiles are concatenated in sample order, which is the order of their ``<IMG_CONTEXT>`` tokens in both layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nemo_eagle.data.datasets import IGNORE_INDEX
from nemo_eagle.data.padding import pad_rows

PACKING_MASKS = ("position_ids", "block")


def block_causal_mask(lengths: Sequence[int]) -> torch.Tensor:
    """(1, 1, L, L) bool mask, True where token q may attend to token k (same sample and k <= q)."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
    n = int(seg.numel())
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    return allowed[None, None]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool 4-D mask as the additive float mask eager attention adds to its scores (0 or dtype-min)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class EagleCollator:
    """samples (dicts from ``encode_conversation``; None entries are dropped) -> a model batch dict."""

    def __init__(self, pad_token_id: int, *, pack: bool = False, packing_mask: str = "position_ids",
                 pad_to_multiple_of: int = 1):
        if packing_mask not in PACKING_MASKS:
            raise ValueError(f"packing_mask must be one of {PACKING_MASKS}, got {packing_mask!r}")
        self.pad_token_id = pad_token_id
        self.pack = pack
        self.packing_mask = packing_mask
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [s for s in samples if s is not None]
        if not kept:
            return {"num_samples": 0, "num_skipped": len(samples), "sample_ids": []}
        batch = self._packed(kept) if self.pack else self._padded(kept)
        pixels = [s["pixel_values"] for s in kept if s["pixel_values"].numel()]
        batch["pixel_values"] = torch.cat(pixels) if pixels else None
        batch["num_tiles"] = torch.tensor([n for s in kept for n in s["num_tiles"]], dtype=torch.long)
        batch["num_samples"] = len(kept)
        batch["num_skipped"] = len(samples) - len(kept)
        batch["num_tokens"] = sum(int(s["input_ids"].numel()) for s in kept)
        batch["sample_ids"] = [s["id"] for s in kept]
        return batch

    def _round(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return (n + m - 1) // m * m

    def _padded(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        m = self.pad_to_multiple_of
        ids, mask = pad_rows([s["input_ids"] for s in samples], self.pad_token_id, multiple_of=m)
        labels, _ = pad_rows([s["labels"] for s in samples], IGNORE_INDEX, multiple_of=m)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": None}

    def _packed(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [int(s["input_ids"].numel()) for s in samples]
        pad = self._round(sum(lengths)) - sum(lengths)
        ids = [s["input_ids"] for s in samples]
        labels = []
        for s in samples:
            lab = s["labels"].clone()
            lab[0] = IGNORE_INDEX  # never learn a sample's first token from the previous sample's last one
            labels.append(lab)
        if pad:  # padding is its own "sample": attends only to itself, no loss
            lengths = lengths + [pad]
            ids.append(torch.full((pad,), self.pad_token_id, dtype=torch.long))
            labels.append(torch.full((pad,), IGNORE_INDEX, dtype=torch.long))
        positions = torch.cat([torch.arange(n) for n in lengths])
        out = {"input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None], "position_ids": positions[None],
               "attention_mask": None, "seq_lengths": torch.tensor(lengths, dtype=torch.long)}
        if self.packing_mask == "block":
            out["attention_mask"] = block_causal_mask(lengths)
        return out
