"""A megatron dist-checkpoint directory opens through the one checkpoint layer like an HF directory: same config,
same contract, and ``EagleModel.from_pretrained(megatron_dir)`` gives the HF checkpoint's logits bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.checkpoint import open_checkpoint
from nemo_eagle.megatron.convert import convert

HERE = Path(__file__).resolve().parent


@pytest.fixture
def child_processes_run_megatron_on_cpu(tmp_path, monkeypatch):
    """The layer gathers megatron weights in a child process; give that child the test-only CPU shim."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import megatron_cpu_shim\nmegatron_cpu_shim.enable()\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(HERE), os.environ.get("PYTHONPATH", "")]))


def _logits(path, image):
    proc = EagleProcessor.from_pretrained(path)
    model = EagleModel.from_pretrained(path, dtype=torch.float32)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    )
    with torch.no_grad():
        return model(**proc(text=prompt, images=[image], max_tiles=2)).logits


def test_megatron_directory_loads_like_the_hf_one(sensitive_ckpt, fixtures_dir, tmp_path,
                                                   child_processes_run_megatron_on_cpu):
    from megatron_cpu_shim import megatron_on_cpu

    mdir = tmp_path / "mcore"
    with megatron_on_cpu():
        convert(str(sensitive_ckpt), str(mdir), to_format="megatron")
    hf, mg = open_checkpoint(sensitive_ckpt), open_checkpoint(mdir)
    assert mg.format == "megatron" and mg.config.to_dict() == hf.config.to_dict()
    image = Image.open(fixtures_dir / "images" / "wide_1280x320.png")
    assert torch.equal(_logits(mdir, image), _logits(sensitive_ckpt, image))
