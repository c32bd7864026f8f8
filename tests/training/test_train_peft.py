"""Per-module freezing, LoRA on the LLM and the vision tower, and merged exports that equal the adapted model."""

from __future__ import annotations

import pytest
import torch

from nemo_eagle.modeling.eagle import EagleModel
from nemo_eagle.training.build import load_model
from nemo_eagle.training.config import FreezeConfig, ModelSpec, PeftConfig
from nemo_eagle.training.peft import apply_lora, merge_lora_, merged_state_dict, set_trainable
from nemo_eagle.training.run import CONF_DIR

TINY = {"vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                   "image_size": 28, "patch_size": 14},
        "llm": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 128, "max_position_embeddings": 512},
        "tiling": {"tile_size": 28, "max_tiles": 2}}


def _lora_targets() -> list[str]:
    import yaml

    return yaml.safe_load((CONF_DIR / "peft" / "lora.yaml").read_text())["targets"]


@pytest.fixture
def nemo_model(tiny_ckpt):
    return load_model(ModelSpec(config=TINY, tokenizer_from=str(tiny_ckpt), init_seed=3))


def _inputs(model):
    ids = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 3] = model.config.image_token_id
    return {"input_ids": ids, "pixel_values": torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))}


def _perturb_adapters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)  # B starts at zero: make the adapters matter


def test_lora_targets_llm_and_vision_and_freezes_their_base(nemo_model):
    model = nemo_model.model
    targets = apply_lora(model, PeftConfig(method="lora", r=4, alpha=8, targets=_lora_targets()))
    assert any(t.startswith("language_model.") and t.endswith("mlp.down_proj") for t in targets)
    assert any(t.startswith("vision.") and t.endswith("self_attn.out_proj") for t in targets)
    counts = set_trainable(model, FreezeConfig())
    assert counts["lora"] > 0 and counts["projector"] > 0 and counts["llm"] == counts["vision"] == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("projector.") for n in trainable)


def test_merged_export_equals_the_adapted_model(nemo_model, tmp_path):
    model = nemo_model.model
    inputs = _inputs(model)
    apply_lora(model, PeftConfig(method="lora", r=4, alpha=8, targets=_lora_targets()))
    _perturb_adapters(model)
    with torch.no_grad():
        adapted = model(**inputs).logits
        state = merged_state_dict(model)
    assert not any("lora" in k or "base_layer" in k for k in state)
    assert any("lora_A" in k for k in model.state_dict())  # the training model is untouched

    plain = EagleModel(model.config)
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, adapted, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain(**inputs).logits, EagleModel(model.config)(**inputs).logits)

    # the .nemo written by the ModelPT holds the same merged weights and loads as a plain EagleModel
    out = tmp_path / "lora.nemo"
    nemo_model.save_to(str(out))
    loaded = EagleModel.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, adapted, rtol=1e-5, atol=1e-5)

    # merging in place gives the same weights and plain Linear modules again
    assert merge_lora_(model) > 0
    own = model.state_dict()
    assert own.keys() == state.keys() and all(torch.allclose(own[k], state[k], atol=1e-6) for k in state)


@pytest.mark.parametrize("freeze", [FreezeConfig(vision=True, llm=True), FreezeConfig(projector=True),
                                    FreezeConfig(vision=True)])
def test_frozen_modules_get_no_gradient(nemo_model, freeze):
    model = nemo_model.model
    set_trainable(model, freeze)
    inputs = _inputs(model)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, p in model.named_parameters():
        group = {"vision": "vision", "projector": "projector", "language_model": "llm"}[name.split(".")[0]]
        if getattr(freeze, group):
            assert p.grad is None, name
        elif not (name.startswith("language_model.lm_head") or "tower.head" in name):
            assert p.requires_grad, name
    assert sum(p.grad is not None for p in model.parameters()) > 0


def test_nothing_to_train_and_unmatched_targets_fail(nemo_model):
    with pytest.raises(ValueError, match="nothing to train"):
        set_trainable(nemo_model.model, FreezeConfig(vision=True, projector=True, llm=True))
    with pytest.raises(ValueError, match="match no Linear layer"):
        apply_lora(nemo_model.model, PeftConfig(method="lora", targets=["language_model.nothing.*"]))
