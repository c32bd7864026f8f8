"""Grounding: box parsing into pixel coordinates under each convention, and drawing."""

import pytest
from PIL import Image

from nemo_eagle.grounding import draw_boxes, grounding_prompt, parse_boxes


def test_norm1000_boxes_scale_to_pixels():
    text = ("There is <ref>a cat</ref><box>[[100, 200, 500, 1000]]</box> and "
            "<ref>dogs</ref><box>[[0,0,10,10], [990, 990, 1000, 1000]]</box>.")
    boxes = parse_boxes(text, 640, 480)
    assert [b.label for b in boxes] == ["a cat", "dogs", "dogs"]
    assert boxes[0].as_tuple() == pytest.approx((64.0, 96.0, 320.0, 480.0))
    assert boxes[2].as_tuple() == pytest.approx((633.6, 475.2, 640.0, 480.0))


def test_other_conventions_clamping_and_order():
    assert parse_boxes("<box>[[0.5, 0.25, 0.1, 1.5]]</box>", 200, 100, convention="norm1")[0].as_tuple() == (
        20.0,
        25.0,
        100.0,
        100.0,
    )
    assert parse_boxes("<box>[[-5, 3, 30, 40]]</box>", 20, 20, convention="pixel")[0].as_tuple() == (
        0.0,
        3.0,
        20.0,
        20.0,
    )
    assert parse_boxes("no boxes at all", 10, 10) == []
    with pytest.raises(ValueError, match="unknown box convention"):
        parse_boxes("", 1, 1, convention="yolo")


def test_prompt_and_drawing(tmp_path):
    assert "<ref>the red car</ref>" in grounding_prompt("the red car")
    img = Image.new("RGB", (100, 100), "white")
    out = draw_boxes(img, parse_boxes("<ref>x</ref><box>[[100,100,500,500]]</box>", 100, 100), tmp_path / "b.png")
    drawn = Image.open(out).convert("RGB")
    assert drawn.getpixel((10, 30)) != (255, 255, 255)  # left edge of the box
    assert drawn.getpixel((30, 30)) == (255, 255, 255)  # inside stays white
