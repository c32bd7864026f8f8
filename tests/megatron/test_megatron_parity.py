"""The megatron-core EAGLE2 against NVIDIA's fixture logits and against the reference EagleModel (CPU, TP=1)."""

from __future__ import annotations

import pytest
import torch
from megatron_helpers import fixture_batch, megatron_from_hf

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.config import load_model_config
from nemo_eagle.megatron.train import make_microbatch


@pytest.mark.parametrize("stem", ["portrait_300x900", "wide_1280x320"])
def test_logits_match_nvidia_fixtures(megatron_cpu, tiny_ckpt, fixtures_dir, stem):
    model = megatron_from_hf(tiny_ckpt)
    b = fixture_batch(fixtures_dir, stem)
    with torch.no_grad():
        logits = model.gather_logits(model(b["input_ids"], b["pixel_values"]))
    assert logits.shape == (1, b["input_ids"].shape[1], 431)
    torch.testing.assert_close(logits[:, b["positions"]], b["logits"], atol=1e-4, rtol=0)


def test_vision_and_projector_match_fixture_intermediates(megatron_cpu, tiny_ckpt, fixtures_dir):
    import numpy as np

    model = megatron_from_hf(tiny_ckpt)
    d = np.load(fixtures_dir / "expected" / "rgb_640x480.npz")
    tile0 = (torch.from_numpy(d["tiles_uint8"][:1]).float() - 127.5) / 127.5
    with torch.no_grad():
        vision = model.vision(tile0)
        tokens = model.projector(vision)
    torch.testing.assert_close(vision[:, :16], torch.from_numpy(d["vision_last_hidden_state"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[:, :16], torch.from_numpy(d["vit_embeds"]), atol=1e-5, rtol=0)


def _processor_batch(path, image):
    proc = EagleProcessor.from_pretrained(path)
    prompt = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}], add_generation_prompt=True)
    return proc(text=prompt, images=[image], return_tensors="pt")


@pytest.mark.parametrize("ckpt", ["tiny_ckpt", "tiny_llama_ckpt"])
def test_logits_and_loss_match_reference_model(megatron_cpu, request, fixtures_dir, ckpt):
    """Qwen2 (tied, qkv bias, 448 px) and Llama (untied lm_head, no qkv bias, 112 px) against EagleModel."""
    from PIL import Image

    path = request.getfixturevalue(ckpt)
    batch = _processor_batch(path, Image.open(fixtures_dir / "images" / "wide_1280x320.png"))
    ref = EagleModel.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        want = ref(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], labels=batch["input_ids"])
    model = megatron_from_hf(path)
    assert model.language_model.share_embeddings_and_output_weights == (ckpt == "tiny_ckpt")
    mb = make_microbatch(batch["input_ids"], batch["pixel_values"])
    with torch.no_grad():
        logits = model.gather_logits(model(batch["input_ids"], batch["pixel_values"]))
        per_token = model(mb["input_ids"], mb["pixel_values"], labels=mb["labels"])
    torch.testing.assert_close(logits, want.logits, atol=1e-4, rtol=0)
    loss = (per_token * mb["loss_mask"]).sum() / mb["loss_mask"].sum()
    torch.testing.assert_close(loss, want.loss, atol=1e-5, rtol=0)


def test_text_only_batch_and_image_token_mismatch(megatron_cpu, tiny_ckpt):
    model = megatron_from_hf(tiny_ckpt)
    ids = torch.tensor([[401, 27, 339, 402, 401]])
    ref = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(model.gather_logits(model(ids)), ref(input_ids=ids).logits, atol=1e-4, rtol=0)
        cfg = load_model_config(tiny_ckpt)
        with pytest.raises(ValueError, match="image features and image tokens do not match"):
            model(torch.tensor([[cfg.image_token_id] * 3]), torch.zeros(1, 3, 448, 448))


@pytest.mark.parametrize("select_layer", [-2, 1])
def test_select_layer_other_than_last_matches_siglip_hidden_states(megatron_cpu, tiny_ckpt, fixtures_dir, select_layer):
    """select_layer k: SigLIP's hidden_states[k], before post_layernorm (the megatron tower stops after layer k)."""
    from nemo_eagle.megatron.config import vision_transformer_config
    from nemo_eagle.megatron.model import SiglipVisionTransformer

    ref = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32, attn_implementation="eager")
    tile = fixture_batch(fixtures_dir, "portrait_300x900")["pixel_values"][:1]
    megatron = megatron_from_hf(tiny_ckpt)  # select_layer -1, the checkpoint's own setting
    vision_cfg = megatron.eagle_config.vision
    vision_cfg.select_layer = select_layer
    tower = SiglipVisionTransformer(vision_transformer_config(vision_cfg, megatron.options), vision_cfg, megatron.impl)
    tower.load_state_dict(megatron.vision.state_dict())
    with torch.no_grad():
        want = ref.vision.tower(pixel_values=tile, output_hidden_states=True).hidden_states[select_layer]
        torch.testing.assert_close(tower(tile), want, atol=1e-5, rtol=0)
