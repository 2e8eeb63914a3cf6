"""Activation table: every hidden nonlinearity by name, mapped to a kernel code.

Each entry gives the kernel code (``_kernels.ACT_*``) and the negative-side
slope of hidden layer ``l`` (1-based) for a user parameter ``alpha``.

All-ReLU (SPEC 1.5), hidden layer ``l``::

    f_l(z) = z                 if z > 0
           = -alpha * z        if z <= 0 and l is odd     (1st, 3rd, ... hidden layer)
           =  alpha * z        if z <= 0 and l is even

Leaky ReLU uses ``alpha * z`` on every layer, ReLU ``0``.

SReLU (S-shaped ReLU, Jin et al. 2016) has four trainable parameters per neuron,
``(t_l, a_l, t_r, a_r)``::

    f(z) = t_r + a_r (z - t_r)   if z >= t_r
         = t_l + a_l (z - t_l)   if z <= t_l
         = z                     otherwise

initialised as Keras-contrib's SReLU (the layer the SET reference code used):
``t_l = 0``, ``a_l ~ U(0, 1)``, ``t_r ~ U(0, 5)``, ``a_r = 1``; trained with the
same momentum SGD as the weights (no weight decay).
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

    #: Trainable parameters per neuron (rows of ``SparseLinear.neuron_params``).
    n_params = 0

    def slope(self, layer: int, alpha: float) -> float:
        raise NotImplementedError

    def init_params(self, rng, n: int):
        return None


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


@dataclass(frozen=True)
class _SReLU(Activation):
    n_params = 4

    def slope(self, layer, alpha):
        return 0.0

    def init_params(self, rng, n):
        params = np.empty((4, n), np.float32)  # rows: t_l, a_l, t_r, a_r
        params[_kernels.SRELU_TL] = 0.0
        params[_kernels.SRELU_AL] = rng.uniform(0.0, 1.0, n)
        params[_kernels.SRELU_TR] = rng.uniform(0.0, 5.0, n)
        params[_kernels.SRELU_AR] = 1.0
        return params


ACTIVATIONS = {
    "relu": _Piecewise(_kernels.ACT_PIECEWISE, False, "max(z, 0)", "zero"),
    "leaky-relu": _Piecewise(_kernels.ACT_PIECEWISE, True, "z if z > 0 else alpha*z", "same"),
    "all-relu": _Piecewise(_kernels.ACT_PIECEWISE, True,
                           "z if z > 0 else -alpha*z (odd hidden layer) / alpha*z (even)",
                           "alternate"),
    "sigmoid": _Smooth(_kernels.ACT_SIGMOID, False, "1 / (1 + exp(-z))"),
    "srelu": _SReLU(_kernels.ACT_LINEAR, False,
                    "S-shaped ReLU, 4 trainable parameters per neuron (t_l, a_l, t_r, a_r)"),
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise SparsetrainError(
            f"The 'activation' parameter must be one of {sorted(ACTIVATIONS)}. Got {name!r} instead."
        ) from None


def apply_reference(name: str, z: np.ndarray, layer: int, alpha: float,
                    params=None) -> np.ndarray:
    """Plain NumPy value of the activation (for tests and documentation); ``z`` is (n, B)."""
    act = get_activation(name)
    if act.n_params:
        tl, al, tr, ar = (params[k][:, None] for k in range(4))
        return np.where(z >= tr, tr + ar * (z - tr), np.where(z <= tl, tl + al * (z - tl), z))
    if act.code == _kernels.ACT_SIGMOID:
        return 1.0 / (1.0 + np.exp(-z))
    return np.where(z > 0, z, act.slope(layer, alpha) * z)
