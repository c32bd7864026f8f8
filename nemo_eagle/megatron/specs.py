"""Megatron layer specs for EAGLE2: which classes fill each slot, decided once per build by ``impl``.

``transformer_engine``: TE fused LayerNorm+Linear, TE attention (the FP8 path). ``local``: megatron's own modules,
which run anywhere. Both save the same distributed-checkpoint keys (local norms map onto TE's
``linear_qkv.layer_norm_*`` / ``linear_fc1.layer_norm_*`` names), so checkpoints move between the two.
"""

from __future__ import annotations

from megatron.core.transformer.spec_utils import ModuleSpec

IMPLS = ("transformer_engine", "local")
# Local-spec norm names -> the TE layout every checkpoint uses (same map as megatron's GPT local spec).
LOCAL_TO_TE_KEYS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def _check(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def llm_layer_spec(impl: str) -> ModuleSpec:
    """Decoder layer: pre-norm RMSNorm, causal GQA with rope, SwiGLU MLP."""
    _check(impl)
    from megatron.core.models.gpt import gpt_layer_specs

    if impl == "transformer_engine":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def vision_layer_spec(impl: str) -> ModuleSpec:
    """SigLIP encoder layer: LayerNorm with bias, bidirectional attention (no mask), biased GELU MLP."""
    _check(impl)
    if impl == "transformer_engine":
        from megatron.core.models.vision.vit_layer_specs import get_vit_layer_with_transformer_engine_spec

        return get_vit_layer_with_transformer_engine_spec()  # already no_mask
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    # NOTE: megatron's own local ViT spec uses a CAUSAL mask; SigLIP attends both ways, as the TE spec does.
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention, linear_proj=RowParallelLinear
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map=dict(LOCAL_TO_TE_KEYS),
        ),
    )


def norm_module(impl: str) -> type:
    """A standalone norm (SigLIP's post_layernorm) of the same family as the layers'."""
    _check(impl)
    if impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return WrappedTorchNorm
