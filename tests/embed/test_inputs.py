"""Input parsing and NONE / START / END truncation (never inside an image block; tiles shrink first)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch

from nemo_eagle.embed import EagleEmbedder
from nemo_eagle.embed.inputs import InputTooLongError, parse_input

LONG = " ".join(f"word{i}" for i in range(120))


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _with(emb: EagleEmbedder, **kw) -> EagleEmbedder:
    """A second embedder over the same weights with other settings."""
    return EagleEmbedder(emb.model, emb.processor, emb.config, **kw)


def test_parse_input_forms(pages):
    url = _data_url(pages[0])
    assert parse_input(url).images == [url] and parse_input(url).text == ""
    mixed = parse_input(f"the chart {url} shows revenue")
    assert mixed.images == [url] and mixed.text == "the chart shows revenue"
    tagged = parse_input(f'<img src="{url}"/> caption')
    assert tagged.images == [url] and tagged.text == "caption"
    assert parse_input((pages[0], "cap")).text == "cap" and parse_input(("cap", pages[0])).images == [pages[0]]
    assert parse_input({"image": "x.png", "text": "t"}).images == [Path("x.png")]
    assert parse_input("a/b.png").images == []  # a plain string is text, never a path
    with pytest.raises(ValueError, match="input 3: unsupported input type int"):
        parse_input(5, 3)
    with pytest.raises(ValueError, match="unknown keys"):
        parse_input({"txt": "typo"})
    with pytest.raises(ValueError, match="at most one text"):
        parse_input(("a", "b"))


def test_truncate_none_raises_and_bad_mode(single_embedder):
    emb = _with(single_embedder, max_length=32)
    with pytest.raises(InputTooLongError, match=r"input 0 has \d+ tokens, more than max_length=32"):
        emb.embed([LONG], "passage")
    with pytest.raises(ValueError, match="truncate must be one of"):
        emb.embed([LONG], "passage", truncate="MIDDLE")


def test_text_truncation_matches_tokenizer(single_embedder):
    tok = single_embedder.processor.tokenizer
    emb = _with(single_embedder, max_length=40)
    full = tok.encode("passage: " + LONG)
    prefix = tok.encode("passage:")
    end = emb.prepare([LONG], "passage", truncate="END")
    start = emb.prepare([LONG], "passage", truncate="START")
    assert end.input_ids[0].tolist() == full[:40]
    assert start.input_ids[0].tolist() == prefix + full[len(prefix):][-(40 - len(prefix)):]
    assert end.truncated == [True] and start.truncated == [True]
    vec = emb.embed([LONG], "passage", truncate="START")
    torch.testing.assert_close(vec.norm(dim=-1), torch.ones(1))


def _check_blocks(emb: EagleEmbedder, batch) -> int:
    """Every image block is whole and matches the tiles; returns the number of image tokens."""
    tok = emb.processor.tokenizer
    ids = batch.input_ids[0, : batch.num_tokens[0]].tolist()
    n_ctx = ids.count(tok.image_token_id)
    tiles = 0 if batch.pixel_values is None else batch.pixel_values.shape[0]
    assert n_ctx == tiles * emb.processor.tokens_per_tile
    assert ids.count(tok.img_start_id) == ids.count(tok.img_end_id)
    if n_ctx:
        s, e = ids.index(tok.img_start_id), ids.index(tok.img_end_id)
        assert set(ids[s + 1:e]) == {tok.image_token_id}
    return n_ctx


def test_cut_never_lands_inside_an_image(single_embedder, pages):
    base = single_embedder.prepare([(pages[0], LONG)], "passage")
    n = base.num_tokens[0]
    assert _check_blocks(single_embedder, base) == 256
    # A few tokens short: the cut falls in text, on either side, and the image survives whole.
    for side in ("END", "START"):
        b = _with(single_embedder, max_length=n - 3).prepare([(pages[0], LONG)], "passage", truncate=side)
        assert b.num_tokens[0] == n - 3 and _check_blocks(single_embedder, b) == 256
    # Far too short for the image (one tile is 256 tokens): the cut would land inside it, so it goes whole.
    for side in ("END", "START"):
        b = _with(single_embedder, max_length=100).prepare([(pages[0], LONG)], "passage", truncate=side)
        assert b.num_tokens[0] <= 100 and _check_blocks(single_embedder, b) == 0 and b.pixel_values is None
    kept = _with(single_embedder, max_length=100).prepare([(pages[0], LONG)], "passage", truncate="START")
    assert kept.input_ids[0, kept.num_tokens[0] - 1].item() == base.input_ids[0, n - 1].item()  # the tail stays


def test_tiles_shrink_before_anything_is_cut(single_embedder, page_factory):
    wide = page_factory(9, size=(400, 100))  # 4x1 grid + thumbnail at max_tiles=4
    emb = _with(single_embedder, max_tiles=4)
    full = emb.prepare([(wide, "caption")], "passage")
    assert full.pixel_values.shape[0] == 5
    small = _with(emb, max_length=full.num_tokens[0] - 600).prepare([(wide, "caption")], "passage", truncate="END")
    tiles = small.pixel_values.shape[0]
    assert 1 <= tiles < 5 and small.num_tokens[0] <= full.num_tokens[0] - 600
    assert _check_blocks(emb, small) == tiles * 256
    ids = small.input_ids[0, : small.num_tokens[0]].tolist()
    assert ids[-len(emb.processor.tokenizer.encode("caption")):] == emb.processor.tokenizer.encode("caption")
