"""Shared test fixtures: where the offline datasets are, and small random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets_path import shared_datasets_dir


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = shared_datasets_dir()
    if not (path / "fashion_mnist").is_dir():
        pytest.skip(f"real datasets not found at {path} (set SPARSETRAIN_TEST_DATA)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
