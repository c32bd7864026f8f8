"""Official HF layout I/O: bitwise round trip, sharding, untied heads, and clear errors on bad checkpoints."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_eagle import EagleModel
from nemo_eagle.config import config_from_hf, config_to_hf, get_preset, load_model_config
from nemo_eagle.convert.hf import CheckpointError, read_safetensors


def test_save_load_round_trip_is_bitwise(tiny_ckpt, tmp_path):
    model = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32)
    out = model.save_pretrained(tmp_path / "rt")
    orig, saved = load_file(str(tiny_ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(orig) == set(saved)
    assert "language_model.lm_head.weight" not in saved  # tied, as the official files
    for k in orig:
        assert torch.equal(orig[k], saved[k]), k
    assert (out / "tokenizer.json").exists() and (out / "chat_template.json").exists()
    again = EagleModel.from_pretrained(out, dtype=torch.float32)
    assert load_model_config(out).to_dict() == load_model_config(tiny_ckpt).to_dict() or \
        again.config.llm == model.config.llm


def test_config_json_round_trip_keeps_keys(tiny_ckpt):
    hf = json.loads((tiny_ckpt / "config.json").read_text())
    back = config_to_hf(config_from_hf(hf))
    for key in ("model_type", "select_layer", "downsample_ratio", "min_dynamic_tiles", "max_dynamic_tiles",
                "use_thumbnail", "image_token_index", "template"):
        assert back[key] == hf[key], key
    assert back["text_config"]["rope_theta"] == 1e6 and back["text_config"]["vocab_size"] == 431


def test_legacy_eagle_chat_config():
    hf = {
        "model_type": "eagle_chat",
        "select_layer": -1,
        "downsample_ratio": 0.5,
        "max_dynamic_patch": 6,
        "min_dynamic_patch": 1,
        "use_thumbnail": True,
        "force_image_size": 448,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "image_size": 448,
            "patch_size": 14,
        },
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"],
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 431,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
        },
    }
    cfg = config_from_hf(hf)
    assert cfg.format == "eagle_chat" and cfg.tiling.prompt_format == "eagle_chat"
    assert cfg.tiling.max_tiles == 6 and cfg.llm.model_type == "qwen2" and not cfg.llm.tie_word_embeddings
    back = config_to_hf(cfg)
    assert back["model_type"] == "eagle_chat" and back["max_dynamic_patch"] == 6 and "llm_config" in back


def test_presets_have_spec_shapes():
    one = get_preset("nvidia/Eagle2-1B")
    assert (
        one.llm.hidden_size,
        one.llm.num_hidden_layers,
        one.llm.num_attention_heads,
        one.llm.num_key_value_heads,
    ) == (896, 24, 14, 2)
    assert one.tokens_per_tile == 256 and one.vision.hidden_size == 1152 and one.llm.tie_word_embeddings
    nine = get_preset("Eagle2-9B")
    assert nine.vision.is_mixture and nine.projector_in_features == 4 * 1152 + 3072 and not nine.llm.tie_word_embeddings
    e25 = get_preset("eagle2.5-8b")
    assert e25.vision.patch_size == 16 and e25.vision.image_size == 512 and e25.tokens_per_tile == 256
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("eagle3")


def test_untied_and_sharded_checkpoint(tiny_ckpt, tmp_path):
    model = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32)
    with torch.no_grad():
        model.language_model.lm_head.weight = torch.nn.Parameter(model.language_model.lm_head.weight.clone() * 2)
    model.config.llm.tie_word_embeddings = False
    out = model.save_pretrained(tmp_path / "untied", max_shard_bytes=300_000)
    assert (out / "model.safetensors.index.json").exists() and not (out / "model.safetensors").exists()
    tensors = read_safetensors(out)
    assert "language_model.lm_head.weight" in tensors
    back = EagleModel.from_pretrained(out, dtype=torch.float32)
    assert not back.config.llm.tie_word_embeddings
    emb, head = back.language_model.get_input_embeddings().weight, back.language_model.lm_head.weight
    assert head.data_ptr() != emb.data_ptr() and torch.equal(head, 2 * emb)


def _copy_ckpt(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_is_named(tiny_ckpt, tmp_path):
    ck = _copy_ckpt(tiny_ckpt, tmp_path / "m", lambda t: t.pop("mlp1.1.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: mlp1\.1\.weight"):
        EagleModel.from_pretrained(ck)


def test_misshaped_tensor_is_named(tiny_ckpt, tmp_path):
    def edit(t):
        t["language_model.model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    ck = _copy_ckpt(tiny_ckpt, tmp_path / "s", edit)
    with pytest.raises(
        CheckpointError, match=r"language_model\.model\.layers\.0\.mlp\.up_proj\.weight has shape \(3, 3\)"
    ):
        EagleModel.from_pretrained(ck)


def test_vision_head_is_ignored_and_strangers_rejected(tiny_ckpt, tmp_path):
    ck = _copy_ckpt(
        tiny_ckpt, tmp_path / "h", lambda t: t.update({"vision_model.vision_model.head.probe": torch.zeros(1, 1, 64)})
    )
    EagleModel.from_pretrained(ck)  # head.* is present in some official files and unused
    ck2 = _copy_ckpt(tiny_ckpt, tmp_path / "x", lambda t: t.update({"some_other_model.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'some_other_model.weight'"):
        EagleModel.from_pretrained(ck2)


def test_wrong_checkpoint_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="not an Eagle2 config"):
        EagleModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        EagleModel.from_pretrained(tmp_path / "nope")


def test_mixture_of_encoders_config_without_siglip_config_is_refused_clearly():
    hf = {"model_type": "eagle_chat", "llm_config": {"architectures": ["Qwen2ForCausalLM"]},
          "vision_config": {"model_type": "MOB", "vision_tower": "palisiglip;convnext-1024"}}
    with pytest.raises(TypeError, match="siglip_vision_config"):
        config_from_hf(hf)


def test_mixture_tower_shuffles_then_concatenates_channels():
    from nemo_eagle.config import VisionConfig
    from nemo_eagle.modeling.vision import VisionEncoder

    # 56 px SigLIP (4x4 patches, shuffled to 2x2) next to a two-stage ConvNeXt at 16 px (stride 8: 2x2)
    cfg = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=56,
                       patch_size=14, convnext={"image_size": 16, "depths": [1, 1], "hidden_sizes": [8, 16]})
    tower = VisionEncoder(cfg, "eager")
    feats = tower(torch.rand(3, 3, 56, 56) * 2 - 1)
    assert feats.shape == (3, 4, 4 * 32 + 16) and cfg.convnext_channels == 16
