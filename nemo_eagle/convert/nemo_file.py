"""The ``.nemo`` file of an EAGLE2 model, and conversions between it and the official HF layout.

A ``.nemo`` is an uncompressed tar, as NeMo writes it, holding:
  ``model_config.yaml``   the ModelPT config: ``target``, ``eagle`` (the EagleConfig), ``attn_implementation``
  ``model_weights.ckpt``  ``torch.save`` of the state dict (keys ``model.<EagleModel parameter name>``)
  ``processor/``          the preprocessing contract: tokenizer, chat template, preprocessor/processor configs
                          and the HF ``config.json`` the weights came from

``EagleNeMoModel.save_to`` / ``restore_from`` read and write exactly this. Loading it as a plain
``EagleModel`` (``EagleModel.from_pretrained``, through ``nemo_eagle.checkpoint``) and converting to and from HF
directories needs no NeMo import, and tensors pass through unchanged, so HF -> .nemo -> HF is bitwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from nemo_eagle.config import EagleConfig, config_from_hf, config_to_hf
from nemo_eagle.convert import hf as hf_io
from nemo_eagle.convert.nemo_archive import (  # noqa: F401 - the archive API, re-exported for callers
    CONTRACT_FILES,
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    PROCESSOR_DIR,
    TARGET,
    WEIGHT_PREFIX,
    NemoContents,
    NemoFileError,
    eagle_config_from_model_config,
    load_state_dict_checked,
    materialize_processor_dir,
    model_config_dict,
    processor_files_from_dir,
    read_nemo,
    write_nemo,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- converting
def hf_to_nemo(src: str | Path, dst: str | Path, *, attn_implementation: str = "sdpa") -> Path:
    """HF checkpoint directory (or hub id) -> ``.nemo``; tensors keep their dtype and bits."""
    from nemo_eagle.checkpoint import open_checkpoint
    from nemo_eagle.modeling.eagle import EagleModel

    ckpt = open_checkpoint(src)
    stored = ckpt.float_dtypes()
    if len(stored) > 1:  # one model dtype cannot hold them all: "auto" keeps every value exactly, in float32
        log.warning("%s mixes tensor dtypes (%s); the .nemo stores every tensor as float32 (values unchanged)",
                    src, ", ".join(sorted(str(d).removeprefix("torch.") for d in stored)))
    model = EagleModel.from_pretrained(ckpt.path, attn_implementation=attn_implementation)
    return write_nemo(dst, model_config=model_config_dict(model.config, attn_implementation=attn_implementation),
                      state_dict=model.state_dict(), processor_files=processor_files_from_dir(ckpt.contract_dir))


def nemo_to_hf(src: str | Path, dst: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """``.nemo`` -> official HF layout (config.json, model.safetensors, processor files), bitwise tensors."""
    contents = read_nemo(src)
    return write_hf(dst, cfg=contents.eagle, state=contents.state_dict, processor_files=contents.processor_files,
                    max_shard_bytes=max_shard_bytes)


def write_hf(dst: str | Path, *, cfg: EagleConfig, state: dict[str, torch.Tensor], processor_files: dict[str, bytes],
             max_shard_bytes: int = 5 * 2**30) -> Path:
    """EagleModel-named tensors + contract files -> an HF checkpoint directory (tied ``lm_head`` omitted)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    vt = hf_io.vision_prefix(state, cfg.vision.convnext.get("towers"))  # Eagle2-9B: the checkpoint's tower order
    tied = cfg.llm.tie_word_embeddings
    tensors = {hf_io.ours_to_hf(k, vt): t.detach().contiguous() for k, t in state.items()
               if not (tied and k == "language_model.lm_head.weight")}
    hf_io.write_safetensors(tensors, dst, max_shard_bytes=max_shard_bytes)
    files = dict(processor_files)
    original = files.pop("config.json", None)
    (dst / "config.json").write_bytes(_hf_config_bytes(original, cfg, state))
    for name, data in files.items():
        (dst / name).write_bytes(data)
    return dst


def _hf_config_bytes(original: bytes | None, cfg: EagleConfig, state: dict[str, torch.Tensor]) -> bytes:
    """The stored HF config.json verbatim when it still describes ``cfg``, else a fresh one."""
    if original is not None:
        try:
            if config_from_hf(json.loads(original)).to_dict() == EagleConfig.from_dict(cfg.to_dict()).to_dict():
                return original
        except (ValueError, KeyError):
            pass
        log.info("the model config changed since import; writing a new config.json")
    hf = config_to_hf(cfg)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    hf["torch_dtype"] = str(floats[0] if floats else torch.float32).removeprefix("torch.")
    return json.dumps(hf, indent=2).encode()


def is_nemo(path: str | Path) -> bool:
    return str(path).endswith(".nemo")


def load_config_any(path: str | Path) -> EagleConfig:
    """The EagleConfig of any checkpoint (HF directory, ``.nemo``, megatron directory, hub id)."""
    from nemo_eagle.checkpoint import open_checkpoint

    return open_checkpoint(path).config
