"""EagleModel behaviour: generation (cache, sampling, stops, streaming, batching), dtypes, errors.

Generation is compared with other runs of our own code, so the model is the input-sensitive one
(``sensitive_ckpt``): a stuck decode position, ignored left padding or swapped rows change its answers.
"""

import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor


@pytest.fixture(scope="module")
def proc(sensitive_ckpt):
    return EagleProcessor.from_pretrained(sensitive_ckpt)


@pytest.fixture(scope="module")
def model(sensitive_ckpt):
    return EagleModel.from_pretrained(sensitive_ckpt, dtype=torch.float32)


def _prompt(proc, text, images=1):
    return proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]
    )


@pytest.fixture(scope="module")
def batch(proc, fixtures_dir):
    return proc(text=_prompt(proc, "What is this?"), images=[Image.open(fixtures_dir / "images" / "wide_1280x320.png")])


def test_kv_cache_generation_equals_full_recompute(model, batch):
    cached = model.generate(**batch, max_new_tokens=12)
    full = model.generate(**batch, max_new_tokens=12, use_cache=False)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, full)


def test_greedy_first_token_is_argmax_of_forward(model, batch):
    with torch.no_grad():
        expected = model(**batch).logits[0, -1].argmax().item()
    assert model.generate(**batch, max_new_tokens=1)[0, 0].item() == expected


def test_left_padded_batch_equals_single_prompts(model, proc, fixtures_dir):
    img = Image.open(fixtures_dir / "images" / "rgba_200x150.png")
    p1, p2 = (
        _prompt(proc, "Describe.", 1),
        proc.apply_chat_template([{"role": "user", "content": "a much longer text-only question here"}]),
    )
    both = model.generate(**proc(text=[p1, p2], images=[img]), max_new_tokens=10)
    one = model.generate(**proc(text=p1, images=[img]), max_new_tokens=10)
    two = model.generate(**proc(text=p2), max_new_tokens=10)
    assert torch.equal(both[0], one[0]) and torch.equal(both[1], two[0])
    assert not torch.equal(one[0], two[0])


def test_batch_rows_with_several_images_equal_each_prompt_alone(model, proc, fixtures_dir):
    """Rows of different lengths and image counts, images in placeholder order: each row answers as it does alone."""
    a, b, c = (
        Image.open(fixtures_dir / "images" / n)
        for n in ("rgb_640x480.png", "wide_1280x320.png", "portrait_300x900.png")
    )
    rows = [(_prompt(proc, "Compare the two.", 2), [a, b]), (_prompt(proc, "And now?", 2), [b, a]),
            (_prompt(proc, "One more, with a longer question than the others.", 1), [c])]
    batched = model.generate(
        **proc(text=[r[0] for r in rows], images=[r[1] for r in rows], max_tiles=3), max_new_tokens=8
    )
    alone = [model.generate(**proc(text=t, images=ims, max_tiles=3), max_new_tokens=8)[0] for t, ims in rows]
    for i, ref in enumerate(alone):
        assert torch.equal(batched[i], ref), i
    assert len({tuple(r.tolist()) for r in alone}) == len(rows)


def test_sampling_is_seeded(model, batch):
    kw = dict(max_new_tokens=8, do_sample=True, temperature=5.0, top_k=50)
    a, b = model.generate(**batch, seed=1, **kw), model.generate(**batch, seed=1, **kw)
    assert torch.equal(a, b)
    others = [model.generate(**batch, seed=s, **kw) for s in range(2, 6)]
    assert any(not torch.equal(a, o) for o in others)  # high temperature: seeds matter


def test_eos_and_stop_strings_end_generation(model, batch, proc):
    free = model.generate(**batch, max_new_tokens=6)[0].tolist()
    # make the first generated token the end-of-sequence: nothing after it
    stopped = model.generate(**batch, max_new_tokens=6, eos_token_id=free[0])[0].tolist()
    assert len(stopped) == 1 and stopped[0] == free[0]
    stop_text = proc.decode(free[:2], skip_special_tokens=False)  # completes exactly at the second token
    by_string = model.generate(**batch, max_new_tokens=6, stop_strings=[stop_text])[0].tolist()
    assert by_string[:2] == free[:2] and all(t == proc.tokenizer.pad_token_id for t in by_string[2:])


def test_stream_yields_same_text_as_generate(model, batch, proc):
    text = proc.decode(model.generate(**batch, max_new_tokens=10)[0])
    pieces = list(model.stream(**batch, max_new_tokens=10))
    assert "".join(pieces) == text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_run_close_to_fp32(tiny_ckpt, batch, dtype):
    model = EagleModel.from_pretrained(
        tiny_ckpt, dtype=torch.float32
    )  # the fixture weights: not chaotic, so bf16 stays close
    half = EagleModel.from_pretrained(tiny_ckpt, dtype=dtype)
    assert half.dtype == dtype and half.vision.dtype == dtype
    with torch.no_grad():
        lo = half(**batch).logits.float()
        ref = model(**batch).logits
    assert lo.dtype == torch.float32 and torch.isfinite(lo).all()
    assert (lo - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 keeps ~3 significant digits


def test_feature_token_mismatch_raises(model, batch):
    bad = dict(batch)
    bad["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model(**bad)
    no_pixels = {k: v for k, v in batch.items() if k != "pixel_values"}
    with pytest.raises(ValueError, match="no pixel_values"):
        model(**no_pixels)


def test_unknown_generation_option_raises(model, batch):
    with pytest.raises(TypeError, match="unknown generation option"):
        model.generate(**batch, max_new_token=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(**batch, max_new_tokens=0)


def test_loss_with_labels(model, batch):
    labels = batch["input_ids"].clone()
    labels[:, :-5] = -100
    out = model(**batch, labels=labels)
    assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    logits = out.logits[0, -6:-1]
    expected = torch.nn.functional.cross_entropy(logits, batch["input_ids"][0, -5:])
    torch.testing.assert_close(out.loss, expected)


def test_greedy_tokens_equal_teacher_forced_argmax(model, batch):
    """Each generated token is the argmax of one forward pass over prompt + the tokens before it (an oracle that
    shares none of generation's incremental position / cache bookkeeping)."""
    gen = model.generate(**batch, max_new_tokens=10)
    ids = torch.cat([batch["input_ids"], gen], dim=1)
    full = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        logits = model(**full).logits[0]
    start = batch["input_ids"].shape[1] - 1
    assert logits[start:start + gen.shape[1]].argmax(-1).tolist() == gen[0].tolist()


def _positions_seen(model, run):
    seen = []

    def hook(_module, _args, kwargs):
        seen.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    handle = model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_left_padded_rows_get_the_positions_of_the_row_alone(model, proc):
    """RoPE hides a constant position shift from the logits, so check the positions the LM is given directly."""
    short, long = (proc.apply_chat_template([{"role": "user", "content": t}]) for t in ("Hi", "a much longer question"))
    batched = _positions_seen(model, lambda: model.generate(**proc(text=[short, long]), max_new_tokens=4))
    alone = _positions_seen(model, lambda: model.generate(**proc(text=short), max_new_tokens=4))
    assert len(batched) == len(alone) == 4
    (pos0, mask0), (ref0, _) = batched[0], alone[0]
    real = mask0[0, : pos0.shape[1]].bool()
    assert pos0[0][real].tolist() == ref0[0].tolist()  # the padded row counts from its first real token
    for (pos, _), (ref, _) in zip(batched[1:], alone[1:]):  # decode steps advance from there
        assert pos[0].tolist() == ref[0].tolist()
