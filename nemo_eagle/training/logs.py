"""One clean log stream for a training run: each line once, no third-party telemetry chatter, and a step bar.


Lightning, torchmetrics and huggingface_hub attach their own stderr handlers when imported; with our root handler
in place each of their lines would print twice. NeMo's ModelPT always starts NVIDIA's OneLogger, which warns that it
has no exporter (it collects nothing); megatron-core's FSDP modules announce themselves at import.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

# logger -> the least severe level still shown
QUIET_LOGGERS = {"nv_one_logger": logging.ERROR, "megatron.core.distributed": logging.WARNING}
_OWN_HANDLER_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics", "huggingface_hub")


def quiet_third_party_logs() -> None:
    """Set the levels of chatty libraries (safe before they are imported: levels stay on the logger objects)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # megatron-core says so once per module on every machine without TE/Apex; precision.py decides (and logs) whether
    # a run needs Transformer Engine, and raises when a requested recipe cannot run.
    for message in (r"Transformer Engine and Apex are not installed", r"Apex is not installed"):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def drop_duplicate_handlers() -> None:
    """Remove libraries' own console handlers where their records also reach the root handler."""
    if not logging.getLogger().handlers:
        return
    for name in _OWN_HANDLER_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:  # console only: keep memory / file / null handlers
                lg.removeHandler(h)
        lg.propagate = True


def step_progress_bar(**kwargs: Any):
    """Lightning's tqdm bar counting optimizer steps out of ``max_steps`` (not batches out of an unknown total)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class StepProgressBar(TQDMProgressBar):
        def _total_steps(self, trainer) -> int | None:
            if trainer.max_steps and trainer.max_steps > 0:
                return int(trainer.max_steps)
            batches = self.total_train_batches
            if math.isfinite(batches) and trainer.max_epochs and trainer.max_epochs > 0:
                return math.ceil(batches / trainer.accumulate_grad_batches) * trainer.max_epochs
            return None

        def on_train_epoch_start(self, trainer, *_: Any) -> None:
            super().on_train_epoch_start(trainer, *_)
            total = self._total_steps(trainer)
            self.train_progress_bar.reset(total)
            self.train_progress_bar.n = self.train_progress_bar.initial = trainer.global_step
            self.train_progress_bar.unit = "step"
            self.train_progress_bar.set_description(f"train (epoch {trainer.current_epoch})")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            n = trainer.global_step
            if n != self.train_progress_bar.n and self._should_update(n, self.train_progress_bar.total):
                self.train_progress_bar.n = n
                self.train_progress_bar.refresh()
                self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    return StepProgressBar(**kwargs)
