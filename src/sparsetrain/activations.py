"""Activation table: every hidden nonlinearity by name, mapped to a kernel code.

Each entry gives the kernel code (``_kernels.ACT_*``) and the negative-side
slope of hidden layer ``l`` (1-based) for a user parameter ``alpha``.

All-ReLU (SPEC 1.5), hidden layer ``l``::

    f_l(z) = z                 if z > 0
           = -alpha * z        if z <= 0 and l is odd     (1st, 3rd, ... hidden layer)
           =  alpha * z        if z <= 0 and l is even

Leaky ReLU uses ``alpha * z`` on every layer, ReLU ``0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels
from .errors import SparsetrainError


@dataclass(frozen=True)
class Activation:
    code: int
    uses_alpha: bool
    description: str

    def slope(self, layer: int, alpha: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class _Piecewise(Activation):
    sign_rule: str = "zero"  # "zero" (ReLU), "same" (leaky), "alternate" (All-ReLU)

    def slope(self, layer, alpha):
        if self.sign_rule == "zero":
            return 0.0
        if self.sign_rule == "same":
            return float(alpha)
        return -float(alpha) if layer % 2 == 1 else float(alpha)


@dataclass(frozen=True)
class _Smooth(Activation):
    def slope(self, layer, alpha):
        return 0.0


ACTIVATIONS = {
    "relu": _Piecewise(_kernels.ACT_PIECEWISE, False, "max(z, 0)", "zero"),
    "leaky-relu": _Piecewise(_kernels.ACT_PIECEWISE, True, "z if z > 0 else alpha*z", "same"),
    "all-relu": _Piecewise(_kernels.ACT_PIECEWISE, True,
                           "z if z > 0 else -alpha*z (odd hidden layer) / alpha*z (even)",
                           "alternate"),
    "sigmoid": _Smooth(_kernels.ACT_SIGMOID, False, "1 / (1 + exp(-z))"),
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise SparsetrainError(
            f"The 'activation' parameter must be one of {sorted(ACTIVATIONS)}. Got {name!r} instead."
        ) from None


def apply_reference(name: str, z: np.ndarray, layer: int, alpha: float) -> np.ndarray:
    """Plain NumPy value of the activation (for tests and documentation)."""
    act = get_activation(name)
    if act.code == _kernels.ACT_SIGMOID:
        return 1.0 / (1.0 + np.exp(-z))
    return np.where(z > 0, z, act.slope(layer, alpha) * z)
