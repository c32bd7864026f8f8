"""LLaVA and OpenAI-messages records tokenise exactly as the processor renders and tiles them; loss on replies only."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from data_helpers import llava, write_image, write_jsonl
from PIL import Image

from nemo_eagle.data.datasets import ConversationDataset, conversation_from_record, encode_conversation


def _label_spans(sample, processor) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != -100:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [processor.decode(r, skip_special_tokens=False) for r in runs]


def test_llava_multi_turn_multi_image_matches_processor(tmp_path, small_processor):
    a = write_image(tmp_path / "imgs" / "a.png", (28, 28), (255, 0, 0))
    b = write_image(tmp_path / "imgs" / "b.png", (56, 28), (0, 0, 255))  # 2x1 grid + thumbnail = 3 tiles
    rec = llava("s1", ["imgs/a.png", "imgs/b.png"], [
        ("human", "<image>\n<image>\nCompare them."), ("gpt", "Left is red."),
        ("human", "And now?"), ("gpt", "Same."),
    ])
    conv = conversation_from_record(rec, where="t", image_root=tmp_path)
    sample = encode_conversation(small_processor, conv)

    # the same conversation through the serving path: chat template + processor tiling and expansion
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare them."}]},
        {"role": "assistant", "content": "Left is red."},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Same."},
    ]
    text = small_processor.apply_chat_template(messages, add_generation_prompt=False)
    ref = small_processor(text=text, images=[str(a), str(b)])
    assert torch.equal(sample["input_ids"], ref["input_ids"][0])
    assert torch.equal(sample["pixel_values"], ref["pixel_values"])
    assert sample["num_tiles"] == [1, 3] == ref["num_tiles"].tolist()
    assert int((sample["input_ids"] == small_processor.tokenizer.image_token_id).sum()) == 4
    assert _label_spans(sample, small_processor) == ["Left is red.<|im_end|>", "Same.<|im_end|>"]


def test_images_without_tags_go_to_the_first_user_turn(tmp_path, small_processor):
    write_image(tmp_path / "x.png", (28, 28), (0, 255, 0))
    rec = llava("s2", "x.png", [("human", "What is it?"), ("gpt", "A square.")])
    conv = conversation_from_record(rec, where="t", image_root=tmp_path)
    assert conv.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    sample = encode_conversation(small_processor, conv)
    assert sample["num_tiles"] == [1]
    assert _label_spans(sample, small_processor) == ["A square.<|im_end|>"]


def test_openai_messages_with_data_url_and_relative_path(tmp_path, small_processor):
    write_image(tmp_path / "p.png", (28, 56), (10, 20, 30))
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 100, 0)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    rec = {
        "id": "m1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "One?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Orange."}]},
            {"role": "user", "content": [{"type": "image", "image": "p.png"}, {"type": "text", "text": "Two?"}]},
            {"role": "assistant", "content": "Dark."},
        ],
    }
    conv = conversation_from_record(rec, where="t", image_root=tmp_path)
    assert conv.images[0] == url and conv.images[1] == tmp_path / "p.png"
    sample = encode_conversation(small_processor, conv)
    assert sample["num_tiles"] == [1, 3]
    assert _label_spans(sample, small_processor) == ["Orange.<|im_end|>", "Dark.<|im_end|>"]
    prompt = small_processor.decode(sample["input_ids"], skip_special_tokens=False)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")  # the record's own system prompt is kept


def test_token_counts_are_exact_for_every_tile_limit(tmp_path, small_processor):
    write_image(tmp_path / "w.png", (112, 28), (1, 2, 3))
    write_image(tmp_path / "t.png", (28, 84), (4, 5, 6))
    manifest = write_jsonl(tmp_path / "d.jsonl", [
        llava("w", "w.png", [("human", "<image>\nwide"), ("gpt", "yes")]),
        llava("t", ["t.png", "w.png"], [("human", "<image> and <image>"), ("gpt", "two")]),
    ])
    ds = ConversationDataset(str(manifest), small_processor)
    seen = set()
    for i in range(len(ds)):
        for max_tiles in (1, 2, 4):
            sample = ds[(i, max_tiles)]
            assert sample["input_ids"].numel() == ds.num_tokens(i, max_tiles)
            assert sum(sample["num_tiles"]) == ds.num_tiles(i, max_tiles) == sample["pixel_values"].shape[0]
            seen.add(tuple(sample["num_tiles"]))
    assert (1,) in seen and (5,) in seen and (1, 1) in seen  # variable tile counts per sample and per limit


def test_image_root_default_is_the_manifest_folder_and_can_be_overridden(tmp_path, small_processor):
    data = tmp_path / "export"
    write_image(data / "images" / "a.png", (28, 28), (9, 9, 9))
    manifest = write_jsonl(data / "data.jsonl", [llava("r", "images/a.png", [("human", "<image>\nq"), ("gpt", "a")])])
    assert len(ConversationDataset(str(manifest), small_processor)) == 1  # relative to the manifest's folder
    moved = write_jsonl(
        tmp_path / "elsewhere.jsonl", [llava("r", "images/a.png", [("human", "<image>\nq"), ("gpt", "a")])]
    )
    with pytest.raises(Exception, match="image file not found"):
        ConversationDataset(str(moved), small_processor, on_bad_sample="error")
    assert len(ConversationDataset(str(moved), small_processor, image_root=str(data))) == 1
    other = tmp_path / "other"
    write_image(other / "images" / "b.png", (56, 28), (9, 9, 9))
    second = write_jsonl(other / "more.jsonl", [llava("s", "images/b.png", [("human", "<image>\nq"), ("gpt", "b")])])
    mixed = ConversationDataset(f"{manifest}, {second}", small_processor)  # each manifest keeps its own root
    assert [c.id for c in mixed.samples] == ["r", "s"] and mixed.num_tiles(1, 4) == 3
