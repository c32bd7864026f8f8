"""The input-sensitive test model: its greedy continuation depends on the prompt, on each image and on image order.

Tests that compare generation with another run of our own code (cache vs recompute, batched vs alone, served vs
in-process) use this model; on the input-blind fixture weights those comparisons could not fail.
"""

import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor

N = 8


@pytest.fixture(scope="module")
def proc(sensitive_ckpt):
    return EagleProcessor.from_pretrained(sensitive_ckpt)


@pytest.fixture(scope="module")
def model(sensitive_ckpt):
    return EagleModel.from_pretrained(sensitive_ckpt, dtype=torch.float32)


@pytest.fixture(scope="module")
def images(fixtures_dir):
    return [Image.open(fixtures_dir / "images" / n).convert("RGB")
            for n in ("rgb_640x480.png", "wide_1280x320.png", "portrait_300x900.png")]


def _greedy(model, proc, text, images=()):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}])
    batch = proc(text=prompt, images=list(images) or None, max_tiles=2)
    return model.generate(**batch, max_new_tokens=N)[0].tolist()


def test_continuation_depends_on_the_prompt(model, proc):
    outs = [_greedy(model, proc, t) for t in ("Hello there", "What is in the picture?", "yes", "no")]
    assert len({tuple(o) for o in outs}) == len(outs), outs
    assert all(len(set(o)) > 1 for o in outs), outs  # not one token repeated


def test_continuation_depends_on_each_image_and_their_order(model, proc, images):
    a, b, c = images
    runs = {
        "a": _greedy(model, proc, "Describe.", [a]),
        "b": _greedy(model, proc, "Describe.", [b]),
        "ab": _greedy(model, proc, "Describe.", [a, b]),
        "ac": _greedy(model, proc, "Describe.", [a, c]),  # only the second image differs
        "cb": _greedy(model, proc, "Describe.", [c, b]),  # only the first image differs
        "ba": _greedy(model, proc, "Describe.", [b, a]),  # same images, other order
    }
    assert len({tuple(v) for v in runs.values()}) == len(runs), runs


def test_fixture_weights_are_input_blind(tiny_ckpt, images):
    """Why the redraw exists: the fixture checkpoint answers the same whatever the input."""
    model, proc = EagleModel.from_pretrained(tiny_ckpt), EagleProcessor.from_pretrained(tiny_ckpt)
    outs = {
        tuple(_greedy(model, proc, t, im)) for t, im in (("Hello there", []), ("yes", []), ("Describe.", images[:1]))
    }
    assert len(outs) < 3


def test_redraw_is_deterministic_and_keeps_the_layout(sensitive_ckpt, tiny_ckpt, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from nemo_eagle.convert.tiny import make_input_sensitive

    again = make_input_sensitive(shutil.copytree(tiny_ckpt, tmp_path / "again"))
    ref, ours, orig = (load_file(p / "model.safetensors") for p in (sensitive_ckpt, again, tiny_ckpt))
    assert ref.keys() == orig.keys() == ours.keys()
    for k in ref:
        assert ref[k].shape == orig[k].shape and ref[k].dtype == orig[k].dtype
        assert torch.equal(ref[k], ours[k])
        assert not torch.equal(ref[k], orig[k])
