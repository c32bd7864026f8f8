"""``nemo-eagle export-onnx`` on the tiny fixture checkpoint: the ONNX image encoder in onnxruntime matches the
torch path within 1e-4, and the LLM directory loads with transformers' Auto classes and gives the same logits."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    """Run the CLI once for the whole module: ONNX file (+ --verify) and the LLM directory."""
    from nemo_eagle.cli import main

    out = tmp_path_factory.mktemp("export")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["export-onnx", "--model", str(tiny_ckpt), "--out", str(out / "encoder.onnx"), "--verify",
                   "--llm-dir", str(out / "llm")])
    return rc, stdout.getvalue(), out


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    from nemo_eagle import EagleModel

    return EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32)


def test_cli_exports_and_verifies(exported):
    rc, text, out = exported
    assert rc == 0, text
    match = re.search(r"max abs diff ([0-9.e+-]+) \(tolerance 1e-04\) OK", text)
    assert match and float(match.group(1)) <= 1e-4, text
    assert (out / "encoder.onnx").stat().st_size > 0


def test_onnx_encoder_matches_torch_on_new_tiles(exported, model):
    import onnx
    import onnxruntime as ort

    path = exported[2] / "encoder.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixel_values"] and [o.name for o in graph.output] == ["image_embeds"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the tile axis is symbolic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = model.config.vision.image_size
    pixels = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1
    got = torch.from_numpy(session.run(None, {"pixel_values": pixels.numpy()})[0])
    with torch.no_grad():
        want = model.get_image_features(pixels)
    assert got.shape == (4, model.config.tokens_per_tile, model.config.llm.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_verification_detects_a_model_that_differs(exported, model):
    import copy

    from nemo_eagle.export import verify_image_encoder

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.projector.fc2.bias.add_(0.01)
    result = verify_image_encoder(changed, exported[2] / "encoder.onnx", tiles=(1,))
    assert not result.ok and result.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert "FAILED" in result.describe()


def test_llm_dir_loads_with_transformers_auto_classes(exported, model, tiny_ckpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_eagle import EagleProcessor

    llm_dir = exported[2] / "llm"
    config = json.loads((llm_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert "auto_map" not in json.loads((llm_dir / "tokenizer_config.json").read_text())

    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(llm_dir)
    proc = EagleProcessor.from_pretrained(tiny_ckpt)
    messages = [{"role": "user", "content": "What is in the picture?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == proc.apply_chat_template(messages, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == proc.tokenizer.encode(prompt)
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, model.language_model(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "encoder.txt"], "must end in .onnx"),
        (["--out", "encoder.onnx", "--opset", "13"], "opset 13 is too old"),
    ],
)
def test_cli_rejects_bad_arguments(tiny_ckpt, tmp_path, capsys, args, message):
    from nemo_eagle.export.onnx import main

    args = [a if not a.startswith("encoder") else str(tmp_path / a) for a in args]
    assert main(["--model", str(tiny_ckpt), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_needs_something_to_do(tiny_ckpt):
    from nemo_eagle.export.onnx import main

    with pytest.raises(SystemExit) as exc:
        main(["--model", str(tiny_ckpt)])
    assert exc.value.code == 2


def test_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    from nemo_eagle.export.onnx import main

    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "nemo-eagle export-onnx" in capsys.readouterr().err
