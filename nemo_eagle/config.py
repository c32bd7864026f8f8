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
PROMPT_FORMATS = ("eagle_2_5_vl", "eagle_chat", "qwen2_chat")
RESIZE_BACKENDS = ("torch", "pil")
ALPHA_MODES = ("white", "drop")
MOE_TOWER = "eagle_moe_siglip_convnext"  # our name for the Eagle2-9B ``MOB`` SigLIP + ConvNeXt vision config
# CLIP normalisation, which the Eagle2-9B ConvNeXt branch sees (converted from the SigLIP-normalised tile).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    # Mixture-of-encoders tower (Eagle2-9B): a ConvNeXt branch at ``image_size`` px whose last-stage features
    # (one per pixel-shuffled SigLIP token) are concatenated after the pixel shuffle. Keys: image_size, depths,
    # hidden_sizes, layer_norm_eps, num_classes (its unused head), towers (the checkpoint's tower order),
    # image_mean / image_std (its normalisation). Empty for single-tower models.
    convnext: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_size(self) -> int:
        """Patches per side of one tile."""
        return self.image_size // self.patch_size

    @property
    def output_channels(self) -> int:
        """Channels per patch that reach the pixel shuffle (the SigLIP tower's)."""
        return self.hidden_size

    @property
    def is_mixture(self) -> bool:
        """True for the Eagle2-9B SigLIP + ConvNeXt tower."""
        return bool(self.convnext)

    @property
    def convnext_channels(self) -> int:
        """Channels the ConvNeXt branch adds to each projector input token (0 without one)."""
        return int(self.convnext["hidden_sizes"][-1]) if self.convnext else 0


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
    # "torch": antialiased uint8 resize of the RGB image (Eagle2-1B/2B); "pil": PIL's own resize of the image as
    # loaded, then RGB per tile, normalised as torchvision's ToTensor + Normalize (Eagle2-9B).
    resize: str = "torch"
    # What RGBA / LA / transparent-palette images become: "white" composites over white (1B/2B), "drop" drops
    # the alpha channel (PIL's convert("RGB"), Eagle2-9B).
    alpha: str = "white"

    def __post_init__(self) -> None:
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ValueError(
                f"need 1 <= min_tiles <= max_tiles, got min_tiles={self.min_tiles}, max_tiles={self.max_tiles}"
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"unknown prompt_format {self.prompt_format!r}; choose one of {PROMPT_FORMATS}")
        if self.resize not in RESIZE_BACKENDS:
            raise ValueError(f"unknown resize {self.resize!r}; choose one of {RESIZE_BACKENDS}")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"unknown alpha {self.alpha!r}; choose one of {ALPHA_MODES}")
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
        return self.vision.output_channels * self.projector.shuffle_factor**2 + self.vision.convnext_channels

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


# ConvNeXt-XXLarge (CLIP-ConvNeXt of the Eagle2-9B mixture of encoders, timm's convnext_xxlarge with its
# LayerNorm eps 1e-5), run at 512 px; its unused head projects to the 1024-d CLIP space.
CONVNEXT_XXL_DEPTHS = (3, 4, 30, 3)
CONVNEXT_XXL_DIMS = (384, 768, 1536, 3072)
_CONVNEXT_XXL = {
    "image_size": 512,
    "depths": list(CONVNEXT_XXL_DEPTHS),
    "hidden_sizes": list(CONVNEXT_XXL_DIMS),
    "layer_norm_eps": 1e-5,
    "num_classes": 1024,
    "towers": ["siglip", "convnext"],
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
}

PRESETS: dict[str, EagleConfig] = {
    "eagle2-1b": EagleConfig(vision=_siglip_so400m(), llm=_qwen25(896, 24, 14, 2, 4864, tied=True)),
    "eagle2-2b": EagleConfig(vision=_siglip_so400m(), llm=_qwen25(1536, 28, 12, 2, 8960, tied=True)),
    "eagle2-9b": EagleConfig(
        vision=VisionConfig(model_type=MOE_TOWER, convnext=copy.deepcopy(_CONVNEXT_XXL)),
        llm=_qwen25(3584, 28, 28, 4, 18944, tied=False),
        tiling=TilingConfig(prompt_format="qwen2_chat", resize="pil", alpha="drop"),
        format="eagle_chat",
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
    rope = text.get("rope_parameters")
    if "rope_theta" not in known and isinstance(rope, dict) and "rope_theta" in rope:
        known["rope_theta"] = rope["rope_theta"]
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


def _is_mob(vis: dict[str, Any]) -> bool:
    towers = vis.get("vision_path") or vis.get("vision_tower") or ""
    return vis.get("model_type") == "MOB" or (isinstance(towers, str) and ";" in towers)


def _tower_kinds(vis: dict[str, Any]) -> list[str]:
    """The tower order a MOB vision_path names ("MOB:palisiglip;convnext-1024" -> [siglip, convnext])."""
    path = str(vis.get("vision_path") or vis.get("vision_tower") or "MOB:siglip;convnext")
    names = path.split(":", 1)[-1].split(";")
    kinds = ["convnext" if "convnext" in n.lower() else "siglip" for n in names]
    if sorted(kinds) != ["convnext", "siglip"]:
        raise NotImplementedError(f"mixture-of-encoders vision_path {path!r}: only one SigLIP + one ConvNeXt tower "
                                  "(Eagle2-9B) is supported")
    return kinds


def _moe_vision_from_hf(vis: dict[str, Any], select_layer: int) -> VisionConfig:
    """Eagle2-9B's ``MOB`` vision_config: a SigLIP config nested in ``siglip_vision_config`` plus a ConvNeXt."""
    sig = vis.get("siglip_vision_config")
    if not isinstance(sig, dict):
        raise TypeError("MOB vision_config has no siglip_vision_config dict (the SigLIP tower's config)")
    if vis.get("normalize_type", "siglip") != "siglip":
        raise NotImplementedError(f"MOB vision_config normalize_type {vis['normalize_type']!r}: only 'siglip' "
                                  "(the Eagle2-9B release) is supported")
    known, rest = _split(sig, _VISION_FIELDS)
    rest.pop("model_type", None)
    convnext = copy.deepcopy(_CONVNEXT_XXL)
    convnext.update({
        "image_size": int(vis.get("convnext_img_size", 512)),
        "towers": _tower_kinds(vis),
        # the released config carries no ConvNeXt sizes: XXLarge unless the config says otherwise
        "depths": [int(v) for v in vis.get("convnext_depths") or CONVNEXT_XXL_DEPTHS],
        "hidden_sizes": [int(v) for v in vis.get("convnext_dims") or CONVNEXT_XXL_DIMS],
        "hf": {k: v for k, v in vis.items() if k != "siglip_vision_config"},
    })
    return VisionConfig(model_type=MOE_TOWER, select_layer=select_layer, convnext=convnext, **known, extra=rest)


def _moe_tiling_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    template = hf.get("template", "qwen2-chat")
    if template != "qwen2-chat":
        raise NotImplementedError(f"Eagle2-9B layout with template {template!r}: only 'qwen2-chat' is supported")
    return {"prompt_format": "qwen2_chat", "resize": "pil", "alpha": "drop"}


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
    mixture = _is_mob(hf["vision_config"])
    if mixture and fmt != "eagle_chat":
        raise ValueError("a mixture-of-encoders (MOB) vision_config is only known in the eagle_chat layout (Eagle2-9B)")
    ratio = float(hf.get("downsample_ratio", 0.5))
    factor = round(1 / ratio)
    if not math.isclose(1 / factor, ratio):
        raise ValueError(f"downsample_ratio {ratio} is not 1/k for an integer k")
    select_layer = int(hf.get("select_layer", -1))
    vision = (_moe_vision_from_hf if mixture else _vision_from_hf)(hf["vision_config"], select_layer)
    if hf.get("force_image_size"):
        vision.image_size = int(hf["force_image_size"])
    llm = _llm_from_hf(hf[text_key], hf)
    tiling = TilingConfig(
        tile_size=vision.image_size,
        min_tiles=int(hf.get(min_key, 1)),
        max_tiles=int(hf.get(max_key, 12)),
        use_thumbnail=bool(hf.get("use_thumbnail", True)),
        **({"prompt_format": fmt} | (_moe_tiling_from_hf(hf) if mixture else {})),
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
    if vision.is_mixture:
        return _moe_vision_hf_dict(vision)
    d = {k: getattr(vision, k) for k in _VISION_FIELDS}
    d.update(vision.extra)
    d["model_type"] = vision.model_type
    d.setdefault("vision_use_head", False)  # EAGLE2 never uses SigLIP's pooling head
    if vision.convnext:
        d["convnext_config"] = dict(vision.convnext)
    return d


def siglip_hf_dict(vision: VisionConfig) -> dict[str, Any]:
    """The SigLIP tower's config dict (the whole vision config of single-tower models)."""
    d = {k: getattr(vision, k) for k in _VISION_FIELDS}
    d.update(vision.extra)
    d["model_type"] = "siglip_vision_model" if vision.is_mixture else vision.model_type
    return d


def _moe_vision_hf_dict(vision: VisionConfig) -> dict[str, Any]:
    cn = vision.convnext
    out = copy.deepcopy(cn.get("hf") or {})
    kinds = list(cn.get("towers", ["siglip", "convnext"]))
    names = {"siglip": "palisiglip", "convnext": "convnext-1024"}
    out.setdefault("model_type", "MOB")
    out.setdefault("vision_path", "MOB:" + ";".join(names[k] for k in kinds))
    out.setdefault("vision_tower", out["vision_path"].split(":", 1)[-1])
    out.setdefault("moe_version_type", f"convnext_{cn.get('image_size', 512)}_siglip_{vision.image_size}")
    out.setdefault("normalize_type", "siglip")
    out.setdefault("mm_vision_select_layer", vision.select_layer)
    out.update({"convnext_img_size": int(cn.get("image_size", 512)), "input_image_size": vision.image_size,
                "image_size": vision.image_size})
    sizes = (list(cn["depths"]), list(cn["hidden_sizes"]))
    if sizes != (list(CONVNEXT_XXL_DEPTHS), list(CONVNEXT_XXL_DIMS)) or "convnext_depths" in out:
        out["convnext_depths"], out["convnext_dims"] = sizes
    sig = siglip_hf_dict(vision)
    out["siglip_vision_config"] = {**(out.get("siglip_vision_config") or {}), **sig}
    return out


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
    if out.get("force_image_size"):  # kept from the source config: it must follow the tower's size
        out["force_image_size"] = cfg.vision.image_size
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
