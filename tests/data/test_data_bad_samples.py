"""Bad samples are named by id and either skipped with a count or stop the run, by ``on_bad_sample``."""

from __future__ import annotations

import logging

import pytest
from data_helpers import llava, write_image, write_jsonl

from nemo_eagle.data.collate import EagleCollator
from nemo_eagle.data.datasets import BadSampleError, ConversationDataset

BAD = {
    "missing-img": (llava("missing-img", "nope.png", [("human", "<image>\nq"), ("gpt", "a")]), "missing_image"),
    "two-tags": (llava("two-tags", "ok.png", [("human", "<image> <image> q"), ("gpt", "a")]), "too_many_image_tags"),
    "empty-conv": ({"id": "empty-conv", "image": "ok.png", "conversations": []}, "empty_conversation"),
    "no-reply": (llava("no-reply", None, [("human", "hello?")]), "empty_conversation"),
    "garbage-img": (llava("garbage-img", "garbage.png", [("human", "<image>\nq"), ("gpt", "a")]), "unreadable_image"),
}


@pytest.fixture
def manifest(tmp_path):
    write_image(tmp_path / "ok.png", (28, 28), (1, 2, 3))
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    good = [llava(f"good{i}", "ok.png", [("human", "<image>\nq"), ("gpt", "a")]) for i in range(3)]
    records = good[:2] + [rec for rec, _ in BAD.values()] + good[2:]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with path.open("a") as f:
        f.write("{not json\n")
    return path


def test_skip_reports_every_bad_sample_by_id_and_counts_them(manifest, small_processor, caplog):
    with caplog.at_level(logging.WARNING):
        ds = ConversationDataset(str(manifest), small_processor, on_bad_sample="skip")
    assert [c.id for c in ds.samples] == ["good0", "good1", "good2"]
    assert ds.report.total == 9 and ds.report.kept == 3
    assert dict(ds.report.skipped) == {"missing_image": 1, "too_many_image_tags": 1, "empty_conversation": 2,
                                       "unreadable_image": 1, "bad_record": 1}
    for sid in BAD:
        assert f"'{sid}'" in caplog.text
    assert "bad sample 'd.jsonl:9': line is not valid JSON" in caplog.text  # a broken line is named by position
    assert "3 of 9 sample(s) kept; skipped 6" in ds.report.summary()


@pytest.mark.parametrize("sid", sorted(BAD))
def test_error_stops_at_the_bad_sample_and_names_it(tmp_path, small_processor, sid):
    write_image(tmp_path / "ok.png", (28, 28), (1, 2, 3))
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG broken")
    rec, reason = BAD[sid]
    path = write_jsonl(tmp_path / "d.jsonl", [llava("fine", "ok.png", [("human", "<image>\nq"), ("gpt", "a")]), rec])
    with pytest.raises(BadSampleError) as info:
        ConversationDataset(str(path), small_processor, on_bad_sample="error")
    assert info.value.sample_id == sid and info.value.reason == reason
    assert f"bad sample '{sid}' (d.jsonl:2)" in str(info.value)


def test_more_tags_than_images_message(tmp_path, small_processor):
    write_image(tmp_path / "ok.png", (28, 28), (1, 2, 3))
    path = write_jsonl(tmp_path / "d.jsonl", [BAD["two-tags"][0]])
    with pytest.raises(BadSampleError, match=r"2 image placeholder\(s\) \(<image> tags\) but 1 image"):
        ConversationDataset(str(path), small_processor, on_bad_sample="error")


def test_failure_while_loading_is_skipped_or_raised(tmp_path, small_processor, caplog):
    img = write_image(tmp_path / "ok.png", (28, 28), (1, 2, 3))
    path = write_jsonl(tmp_path / "d.jsonl", [llava("late", "ok.png", [("human", "<image>\nq"), ("gpt", "a")]),
                                              llava("fine", None, [("human", "text only"), ("gpt", "b")])])
    skip = ConversationDataset(str(path), small_processor, on_bad_sample="skip")
    strict = ConversationDataset(str(path), small_processor, on_bad_sample="error")
    img.write_bytes(b"corrupted after the scan")
    with caplog.at_level(logging.WARNING):
        assert skip[0] is None
    assert "'late'" in caplog.text
    batch = EagleCollator(small_processor.tokenizer.pad_token_id)([skip[0], skip[1]])
    assert batch["num_samples"] == 1 and batch["num_skipped"] == 1 and batch["sample_ids"] == ["fine"]
    with pytest.raises(BadSampleError, match="'late'"):
        strict[0]


def test_all_bad_is_an_error_even_when_skipping(tmp_path, small_processor):
    path = write_jsonl(tmp_path / "d.jsonl", [BAD["missing-img"][0]])
    with pytest.raises(ValueError, match="no usable samples"):
        ConversationDataset(str(path), small_processor, on_bad_sample="skip")
