"""The one checkpoint layer: HF directory, ``.nemo`` file and megatron directory open to the same config, weights
and preprocessing contract, every loader option means the same for each, and damaged checkpoints fail in one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.checkpoint import CheckpointError, open_checkpoint
from nemo_eagle.convert import nemo_file
from nemo_eagle.ops import registry


@pytest.fixture(scope="module")
def formats(sensitive_ckpt, tmp_path_factory):
    """The input-sensitive checkpoint in every format (so equal outputs mean equal weights, not a blind model)."""
    root = tmp_path_factory.mktemp("formats")
    nemo = nemo_file.hf_to_nemo(sensitive_ckpt, root / "model.nemo")
    return {"hf": sensitive_ckpt, "nemo": nemo}


@pytest.fixture(scope="module")
def batch_inputs(fixtures_dir):
    return [Image.open(fixtures_dir / "images" / "rgb_640x480.png")]


def _run(path, images, **kw):
    proc = EagleProcessor.from_pretrained(path)
    model = EagleModel.from_pretrained(path, **kw)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    )
    batch = proc(text=prompt, images=images, max_tiles=2)
    with torch.no_grad():
        logits = model(**batch).logits
    return model, batch, logits


def test_every_format_opens_to_the_same_config_and_contract(formats):
    hf, nemo = open_checkpoint(formats["hf"]), open_checkpoint(formats["nemo"])
    assert (hf.format, nemo.format) == ("hf", "nemo")
    assert hf.config.to_dict() == nemo.config.to_dict()
    for name in ("tokenizer.json", "chat_template.json", "preprocessor_config.json"):
        assert hf.file(name).read_bytes() == nemo.file(name).read_bytes(), name


@pytest.mark.parametrize("options", [
    {"dtype": "bfloat16", "attn_implementation": "eager", "kernels": "torch"},
    {"dtype": torch.float32, "attn_implementation": "sdpa", "kernels": "auto"},
])
def test_options_mean_the_same_for_every_format(formats, batch_inputs, options):
    runs = {fmt: _run(path, batch_inputs, **options) for fmt, path in formats.items()}
    (m_hf, b_hf, l_hf), (m_nemo, b_nemo, l_nemo) = runs["hf"], runs["nemo"]
    want = options["dtype"] if isinstance(options["dtype"], torch.dtype) else torch.bfloat16
    for m in (m_hf, m_nemo):
        assert m.dtype == want and m.vision.dtype == want
        assert m.language_model.config._attn_implementation == options["attn_implementation"]
        assert m.projector.impl is registry.resolve("project_tokens", options["kernels"])[0]
        assert m.tokenizer is not None and m.config.image_token_id == m.tokenizer.image_token_id
    assert torch.equal(b_hf["input_ids"], b_nemo["input_ids"])
    assert torch.equal(b_hf["pixel_values"], b_nemo["pixel_values"])
    assert torch.equal(l_hf, l_nemo)


def test_stored_dtype_is_kept_by_default(formats, tmp_path):
    half = EagleModel.from_pretrained(formats["hf"], dtype="bfloat16")
    half.save_pretrained(tmp_path / "bf16")
    assert EagleModel.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    nemo = nemo_file.hf_to_nemo(tmp_path / "bf16", tmp_path / "bf16.nemo")
    assert EagleModel.from_pretrained(nemo).dtype == torch.bfloat16


def test_damaged_checkpoints_fail_in_one_line_naming_the_file(tiny_ckpt, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"broken/config.json is not valid JSON"):
        EagleModel.from_pretrained(broken)
    (broken / "config.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        EagleProcessor.from_pretrained(broken)
    shutil.copyfile(tiny_ckpt / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        EagleModel.from_pretrained(broken)
    not_nemo = tmp_path / "weights.bin"
    not_nemo.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a .nemo archive"):
        open_checkpoint(not_nemo)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((CheckpointError, FileNotFoundError), match="no config.json"):
        open_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match=".nemo file not found"):
        open_checkpoint(tmp_path / "missing.nemo")


def test_torn_nemo_archive_is_named(formats, tmp_path):
    torn = tmp_path / "torn.nemo"
    data = formats["nemo"].read_bytes()
    torn.write_bytes(data[: len(data) // 3])
    with pytest.raises((CheckpointError, ValueError), match="torn.nemo"):
        EagleModel.from_pretrained(torn)
