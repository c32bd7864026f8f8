"""Lightning callbacks of a training run: tokens/s in the progress bar, and a JSONL log of every step."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback


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
