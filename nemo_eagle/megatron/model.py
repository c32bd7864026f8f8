"""EAGLE2 from megatron-core blocks: SigLIP ViT (TransformerBlock, no mask) -> our projector -> GPT decoder.

Eagle2-9B adds its ConvNeXt branch (``modeling.convnext.ConvNeXtBranch``, transformers' ConvNextModel) as a
module replicated on every TP rank next to the megatron SigLIP, and keeps the checkpoint's unused SigLIP pooling
head (``vision_head``) so exports write it back; the pixel-shuffled SigLIP tokens and the ConvNeXt features are
concatenated before the projector, as in ``modeling.vision``.

The same forward as the reference ``EagleModel`` (EAGLE2_SPEC.md "Forward pass"): tiles through SigLIP, pixel
shuffle + LayerNorm projector, image embeddings written in order into the ``<IMG_CONTEXT>`` positions, then the
causal LM with plain 1-D positions. Pipeline parallel: the vision tower, projector and embeddings live on the
first stage, the output layer and loss on the last.
"""

from __future__ import annotations

import logging

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.common.vision_module.vision_module import VisionModule
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_block import TransformerBlock
from torch import Tensor, nn

from nemo_eagle.config import EagleConfig, VisionConfig
from nemo_eagle.megatron import specs
from nemo_eagle.megatron.config import (
    MegatronOptions,
    check_options,
    llm_transformer_config,
    padded_vocab_size,
    rope_settings,
    vision_transformer_config,
)
from nemo_eagle.modeling.projector import Projector
from nemo_eagle.ops import reference

log = logging.getLogger(__name__)


class SiglipVisionTransformer(VisionModule):
    """SigLIP vision encoder: conv patch embedding + learned positions (no CLS token), bidirectional layers,
    ``post_layernorm``. ``select_layer=-1`` returns the post-layernorm output, ``k`` the ``hidden_states[k]``."""

    def __init__(self, config, vision: VisionConfig, impl: str) -> None:
        super().__init__(config=config)
        self.select_layer = vision.select_layer
        n = vision.num_hidden_layers
        if not (-n - 1 <= self.select_layer < n + 1):
            raise ValueError(f"select_layer {self.select_layer} out of range for {n} vision layers")
        dtype = config.params_dtype
        self.patch_embed = nn.Conv2d(vision.num_channels, vision.hidden_size, vision.patch_size,
                                     stride=vision.patch_size, bias=True, dtype=dtype)
        self.position_embeddings = nn.Embedding(vision.grid_size**2, vision.hidden_size, dtype=dtype)
        self.decoder = TransformerBlock(config=config, spec=specs.vision_layer_spec(impl),
                                        pre_process=True, post_process=False)
        self.post_layernorm = build_module(specs.norm_module(impl), config=config, hidden_size=vision.hidden_size,
                                           eps=vision.layer_norm_eps)

    def set_input_tensor(self, input_tensor: Tensor) -> None:
        self.decoder.set_input_tensor(input_tensor)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(T, 3, S, S) tiles -> (T, P, C) patch features."""
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (T, C, S/p, S/p)
        x = x.flatten(2).transpose(1, 2) + self.position_embeddings.weight  # (T, P, C)
        x = x.transpose(0, 1).contiguous()  # (P, T, C): megatron is sequence-first
        if self.select_layer == -1:
            x = self.post_layernorm(self.decoder(x, attention_mask=None))
        else:
            # hidden_states[k]: the output of layer k (0 = embeddings), before post_layernorm.
            k = self.select_layer % (len(self.decoder.layers) + 1)
            for layer in self.decoder.layers[:k]:
                x, _ = layer(x, attention_mask=None)
        return x.transpose(0, 1)  # (T, P, C)


class EagleMegatronModel(MegatronModule):
    """EAGLE2 for tensor/pipeline-parallel training. Build with ``build_model``; weights come from ``bridge``.

    ``forward`` returns vocab-parallel logits (B, L, V_padded / tp) on the last stage, or per-token losses (B, L)
    when ``labels`` (already shifted: ``labels[:, t]`` is the target of position t) are given; intermediate
    pipeline stages return hidden states (L, B, H).
    """

    def __init__(self, cfg: EagleConfig, opts: MegatronOptions, *, impl: str,
                 pre_process: bool = True, post_process: bool = True) -> None:
        llm_config = llm_transformer_config(cfg.llm, opts)
        super().__init__(config=llm_config)
        self.eagle_config = cfg
        self.options = opts
        self.impl = impl
        self.pre_process, self.post_process = pre_process, post_process
        self.vocab_size = cfg.llm.vocab_size
        self.padded_vocab_size = padded_vocab_size(cfg.llm.vocab_size, opts)
        self.image_token_id = cfg.image_token_id
        self.share_embeddings_and_output_weights = cfg.llm.tie_word_embeddings
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's schedules
        if pre_process:
            self.vision = SiglipVisionTransformer(vision_transformer_config(cfg.vision, opts), cfg.vision, impl)
            # The reference projector module, replicated on every TP rank (it is small).
            self.projector = Projector(cfg.vision.output_channels, cfg.llm.hidden_size, cfg.projector,
                                       extra_channels=cfg.vision.convnext_channels).to(opts.torch_dtype)
            if cfg.vision.is_mixture:
                from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

                from nemo_eagle.modeling.convnext import ConvNeXtBranch
                from nemo_eagle.modeling.vision import siglip_config

                self.convnext = ConvNeXtBranch(cfg.vision.convnext).to(opts.torch_dtype)
                self.vision_head = SiglipMultiheadAttentionPoolingHead(
                    siglip_config(cfg.vision, "eager", use_head=True)).to(opts.torch_dtype)
                self.vision_head.requires_grad_(False)  # in the checkpoint, never used
        self.language_model = GPTModel(
            config=llm_config,
            transformer_layer_spec=specs.llm_layer_spec(impl),
            vocab_size=self.padded_vocab_size,
            max_sequence_length=cfg.llm.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=cfg.llm.tie_word_embeddings,
            position_embedding_type="rope",
            **rope_settings(cfg.llm),
        )

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self) -> Tensor:
        """The tied embedding whose gradient megatron all-reduces between the first and last stage."""
        return self.language_model.shared_embedding_or_output_weight()

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """(T, 3, S, S) -> (T, tokens_per_tile, H): SigLIP, pixel shuffle and projector (+ ConvNeXt on the 9B)."""
        feats = self.vision(pixel_values)
        if getattr(self, "convnext", None) is None:
            return self.projector(feats)
        shuffled = reference.pixel_shuffle(feats, self.eagle_config.projector.shuffle_factor)
        return self.projector(torch.cat([shuffled, self.convnext(pixel_values).to(shuffled.dtype)], dim=-1))

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None = None) -> Tensor:
        """Text embeddings with image tiles merged in at ``<IMG_CONTEXT>``: (B, L) -> (L, B, H), sequence-first."""
        embeds = self.language_model.embedding.word_embeddings(input_ids)  # (B, L, H), full on every TP rank
        if pixel_values is not None and pixel_values.numel():
            if self.image_token_id is None:
                raise ValueError("config has no image_token_id; set it from the tokenizer's <IMG_CONTEXT> id")
            image = self.image_features(pixel_values)
            embeds = reference.merge_embeddings(embeds, input_ids, image.reshape(-1, image.shape[-1]),
                                                self.image_token_id)
        embeds = embeds.transpose(0, 1).contiguous()  # (L, B, H)
        if self.config.sequence_parallel:
            embeds = tensor_parallel.scatter_to_sequence_parallel_region(embeds)
        return embeds

    def forward(self, input_ids: Tensor, pixel_values: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        b, length = input_ids.shape
        position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(b, -1)
        decoder_input = self.embed(input_ids, pixel_values) if self.pre_process else None
        out = self.language_model(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                                  decoder_input=decoder_input)
        if not self.post_process:
            return out
        logits = self._mask_padded_vocab(out)
        if labels is None:
            return logits
        # megatron's vocab-parallel CE takes (L, B, V/tp) and returns (L, B); it edits its input, hence float().
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.transpose(0, 1).float().contiguous(),
                                                            labels.transpose(0, 1).contiguous())
        return loss.transpose(0, 1)  # (B, L)

    def _mask_padded_vocab(self, logits: Tensor) -> Tensor:
        """Padded vocab rows never win a softmax: -inf on the slice this TP rank holds past the real vocab."""
        if self.padded_vocab_size == self.vocab_size:
            return logits
        local = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * local
        ids = torch.arange(start, start + local, device=logits.device)
        return logits.masked_fill(ids >= self.vocab_size, float("-inf"))

    def gather_logits(self, logits: Tensor) -> Tensor:
        """Vocab-parallel logits -> full (B, L, vocab) on every TP rank, padding dropped."""
        full = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return full[..., : self.vocab_size]


def build_model(cfg: EagleConfig, opts: MegatronOptions, *, pre_process: bool | None = None,
                post_process: bool | None = None) -> EagleMegatronModel:
    """Build this rank's pipeline stage. Needs ``parallel.initialize`` (megatron's parallel state) first."""
    impl = check_options(opts)
    if parallel_state.get_tensor_model_parallel_world_size() != opts.tensor_parallel or \
            parallel_state.get_pipeline_model_parallel_world_size() != opts.pipeline_parallel:
        raise RuntimeError(
            f"megatron parallel state is tp={parallel_state.get_tensor_model_parallel_world_size()} "
            f"pp={parallel_state.get_pipeline_model_parallel_world_size()} but options ask for "
            f"tp={opts.tensor_parallel} pp={opts.pipeline_parallel}; call parallel.initialize(opts) first")
    pre = parallel_state.is_pipeline_first_stage() if pre_process is None else pre_process
    post = parallel_state.is_pipeline_last_stage() if post_process is None else post_process
    model = EagleMegatronModel(cfg, opts, impl=impl, pre_process=pre, post_process=post)
    if impl == "local":
        # megatron's local norms (torch LayerNorm / RMSNorm wrappers) ignore params_dtype: match the activations
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
                module.to(opts.torch_dtype)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    log.info("built megatron EAGLE2 stage (impl=%s, tp=%d, pp=%d, first=%s, last=%s, dtype=%s, fp8=%s)",
             impl, opts.tensor_parallel, opts.pipeline_parallel, pre, post, opts.dtype, opts.fp8)
    return model
