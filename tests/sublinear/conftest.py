"""Shared fixtures for the sublinear tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    env = os.environ.get("SPARSETRAIN_TEST_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
    if not (base / "fashion_mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found under {base}")
    return base
