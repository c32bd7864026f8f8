"""The HF <-> megatron weight table: exact round trips, megatron's fused layouts, TP sharding, clear errors."""

from __future__ import annotations

import pytest
import torch

from nemo_eagle.config import load_model_config
from nemo_eagle.megatron import bridge


@pytest.fixture(scope="module")
def hf(tiny_ckpt):
    from safetensors.torch import load_file

    return load_file(str(tiny_ckpt / "model.safetensors"))


@pytest.fixture(scope="module")
def cfg(tiny_ckpt):
    return load_model_config(tiny_ckpt)


def test_hf_megatron_hf_round_trip_is_bitwise(hf, cfg):
    mg = bridge.hf_to_megatron(hf, cfg, padded_vocab=512)
    back = bridge.megatron_to_hf(mg, cfg)
    assert sorted(back) == sorted(hf)
    for k in hf:
        assert back[k].dtype == hf[k].dtype and torch.equal(back[k], hf[k]), k
    assert "language_model.output_layer.weight" not in mg  # tied: megatron shares the embedding


def test_fused_layouts_follow_megatron_order(hf, cfg):
    """linear_qkv holds, per KV group g: the q heads of g, then k head g, then v head g; linear_fc1 = [gate; up]."""
    mg = bridge.hf_to_megatron(hf, cfg, padded_vocab=512)
    llm = cfg.llm
    d, ng, qpg = llm.head_dim, llm.num_key_value_heads, llm.num_attention_heads // llm.num_key_value_heads
    p = "language_model.model.layers.1."
    qkv = mg["language_model.decoder.layers.1.self_attention.linear_qkv.weight"]
    assert qkv.shape == ((llm.num_attention_heads + 2 * ng) * d, llm.hidden_size)
    for g in range(ng):
        block = qkv[g * (qpg + 2) * d:(g + 1) * (qpg + 2) * d]
        assert torch.equal(block[: qpg * d], hf[p + "self_attn.q_proj.weight"][g * qpg * d:(g + 1) * qpg * d])
        assert torch.equal(block[qpg * d:(qpg + 1) * d], hf[p + "self_attn.k_proj.weight"][g * d:(g + 1) * d])
        assert torch.equal(block[(qpg + 1) * d:], hf[p + "self_attn.v_proj.weight"][g * d:(g + 1) * d])
    fc1 = mg["language_model.decoder.layers.1.mlp.linear_fc1.weight"]
    assert torch.equal(fc1, torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]]))
    emb = mg["language_model.embedding.word_embeddings.weight"]
    assert emb.shape[0] == 512 and torch.equal(emb[:431], hf["language_model.model.embed_tokens.weight"])
    assert not emb[431:].any()
    # vision attention is MHA: one q, k, v head per group
    vq = mg["vision.decoder.layers.0.self_attention.linear_qkv.bias"]
    hd = cfg.vision.hidden_size // cfg.vision.num_attention_heads
    vp = "vision_model.vision_model.encoder.layers.0.self_attn."
    assert torch.equal(vq[hd:2 * hd], hf[vp + "k_proj.bias"][:hd])
    assert torch.equal(vq[3 * hd:4 * hd], hf[vp + "q_proj.bias"][hd:2 * hd])


@pytest.mark.parametrize("tp", [1, 2])
def test_tp_shard_then_merge_is_identity(hf, cfg, tp):
    mg = bridge.hf_to_megatron(hf, cfg, padded_vocab=512)
    for name, full in mg.items():
        shards = [bridge.shard(name, full, r, tp) for r in range(tp)]
        assert torch.equal(bridge.merge_tp(name, shards), full), name


def test_tp_shards_hold_whole_kv_groups_and_gate_up_halves(hf, cfg):
    mg = bridge.hf_to_megatron(hf, cfg, padded_vocab=512)
    p = "language_model.model.layers.0."
    fc1 = bridge.shard("language_model.decoder.layers.0.mlp.linear_fc1.weight",
                       mg["language_model.decoder.layers.0.mlp.linear_fc1.weight"], 1, 2)
    inter = cfg.llm.intermediate_size
    assert torch.equal(fc1[: inter // 2], hf[p + "mlp.gate_proj.weight"][inter // 2:])
    assert torch.equal(fc1[inter // 2:], hf[p + "mlp.up_proj.weight"][inter // 2:])
    qkv1 = bridge.shard("language_model.decoder.layers.0.self_attention.linear_qkv.weight",
                        mg["language_model.decoder.layers.0.self_attention.linear_qkv.weight"], 1, 2)
    d = cfg.llm.head_dim
    assert torch.equal(qkv1[-d:], hf[p + "self_attn.v_proj.weight"][d:])  # rank 1 ends with v of KV group 1
    row = bridge.shard("language_model.decoder.layers.0.self_attention.linear_proj.weight",
                       hf[p + "self_attn.o_proj.weight"], 0, 2)
    assert row.shape == (cfg.llm.hidden_size, cfg.llm.hidden_size // 2)
    with pytest.raises(ValueError, match="not divisible by tp=3"):
        bridge.shard("language_model.decoder.layers.0.mlp.linear_fc2.weight", torch.zeros(64, 128), 0, 3)


def test_missing_and_unknown_tensors_are_named(hf, cfg):
    broken = dict(hf)
    del broken["language_model.model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="layers.1.mlp.up_proj.weight"):
        bridge.hf_to_megatron(broken, cfg, padded_vocab=512)
    extra = dict(hf, **{"language_model.model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="no megatron mapping"):
        bridge.hf_to_megatron(extra, cfg, padded_vocab=512)
    ignored = dict(hf, **{"vision_model.vision_model.head.probe": torch.zeros(1)})
    assert bridge.megatron_to_hf(bridge.hf_to_megatron(ignored, cfg, padded_vocab=512), cfg).keys() == hf.keys()


def test_local_module_names_map_to_checkpoint_names():
    assert bridge.canonical_name("language_model.decoder.layers.0.input_layernorm.weight", 3) == \
        "language_model.decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    assert bridge.canonical_name("vision.decoder.layers.1.pre_mlp_layernorm.bias", 3) == \
        "vision.decoder.layers.1.mlp.linear_fc1.layer_norm_bias"
