"""Eagle2-9B (SigLIP + ConvNeXt tower, qwen2-chat prompt, PIL tiling) against NVIDIA's own outputs.

The expected arrays in ``fixtures/eagle2-9b/expected`` were produced by NVIDIA's 9B model code on the tiny
checkpoint (fp32, eager attention, one thread); see that folder's README for what each key holds.
"""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor

STEMS = ["wide_1920x1080", "tall_600x1800", "small_300x200"]
QUESTION = "Describe this image in detail."
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def nine(fixtures_dir):
    return fixtures_dir / "eagle2-9b"


@pytest.fixture(scope="module")
def proc(nine):
    return EagleProcessor.from_pretrained(nine / "tiny-eagle2-9b")


@pytest.fixture(scope="module")
def eager(nine):
    return EagleModel.from_pretrained(nine / "tiny-eagle2-9b", dtype=torch.float32, attn_implementation="eager")


def _messages(n_images=1, text=QUESTION):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def _case(proc, nine, stem):
    ref = np.load(nine / "expected" / f"{stem}.npz")
    prompt = proc.apply_chat_template(_messages(), add_generation_prompt=True)
    return ref, prompt, proc(text=prompt, images=[Image.open(nine / "images" / f"{stem}.png")])


def _sha16(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("stem", STEMS)
def test_prompt_input_ids_and_every_tile_exact(proc, nine, stem):
    ref, prompt, batch = _case(proc, nine, stem)
    meta = json.loads(str(ref["meta_json"]))
    assert prompt == SYSTEM + "<|im_start|>user\n<image>\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n"
    assert proc.expand_prompt(prompt, batch["num_tiles"].tolist()) == str(ref["prompt_text"])
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == ref["attention_mask"].tolist()
    assert batch["num_tiles"].tolist() == ref["num_tiles"].tolist()
    # every tile: uint8 recovered exactly from the float pixels, hashed as the reference hashed its tiles
    pv = batch["pixel_values"]
    u8 = torch.round((pv * 0.5 + 0.5) * 255).to(torch.uint8)
    assert torch.equal((u8.float() / 255 - 0.5) / 0.5, pv), "pixel values are (u8 / 255 - 0.5) / 0.5, bit for bit"
    assert [_sha16(t) for t in u8] == meta["sha256_16"]["tiles_uint8_per_tile"]
    stored = ref["feature_tiles"] if ref["tiles_uint8"].shape[0] != pv.shape[0] else np.arange(pv.shape[0])
    assert torch.equal(u8[torch.from_numpy(stored)], torch.from_numpy(ref["tiles_uint8"]))


@pytest.mark.parametrize("stem", STEMS)
def test_branch_features_projector_and_logits_eager_fp32(proc, eager, nine, stem):
    ref, _, batch = _case(proc, nine, stem)
    tiles = batch["pixel_values"][torch.from_numpy(ref["feature_tiles"])]
    with torch.no_grad():
        siglip = eager.vision.siglip_features(tiles)
        cn_in = eager.vision.convnext.prepare(tiles[:1])
        convnext = eager.vision.convnext(tiles)
        projected = eager.get_image_features(tiles)
        out = eager(**batch, output_hidden_states=True)
    r = {k: torch.from_numpy(ref[k]) for k in ("siglip_features", "convnext_features", "vit_embeds", "logits",
                                                "llm_final_hidden", "convnext_pixel_input_clipnorm_crop")}
    torch.testing.assert_close(cn_in[0, :, :96, :96], r["convnext_pixel_input_clipnorm_crop"], atol=1e-6, rtol=0)
    torch.testing.assert_close(siglip, r["siglip_features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(convnext, r["convnext_features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(projected, r["vit_embeds"], atol=1e-5, rtol=0)
    pos = torch.from_numpy(ref["logits_positions"])
    torch.testing.assert_close(out.logits[:, pos], r["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1][:, pos], r["llm_final_hidden"], atol=1e-4, rtol=0)


def test_convnext_input_resize_before_clip_normalisation(eager, proc, nine):
    """The 448 -> 512 resize (align_corners=True) runs on the SigLIP-normalised tile, then x * a + b."""
    ref, _, batch = _case(proc, nine, "small_300x200")
    tile0 = batch["pixel_values"][:1]
    resized = torch.nn.functional.interpolate(tile0, size=(512, 512), mode="bilinear", align_corners=True)
    torch.testing.assert_close(resized[0, :, :96, :96], torch.from_numpy(ref["convnext_pixel_input_crop"]),
                               atol=1e-6, rtol=0)


def test_sdpa_within_tolerance(proc, nine):
    sdpa = EagleModel.from_pretrained(nine / "tiny-eagle2-9b", dtype=torch.float32)  # sdpa is the default
    ref, _, batch = _case(proc, nine, "wide_1920x1080")
    with torch.no_grad():
        logits = sdpa(**batch).logits[:, torch.from_numpy(ref["logits_positions"])]
    torch.testing.assert_close(logits, torch.from_numpy(ref["logits"]), atol=1e-4, rtol=0)


def test_convnext_equals_an_independent_transformers_build(eager, nine):
    """transformers' ConvNextModel built here, timm names mapped by hand, eps 1e-5: the same features, bit for bit."""
    from safetensors.torch import load_file
    from transformers import ConvNextConfig, ConvNextModel

    raw = load_file(str(nine / "tiny-eagle2-9b" / "model.safetensors"))
    pre = "vision_model.vision_model.vision_towers.1.vision_tower."
    ref = ConvNextModel(ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[16, 24, 32, 48])).eval()
    sd = {}
    for k, v in raw.items():
        if not k.startswith(pre) or k.startswith(pre + "head.fc"):
            continue
        k = k[len(pre):].replace("head.norm", "layernorm")
        k = k.replace("stem.0", "embeddings.patch_embeddings").replace("stem.1", "embeddings.layernorm")
        k = (
            k.replace("stages.", "encoder.stages.")
            .replace("downsample", "downsampling_layer")
            .replace("blocks", "layers")
        )
        k = k.replace("conv_dw", "dwconv").replace(".norm.", ".layernorm.").replace("mlp.fc1", "pwconv1")
        k = k.replace("mlp.fc2", "pwconv2")
        if k.endswith(".weight") and k.split(".")[-2].isdigit() and ".layers." in k:  # the layer scale
            k = k[: -len("weight")] + "layer_scale_parameter"
        sd[k] = v
    ref.load_state_dict(sd, strict=True)
    for m in ref.modules():
        if isinstance(m, torch.nn.LayerNorm) and m is not ref.layernorm:
            m.eps = 1e-5
    x = torch.rand(2, 3, 448, 448) * 2 - 1
    with torch.no_grad():
        prepared = eager.vision.convnext.prepare(x)
        want = ref(pixel_values=prepared).last_hidden_state.flatten(2).transpose(1, 2)
        got = eager.vision.convnext(x)
    assert torch.equal(got, want)


def test_rgba_alpha_is_dropped_not_composited(proc):
    rgba = np.zeros((448, 448, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 30)  # fully transparent, coloured: white if composited, the colour if dropped
    rgba[:224, :, 3] = 255
    batch = proc(text=proc.apply_chat_template(_messages()), images=[Image.fromarray(rgba, "RGBA")])
    u8 = torch.round((batch["pixel_values"] * 0.5 + 0.5) * 255).to(torch.uint8)
    assert batch["num_tiles"].tolist() == [1]
    assert u8[0, :, 300, 300].tolist() == [10, 200, 30] and u8[0, :, 10, 10].tolist() == [10, 200, 30]


def test_palette_image_resizes_with_nearest_as_pil_does(proc):
    pal = Image.fromarray(np.arange(300 * 200, dtype=np.uint8).reshape(200, 300) % 7, "L").convert("P")
    batch = proc(text=proc.apply_chat_template(_messages()), images=[pal])
    u8 = torch.round((batch["pixel_values"] * 0.5 + 0.5) * 255).to(torch.uint8)
    values = set(np.asarray(pal.convert("RGB")).reshape(-1, 3)[:, 0].tolist())
    assert set(u8[:, 0].unique().tolist()) <= values  # nearest: no new colours appear


def test_several_images_are_labelled_and_tiled_separately(proc, nine):
    imgs = [Image.open(nine / "images" / f"{s}.png") for s in ("small_300x200", "wide_1920x1080")]
    prompt = proc.apply_chat_template(_messages(2))
    assert prompt == (SYSTEM + "<|im_start|>user\n<image 1><image>\n<image 2><image>\n" + QUESTION
                      + "<|im_end|>\n<|im_start|>assistant\n")
    batch = proc(text=prompt, images=imgs)
    assert batch["num_tiles"].tolist() == [7, 9]
    ctx = "<IMG_CONTEXT>"
    want = (SYSTEM + "<|im_start|>user\n<image 1><img>" + ctx * 256 * 7 + "</img>\n<image 2><img>" + ctx * 256 * 9
            + "</img>\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
    assert batch["input_ids"][0].tolist() == proc.tokenizer.encode(want)
    singles = [proc(text=proc.apply_chat_template(_messages()), images=[im])["pixel_values"] for im in imgs]
    assert torch.equal(batch["pixel_values"], torch.cat(singles))  # image 1's tiles, then image 2's


def test_batch_rows_match_single_prompts(proc, eager, nine):
    """Left-padded rows of different lengths (one tile each, to keep it quick) give each prompt's own logits."""
    prompts = [proc.apply_chat_template(_messages()), proc.apply_chat_template(_messages(text="What is this? " * 9))]
    imgs = [Image.open(nine / "images" / f"{s}.png") for s in ("small_300x200", "wide_1920x1080")]
    batch = proc(text=prompts, images=[[imgs[0]], [imgs[1]]], max_tiles=1)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # row 0 is padded
    with torch.no_grad():
        both = eager(**batch).logits[:, -1]
        for i, (prompt, im) in enumerate(zip(prompts, imgs)):
            one = eager(**proc(text=prompt, images=[im], max_tiles=1)).logits[:, -1]
            torch.testing.assert_close(both[i:i + 1], one, atol=1e-4, rtol=0)


def test_whole_model_equals_an_independent_transformers_build(eager, proc, nine):
    """SiglipVisionModel + ConvNextModel (eps 1e-5) + Qwen2ForCausalLM loaded here from the raw checkpoint, with the
    9B glue (pixel shuffle, concatenation, mlp1, merge) written out in this test: EagleModel's logits, bit for bit."""
    from safetensors.torch import load_file
    from transformers import (
        ConvNextConfig,
        ConvNextModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    raw = load_file(str(nine / "tiny-eagle2-9b" / "model.safetensors"))
    cfg = json.loads((nine / "tiny-eagle2-9b" / "config.json").read_text())
    towers = "vision_model.vision_model.vision_towers."

    def part(prefix):
        return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}

    sig_cfg = {k: v for k, v in cfg["vision_config"]["siglip_vision_config"].items() if k != "model_type"}
    siglip = SiglipVisionModel(SiglipVisionConfig(**sig_cfg, vision_use_head=False, attn_implementation="eager"))
    sd = {k: v for k, v in part(towers + "0.vision_tower.vision_model.").items() if not k.startswith("head.")}
    missing, unexpected = siglip.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if "position_ids" not in m]
    convnext = ConvNextModel(ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[16, 24, 32, 48]))
    cn = {}
    for k, v in part(towers + "1.vision_tower.").items():
        if k.startswith("head."):
            continue
        k = (k.replace("stem.0", "embeddings.patch_embeddings").replace("stem.1", "embeddings.layernorm")
             .replace("stages.", "encoder.stages.").replace("downsample", "downsampling_layer")
             .replace("blocks", "layers").replace("conv_dw", "dwconv").replace(".norm.", ".layernorm.")
             .replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2"))
        scale = ".layers." in k and k.split(".")[-2].isdigit()  # stages.S.blocks.B.weight: timm's layer scale
        cn[k[: -len("weight")] + "layer_scale_parameter" if scale else k] = v
    missing, unexpected = convnext.load_state_dict(cn, strict=False)
    assert not unexpected and set(missing) == {"layernorm.weight", "layernorm.bias"}
    for m in convnext.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5
    llm_cfg = {k: v for k, v in cfg["llm_config"].items() if k not in ("architectures", "auto_map", "model_type")}
    llm = Qwen2ForCausalLM(Qwen2Config(**llm_cfg))
    llm.config._attn_implementation = "eager"
    missing, unexpected = llm.load_state_dict(part("language_model."), strict=False)
    assert not missing and not unexpected
    for m in (siglip, convnext, llm):
        m.eval()

    _, _, batch = _case(proc, nine, "small_300x200")
    pv = batch["pixel_values"]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        s = siglip(pixel_values=pv).last_hidden_state  # (T, 1024, 48)
        t, _, c = s.shape
        s = s.view(t, 16, 2, 16, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(t, 256, 4 * c)  # InternVL v2 shuffle
        x = torch.nn.functional.interpolate(pv, size=(512, 512), mode="bilinear", align_corners=True)
        x = x * (0.5 / std) + (0.5 - mean) / std
        f = convnext.encoder(convnext.embeddings(x)).last_hidden_state.flatten(2).transpose(1, 2)
        h = torch.cat([s, f], -1)
        h = torch.nn.functional.layer_norm(h, (h.shape[-1],), raw["mlp1.0.weight"], raw["mlp1.0.bias"], 1e-5)
        h = torch.nn.functional.linear(h, raw["mlp1.1.weight"], raw["mlp1.1.bias"])
        h = torch.nn.functional.linear(torch.nn.functional.gelu(h), raw["mlp1.3.weight"], raw["mlp1.3.bias"])
        embeds = llm.get_input_embeddings()(batch["input_ids"])
        embeds[batch["input_ids"] == 424] = h.reshape(-1, h.shape[-1])
        want = llm(inputs_embeds=embeds).logits
        got = eager(**batch).logits
    assert torch.equal(got, want)  # the same operations in the same order: bit for bit
