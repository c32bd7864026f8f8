"""Typed configs for EAGLE2 models, presets for the released sizes, and the HF config.json mapping.

HF `config.json` (``eagle_2_5_vl`` and the older ``eagle_chat`` layout) is the source of truth for released
checkpoints: ``config_from_hf`` returns a new ``EagleConfig`` and ``config_to_hf`` writes one back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fields of a vision/text config that live in typed attributes; everything else an HF config carries is
# kept verbatim in `extra` so a load -> save round trip loses nothing.
_VISION_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
    "patch_size", "hidden_act", "layer_norm_eps", "num_channels",
)
_LLM_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "hidden_act", "tie_word_embeddings",
)
PROMPT_FORMATS = ("eagle_2_5_vl", "eagle_chat")


@dataclass(kw_only=True)
class VisionConfig:
    """The vision tower. ``model_type`` names a tower class (see ``modeling.vision``)."""

    model_type: str = "siglip_vision_model"
    hidden_size: int = 1152
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    image_size: int = 448
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    num_channels: int = 3
    select_layer: int = -1  # -1: output after post_layernorm; k: hidden_states[k]
    # Mixture-of-encoders towers (Eagle2-9B): a ConvNeXt branch whose features are resized to the SigLIP
    # grid and concatenated on channels. Empty for single-tower models.
    convnext: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_size(self) -> int:
        """Patches per side of one tile."""
        return self.image_size // self.patch_size

    @property
    def output_channels(self) -> int:
        """Channels per patch that reach the pixel shuffle."""
        return self.hidden_size + int(self.convnext.get("hidden_sizes", [0])[-1] if self.convnext else 0)


@dataclass(kw_only=True)
class ProjectorConfig:
    """``mlp1``: pixel shuffle -> LayerNorm -> Linear -> GELU -> Linear."""

    shuffle_factor: int = 2  # HF downsample_ratio=0.5; an int cannot round wrong
    hidden_act: str = "gelu"  # exact erf GELU, a name, never a callable
    layer_norm_eps: float = 1e-5


@dataclass(kw_only=True)
class LLMConfig:
    """The causal LM, in HF vocabulary. ``model_type`` is a transformers model type (qwen2, llama, nemotron)."""

    model_type: str = "qwen2"
    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    vocab_size: int = 151674
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return int(self.extra.get("head_dim") or self.hidden_size // self.num_attention_heads)


@dataclass(kw_only=True)
class TilingConfig:
    """The preprocessing contract stored with every checkpoint: training, serving and embedding all read it."""

    tile_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    prompt_format: str = "eagle_2_5_vl"
    # eagle_chat's released code ends prompts with "<|im_end|>assistant\n"; off unless asked for.
    legacy_generation_prompt_bug: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got min_tiles={self.min_tiles}, max_tiles={self.max_tiles}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"unknown prompt_format {self.prompt_format!r}; choose one of {PROMPT_FORMATS}")
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)


@dataclass(kw_only=True)
class EagleConfig:
    vision: VisionConfig
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig
    tiling: TilingConfig = field(default_factory=TilingConfig)
    image_token_id: int | None = None  # None: read it from the tokenizer (<IMG_CONTEXT>)
    format: str = "eagle_2_5_vl"  # config.json layout to write back: eagle_2_5_vl | eagle_chat
    extra: dict[str, Any] = field(default_factory=dict)  # top-level HF keys we do not interpret

    @property
    def tokens_per_tile(self) -> int:
        """The one formula for image tokens per tile; data/, serve/ and embed/ call it."""
        return (self.vision.grid_size // self.projector.shuffle_factor) ** 2

    @property
    def projector_in_features(self) -> int:
        return self.vision.output_channels * self.projector.shuffle_factor**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EagleConfig:
        d = copy.deepcopy(d)
        return cls(
            vision=VisionConfig(**d.pop("vision")),
            projector=ProjectorConfig(**d.pop("projector", {})),
            llm=LLMConfig(**d.pop("llm")),
            tiling=TilingConfig(**d.pop("tiling", {})),
            **d,
        )

    def replace(self, **changes: Any) -> EagleConfig:
        """A copy with sub-configs replaced; nested dicts update the sub-config's fields."""
        d = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(d.get(key), dict):
                d[key].update(value)
            else:
                d[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return EagleConfig.from_dict(d)


# ----------------------------------------------------------------------------------------------- presets
def _siglip_so400m(image_size: int = 448, patch_size: int = 14) -> VisionConfig:
    return VisionConfig(image_size=image_size, patch_size=patch_size)


def _qwen25(hidden: int, layers: int, heads: int, kv: int, inter: int, tied: bool) -> LLMConfig:
    return LLMConfig(
        model_type="qwen2", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=inter, vocab_size=151674, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
    )


# ConvNeXt-XXLarge (CLIP-ConvNeXt of the Eagle2-9B mixture of encoders), run at 512 px.
_CONVNEXT_XXL = {
    "image_size": 512,
    "depths": [3, 4, 30, 3],
    "hidden_sizes": [384, 768, 1536, 3072],
    "layer_norm_eps": 1e-6,
}

PRESETS: dict[str, EagleConfig] = {
    "eagle2-1b": EagleConfig(vision=_siglip_so400m(), llm=_qwen25(896, 24, 14, 2, 4864, tied=True)),
    "eagle2-2b": EagleConfig(vision=_siglip_so400m(), llm=_qwen25(1536, 28, 12, 2, 8960, tied=True)),
    "eagle2-9b": EagleConfig(
        vision=VisionConfig(model_type="eagle_moe_siglip_convnext", convnext=dict(_CONVNEXT_XXL)),
        llm=_qwen25(3584, 28, 28, 4, 18944, tied=False),
    ),
    "eagle2.5-8b": EagleConfig(
        vision=_siglip_so400m(image_size=512, patch_size=16),
        llm=dataclasses.replace(_qwen25(3584, 28, 28, 4, 18944, tied=False), max_position_embeddings=131072),
        tiling=TilingConfig(tile_size=512),
    ),
    # Modular backbones: the same vision tower and projector over other LLM families.
    "eagle2-llama3.2-1b": EagleConfig(
        vision=_siglip_so400m(),
        llm=LLMConfig(
            model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072, rope_theta=500_000.0,
            rms_norm_eps=1e-5, tie_word_embeddings=True,
            extra={"rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
        ),
    ),
    "eagle2-llama3.1-8b": EagleConfig(
        vision=_siglip_so400m(),
        llm=LLMConfig(
            model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072, rope_theta=500_000.0,
            rms_norm_eps=1e-5, tie_word_embeddings=False,
            extra={"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
        ),
    ),
    "eagle2-nemotron-4b": EagleConfig(
        vision=_siglip_so400m(),
        llm=LLMConfig(
            model_type="nemotron", hidden_size=3072, num_hidden_layers=32, num_attention_heads=24,
            num_key_value_heads=8, intermediate_size=9216, vocab_size=256000, max_position_embeddings=4096,
            rope_theta=10_000.0, rms_norm_eps=1e-5, hidden_act="relu2", tie_word_embeddings=False,
            extra={"norm_eps": 1e-5, "partial_rotary_factor": 0.5, "head_dim": 128},
        ),
    ),
}


def get_preset(name: str) -> EagleConfig:
    key = name.lower().removeprefix("nvidia/")
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[key])


# ------------------------------------------------------------------------------------- HF config.json I/O
def _split(d: dict[str, Any], names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    known = {k: d[k] for k in names if k in d and d[k] is not None}
    rest = {k: v for k, v in d.items() if k not in names}
    return known, rest


def _llm_from_hf(text: dict[str, Any], top: dict[str, Any]) -> LLMConfig:
    known, rest = _split(text, _LLM_FIELDS)
    # transformers 5.x moved rope_theta into rope_parameters
    if "rope_theta" not in known and isinstance(text.get("rope_parameters"), dict):
        if "rope_theta" in text["rope_parameters"]:
            known["rope_theta"] = text["rope_parameters"]["rope_theta"]
    if "tie_word_embeddings" not in known and "tie_word_embeddings" in top:
        known["tie_word_embeddings"] = top["tie_word_embeddings"]
    model_type = rest.pop("model_type", None) or _model_type_from_arch(rest.get("architectures"))
    if model_type == "nemotron" and "rms_norm_eps" not in known and "norm_eps" in rest:
        known["rms_norm_eps"] = rest["norm_eps"]
    return LLMConfig(model_type=model_type, **known, extra=rest)


def _model_type_from_arch(archs: list[str] | None) -> str:
    arch = (archs or ["Qwen2ForCausalLM"])[0]
    for prefix, mt in (("Qwen2", "qwen2"), ("Llama", "llama"), ("Nemotron", "nemotron"), ("Phi3", "phi3")):
        if arch.startswith(prefix):
            return mt
    raise ValueError(f"unsupported LLM architecture {arch!r} in config.json")


def _vision_from_hf(vis: dict[str, Any], select_layer: int) -> VisionConfig:
    known, rest = _split(vis, _VISION_FIELDS)
    model_type = rest.pop("model_type", "siglip_vision_model")
    convnext = rest.pop("convnext_config", None) or {}
    return VisionConfig(model_type=model_type, select_layer=select_layer, convnext=convnext, **known, extra=rest)


def config_from_hf(hf: dict[str, Any]) -> EagleConfig:
    """An ``EagleConfig`` from an HF Eagle config.json dict (``eagle_2_5_vl`` or ``eagle_chat``)."""
    hf = copy.deepcopy(hf)
    model_type = hf.get("model_type")
    if model_type == "eagle_2_5_vl" or "text_config" in hf:
        fmt, text_key, min_key, max_key = "eagle_2_5_vl", "text_config", "min_dynamic_tiles", "max_dynamic_tiles"
    elif model_type == "eagle_chat" or "llm_config" in hf:
        fmt, text_key, min_key, max_key = "eagle_chat", "llm_config", "min_dynamic_patch", "max_dynamic_patch"
    else:
        raise ValueError(
            f"config.json is not an Eagle2 config (model_type={model_type!r}, no text_config/llm_config); "
            "expected model_type 'eagle_2_5_vl' or 'eagle_chat'"
        )
    if "vision_config" not in hf:
        raise ValueError("config.json has no vision_config")
    towers = hf["vision_config"].get("vision_tower")
    if isinstance(towers, str) and ";" in towers:
        raise NotImplementedError(
            f"this checkpoint uses a mixture-of-encoders vision tower ({towers!r}, as Eagle2-9B does); loading its "
            "weights is not supported yet (the ConvNeXt branch's checkpoint layout is not mapped). The eagle2-9b "
            "preset builds the same architecture with random weights for training from scratch."
        )
    ratio = float(hf.get("downsample_ratio", 0.5))
    factor = round(1 / ratio)
    if not math.isclose(1 / factor, ratio):
        raise ValueError(f"downsample_ratio {ratio} is not 1/k for an integer k")
    vision = _vision_from_hf(hf["vision_config"], int(hf.get("select_layer", -1)))
    if hf.get("force_image_size"):
        vision.image_size = int(hf["force_image_size"])
    llm = _llm_from_hf(hf[text_key], hf)
    tiling = TilingConfig(
        tile_size=vision.image_size,
        min_tiles=int(hf.get(min_key, 1)),
        max_tiles=int(hf.get(max_key, 12)),
        use_thumbnail=bool(hf.get("use_thumbnail", True)),
        prompt_format=fmt,
    )
    consumed = {"model_type", "vision_config", text_key, "downsample_ratio", "select_layer", min_key, max_key,
                "use_thumbnail", "image_token_index", "tie_word_embeddings", "force_image_size"}
    extra = {k: v for k, v in hf.items() if k not in consumed}
    if "force_image_size" in hf:
        extra["force_image_size"] = hf["force_image_size"]
    image_token_id = hf.get("image_token_index")
    return EagleConfig(
        vision=vision, projector=ProjectorConfig(shuffle_factor=factor), llm=llm, tiling=tiling,
        image_token_id=int(image_token_id) if image_token_id is not None else None, format=fmt, extra=extra,
    )


def llm_hf_dict(llm: LLMConfig) -> dict[str, Any]:
    """The LLM as an HF text config dict (what transformers' config class of ``model_type`` takes)."""
    d = {k: getattr(llm, k) for k in _LLM_FIELDS}
    d.update(llm.extra)
    d["model_type"] = llm.model_type
    return d


def vision_hf_dict(vision: VisionConfig) -> dict[str, Any]:
    d = {k: getattr(vision, k) for k in _VISION_FIELDS}
    d.update(vision.extra)
    d["model_type"] = vision.model_type
    d.setdefault("vision_use_head", False)  # EAGLE2 never uses SigLIP's pooling head
    if vision.convnext:
        d["convnext_config"] = dict(vision.convnext)
    return d


def config_to_hf(cfg: EagleConfig) -> dict[str, Any]:
    """The HF config.json dict for ``cfg`` in its own layout (``cfg.format``)."""
    chat = cfg.format == "eagle_chat"
    out: dict[str, Any] = dict(cfg.extra)
    text = llm_hf_dict(cfg.llm)
    text.setdefault("architectures", [_ARCH[cfg.llm.model_type]])
    out.update({
        "model_type": cfg.format,
        "vision_config": vision_hf_dict(cfg.vision),
        ("llm_config" if chat else "text_config"): text,
        "select_layer": cfg.vision.select_layer,
        "downsample_ratio": 1 / cfg.projector.shuffle_factor,
        ("min_dynamic_patch" if chat else "min_dynamic_tiles"): cfg.tiling.min_tiles,
        ("max_dynamic_patch" if chat else "max_dynamic_tiles"): cfg.tiling.max_tiles,
        "use_thumbnail": cfg.tiling.use_thumbnail,
        "tie_word_embeddings": cfg.llm.tie_word_embeddings,
    })
    if cfg.image_token_id is not None:
        out["image_token_index"] = cfg.image_token_id
    out.setdefault("architectures", ["Eagle2_5_VLForConditionalGeneration" if not chat else "Eagle2ChatModel"])
    return out


_ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "nemotron": "NemotronForCausalLM",
         "phi3": "Phi3ForCausalLM"}


# Files of a checkpoint that belong to the tokenizer / processor (the preprocessing contract besides config.json).
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.json", "preprocessor_config.json",
                   "processor_config.json", "generation_config.json")


def load_model_config(path: str | Path) -> EagleConfig:
    """Read ``config.json`` of an HF Eagle checkpoint directory."""
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    if not p.exists():
        raise FileNotFoundError(f"no config.json at {p}")
    try:
        hf = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON: {e}") from e
    return config_from_hf(hf)
