"""Scale-out options and the EagleConfig -> megatron ``TransformerConfig`` mapping, plus 34B/40B-class presets.

``MegatronOptions`` holds what the HF config cannot say: parallel layout, dtype, precision recipe and the fused or
recomputed features. ``check_options`` refuses anything that cannot run where it is asked to (FP8 without
Transformer Engine, rope fusion or recompute on CPU) instead of megatron's silent fallback to full precision.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nemo_eagle.config import EagleConfig, LLMConfig, VisionConfig, get_preset

IMPLS = ("auto", "transformer_engine", "local")
FP8_FORMATS = (None, "hybrid", "e4m3")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
RECOMPUTE = (None, "selective", "full")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Megatron's llama3 rope scaling hard-codes these three values; other values must not be silently replaced.
_LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass(kw_only=True)
class MegatronOptions:
    """How to build and run the megatron model. Everything here is a primitive so Hydra can fill it."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False
    impl: str = "auto"  # auto: Transformer Engine when CUDA and TE import, else megatron's local modules
    dtype: str = "float32"  # parameter dtype; bfloat16 for GPU training
    fp8: str | None = None  # None | "hybrid" | "e4m3"; the vision tower always stays in `dtype`
    fp8_recipe: str = "delayed"
    recompute: str | None = None  # activation recompute of the LLM layers: None | "selective" | "full"
    apply_rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    make_vocab_size_divisible_by: int = 128
    padded_vocab_size: int | None = None  # fixed by a checkpoint; None: derive from vocab, multiple and tp
    use_cpu_initialization: bool = False
    perform_initialization: bool = True
    seed: int = 1234

    def __post_init__(self) -> None:
        for name, value, allowed in (("impl", self.impl, IMPLS), ("fp8", self.fp8, FP8_FORMATS),
                                     ("fp8_recipe", self.fp8_recipe, FP8_RECIPES),
                                     ("recompute", self.recompute, RECOMPUTE), ("dtype", self.dtype, tuple(DTYPES))):
            if value not in allowed:
                raise ValueError(f"MegatronOptions.{name}={value!r} is not one of {allowed}")
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ValueError(f"parallel sizes must be >= 1, got tp={self.tensor_parallel} pp={self.pipeline_parallel}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def replace(self, **changes: Any) -> MegatronOptions:
        return dataclasses.replace(self, **changes)


def has_transformer_engine() -> bool:
    """True when CUDA is up and ``transformer_engine.pytorch`` imports (it raises RuntimeError, not ImportError,
    when half-installed without CUDA, so any exception means "absent")."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def resolve_impl(opts: MegatronOptions) -> str:
    """The layer implementation, decided once per build: ``transformer_engine`` or ``local``."""
    if opts.impl == "auto":
        return "transformer_engine" if has_transformer_engine() else "local"
    if opts.impl == "transformer_engine" and not has_transformer_engine():
        raise RuntimeError("impl='transformer_engine' requested but Transformer Engine is unavailable "
                           "(needs CUDA and `pip install transformer-engine[pytorch]`); use impl='local' or 'auto'")
    return opts.impl


def check_options(opts: MegatronOptions) -> str:
    """Validate ``opts`` against this machine; returns the resolved impl. Raises naming what cannot run."""
    impl = resolve_impl(opts)
    cuda = torch.cuda.is_available()
    problems = []
    if opts.fp8 and impl != "transformer_engine":
        problems.append(f"fp8={opts.fp8!r} needs Transformer Engine layers on a CUDA GPU (resolved impl: {impl}); "
                        "megatron would otherwise run in full precision without saying so")
    if opts.apply_rope_fusion and not (cuda and impl == "transformer_engine"):
        problems.append("apply_rope_fusion needs CUDA and Transformer Engine's fused rope kernel")
    if opts.recompute and not cuda:
        problems.append(f"recompute={opts.recompute!r} needs CUDA (megatron's recompute forks the CUDA RNG state)")
    if opts.gradient_accumulation_fusion and not cuda:
        problems.append("gradient_accumulation_fusion needs CUDA and APEX/TE fused wgrad kernels")
    if opts.sequence_parallel and impl != "transformer_engine":
        problems.append("sequence_parallel needs Transformer Engine norms (megatron's torch norms refuse it)")
    if opts.sequence_parallel and opts.tensor_parallel == 1:
        problems.append("sequence_parallel needs tensor_parallel > 1")
    if opts.fp8 and opts.dtype == "float32":
        problems.append("fp8 training expects dtype='bfloat16' parameters")
    if problems:
        raise RuntimeError("cannot run these megatron options here:\n  - " + "\n  - ".join(problems))
    return impl


def padded_vocab_size(vocab_size: int, opts: MegatronOptions) -> int:
    """Vocab rounded up so every TP rank holds an equal slice; a checkpoint stores the value it was built with."""
    if opts.padded_vocab_size is not None:
        if opts.padded_vocab_size < vocab_size or opts.padded_vocab_size % opts.tensor_parallel:
            raise ValueError(f"padded_vocab_size {opts.padded_vocab_size} must be >= vocab {vocab_size} and "
                             f"divisible by tensor_parallel={opts.tensor_parallel}")
        return opts.padded_vocab_size
    multiple = opts.make_vocab_size_divisible_by * opts.tensor_parallel
    return int(math.ceil(vocab_size / multiple) * multiple)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """SigLIP's ``gelu_pytorch_tanh``; a module-level function so configs stay picklable."""
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {"gelu_pytorch_tanh": (gelu_tanh, False), "gelu": (F.gelu, False), "silu": (F.silu, True)}


def _common(opts: MegatronOptions) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "tensor_model_parallel_size": opts.tensor_parallel,
        "sequence_parallel": opts.sequence_parallel,
        "params_dtype": opts.torch_dtype,
        "pipeline_dtype": opts.torch_dtype,
        "bf16": opts.dtype == "bfloat16",
        "fp16": opts.dtype == "float16",
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "apply_query_key_layer_scaling": False,
        "use_cpu_initialization": opts.use_cpu_initialization or not cuda,
        "perform_initialization": opts.perform_initialization,
        "gradient_accumulation_fusion": opts.gradient_accumulation_fusion,
        # Fusions that exist only as CUDA kernels stay off; megatron's torch paths run instead.
        "bias_activation_fusion": False,
        "masked_softmax_fusion": False,
        "bias_dropout_fusion": False,
        "persist_layer_norm": False,
    }


def llm_transformer_config(llm: LLMConfig, opts: MegatronOptions):
    """The GPT decoder's ``TransformerConfig`` (Qwen2: qkv bias; Llama: none) for ``opts``."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    if llm.model_type not in ("qwen2", "llama"):
        raise NotImplementedError(f"the megatron path builds qwen2 and llama decoders, not {llm.model_type!r}")
    if llm.hidden_act != "silu":
        raise NotImplementedError(f"the megatron GPT decoder uses SwiGLU; hidden_act {llm.hidden_act!r} unsupported")
    kv = llm.num_key_value_heads
    if kv % opts.tensor_parallel or llm.num_attention_heads % opts.tensor_parallel:
        raise ValueError(f"tensor_parallel={opts.tensor_parallel} must divide num_attention_heads="
                         f"{llm.num_attention_heads} and num_key_value_heads={kv}")
    if llm.num_hidden_layers % opts.pipeline_parallel:
        raise ValueError(
            f"pipeline_parallel={opts.pipeline_parallel} must divide num_hidden_layers={llm.num_hidden_layers}"
        )
    recompute = {}
    if opts.recompute == "full":
        recompute = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    elif opts.recompute == "selective":
        recompute = {"recompute_granularity": "selective"}
    fp8 = {}
    if opts.fp8:
        fp8 = {"fp8": opts.fp8, "fp8_recipe": opts.fp8_recipe, "fp8_margin": 0, "fp8_interval": 1,
               "fp8_amax_history_len": 1024, "fp8_amax_compute_algo": "max"}
    return TransformerConfig(
        **_common(opts),
        **recompute,
        **fp8,
        pipeline_model_parallel_size=opts.pipeline_parallel,
        num_layers=llm.num_hidden_layers,
        hidden_size=llm.hidden_size,
        num_attention_heads=llm.num_attention_heads,
        num_query_groups=kv,
        kv_channels=llm.head_dim,
        ffn_hidden_size=llm.intermediate_size,
        normalization="RMSNorm",
        layernorm_epsilon=llm.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=llm.model_type == "qwen2" or bool(llm.extra.get("attention_bias")),
        apply_rope_fusion=opts.apply_rope_fusion,
    )


def vision_transformer_config(vision: VisionConfig, opts: MegatronOptions):
    """SigLIP's encoder as a ``TransformerConfig``. It lives whole on the first pipeline stage and never uses FP8."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_eagle.config import MOE_TOWER

    # Eagle2-9B's mixture: this is its SigLIP tower; the ConvNeXt branch is a replicated module next to it.
    if vision.model_type not in ("siglip_vision_model", MOE_TOWER):
        raise NotImplementedError(f"the megatron path builds a SigLIP tower (plus Eagle2-9B's ConvNeXt branch); "
                                  f"vision tower {vision.model_type!r} is not supported")
    if vision.hidden_act not in _ACTIVATIONS or _ACTIVATIONS[vision.hidden_act][1]:
        raise NotImplementedError(f"vision hidden_act {vision.hidden_act!r} unsupported")
    if vision.num_attention_heads % opts.tensor_parallel:
        raise ValueError(f"tensor_parallel={opts.tensor_parallel} must divide vision num_attention_heads="
                         f"{vision.num_attention_heads}")
    return TransformerConfig(
        **_common(opts),
        pipeline_model_parallel_size=1,  # the whole tower sits on the first stage
        num_layers=vision.num_hidden_layers,
        hidden_size=vision.hidden_size,
        num_attention_heads=vision.num_attention_heads,
        kv_channels=vision.hidden_size // vision.num_attention_heads,
        ffn_hidden_size=vision.intermediate_size,
        normalization="LayerNorm",
        layernorm_epsilon=vision.layer_norm_eps,
        gated_linear_unit=False,
        activation_func=_ACTIVATIONS[vision.hidden_act][0],
        add_bias_linear=True,
        add_qkv_bias=True,
    )


def rope_settings(llm: LLMConfig) -> dict[str, Any]:
    """GPTModel's rope arguments; llama3 scaling only where megatron's fixed constants match the config."""
    scaling = llm.extra.get("rope_scaling") or (llm.extra.get("rope_parameters") or {})
    kind = scaling.get("rope_type") or scaling.get("type")
    out: dict[str, Any] = {"rotary_base": llm.rope_theta, "rope_scaling": False}
    if kind in (None, "default"):
        return out
    if kind != "llama3":
        raise NotImplementedError(f"rope_scaling type {kind!r} is not supported by the megatron path")
    for key, want in _LLAMA3_ROPE_FIXED.items():
        if float(scaling.get(key, want)) != want:
            raise NotImplementedError(f"megatron's llama3 rope scaling fixes {key}={want}; config has {scaling[key]}")
    return {**out, "rope_scaling": True, "rope_scaling_factor": float(scaling.get("factor", 8.0))}


# ----------------------------------------------------------------------------------------------- presets
def _qwen2(hidden: int, layers: int, heads: int, kv: int, inter: int) -> LLMConfig:
    return LLMConfig(model_type="qwen2", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     num_key_value_heads=kv, intermediate_size=inter, vocab_size=151674,
                     max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=False)


@dataclass(kw_only=True)
class ScalePreset:
    """A model plus the parallel layout it is meant to train with on 8-GPU H100 nodes."""

    model: EagleConfig
    options: MegatronOptions
    note: str = ""


MEGATRON_PRESETS: dict[str, ScalePreset] = {
    # NVIDIA's README lists Eagle2-34B: SigLIP so400m + Qwen2.5-32B-Instruct.
    "eagle2-34b": ScalePreset(
        model=EagleConfig(vision=VisionConfig(), llm=_qwen2(5120, 64, 40, 8, 27648)),
        options=MegatronOptions(tensor_parallel=8, pipeline_parallel=2, sequence_parallel=True, dtype="bfloat16",
                                recompute="selective"),
        note="Qwen2.5-32B backbone, about 33B parameters",
    ),
    # A 40B-class Qwen2-style decoder (no released weights): hidden 6144, 70 layers, GQA 48/8, about 40B parameters.
    "eagle2-40b": ScalePreset(
        model=EagleConfig(vision=VisionConfig(), llm=_qwen2(6144, 70, 48, 8, 24576)),
        options=MegatronOptions(tensor_parallel=8, pipeline_parallel=5, sequence_parallel=True, dtype="bfloat16",
                                recompute="selective"),
        note="40B-class planning configuration; random init only",
    ),
}


def get_megatron_preset(name: str) -> ScalePreset:
    """A scale preset by name; the released sizes from ``nemo_eagle.config`` come with a TP=1 bf16 layout."""
    key = name.lower().removeprefix("nvidia/")
    if key in MEGATRON_PRESETS:
        return copy.deepcopy(MEGATRON_PRESETS[key])
    try:
        model = get_preset(key)
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; megatron presets: {sorted(MEGATRON_PRESETS)}") from None
    return ScalePreset(model=model, options=MegatronOptions(dtype="bfloat16"))


def count_parameters(cfg: EagleConfig) -> int:
    """Parameter count of the EAGLE2 architecture (SigLIP + projector + decoder, plus Eagle2-9B's ConvNeXt branch
    with its unused head), from the config alone."""
    v, llm = cfg.vision, cfg.llm
    p = v.num_channels * v.patch_size**2 * v.hidden_size + v.hidden_size + v.grid_size**2 * v.hidden_size
    p += v.num_hidden_layers * (4 * v.hidden_size**2 + 4 * v.hidden_size + 2 * v.hidden_size * v.intermediate_size
                                + v.intermediate_size + v.hidden_size + 4 * v.hidden_size) + 2 * v.hidden_size
    if v.is_mixture:
        p += convnext_parameters(v.convnext)
    c = cfg.projector_in_features
    p += 2 * c + c * llm.hidden_size + llm.hidden_size + llm.hidden_size**2 + llm.hidden_size
    h, d, q, kv = llm.hidden_size, llm.head_dim, llm.num_attention_heads, llm.num_key_value_heads
    bias = (q + 2 * kv) * d if llm.model_type == "qwen2" else 0
    layer = h * (q + 2 * kv) * d + bias + q * d * h + 3 * h * llm.intermediate_size + 2 * h
    p += llm.num_hidden_layers * layer + h + llm.vocab_size * h * (1 if llm.tie_word_embeddings else 2)
    return p


def convnext_parameters(cn: dict) -> int:
    """Parameters of a ConvNeXt branch (stem, downsampling layers, blocks, the unused head) from its sizes."""
    dims, depths = [int(d) for d in cn["hidden_sizes"]], [int(d) for d in cn["depths"]]
    p = 3 * 16 * dims[0] + dims[0] + 2 * dims[0]  # stem: 4x4 conv + LayerNorm
    for s, (d, n) in enumerate(zip(dims, depths)):
        if s:
            p += 2 * dims[s - 1] + dims[s - 1] * d * 4 + d  # LayerNorm + 2x2 conv
        p += n * (49 * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d + d)  # dwconv, norm, fc1, fc2, layer scale
    classes = int(cn.get("num_classes", 1024))
    return p + 2 * dims[-1] + dims[-1] * classes + classes
