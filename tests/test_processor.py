"""EagleProcessor: prompt formats, several images, batches, image modes and bad input."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_eagle import EagleProcessor
from nemo_eagle.config import TilingConfig
from nemo_eagle.data.images import ImageError, load_image
from nemo_eagle.ops.reference import tile_images_uint8


@pytest.fixture(scope="module")
def proc(tiny_ckpt):
    return EagleProcessor.from_pretrained(tiny_ckpt)


def _img(w, h, mode="RGB", color=(200, 30, 60)):
    return Image.new(mode, (w, h), color if mode == "RGB" else None)


def test_template_renders_spec_string(proc):
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image-1>Hi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert proc.expand_prompt(text, [2]) .count("<IMG_CONTEXT>") == 512
    assert "<image 1><img><IMG_CONTEXT>" in proc.expand_prompt(text, [2])
    assert "</img>Hi?" in proc.expand_prompt(text, [2])  # no newline after </img>


def test_multi_turn_and_system(proc):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
        "<|im_start|>user\nc<|im_end|>\n"
    )


def test_several_images_in_placeholder_order(proc):
    a, b = _img(448, 448, color=(255, 0, 0)), _img(900, 448, color=(0, 0, 255))
    text = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}, {"type": "text", "text": "?"}]}])
    batch = proc(text=text, images=[a, b])
    assert batch["num_tiles"].tolist() == [1, 3]
    ids = batch["input_ids"][0]
    assert int((ids == proc.tokenizer.image_token_id).sum()) == 4 * 256
    px = batch["pixel_values"]
    assert px.shape == (4, 3, 448, 448)
    assert torch.allclose(px[0, 0], torch.full((448, 448), 1.0))  # red image first
    assert torch.allclose(px[1, 2], torch.full((448, 448), 1.0))  # then the blue one's tiles
    decoded = proc.decode(ids.tolist(), skip_special_tokens=False)
    assert decoded.index("<image 1>") < decoded.index("<image 2>")


def test_batch_with_different_image_counts_left_padded(proc):
    t1 = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]}]
    )
    t2 = proc.apply_chat_template([{"role": "user", "content": "only text"}])
    t3 = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "y"}]}])
    imgs = [_img(448, 448), _img(448, 448), _img(448, 448)]
    batch = proc(text=[t1, t2, t3], images=imgs)
    assert batch["num_tiles"].tolist() == [1, 1, 1]
    mask = batch["attention_mask"]
    assert mask[0].all() and not mask[1].all() and mask[1, -1] == 1 and mask[1, 0] == 0
    nested = proc(text=[t1, t2, t3], images=[imgs[:2], [], imgs[2:]])
    assert torch.equal(nested["input_ids"], batch["input_ids"])
    right = proc(text=[t1, t2], images=imgs[:2], padding_side="right")
    assert right["attention_mask"][1, 0] == 1 and right["attention_mask"][1, -1] == 0


def test_per_call_max_tiles_and_budget(proc):
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
    img = _img(1600, 1200)
    assert proc(text=text, images=[img])["num_tiles"].tolist() == [13]
    assert proc(text=text, images=[img], max_tiles=6)["num_tiles"].tolist() == [7]
    b = proc(text=text, images=[img], max_image_tokens=4 * 256)
    assert b["num_tiles"].tolist()[0] <= 4 and b.plans[0].reduced


def test_image_count_mismatch_raises(proc):
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
    with pytest.raises(ValueError, match="2 image\\(s\\) given but the prompt\\(s\\) have 1"):
        proc(text=text, images=[_img(10, 10), _img(10, 10)])
    with pytest.raises(ValueError, match="0 image"):
        proc(text=text)


def test_legacy_eagle_chat_format(tiny_ckpt):
    base = EagleProcessor.from_pretrained(tiny_ckpt)
    legacy = EagleProcessor(base.tokenizer, TilingConfig(prompt_format="eagle_chat"))
    text = legacy.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nQ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert legacy.expand_prompt(text, [1]).count("<IMG_CONTEXT>") == 256
    assert "<img><IMG_CONTEXT>" in legacy.expand_prompt(text, [1]) and "</img>\nQ?" in legacy.expand_prompt(text, [1])
    buggy = EagleProcessor(base.tokenizer, TilingConfig(prompt_format="eagle_chat", legacy_generation_prompt_bug=True))
    assert buggy.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("user\nhi<|im_end|>assistant\n")
    two = legacy.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}]
    )
    assert "Image-1: <image>\nImage-2: <image>\n?" in two


def test_rgba_composited_over_white_palette_grey():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent -> white
    assert load_image(rgba).unique().tolist() == [255]
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert load_image(half)[0, 0, 0].item() in (127, 128)
    grey = Image.new("L", (5, 3), 77)
    t = load_image(grey)
    assert t.shape == (3, 3, 5) and t.unique().tolist() == [77]
    pal = Image.new("RGB", (6, 6), (255, 0, 0)).convert("P")
    assert pal.mode == "P" and load_image(pal)[:, 0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    t = load_image(buf.getvalue())
    assert t.shape == (3, 40, 20)  # displayed portrait
    assert t[:, :10].float().mean() > 200 and t[:, 30:].float().mean() < 50  # white ends up on top


def test_bad_images_raise_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is text, not a picture")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(buf.getvalue()[:60])
    with pytest.raises(ImageError, match="no pixels"):
        load_image(torch.zeros(3, 0, 5, dtype=torch.uint8))
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="empty file"):
        (tmp_path / "empty.png").write_bytes(b"")
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(Image.new("L", (5000, 5000)), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="invalid base64"):
        load_image("data:image/png;base64,@@@@")


def test_tiles_row_major_and_thumbnail_last():
    # a 2x1 grid image: left half 0, right half 255 -> tile 0 dark, tile 1 bright, thumbnail mixed
    img = torch.zeros(3, 28, 56, dtype=torch.uint8)
    img[:, :, 28:] = 255
    tiles = tile_images_uint8(img, (2, 1), tile_size=28, use_thumbnail=True)
    assert tiles.shape == (3, 3, 28, 28)
    assert tiles[0].max() == 0 and tiles[1].min() == 255
    assert tiles[2].float().mean().item() == pytest.approx(127.5, abs=5)
    assert np.array_equal(tile_images_uint8(img, (1, 1), 28, True).shape, (1, 3, 28, 28))  # no thumbnail for 1 tile
