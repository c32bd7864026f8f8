"""`nemo-eagle convert --format megatron --tp 2` on a CPU machine: one line saying why, before any rank is spawned."""

from __future__ import annotations

import pytest
import torch

from nemo_eagle.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_megatron_tp2_on_cpu_fails_before_spawning(tiny_ckpt, tmp_path, capsys, monkeypatch):
    pytest.importorskip("megatron.core", reason="the megatron extra is not installed")
    from nemo_eagle.megatron import parallel

    spawned = []
    monkeypatch.setattr(parallel, "launch", lambda *a, **k: spawned.append(a) or [{}])
    rc = main(["convert", "--from", str(tiny_ckpt), "--to", str(tmp_path / "mcore"), "--format", "megatron",
               "--tp", "2"])
    assert rc == 2 and not spawned
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "needs a CUDA GPU" in err[0], err
    assert not (tmp_path / "mcore").exists()
