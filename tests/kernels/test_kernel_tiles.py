"""tile_images: the Triton kernel (interpreted on CPU) against the torch reference, at tiny odd shapes.

The reference is torch's own ``F.interpolate(uint8, bicubic, antialias=True)`` + crop + thumbnail + normalise.
The kernel reproduces torch's fixed-point arithmetic, so the uint8 levels match exactly (the contract allows one
level) and the normalised floats are the reference's values for those levels.
"""

from __future__ import annotations

import pytest
import torch

from nemo_eagle.ops import get_op, reference
from nemo_eagle.tiling import plan_tiles

pytestmark = pytest.mark.usefixtures("interpreter")


def _levels(tiles: torch.Tensor) -> torch.Tensor:
    """Normalised SigLIP tiles back to uint8 levels (exact: x = (v - 127.5) / 127.5)."""
    return torch.round(tiles * 127.5 + 127.5).to(torch.int16)


def _assert_tiles_match(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == torch.float32
    level_diff = (_levels(got) - _levels(want)).abs().max().item()
    assert level_diff <= 1, f"resize differs by {level_diff} uint8 levels"
    # Every value the kernel writes is the reference's normalisation of some level: exact, not approximately.
    assert torch.equal(got, reference.normalize(_levels(got).to(torch.uint8)))
    # And the kernel reproduces torch's fixed-point resize, so the levels agree everywhere.
    assert torch.equal(got, want)


# (H, W, grid=(cols, rows), tile size): downscale, upscale, one axis unchanged, 1x1 (no thumbnail), thin images
CASES = [
    (37, 53, (2, 1), 14),
    (9, 11, (3, 2), 14),
    (61, 28, (1, 2), 28),  # width already cols*S: torch skips the horizontal pass
    (28, 45, (2, 1), 28),  # height already rows*S: the vertical pass is the identity
    (28, 28, (1, 1), 28),  # nothing to resize, one tile and no thumbnail
    (5, 97, (3, 1), 15),
    (83, 2, (1, 3), 13),
]


@pytest.mark.parametrize("h,w,grid,size", CASES)
def test_tile_images_matches_reference(h, w, grid, size):
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    got = get_op("tile_images", "triton")(image, grid, size)
    _assert_tiles_match(got, reference.tile_images(image, grid, size))


def test_tile_images_saturating_edges_and_strided_input():
    # Black/white checkerboard: bicubic overshoots, so the clamp to [0, 255] is exercised. The image is an
    # (H, W, 3) buffer viewed as (3, H, W), as decoded images arrive, so the kernel must honour the strides.
    hwc = ((torch.arange(31)[:, None] + torch.arange(47)[None, :]) % 2 * 255).to(torch.uint8)
    hwc = torch.stack([hwc, 255 - hwc, hwc], dim=-1)
    image = hwc.permute(2, 0, 1)
    assert not image.is_contiguous()
    got = get_op("tile_images", "triton")(image, (2, 3), 14)
    _assert_tiles_match(got, reference.tile_images(image.contiguous(), (2, 3), 14))


def test_tile_images_without_thumbnail_and_other_normalisation():
    image = torch.randint(0, 256, (3, 40, 33), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = get_op("tile_images", "triton")(image, (2, 2), 14, False, mean, std)
    want = reference.tile_images(image, (2, 2), 14, False, mean, std)
    assert got.shape == (4, 3, 14, 14)
    assert torch.equal(got, want)


def test_tile_images_on_fixture_image_with_its_plan(fixtures_dir):
    from nemo_eagle.data.images import load_image

    image = load_image(fixtures_dir / "images" / "rgba_200x150.png")
    plan = plan_tiles(image.shape[2], image.shape[1], max_tiles=6, tile_size=28)
    got = get_op("tile_images", "triton")(image, plan.grid, 28)
    assert got.shape[0] == plan.num_tiles
    _assert_tiles_match(got, reference.tile_images(image, plan.grid, 28))


@pytest.mark.parametrize(
    "image,grid,match",
    [
        (torch.zeros(3, 8, 8), (1, 1), "uint8"),
        (torch.zeros(4, 8, 8, dtype=torch.uint8), (1, 1), r"\(3, H, W\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), (0, 2), "positive"),
        (torch.zeros(3, 0, 8, dtype=torch.uint8), (1, 1), "no pixels"),
    ],
)
def test_tile_images_rejects_bad_input(image, grid, match):
    with pytest.raises(ValueError, match=match):
        get_op("tile_images", "triton")(image, grid, 14)


def test_tile_images_op_schema_and_fake_tensor():
    from triton_kernels.tiles import tile_images_op

    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    result = torch.library.opcheck(tile_images_op, (image, 2, 1, 14, True, [0.5] * 3, [0.5] * 3),
                                   test_utils=("test_schema", "test_faketensor"))
    assert set(result.values()) == {"SUCCESS"}
