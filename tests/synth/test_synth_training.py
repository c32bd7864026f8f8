"""Synth output feeds training unchanged: the training dataset reads the JSONL and the shards, and
``nemo-eagle train`` runs a few steps on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_eagle.synth.cli import main as synth_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def synth_out(teacher, tmp_path) -> Path:
    server, _, root = teacher
    out = tmp_path / "synth"
    args = ["--images", str(root), "--teacher-url", server.url, "--teacher-model", "fake-teacher", "--tasks",
            "caption,vqa,reasoning", "--out", str(out), "--backoff", "0.01", "--shard-size", "8"]
    assert synth_main(args) == 0
    return out


def test_training_dataset_reads_jsonl_and_shards(synth_out, tiny_ckpt):
    from nemo_eagle import EagleProcessor
    from nemo_eagle.data.datasets import ConversationDataset

    proc = EagleProcessor.from_pretrained(tiny_ckpt)
    records = [json.loads(x) for x in (synth_out / "data.jsonl").read_text().splitlines()]
    for manifest in (synth_out / "data.jsonl", synth_out / "shards"):
        ds = ConversationDataset(str(manifest), proc, on_bad_sample="error")
        assert len(ds) == len(records) and ds.report.kept == len(records), manifest
        assert [c.id for c in ds.samples] == [r["id"] for r in records]
        sample = ds[0]
        assert sample is not None and sample["pixel_values"].shape[0] >= 1
        labels = sample["labels"]
        assert (labels != -100).any()  # the teacher's answer is supervised


def test_synth_output_trains_a_few_steps(synth_out, tiny_ckpt, tmp_path):
    conf = Path(os.environ.get("NEMO_EAGLE_CONF", REPO / "conf"))
    assert (conf / "train.yaml").is_file(), f"no train.yaml in {conf}"
    exp = tmp_path / "exp"
    # one tile per image keeps CPU steps short
    overrides = [f"model.pretrained={tiny_ckpt}", f"data.train_manifest={synth_out / 'data.jsonl'}",
                 "trainer=cpu_debug", "precision=fp32", "trainer.max_steps=2", "data.high_res_max_tiles=1",
                 f"exp_dir={exp}"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "nemo_eagle.cli", "train", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "`max_steps=2` reached" in proc.stderr + proc.stdout
    assert (exp / "model.nemo").is_file()
