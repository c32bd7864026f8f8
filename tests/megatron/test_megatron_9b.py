"""Eagle2-9B on the megatron path: megatron SigLIP + the replicated ConvNeXt branch, weights through the bridge,
against EagleModel and NVIDIA's fixtures (TP=1), TP=2 and PP=2 on gloo against TP=1, HF -> megatron -> HF bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megatron_9b_helpers import QUESTION, nine_microbatches, nine_worker
from megatron_helpers import megatron_from_hf, run_layout
from safetensors.torch import load_file

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.megatron import parallel


@pytest.fixture(scope="module")
def nine(fixtures_dir):
    return fixtures_dir / "eagle2-9b"


@pytest.fixture(scope="module")
def ckpt(nine):
    return nine / "tiny-eagle2-9b"


def test_megatron_9b_matches_eagle_model_and_nvidia(megatron_cpu, ckpt, nine):
    from PIL import Image

    proc = EagleProcessor.from_pretrained(ckpt)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    )
    batch = proc(text=prompt, images=[Image.open(nine / "images" / "small_300x200.png")])
    ref = np.load(nine / "expected" / "small_300x200.npz")
    eager = EagleModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    model = megatron_from_hf(ckpt)
    assert type(model.convnext.model).__name__ == "ConvNextModel"
    tiles = batch["pixel_values"][torch.from_numpy(ref["feature_tiles"])]
    with torch.no_grad():
        logits = model.gather_logits(model(batch["input_ids"], batch["pixel_values"]))
        want = eager(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
        feats = model.image_features(tiles)
    torch.testing.assert_close(feats, torch.from_numpy(ref["vit_embeds"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=0)
    pos = torch.from_numpy(ref["logits_positions"])
    torch.testing.assert_close(logits[:, pos], torch.from_numpy(ref["logits"]), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tp1(ckpt, nine):
    from megatron_cpu_shim import megatron_on_cpu

    with megatron_on_cpu():
        try:
            return run_layout(ckpt, nine_microbatches(ckpt, nine / "images" / "small_300x200.png"), tp=1, pp=1)
        finally:
            parallel.shutdown()


def test_tp2_and_pp2_on_gloo_match_tp1(ckpt, nine, tp1):
    results = parallel.launch(nine_worker, 2, str(ckpt), str(nine / "images" / "small_300x200.png"))
    assert tp1["loss_after"] < tp1["loss_before"]
    for rank in results:
        torch.testing.assert_close(rank["tp2"]["logits"], tp1["logits"], atol=1e-4, rtol=0)
        for layout in ("tp2", "pp2"):  # the same loss, gradients and update
            got = rank[layout]
            assert got["loss_before"] == pytest.approx(tp1["loss_before"], rel=1e-5), layout
            assert got["grad_norm"] == pytest.approx(tp1["grad_norm"], rel=1e-4), layout
            assert got["loss_after"] == pytest.approx(tp1["loss_after"], rel=1e-4), layout


def test_hf_megatron_hf_is_bitwise_for_9b(ckpt, tmp_path):
    from megatron_cpu_shim import megatron_on_cpu

    from nemo_eagle.megatron.convert import convert

    with megatron_on_cpu():
        summary = convert(str(ckpt), str(tmp_path / "mg"), to_format="megatron", verify=True)
        convert(str(tmp_path / "mg"), str(tmp_path / "hf"), to_format="hf")
    assert summary["max_logit_diff"] < 1e-4
    want, got = load_file(str(ckpt / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(got) == sorted(want)  # the ConvNeXt and both unused heads come back under their own names
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_convnext_parameter_count_matches_the_built_branch(ckpt):
    from nemo_eagle.config import get_preset
    from nemo_eagle.megatron.config import convnext_parameters

    model = EagleModel.from_pretrained(ckpt)
    assert convnext_parameters(model.config.vision.convnext) == sum(
        p.numel() for p in model.vision.convnext.parameters()
    )
    assert 846e6 < convnext_parameters(get_preset("eagle2-9b").vision.convnext) < 847e6  # ConvNeXt-XXLarge
