"""The Eagle2 dynamic tiling rule (image area preservation), exactly as NVIDIA's processor applies it.

Pure functions, no torch: ``candidate_grids`` (the reference's visiting order), ``select_grid`` (float64 score,
first strictly-greatest wins), ``plan_tiles`` (grid + tile count, optionally shrunk to a token budget) and
``num_image_tokens``. Everything else in the package imports these; there is no second copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

log = logging.getLogger(__name__)

AREA_CAP = 0.6  # the area term saturates at 60% of the image area


@lru_cache(maxsize=256)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, in the order the reference visits them.

    NOTE: the reference builds a Python ``set`` of tuples and stable-sorts it by tile count, so ties in
    tile count keep CPython's set iteration order, which depends on the set's size. Building the set the
    same way reproduces that order for any limits.
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = set(
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    )
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def grid_score(cols: int, rows: int, width: int, height: int, tile_size: int) -> float:
    """Area-preservation score of one grid, evaluated in float64 in the reference's operation order."""
    aspect = width / height
    area = width * height
    grid_aspect = cols / rows
    return min(cols * rows * tile_size * tile_size / area, AREA_CAP) * min(grid_aspect / aspect, aspect / grid_aspect)


def select_grid(
    width: int, height: int, *, min_tiles: int = 1, max_tiles: int = 12, tile_size: int = 448
) -> tuple[int, int]:
    """The (cols, rows) grid Eagle2 picks for a width x height image: the first strictly-best candidate."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    best, best_score = None, -1.0
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        score = grid_score(cols, rows, width, height, tile_size)
        if score > best_score:
            best, best_score = (cols, rows), score
    assert best is not None
    return best


def count_tiles(grid: tuple[int, int], use_thumbnail: bool) -> int:
    cols, rows = grid
    return cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0)


@dataclass(frozen=True)
class TilePlan:
    """What tiling decided for one image."""

    width: int
    height: int
    grid: tuple[int, int]  # (cols, rows)
    num_tiles: int  # cols*rows plus the thumbnail, if any
    tile_size: int
    use_thumbnail: bool
    max_tiles: int  # the limit the grid was chosen under (lower than requested if a budget shrank it)
    requested_max_tiles: int
    tokens_per_tile: int = 256
    notes: tuple[str, ...] = field(default=())

    @property
    def has_thumbnail(self) -> bool:
        return self.num_tiles != self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return num_image_tokens(self.num_tiles, self.tokens_per_tile)

    @property
    def reduced(self) -> bool:
        return self.max_tiles < self.requested_max_tiles

    def describe(self) -> str:
        cols, rows = self.grid
        s = (
            f"{self.width}x{self.height} -> grid {cols}x{rows} ({cols * self.tile_size}x{rows * self.tile_size}), "
            f"{self.num_tiles} tile{'' if self.num_tiles == 1 else 's'}"
            f"{' incl. thumbnail' if self.has_thumbnail else ''}, {self.num_tokens} image tokens"
        )
        if self.reduced:
            s += f" (max_tiles lowered {self.requested_max_tiles} -> {self.max_tiles} to fit the token budget)"
        return s

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "grid": list(self.grid), "num_tiles": self.num_tiles,
                "num_tokens": self.num_tokens, "max_tiles": self.max_tiles,
                "requested_max_tiles": self.requested_max_tiles, "reduced": self.reduced}


def plan_tiles(
    width: int,
    height: int,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    tile_size: int = 448,
    tokens_per_tile: int = 256,
    max_image_tokens: int | None = None,
) -> TilePlan:
    """The tiling plan of one image.

    With ``max_image_tokens`` (an option the reference lacks) the tile limit is lowered step by step until the
    image fits, never below one tile; a budget smaller than one tile still gives one tile, and the plan says so.
    """
    grid = select_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile_size=tile_size)
    limit = max_tiles
    n = count_tiles(grid, use_thumbnail)
    notes: list[str] = []
    if max_image_tokens is not None:
        while n * tokens_per_tile > max_image_tokens and limit > 1:
            limit -= 1
            lo = min(min_tiles, limit)
            grid = select_grid(width, height, min_tiles=lo, max_tiles=limit, tile_size=tile_size)
            n = count_tiles(grid, use_thumbnail)
        if n * tokens_per_tile > max_image_tokens:
            notes.append(f"budget of {max_image_tokens} tokens is below one tile ({tokens_per_tile}); using 1 tile")
    plan = TilePlan(
        width=width,
        height=height,
        grid=grid,
        num_tiles=n,
        tile_size=tile_size,
        use_thumbnail=use_thumbnail,
        max_tiles=limit,
        requested_max_tiles=max_tiles,
        tokens_per_tile=tokens_per_tile,
        notes=tuple(notes),
    )
    if plan.reduced:
        log.info("tiling plan reduced: %s", plan.describe())
    return plan


def num_image_tokens(num_tiles: int, tokens_per_tile: int = 256) -> int:
    return num_tiles * tokens_per_tile


def fit_plans_to_budget(
    sizes: list[tuple[int, int]],
    budget: int,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    tile_size: int = 448,
    tokens_per_tile: int = 256,
) -> list[TilePlan]:
    """Plans for several images that together fit ``budget`` image tokens.

    The shared limit is lowered until the total fits (every image keeps at least one tile); if even one tile
    each does not fit, the one-tile plans are returned and the caller decides (serving answers 400).
    """
    limit = max_tiles
    while True:
        lo = min(min_tiles, limit)
        plans = [plan_tiles(w, h, min_tiles=lo, max_tiles=limit, use_thumbnail=use_thumbnail, tile_size=tile_size,
                            tokens_per_tile=tokens_per_tile) for w, h in sizes]
        if sum(p.num_tokens for p in plans) <= budget or limit == 1:
            break
        limit -= 1
    if limit < max_tiles:
        plans = [TilePlan(**{**p.__dict__, "requested_max_tiles": max_tiles}) for p in plans]
        log.info("tiling reduced to max_tiles=%d so %d image(s) fit %d tokens", limit, len(sizes), budget)
    return plans
