"""WebDataset tar shards give the same samples as the JSONL export of the same data."""

from __future__ import annotations

import io
import json

import pytest
import torch
from data_helpers import llava, write_jsonl, write_shard
from PIL import Image

from nemo_eagle.data.datasets import BadSampleError, ConversationDataset, expand_shards


def _png(size, color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _samples():
    return [
        (
            "k0",
            llava("k0", "images/k0.png", [("human", "<image>\nwhat?"), ("gpt", "red")]),
            [("png", _png((28, 28), (255, 0, 0)))],
        ),
        (
            "k1",
            llava("k1", "images/k1.png", [("human", "<image>\nand?"), ("gpt", "wide blue")]),
            [("png", _png((84, 28), (0, 0, 255)))],
        ),
        (
            "k2",
            llava("k2", ["a", "b"], [("human", "<image><image>two?"), ("gpt", "yes")]),
            [("0.png", _png((28, 28), (1, 1, 1))), ("1.png", _png((28, 56), (2, 2, 2)))],
        ),
    ]


def test_shards_match_the_jsonl_export(tmp_path, small_processor):
    samples = _samples()
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "s-000000.tar", samples[:2])
    write_shard(shards / "s-000001.tar", samples[2:])
    # the same data as LLaVA JSONL with image files (k2's images under its own names)
    for key, rec, images in samples:
        for k, (ext, data) in enumerate(images):
            name = rec["image"] if isinstance(rec["image"], str) else f"images/{key}_{k}.png"
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    recs = [dict(rec) for _, rec, _ in samples]
    recs[2]["image"] = ["images/k2_0.png", "images/k2_1.png"]
    jsonl = write_jsonl(tmp_path / "data.jsonl", recs)

    from_json = ConversationDataset(str(jsonl), small_processor)
    for spec in (str(shards / "s-{000000..000001}.tar"), str(shards), str(shards / "*.tar")):
        from_tar = ConversationDataset(spec, small_processor)
        assert [c.id for c in from_tar.samples] == ["k0", "k1", "k2"]
        for i in range(3):
            a, b = from_json[(i, 4)], from_tar[(i, 4)]
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["num_tiles"] == b["num_tiles"]
    assert from_tar[(1, 4)]["num_tiles"] == [4]  # 3x1 grid + thumbnail


def test_numbered_images_keep_numeric_order_past_ten(tmp_path, small_processor):
    colors = [(20 * k, 255 - 20 * k, 0) for k in range(12)]  # 12 one-tile images: 10.png and 11.png sort after 9.png
    images = [(f"{k}.png", _png((28, 28), c)) for k, c in enumerate(colors)]
    rec = llava("many", None, [("human", "<image>" * 12 + "which?"), ("gpt", "all")])
    ds = ConversationDataset(str(write_shard(tmp_path / "m.tar", [("many", rec, images)])), small_processor)
    pixels = ds[(0, 1)]["pixel_values"]
    assert pixels.shape[0] == 12
    for k, (r, g, _) in enumerate(colors):  # SigLIP normalisation: (v - 127.5) / 127.5
        assert torch.allclose(pixels[k, :2, 0, 0], torch.tensor([r, g]) / 127.5 - 1, atol=1e-6), k


def test_shard_sample_without_json_is_a_bad_record(tmp_path, small_processor):
    shard = write_shard(tmp_path / "x.tar", [("only-image", {}, [("png", _png((28, 28), (0, 0, 0)))])])
    # rewrite without the json member
    import tarfile

    with tarfile.open(shard, "w") as tar:
        data = _png((28, 28), (0, 0, 0))
        info = tarfile.TarInfo("only-image.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        good = json.dumps(llava("g", None, [("human", "hi"), ("gpt", "yo")])).encode()
        info = tarfile.TarInfo("g.json")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
    ds = ConversationDataset(str(shard), small_processor, on_bad_sample="skip")
    assert [c.id for c in ds.samples] == ["g"] and ds.report.skipped["bad_record"] == 1
    with pytest.raises(BadSampleError, match="no only-image.json member"):
        ConversationDataset(str(shard), small_processor, on_bad_sample="error")


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="s-000001.tar"):
        expand_shards(str(tmp_path / "s-{000000..000001}.tar"))
