"""Serving tests run their coroutines on asyncio (anyio's pytest plugin)."""

import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"
