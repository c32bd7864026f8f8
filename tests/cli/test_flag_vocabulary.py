"""One vocabulary of flags: the same thing is spelt the same way in every subcommand's --help."""

from __future__ import annotations

import re

import pytest

from nemo_eagle.cli import COMMANDS, main

# the one spelling of each concept, and spellings that must not appear in any --help
VOCABULARY = {"--model": ("--checkpoint", "--ckpt", "--model-path"), "--device": ("--devices",),
              "--dtype": ("--torch-dtype", "--weights-dtype"), "--max-tiles": ("--max-num-tiles", "--tiles"),
              "--out": ("--output", "--out-dir", "--output-dir"), "--api-key": ("--key", "--token")}
NEEDS = {
    "chat": {"--model", "--device", "--dtype", "--max-tiles"},
    "embed": {"--model", "--device", "--dtype", "--out"},
    "index": {"--model", "--device", "--dtype", "--max-tiles"},
    "eval-retrieval": {"--model", "--out"},
    "train-embedder": {"--model", "--out", "--dtype", "--max-tiles"},
    "export-onnx": {"--model", "--out", "--dtype"},
    "eval": {"--model", "--device", "--dtype", "--max-tiles", "--out", "--api-key"},
    "synth": {"--out", "--api-key"},
    "serve": {"--model", "--device", "--dtype", "--max-tiles", "--api-key"},
}


def _help(name: str, capsys) -> str:
    try:
        main([name, "--help"])
    except SystemExit:
        pass
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_shared_flags_are_spelt_alike(name, capsys):
    if name == "serve":
        pytest.importorskip("pydantic_settings")
    text = _help(name, capsys)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert NEEDS[name] <= flags, f"{name} lacks {NEEDS[name] - flags}"
    for canonical, others in VOCABULARY.items():
        for other in others:
            # another spelling may only be shown as an alias on the canonical flag's own line
            for line in (ln for ln in text.splitlines() if re.search(rf"(?<![\w-]){other}(?![\w-])", ln)):
                assert re.search(rf"(?<![\w-]){canonical}(?![\w-])", line), \
                    f"{name} --help spells {canonical} as {other}: {line.strip()}"
    if "--dtype" in flags:
        assert "float32" in text and "bfloat16" in text


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        if name == "serve":
            pytest.importorskip("pydantic_settings")
        assert _help(name, capsys).startswith("usage: nemo-eagle "), name


def test_old_spelling_still_works(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["embed", "--model", str(tiny_ckpt), "--output", str(out), "hello"]) == 0
    assert out.exists() and '"embedding"' in out.read_text()


def test_dtype_choices_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--dtype", "float64", "hi"])
    assert "invalid choice: 'float64'" in capsys.readouterr().err
