"""Fixtures shared by the tests. Tests that need ../shared/data fail (never skip) when it is missing."""

import os
from pathlib import Path

# The suite runs as two pytest-xdist workers on two cores: one thread each avoids torch/OpenMP oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys

import numpy as np
import pytest

# the flow tests use the accuracy tooling of the benchmarks (benchmarks/flow_accuracy.py)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

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
def fresh_plugin_manager():
    """A plugin manager built afresh for the test (adapters a test registers do not leak into the next)."""
    from relearn_core import plugins

    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
