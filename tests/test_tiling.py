"""The Eagle2 tiling rule against the reference's decisions and candidate orders (fixtures)."""

import json

import pytest

from nemo_eagle.tiling import candidate_grids, fit_plans_to_budget, plan_tiles, select_grid


def test_candidate_orders_match_reference(fixtures_dir):
    orders = json.loads((fixtures_dir / "tiling_candidate_orders.json").read_text())
    assert len(orders) > 20
    for key, expected in orders.items():
        lo, hi = map(int, key.split(","))
        assert [list(g) for g in candidate_grids(lo, hi)] == expected, key


def test_every_tiling_case_matches_reference(fixtures_dir):
    cases = json.loads((fixtures_dir / "tiling_cases.json").read_text())
    for c in cases:
        plan = plan_tiles(c["width"], c["height"], min_tiles=c["min_tiles"], max_tiles=c["max_tiles"],
                          use_thumbnail=c["use_thumbnail"])
        assert list(plan.grid) == c["grid"], c
        assert plan.num_tiles == c["num_tiles"], c


def test_float64_tie_2009_square_picks_3x4():
    assert select_grid(2009, 2009, max_tiles=12) == (3, 4)


@pytest.mark.parametrize("w,h", [(0, 10), (10, 0), (-5, 5)])
def test_zero_pixel_image_raises(w, h):
    with pytest.raises(ValueError, match="no pixels"):
        select_grid(w, h)


def test_bad_limits_raise():
    with pytest.raises(ValueError, match="min_tiles"):
        candidate_grids(3, 2)


def test_token_budget_lowers_tiles_and_reports():
    full = plan_tiles(4000, 3000, max_tiles=12)
    assert full.num_tiles == 13 and not full.reduced
    plan = plan_tiles(4000, 3000, max_tiles=12, max_image_tokens=5 * 256)
    assert plan.num_tokens <= 5 * 256
    assert plan.reduced and plan.requested_max_tiles == 12
    # the reduced grid is the rule's own choice under the lowered limit
    assert plan.grid == select_grid(4000, 3000, max_tiles=plan.max_tiles)
    assert "lowered 12 ->" in plan.describe()


def test_token_budget_never_below_one_tile():
    plan = plan_tiles(4000, 3000, max_image_tokens=10)
    assert plan.num_tiles == 1 and plan.grid == (1, 1)
    assert plan.notes and "below one tile" in plan.notes[0]


def test_fit_several_images_to_budget():
    sizes = [(1920, 1080), (800, 2400), (300, 300)]
    plans = fit_plans_to_budget(sizes, 20 * 256, max_tiles=12)
    assert sum(p.num_tokens for p in plans) <= 20 * 256
    assert all(p.reduced for p in plans)
    assert all(p.grid == select_grid(w, h, max_tiles=p.max_tiles) for p, (w, h) in zip(plans, sizes))
