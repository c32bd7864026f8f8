"""Parity against transformers' own classes for each LLM family (tiny random checkpoints in the official layout).

The oracle is built independently here: SiglipVisionModel and AutoModelForCausalLM loaded from the checkpoint
tensors by name, InternVL's original two-step pixel shuffle, the projector as plain torch ops, and the merge.
"""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.config import load_model_config
from nemo_eagle.convert.hf import read_safetensors
from nemo_eagle.convert.tiny import create_tiny


def internvl_pixel_shuffle(x, scale=0.5):
    """InternVL's ps_version v2 shuffle, written out as in the original two-step form."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale), int(c / scale))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


def oracle_logits(ckpt, batch):
    hf = load_model_config(ckpt)
    tensors = read_safetensors(ckpt)
    raw = __import__("json").loads((ckpt / "config.json").read_text())
    vcfg = SiglipVisionConfig(**{k: v for k, v in raw["vision_config"].items() if k != "model_type"})
    vision = SiglipVisionModel(vcfg).eval()
    vsd = {k.removeprefix("vision_model.vision_model."): v for k, v in tensors.items() if k.startswith("vision_model.")}
    own = vision.state_dict()
    vsd = {(k if k in own else "vision_model." + k): v for k, v in vsd.items()}
    vision.load_state_dict(vsd, strict=True)
    text = dict(raw["text_config"])
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(text.pop("model_type"), **text),
                                          attn_implementation="eager").eval()
    lsd = {k.removeprefix("language_model."): v for k, v in tensors.items() if k.startswith("language_model.")}
    missing, unexpected = lm.load_state_dict(lsd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if "lm_head.weight" in missing:
        lm.tie_weights()
    with torch.no_grad():
        feats = vision(pixel_values=batch["pixel_values"]).last_hidden_state
        g = int(feats.shape[1] ** 0.5)
        x = internvl_pixel_shuffle(feats.reshape(feats.shape[0], g, g, -1)).reshape(
            feats.shape[0], -1, feats.shape[-1] * 4
        )
        x = F.layer_norm(x, (x.shape[-1],), tensors["mlp1.0.weight"], tensors["mlp1.0.bias"], 1e-5)
        x = F.linear(F.gelu(F.linear(x, tensors["mlp1.1.weight"], tensors["mlp1.1.bias"])),
                     tensors["mlp1.3.weight"], tensors["mlp1.3.bias"])
        embeds = lm.get_input_embeddings()(batch["input_ids"])
        embeds[batch["input_ids"] == hf.image_token_id] = x.reshape(-1, x.shape[-1])
        return lm(inputs_embeds=embeds).logits


@pytest.mark.parametrize("family", ["qwen2", "llama", "nemotron"])
def test_family_matches_transformers_classes(tmp_path, family):
    ckpt = create_tiny(tmp_path / family, llm_family=family, image_size=56, patch_size=14)
    proc = EagleProcessor.from_pretrained(ckpt)
    model = EagleModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    assert model.config.llm.model_type == family
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
    )
    batch = proc(text=text, images=[Image.new("RGB", (120, 50), (10, 200, 90))])
    assert batch["pixel_values"].shape[-1] == 56 and batch["num_tiles"].item() > 1
    with torch.no_grad():
        ours = model(**batch).logits
    torch.testing.assert_close(ours, oracle_logits(ckpt, batch), atol=1e-5, rtol=1e-5)
