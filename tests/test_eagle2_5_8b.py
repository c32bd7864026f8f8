"""Eagle2.5-8B (``eagle_2_5_vl`` layout, SigLIP2 so400m patch 16 at 512 px): the preset, and a tiny checkpoint of
that shape loaded by EagleModel against transformers' own ``Siglip2VisionModel`` on the same weights.

What this does not verify: no Eagle2.5-8B output of NVIDIA's code is stored here, so the preset's LLM sizes and
the released config.json are not checked against the release (see the README)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.config import config_to_hf, get_preset, load_model_config


def test_preset_is_siglip2_patch16_at_512():
    cfg = get_preset("nvidia/Eagle2.5-8B")
    v = cfg.vision
    assert (v.model_type, v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers) == (
        "siglip_vision_model", 512, 16, 1152, 27)
    assert v.grid_size == 32 and cfg.tokens_per_tile == 256 and cfg.tiling.tile_size == 512
    assert cfg.projector_in_features == 4 * 1152 and cfg.format == "eagle_2_5_vl"
    hf = config_to_hf(cfg)
    assert hf["model_type"] == "eagle_2_5_vl" and hf["vision_config"]["patch_size"] == 16


def _tiny_25(tiny_ckpt, out):
    cfg = load_model_config(tiny_ckpt).replace(vision={"image_size": 512, "patch_size": 16},
                                               tiling={"tile_size": 512})
    model = EagleModel(cfg, attn_implementation="eager")
    model.source_dir = tiny_ckpt  # borrow the tokenizer and processor files
    model.save_pretrained(out)
    EagleProcessor(EagleProcessor.from_pretrained(tiny_ckpt).tokenizer, cfg.tiling,
                   tokens_per_tile=cfg.tokens_per_tile).save_pretrained(out)
    return out


def test_tiny_eagle2_5_checkpoint_equals_transformers_siglip2(tiny_ckpt, tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    ckpt = _tiny_25(tiny_ckpt, tmp_path / "e25")
    model = EagleModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    saved = load_file(str(ckpt / "model.safetensors"))
    back = load_file(str(model.save_pretrained(tmp_path / "again") / "model.safetensors"))
    assert set(back) == set(saved) and all(torch.equal(back[k], saved[k]) for k in saved)
    proc = EagleProcessor.from_pretrained(ckpt)
    assert proc.tiling.tile_size == 512 and proc.tokens_per_tile == 256

    v = model.config.vision
    ref = Siglip2VisionModel(Siglip2VisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, num_channels=3, num_patches=(512 // 16) ** 2, patch_size=16,
        hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps, vision_use_head=False,
        attn_implementation="eager")).eval()
    prefix = "vision_model.vision_model."
    sd = {}
    for k, t in saved.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        if k == "embeddings.patch_embedding.weight":  # Conv2d (C_out, C, p, p) -> Linear over (p, p, C) patches
            t = t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
        sd[k] = t
    missing, unexpected = ref.vision_model.load_state_dict(sd, strict=False) if hasattr(ref, "vision_model") \
        else ref.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)

    tiles = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    patches = tiles.reshape(2, 3, 32, 16, 32, 16).permute(0, 2, 4, 3, 5, 1).reshape(2, 1024, 16 * 16 * 3)
    with torch.no_grad():
        want = ref(pixel_values=patches, pixel_attention_mask=torch.ones(2, 1024, dtype=torch.long),
                   spatial_shapes=torch.tensor([[32, 32], [32, 32]])).last_hidden_state
        got = model.vision(tiles)
    assert got.shape == (2, 1024, v.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert model.get_image_features(tiles).shape == (2, 256, model.config.llm.hidden_size)
