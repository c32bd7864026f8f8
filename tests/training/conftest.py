"""Fixtures for the training tests: a synthetic colour dataset, tiny-model Hydra overrides."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def color_data(tmp_path_factory):
    from train_helpers import write_color_dataset

    return write_color_dataset(tmp_path_factory.mktemp("colors"))
