"""`.nemo` files: HF -> .nemo -> HF is bitwise, ModelPT save/restore, the contract inside, the convert CLI."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from safetensors.torch import load_file

from nemo_eagle import EagleProcessor
from nemo_eagle.convert import nemo_file
from nemo_eagle.convert.cli import main as convert_main
from nemo_eagle.modeling.eagle import EagleModel


@pytest.fixture(scope="module")
def tiny_nemo(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("nemo") / "tiny.nemo"
    assert convert_main(["--from", str(tiny_ckpt), "--to", str(out), "--verify"]) == 0
    return out


def test_hf_to_nemo_to_hf_is_bitwise(tiny_ckpt, tiny_nemo, tmp_path, capsys):
    back = tmp_path / "back"
    assert convert_main(["--from", str(tiny_nemo), "--to", str(back), "--verify"]) == 0
    assert "bitwise identical" in capsys.readouterr().out
    a, b = load_file(tiny_ckpt / "model.safetensors"), load_file(back / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for f in tiny_ckpt.iterdir():  # config.json, tokenizer and processor files come back byte for byte
        if f.suffix in (".json", ".txt") and f.name != "HARNESS_INFO.json":
            assert (back / f.name).read_bytes() == f.read_bytes(), f.name


def test_mixed_dtype_checkpoint_keeps_every_value(tiny_ckpt, tmp_path, caplog):
    import shutil

    from safetensors.torch import save_file

    src = tmp_path / "mixed"
    shutil.copytree(tiny_ckpt, src)
    state = load_file(src / "model.safetensors")
    # bf16 vision tower, fp16 elsewhere: no one half type holds both, so loading in either one loses bits
    state = {k: v.to(torch.bfloat16 if "vision" in k else torch.float16) for k, v in state.items()}
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = nemo_file.hf_to_nemo(src, tmp_path / "mixed.nemo")
    assert "mixes tensor dtypes" in caplog.text
    back = load_file(nemo_file.nemo_to_hf(out, tmp_path / "back") / "model.safetensors")
    assert back.keys() == state.keys()
    for k in state:
        assert torch.equal(back[k].float(), state[k].float()), k


def test_the_nemo_holds_the_preprocessing_contract(tiny_ckpt, tiny_nemo):
    with tarfile.open(tiny_nemo) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    assert {"model_config.yaml", "model_weights.ckpt", "processor/tokenizer.json", "processor/chat_template.json",
            "processor/preprocessor_config.json", "processor/config.json"} <= names
    contents = nemo_file.read_nemo(tiny_nemo, weights=False)
    assert contents.model_config["target"] == "nemo_eagle.nemo_model.EagleNeMoModel"
    assert contents.eagle.tiling.max_tiles == 12 and contents.eagle.tokens_per_tile == 256
    proc = EagleProcessor.from_pretrained(tiny_nemo)
    assert proc.tokenizer.image_token_id == 424 and proc.tiling.tile_size == 448


def test_nemo_loads_in_eagle_model_with_the_same_logits(tiny_ckpt, tiny_nemo, fixtures_dir):
    from nemo_eagle.data.processor import EagleProcessor

    ref = EagleModel.from_pretrained(tiny_ckpt)
    got = EagleModel.from_pretrained(tiny_nemo)
    assert got.tokenizer is not None and got.config.image_token_id == 424
    proc = EagleProcessor.from_pretrained(tiny_ckpt)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    )
    batch = proc(text=prompt, images=[str(fixtures_dir / "images" / "rgb_640x480.png")], max_tiles=2)
    with torch.no_grad():
        assert torch.equal(got(**batch).logits, ref(**batch).logits)
    assert EagleModel.from_pretrained(tiny_nemo, dtype="bfloat16").dtype == torch.bfloat16


def test_modelpt_save_restore_and_from_pretrained(tiny_ckpt, tiny_nemo, tmp_path):
    from nemo.core.classes.common import ALLOWED_TARGET_PREFIXES

    from nemo_eagle.nemo_model import EagleNeMoModel

    assert "nemo_eagle." in ALLOWED_TARGET_PREFIXES
    names = [m.pretrained_model_name for m in EagleNeMoModel.list_available_models()]
    assert names == ["nvidia/Eagle2-1B", "nvidia/Eagle2-2B", "nvidia/Eagle2-9B"]

    restored = EagleNeMoModel.restore_from(str(tiny_nemo))
    imported = EagleNeMoModel.from_pretrained(str(tiny_ckpt), dtype=None)
    a, b = restored.export_state_dict(), imported.export_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert restored.processor.tiling == imported.processor.tiling

    again = tmp_path / "again.nemo"
    restored.save_to(str(again))
    twice = EagleNeMoModel.from_pretrained(str(again), dtype=None)
    c = twice.export_state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert twice.processor_files == restored.processor_files  # the contract survives save -> restore -> save

    hf = twice.save_pretrained(tmp_path / "hf")  # HF export of a ModelPT: official layout, same tensors
    ref = load_file(tiny_ckpt / "model.safetensors")
    out = load_file(hf / "model.safetensors")
    assert ref.keys() == out.keys() and all(torch.equal(ref[k], out[k]) for k in ref)
    assert (hf / "config.json").read_bytes() == (tiny_ckpt / "config.json").read_bytes()


def test_bad_nemo_files_and_conversions_fail_clearly(tiny_ckpt, tmp_path, capsys):
    junk = tmp_path / "junk.nemo"
    junk.write_bytes(b"not a tar")
    with pytest.raises(nemo_file.NemoFileError, match="not a .nemo archive"):
        nemo_file.read_nemo(junk)
    other = tmp_path / "other.nemo"
    with tarfile.open(other, "w") as tar:
        cfg = tmp_path / "model_config.yaml"
        cfg.write_text(json.dumps({"target": "nemo.collections.asr.models.EncDecCTCModel"}))
        tar.add(cfg, arcname="model_config.yaml")
    with pytest.raises(nemo_file.NemoFileError, match="no 'eagle' section"):
        EagleModel.from_pretrained(other)
    assert convert_main(["--from", str(tmp_path / "missing.nemo"), "--to", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(["--from", str(tiny_ckpt), "--to", str(tmp_path / "y")])  # hf -> hf: nothing to convert
    assert "nothing to convert" in capsys.readouterr().err


def test_megatron_is_delegated_to_the_bridge(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import sys
    import types

    calls = []

    def fake_convert(src, dst, **kw):  # stands in for the bridge: "megatron" is an HF copy here
        calls.append((src, dst, kw))
        import shutil

        shutil.copytree(src, dst, dirs_exist_ok=True)
        return {"max_logit_diff": 0.0} if kw["verify"] else {}

    fake = types.ModuleType("nemo_eagle.megatron.convert")
    fake.convert = fake_convert
    monkeypatch.setitem(sys.modules, "nemo_eagle.megatron.convert", fake)
    assert convert_main(["--from", str(tiny_ckpt), "--to", str(tmp_path / "m"), "--format", "megatron",
                         "--tp", "2", "--pp", "1", "--verify"]) == 0
    assert calls == [(str(tiny_ckpt), str(tmp_path / "m"), {"to_format": "megatron", "tp": 2, "pp": 1, "verify": True})]
    assert "max logit difference 0.000e+00" in capsys.readouterr().out
    # megatron -> .nemo goes through an HF directory; the .nemo holds the bridge's tensors bitwise
    (tmp_path / "m" / "metadata.json").write_text("{}")
    (tmp_path / "m" / "config.json").unlink()  # a megatron directory has no HF config.json
    calls.clear()

    def fake_to_hf(src, dst, **kw):
        import shutil

        calls.append(kw)
        shutil.copytree(tiny_ckpt, dst, dirs_exist_ok=True)
        return {}

    monkeypatch.setattr(fake, "convert", fake_to_hf)
    assert convert_main(["--from", str(tmp_path / "m"), "--to", str(tmp_path / "m.nemo")]) == 0
    assert calls[0]["to_format"] == "hf"
    assert EagleModel.from_pretrained(tmp_path / "m.nemo").config.image_token_id == 424
    monkeypatch.setitem(sys.modules, "nemo_eagle.megatron.convert", None)  # not installed
    assert convert_main(["--from", str(tiny_ckpt), "--to", str(tmp_path / "m2"), "--format", "megatron"]) == 2
    assert "megatron conversion is not available" in capsys.readouterr().err
