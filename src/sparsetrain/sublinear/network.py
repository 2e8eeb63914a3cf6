"""Two-layer shifted-ReLU network of SPEC 2.1, dense and from fired sets.

    f(W, x) = m^(-1/2) * sum_{r=1..m} a_r * relu(<w_r, x> - b)

with width ``m``, input dimension ``d``, fixed output signs ``a_r`` in
{-1, +1}, trainable ``W`` (m, d) with ``w_r(0) ~ N(0, I_d)``, unit-norm inputs
and shift ``b = sqrt(0.4 ln m)`` by default, so that a neuron fires with
probability ``P[N(0,1) > b] <= exp(-b^2 / 2) = m^(-0.2)``.

Loss on a batch of ``B`` points (mean, so the step size does not depend on
``B``; SPEC 2.1 writes the sum, which is ``B`` times this):

    L(W) = 1/(2B) * sum_i (f(W, x_i) - y_i)^2
    dL/dw_r = 1/(B sqrt(m)) * a_r * sum_i (f(x_i) - y_i) 1[<w_r, x_i> > b] x_i
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..memory import aligned_empty
from . import _kernels as K
from ._checks import check_int, invalid

__all__ = [
    "ShiftedReLUNetwork",
    "default_shift",
    "gaussian_tail",
    "dense_forward",
    "dense_gradient",
    "fired_sets",
    "sparse_forward",
    "sparse_gradient",
]


def default_shift(m: int) -> float:
    """``b = sqrt(0.4 ln m)``: firing probability ``<= m^(-0.2)`` per neuron and input."""
    return math.sqrt(0.4 * math.log(m)) if m > 1 else 0.0


def gaussian_tail(b: float) -> float:
    """``P[N(0, 1) > b]``: the firing probability of a fresh neuron on a unit input."""
    return 0.5 * math.erfc(b / math.sqrt(2.0))


def dense_forward(W: np.ndarray, a: np.ndarray, shift: float, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense reference: returns ``f`` (n,) and the pre-activations ``Z = X W^T`` (n, m)."""
    Z = X @ W.T  # (n, m)
    f = np.maximum(Z - shift, 0.0) @ a / math.sqrt(W.shape[0])  # (n,)
    return f, Z


def dense_gradient(
    W: np.ndarray, a: np.ndarray, shift: float, X: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, float]:
    """Dense gradient of the mean loss: returns ``dL/dW`` (m, d) and ``L``."""
    f, Z = dense_forward(W, a, shift, X)
    res = f - y  # (n,)
    M = (Z > shift) * (res[:, None] * a[None, :])  # (n, m) = res_i a_r 1[fired]
    G = M.T @ X / (X.shape[0] * math.sqrt(W.shape[0]))  # (m, d)
    return G, 0.5 * float(np.mean(res**2))


def fired_sets(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fired sets as CSR over inputs from a dense firing matrix ``A`` (n, m) bool.

    Returns ``indptr`` (n+1,) and ``indices`` (nnz,) int64, neurons ascending
    within each input (``np.nonzero`` is row-major).
    """
    ii, rr = np.nonzero(A)
    indptr = np.zeros(A.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(ii, minlength=A.shape[0]), out=indptr[1:])
    return indptr, rr.astype(np.int64)


def sparse_forward(
    W: np.ndarray,
    a: np.ndarray,
    shift: float,
    X: np.ndarray,
    fired: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """``f`` (B,) computed from the fired sets only: ``O(d sum_i |S_i|)``."""
    indptr, indices = fired
    return K.sparse_forward(W, a, float(shift), X, indptr, indices)


def sparse_gradient(
    W: np.ndarray,
    a: np.ndarray,
    shift: float,
    X: np.ndarray,
    y: np.ndarray,
    fired: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Gradient rows of the neurons that fired on some input.

    Returns ``rows`` (k,), ``G`` (k, d) with ``G[s] = dL/dw_{rows[s]}``, and
    the loss.  Every other row of the gradient is exactly zero.
    """
    indptr, indices = fired
    f = sparse_forward(W, a, shift, X, fired)
    res = f - y
    B = X.shape[0]
    rows = np.unique(indices)
    G = np.zeros((rows.size, W.shape[1]))
    where = np.searchsorted(rows, indices)
    for q in range(B):
        sl = slice(indptr[q], indptr[q + 1])
        np.add.at(G, where[sl], (res[q] * a[indices[sl]])[:, None] * X[q][None, :])
    G /= B * math.sqrt(W.shape[0])
    return rows, G, 0.5 * float(np.mean(res**2))


@dataclass
class ShiftedReLUNetwork:
    """Weights of the two-layer shifted-ReLU network (a thin holder).

    Attributes
    ----------
    W : ndarray (m, d) float64, C-order
        Trainable first-layer weights ``w_r``.
    a : ndarray (m,) float64
        Fixed output signs ``a_r`` in {-1, +1}.
    shift : float
        The ``b`` of the shifted ReLU.
    """

    W: np.ndarray
    a: np.ndarray
    shift: float

    @classmethod
    def init(
        cls, width: int, dim: int, shift: float | None = None, seed: int | None = 0
    ) -> ShiftedReLUNetwork:
        """``w_r(0) ~ N(0, I_d)``, ``a_r ~ U{-1, +1}``, ``b = sqrt(0.4 ln m)`` unless given."""
        width, dim = check_int("width", width), check_int("dim", dim)
        if shift is None:
            shift = default_shift(width)
        elif not (isinstance(shift, int | float) and math.isfinite(shift)):
            raise invalid("shift", "a finite float or None", shift)
        rng = np.random.default_rng(seed)
        W = aligned_empty((width, dim), np.float64)  # rows start cache lines
        W[:] = rng.standard_normal((width, dim))
        a = rng.choice(np.array([-1.0, 1.0]), size=width)
        return cls(W=W, a=a, shift=float(shift))

    @property
    def width(self) -> int:
        return self.W.shape[0]

    @property
    def dim(self) -> int:
        return self.W.shape[1]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Dense ``f(W, X)`` (n,)."""
        return dense_forward(self.W, self.a, self.shift, np.asarray(X, np.float64))[0]

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        """Mean squared loss ``1/(2n) sum (f - y)^2``."""
        return 0.5 * float(np.mean((self.predict(X) - y) ** 2))
