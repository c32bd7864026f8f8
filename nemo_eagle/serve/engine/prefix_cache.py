"""KV prefix reuse: a prompt that begins like a sequence whose keys/values are still in a cache slot (a running
sequence, or a finished one whose slot has not been taken again) copies that prefix instead of computing it.
Every turn of a multi-turn chat resends the conversation so far, and many requests share one system prompt.

Positions are compared by identity, not by embedding: a text position by its token id, an image position by its
image's key (content hash + tiling plan, as in the vision cache) and its index within the image, so two different
images behind the same placeholder ids never match. A slot's record lists the positions whose keys/values it holds:
the prompt as far as it was prefilled, then every generated token a decode step wrote (the last sampled token has
no keys/values yet). The record is dropped when the slot is allocated again.

The reused keys/values are the ones the first sequence computed, in its own prompt chunks and decode steps; a new
prefill of the same positions would compute the same numbers up to floating-point summation order (as with any
change of batch shape), so a greedy answer equals the one served without reuse except where two tokens tie to
within rounding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

_INDEX_BITS = 20  # positions within one image (64 tiles x 256 tokens = 16384 < 2**20)


def image_position_ids(key: tuple, count: int) -> Tensor:
    """``count`` negative identities for the positions of one image (text ids are never negative)."""
    h = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=5).digest(), "big")
    return -((h << _INDEX_BITS) + torch.arange(count, dtype=torch.long) + 1)


def position_keys(input_ids: Tensor, image_token_id: int, image_keys: list[tuple],
                  image_tokens: list[int]) -> Tensor:
    """(L,) identities of a prompt's positions: token ids, with the image positions (in prompt order,
    ``image_tokens[i]`` for image ``i``) replaced by ``image_position_ids``. When the placeholders do not add up to
    the images' token counts, every image position gets an identity of its own (nothing past it is reused)."""
    keys = input_ids.reshape(-1).to(torch.long).clone()
    where = (keys == image_token_id).nonzero().reshape(-1)
    if len(where) != sum(image_tokens):
        keys[where] = -(torch.arange(len(where), dtype=torch.long) + 1) - (1 << 62)
        return keys
    at = 0
    for key, n in zip(image_keys, image_tokens):
        keys[where[at:at + n]] = image_position_ids(key, n)
        at += n
    return keys


@dataclass
class SlotRecord:
    prompt: Tensor  # (L,) position identities of the prompt
    written: int = 0  # positions whose keys/values the slot holds
    generated: list[int] = field(default_factory=list)  # tokens written after the prompt

    def held(self) -> Tensor:
        """Identities of the positions the slot holds."""
        past = self.written - len(self.prompt)
        if past <= 0:
            return self.prompt[:self.written]
        return torch.cat([self.prompt, torch.tensor(self.generated[:past], dtype=torch.long)])


@dataclass
class PrefixStats:
    hits: int = 0  # sequences that reused a prefix
    tokens: int = 0  # prompt positions copied instead of computed


class PrefixCache:
    """What each slot of a ``SlotKVCache`` holds, and the longest reusable prefix for a new prompt. Only the
    scheduler thread calls it."""

    def __init__(self, slots: int, min_tokens: int = 16):
        self.records: list[SlotRecord | None] = [None] * slots
        self.min_tokens = min_tokens
        self.stats = PrefixStats()

    def lookup(self, keys: Tensor) -> tuple[int | None, int]:
        """(slot, n): the slot holding the longest prefix of ``keys`` and its length, at most ``len(keys) - 1``
        (the last prompt position is always computed: its hidden state gives the first token); (None, 0) when no
        slot holds ``min_tokens`` of it."""
        best, best_n = None, 0
        limit = len(keys) - 1
        head = keys[:self.min_tokens]
        for slot, rec in enumerate(self.records):
            if rec is None or rec.written < self.min_tokens or not torch.equal(rec.prompt[:self.min_tokens], head):
                continue
            held = rec.held()
            n = min(limit, len(held))
            if n <= best_n:
                continue
            same = held[:n] == keys[:n]
            n = n if bool(same.all()) else int((~same).nonzero()[0])
            if n > best_n:
                best, best_n = slot, n
        return (best, best_n) if best_n >= self.min_tokens else (None, 0)

    def assign(self, slot: int, keys: Tensor, reused: int) -> None:
        """``slot`` now belongs to a sequence with prompt ``keys``, whose first ``reused`` positions were copied."""
        self.records[slot] = SlotRecord(keys, written=reused)
        if reused:
            self.stats.hits += 1
            self.stats.tokens += reused

    def prefilled(self, slot: int, pos: int) -> None:
        self.records[slot].written = pos

    def decoded(self, slot: int, token: int) -> None:
        """A decode step wrote ``token``'s keys/values at the slot's next position."""
        rec = self.records[slot]
        rec.generated.append(token)
        rec.written += 1
