"""Fixtures shared by the tests. Tests that need ../shared/data fail (never skip) when it is missing."""

from pathlib import Path

import numpy as np
import pytest

from relearn_core.errors import InputError
from relearn_core.shared_data import shared_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    try:
        return shared_data_dir()
    except InputError as exc:
        pytest.fail(f"shared data is required for this test: {exc}")


@pytest.fixture(scope="session")
def sod_dir(data_dir) -> Path:
    return data_dir / "SOD"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
