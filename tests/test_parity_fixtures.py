"""EagleProcessor + EagleModel against NVIDIA's own outputs on the tiny checkpoint (fixtures/expected)."""

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor

STEMS = ["rgb_640x480", "portrait_300x900", "wide_1280x320", "rgba_200x150"]
QUESTION = "Describe this image in detail."


@pytest.fixture(scope="module")
def proc(tiny_ckpt):
    return EagleProcessor.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="module")
def eager_model(tiny_ckpt):
    return EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32, attn_implementation="eager")


def _batch(proc, fixtures_dir, stem):
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )
    return prompt, proc(text=prompt, images=[Image.open(fixtures_dir / "images" / f"{stem}.png")])


@pytest.mark.parametrize("stem", STEMS)
def test_prompt_ids_and_pixels_exact(proc, fixtures_dir, stem):
    ref = np.load(fixtures_dir / "expected" / f"{stem}.npz")
    prompt, batch = _batch(proc, fixtures_dir, stem)
    assert proc.expand_prompt(prompt, [int(ref["num_tiles"])]) == str(ref["prompt_text"])
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert batch.plans[0].grid == tuple(ref["grid"].tolist())
    assert batch["num_tiles"].tolist() == [int(ref["num_tiles"])]
    expected = (torch.from_numpy(ref["tiles_uint8"]).float() - 127.5) / 127.5
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"], expected), "pixel values must be bit-identical"


@pytest.mark.parametrize("stem", STEMS)
def test_logits_and_intermediates_match_eager_fp32(proc, eager_model, fixtures_dir, stem):
    ref = np.load(fixtures_dir / "expected" / f"{stem}.npz")
    _, batch = _batch(proc, fixtures_dir, stem)
    pos = torch.from_numpy(ref["logits_positions"])
    with torch.no_grad():
        out = eager_model(**batch, output_hidden_states=True)
        vision = eager_model.vision(batch["pixel_values"][:1])
        projected = eager_model.get_image_features(batch["pixel_values"][:1])
    torch.testing.assert_close(out.logits[:, pos], torch.from_numpy(ref["logits"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        out.hidden_states[-1][:, pos], torch.from_numpy(ref["llm_final_hidden"]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(vision[:, :16], torch.from_numpy(ref["vision_last_hidden_state"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(projected[:, :16], torch.from_numpy(ref["vit_embeds"]), atol=1e-5, rtol=0)


def test_sdpa_default_within_tolerance(proc, tiny_ckpt, fixtures_dir):
    model = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32)  # sdpa
    ref = np.load(fixtures_dir / "expected" / "wide_1280x320.npz")
    _, batch = _batch(proc, fixtures_dir, "wide_1280x320")
    with torch.no_grad():
        logits = model(**batch).logits[:, torch.from_numpy(ref["logits_positions"])]
    torch.testing.assert_close(logits, torch.from_numpy(ref["logits"]), atol=1e-4, rtol=0)
