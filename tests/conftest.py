"""Shared test fixtures: where the offline datasets are, and small random models."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
from datasets_path import shared_datasets_dir

from sparsetrain import data


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = shared_datasets_dir()
    if not (path / "fashion_mnist").is_dir():
        pytest.skip(f"real datasets not found at {path} (set SPARSETRAIN_TEST_DATA)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test sees the user's data folders or cache, nor the network."""
    monkeypatch.delenv("SPARSETRAIN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path / "cache"))

    def no_network(url, dest):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data, "_fetch", no_network)


@pytest.fixture
def one_thread():
    """Numba kernels on one thread (the machine is shared); restored afterwards."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)
