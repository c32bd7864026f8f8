"""`nemo-eagle train` as a newcomer meets it: config groups in --help, unknown choices listed, a clean log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nemo_eagle.cli import main

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("hydra", reason="the training entry point composes Hydra configs (install the nemo extra)")


def test_train_help_lists_every_config_group_and_its_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for group in sorted(p for p in (REPO / "conf").iterdir() if p.is_dir()):
        line = next((ln for ln in out.splitlines() if ln.split()[:1] == [group.name]), None)
        assert line is not None, f"config group {group.name} missing from train --help"
        for option in group.glob("*.yaml"):
            assert option.stem in line
    assert "trainer=cpu_debug precision=fp32" in out


def test_unknown_group_choice_lists_the_choices(capsys):
    assert main(["train", "trainer=cpu"]) == 2
    err = capsys.readouterr().err
    assert "trainer=cpu: no such option" in err
    assert all(name in err for name in ("1gpu", "8gpu", "cpu_debug"))


def test_cpu_training_log_has_no_duplicates_no_telemetry_and_a_step_total(tiny_ckpt, tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "training"))
    from train_helpers import write_color_dataset

    data = write_color_dataset(tmp_path / "colors")
    cmd = [sys.executable, "-m", "nemo_eagle.cli", "train", "model=tiny", f"model.tokenizer_from={tiny_ckpt}",
           f"data.train_manifest={data / 'train.jsonl'}", "trainer=cpu_debug", "precision=fp32",
           "data.num_workers=0", "trainer.max_steps=3", f"exp_dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (r.stdout + r.stderr).replace("\r", "\n")
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    bar = [ln for ln in lines if "/3 [" in ln]
    assert bar and "3/3" in bar[-1], "the training bar counts steps out of max_steps"
    # Lightning's lines once each (its own handler and ours used to print both)
    messages = Counter(ln.split(": ", 1)[-1] for ln in lines if "GPU available" in ln or "TPU available" in ln)
    assert messages and all(n == 1 for n in messages.values()), messages
    for chatter in ("OneLogger", "telemetry", "exporter", "Transformer Engine and Apex"):
        assert chatter not in log, f"third-party chatter in the training log: {chatter!r}"
