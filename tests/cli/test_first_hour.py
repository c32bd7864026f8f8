"""What a new user meets first: the README's quickstart, `--version`, and chat output that is never blank noise."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from nemo_eagle.cli import main

REPO = Path(__file__).resolve().parents[2]


def readme_setup_commands() -> list[str]:
    """The bash blocks under the README's "Set up" heading, one command each."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)]


def test_readme_has_exactly_two_setup_commands():
    cmds = readme_setup_commands()
    assert len(cmds) == 2, cmds
    assert all("\n" not in c for c in cmds), "each set-up command is one line a user can paste"
    assert "nemo-eagle chat" in cmds[0] and "pytest" in cmds[1]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No hub: offline mode and empty caches, as on a fresh machine without network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NIM_CACHE_PATH", str(tmp_path / "cache"))
    return tmp_path


def test_quickstart_chat_step_answers_visibly_on_the_random_fallback(offline, capsys):
    chat = readme_setup_commands()[0].split("&&")[-1].strip()
    argv = shlex.split(chat)
    assert argv[:2] == ["nemo-eagle", "chat"] and "--offline-fallback" in argv
    assert main(argv[1:]) == 0
    out, err = capsys.readouterr()
    assert out.strip(), f"the quickstart printed no answer; stderr:\n{err}"
    assert not re.search(r"\n\s*\n\s*\n", out), "runs of blank lines in the answer"
    assert "falling back" in err and "RANDOM WEIGHTS" in err and "random text" in err
    assert "produced no text" not in err
    assert (offline / "cache" / "tiny-eagle2-random-v2" / "model.safetensors").exists()


def test_version(capsys):
    from nemo_eagle import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nemo-eagle {__version__}"


@pytest.mark.parametrize(("pieces", "shown"), [
    (["\n"] * 256 + ["Paris"], "Paris"),                        # a barely trained model: hundreds of newlines first
    (["  The", " chart", "\n", "\n", "\n", "\n", "shows", "\n\n\n"], "The chart\n\nshows"),
    (["a\n \n\t\n\nb"], "a\n\nb"),
    (["one\n", "two"], "one\ntwo"),                             # single line breaks are kept
    (["\n", " ", "\n"], ""),
])
def test_blank_runs_are_squeezed(pieces, shown):
    from nemo_eagle.commands import squeeze_blank_lines

    assert "".join(squeeze_blank_lines(pieces)) == shown


def test_streaming_chat_never_prints_runs_of_blank_lines(tiny_ckpt, capsys, monkeypatch):
    from nemo_eagle.modeling.eagle import EagleModel

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(EagleModel, "stream", lambda self, **kw: iter(["\n"] * 256 + ["42", "\n\n\n\n", "."]))
    assert main(["chat", "--model", str(tiny_ckpt), "--image", "example", "--max-tiles", "1", "hi"]) == 0
    assert capsys.readouterr().out == "42\n\n.\n"


def _extras(command: str) -> set[str]:
    m = re.search(r'pip install (?:-q )?-e "\.\[([^\]]*)\]"', command)
    assert m, f"no editable install in {command!r}"
    return set(m.group(1).split(","))


def test_readme_ci_and_pyproject_agree_on_the_extras():
    import tomllib

    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    setup = readme_setup_commands()[0]
    ci = (REPO / ".ci" / "run").read_text()
    readme_extras, ci_extras = _extras(setup), _extras(ci)
    assert readme_extras <= declared and ci_extras <= declared
    assert readme_extras <= ci_extras, "CI installs at least what the README's command installs"
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup  # a plain index gives the CUDA build
    assert "torch==2.13.0" in setup and "torch==2.13.0" in ci
    readme = (REPO / "README.md").read_text()
    for extra in declared:
        assert f"| `{extra}` |" in readme, f"the README's extras table does not describe {extra!r}"
