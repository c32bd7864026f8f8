"""``convert``: HF -> megatron -> HF is bitwise, ``verify`` agrees with the reference, the CLI and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nemo_eagle.megatron import checkpoint
from nemo_eagle.megatron.convert import convert, main


@pytest.fixture(scope="module")
def round_trip(tiny_ckpt, tmp_path_factory):
    from megatron_cpu_shim import megatron_on_cpu

    mg, hf = tmp_path_factory.mktemp("mg"), tmp_path_factory.mktemp("hf")
    with megatron_on_cpu():
        to_mg = convert(str(tiny_ckpt), str(mg), to_format="megatron", verify=True)
        to_hf = convert(str(mg), str(hf), to_format="hf", verify=True)
    return to_mg, to_hf, mg, hf


def test_hf_megatron_hf_files_are_bitwise(round_trip, tiny_ckpt):
    *_, hf = round_trip
    want, got = load_file(str(tiny_ckpt / "model.safetensors")), load_file(str(hf / "model.safetensors"))
    assert sorted(got) == sorted(want)  # official names, tied lm_head absent
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    for name in ("config.json", "tokenizer.json", "chat_template.json", "preprocessor_config.json"):
        assert (hf / name).exists(), name
    assert json.loads((hf / "config.json").read_text())["model_type"] == "eagle_2_5_vl"


def test_verify_reports_a_small_difference_both_ways(round_trip):
    to_mg, to_hf, mg, _ = round_trip
    assert 0 <= to_mg["max_logit_diff"] < 1e-4 and 0 <= to_hf["max_logit_diff"] < 1e-4
    assert to_mg["dtype"] == "float32" and to_mg["tensor_parallel"] == 1
    meta = checkpoint.read_meta(mg)
    assert meta["padded_vocab_size"] % 128 == 0 and meta["padded_vocab_size"] >= 431


def test_cli_main_writes_and_prints(megatron_cpu, tiny_ckpt, tmp_path, capsys):
    assert main(["--from", str(tiny_ckpt), "--to", str(tmp_path / "mg"), "--format", "megatron", "--tp", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "megatron" and checkpoint.is_megatron_checkpoint(tmp_path / "mg")


def test_bad_requests_fail_with_clear_messages(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(ValueError, match="to_format must be one of"):
        convert(str(tiny_ckpt), str(tmp_path / "x"), to_format="nemo")
    assert main(["--from", str(tmp_path / "nope"), "--to", str(tmp_path / "x"), "--format", "megatron"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["--from", str(tmp_path / "nope"), "--to", str(tmp_path / "x"), "--format", "hf"]) == 1
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a megatron EAGLE2 checkpoint"):
        convert(str(tiny_ckpt), str(tmp_path / "x"), to_format="hf")
    with pytest.raises(SystemExit):
        main(["--from", str(tiny_ckpt), "--to", str(tmp_path / "x"), "--format", "onnx"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_megatron_without_cuda_says_so(tiny_ckpt, tmp_path):
    """Outside the test shim, megatron-core cannot run on a CPU-only torch: the error says why."""
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        convert(str(tiny_ckpt), str(tmp_path / "mg"), to_format="megatron")
