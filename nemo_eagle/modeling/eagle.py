"""EagleModel: the reference EAGLE2 forward pass (EAGLE2_SPEC.md, "Forward pass").

vision tower (transformers SigLIP) -> pixel shuffle + projector (ours) -> merge into the text embeddings at
``<IMG_CONTEXT>`` positions (ours) -> causal LM (transformers Qwen2 / Llama / Nemotron) on ``inputs_embeds``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM

from nemo_eagle.config import PROCESSOR_FILES, EagleConfig, config_to_hf, llm_hf_dict
from nemo_eagle.convert import hf as hf_io
from nemo_eagle.modeling import generation
from nemo_eagle.modeling.lm_io import cache_kwargs, output_cache, positions_from_mask  # noqa: F401 - re-exported
from nemo_eagle.modeling.projector import Projector
from nemo_eagle.modeling.vision import VisionEncoder
from nemo_eagle.ops import KernelConfig, reference, use_kernels

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
@dataclass
class EagleOutput:
    logits: Tensor  # (B, L, V)
    loss: Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[Tensor, ...] | None = None


def build_llm(cfg: EagleConfig, attn_implementation: str, dtype: torch.dtype) -> nn.Module:
    d = llm_hf_dict(cfg.llm)
    model_type = d.pop("model_type")
    hf_cfg = AutoConfig.for_model(model_type, **d)
    # NOTE: built in `dtype` by transformers itself, so rotary inv_freq stays float32 as in NVIDIA's code.
    return AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attn_implementation, dtype=dtype)


class EagleModel(nn.Module):
    """The EAGLE2 vision-language model (reference path; runs on CPU and GPU)."""

    def __init__(self, config: EagleConfig, *, attn_implementation: str = "sdpa",
                 kernels: KernelConfig | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
        self.config = config
        self.vision = VisionEncoder(config.vision, attn_implementation, config.projector.shuffle_factor).to(dtype)
        self.projector = Projector(config.vision.output_channels, config.llm.hidden_size, config.projector,
                                   extra_channels=config.vision.convnext_channels).to(dtype)
        self.language_model = build_llm(config, attn_implementation, dtype)
        self.merge_impl = reference.merge_embeddings
        self.tokenizer = None  # set by from_pretrained when the checkpoint has tokenizer.json
        self.source_dir: Path | None = None
        if config.llm.tie_word_embeddings:
            self.language_model.tie_weights()
        if kernels is not None:
            use_kernels(self, KernelConfig(backend=kernels) if isinstance(kernels, str) else kernels)

    # --------------------------------------------------------------------------------------------- io
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
        kernels: KernelConfig | str | None = None,
    ) -> EagleModel:
        """Load a checkpoint of any format: a hub id (nvidia/Eagle2-1B), an official HF directory, a ``.nemo`` file
        or a megatron directory. ``dtype`` None/"auto" keeps the stored dtype; every option means the same for
        every format."""
        from nemo_eagle.checkpoint import open_checkpoint, resolve_dtype

        ckpt = open_checkpoint(path)
        cfg = ckpt.config
        dtype = resolve_dtype(dtype, ckpt.float_dtypes())
        model = cls(cfg, attn_implementation=attn_implementation, dtype=dtype)
        ckpt.load_weights(model)
        model.source_dir = ckpt.contract_dir
        model.tokenizer = ckpt.tokenizer()
        if model.tokenizer is not None and cfg.image_token_id is None:
            model.config.image_token_id = model.tokenizer.image_token_id
        model.eval()
        if device is not None:
            model.to(device)
        if kernels is not None:
            use_kernels(model, KernelConfig(backend=kernels) if isinstance(kernels, str) else kernels)
        log.info("loaded %s (%s checkpoint, %s, %s, attention=%s, tied=%s)", path, ckpt.format, cfg.llm.model_type,
                 dtype, attn_implementation, cfg.llm.tie_word_embeddings)
        return model

    def save_pretrained(self, out: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
        """Write the official HF layout: config.json, model.safetensors (+ index), and the processor files."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tied = self.config.llm.tie_word_embeddings
        hf_io.write_safetensors(hf_io.hf_state_dict(self, tied=tied), out, max_shard_bytes=max_shard_bytes)
        hf = config_to_hf(self.config)
        hf["torch_dtype"] = str(self.dtype).removeprefix("torch.")
        (out / "config.json").write_text(json.dumps(hf, indent=2))
        if self.source_dir is not None and self.source_dir.resolve() != out.resolve():
            for name in PROCESSOR_FILES:
                src = self.source_dir / name
                if src.exists() and not (out / name).exists():
                    shutil.copyfile(src, out / name)
        return out

    # ---------------------------------------------------------------------------------------- forward
    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    @property
    def image_token_id(self) -> int:
        if self.config.image_token_id is None:
            raise ValueError("image_token_id unknown: set config.image_token_id or load a checkpoint with a tokenizer")
        return self.config.image_token_id

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """pixel_values (T, 3, S, S) -> projected image tokens (T, tokens_per_tile, H)."""
        return self.projector(self.vision(pixel_values))

    def embed_inputs(self, input_ids: Tensor, pixel_values: Tensor | None = None) -> Tensor:
        """Text embeddings with ``<IMG_CONTEXT>`` positions overwritten by image tokens, in order."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        n_slots = int((input_ids == self.image_token_id).sum()) if self.config.image_token_id is not None else 0
        if pixel_values is None or pixel_values.numel() == 0:
            if n_slots:
                raise ValueError(f"input_ids hold {n_slots} <IMG_CONTEXT> tokens but no pixel_values were given")
            return embeds
        image_embeds = self.get_image_features(pixel_values)
        return self.merge_impl(embeds, input_ids, image_embeds.reshape(-1, image_embeds.shape[-1]), self.image_token_id)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        num_tiles: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        inputs_embeds: Tensor | None = None,
        output_hidden_states: bool = False,
        **lm_kwargs: Any,
    ) -> EagleOutput:
        """Logits (and loss when ``labels`` are given; -100 is ignored, shifted as HF causal LMs do).

        ``num_tiles`` is accepted for symmetry with the processor output; tiles are consumed in order.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if (
            position_ids is None
            and attention_mask is not None
            and past_key_values is None
            and not bool(attention_mask.all())
        ):
            position_ids = positions_from_mask(attention_mask)  # left padding: real tokens start at 0
        out = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=use_cache, labels=labels, output_hidden_states=output_hidden_states,
            **cache_kwargs(self.language_model, past_key_values), **lm_kwargs,
        )
        return EagleOutput(logits=out.logits, loss=out.loss, past_key_values=output_cache(out),
                           hidden_states=getattr(out, "hidden_states", None))

    # ------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                 num_tiles: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Generated ids only, (B, new_tokens), padded with the pad id after each row stops.

        Keyword args: max_new_tokens, do_sample, temperature, top_p, top_k, seed, eos_token_id, stop_strings,
        use_cache (see ``modeling.generation.GenerationConfig``).
        """
        return generation.generate(self, input_ids, attention_mask, pixel_values, **kwargs)

    def stream(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
               num_tiles: Tensor | None = None, **kwargs: Any) -> Iterator[str]:
        """Yield decoded text pieces of a single prompt as tokens are generated."""
        return generation.stream_text(self, input_ids, attention_mask, pixel_values, **kwargs)
