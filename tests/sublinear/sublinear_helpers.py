"""Helpers shared by the sublinear tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import numpy as np


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``n`` unit-norm Gaussian rows of dimension ``d`` (C-contiguous)."""
    X = rng.standard_normal((n, d))
    return np.ascontiguousarray(X / np.linalg.norm(X, axis=1, keepdims=True))
