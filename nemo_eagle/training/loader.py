"""Batch planning (token budget, mixture of resolution, sharding) and a data loader that resumes exactly.

``BatchPlanner.plan(epoch)`` is a pure function of (seed, epoch, dataset): the shuffled order, each sample's
view (low resolution = one tile, high resolution = the tiled view, lowered until it fits the budget) and the
grouping into micro-batches. ``ResumableLoader`` iterates a plan and reports, through ``state_dict``, the
position of the last batch the training step consumed (not the last one prefetched), so a checkpoint
resumes at exactly the next batch. Lightning saves and restores that state with the trainer checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from nemo_eagle.data.datasets import BadSampleError, ConversationDataset

log = logging.getLogger(__name__)

Item = tuple[int, int]  # (sample index, max_tiles for this draw)


@dataclass
class PlanConfig:
    micro_batch_size: int = 1
    max_tokens_per_batch: int = 0  # 0: unlimited
    packing: bool = False
    low_res_ratio: float = 0.0
    high_res_max_tiles: int = 12
    shuffle: bool = True
    seed: int = 1234
    pad_to_multiple_of: int = 1  # the collator's rounding: the budget holds the rounded length


class BatchPlanner:
    """Groups samples into micro-batches for one rank; deterministic in (seed, epoch)."""

    def __init__(self, dataset: ConversationDataset, cfg: PlanConfig, *, rank: int = 0, world_size: int = 1,
                 eligible: list[int] | None = None):
        self.dataset, self.cfg, self.rank, self.world_size = dataset, cfg, rank, world_size
        self._fingerprint: str | None = None
        self.eligible = eligible if eligible is not None else self._drop_too_long()

    def for_rank(self, rank: int, world_size: int) -> BatchPlanner:
        """The same plan seen from another rank (samples are not re-checked)."""
        return BatchPlanner(self.dataset, self.cfg, rank=rank, world_size=world_size, eligible=self.eligible)

    def _drop_too_long(self) -> list[int]:
        budget = self.cfg.max_tokens_per_batch
        if not budget:
            return list(range(len(self.dataset)))
        keep = []
        for i in range(len(self.dataset)):
            n = self.dataset.num_tokens(i, 1)
            if self._round(n) <= budget:
                keep.append(i)
                continue
            conv = self.dataset.samples[i]
            self.dataset.reject(BadSampleError(conv.id, "too_long", f"{n} tokens even with one tile per image, "
                                                                    f"over the budget of {budget}", conv.where))
        if not keep:
            raise ValueError(f"no sample fits data.max_tokens_per_batch={budget}")
        return keep

    def fingerprint(self) -> str:
        """Identifies what a position in the plan means (data and planning settings)."""
        if self._fingerprint is None:
            ids = "\n".join(c.id for c in self.dataset.samples)
            key = f"{self.cfg}|{self.world_size}|{ids}"  # ranks move in lockstep: rank 0's position fits all
            self._fingerprint = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self._fingerprint

    def view(self, i: int, low: bool) -> tuple[int, int]:
        """(max_tiles, tokens) of sample ``i``: one tile when low, else the largest limit that fits the budget."""
        if low:
            return 1, self.dataset.num_tokens(i, 1)
        budget = self.cfg.max_tokens_per_batch
        for max_tiles in range(self.cfg.high_res_max_tiles, 0, -1):
            n = self.dataset.num_tokens(i, max_tiles)
            if not budget or self._round(n) <= budget:
                return max_tiles, n
        return 1, self.dataset.num_tokens(i, 1)

    def plan(self, epoch: int) -> list[list[Item]]:
        """This rank's micro-batches of ``epoch`` (every rank gets the same number)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = [self.eligible[k] for k in (torch.randperm(len(self.eligible), generator=g).tolist()
                                            if cfg.shuffle else range(len(self.eligible)))]
        draws = torch.rand(len(self.eligible), generator=g).tolist()
        batches: list[list[Item]] = []
        cur: list[Item] = []
        cur_tokens: list[int] = []
        for i, u in zip(order, draws):
            max_tiles, n = self.view(i, u < cfg.low_res_ratio)
            if cur and not self._fits(cur_tokens + [n]):
                batches.append(cur)
                cur, cur_tokens = [], []
            cur.append((i, max_tiles))
            cur_tokens.append(n)
        if cur:
            batches.append(cur)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def _fits(self, tokens: list[int]) -> bool:
        if len(tokens) > self.cfg.micro_batch_size:
            return False
        budget = self.cfg.max_tokens_per_batch
        if not budget:
            return True
        # padded rows cost the longest; both layouts are rounded up as the collator pads them
        used = self._round(sum(tokens)) if self.cfg.packing else len(tokens) * self._round(max(tokens))
        return used <= budget

    def _round(self, n: int) -> int:
        m = max(self.cfg.pad_to_multiple_of, 1)
        return (n + m - 1) // m * m


class ResumableLoader:
    """An iterable of collated batches over ``planner.plan(epoch)`` for epoch 0, 1, ...; stateful for Lightning.

    Each batch carries ``position = (epoch, index)``; the training module calls ``mark_consumed(position)``
    when it trains on a batch, and ``state_dict`` reports the batch after the last consumed one, which is
    where a resumed run continues (prefetching by Lightning or by worker processes does not move it).
    """

    def __init__(self, dataset: ConversationDataset, planner: BatchPlanner, collate_fn: Callable, *,
                 num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.planner, self.collate_fn = dataset, planner, collate_fn
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._epoch, self._start = 0, 0
        self._consumed = {"epoch": 0, "next": 0}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self._epoch, self._start
        self._start = 0
        plan = self.planner.plan(epoch)
        if start:
            log.info("data: resuming epoch %d at batch %d of %d", epoch, start, len(plan))
        if start < len(plan):
            # NOTE: an own generator, so creating the iterator never draws from the global RNG (dropout's):
            # a resumed run would otherwise draw once more than the uninterrupted one.
            seed = self.planner.cfg.seed * 1_000_003 + epoch * 7919 + start
            loader = DataLoader(self.dataset, batch_sampler=plan[start:], collate_fn=self.collate_fn,
                                num_workers=self.num_workers, pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(seed))
            for j, batch in enumerate(loader):
                batch["position"] = (epoch, start + j)
                yield batch
        self._epoch = epoch + 1

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.planner.plan(epoch))

    # ------------------------------------------------------------------------------------------ state
    def mark_consumed(self, position: tuple[int, int]) -> None:
        epoch, index = (int(v) for v in position)
        self._consumed = {"epoch": epoch, "next": index + 1}

    def state_dict(self) -> dict[str, Any]:
        return dict(self._consumed, fingerprint=self.planner.fingerprint())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.planner.fingerprint():
            log.warning("data: the checkpoint's data plan differs from this run's (data or batching settings "
                        "changed); resuming at the same batch index anyway")
        self._epoch, self._start = int(state["epoch"]), int(state["next"])
        self._consumed = {"epoch": self._epoch, "next": self._start}
