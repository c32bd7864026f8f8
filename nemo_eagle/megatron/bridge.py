"""Weight bridge between the official HF checkpoint layout and the megatron layout, as one table of mappings.

Megatron names are the distributed-checkpoint names (Transformer Engine layout: norms fused into the next linear,
``linear_qkv`` holding each KV group as [q heads of the group, k, v], ``linear_fc1`` = [gate; up]) with global
layer numbers. ``stage_state_dict`` turns a full megatron dict into one rank's module state dict (local norm names,
pipeline-local layer numbers, its tensor-parallel slice); ``merge_tp`` puts TP slices back together.

Eagle2-9B checkpoints name their SigLIP ``vision_model.vision_model.vision_towers.{i}.vision_tower.vision_model.``;
``MoEView`` presents them under the single-tower names the table uses. Its ConvNeXt branch and the unused SigLIP
pooling head are replicated modules of the megatron model (``convnext.*``, ``vision_head.*``, our module names),
copied whole and never split across TP ranks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from collections.abc import Mapping as TMapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nemo_eagle.config import EagleConfig

COPY, QKV, GATE_UP, VOCAB = "copy", "qkv", "gate_up", "vocab"
COLUMN, ROW = 0, 1  # tensor-parallel split dim of the megatron tensor; None = replicated


@dataclass(frozen=True)
class Mapping:
    megatron: str  # may hold {i}: a layer of `part`
    hf: tuple[str, ...]
    kind: str = COPY
    split: int | None = None
    part: str = ""  # "vision" | "llm": which layer count expands {i}


_V = "vision_model.vision_model."
_VL = _V + "encoder.layers.{i}."
_ML = "vision.decoder.layers.{i}."
_L = "language_model.model."
_LL = _L + "layers.{i}."
_GL = "language_model.decoder.layers.{i}."


def _qkv(prefix: str, names: tuple[str, str, str], suffix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{n}.{suffix}" for n in names)


TABLE: tuple[Mapping, ...] = (
    # SigLIP tower
    Mapping("vision.patch_embed.weight", (_V + "embeddings.patch_embedding.weight",)),
    Mapping("vision.patch_embed.bias", (_V + "embeddings.patch_embedding.bias",)),
    Mapping("vision.position_embeddings.weight", (_V + "embeddings.position_embedding.weight",)),
    Mapping(_ML + "self_attention.linear_qkv.layer_norm_weight", (_VL + "layer_norm1.weight",), part="vision"),
    Mapping(_ML + "self_attention.linear_qkv.layer_norm_bias", (_VL + "layer_norm1.bias",), part="vision"),
    Mapping(
        _ML + "self_attention.linear_qkv.weight",
        _qkv(_VL + "self_attn.", ("q_proj", "k_proj", "v_proj"), "weight"),
        QKV,
        COLUMN,
        "vision",
    ),
    Mapping(
        _ML + "self_attention.linear_qkv.bias",
        _qkv(_VL + "self_attn.", ("q_proj", "k_proj", "v_proj"), "bias"),
        QKV,
        COLUMN,
        "vision",
    ),
    Mapping(_ML + "self_attention.linear_proj.weight", (_VL + "self_attn.out_proj.weight",), COPY, ROW, "vision"),
    Mapping(_ML + "self_attention.linear_proj.bias", (_VL + "self_attn.out_proj.bias",), part="vision"),
    Mapping(_ML + "mlp.linear_fc1.layer_norm_weight", (_VL + "layer_norm2.weight",), part="vision"),
    Mapping(_ML + "mlp.linear_fc1.layer_norm_bias", (_VL + "layer_norm2.bias",), part="vision"),
    Mapping(_ML + "mlp.linear_fc1.weight", (_VL + "mlp.fc1.weight",), COPY, COLUMN, "vision"),
    Mapping(_ML + "mlp.linear_fc1.bias", (_VL + "mlp.fc1.bias",), COPY, COLUMN, "vision"),
    Mapping(_ML + "mlp.linear_fc2.weight", (_VL + "mlp.fc2.weight",), COPY, ROW, "vision"),
    Mapping(_ML + "mlp.linear_fc2.bias", (_VL + "mlp.fc2.bias",), part="vision"),
    Mapping("vision.post_layernorm.weight", (_V + "post_layernorm.weight",)),
    Mapping("vision.post_layernorm.bias", (_V + "post_layernorm.bias",)),
    # projector (mlp1: LayerNorm, Linear, GELU, Linear)
    Mapping("projector.norm.weight", ("mlp1.0.weight",)),
    Mapping("projector.norm.bias", ("mlp1.0.bias",)),
    Mapping("projector.fc1.weight", ("mlp1.1.weight",)),
    Mapping("projector.fc1.bias", ("mlp1.1.bias",)),
    Mapping("projector.fc2.weight", ("mlp1.3.weight",)),
    Mapping("projector.fc2.bias", ("mlp1.3.bias",)),
    # decoder
    Mapping("language_model.embedding.word_embeddings.weight", (_L + "embed_tokens.weight",), VOCAB, COLUMN),
    Mapping(_GL + "self_attention.linear_qkv.layer_norm_weight", (_LL + "input_layernorm.weight",), part="llm"),
    Mapping(
        _GL + "self_attention.linear_qkv.weight",
        _qkv(_LL + "self_attn.", ("q_proj", "k_proj", "v_proj"), "weight"),
        QKV,
        COLUMN,
        "llm",
    ),
    Mapping(
        _GL + "self_attention.linear_qkv.bias",
        _qkv(_LL + "self_attn.", ("q_proj", "k_proj", "v_proj"), "bias"),
        QKV,
        COLUMN,
        "llm",
    ),
    Mapping(_GL + "self_attention.linear_proj.weight", (_LL + "self_attn.o_proj.weight",), COPY, ROW, "llm"),
    Mapping(_GL + "mlp.linear_fc1.layer_norm_weight", (_LL + "post_attention_layernorm.weight",), part="llm"),
    Mapping(
        _GL + "mlp.linear_fc1.weight",
        (_LL + "mlp.gate_proj.weight", _LL + "mlp.up_proj.weight"),
        GATE_UP,
        COLUMN,
        "llm",
    ),
    Mapping(_GL + "mlp.linear_fc2.weight", (_LL + "mlp.down_proj.weight",), COPY, ROW, "llm"),
    Mapping("language_model.decoder.final_layernorm.weight", (_L + "norm.weight",)),
    Mapping("language_model.output_layer.weight", ("language_model.lm_head.weight",), VOCAB, COLUMN),
)
# Present in some official checkpoints, unused by EAGLE2 (SigLIP's pooling head).
IGNORED_HF = re.compile(r"^vision_model\.vision_model\.head\.")
OUTPUT = "language_model.output_layer.weight"
EMBED = "language_model.embedding.word_embeddings.weight"


REPLICATED = ("convnext.", "vision_head.")  # Eagle2-9B modules held whole on every TP rank


class MoEView:
    """An Eagle2-9B checkpoint's tensors under the names the table reads: the SigLIP tower's as a single tower's,
    the ConvNeXt's and the SigLIP pooling head's as the megatron module names (``convnext.*``, ``vision_head.*``)."""

    def __init__(self, hf: TMapping[str, Tensor], cfg: EagleConfig) -> None:
        from nemo_eagle.convert import hf as hf_io

        self._hf = hf
        towers = hf_io.towers_from_names(hf.keys())
        self._names = {_moe_to_flat(k, towers): k for k in list(hf.keys())}

    def keys(self) -> Iterable[str]:
        return self._names.keys()

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __getitem__(self, key: str) -> Tensor:
        return self._hf[self._names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)


def _moe_to_flat(name: str, towers: tuple[str, ...]) -> str:
    from nemo_eagle.convert import hf as hf_io
    from nemo_eagle.modeling.convnext import timm_to_ours

    m = re.fullmatch(re.escape(hf_io.MOE_PREFIX) + r"(\d+)\.vision_tower\.(.+)", name)
    if m is None:
        return name
    idx, rest = int(m.group(1)), m.group(2)
    if towers[idx] == "siglip":
        rest = rest.removeprefix("vision_model.")
        return "vision_head." + rest[len("head."):] if rest.startswith("head.") else _V + rest
    ours = timm_to_ours(rest)
    if ours is None:
        raise KeyError(f"HF tensor {name} is not a ConvNeXt tensor of vision tower {idx}")
    return "convnext." + ours


def _flat_to_moe(name: str, towers: tuple[str, ...]) -> str:
    from nemo_eagle.convert import hf as hf_io
    from nemo_eagle.modeling.convnext import ours_to_timm

    if name.startswith("convnext."):
        return f"{hf_io.MOE_PREFIX}{towers.index('convnext')}.vision_tower.{ours_to_timm(name[len('convnext.'):])}"
    siglip = f"{hf_io.MOE_PREFIX}{towers.index('siglip')}.vision_tower.vision_model."
    if name.startswith("vision_head."):
        return siglip + "head." + name[len("vision_head."):]
    if name.startswith(_V):
        return siglip + name[len(_V):]
    return name


def _expand(cfg: EagleConfig) -> Iterator[tuple[Mapping, str, tuple[str, ...]]]:
    """Every (mapping, megatron name, hf names) with layer numbers filled in."""
    layers = {"vision": cfg.vision.num_hidden_layers, "llm": cfg.llm.num_hidden_layers, "": 1}
    for m in TABLE:
        for i in range(layers[m.part]):
            yield m, m.megatron.format(i=i), tuple(h.format(i=i) for h in m.hf)


def _groups(cfg: EagleConfig, name: str) -> tuple[int, int, int]:
    """(query groups, query heads per group, head dim) of the attention a qkv name belongs to."""
    if name.startswith("vision."):
        v = cfg.vision
        return v.num_attention_heads, 1, v.hidden_size // v.num_attention_heads
    llm = cfg.llm
    return llm.num_key_value_heads, llm.num_attention_heads // llm.num_key_value_heads, llm.head_dim


# ----------------------------------------------------------------------------------------- HF <-> full megatron
def hf_to_megatron(hf: TMapping[str, Tensor], cfg: EagleConfig, padded_vocab: int,
                   names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Official HF tensors -> full (unsharded) megatron tensors, only ``names`` if given (a pipeline stage reads
    just its own). Every HF name is checked either way: missing or unknown names raise."""
    if cfg.vision.is_mixture:
        hf = MoEView(hf, cfg)
    tied = "language_model.lm_head.weight" not in hf
    qkv_bias = f"{_L}layers.0.self_attn.q_proj.bias" in hf
    plan = []
    used: set[str] = set()
    for m, name, sources in _expand(cfg):
        if (name == OUTPUT and tied) or (m.kind == QKV and name.endswith(".bias") and m.part == "llm" and not qkv_bias):
            continue
        missing = [s for s in sources if s not in hf]
        if missing:
            raise KeyError(f"HF checkpoint lacks {missing[0]} (needed for {name}); is this an Eagle2 checkpoint "
                           f"of the configured size?")
        used.update(sources)
        plan.append((m, name, sources))
    replicated = [k for k in hf if cfg.vision.is_mixture and k.startswith(REPLICATED)]
    if cfg.vision.is_mixture and not any(k.startswith("convnext.") for k in replicated):
        raise KeyError("Eagle2-9B checkpoint has no ConvNeXt tensors")
    unknown = sorted(k for k in hf if k not in used and k not in replicated and not IGNORED_HF.match(k))
    if unknown:
        raise KeyError(f"{len(unknown)} HF tensors have no megatron mapping, e.g. {unknown[:3]}")
    wanted = None if names is None else set(names)
    out: dict[str, Tensor] = {k: hf[k] for k in replicated if wanted is None or k in wanted}
    for m, name, sources in plan:
        if wanted is not None and name not in wanted:
            continue
        tensors = [hf[s] for s in sources]
        if m.kind == QKV:
            ng, _, _ = _groups(cfg, name)
            # (ng, [q-group | k | v] rows, ...) -> megatron's interleaved [q-group, k, v] per KV group
            out[name] = torch.cat([t.reshape(ng, -1, *t.shape[1:]) for t in tensors], dim=1).reshape(
                -1, *tensors[0].shape[1:])
        elif m.kind == GATE_UP:
            out[name] = torch.cat(tensors, dim=0)
        elif m.kind == VOCAB and padded_vocab > tensors[0].shape[0]:
            t = tensors[0]
            out[name] = torch.cat([t, t.new_zeros(padded_vocab - t.shape[0], *t.shape[1:])])
        else:
            out[name] = tensors[0]
    return out


def megatron_to_hf(mg: TMapping[str, Tensor], cfg: EagleConfig) -> dict[str, Tensor]:
    """Full megatron tensors -> official HF tensors (padding dropped; lm_head absent when embeddings are tied)."""
    out: dict[str, Tensor] = {}
    vocab = cfg.llm.vocab_size
    for m, name, targets in _expand(cfg):
        if name not in mg:
            if name == OUTPUT or (m.kind == QKV and name.endswith(".bias") and m.part == "llm"):
                continue
            raise KeyError(f"megatron state lacks {name}")
        t = mg[name]
        if m.kind == QKV:
            ng, qpg, d = _groups(cfg, name)
            parts = t.reshape(ng, (qpg + 2) * d, *t.shape[1:]).split([qpg * d, d, d], dim=1)  # (ng, rows, ...)
            out.update({k: p.reshape(-1, *t.shape[1:]).contiguous() for k, p in zip(targets, parts)})
        elif m.kind == GATE_UP:
            gate, up = t.chunk(2, dim=0)
            out[targets[0]], out[targets[1]] = gate.contiguous(), up.contiguous()
        elif m.kind == VOCAB:
            out[targets[0]] = t[:vocab].contiguous()
        else:
            out[targets[0]] = t
    if cfg.llm.tie_word_embeddings:
        out.pop("language_model.lm_head.weight", None)
    if cfg.vision.is_mixture:
        towers = tuple(cfg.vision.convnext.get("towers", ("siglip", "convnext")))
        out.update({k: t for k, t in mg.items() if k.startswith(REPLICATED)})
        out = {_flat_to_moe(k, towers): t for k, t in out.items()}
    return out


# ----------------------------------------------------------------------------------------- tensor parallel
def _mapping_of(name: str) -> Mapping:
    pattern = re.sub(r"\.\d+\.", ".{i}.", name, count=1)
    for m in TABLE:
        if m.megatron == pattern:
            return m
    raise KeyError(f"no bridge mapping for megatron tensor {name}")


def shard(name: str, full: Tensor, tp_rank: int, tp: int) -> Tensor:
    """This TP rank's slice of a full megatron tensor."""
    if name.startswith(REPLICATED):
        return full
    m = _mapping_of(name)
    if m.split is None or tp == 1:
        return full
    if m.kind == GATE_UP:  # each rank holds [gate slice; up slice]
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp)[tp_rank], up.chunk(tp)[tp_rank]]).contiguous()
    if full.shape[m.split] % tp:
        raise ValueError(f"{name}: dim {m.split} of size {full.shape[m.split]} is not divisible by tp={tp}")
    # QKV groups are contiguous blocks, so a plain chunk hands each rank whole KV groups.
    return full.chunk(tp, dim=m.split)[tp_rank].contiguous()


def merge_tp(name: str, shards: list[Tensor]) -> Tensor:
    """Inverse of ``shard``: the full tensor from every TP rank's slice (in rank order)."""
    if name.startswith(REPLICATED):
        return shards[0]
    m = _mapping_of(name)
    if m.split is None or len(shards) == 1:
        return shards[0]
    if m.kind == GATE_UP:
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(shards, dim=m.split)


def canonical_name(module_key: str, layer_offset: int) -> str:
    """A stage's module state-dict key -> the megatron table name (TE norm names, global layer number)."""
    from nemo_eagle.megatron.specs import LOCAL_TO_TE_KEYS

    key = module_key
    for local, te in LOCAL_TO_TE_KEYS.items():
        key = re.sub(r"(\.layers\.\d+\.)" + re.escape(local), r"\g<1>" + te, key)
    m = re.match(r"^(language_model\.decoder\.layers\.)(\d+)(\..*)$", key)
    if m and layer_offset:
        key = f"{m[1]}{int(m[2]) + layer_offset}{m[3]}"
    return key


def stage_state_dict(model, full: TMapping[str, Tensor], tp_rank: int, tp: int) -> dict[str, Tensor]:
    """The module state dict of this rank's ``EagleMegatronModel`` stage, cut from a full megatron dict."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    offset = get_transformer_layer_offset(model.language_model.config)
    out = {}
    for key in model.state_dict():
        if key.endswith("_extra_state"):
            continue
        name = canonical_name(key, offset)
        if name == OUTPUT and OUTPUT not in full and model.share_embeddings_and_output_weights:
            name = EMBED  # tied: the last stage holds its own copy of the input embedding
        if name not in full:
            raise KeyError(f"no weight for {key} (megatron name {name})")
        out[key] = shard(name, full[name], tp_rank, tp)
    return out


# ----------------------------------------------------------------------------------------- HF files
class HFWeights:
    """Lazy reader of an HF checkpoint's safetensors (single file or sharded with an index)."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (path / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
        self._handles = {f: safe_open(str(path / f), framework="pt") for f in files}
        self._where = {k: f for f, h in self._handles.items() for k in h.keys()}  # noqa: SIM118 - a safetensors handle, not a dict

    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __getitem__(self, key: str) -> Tensor:
        return self._handles[self._where[key]].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
