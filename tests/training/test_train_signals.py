"""A real ``nemo-eagle train`` process stopped by SIGTERM / SIGINT saves a checkpoint before it exits, one killed
with SIGKILL loses only the steps after its last periodic checkpoint, and in both cases rerunning the same command
ends with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_overrides

from nemo_eagle.convert.nemo_file import read_nemo
from nemo_eagle.training.callbacks import read_step_log

STEPS = 14
COMMON = (f"trainer.max_steps={STEPS}", "optim.lr=3e-3", "optim.warmup_steps=2", "data.micro_batch_size=1",
          "data.low_res_ratio=0.5", "data.high_res_max_tiles=2")


def _train(overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "nemo_eagle.cli", "train", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _logged_steps(exp: Path) -> int:
    p = exp / "train_log.jsonl"
    return sum(1 for ln in p.read_text().splitlines() if ln.strip()) if p.exists() else 0


def _stop_after(proc: subprocess.Popen, exp: Path, steps: int, sig: int) -> str:
    deadline = time.monotonic() + 300
    while _logged_steps(exp) < steps:
        assert proc.poll() is None, f"training ended before step {steps}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "training did not reach the step in time"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    return out


def _weights(exp: Path) -> dict[str, torch.Tensor]:
    return read_nemo(exp / "model.nemo").state_dict


@pytest.fixture(scope="module")
def straight(tiny_ckpt, color_data, tmp_path_factory):
    """The uninterrupted run, started in a folder holding an older run's step log (a fresh start must say so and
    keep that log apart)."""
    exp = tmp_path_factory.mktemp("straight")
    (exp / "train_log.jsonl").write_text(json.dumps({"step": 99, "loss": 1.0}) + "\n")
    done = subprocess.run([sys.executable, "-m", "nemo_eagle.cli", "train",
                           *tiny_overrides(tiny_ckpt, color_data, exp, *COMMON)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting fresh (no checkpoint in" in done.stderr
    assert (exp / "train_log.previous.jsonl").read_text().startswith('{"step": 99')
    assert [r["step"] for r in read_step_log(exp / "train_log.jsonl")] == list(range(1, STEPS + 1))
    return exp


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _interrupt(overrides: list[str], exp: Path, at: int, sig: int) -> int:
    proc = _train(overrides)
    out = _stop_after(proc, exp, at, sig)
    assert proc.returncode == 128 + sig, out
    assert "interrupted at step" in out and "rerun the same command to resume" in out, out
    saved = int(out.split("interrupted at step ")[1].split(":")[0])
    assert at <= saved < STEPS
    assert (exp / "checkpoints" / "last.ckpt").exists() and not (exp / "model.nemo").exists()
    assert [r["step"] for r in read_step_log(exp / "train_log.jsonl")] == list(range(1, saved + 1))
    return saved


def test_sigint_then_sigterm_save_checkpoints_and_the_reruns_resume_exactly(tiny_ckpt, color_data, tmp_path,
                                                                              straight):
    exp = tmp_path / "run"
    overrides = tiny_overrides(tiny_ckpt, color_data, exp, *COMMON)  # the default 500-step checkpoint interval
    first = _interrupt(overrides, exp, 3, signal.SIGINT)  # Ctrl-C
    proc = _train(overrides)
    out = _stop_after(proc, exp, first + 2, signal.SIGTERM)  # a scheduler preempting the resumed run
    assert f"resuming from {exp / 'checkpoints' / 'last.ckpt'} (step {first} of {STEPS})" in out, out
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted at step" in out, out
    second = int(out.split("interrupted at step ")[1].split(":")[0])
    assert second > first

    again = subprocess.run([sys.executable, "-m", "nemo_eagle.cli", "train", *overrides], capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"(step {second} of {STEPS})" in again.stderr
    a, b = read_step_log(straight / "train_log.jsonl"), read_step_log(exp / "train_log.jsonl")
    assert [(r["step"], r["loss"], r["lr"]) for r in a] == [(r["step"], r["loss"], r["lr"]) for r in b]
    _same_weights(straight, exp)


def test_sigkill_resumes_from_the_last_periodic_checkpoint(tiny_ckpt, color_data, tmp_path, straight):
    exp = tmp_path / "run"
    overrides = tiny_overrides(tiny_ckpt, color_data, exp, *COMMON, "checkpoint.every_n_train_steps=3")
    proc = _train(overrides)
    _stop_after(proc, exp, 7, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    logged = _logged_steps(exp)
    again = subprocess.run([sys.executable, "-m", "nemo_eagle.cli", "train", *overrides], capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    step = int(again.stderr.split("(step ")[1].split(" ")[0])
    assert step % 3 == 0 and 6 <= step <= logged
    records = [json.loads(ln) for ln in (exp / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # the redone steps are not logged twice
    _same_weights(straight, exp)
