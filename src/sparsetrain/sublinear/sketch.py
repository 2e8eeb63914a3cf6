"""Sketches of the transposed Jacobian and sketch-preconditioned conjugate gradient.

The Gauss-Newton step solves ``(J J^T + lambda I) g = f - y`` with ``J`` (n, m d)
sparse: row ``i`` holds the blocks ``m^(-1/2) a_r x_i`` of the neurons ``r`` in
the fired set ``S_i`` (CSR ``indptr`` (n+1,), ``indices`` (nnz,)).  Brand, Peng,
Song and Weinstein (ITCS 2021) precondition it with a sketch: for a random
``S`` (s, m d) with ``s = O~(n)`` rows,

    S J^T = Q R   (thin QR of the (s + n, n) stack [S J^T; sqrt(lambda) I])
    R^T R ~= J J^T + lambda I

so ``R^(-T) (J J^T + lambda I) R^(-1)`` has condition number ``O(1)`` and
conjugate gradient converges in ``O(log 1/eps)`` iterations.

Sketches (:data:`SKETCHES`, name -> function ``(s, indptr, indices, a, X, m,
rng) -> S J^T`` (s, n)); ``J^T`` is never formed:

* ``gaussian``: ``S_{t,(r,k)} ~ N(0, 1/s)``.  Dense: ``O(s m d)`` random numbers
  (drawn in neuron blocks), so only for small ``m`` (tests, checks).
* ``srht``: subsampled randomised Hadamard transform ``sqrt(N/s) P H D`` with
  ``N = 2^ceil(log2(m d))``, ``D`` random signs, ``H`` the unnormalised
  Walsh-Hadamard matrix scaled by ``N^(-1/2)`` and ``P`` ``s`` rows sampled
  without replacement.  Only the ``s`` sampled rows are evaluated,
  ``H[p, q] = (-1)^popcount(p & q)``, so the cost is ``O(s nnz(J))`` and the
  memory ``O(m d)`` (departure: the fast transform costs ``O(n N log N)``
  time and ``O(N)`` memory per column, which is worse when ``J`` is sparse).
* ``countsketch``: each row ``(r, k)`` of ``J^T`` goes to one bucket
  ``h(r, k)`` with sign ``sigma(r, k)``: ``O(nnz(J))``, the one to use at scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import linalg as sla

from . import _kernels as K
from ._checks import check_choice, check_int, invalid

__all__ = [
    "SKETCHES",
    "sketch_jacobian_t",
    "sketch_preconditioner",
    "pcg",
    "DEFAULT_SKETCH",
    "DEFAULT_SKETCH_FACTOR",
    "DEFAULT_CG_TOL",
]

DEFAULT_SKETCH = "countsketch"
DEFAULT_SKETCH_FACTOR = 4  # s = 4 n rows: a constant-distortion embedding in practice
DEFAULT_CG_TOL = 1e-10  # relative residual ||(K + lambda I) g - r|| <= tol ||r||


# ---------------------------------------------------------------------------
# the sketch table
# ---------------------------------------------------------------------------


def _gaussian(s, indptr, indices, a, X, m, rng):
    n, d = X.shape
    out = np.zeros((s, n))
    # CSC: inputs on which each neuron fires
    order = np.argsort(indices, kind="stable")
    rows_of = np.repeat(np.arange(n), np.diff(indptr))[order]  # (nnz,) input of each pair
    nb = np.searchsorted(indices[order], np.arange(m + 1))  # (m+1,) neuron pointers
    block = max(1, 2**20 // max(1, s * d))
    for r0 in range(0, m, block):
        r1 = min(m, r0 + block)
        Sblk = rng.standard_normal((s, r1 - r0, d)) / math.sqrt(s)  # (s, blk, d)
        for r in range(r0, r1):
            ii = rows_of[nb[r] : nb[r + 1]]
            if ii.size:
                out[:, ii] += (a[r] / math.sqrt(m)) * (Sblk[:, r - r0, :] @ X[ii].T)
    return out


def _srht(s, indptr, indices, a, X, m, rng, parallel=True):
    n, d = X.shape
    N = 1 << max(0, math.ceil(math.log2(m * d)))
    if s > N:
        raise invalid("sketch_size", f"at most 2^ceil(log2(m d)) = {N} for the srht sketch", s)
    dsign = rng.choice(np.array([-1.0, 1.0]), size=m * d)
    rows = np.sort(rng.choice(N, size=s, replace=False)).astype(np.int64)
    out = np.empty((s, n))
    scale = math.sqrt(N / s) / math.sqrt(N) / math.sqrt(m)  # sqrt(N/s) * H/sqrt(N) * J's 1/sqrt(m)
    kern = K.srht_rows_par if parallel else K.srht_rows
    kern(indptr, indices, a, X, rows, dsign, scale, out)
    return out


def _countsketch(s, indptr, indices, a, X, m, rng):
    n, d = X.shape
    bucket = rng.integers(0, s, size=(m, d))  # (m, d) hash h(r, k)
    sign = rng.choice(np.array([-1.0, 1.0]), size=(m, d))  # (m, d) sigma(r, k)
    out = np.zeros((s, n))
    K.countsketch_apply(indptr, indices, a, X, bucket, sign, 1.0 / math.sqrt(m), out)
    return out


SKETCHES: dict[str, Callable[..., np.ndarray]] = {
    "gaussian": _gaussian,
    "srht": _srht,
    "countsketch": _countsketch,
}
"""Name -> ``fn(s, indptr, indices, a, X, m, rng) -> S J^T`` (s, n).  One entry per sketch."""


def sketch_jacobian_t(
    name: str,
    sketch_size: int,
    fired: tuple[np.ndarray, np.ndarray],
    a: np.ndarray,
    X: np.ndarray,
    m: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``S J^T`` (s, n) for the sketch ``name`` of :data:`SKETCHES` (``E[S^T S] = I``)."""
    check_choice("sketch", name, SKETCHES)
    sketch_size = check_int("sketch_size", sketch_size)
    indptr, indices = fired
    return SKETCHES[name](sketch_size, indptr, indices, a, X, int(m), rng)


def sketch_preconditioner(SJt: np.ndarray, lam: float) -> np.ndarray:
    """Upper-triangular ``R`` (n, n) with ``R^T R = (S J^T)^T (S J^T) + lambda I``.

    Thin QR of ``[S J^T; sqrt(lambda) I]``; the damping row block keeps ``R``
    nonsingular when the sketch has rank below ``n`` (``s < n``, collisions,
    duplicate inputs).
    """
    n = SJt.shape[1]
    stack = np.vstack([SJt, math.sqrt(max(lam, 0.0)) * np.eye(n)])
    R = np.linalg.qr(stack, mode="r")
    d = np.abs(np.diag(R))
    tiny = 1e-300 + 1e-14 * (d.max() if d.size else 1.0)
    if (d <= tiny).any():  # numerically singular sketch: lift the diagonal (documented)
        R = R + np.diag(np.where(d <= tiny, tiny, 0.0))
    return R


def pcg(
    matvec: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    R: np.ndarray | None,
    tol: float = DEFAULT_CG_TOL,
    maxiter: int | None = None,
    x0: np.ndarray | None = None,
) -> tuple[np.ndarray, int, float]:
    """Preconditioned conjugate gradient for ``M x = rhs`` (M symmetric positive definite).

    Preconditioner ``P = R^T R`` applied as two triangular solves (``R=None``:
    plain CG).  Stops when ``||rhs - M x|| <= tol ||rhs||`` (true residual of
    the recurrence) or after ``maxiter`` (default ``10 n``) iterations.

    Returns ``x``, the number of iterations and the final relative residual.
    """
    n = rhs.shape[0]
    maxiter = 10 * n if maxiter is None else maxiter
    bnorm = float(np.linalg.norm(rhs))
    if bnorm == 0.0:
        return np.zeros(n), 0, 0.0

    def prec(v):
        if R is None:
            return v.copy()
        w = sla.solve_triangular(R, v, trans="T", check_finite=False)
        return sla.solve_triangular(R, w, check_finite=False)

    x = np.zeros(n) if x0 is None else x0.copy()
    r = rhs - matvec(x) if x0 is not None else rhs.copy()
    z = prec(r)
    p = z.copy()
    rz = float(r @ z)
    it = 0
    rel = float(np.linalg.norm(r)) / bnorm
    while rel > tol and it < maxiter:
        Mp = matvec(p)
        pMp = float(p @ Mp)
        if pMp <= 0.0:  # lost positive definiteness to rounding: stop with what we have
            break
        alpha = rz / pMp
        x += alpha * p
        r -= alpha * Mp
        it += 1
        rel = float(np.linalg.norm(r)) / bnorm
        z = prec(r)
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, it, rel
