"""SGD for the shifted-ReLU network: dense reference and SGD with identification.

One iteration on a mini-batch ``(X_B, y_B)`` of size ``B`` with step ``eta``
(SPEC 2.3, seed 000 Algorithm 1):

    S_i  = index.query(x_i)                              identification
    f_i  = m^(-1/2) sum_{r in S_i} a_r (<w_r, x_i> - b)   gradient work
    w_r <- w_r - eta/(B sqrt(m)) a_r sum_{i : r in S_i} (f_i - y_i) x_i
    index.update({r : r in some S_i}, step norms)        index maintenance

The sparse update also returns, per updated row, ``sum_i |eta/(B sqrt(m)) (f_i -
y_i)| ||x_i|| >= ||w_r(new) - w_r(old)||`` so drift-tracking indexes need not
re-read the weights.

The dense reference computes the same step with ``X_B W^T`` over all ``m``
neurons.  Both use the same batch sequence (drawn from one
``numpy.random.Generator``), so with an exact index the weights agree to
rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NonFiniteLossError
from . import _kernels as K
from ._checks import check_choice, check_float, check_int, check_xy, invalid
from .indexes import INDEXES, FiredIndex, SpanUpdate, make_index
from .network import ShiftedReLUNetwork, dense_forward

__all__ = ["SGDResult", "train_sgd", "DENSE", "METRIC_COLUMNS"]

DENSE = "dense"

METRIC_COLUMNS = (
    "iteration",
    "batch_loss",
    "train_loss",
    "fired_per_input",
    "neurons_updated",
    "nodes_visited",
    "pairs_refreshed",
    "t_identify",
    "t_maintain",
    "t_gradient",
    "t_total",
)


@dataclass
class SGDResult:
    """Outcome of :func:`train_sgd`.

    ``history`` maps each of :data:`METRIC_COLUMNS` to a per-iteration list
    (``train_loss`` is NaN except every ``eval_every`` iterations);
    ``t_build`` is the preprocessing time of the index, reported apart.
    """

    net: ShiftedReLUNetwork
    history: dict[str, list[float]] = field(default_factory=dict)
    t_build: float = 0.0
    index: FiredIndex | None = None


def train_sgd(
    net: ShiftedReLUNetwork,
    X: np.ndarray,
    y: np.ndarray,
    *,
    index: str = DENSE,
    index_params: dict[str, Any] | None = None,
    lr: float = 0.1,
    batch_size: int = 16,
    n_iter: int = 100,
    seed: int | None = 0,
    eval_every: int = 0,
    progress: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> SGDResult:
    """Train ``net`` in place by mini-batch SGD; dense or with identification.

    Parameters
    ----------
    net : ShiftedReLUNetwork
        Weights are updated in place.
    X, y : ndarray (n, d), (n,)
        Training set (unit-norm rows expected) and targets.
    index : str
        ``"dense"`` for the reference, or a name from :data:`INDEXES`.
    lr : float
        Step ``eta`` on the mean batch loss.
    batch_size : int
        ``B``; batches are drawn uniformly with replacement between batches
        and without replacement inside one.
    n_iter : int
        Number of SGD iterations.
    seed : int or None
        Seeds the batch sampler (``numpy.random.Generator``).
    eval_every : int
        Compute the full training loss (dense, timed apart) every this many
        iterations; 0 never.
    progress : bool
        Show a tqdm progress bar.
    """
    check_choice("index", index, (DENSE, *INDEXES))
    check_float("lr", lr)
    check_int("batch_size", batch_size)
    check_int("n_iter", n_iter)
    check_int("eval_every", eval_every, minimum=0)
    X, y = check_xy(X, y, net.dim)
    n = X.shape[0]
    if batch_size > n:
        raise invalid("batch_size", f"at most n = {n}, the number of training rows", batch_size)
    W, a, b = net.W, net.a, float(net.shift)
    m = W.shape[0]
    rng = np.random.default_rng(seed)
    result = SGDResult(net=net, history={c: [] for c in METRIC_COLUMNS})
    idx: FiredIndex | None = None
    if index != DENSE:
        t0 = time.perf_counter()
        idx = make_index(index, **(index_params or {})).build(W, b, X)
        result.t_build = time.perf_counter() - t0
        result.index = idx
    step = lr / (batch_size * math.sqrt(m))
    it = range(n_iter)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"sgd[{index}] m={m}", unit="it")
    h = result.history
    for t in it:
        ids = np.sort(rng.choice(n, size=batch_size, replace=False))
        Xb, yb = X[ids], y[ids]  # (B, d), (B,)
        visited = refreshed = 0
        if idx is None:
            t0 = time.perf_counter()
            f, Z = dense_forward(W, a, b, Xb)
            res = f - yb
            M = (Z > b) * (res[:, None] * a[None, :])  # (B, m)
            fired = float(np.count_nonzero(Z > b)) / batch_size
            G = M.T @ Xb  # (m, d)
            W -= step * G
            n_upd = int(np.count_nonzero(M.any(axis=0)))
            t_id = t_mt = 0.0
            t_gr = time.perf_counter() - t0
        else:
            s0 = dict(idx.stats)
            t0 = time.perf_counter()
            indptr, indices = idx.query(Xb, ids)
            t1 = time.perf_counter()
            f = K.sparse_forward(W, a, b, Xb, indptr, indices)
            res = f - yb
            rows, step_norms = K.sparse_sgd_update(W, a, step, Xb, res, indptr, indices)
            t2 = time.perf_counter()
            # the step as a combination of batch inputs: coefficient -(step res_q) a_r (Gram path)
            idx.update(rows, step_norms, SpanUpdate(ids, indptr, indices, -(step * res), a))
            t3 = time.perf_counter()
            t_id, t_gr, t_mt = t1 - t0, t2 - t1, t3 - t2
            fired = indices.size / batch_size
            n_upd = int(rows.size)
            visited = idx.stats["nodes_visited"] - s0["nodes_visited"]
            refreshed = idx.stats["pairs_refreshed"] - s0["pairs_refreshed"]
        batch_loss = 0.5 * float(np.mean(res**2))
        if not math.isfinite(batch_loss):
            raise NonFiniteLossError(
                f"batch loss became {batch_loss} at iteration {t}; lower lr (got {lr}) "
                "or normalise the inputs to unit norm."
            )
        train_loss = math.nan
        if eval_every and (t % eval_every == 0 or t == n_iter - 1):
            train_loss = net.loss(X, y)
        row = dict(
            iteration=t,
            batch_loss=batch_loss,
            train_loss=train_loss,
            fired_per_input=fired,
            neurons_updated=n_upd,
            nodes_visited=visited,
            pairs_refreshed=refreshed,
            t_identify=t_id,
            t_maintain=t_mt,
            t_gradient=t_gr,
            t_total=t_id + t_mt + t_gr,
        )
        for k_, v in row.items():
            h[k_].append(v)
        if callback is not None:
            callback(t, row)
    return result
