"""Neural tangent kernel regression at initialisation (the comparison a reviewer asked for).

For the shifted-ReLU network with trained first layer, the empirical NTK at
``W(0)`` is the Gauss-Newton matrix of the first iteration:

    Theta(x, x') = <grad_W f(x), grad_W f(x')> = (1/m) <x, x'> |S(x) & S(x')|

with ``S(x)`` the fired set of ``x``.  Kernel ridge regression on the
residual of the initial network gives the linearised network trained to
convergence:

    alpha = (Theta(X, X) + lambda I)^(-1) (y - f_0(X)),
    f_ntk(x) = f_0(x) + Theta(x, X) alpha,

``lambda = ridge * tr(Theta) / n``.  ``Theta`` is built from fired pairs only
(:func:`.gauss_newton.fired_gram`), fired sets by brute force (one ``n m d``
product, counted in ``t_kernel``).  ``kernel="analytic"`` uses instead the
infinite-width limit ``Theta_inf(x, x') = <x, x'> P[u > b, v > b]`` with
``(u, v)`` standard bivariate normal of correlation ``<x, x'>`` (unit inputs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ._checks import check_choice, check_float, check_xy
from .gauss_newton import DEFAULT_DAMPING, damped_solve, fired_gram
from .network import ShiftedReLUNetwork, fired_sets

__all__ = ["NTKResult", "ntk_regression", "ntk_gram", "NTK_KERNELS"]


def _empirical(net, X, Z=None):
    """``Theta(X, X)`` or, with ``Z``, the cross kernel ``Theta(Z, X)`` (n_z, n)."""
    m = net.width
    if Z is None:
        return fired_gram(fired_sets(X @ net.W.T > net.shift), X @ X.T, m)
    Az = (Z @ net.W.T > net.shift).astype(np.float64)  # (n_z, m)
    Ax = (X @ net.W.T > net.shift).astype(np.float64)  # (n, m)
    return (Az @ Ax.T) * (Z @ X.T) / m


def _orthant(rho: np.ndarray, b: float) -> np.ndarray:
    """``P[u > b, v > b]`` for standard bivariate normals of correlation ``rho`` (vectorised)."""
    from scipy import integrate, stats

    p1 = stats.norm.sf(b)
    out = np.empty_like(rho)
    flat, res = rho.ravel(), out.ravel()
    # d/drho P = phi2(b, b; rho) (Plackett); integrate from rho = 0 where P = p1^2
    for k, r in enumerate(flat):
        r = float(np.clip(r, -1 + 1e-12, 1 - 1e-12))
        f = lambda t: math.exp(-b * b / (1 + t)) / (2 * math.pi * math.sqrt(1 - t * t))  # noqa: E731
        res[k] = p1 * p1 + integrate.quad(f, 0.0, r)[0]
    return out


def _analytic(net, X, Z=None):
    Z = X if Z is None else Z
    C = Z @ X.T
    return C * _orthant(C, float(net.shift))


NTK_KERNELS = {"empirical": _empirical, "analytic": _analytic}
"""Name -> ``fn(net, X, Z=None) -> Theta(Z or X, X)``."""


def ntk_gram(net: ShiftedReLUNetwork, X: np.ndarray, kernel: str = "empirical") -> np.ndarray:
    """``Theta(X, X)`` (n, n) of :data:`NTK_KERNELS` ``kernel``."""
    check_choice("kernel", kernel, NTK_KERNELS)
    return NTK_KERNELS[kernel](net, np.ascontiguousarray(X, np.float64))


@dataclass
class NTKResult:
    """KRR outcome: losses are ``1/(2n) sum (f - y)^2``; times in seconds."""

    alpha: np.ndarray
    train_loss: float
    init_loss: float
    test_loss: float
    t_kernel: float
    t_solve: float
    ridge_lambda: float

    @property
    def t_total(self) -> float:
        return self.t_kernel + self.t_solve


def ntk_regression(
    net: ShiftedReLUNetwork,
    X: np.ndarray,
    y: np.ndarray,
    *,
    ridge: float = DEFAULT_DAMPING,
    kernel: str = "empirical",
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> NTKResult:
    """Kernel ridge regression with the NTK of ``net`` at its current weights (see module doc)."""
    check_choice("kernel", kernel, NTK_KERNELS)
    check_float("ridge", ridge, "[0, inf)")
    X, y = check_xy(X, y, net.dim)
    t0 = time.perf_counter()
    f0 = net.predict(X)
    Th = NTK_KERNELS[kernel](net, X)  # (n, n)
    t1 = time.perf_counter()
    alpha, lam = damped_solve(Th, y - f0, ridge)
    t2 = time.perf_counter()
    fit = f0 + Th @ alpha
    test_loss = math.nan
    if X_test is not None and y_test is not None:
        Xt = np.ascontiguousarray(X_test, np.float64)
        pred = net.predict(Xt) + NTK_KERNELS[kernel](net, X, Xt) @ alpha
        test_loss = 0.5 * float(np.mean((pred - np.asarray(y_test, float)) ** 2))
    return NTKResult(
        alpha=alpha,
        train_loss=0.5 * float(np.mean((fit - y) ** 2)),
        init_loss=0.5 * float(np.mean((f0 - y) ** 2)),
        test_loss=test_loss,
        t_kernel=t1 - t0,
        t_solve=t2 - t1,
        ridge_lambda=lam,
    )
