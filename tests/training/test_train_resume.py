"""A run killed mid-training and resumed from its last checkpoint reproduces the uninterrupted loss curve exactly."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from train_helpers import tiny_overrides

from nemo_eagle.convert.nemo_file import read_nemo
from nemo_eagle.training.callbacks import read_step_log
from nemo_eagle.training.run import load_run, resume_checkpoint, train


class SimulatedCrash(RuntimeError):
    pass


class CrashAt(Callback):
    """Dies at the start of the step after ``step`` optimizer steps (past the last checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise SimulatedCrash(f"killed at step {self.step}")


@pytest.mark.parametrize("every,crash", [(3, 7), (4, 6)], ids=["mid-epoch", "epoch-end"])
def test_kill_and_resume_reproduces_the_loss_curve(tiny_ckpt, color_data, tmp_path, every, crash):
    # Shuffled data, 4 batches per epoch, random low/high resolution views, and LoRA dropout: the curve
    # depends on the data position, the planner seed and the RNG state. Checkpoints at steps 3 and 6 are
    # mid-epoch and the resumed run crosses into the next epoch; a checkpoint at step 4 is the last batch of
    # epoch 0, so the resumed run starts with an exhausted epoch.
    common = ("trainer.max_steps=9", "optim.lr=3e-3", "optim.warmup_steps=2", "data.micro_batch_size=1",
              "data.low_res_ratio=0.5", "data.high_res_max_tiles=4", "peft=lora", "peft.dropout=0.1",
              "peft.r=4", f"checkpoint.every_n_train_steps={every}")
    straight = tmp_path / "straight"
    train(load_run(tiny_overrides(tiny_ckpt, color_data, straight, *common)))

    killed = tmp_path / "killed"
    run = load_run(tiny_overrides(tiny_ckpt, color_data, killed, *common))
    with pytest.raises(SimulatedCrash):
        train(run, callbacks=[CrashAt(crash)])  # e.g. checkpoint at step 6, step 7 done, dies before step 8
    assert (killed / "checkpoints" / "last.ckpt").exists() and not (killed / "model.nemo").exists()
    assert [r["step"] for r in read_step_log(killed / "train_log.jsonl")] == list(range(1, crash + 1))
    train(run)  # checkpoint.resume=auto picks up checkpoints/last.ckpt

    a, b = read_step_log(straight / "train_log.jsonl"), read_step_log(killed / "train_log.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 10))
    assert [(r["epoch"], r["batch"]) for r in a] == [(r["epoch"], r["batch"]) for r in b]
    assert [(r["epoch"], r["batch"]) for r in a] == [(e, k) for e in range(3) for k in range(4)][:9]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # exactly, the steps redone after the kill included
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert len({r["loss"] for r in a}) == 9

    wa, wb = read_nemo(straight / "model.nemo").state_dict, read_nemo(killed / "model.nemo").state_dict
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not any("lora" in k for k in wa)  # the export holds merged plain weights


def test_a_torn_last_checkpoint_falls_back_to_the_newest_intact_one(tiny_ckpt, color_data, tmp_path, caplog):
    # A checkpoint at step 6, killed before step 8, then last.ckpt torn (a kill mid-write). Without validation
    # one step checkpoint is kept. Resuming says so, starts from it, and the redone steps give the uninterrupted
    # run's curve and weights.
    common = ("trainer.max_steps=9", "optim.lr=3e-3", "optim.warmup_steps=2", "data.micro_batch_size=1",
              "checkpoint.every_n_train_steps=3")
    straight = tmp_path / "straight"
    train(load_run(tiny_overrides(tiny_ckpt, color_data, straight, *common)))

    killed = tmp_path / "killed"
    run = load_run(tiny_overrides(tiny_ckpt, color_data, killed, *common))
    with pytest.raises(SimulatedCrash):
        train(run, callbacks=[CrashAt(7)])
    folder = killed / "checkpoints"
    (intact,) = folder.glob("step*.ckpt")
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(run) == str(intact)
    assert f"{last} is torn or unreadable; resuming from the newest intact checkpoint {intact}" in caplog.text
    train(run)

    a, b = read_step_log(straight / "train_log.jsonl"), read_step_log(killed / "train_log.jsonl")
    assert [r["step"] for r in b] == list(range(1, 10))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa, wb = read_nemo(straight / "model.nemo").state_dict, read_nemo(killed / "model.nemo").state_dict
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
