"""Shared fixtures: the parity fixtures in tests/fixtures, seed/dtype hygiene, the ``gpu`` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The parity fixtures live in the repository; NEMO_EAGLE_FIXTURES may point at another copy with the same layout.
FIXTURES = Path(os.environ.get("NEMO_EAGLE_FIXTURES", REPO / "tests" / "fixtures"))


def pytest_configure(config):
    import torch

    # Tiny models are dominated by threading overhead; one thread also keeps test servers and spawned ranks
    # from oversubscribing a small CI machine.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"parity fixtures not found at {FIXTURES} (set NEMO_EAGLE_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_ckpt(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-eagle2"


@pytest.fixture(scope="session")
def sensitive_ckpt(tiny_ckpt: Path, tmp_path_factory) -> Path:
    """``tiny-eagle2`` with redrawn weights whose greedy continuation depends on the prompt, each image and their
    order (tests/test_sensitive_model.py asserts it). Use it wherever generation is compared with another run of
    our own code: on the input-blind fixture weights such a comparison cannot fail."""
    import shutil

    from nemo_eagle.convert.tiny import make_input_sensitive

    out = tmp_path_factory.mktemp("sensitive") / "tiny-eagle2-sensitive"
    shutil.copytree(tiny_ckpt, out)
    return make_input_sensitive(out)


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    import torch

    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
