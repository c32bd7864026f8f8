"""Build the pieces of a run from typed configs: the model (weights, freezing, LoRA, FP8 swap) and the Trainer."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nemo_eagle.config import EagleConfig, get_preset
from nemo_eagle.training.config import ModelSpec, TrainRun
from nemo_eagle.training.precision import PrecisionPlan, build_precision

log = logging.getLogger(__name__)


def random_model_files(spec: ModelSpec) -> tuple[EagleConfig, dict[str, bytes]]:
    """EagleConfig + contract files of a RANDOM model: the tokenizer and chat template of ``tokenizer_from``."""
    from nemo_eagle.convert.nemo_file import processor_files_from_dir
    from nemo_eagle.data.processor import EagleProcessor, EagleTokenizer

    if not spec.tokenizer_from:
        raise ValueError("a randomly initialised model (model.pretrained=null) needs model.tokenizer_from=<HF "
                         "checkpoint directory whose tokenizer.json and chat template it uses>")
    files = processor_files_from_dir(spec.tokenizer_from, tokenizer_only=True)
    tok = EagleTokenizer.from_file(Path(spec.tokenizer_from) / "tokenizer.json")
    if spec.config is not None:
        d = dict(spec.config)
        d["llm"] = dict(d.get("llm", {}))
        d["llm"].setdefault("vocab_size", tok.vocab_size)
        d.setdefault("vision", {})
        d.setdefault("image_token_id", tok.image_token_id)
        if "tiling" not in d or "tile_size" not in d["tiling"]:
            d["tiling"] = dict(d.get("tiling", {}), tile_size=d["vision"].get("image_size", 448))
        cfg = EagleConfig.from_dict(d)
    else:
        cfg = get_preset(spec.preset).replace(image_token_id=tok.image_token_id)
    if cfg.llm.vocab_size < tok.vocab_size:
        raise ValueError(f"model llm.vocab_size={cfg.llm.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    if cfg.image_token_id != tok.image_token_id:
        raise ValueError(f"image_token_id {cfg.image_token_id} != the tokenizer's <IMG_CONTEXT> {tok.image_token_id}")
    if cfg.tiling.tile_size != cfg.vision.image_size:
        raise ValueError(
            f"tiling.tile_size {cfg.tiling.tile_size} must equal vision.image_size {cfg.vision.image_size}"
        )
    template = None
    if "chat_template.json" in files:
        import json

        template = json.loads(files["chat_template.json"])["chat_template"]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        EagleProcessor(tok, cfg.tiling, tokens_per_tile=cfg.tokens_per_tile, chat_template=template).save_pretrained(
            tmp
        )
        generated = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    for name in ("preprocessor_config.json", "processor_config.json", "chat_template.json", "tokenizer.json"):
        files.setdefault(name, generated[name])
    files["preprocessor_config.json"] = generated["preprocessor_config.json"]
    files["processor_config.json"] = generated["processor_config.json"]
    return cfg, files


def load_model(spec: ModelSpec, *, trainer: Any = None):
    """An ``EagleNeMoModel`` from ``spec`` (fp32 master weights), before freezing / LoRA / precision."""
    from nemo_eagle.modeling.eagle import EagleModel
    from nemo_eagle.nemo_model import EagleNeMoModel

    if spec.pretrained:
        if str(spec.pretrained).endswith(".nemo"):
            model = EagleNeMoModel.restore_from(spec.pretrained, trainer=trainer)
            return model.to(torch.float32)
        return EagleNeMoModel.from_hf(spec.pretrained, trainer=trainer, dtype=torch.float32,
                                      attn_implementation=spec.attn_implementation)
    cfg, files = random_model_files(spec)
    torch.manual_seed(spec.init_seed)
    eagle = EagleModel(cfg, attn_implementation=spec.attn_implementation)
    log.warning("model: RANDOM initialisation (%s LLM, %d layers, hidden %d)", cfg.llm.model_type,
                cfg.llm.num_hidden_layers, cfg.llm.hidden_size)
    return EagleNeMoModel.from_eagle(eagle, files, trainer=trainer, attn_implementation=spec.attn_implementation)


def prepare_model(model, run: TrainRun, plan: PrecisionPlan) -> dict[str, int]:
    """Kernel backends, freezing, LoRA and the precision transform, in that order; returns trainable counts."""
    from nemo_eagle.ops import KernelConfig, use_kernels
    from nemo_eagle.training.peft import apply_lora, set_trainable

    use_kernels(model.model, KernelConfig(backend=run.model.kernels))  # chosen once, logged; training shares them
    if run.peft.method == "lora":
        apply_lora(model.model, run.peft)
    counts = set_trainable(model.model, run.model.freeze)
    convnext = getattr(model.model.vision, "convnext", None)
    if run.model.convnext_dtype is not None and convnext is not None:
        convnext.to(getattr(torch, run.model.convnext_dtype))  # Eagle2-9B: as NVIDIA's code keeps it
    if plan.prepare is not None:
        plan.prepare(model.model)
    model.configure_training(run.optim)
    return counts


@dataclass
class Built:
    model: Any
    trainer: Any
    plan: PrecisionPlan


def build_trainer(run: TrainRun, plan: PrecisionPlan, *, has_val: bool, callbacks: Sequence[Any] = ()):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from nemo_eagle.training.callbacks import SaveOnSignal, StepLog, ThroughputMonitor

    t = run.trainer
    exp = Path(run.exp_dir)
    ckpt = ModelCheckpoint(dirpath=exp / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                           every_n_train_steps=run.checkpoint.every_n_train_steps, save_last=True,
                           save_on_train_epoch_end=False,  # epochs can be short; save by steps only
                           save_top_k=run.checkpoint.save_top_k if has_val else 1,
                           monitor="val_loss" if has_val else None, mode="min")
    cbs = [ckpt, ThroughputMonitor(), StepLog(exp / "train_log.jsonl"), LearningRateMonitor("step"),
           SaveOnSignal(exp / "checkpoints" / "last.ckpt"), *callbacks]
    if t.enable_progress_bar:
        from nemo_eagle.training.logs import step_progress_bar

        cbs.append(step_progress_bar())  # steps out of max_steps: the batch count of a stream is unknown
    kwargs: dict[str, Any] = {
        "accelerator": t.accelerator, "devices": t.devices, "num_nodes": t.num_nodes, "strategy": t.strategy,
        "max_steps": t.max_steps, "max_epochs": t.max_epochs, "log_every_n_steps": t.log_every_n_steps,
        "accumulate_grad_batches": t.accumulate_grad_batches, "gradient_clip_val": t.gradient_clip_val,
        "num_sanity_val_steps": t.num_sanity_val_steps if has_val else 0,
        "enable_progress_bar": t.enable_progress_bar, "default_root_dir": str(exp),
        "logger": TensorBoardLogger(str(exp), name="tb", version=""), "callbacks": cbs,
        "use_distributed_sampler": False,  # the batch planner shards by rank itself (and resumes exactly)
        "enable_model_summary": False,
    }
    if has_val:
        kwargs.update(val_check_interval=t.val_check_interval, check_val_every_n_epoch=None,
                      limit_val_batches=t.limit_val_batches)
    else:
        kwargs.update(limit_val_batches=0)
    if plan.plugin is not None:
        kwargs["plugins"] = [plan.plugin]
    else:
        kwargs["precision"] = plan.trainer_precision
    try:
        return Trainer(**kwargs)
    except Exception as e:  # Lightning's MisconfigurationException / RuntimeError: say which setting to change
        if t.accelerator in ("gpu", "cuda", "auto") and not _has_gpu():
            raise ValueError(f"trainer.accelerator={t.accelerator} devices={t.devices}: {e}; this machine has no GPU, "
                             "use trainer=cpu_debug (or trainer.accelerator=cpu trainer.devices=1)") from e
        raise


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def build_run(run: TrainRun, *, callbacks: Sequence[Any] = ()) -> Built:
    """Precision plan, Trainer, model (prepared), and data loaders: everything ``fit`` needs."""
    plan = build_precision(run.precision)  # first: a recipe this machine cannot run fails before any loading
    data = run.data
    if run.precision.recipe == "fp8_te" and data.pad_to_multiple_of % 16:
        data = dataclasses.replace(data, pad_to_multiple_of=math.lcm(16, data.pad_to_multiple_of))
    has_val = data.val_manifest is not None
    trainer = build_trainer(run, plan, has_val=has_val, callbacks=callbacks)
    model = load_model(run.model, trainer=trainer)
    prepare_model(model, run, plan)
    if data.train_manifest is not None:
        model.setup_training_data(data)
    if has_val:
        model.setup_validation_data(data)
    return Built(model=model, trainer=trainer, plan=plan)
