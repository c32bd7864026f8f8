"""Vision-tower outputs kept for repeated images: every turn of a multi-turn chat re-sends the same image.

Keyed by the image's content hash and its tiling plan (the same bytes tiled another way are other features);
an LRU bounded in bytes. The value is the projector's output for that image's tiles, (tiles, tokens, hidden).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor

from nemo_eagle.tiling import TilePlan


def image_key(data: bytes, plan: TilePlan) -> tuple:
    return (hashlib.sha256(data).digest(), plan.grid, plan.num_tiles, plan.tile_size)


@dataclass
class VisionCacheStats:
    hits: int = 0
    misses: int = 0
    seconds_saved: float = 0.0  # vision-tower time the hits would have cost (measured on their first encoding)
    bytes: int = 0
    entries: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class VisionCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple, tuple[Tensor, float]] = OrderedDict()
        self.stats = VisionCacheStats()
        self.lock = threading.Lock()

    def get(self, key: tuple) -> Tensor | None:
        with self.lock:
            item = self.items.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self.items.move_to_end(key)
            self.stats.hits += 1
            self.stats.seconds_saved += item[1]
            return item[0]

    def put(self, key: tuple, features: Tensor, seconds: float) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = (features, seconds)
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                _, (old, _) = self.items.popitem(last=False)
                self.stats.bytes -= old.numel() * old.element_size()
            self.stats.entries = len(self.items)
