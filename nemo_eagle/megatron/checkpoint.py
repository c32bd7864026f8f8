"""Megatron distributed checkpoints of EAGLE2: a directory that reshards on load (save at TP=2, load at TP=1).

Layout: ``config.json`` (HF config) and tokenizer/processor files next to ``megatron.json`` (how it was saved)
and ``weights/`` (megatron ``dist_checkpointing``, global tensor shapes, so any TP/PP layout can read it).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nemo_eagle.config import PROCESSOR_FILES, EagleConfig, config_from_hf, config_to_hf

log = logging.getLogger(__name__)

META_NAME = "megatron.json"
WEIGHTS_DIR = "weights"
FORMAT = "nemo_eagle.megatron/1"


def is_megatron_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_NAME).exists() and (Path(path) / WEIGHTS_DIR).is_dir()


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_megatron_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a megatron EAGLE2 checkpoint (no {META_NAME} + {WEIGHTS_DIR}/)")
    meta = json.loads((path / META_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / META_NAME}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_config(path: str | Path) -> EagleConfig:
    cfg = config_from_hf(json.loads((Path(path) / "config.json").read_text()))
    meta = Path(path) / META_NAME
    saved = json.loads(meta.read_text()).get("convnext") if meta.exists() else None
    if saved and cfg.vision.is_mixture:  # Eagle2-9B: what only the tensors told (tower order, head size)
        cfg = cfg.replace(vision={"convnext": {**cfg.vision.convnext, **saved}})
    return cfg


def save(model, path: str | Path, *, extra_files_from: str | Path | None = None,
         meta: dict[str, Any] | None = None, optimizer=None) -> Path:
    """Collective: every rank writes its shards of ``model`` (and ``optimizer``) under ``path/weights``."""
    from megatron.core import dist_checkpointing, parallel_state

    path = Path(path)
    weights = path / WEIGHTS_DIR
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        if weights.exists():
            shutil.rmtree(weights)
        weights.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    state = {"model": model.sharded_state_dict()}
    sharding = None
    if optimizer is not None:
        sharding = optimizer_sharding(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state["model"],
                                                          metadata={"distrib_optim_sharding_type": sharding})
    dist_checkpointing.save(state, str(weights))
    if rank0:
        cfg: EagleConfig = model.eagle_config
        hf = config_to_hf(cfg)
        hf["torch_dtype"] = model.options.dtype
        (path / "config.json").write_text(json.dumps(hf, indent=2))
        info = {"format": FORMAT, "padded_vocab_size": model.padded_vocab_size, "dtype": model.options.dtype,
                "saved_with": {"tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
                               "pipeline_parallel": parallel_state.get_pipeline_model_parallel_world_size()},
                "optimizer_sharding": sharding, **(meta or {})}
        if cfg.vision.is_mixture:
            info["convnext"] = {k: cfg.vision.convnext[k] for k in ("towers", "num_classes")}
        (path / META_NAME).write_text(json.dumps(info, indent=2))
        if extra_files_from is not None:
            copy_processor_files(extra_files_from, path)
    if dist.is_initialized():
        dist.barrier()
    log.info("saved megatron checkpoint %s", path)
    return path


def load(model, path: str | Path, *, optimizer=None, strict: bool = True) -> None:
    """Collective: fill ``model`` (any TP/PP layout) from a checkpoint saved with any other layout."""
    from megatron.core import dist_checkpointing

    meta = read_meta(path)
    if meta["padded_vocab_size"] != model.padded_vocab_size:
        raise ValueError(f"checkpoint vocab is padded to {meta['padded_vocab_size']} but the model to "
                         f"{model.padded_vocab_size}; build it with MegatronOptions(padded_vocab_size="
                         f"{meta['padded_vocab_size']})")
    state = {"model": model.sharded_state_dict()}
    if optimizer is not None:
        if not meta.get("optimizer_sharding"):
            raise ValueError(f"{path} holds no optimizer state")
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=True, metadata={"distrib_optim_sharding_type": meta["optimizer_sharding"]})
    loaded = dist_checkpointing.load(state, str(Path(path) / WEIGHTS_DIR))
    model.load_state_dict(loaded["model"], strict=strict)
    if optimizer is not None:
        with torch.no_grad():  # fp32 runs: the optimizer's main params are views of the (grad-requiring) model params
            optimizer.load_state_dict(loaded["optimizer"])
    log.info("loaded megatron checkpoint %s (saved with %s)", path, meta["saved_with"])


def optimizer_sharding(optimizer) -> str:
    """How the distributed optimizer's state is stored: ``fully_reshardable`` (resume under any TP/PP/DP) when
    the inner optimizer keeps its step count per group (TE/APEX fused Adam); ``dp_reshardable`` (same TP/PP)
    for torch's Adam, whose per-parameter ``step`` megatron cannot reshard."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if any("step" in st for st in opt.optimizer.state.values()):
            return "dp_reshardable"
    return "fully_reshardable"


def copy_processor_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy tokenizer / processor files (not weights, not config.json) from an HF directory."""
    copied = []
    for name in PROCESSOR_FILES:
        if (Path(src) / name).exists():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
