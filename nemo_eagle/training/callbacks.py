"""Lightning callbacks of a training run: tokens/s in the progress bar, a JSONL log of every step, and a checkpoint
saved when the run is interrupted (SIGINT / SIGTERM)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

log = logging.getLogger("nemo_eagle.train")


class ThroughputMonitor(Callback):
    """Logs ``tokens_per_s`` (all ranks, wall time between steps, smoothed) to the progress bar and loggers."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self._last: float | None = None
        self._rate: float | None = None
        self.tokens_seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        tokens = int(batch.get("num_tokens", 0)) * trainer.world_size if isinstance(batch, dict) else 0
        self.tokens_seen += tokens
        if self._last is not None and now > self._last:
            rate = tokens / (now - self._last)
            self._rate = rate if self._rate is None else self.smoothing * self._rate + (1 - self.smoothing) * rate
            pl_module.log("tokens_per_s", self._rate, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        self._last = now

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last = None  # validation time is not training throughput


class StepLog(Callback):
    """Appends ``{"step", "loss", "lr", "epoch", "batch"}`` per optimizer step to a JSONL file (rank 0)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 0 or outputs is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        rec: dict[str, Any] = {"step": int(trainer.global_step), "loss": float(loss.detach().float())}
        if trainer.optimizers:
            rec["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        if isinstance(batch, dict) and "position" in batch:
            rec["epoch"], rec["batch"] = (int(v) for v in batch["position"])
        if not math.isfinite(rec["loss"]):
            rec["loss"] = str(rec["loss"])
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def read_step_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a step log; a step logged twice (re-run after a crash) keeps its last record."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[rec["step"]] = rec
    return [by_step[k] for k in sorted(by_step)]


class SaveOnSignal(Callback):
    """SIGINT / SIGTERM during training: finish the step in flight, save ``last.ckpt`` (atomically), stop.

    As NeMo's and Lightning's preemption handling do, the state saved is that of a finished optimizer step, so the
    rerun resumes exactly. Every rank stops at the same step (the flag is reduced across ranks). A second signal
    while the step is still running gives up waiting and ends the process the usual way.
    """

    def __init__(self, path: str | Path, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.path = Path(path)
        self.signals = signals
        self.received: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:  # asked twice: stop waiting for the step
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning("%s received: saving a checkpoint after the current step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        if self.received is None:
            self.received = signal.SIGTERM  # another rank was signalled
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(str(partial))
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        self.saved_step = int(trainer.global_step)
        log.warning("interrupted at step %d: saved %s; rerun the same command to resume", self.saved_step, self.path)
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


def checkpoint_step(path: str | Path) -> int | None:
    """The optimizer step a Lightning checkpoint was saved at; None when the file is torn or unreadable."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - a torn or foreign file: the caller falls back to another checkpoint
        return None


def keep_steps_up_to(log_path: str | Path, step: int) -> int:
    """Drop the records of steps after ``step`` (logged by a run that died past its last checkpoint, about to be
    redone); returns how many were dropped."""
    p = Path(log_path)
    if not p.exists():
        return 0
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
    if len(kept) != len(lines):
        tmp = p.with_name(p.name + ".partial")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, p)
    return len(lines) - len(kept)
