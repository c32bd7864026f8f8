"""A KV cache preallocated once, in fixed slots: one slot per running sequence, each ``max_len`` positions long.

Why our own: transformers' ``StaticCache`` shares one write position (``cache_position``) across the batch, so
rows that joined at different times cannot decode together; its continuous-batching ``PagedAttentionCache``
only runs behind its own manager, which takes token ids, not the merged text+image embeddings EAGLE2 needs.
This class keeps the transformers ``Cache`` call contract the attention layers use (``update`` returns the
keys/values to attend to), and the runner passes a ready 4D mask, so transformers builds none.

Slot-based, not paged: a slot reserves ``max_len`` positions when its request is admitted, so a running
request can never run out of cache and nothing is ever preempted. The price is memory held for the longest
possible sequence; the number of slots comes from a byte budget (``slots_for_budget``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int
    max_len: int
    dtype: torch.dtype

    @property
    def bytes_per_slot(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.max_len * torch.finfo(self.dtype).bits // 8

    @classmethod
    def of(cls, llm_config, max_len: int, dtype: torch.dtype) -> CacheShape:
        heads = llm_config.num_attention_heads
        head_dim = getattr(llm_config, "head_dim", None) or llm_config.hidden_size // heads
        return cls(layers=llm_config.num_hidden_layers, kv_heads=getattr(llm_config, "num_key_value_heads", None)
                   or heads, head_dim=head_dim, max_len=max_len, dtype=dtype)


def slots_for_budget(shape: CacheShape, *, memory_bytes: int | None, max_num_seqs: int | None) -> int:
    """How many slots to preallocate: what ``memory_bytes`` holds, capped by ``max_num_seqs`` (one of the two
    must be given)."""
    if memory_bytes is None and max_num_seqs is None:
        raise ValueError("give a KV-cache memory budget or a number of sequences")
    n = max_num_seqs if memory_bytes is None else memory_bytes // shape.bytes_per_slot
    if max_num_seqs is not None:
        n = min(n, max_num_seqs)
    if n < 1:
        raise ValueError(f"a KV-cache budget of {memory_bytes} bytes holds no sequence: one slot of {shape.max_len} "
                         f"positions needs {shape.bytes_per_slot} bytes; raise --kv-cache-memory or lower "
                         "--max-model-len")
    return int(n)


class SlotKVCache:
    """``slots`` sequences of up to ``max_len`` positions, for every layer, allocated at construction."""

    def __init__(self, shape: CacheShape, slots: int, device: torch.device | str, *, scratch: bool = False):
        self.shape, self.slots = shape, slots
        # ``scratch``: one more slot, never allocated, that the padding rows of a fixed-size decode batch write to
        self.scratch = slots if scratch else None
        dims = (slots + int(scratch), shape.kv_heads, shape.max_len, shape.head_dim)
        self.k = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.layers)]
        self.v = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.layers)]
        self.free: list[int] = list(range(slots))  # lowest first: running slots stay packed at the front

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def allocate(self, prefer: int | None = None) -> int | None:
        """A free slot: ``prefer`` if it is free (it holds a prefix the new sequence reuses), else the lowest."""
        if not self.free:
            return None
        if prefer is not None and prefer in self.free:
            self.free.remove(prefer)
            return prefer
        self.free.sort()
        return self.free.pop(0)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Positions ``0..n`` of slot ``src`` into slot ``dst``, in every layer."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]

    def release(self, slot: int) -> None:
        if slot in self.free or not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not allocated")
        self.free.append(slot)

    @property
    def used(self) -> int:
        return self.slots - len(self.free)

    # ---------------------------------------------------------------------------- views for one forward
    def prefill_view(self, slot: int, start: int) -> PrefillView:
        return PrefillView(self, slot, start)

    def decode_view(self, slots: list[int], lengths: Tensor) -> DecodeView:
        return DecodeView(self, slots, lengths)

    def static_decode_view(self, index: Tensor, lengths: Tensor) -> StaticDecodeView:
        return StaticDecodeView(self, index, lengths)


class _View:
    """What a transformers attention layer sees as ``cache``: ``update`` stores the new keys/values and returns
    everything the queries attend to (the mask, built by the runner, hides positions not written yet)."""

    is_compileable = False

    def __init__(self, cache: SlotKVCache):
        self.cache = cache

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only asked when position_ids are missing
        raise RuntimeError("the slot cache needs explicit position_ids")


class PrefillView(_View):
    """One sequence's prompt chunk written at positions ``start .. start + n`` of its slot."""

    def __init__(self, cache: SlotKVCache, slot: int, start: int):
        super().__init__(cache)
        self.slot, self.start = slot, start

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        n = key.shape[-2]  # key: (1, kv_heads, n, head_dim)
        end = self.start + n
        k, v = self.cache.k[layer_idx], self.cache.v[layer_idx]
        k[self.slot, :, self.start:end] = key[0]
        v[self.slot, :, self.start:end] = value[0]
        return k[self.slot:self.slot + 1, :, :end], v[self.slot:self.slot + 1, :, :end]


class DecodeView(_View):
    """One new token per running sequence, row ``i`` written at position ``lengths[i]`` of slot ``slots[i]``."""

    def __init__(self, cache: SlotKVCache, slots: list[int], lengths: Tensor):
        super().__init__(cache)
        self.lengths = lengths
        self.kv_len = int(lengths.max()) + 1
        first = slots[0]
        # running slots packed at the front (the usual case): attend through a view, no copy
        self.packed = slots == list(range(first, first + len(slots)))
        self.rows = slice(first, first + len(slots)) if self.packed else torch.tensor(slots, device=lengths.device)
        self.index = torch.tensor(slots, device=lengths.device)

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        k, v = self.cache.k[layer_idx], self.cache.v[layer_idx]
        k[self.index, :, self.lengths] = key[:, :, 0]  # key: (B, kv_heads, 1, head_dim)
        v[self.index, :, self.lengths] = value[:, :, 0]
        return k[self.rows, :, :self.kv_len], v[self.rows, :, :self.kv_len]


class StaticDecodeView(_View):
    """The decode step with shapes fixed by the batch size alone (what a CUDA graph replays): row ``i`` writes at
    ``lengths[i]`` of slot ``index[i]`` and attends over the slot's whole ``max_len`` (the mask hides the rest).
    ``index`` and ``lengths`` are persistent buffers the caller fills before each replay."""

    def __init__(self, cache: SlotKVCache, index: Tensor, lengths: Tensor):
        super().__init__(cache)
        self.index, self.lengths = index, lengths

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        k, v = self.cache.k[layer_idx], self.cache.v[layer_idx]
        k[self.index, :, self.lengths] = key[:, :, 0]
        v[self.index, :, self.lengths] = value[:, :, 0]
        return k.index_select(0, self.index), v.index_select(0, self.index)
