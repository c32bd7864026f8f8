"""Units of the synth pipeline: templates, journal repair, image hashes, filters, rate limiter."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from PIL import Image

from nemo_eagle.synth.filters import (
    FilterConfig,
    NearDuplicateIndex,
    answers_agree,
    check_sample,
    normalise_text,
    script_ratio,
)
from nemo_eagle.synth.imagehash import dhash, hamming, phash
from nemo_eagle.synth.journal import Journal, read_journal
from nemo_eagle.synth.tasks import TASKS, SchemaError, parse_tasks
from nemo_eagle.synth.teacher import RateLimiter, chat_completions_url, image_data_url


def test_template_parse_accepts_fences_and_prose_and_names_missing_fields():
    vqa = TASKS["vqa"]
    assert vqa.parse('```json\n{"question": "How many?", "answer": 3}\n```') == {"question": "How many?", "answer": "3"}
    assert vqa.parse('Sure! {"question": "Q?", "answer": "A"} Hope it helps {x}') == {"question": "Q?", "answer": "A"}
    with pytest.raises(SchemaError, match=r"lacks field\(s\) \['answer'\]"):
        vqa.parse('{"question": "Q?"}')
    with pytest.raises(SchemaError, match="no JSON object"):
        vqa.parse("I cannot do that")
    with pytest.raises(SchemaError, match="must be strings"):
        vqa.parse('{"question": "Q?", "answer": ["a", "b"]}')
    with pytest.raises(SchemaError, match="empty"):
        vqa.parse('{"question": "Q?", "answer": "  "}')


def test_template_conversations():
    r = TASKS["reasoning"]
    conv = r.to_conversation({"question": "Q?", "reasoning": "Step 1.", "answer": "4"})
    assert conv == [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "Step 1.\nAnswer: 4"}]
    cap = TASKS["caption"].to_conversation({"caption": "A red box."})
    assert cap[0]["value"] == "<image>\nDescribe this image in detail." and cap[1]["value"] == "A red box."
    assert TASKS["vqa"].render(0, 1) == TASKS["vqa"].prompt
    assert "request 2 of 3" in TASKS["vqa"].render(1, 3)
    assert len({t.fingerprint for t in TASKS.values()}) == len(TASKS)
    assert [t.name for t in parse_tasks(" vqa, caption ")] == ["vqa", "caption"]
    with pytest.raises(ValueError, match="listed twice"):
        parse_tasks("vqa,vqa")


def test_journal_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append({"id": "a"})
        j.append({"id": "b"})
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "resp')  # what SIGKILL mid-write leaves
    assert [r["id"] for r in read_journal(path)] == ["a", "b"]
    with Journal(path) as j:
        j.append({"id": "c"})
    assert [r["id"] for r in read_journal(path)] == ["a", "b", "c"]
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="j.jsonl:2: corrupt journal line"):
        list(read_journal(path))


@pytest.mark.parametrize("hash_fn", [dhash, phash])
def test_perceptual_hashes_match_near_copies_and_separate_different_images(hash_fn, picture_maker):
    make_picture = picture_maker
    img = make_picture(11, size=(160, 120))
    px = np.asarray(img, dtype=np.int16)
    brighter = Image.fromarray(np.clip(px + 6, 0, 255).astype(np.uint8))
    resized = img.resize((320, 240), Image.Resampling.BILINEAR)
    noisy = Image.fromarray(np.clip(px + np.random.default_rng(0).integers(-4, 5, px.shape), 0, 255).astype(np.uint8))
    h = hash_fn(img)
    assert 0 <= h < 2**64
    for copy in (brighter, resized, noisy):
        assert hamming(h, hash_fn(copy)) <= 4
    others = [hamming(h, hash_fn(make_picture(s, size=(160, 120)))) for s in range(20, 30)]
    assert min(others) > 8, others


def test_near_duplicate_index_groups_within_the_bit_budget():
    index = NearDuplicateIndex(bits=3)
    base = 0x0123456789ABCDEF
    assert index.group(base) == 0
    assert index.group(base ^ 0b111) == 0  # 3 bits apart
    assert index.group(base ^ (1 << 63) ^ (1 << 40) ^ (1 << 20)) == 0  # 3 bits in different bands
    assert index.group(base ^ 0b1111) == 1  # 4 bits apart: a new group
    assert index.group(~base & (2**64 - 1)) == 2


def test_answers_agree():
    assert answers_agree("Two", "2")
    assert answers_agree("the red car", "red car.")
    assert answers_agree("$1,000", "1020")  # within 5%
    assert not answers_agree("1000", "1100")
    assert answers_agree("Stop", "a stop sign")  # one's words inside the other's
    assert answers_agree("Acme Corporation", "Acme Corporatoin")  # ANLS 0.875
    assert not answers_agree("blue", "green")
    assert not answers_agree("", "")


def test_language_and_length_filters():
    cfg = FilterConfig()
    vqa = TASKS["vqa"]

    def rec(question: str, answer: str, verify: str | None = None) -> dict:
        import json

        return {"status": "ok", "response": json.dumps({"question": question, "answer": answer}),
                "verify": answer if verify is None else verify}

    assert check_sample(rec("What colour is the box?", "red"), vqa, cfg).reason is None
    assert check_sample(rec("Какого цвета коробка?", "красный"), vqa, cfg).reason == "language"
    assert check_sample(rec("Quelle est la couleur?", "rouge"), vqa, cfg).reason is None  # Latin script passes
    russian = FilterConfig(language="ru")
    assert check_sample(rec("Какого цвета коробка?", "красный"), vqa, russian).reason is None
    assert check_sample(rec("What\x07 colour?", "red"), vqa, cfg).reason == "language"
    assert check_sample(rec("Why?", "red"), vqa, cfg).reason == "length"
    assert check_sample(rec("What colour is the box?", "x" * 2001), vqa, cfg).reason == "length"
    assert check_sample(rec("What colour is the box?", "red", verify="blue"), vqa, cfg).reason == "consistency"
    assert check_sample(rec("What colour is the box?", "red", verify="blue"), vqa,
                        FilterConfig(verify=False)).reason is None
    assert check_sample(None, vqa, cfg).reason == "pending"
    assert check_sample({"status": "error", "error": "HTTP 400"}, vqa, cfg).reason == "teacher_error"
    assert script_ratio("abc 123", {"LATIN"}) == 1.0 and script_ratio("ab日本", {"LATIN"}) == 0.5
    assert normalise_text("  What's THE colour?! ") == "what s the colour"


def test_rate_limiter_spaces_requests():
    async def five() -> float:
        limiter = RateLimiter(20.0)
        t0 = time.monotonic()
        await asyncio.gather(*(limiter.wait() for _ in range(5)))
        return time.monotonic() - t0

    assert asyncio.run(five()) >= 4 / 20.0 - 1e-3  # the 5th start waits 4 intervals


def test_image_data_url_and_endpoint_url(tmp_path, picture_maker):
    img = picture_maker(1)
    img.save(tmp_path / "a.bmp")
    url = image_data_url((tmp_path / "a.bmp").read_bytes())
    assert url.startswith("data:image/png;base64,")  # BMP is re-encoded losslessly
    img.save(tmp_path / "a.jpg")
    assert image_data_url((tmp_path / "a.jpg").read_bytes()).startswith("data:image/jpeg;base64,")
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
