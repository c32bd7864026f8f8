"""``EagleNeMoModel``: EAGLE2 as a NeMo ``ModelPT`` (and the LightningModule that trains it).

It wraps the reference ``EagleModel`` (``self.model``) and the checkpoint's ``EagleProcessor``; ``save_to``
writes a ``.nemo`` with the preprocessing contract inside (see ``convert.nemo_file``), ``restore_from``
reads it back, and ``from_pretrained`` takes a ``.nemo`` path, an HF directory or a hub id
(nvidia/Eagle2-1B/-2B/-9B import from the HF hub). Exports always hold plain weights (LoRA merged).
"""

from __future__ import annotations

import contextvars
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Trainer
from nemo.core.classes import ModelPT
from nemo.core.classes.common import ALLOWED_TARGET_PREFIXES, PretrainedModelInfo
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
from nemo.utils.app_state import AppState
from nemo.utils.get_rank import is_global_rank_zero
from omegaconf import DictConfig, OmegaConf

from nemo_eagle.convert import nemo_file
from nemo_eagle.data.collate import EagleCollator, additive_mask
from nemo_eagle.data.processor import EagleProcessor
from nemo_eagle.modeling.eagle import EagleModel
from nemo_eagle.training.config import DataConfig, OptimConfig
from nemo_eagle.training.loader import BatchPlanner, PlanConfig, ResumableLoader
from nemo_eagle.training.peft import merged_state_dict

# NeMo refuses to instantiate targets outside its allow-list when restoring a .nemo.
if "nemo_eagle." not in ALLOWED_TARGET_PREFIXES:
    ALLOWED_TARGET_PREFIXES.append("nemo_eagle.")

HUB_MODELS = {
    "nvidia/Eagle2-1B": "EAGLE2 1B (SigLIP-448 + Qwen2.5-0.5B), imported from the HF hub",
    "nvidia/Eagle2-2B": "EAGLE2 2B (SigLIP-448 + Qwen2.5-1.5B), imported from the HF hub",
    "nvidia/Eagle2-9B": "EAGLE2 9B (SigLIP-448 + ConvNeXt + Qwen2.5-7B), imported from the HF hub",
}
# (EagleModel, processor files) handed to __init__ by the from_* constructors, so weights are built once.
_PREBUILT: contextvars.ContextVar = contextvars.ContextVar("eagle_prebuilt", default=None)


class EagleSaveRestoreConnector(SaveRestoreConnector):
    """Writes the EAGLE2 ``.nemo`` layout: merged weights, model config and the processor files."""

    def save_to(self, model: EagleNeMoModel, save_path: str):
        if not is_global_rank_zero():
            return None
        model_config = OmegaConf.to_container(model.cfg, resolve=True)
        model_config["eagle"] = nemo_file.model_config_dict(model.model.config)["eagle"]  # the live config
        nemo_file.write_nemo(save_path, model_config=model_config, state_dict=model.export_state_dict(),
                             processor_files=model.processor_files)
        return save_path


class EagleNeMoModel(ModelPT):
    """EAGLE2 under NeMo: ``.nemo`` I/O, Lightning training (loss on assistant tokens), validation loss."""

    def __init__(self, cfg: DictConfig, trainer: Trainer | None = None):
        super().__init__(cfg=cfg, trainer=trainer)
        self._save_restore_connector = EagleSaveRestoreConnector()
        plain = OmegaConf.to_container(self.cfg, resolve=True)
        eagle_cfg = nemo_file.eagle_config_from_model_config(plain)
        attn = plain.get("attn_implementation", "sdpa")
        prebuilt = _PREBUILT.get()
        if prebuilt is not None:
            _PREBUILT.set(None)
            self.model, self.processor_files = prebuilt
        else:
            self.model = EagleModel(eagle_cfg, attn_implementation=attn)
            self.processor_files = self._stored_processor_files(plain)
        self.processor = _build_processor(self.model, self.processor_files)
        self._optim = OptimConfig()
        self._train_cfg: DataConfig | None = None
        self._val_cfg: DataConfig | None = None

    # ------------------------------------------------------------------------------------- constructors
    @staticmethod
    def _stored_processor_files(plain: dict[str, Any]) -> dict[str, bytes]:
        folder = AppState().nemo_file_folder if ModelPT._is_model_being_restored() else None
        if folder is None:
            raise ValueError("EagleNeMoModel needs its processor files: build it with from_pretrained(), from_hf(), "
                             "from_eagle() or restore_from(), not from a bare config")
        pdir = Path(folder) / str(plain.get("processor_dir", nemo_file.PROCESSOR_DIR))
        if not (pdir / "tokenizer.json").exists():
            raise nemo_file.NemoFileError(f"the .nemo has no {pdir.name}/tokenizer.json (no preprocessing contract)")
        return {p.name: p.read_bytes() for p in sorted(pdir.iterdir()) if p.is_file()}

    @classmethod
    def from_eagle(cls, model: EagleModel, processor_files: dict[str, bytes], *, trainer: Trainer | None = None,
                   attn_implementation: str = "sdpa") -> EagleNeMoModel:
        """Wrap a built ``EagleModel`` and its processor files (no second copy of the weights is made)."""
        token = _PREBUILT.set((model, dict(processor_files)))
        try:
            cfg = nemo_file.model_config_dict(model.config, attn_implementation=attn_implementation)
            return cls(cfg=OmegaConf.create(cfg), trainer=trainer)
        finally:
            _PREBUILT.reset(token)

    @classmethod
    def from_hf(
        cls,
        path: str | Path,
        *,
        trainer: Trainer | None = None,
        dtype: torch.dtype | str | None = torch.float32,
        attn_implementation: str = "sdpa",
    ) -> EagleNeMoModel:
        """Import an HF checkpoint directory or hub id (training keeps fp32 master weights by default)."""
        from nemo_eagle.checkpoint import open_checkpoint

        ckpt = open_checkpoint(path)
        model = EagleModel.from_pretrained(ckpt.path, dtype=dtype, attn_implementation=attn_implementation)
        return cls.from_eagle(model, nemo_file.processor_files_from_dir(ckpt.contract_dir), trainer=trainer,
                              attn_implementation=attn_implementation)

    @classmethod
    def restore_from(cls, restore_path: str, override_config_path=None, map_location=None, strict: bool = True,
                     return_config: bool = False, save_restore_connector: SaveRestoreConnector | None = None,
                     trainer: Trainer | None = None, validate_access_integrity: bool = True):
        return super().restore_from(restore_path, override_config_path=override_config_path,
                                    map_location=map_location or torch.device("cpu"), strict=strict,
                                    return_config=return_config,
                                    save_restore_connector=save_restore_connector or EagleSaveRestoreConnector(),
                                    trainer=trainer, validate_access_integrity=validate_access_integrity)

    @classmethod
    def from_pretrained(cls, model_name: str, *, trainer: Trainer | None = None, dtype: Any = torch.float32,
                        attn_implementation: str = "sdpa", **kwargs: Any) -> EagleNeMoModel:
        """A ``.nemo`` path, an HF checkpoint directory, or a hub id (see ``list_available_models``)."""
        if nemo_file.is_nemo(model_name):
            model = cls.restore_from(str(model_name), trainer=trainer, **kwargs)
            return model.to(dtype) if dtype is not None else model
        name = model_name.removeprefix("hf://")
        return cls.from_hf(name, trainer=trainer, dtype=dtype, attn_implementation=attn_implementation)

    @classmethod
    def list_available_models(cls) -> list[PretrainedModelInfo]:
        return [PretrainedModelInfo(pretrained_model_name=name, description=desc, location=f"hf://{name}", class_=cls)
                for name, desc in HUB_MODELS.items()]

    # ------------------------------------------------------------------------------------------- export
    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain EagleModel weights (LoRA folded in), the tensors ``.nemo`` and HF exports hold."""
        return merged_state_dict(self.model)

    def save_pretrained(self, out: str | Path) -> Path:
        """Write the official HF layout (merged weights, config.json, processor files)."""
        return nemo_file.write_hf(out, cfg=self.model.config, state=self.export_state_dict(),
                                  processor_files=self.processor_files)

    # --------------------------------------------------------------------------------------------- data
    def setup_training_data(self, train_data_config: DataConfig | dict[str, Any] | DictConfig):
        self._train_cfg = _data_config(train_data_config)
        if self._train_cfg.train_manifest is None:
            raise ValueError("data.train_manifest is required for training")
        self._train_dl = self._make_loader(self._train_cfg, self._train_cfg.train_manifest, train=True)

    def setup_validation_data(self, val_data_config: DataConfig | dict[str, Any] | DictConfig):
        self._val_cfg = _data_config(val_data_config)
        if self._val_cfg.val_manifest is None:
            self._validation_dl = None
            return
        self._validation_dl = self._make_loader(self._val_cfg, self._val_cfg.val_manifest, train=False)

    def _make_loader(self, cfg: DataConfig, manifest: str, *, train: bool) -> ResumableLoader:
        from nemo_eagle.data.datasets import ConversationDataset

        dataset = ConversationDataset(manifest, self.processor, image_root=cfg.image_root, fmt=cfg.format,
                                      on_bad_sample=cfg.on_bad_sample, name="train" if train else "validation")
        plan = PlanConfig(micro_batch_size=cfg.micro_batch_size, max_tokens_per_batch=cfg.max_tokens_per_batch,
                          packing=cfg.packing, low_res_ratio=cfg.low_res_ratio if train else 0.0,
                          high_res_max_tiles=cfg.high_res_max_tiles or self.processor.tiling.max_tiles,
                          shuffle=cfg.shuffle and train, seed=cfg.seed, pad_to_multiple_of=cfg.pad_to_multiple_of)
        rank, world = _rank_world(self.trainer if self._trainer is not None else None)
        planner = BatchPlanner(dataset, plan, rank=rank, world_size=world)
        collate = EagleCollator(self.processor.tokenizer.pad_token_id, pack=cfg.packing, packing_mask=cfg.packing_mask,
                                pad_to_multiple_of=cfg.pad_to_multiple_of)
        return ResumableLoader(dataset, planner, collate, num_workers=cfg.num_workers,
                               pin_memory=torch.cuda.is_available())

    def train_dataloader(self):
        self._sync_rank(self._train_dl)
        return self._train_dl

    def val_dataloader(self):
        if self._validation_dl is None:
            return []
        self._sync_rank(self._validation_dl)
        return self._validation_dl

    def _sync_rank(self, loader: ResumableLoader | None) -> None:
        """Ranks are known only once the strategy launched: re-plan for this rank if needed."""
        if loader is None or self._trainer is None:
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        p = loader.planner
        if (p.rank, p.world_size) != (rank, world):
            loader.planner = p.for_rank(rank, world)

    # ----------------------------------------------------------------------------------------- training
    def configure_training(self, optim: OptimConfig) -> None:
        self._optim = optim

    def forward(self, batch: dict[str, Any]):
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 4 and self._attn_impl() == "eager":
            mask = additive_mask(mask, self.model.dtype)  # eager attention adds the mask to its scores
        return self.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch.get("position_ids"),
                          pixel_values=batch.get("pixel_values"), labels=batch["labels"])

    def _attn_impl(self) -> str:
        return getattr(self.model.language_model.config, "_attn_implementation", "sdpa")

    def on_train_batch_start(self, batch: Any, batch_idx: int, unused: int = 0):
        if isinstance(batch, dict) and "position" in batch and isinstance(self._train_dl, ResumableLoader):
            self._train_dl.mark_consumed(batch["position"])
        return super().on_train_batch_start(batch, batch_idx, unused)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        labels = batch.get("labels") if batch.get("num_samples") else None
        n_tokens = int((labels[..., 1:] != -100).sum()) if labels is not None else 0
        total = self._step_tokens(n_tokens)  # every rank joins this reduce, whatever it trains on
        if not batch.get("num_samples"):  # every sample of this batch was skipped as bad
            return self._nothing_to_learn()
        loss = self(batch).loss
        if not loss.requires_grad:  # e.g. a text-only batch while only the projector trains (stage 1)
            return self._nothing_to_learn(loss)
        n = batch["num_samples"]
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.log("samples_skipped", float(batch.get("num_skipped", 0)), reduce_fx="sum", on_step=False,
                 on_epoch=True, batch_size=n)
        if total:
            # DDP averages gradients over ranks; weighting each rank's token mean by its share of the step's
            # tokens makes that average the token mean over every rank (not a mean of per-rank means).
            return loss * (n_tokens * self.trainer.world_size / total)
        return loss

    def _step_tokens(self, n_tokens: int) -> float | None:
        """Label tokens of this step summed over every rank (one scalar all-reduce); None in one process."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        t = torch.tensor(float(n_tokens), device=self.device)
        return float(self.trainer.strategy.reduce(t, reduce_op="sum"))

    def _nothing_to_learn(self, loss: torch.Tensor | None = None):
        """None (Lightning skips the step) alone; with other ranks, a zero loss tied to every trainable weight,
        so this rank still joins their gradient all-reduce."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        zero = sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), torch.zeros(()))
        return zero if loss is None else zero + loss.detach()

    def validation_step(self, batch: dict[str, Any], batch_idx: int):
        if not batch.get("num_samples"):
            return None
        loss = self(batch).loss
        n_labels = int((batch["labels"][..., 1:] != -100).sum())
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=max(n_labels, 1))
        return loss

    def on_validation_epoch_end(self):
        return None

    def configure_optimizers(self):
        o = self._optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        total = max(int(self.trainer.max_steps), 1) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, o, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------------------------- exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "numpy": np.random.get_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def lr_factor(step: int, o: OptimConfig, total: int) -> float:
    """Linear warmup, then cosine / linear decay to ``min_lr_ratio`` (or constant) over ``total`` steps."""
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.scheduler == "constant":
        return 1.0
    frac = min(max(step - o.warmup_steps, 0) / max(total - o.warmup_steps, 1), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if o.scheduler == "cosine" else 1 - frac
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape


def _data_config(c: DataConfig | dict[str, Any] | DictConfig) -> DataConfig:
    if isinstance(c, DataConfig):
        return c
    plain = OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else dict(c)
    return DataConfig(**plain)


def _rank_world(trainer: Trainer | None) -> tuple[int, int]:
    import os

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _build_processor(model: EagleModel, files: dict[str, bytes]) -> EagleProcessor:
    folder = nemo_file.materialize_processor_dir(files, model.config)
    processor = EagleProcessor.from_contract(folder, model.config)
    model.source_dir = folder
    model.tokenizer = processor.tokenizer
    if model.config.image_token_id is None:
        model.config.image_token_id = processor.tokenizer.image_token_id
    return processor
