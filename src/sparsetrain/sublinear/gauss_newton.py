"""Gauss-Newton training of the shifted-ReLU network: dense, sketched, sublinear (SPEC 2.4).

Full batch of ``n`` points.  The Jacobian ``J`` (n, m d) of ``f`` has, in row
``i``, the blocks ``m^(-1/2) a_r 1[<w_r, x_i> > b] x_i``: only the ``k_i``
neurons of the fired set ``S_i`` contribute.  One iteration with step ``eta``:

    r = f(W) - y                                   residual (n,)
    K = J J^T = (1/m) G o (A A^T)                  G = X X^T, A (n, m) 0/1 firing
    g = (K + lambda I)^(-1) r                      damped solve (see below)
    W <- W - eta J^T g,   i.e.  w_r <- w_r - eta m^(-1/2) a_r sum_{i : r in S_i} g_i x_i

With ``eta = 1`` and no status flips the linearised residual vanishes in one
step; in the wide regime the loss falls geometrically (SPEC 2.4: ``O(log 1/eps)``
iterations).  The loss reported is the mean loss ``1/(2n) sum (f - y)^2`` of
:mod:`.network`; the step does not depend on its scaling.

Damping (departure from the seeds, which assume ``lambda_min(K) > 0``):
``lambda = damping * tr(K) / n`` (Levenberg-Marquardt, default
``damping = 1e-6``, i.e. a millionth of the mean diagonal).  Duplicate or
nearly parallel inputs make ``K`` singular or ill-conditioned; the damped
system stays positive definite, ``g`` stays finite, and ``J^T g`` ignores the
null-space component (rows of ``J`` of duplicates are equal).  If Cholesky
still fails, ``lambda`` is multiplied by 100 until it succeeds and a
:class:`DampingWarning` says so.

Methods (:data:`GN_METHODS`):

* ``gn``: exact dense reference.  ``Z = X W^T`` (n m d), ``A A^T`` by BLAS
  (n^2 m), Cholesky (n^3), ``J^T g`` dense (m n d).
* ``gn-sketch`` (Brand, Peng, Song, Weinstein 2021): dense identification,
  then the damped system solved by conjugate gradient preconditioned with the
  QR of a sketch ``S J^T`` (:mod:`.sketch`); matrix-vector products
  ``J (J^T v)`` over the fired pairs.  Options ``sketch``, ``sketch_size``
  (default ``4 n``), ``cg_tol`` (default ``1e-10``).
* ``gn-sublinear`` (seed 002): fired pairs from the correlation-tree index
  (drift bounds, :mod:`.indexes`); ``K`` from fired pairs only
  (``sum_r |T_r|^2`` work, ``T_r`` the inputs neuron ``r`` fires on); ``f``
  from the implicit weights (below) without any ``d``-dimensional dot product
  except for pairs that fire for the first time; solve direct or sketched CG.

Implicit weights (seed 002, "maintain the weight implicitly"): every update
lies in the span of the inputs, so

    W(t) = W(0) + C(t) X,    C (m, n) sparse on the pairs that ever fired,
    <w_r(t), x_i> = <w_r(0), x_i> + sum_j C[r, j] G[j, i]
    C[r, i] <- C[r, i] - eta m^(-1/2) a_r g_i      for the pairs fired now.

``C`` is kept as sorted pair keys ``r n + i`` with the coefficients and the
initial products ``<w_r(0), x_i>`` (computed once per pair).  ``weights()``
materialises ``W`` on request.  Departure: the correlation-tree index of
:mod:`.indexes` re-reads explicit rows of ``W`` for pairs inside its drift
band, so a copy of the moved rows is kept current for it (``nnz d`` per
iteration, timed as index maintenance).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import linalg as sla

from ..errors import NonFiniteLossError, SparsetrainError
from . import _kernels as kernels
from ._checks import check_choice, check_float, check_int, check_xy, invalid
from .indexes import EXACT_INDEXES, make_index
from .network import ShiftedReLUNetwork, fired_sets
from .sketch import (
    DEFAULT_CG_TOL,
    DEFAULT_SKETCH,
    DEFAULT_SKETCH_FACTOR,
    SKETCHES,
    pcg,
    sketch_jacobian_t,
    sketch_preconditioner,
)

__all__ = [
    "GN_METHODS",
    "GN_COLUMNS",
    "DEFAULT_DAMPING",
    "DampingWarning",
    "GNResult",
    "StepReport",
    "train_gn",
    "damped_solve",
    "fired_gram",
    "jacobian_dense",
    "DenseGN",
    "SketchGN",
    "SublinearGN",
]

DEFAULT_DAMPING = 1e-6  # lambda = 1e-6 * mean diag(K): far below lambda_min(K) of sane data

GN_COLUMNS = (
    "iteration",
    "train_loss",
    "fired_per_input",
    "jacobian_density",
    "flips",
    "cg_iters",
    "damping",
    "t_identify",
    "t_maintain",
    "t_jacobian",
    "t_solve",
    "t_total",
)


class DampingWarning(UserWarning):
    """The damped Gauss-Newton system needed more damping than asked for."""


def fired_gram(
    fired: tuple[np.ndarray, np.ndarray], G: np.ndarray, m: int, *, parallel: bool = True
) -> np.ndarray:
    """``J J^T = (1/m) G o (A A^T)`` (n, n) from fired sets (CSR over inputs) only.

    Work ``sum_r |T_r|^2`` (fired pairs times inputs per neuron); no ``m d`` term.
    """
    indptr, indices = fired
    n = indptr.shape[0] - 1
    tptr, tind, _ = kernels.csr_transpose(indptr, indices, m)
    kern = kernels.fired_counts_par if parallel else kernels.fired_counts
    return kern(indptr, indices, tptr, tind, n) * G / m


def jacobian_dense(W: np.ndarray, a: np.ndarray, shift: float, X: np.ndarray) -> np.ndarray:
    """Explicit ``J`` (n, m d): ``J[i, r d + k] = m^(-1/2) a_r 1[<w_r, x_i> > b] x_ik`` (tests)."""
    n, d = X.shape
    m = W.shape[0]
    A = (X @ W.T > shift).astype(np.float64)  # (n, m)
    return ((A * a[None, :])[:, :, None] * X[:, None, :]).reshape(n, m * d) / math.sqrt(m)


def damped_solve(K: np.ndarray, r: np.ndarray, damping: float = DEFAULT_DAMPING) -> tuple[np.ndarray, float]:
    """Solve ``(K + lambda I) g = r`` by Cholesky with ``lambda = damping tr(K) / n``.

    If the factorisation fails, ``lambda`` grows 100x at a time (with a
    :class:`DampingWarning`).  Returns ``g`` and the ``lambda`` used.
    """
    n = K.shape[0]
    lam = _lambda(K, damping)
    for _ in range(40):
        try:
            cf = sla.cho_factor(K + lam * np.eye(n), lower=False, check_finite=False)
            g = sla.cho_solve(cf, r, check_finite=False)
            if np.isfinite(g).all():
                return g, lam
        except (np.linalg.LinAlgError, sla.LinAlgError):
            pass
        lam = lam * 100.0 if lam > 0 else 1e-12
        warnings.warn(
            f"J J^T is numerically singular; raising the Gauss-Newton damping to lambda = {lam:.3g}.",
            DampingWarning,
            stacklevel=3,
        )
    raise SparsetrainError(
        f"J J^T could not be factorised even with damping lambda = {lam:.3g}; check X for NaN or inf."
    )


def _lambda(K: np.ndarray, damping: float) -> float:
    scale = float(np.trace(K)) / K.shape[0]
    return damping * (scale if scale > 0 else 1.0)


# ---------------------------------------------------------------------------
# solvers: one class per method, same three calls (thin classes, kernels above)
# ---------------------------------------------------------------------------


class StepReport(NamedTuple):
    """What one Gauss-Newton step reports to :func:`train_gn` (times in seconds)."""

    loss: float  # mean loss 1/(2n) sum (f - y)^2 at the weights before the step
    fired: int  # fired (input, neuron) pairs: the nonzero d-blocks of J
    flips: int  # pairs whose firing status changed since the previous step; -1 at the first step
    cg_iters: int  # conjugate-gradient iterations (0: direct solve)
    damping: float  # the lambda used
    t_identify: float  # finding the fired pairs
    t_maintain: float  # keeping the index and the implicit weights current
    t_jacobian: float  # J J^T, J^T g and the CG products
    t_solve: float  # factorisation or CG without its products


class _GNBase:
    """State shared by the methods; ``step(eta)`` updates the weights and returns a :class:`StepReport`."""

    def __init__(
        self,
        net: ShiftedReLUNetwork,
        X: np.ndarray,
        y: np.ndarray,
        *,
        damping: float,
        parallel: bool,
        rng: np.random.Generator,
    ) -> None:
        self.net, self.X, self.y = net, X, y
        self.a, self.b = net.a, float(net.shift)
        self.m, self.d = net.W.shape
        self.n = X.shape[0]
        self.damping = damping
        self.parallel = parallel
        self.rng = rng
        self.G = X @ X.T  # (n, n) input Gram matrix
        self.t_build = 0.0

    def weights(self) -> np.ndarray:
        return self.net.W


class DenseGN(_GNBase):
    """Exact dense Gauss-Newton: ``K = (1/m) G o (A A^T)`` by BLAS, Cholesky, dense ``J^T g``."""

    def __init__(self, net, X, y, **kw):
        super().__init__(net, X, y, **kw)
        self._A_prev: np.ndarray | None = None

    def _forward(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``f`` (n,) and the firing matrix ``A`` (n, m) bool at the current weights."""
        Z = self.X @ self.net.W.T  # (n, m)
        A = Z > self.b  # (n, m) firing matrix
        f = np.maximum(Z - self.b, 0.0) @ self.a / math.sqrt(self.m)
        return f, A

    def _flips(self, A: np.ndarray) -> int:
        """Pairs whose firing status changed since the previous step (-1 at the first); remembers ``A``."""
        flips = -1 if self._A_prev is None else int(np.count_nonzero(A != self._A_prev))
        self._A_prev = A
        return flips

    def step(self, eta: float) -> StepReport:
        t0 = time.perf_counter()
        f, A = self._forward()
        res = f - self.y
        Af = A.astype(np.float64)
        K = (Af @ Af.T) * self.G / self.m  # (n, n)
        t1 = time.perf_counter()
        g, lam = damped_solve(K, res, self.damping)
        t2 = time.perf_counter()
        # J^T g: w_r -= eta m^(-1/2) a_r sum_i A[i, r] g_i x_i   (m, d)
        self.net.W -= (eta / math.sqrt(self.m)) * self.a[:, None] * (Af.T @ (g[:, None] * self.X))
        t3 = time.perf_counter()
        loss, fired = 0.5 * float(np.mean(res**2)), int(np.count_nonzero(A))
        t_jacobian, t_solve = (t1 - t0) + (t3 - t2), t2 - t1
        return StepReport(loss, fired, self._flips(A), 0, lam, 0.0, 0.0, t_jacobian, t_solve)


class SketchGN(DenseGN):
    """Brand-Peng-Song-Weinstein Gauss-Newton: dense identification, sketch-preconditioned CG.

    ``R`` from QR of ``[S J^T; sqrt(lambda) I]``, then CG on
    ``(J J^T + lambda I) g = r`` with preconditioner ``R^T R`` and products
    ``J (J^T v)`` over the fired pairs (``2 nnz d`` per CG iteration).
    """

    def __init__(self, net, X, y, *, sketch=DEFAULT_SKETCH, sketch_size=None, cg_tol=DEFAULT_CG_TOL, **kw):
        super().__init__(net, X, y, **kw)
        self.sketch = sketch
        self.sketch_size = DEFAULT_SKETCH_FACTOR * self.n if sketch_size is None else sketch_size
        self.cg_tol = cg_tol
        self._U = np.empty((self.m, self.d))
        self.last_g: np.ndarray | None = None

    def step(self, eta):
        t0 = time.perf_counter()
        f, A = self._forward()
        res = f - self.y
        indptr, indices = fired_sets(A)  # CSR over inputs, ascending neurons
        t1 = time.perf_counter()
        g, lam, its, tj = _sketch_cg_solve(self, (indptr, indices), res)
        t2 = time.perf_counter()
        tptr, tind, _ = kernels.csr_transpose(indptr, indices, self.m)
        jt = kernels.jt_apply_par if self.parallel else kernels.jt_apply
        jt(tptr, tind, self.a, self.X, g, 1.0 / math.sqrt(self.m), self._U)
        self.net.W -= eta * self._U
        t3 = time.perf_counter()
        self.last_g = g
        loss, fired = 0.5 * float(np.mean(res**2)), int(indices.size)
        t_jacobian, t_solve = (t3 - t2) + tj, (t2 - t1) - tj  # the CG products count as Jacobian work
        return StepReport(loss, fired, self._flips(A), its, lam, t1 - t0, 0.0, t_jacobian, t_solve)


def _sketch_cg_solve(solver, fired, res):
    """Sketch-preconditioned CG for ``(J J^T + lambda I) g = res``; returns g, lambda, iters, t_matvec.

    The products ``J (J^T v)`` run over the fired pairs (``2 nnz d``, never
    forming ``J J^T``).  ``lambda = damping * tr(J J^T)/n`` with ``tr(J J^T) =
    (1/m) sum_i |S_i| ||x_i||^2``.
    """
    indptr, indices = fired
    m, n = solver.m, solver.n
    xn2 = np.einsum("ij,ij->i", solver.X, solver.X)
    tr = float(np.diff(indptr) @ xn2) / m
    lam = solver.damping * (tr / n if tr > 0 else 1.0)
    SJt = sketch_jacobian_t(solver.sketch, int(solver.sketch_size), fired, solver.a, solver.X, m, solver.rng)
    R = sketch_preconditioner(SJt, lam)
    t_mv = [0.0]
    tptr, tind, _ = kernels.csr_transpose(indptr, indices, m)
    U = solver._U
    jt = kernels.jt_apply_par if solver.parallel else kernels.jt_apply
    jj = kernels.j_apply_par if solver.parallel else kernels.j_apply
    out = np.empty(n)
    s = 1.0 / math.sqrt(m)

    def matvec(v):
        t = time.perf_counter()
        jt(tptr, tind, solver.a, solver.X, v, s, U)
        jj(indptr, indices, solver.a, solver.X, U, s, out)
        t_mv[0] += time.perf_counter() - t
        return out + lam * v

    g, its, rel = pcg(matvec, res, R, tol=solver.cg_tol)
    if not np.isfinite(g).all():
        raise NonFiniteLossError("sketched CG produced non-finite values; raise damping or check the inputs.")
    return g, lam, its, t_mv[0]


class SublinearGN(_GNBase):
    """Seed 002: correlation-tree fired pairs, ``K`` from fired pairs, implicit weights.

    Parameters (besides the shared ones)
    ----------
    index : str
        Entry of :data:`~.indexes.INDEXES` for identification: the default
        ``correlation-tree`` (seed 002); ``brute-force`` gives the
        "oracle-sparse" variant (same sparse math, ``n m d`` identification),
        which separates the data structure's cost from the sparsity gain.
    index_params : dict
        Passed to the index (e.g. ``radius``).
    solver : {"direct", "sketch-cg"}
        Cholesky of the ``n x n`` system, or CG preconditioned by a sketch.
    """

    def __init__(
        self,
        net,
        X,
        y,
        *,
        index="correlation-tree",
        index_params=None,
        solver="direct",
        sketch=DEFAULT_SKETCH,
        sketch_size=None,
        cg_tol=DEFAULT_CG_TOL,
        **kw,
    ):
        super().__init__(net, X, y, **kw)
        check_choice("solver", solver, ("direct", "sketch-cg"))
        self.solver = solver
        self.sketch = sketch
        self.sketch_size = DEFAULT_SKETCH_FACTOR * self.n if sketch_size is None else sketch_size
        self.cg_tol = cg_tol
        t0 = time.perf_counter()
        self.W0 = net.W.copy()  # (m, d) w_r(0); net.W becomes the index's materialised copy
        self.index = make_index(index, **(index_params or {})).build(net.W, self.b, X)
        if not self.index.exact:
            raise invalid("index", f"an exact index for Gauss-Newton (one of {list(EXACT_INDEXES)})", index)
        self._ids = np.arange(self.n, dtype=np.int64)
        # implicit part: union pattern of pairs that ever fired, sorted keys r n + i
        self.ukeys = np.empty(0, np.int64)
        self.coef = np.empty(0)  # C[r, i]
        self.z0 = np.empty(0)  # <w_r(0), x_i>
        self.urow = np.zeros(self.m + 1, np.int64)
        self._prev_keys: np.ndarray | None = None
        self.t_build = time.perf_counter() - t0

    def weights(self) -> np.ndarray:
        """Materialise ``W = W(0) + C X`` from the implicit representation."""
        return kernels.materialise_all(self.W0, self.X, self.ukeys, self.urow, self.coef, self.n)

    def _merge(self, keys_now: np.ndarray) -> np.ndarray:
        """Add new pairs to the union pattern; returns positions of ``keys_now`` in it."""
        pos = np.searchsorted(self.ukeys, keys_now)
        found = pos < self.ukeys.size
        found[found] = self.ukeys[pos[found]] == keys_now[found]
        if not found.all():
            new = keys_now[~found]
            keys = np.concatenate([self.ukeys, new])
            order = np.argsort(keys, kind="stable")
            self.ukeys = keys[order]
            self.coef = np.concatenate([self.coef, np.zeros(new.size)])[order]
            self.z0 = np.concatenate([self.z0, kernels.pair_dots(self.W0, self.X, new, self.n)])[order]
            self.urow = np.searchsorted(self.ukeys, np.arange(self.m + 1, dtype=np.int64) * self.n)
            pos = np.searchsorted(self.ukeys, keys_now)
        return pos

    def _identify(self):
        indptr, indices = self.index.query(self.X, self._ids)
        tptr, tind, src = kernels.csr_transpose(indptr, indices, self.m)
        return indptr, indices, tptr, tind, src

    def step(self, eta):
        t0 = time.perf_counter()
        indptr, indices, tptr, tind, src = self._identify()
        t1 = time.perf_counter()
        neuron = np.repeat(np.arange(self.m, dtype=np.int64), np.diff(tptr))  # (nnz,) CSC neuron ids
        keys_now = neuron * self.n + tind  # sorted (r-major, inputs ascending)
        ppos = self._merge(keys_now)
        if self._prev_keys is None:
            flips = -1
        else:
            both = np.intersect1d(keys_now, self._prev_keys, assume_unique=True).size
            flips = keys_now.size + self._prev_keys.size - 2 * both
        self._prev_keys = keys_now
        t2 = time.perf_counter()
        zk = kernels.implicit_preacts_par if self.parallel else kernels.implicit_preacts
        z = zk(tptr, tind, ppos, self.ukeys, self.urow, self.coef, self.z0, self.G, self.n)  # (nnz,)
        f = np.bincount(tind, weights=self.a[neuron] * (z - self.b), minlength=self.n) / math.sqrt(self.m)
        res = f - self.y
        ck = kernels.fired_counts_par if self.parallel else kernels.fired_counts
        K = None
        if self.solver == "direct":
            K = ck(indptr, indices, tptr, tind, self.n) * self.G / self.m
        t3 = time.perf_counter()
        tj = 0.0
        its = 0
        if self.solver == "direct":
            g, lam = damped_solve(K, res, self.damping)
        else:
            self._U = np.empty((self.m, self.d))
            g, lam, its, tj = _sketch_cg_solve(self, (indptr, indices), res)
        t4 = time.perf_counter()
        # C[r, i] -= eta m^(-1/2) a_r g_i on the fired pairs: O(nnz), no d
        delta = (-eta / math.sqrt(self.m)) * self.a[neuron] * g[tind]  # (nnz,) CSC order
        self.coef[ppos] += delta
        t5 = time.perf_counter()
        # keep the index's explicit copy of the moved rows current (departure, see module doc)
        rows = np.empty(self.m, np.int64)
        norms = np.empty(self.m)
        mk = kernels.materialise_step_par if self.parallel else kernels.materialise_step
        k = mk(tptr, tind, delta, self.X, self.G, self.net.W, rows, norms)
        self.index.update(rows[:k], norms[:k])
        t6 = time.perf_counter()
        loss, fired = 0.5 * float(np.mean(res**2)), int(indices.size)
        t_maintain, t_jacobian, t_solve = (t2 - t1) + (t6 - t5), (t3 - t2) + (t5 - t4) + tj, (t4 - t3) - tj
        return StepReport(loss, fired, flips, its, lam, t1 - t0, t_maintain, t_jacobian, t_solve)


GN_METHODS: dict[str, type[_GNBase]] = {
    "gn": DenseGN,
    "gn-sketch": SketchGN,
    "gn-sublinear": SublinearGN,
}
"""Method name -> solver class.  Adding a method is one entry here."""


@dataclass
class GNResult:
    """Outcome of :func:`train_gn`.

    ``history`` maps each of :data:`GN_COLUMNS` to per-iteration lists
    (``train_loss[t]`` is the loss at ``W(t)``, before step ``t``);
    ``final_loss`` is the loss after the last step; ``t_build`` the
    preprocessing time (index build), reported apart.
    """

    net: ShiftedReLUNetwork
    history: dict[str, list[float]] = field(default_factory=dict)
    final_loss: float = math.nan
    t_build: float = 0.0
    solver: Any = None


def train_gn(
    net: ShiftedReLUNetwork,
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "gn",
    lr: float = 1.0,
    n_iter: int = 30,
    damping: float = DEFAULT_DAMPING,
    target_loss: float | None = None,
    seed: int | None = 0,
    parallel: bool = True,
    progress: bool = False,
    callback: Callable[[int, dict[str, float], Any], None] | None = None,
    **method_params: Any,
) -> GNResult:
    """Full-batch Gauss-Newton on ``net`` (weights updated in place; see the module doc).

    Parameters
    ----------
    method : {"gn", "gn-sketch", "gn-sublinear"}
        Entry of :data:`GN_METHODS`.
    lr : float
        Step ``eta`` in ``W <- W - eta J^T g`` (1 is the full Gauss-Newton step).
    n_iter : int
        Maximum number of iterations.
    damping : float
        ``lambda = damping * tr(J J^T) / n`` (default ``1e-6``).
    target_loss : float, optional
        Stop once the mean loss ``1/(2n) sum (f - y)^2`` is at or below it.
    seed : int or None
        Seeds the sketches (one ``numpy.random.Generator``).
    parallel : bool
        Use the parallel Numba kernels (results equal the serial ones up to
        summation order in ``J^T v``; the serial kernels are the reference).
    callback : callable, optional
        ``callback(t, row, solver)`` after each step; ``solver.weights()``
        materialises the current ``W``.
    **method_params
        ``gn-sketch``: ``sketch`` (one of :data:`~.sketch.SKETCHES`, default
        ``countsketch``), ``sketch_size`` (default ``4 n``), ``cg_tol``
        (default ``1e-10``).  ``gn-sublinear``: ``index_params``, ``solver``
        (``direct`` | ``sketch-cg``) and the sketch options.
    """
    check_choice("method", method, GN_METHODS)
    check_float("lr", lr)
    check_float("damping", damping, "[0, inf)")
    check_int("n_iter", n_iter, minimum=0)
    if "sketch" in method_params:
        check_choice("sketch", method_params["sketch"], SKETCHES)
    check_float("cg_tol", method_params.get("cg_tol", DEFAULT_CG_TOL), "(0, 1)")
    if not isinstance(net, ShiftedReLUNetwork):
        raise invalid("net", "a ShiftedReLUNetwork", net, shown=type(net).__name__)
    X, y = check_xy(X, y, net.dim)
    rng = np.random.default_rng(seed)
    try:
        solver = GN_METHODS[method](
            net, X, y, damping=float(damping), parallel=parallel, rng=rng, **method_params
        )
    except TypeError as exc:
        raise SparsetrainError(
            f"The method {method!r} got an unknown parameter ({exc}); see the method_params of train_gn."
        ) from None
    result = GNResult(net=net, history={c: [] for c in GN_COLUMNS}, t_build=solver.t_build, solver=solver)
    h = result.history
    it = range(n_iter)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"{method} m={net.width}", unit="it")
    n, m = X.shape[0], net.width
    loss = math.nan
    for t in it:
        step = solver.step(float(lr))
        loss = step.loss
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss} at iteration {t}; lower lr (got {lr}) or raise damping."
            )
        row = {"iteration": t, "train_loss": loss, "fired_per_input": step.fired / n}
        row["jacobian_density"] = step.fired / (n * m)
        row.update((k, v) for k, v in step._asdict().items() if k in GN_COLUMNS)  # flips .. t_solve
        row["t_total"] = step.t_identify + step.t_maintain + step.t_jacobian + step.t_solve
        for k_, v in row.items():
            h[k_].append(v)
        if callback is not None:
            callback(t, row, solver)
        if target_loss is not None and loss <= target_loss:
            break
    W = solver.weights()
    result.final_loss = 0.5 * float(np.mean((ShiftedReLUNetwork(W, net.a, net.shift).predict(X) - y) ** 2))
    if method == "gn-sublinear":
        net.W[...] = W  # hand back the materialised weights
    if not math.isfinite(result.final_loss):
        raise NonFiniteLossError(
            "training loss became non-finite at the last step; lower lr or raise damping."
        )
    return result
