"""Eagle2-9B layout (eagle_chat + MOB SigLIP/ConvNeXt tower): load, save, shards, tower order, clear errors."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_eagle import EagleModel
from nemo_eagle.config import (
    CONVNEXT_XXL_DEPTHS,
    CONVNEXT_XXL_DIMS,
    config_from_hf,
    config_to_hf,
    get_preset,
    load_model_config,
)
from nemo_eagle.convert.hf import CheckpointError, read_safetensors

PREFIX = "vision_model.vision_model.vision_towers."


@pytest.fixture(scope="module")
def ckpt(fixtures_dir):
    return fixtures_dir / "eagle2-9b" / "tiny-eagle2-9b"


@pytest.fixture(scope="module")
def model(ckpt):
    return EagleModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")


def _tiles(fixtures_dir, stem="wide_1920x1080"):
    ref = np.load(fixtures_dir / "eagle2-9b" / "expected" / f"{stem}.npz")
    return ref, (torch.from_numpy(ref["tiles_uint8"]).float() / 255 - 0.5) / 0.5


def _copy(ckpt, dst, edit=None, config_edit=None):
    shutil.copytree(ckpt, dst)
    if edit is not None:
        tensors = edit(load_file(str(dst / "model.safetensors")))
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if config_edit is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_config_maps_the_mob_layout_and_writes_it_back(ckpt):
    hf = json.loads((ckpt / "config.json").read_text())
    cfg = config_from_hf(hf)
    assert cfg.vision.is_mixture and cfg.format == "eagle_chat"
    assert (cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.image_size) == (48, 2, 448)
    assert cfg.vision.convnext["depths"] == [1, 1, 2, 1] and cfg.vision.convnext["hidden_sizes"] == [16, 24, 32, 48]
    assert cfg.vision.convnext["layer_norm_eps"] == 1e-5 and cfg.vision.convnext["image_size"] == 512
    assert cfg.projector_in_features == 4 * 48 + 48 == 240 and cfg.tokens_per_tile == 256
    t = cfg.tiling
    assert (t.prompt_format, t.resize, t.alpha, t.max_tiles, t.use_thumbnail) == ("qwen2_chat", "pil", "drop", 12, True)
    assert config_to_hf(cfg) == hf  # every key of the official config survives


def test_released_config_without_sizes_is_convnext_xxlarge(ckpt):
    hf = json.loads((ckpt / "config.json").read_text())
    del hf["vision_config"]["convnext_depths"], hf["vision_config"]["convnext_dims"]
    cfg = config_from_hf(hf)
    assert tuple(cfg.vision.convnext["depths"]) == CONVNEXT_XXL_DEPTHS == (3, 4, 30, 3)
    assert tuple(cfg.vision.convnext["hidden_sizes"]) == CONVNEXT_XXL_DIMS == (384, 768, 1536, 3072)
    back = config_to_hf(cfg)["vision_config"]
    assert "convnext_depths" not in back and "convnext_dims" not in back
    preset = get_preset("nvidia/Eagle2-9B")
    assert preset.vision.convnext["depths"] == [3, 4, 30, 3] and preset.projector_in_features == 4 * 1152 + 3072


def test_convnext_norms_use_eps_1e5(model):
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm

    norms = [m for m in model.vision.convnext.model.modules() if isinstance(m, ConvNextLayerNorm)]
    assert len(norms) == 1 + 3 + 5  # stem, three downsampling layers, five blocks
    assert all(m.eps == 1e-5 for m in norms)


def test_save_is_bitwise_and_sharded_like_the_release(model, ckpt, tmp_path):
    orig = load_file(str(ckpt / "model.safetensors"))
    out = model.save_pretrained(tmp_path / "one")
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(orig)  # unused heads (SigLIP pooling head, ConvNeXt head.norm/fc) are kept
    assert all(torch.equal(orig[k], saved[k]) for k in orig)
    total = sum(t.numel() * t.element_size() for t in orig.values())
    sharded = model.save_pretrained(tmp_path / "four", max_shard_bytes=total * 3 // 10)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    back = read_safetensors(sharded)
    assert set(back) == set(orig) and all(torch.equal(orig[k], back[k]) for k in orig)
    again = EagleModel.from_pretrained(sharded, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_bf16_release_layout_round_trip(ckpt, tmp_path):
    """nvidia/Eagle2-9B ships 4 bf16 shards + index: load at its dtype, save back the same bits."""
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    rel = tmp_path / "release"
    shutil.copytree(ckpt, rel, ignore=shutil.ignore_patterns("model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.array(names, dtype=object), 4)):
        fname = f"model-{i + 1:05d}-of-00004.safetensors"
        save_file({k: tensors[k] for k in chunk}, str(rel / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in chunk})
    (rel / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    m = EagleModel.from_pretrained(rel)
    assert m.dtype == torch.bfloat16 and m.vision.convnext.dtype == torch.bfloat16
    back = read_safetensors(m.save_pretrained(tmp_path / "out"))
    assert set(back) == set(tensors) and all(torch.equal(tensors[k], back[k]) for k in tensors)


def test_towers_are_recognised_by_names_not_index(model, ckpt, fixtures_dir, tmp_path):
    def swap(t):
        out = {}
        for k, v in t.items():
            if k.startswith(PREFIX):
                i = int(k[len(PREFIX)])
                k = f"{PREFIX}{1 - i}{k[len(PREFIX) + 1:]}"
            out[k] = v
        return out

    swapped = _copy(ckpt, tmp_path / "swapped", swap)
    m = EagleModel.from_pretrained(swapped, dtype=torch.float32, attn_implementation="eager")
    assert m.config.vision.convnext["towers"] == ["convnext", "siglip"]
    _, pv = _tiles(fixtures_dir)
    with torch.no_grad():
        assert torch.equal(m.get_image_features(pv[:1]), model.get_image_features(pv[:1]))
    saved = load_file(str(m.save_pretrained(tmp_path / "saved") / "model.safetensors"))
    assert f"{PREFIX}0.vision_tower.stem.0.weight" in saved  # written back in the checkpoint's own order


def test_missing_and_misshaped_tensors_are_named(ckpt, tmp_path):
    stem = f"{PREFIX}1.vision_tower.stem.0.weight"
    missing = _copy(ckpt, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != stem})
    with pytest.raises(CheckpointError, match=r"missing tensors: .*stages|missing tensors: .*stem\.0\.weight"):
        EagleModel.from_pretrained(missing)
    fc = f"{PREFIX}1.vision_tower.stages.2.blocks.0.mlp.fc1.weight"
    bad = _copy(ckpt, tmp_path / "bad", lambda t: {**t, fc: torch.zeros(7, 32)})
    with pytest.raises(CheckpointError, match=re.escape(fc) + r" has shape \(7, 32\).*\(128, 32\)"):
        EagleModel.from_pretrained(bad)
    alien = _copy(
        ckpt, tmp_path / "alien", lambda t: {**t, f"{PREFIX}1.vision_tower.stages.0.blocks.0.foo": t[stem].clone()}
    )
    with pytest.raises(CheckpointError, match="stages.0.blocks.0.foo"):
        EagleModel.from_pretrained(alien)
    one = _copy(ckpt, tmp_path / "one", lambda t: {k: v for k, v in t.items() if not k.startswith(f"{PREFIX}1.")})
    with pytest.raises(CheckpointError, match="vision towers 0 and 1"):
        EagleModel.from_pretrained(one)


def test_convnext_sizes_that_disagree_with_the_tensors_are_named(ckpt, tmp_path):
    def edit(cfg):
        cfg["vision_config"]["convnext_dims"] = [16, 24, 40, 48]

    wrong = _copy(ckpt, tmp_path / "wrong", config_edit=edit)
    with pytest.raises(CheckpointError, match=r"stages\.2\..*has shape"):
        EagleModel.from_pretrained(wrong)


def test_single_tower_config_with_moe_tensors_is_refused(ckpt, tmp_path):
    def edit(cfg):
        vis = cfg["vision_config"]
        cfg["vision_config"] = dict(vis["siglip_vision_config"])

    wrong = _copy(ckpt, tmp_path / "wrong", config_edit=edit)
    assert not load_model_config(wrong).vision.is_mixture
    with pytest.raises(CheckpointError, match="mixture-of-encoders"):
        EagleModel.from_pretrained(wrong)



@pytest.mark.parametrize("edit,error,match", [
    (lambda v: v.update(vision_path="MOB:palisiglip;siglip2"), NotImplementedError, "one SigLIP \\+ one ConvNeXt"),
    (lambda v: v.update(normalize_type="imagenet"), NotImplementedError, "normalize_type 'imagenet'"),
    (lambda v: v.pop("siglip_vision_config"), TypeError, "siglip_vision_config"),
])
def test_unsupported_mob_configs_are_named(ckpt, edit, error, match):
    hf = json.loads((ckpt / "config.json").read_text())
    edit(hf["vision_config"])
    with pytest.raises(error, match=match):
        config_from_hf(hf)


def test_unknown_template_is_refused(ckpt):
    hf = json.loads((ckpt / "config.json").read_text())
    hf["template"] = "vicuna_v1"
    with pytest.raises(NotImplementedError, match="template 'vicuna_v1'"):
        config_from_hf(hf)
