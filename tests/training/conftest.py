"""Fixtures for the training tests: one CPU thread, a synthetic colour dataset, tiny-model Hydra overrides."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread is faster, and avoids oversubscribing a shared CPU.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def color_data(tmp_path_factory):
    from train_helpers import write_color_dataset

    return write_color_dataset(tmp_path_factory.mktemp("colors"))
