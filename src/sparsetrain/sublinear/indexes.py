"""Activated-neuron identification: one interface, four structures, one table.

Every index answers, for a batch of inputs ``X`` (B, d), the fired sets

    S(x) = { r : canonical_dot(w_r, x) > b }

(see :mod:`._kernels` for the canonical dot) as CSR arrays ``indptr`` (B+1,)
and ``indices`` (nnz,), and is told which rows of ``W`` changed.  The weights
``W`` (m, d) float64 are owned by the caller and read in place; an index keeps
only its own derived arrays.

Interface (SPEC 2.2)::

    idx = INDEXES[name](**params)
    idx.build(W, shift, X_train=None)   # preprocessing
    indptr, indices = idx.query(X, ids=None)   # ids: training-set rows of X
    idx.update(rows, step_norms=None, coefs=None)
        # W[rows] changed in place; optional bounds step_norms[s] >=
        # ||change of W[rows[s]]||, optional coefs: the change as a
        # combination of training inputs (SpanUpdate; used by the
        # correlation tree's Gram path, ignored by the others)
    idx.stats                           # work counters since the last reset

``brute-force``, ``halfspace-tree`` and ``correlation-tree`` are exact;
``simhash-lsh`` is approximate (a subset of the fired set: every candidate is
verified, some fired neurons are missed), so its recall must be reported.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numba
import numpy as np

from ..errors import SparsetrainError
from ..memory import aligned_empty
from . import _kernels as K
from ._checks import check_choice, check_float, check_int, invalid

__all__ = [
    "INDEXES",
    "EXACT_INDEXES",
    "FiredIndex",
    "BruteForceIndex",
    "HalfspaceTreeIndex",
    "CorrelationTreeIndex",
    "SimHashLSHIndex",
    "SpanUpdate",
    "make_index",
    "recall",
]


def _check_weights(W: np.ndarray) -> None:
    """The index reads ``W`` in place, so it must already be the kernels' layout (no copy)."""
    if not (isinstance(W, np.ndarray) and W.ndim == 2 and W.dtype == np.float64):
        shown = f"{type(W).__name__} {getattr(W, 'dtype', '')} with shape {getattr(W, 'shape', None)}"
        raise invalid("W", "a 2-D float64 array (m, d)", W, shown=shown)
    if not W.flags.c_contiguous:
        raise invalid("W", "C-contiguous", W, shown="a strided view", fix="Use np.ascontiguousarray(W).")
    if W.shape[0] < 1 or W.shape[1] < 1:
        raise invalid("W", "an array with m >= 1 rows and d >= 1 columns", W, shown=f"shape {W.shape}")


def _as_queries(X: np.ndarray, d: int) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != d:
        raise invalid("X", f"an array of shape (B, {d})", X, shown=f"shape {X.shape}")
    return X


def _to_csr(out: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], np.int64)
    for q, c in enumerate(counts):
        indices[indptr[q] : indptr[q + 1]] = out[q, :c]
    return indptr, indices


class SpanUpdate(NamedTuple):
    """An update of ``W`` that lies in the span of the training inputs (SPEC 2.2 a).

    ``w_r(new) - w_r(old) = sum_q sum_{p in [indptr[q], indptr[q+1]), indices[p] = r}
    query_coef[q] * row_coef[r] * X_train[ids[q]]``: a batch CSR over
    training rows ``ids`` (B,), ``indptr`` (B+1,), neurons ``indices``
    (nnz,), with per-input coefficients ``query_coef`` (B,) and optional
    per-neuron factors ``row_coef`` (m,) (``None``: 1).  For SGD on the
    shifted-ReLU network, ``query_coef = -eta (f - y) / (B sqrt(m))`` and
    ``row_coef = a``.  Arbitrary per-pair coefficients fit too: give each pair
    its own "query" (repeat ids).  Indexes that cannot use it ignore it.
    """

    ids: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    query_coef: np.ndarray
    row_coef: np.ndarray | None = None


class FiredIndex:
    """Base class: buffer management and counters shared by all indexes.

    Every index reports each fired set in ascending neuron order (the sparse
    SGD update merges them).

    Attributes
    ----------
    stats : dict
        Work counters since :meth:`reset_stats`: ``queries``, ``fired``
        (total reported), ``nodes_visited`` (tree nodes or LSH candidates),
        ``pairs_refreshed`` (canonical re-checks / recomputed stored
        products), ``rows_updated``, ``rebuilds`` (correlation tree:
        re-anchored neurons, split into ``reanchored_gram`` and
        ``reanchored_direct``).
    """

    exact: bool = True
    needs_ids: bool = False
    #: whether the kernel already reports each fired set ascending (else :meth:`_search` sorts)
    ascending: bool = True

    def __init__(self) -> None:
        self.W: np.ndarray | None = None
        self.shift = 0.0
        self._cap = 64
        self._out: np.ndarray | None = None  # (B, cap) result buffer of the last query
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = dict.fromkeys(
            (
                "queries",
                "fired",
                "nodes_visited",
                "pairs_refreshed",
                "rows_updated",
                "rebuilds",
                "reanchored_gram",
                "reanchored_direct",
            ),
            0,
        )

    def _common_build(self, W: np.ndarray, shift: float) -> None:
        _check_weights(W)
        if not math.isfinite(float(shift)):
            raise invalid("shift", "a finite float", shift)
        self.W = W
        self.shift = float(shift)
        self.m, self.d = W.shape
        self._cap = max(64, min(self.m, 1024))

    def _search(self, B: int, kernel) -> tuple[np.ndarray, np.ndarray]:
        """Fired sets of ``B`` queries as CSR, from ``kernel(out, cap) -> (counts, visited, refreshed)``.

        The kernel writes query ``q``'s neurons into row ``q`` of ``out`` (B, cap)
        and returns the counts (B,), ``-1`` for a row that did not fit, with its
        work counters; the buffer then grows 4x (at most ``m``, which always
        fits) and the kernel runs again.  Adds the counters to :attr:`stats`.
        """
        while True:
            out = self._out
            if out is None or out.shape != (B, self._cap):  # kept between calls: no fresh pages
                out = self._out = np.empty((B, self._cap), np.int64)
            counts, visited, refreshed = kernel(out, self._cap)
            if (counts >= 0).all():
                break
            self._cap = min(self.m, 4 * self._cap)
        if not self.ascending:
            for q in range(B):
                out[q, : counts[q]].sort()
        indptr, indices = _to_csr(out, counts)
        self.stats["queries"] += B
        self.stats["fired"] += int(indptr[-1])
        self.stats["nodes_visited"] += int(visited)
        self.stats["pairs_refreshed"] += int(refreshed)
        return indptr, indices

    def build(self, W: np.ndarray, shift: float, X_train: np.ndarray | None = None) -> FiredIndex:
        raise NotImplementedError

    def query(self, X: np.ndarray, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def update(
        self, rows: np.ndarray, step_norms: np.ndarray | None = None, coefs: SpanUpdate | None = None
    ) -> None:
        """``W[rows]`` changed in place; ``step_norms`` optionally bounds each change's norm.

        ``coefs`` optionally gives the change as a :class:`SpanUpdate`
        (a combination of training inputs); indexes that cannot use it ignore it.
        """
        raise NotImplementedError


class BruteForceIndex(FiredIndex):
    """Blocked BLAS product plus threshold: ``Z = X W_blk^T`` then ``Z > b``.

    Costs ``m d`` per input, like a dense forward pass; the baseline every
    structure must beat.  Entries within the rounding band of ``b`` are
    re-decided by the canonical dot so the answer is exactly the shared
    firing rule.

    Parameters
    ----------
    block : int
        Neurons per BLAS block (bounds the temporary ``(B, block)`` array).
    """

    def __init__(self, block: int = 65536) -> None:
        super().__init__()
        self.block = check_int("block", block)

    def build(self, W, shift, X_train=None):
        self._common_build(W, shift)
        self._wmax = float(np.sqrt(np.einsum("ij,ij->i", W, W)).max())
        return self

    def query(self, X, ids=None):
        X = _as_queries(X, self.d)
        B = X.shape[0]
        W = self.W
        tol = K.TOL_REL * (self.d + 1) * self._wmax * np.linalg.norm(X, axis=1)  # (B,)

        def blocks(out, cap):
            pos = np.zeros(B, np.int64)  # hits so far per query
            rechecks = 0
            for r0 in range(0, self.m, self.block):
                Z = X @ W[r0 : r0 + self.block].T  # (B, blk) BLAS
                rc = K.bf_threshold_block(Z, W, r0, X, self.shift, tol, out, pos, cap)
                if rc < 0:
                    return np.full(B, -1), 0, 0
                rechecks += rc
            return pos, B * self.m, rechecks

        return self._search(B, blocks)

    def update(self, rows, step_norms=None, coefs=None):
        rows = np.ascontiguousarray(rows, np.int64)
        if rows.size and step_norms is not None:
            self._wmax += float(np.max(step_norms)) * (1 + 1e-12)  # ||w + s|| <= wmax + ||s||
        elif rows.size:
            self._wmax = max(self._wmax, K.row_norm_max(self.W, rows))
        self.stats["rows_updated"] += rows.size


class HalfspaceTreeIndex(FiredIndex):
    """Exact half-space reporting over the weights: a kd-tree with boxes.

    Reports ``{r : <w_r, x> > b}`` by walking a flat kd-tree (median splits on
    the widest dimension, ``leaf_size`` points per leaf, an axis-aligned box
    per node).  A box is pruned when its largest inner product with ``x`` is
    below ``b``, reported whole when its smallest is above ``b``, and scanned
    at the leaves otherwise.  Query cost grows like ``m^(1 - 1/d)`` for
    axis-aligned partitions, so it only pays at small ``d`` (SPEC 2.2).

    Updates copy the row into the tree and grow the boxes on its root path
    (``O(d log m)``); after ``rebuild_factor * m`` row updates the tree is
    rebuilt so loosened boxes do not accumulate.  Departure from the paper:
    seed 000 uses a partition-tree half-space reporting structure with
    ``O~(m^(1 - 1/floor(d/2)) + k)`` query time; a kd-tree is the practical
    stand-in and is exact all the same.
    """

    ascending = False  # leaves in tree order

    def __init__(self, leaf_size: int = 32, rebuild_factor: float = 1.0) -> None:
        super().__init__()
        self.leaf_size = check_int("leaf_size", leaf_size)
        if not (isinstance(rebuild_factor, int | float) and rebuild_factor > 0):
            raise invalid("rebuild_factor", "a float in (0, inf]", rebuild_factor)
        self.rebuild_factor = float(rebuild_factor)

    def build(self, W, shift, X_train=None):
        self._common_build(W, shift)
        self._rebuild()
        return self

    def _rebuild(self):
        W = self.W
        (perm, start, end, left, right, parent, lo, hi, leaf_of, nn) = K.kd_build(W, self.leaf_size)
        self._perm, self._start, self._end = perm, start, end  # (m,), (nn,), (nn,)
        self._left, self._right, self._parent = left, right, parent  # (nn,) links
        self._lo, self._hi = lo, hi  # (nn, d) boxes
        self._leaf_of = leaf_of  # (m,) leaf of each tree position
        self._Wp = np.ascontiguousarray(W[perm])  # (m, d) rows in tree order
        self._pos = np.empty(self.m, np.int64)  # row -> tree position
        self._pos[perm] = np.arange(self.m)
        self._stack_len = nn + 2  # per-query stack of the tree walk
        self._since_rebuild = 0
        self.n_nodes = nn

    def query(self, X, ids=None):
        X = _as_queries(X, self.d)
        B = X.shape[0]

        # the flat tree: rows in tree order, point ranges, links, boxes
        tree = (self._Wp, self._perm, self._start, self._end, self._left, self._right, self._lo, self._hi)

        def walk(out, cap):  # (counts, nodes visited, leaf points checked)
            return K.kd_query_batch(*tree, X, self.shift, out, cap, self._stack_len)

        return self._search(B, walk)

    def update(self, rows, step_norms=None, coefs=None):
        rows = np.ascontiguousarray(rows, np.int64)
        self.stats["rows_updated"] += rows.size
        self._since_rebuild += rows.size
        if self._since_rebuild >= self.rebuild_factor * self.m:
            self._rebuild()
            self.stats["rebuilds"] += 1
            return
        K.kd_update(self.W, rows, self._Wp, self._pos, self._leaf_of, self._parent, self._lo, self._hi)


class CorrelationTreeIndex(FiredIndex):
    """Exact threshold search over weight-data inner products (seed 002).

    For a fixed training set ``X_train`` (n, d) keep, per point ``i``, a max
    tree over ``v[i, r] ~ <w_r(ref), x_i>``: keys in leaf blocks of
    ``leaf_block`` neurons, and above them an F-ary tree of maxima (``fanout``
    children per node, one contiguous array per level, rows starting cache
    lines, so a visited node scans its children in one line).  A query for
    training point ``i`` walks only subtrees whose max can exceed ``b``:
    ``O(k F log_F m)``, level by level, with the nodes a dozen places ahead
    prefetched (many lines in flight instead of one dependent miss per node);
    fired neurons come out ascending.

    Keys (``keys``): ``"int16"`` (the default) stores ``round(v / s_i)`` with a
    per-point scale ``s_i`` (``KEY_MAX`` steps span ``max(||x_i|| wmax, |b| +
    1)``), error at most ``s_i / 2``: 2 bytes per (point, neuron) instead of 4,
    at the same query speed.  A key that would overflow (a weight grown past
    the build's largest norm) saturates at ``+-KEY_MAX``, which stays exact:
    ``KEY_MAX s_i > |b|``, so a saturated positive key always enters its
    subtree and is above ``b`` (fires for sure, or is re-checked), and a
    saturated negative one is below ``b``, where it belongs; the Gram path
    never starts from a saturated key.  ``"float32"`` keeps float32 values
    (relative error ``F32_REL``).  Either way, every pair whose key leaves the
    decision open is settled by the canonical dot.

    Drift bounds (SPEC 2.2 b): each neuron keeps a reference copy
    ``w_r(ref)`` and ``drift_r >= ||w_r - w_r(ref)||``.  A pair can change
    status only if ``|v[i, r] - b| <= drift_r ||x_i|| + aerr_r`` (``aerr_r``:
    accumulated error of Gram-derived anchors, below); only such pairs are
    refreshed (one canonical dot each) when queried.  A neuron whose drift
    exceeds ``radius`` is re-anchored: ``w_r(ref) <- w_r``, its ``n`` stored
    values and ``n`` root paths are refreshed.  ``radius=0`` refreshes every
    updated neuron at every update (eager maintenance).

    Gram updates (SPEC 2.2 a): an SGD step moves ``w_r`` by a combination
    of training inputs, so with ``G = X X^T`` (n, n), computed once at build,
    the new values are ``v[i, r] + sum_s c_s G[i, s]``: ``O(n s)`` per
    re-anchored neuron instead of ``O(n d)``.  Each neuron keeps up to
    ``span_slots`` coefficients of ``w_r - w_r(ref)`` (fed by
    ``update(..., coefs=SpanUpdate(...))``); a neuron with more distinct
    inputs, or updated without coefficients, falls back to direct dot
    products.  Exactness does not rest on the coefficients: before use they
    are checked against ``W`` (residual norm), and the rounding they add is
    bounded per neuron (``aerr_r``, capped at :meth:`aerr_cap`; past
    the cap the neuron is re-anchored directly, which resets it).  Pairs near
    ``b`` are decided by the canonical dot as before.

    Departure from seed 002: the stored values are anchors refreshed only
    when the drift bound says a neuron may have left its band, not updated
    at every step.  An eager refresh rewrites all ``n`` values of every
    updated neuron each step (``radius=0`` does that); the lazy bound costs
    ``O(1)`` per updated neuron until its drift passes ``radius``.  Measured
    costs of both: ``docs/sublinear/README_section.md``.

    Parameters
    ----------
    radius : float
        Re-anchor a neuron once its drift bound exceeds this.
    leaf_block, fanout : int
        Neurons per leaf block (at most 64); children per inner node.
    span_slots : int
        Coefficients kept per neuron for Gram re-anchoring (0, the default:
        never use the Gram matrix).  The Gram matrix is only built when
        ``n <= gram_max_n``.  The slots pay off when neurons are re-anchored
        often (small ``radius``, e.g. 0 with ``span_slots=4``); with the
        default lazy ``radius`` re-anchoring is rare, so keeping the
        coefficients is bookkeeping without a return, hence off by default.
        Measurements: ``docs/sublinear/README_section.md``.

    keys : {"int16", "float32"}
        Representation of the stored products (above).

    Memory: ``n m`` keys plus about ``n m / leaf_block`` keys (2 or 4 bytes
    each; :attr:`bytes_per_pair`), plus ``m (8 d + 16 + 12 span_slots)``
    bytes (anchors, drift and anchor-error bounds, slots), ``8 n^2`` for
    ``G`` and ``16 threads m / leaf_block`` for the query frontiers.
    """

    needs_ids = True

    def __init__(
        self,
        radius: float = 0.05,
        leaf_block: int = 16,
        fanout: int = 16,
        span_slots: int = 0,
        gram_max_n: int = 8192,
        keys: str = "int16",
    ) -> None:
        super().__init__()
        check_choice("keys", keys, ("float32", "int16"))
        self.keys = keys
        self.fanout = check_int("fanout", fanout, minimum=2)
        self.radius = check_float("radius", radius, "[0, inf)")
        self.leaf_block = check_int("leaf_block", leaf_block)
        if self.leaf_block > 64:  # a leaf block is scanned as one 64-bit mask
            raise invalid("leaf_block", "an integer in [1, 64]", leaf_block)
        self.span_slots = check_int("span_slots", span_slots, minimum=0)
        self.gram_max_n = check_int("gram_max_n", gram_max_n, minimum=0)

    def build(self, W, shift, X_train=None):
        self._common_build(W, shift)
        if X_train is None:
            raise invalid("X_train", "the training set (n, d) this index is built over", None)
        X_train = np.ascontiguousarray(X_train, np.float64)
        if X_train.ndim != 2 or X_train.shape[1] != self.d or X_train.shape[0] < 1:
            raise invalid(
                "X_train",
                f"an array of shape (n, {self.d}) with n >= 1",
                X_train,
                shown=f"shape {X_train.shape}",
            )
        self._X = X_train
        self.n = X_train.shape[0]
        self._xnorm = np.linalg.norm(X_train, axis=1)  # (n,)
        self._xmax = float(self._xnorm.max()) * (1 + 1e-12)
        self._Wref = W.copy()  # (m, d) anchors w_r(ref)
        self._drift = np.zeros(self.m)  # (m,) ||w_r - w_r(ref)|| upper bounds
        self._aerr = np.zeros(self.m)  # (m,) extra error of Gram-derived anchors
        self._band = 0.0  # running max of drift since build
        self._amax = 0.0  # running max of aerr since build
        self._wmax = float(np.sqrt(np.einsum("ij,ij->i", W, W)).max()) * (1 + 1e-12)
        self._wref_max = self._wmax  # max anchor norm
        # Gram matrix and per-neuron span slots (SPEC 2.2 a)
        self.gram_ = self.span_slots > 0 and self.n <= self.gram_max_n
        S = self.span_slots if self.gram_ else 0
        self._G = X_train @ X_train.T if self.gram_ else np.zeros((1, 1))  # (n, n) G = X X^T
        self._slot_cnt = np.full(self.m, 0 if S else -1, np.int32)  # (m,) -1 = unknown span
        self._slot_ids = np.zeros((self.m, S), np.int32)  # (m, S) training rows
        self._slot_c = np.zeros((self.m, S))  # (m, S) w_r - w_r(ref) ~ sum_s c x_s
        self._mark = np.zeros(self.m, np.uint8)  # scratch, zero between calls
        self._ones = None  # lazily allocated row_coef = 1
        # (n, m) keys of the products <w_r(ref), x_i> (BLAS is fine: every pair
        # within the key/rounding band of b is refreshed canonically).
        if self.keys == "int16":  # per point: KEY_MAX steps cover max(||x_i|| wmax, |b| + 1)
            span = np.maximum(self._xnorm * self._wmax, abs(self.shift) + 1.0)
            kscale = span * (1 + 1e-9) / K.KEY_MAX
            self._keys = (kscale, 4 * K.TOL_REL, 0.5 * kscale * (1 + 1e-9))
        else:
            self._keys = (np.ones(self.n), K.F32_REL, np.zeros(self.n))
        self._kabs_max = float(self._keys[2].max())
        kdt = np.dtype(self.keys)
        self._V = aligned_empty((self.n, self.m), kdt)
        for r0 in range(0, self.m, 65536):
            K.ct_encode_block(X_train @ W[r0 : r0 + 65536].T, r0, self._keys[0], self._V)
        n_blocks = -(-self.m // self.leaf_block)
        self._offsets = K.ct_levels(n_blocks, self.fanout)  # (levels + 1,) level offsets
        # (n, ~n_blocks F / (F - 1)) keys: per point, the F-ary max tree level by level
        # (rows padded to whole cache lines so every point's tree starts a line)
        per_line = 64 // kdt.itemsize
        self._tmax = aligned_empty((self.n, -(-int(self._offsets[-1]) // per_line) * per_line), kdt)
        self._tmax[:, self._offsets[-1] :] = 0
        K.ct_build_maxima(self._V, self.leaf_block, self.fanout, self._offsets, self._tmax)
        # per-thread frontier buffers of the level-synchronous query
        self._front = np.empty((numba.config.NUMBA_NUM_THREADS, 2, n_blocks), np.int64)
        return self

    def aerr_cap(self) -> float:
        """Largest anchor error a Gram re-anchor may leave (past it: direct re-anchor, error 0).

        ``128 F32_REL wmax xmax`` (the float32 rounding scale) plus 16 int16 half
        steps: each Gram re-anchor adds the old key's rounding, so int16 keys allow
        a few before the neuron's band would widen every query's.
        """
        return 128 * K.F32_REL * self._wmax * self._xmax + 16 * self._kabs_max

    @property
    def bytes_per_pair(self) -> float:
        """Index bytes per (training point, neuron): keys, tree maxima (not ``W``, anchors or bounds)."""
        return (self._V.nbytes + self._tmax.nbytes) / (self.n * self.m)

    def _trees(self) -> tuple:
        """The per-point max trees as kernel arguments: ``V`` (n, m), ``tmax``, block, fanout, offsets."""
        return self._V, self._tmax, self.leaf_block, self.fanout, self._offsets

    def _tol(self) -> float:
        # canonical-dot error + BLAS error of the stored anchors + rounding of the tests
        return K.TOL_REL * (self.d + 2) * self._wmax * self._xmax * 2 + 1e-14 * (1 + abs(self.shift))

    def query(self, X, ids=None):
        X = _as_queries(X, self.d)
        B = X.shape[0]
        if ids is None:
            raise invalid("ids", "the training-set row of each query (the index answers for those)", None)
        ids = np.ascontiguousarray(ids, np.int64)
        if ids.shape != (B,) or (B and (ids.min() < 0 or ids.max() >= self.n)):
            raise invalid("ids", f"{B} training-set rows in [0, {self.n})", ids)
        tol = self._tol()

        bounds = (self.W, self._drift, self._aerr)  # current weights and drift / anchor-error bounds
        band = (self.shift, self._band, self._amax, tol)

        def walk(out, cap):  # (counts, nodes visited, pairs refreshed)
            args = (self._trees(), self._keys, bounds, X, ids, self._xnorm, band)
            return K.ct_query_batch(*args, out, cap, self._front)

        return self._search(B, walk)

    def _span_arrays(self, coefs):
        """Validate a :class:`SpanUpdate` and return kernel arrays (or empty ones)."""
        if coefs is None:
            e = np.zeros(0, np.int64)
            return False, e, np.zeros(1, np.int64), e, np.zeros(0), np.zeros(1)
        ids, indptr, indices, qc, rc = SpanUpdate(*coefs)
        ids = np.ascontiguousarray(ids, np.int64)
        indptr = np.ascontiguousarray(indptr, np.int64)
        indices = np.ascontiguousarray(indices, np.int64)
        qc = np.ascontiguousarray(qc, np.float64)
        B = ids.shape[0]
        if (
            ids.ndim != 1
            or qc.shape != (B,)
            or indptr.shape != (B + 1,)
            or indptr[0] != 0
            or indptr[-1] != indices.shape[0]
            or (B and (ids.min() < 0 or ids.max() >= self.n))
            or (indices.size and (indices.min() < 0 or indices.max() >= self.m))
        ):
            raise invalid(
                "coefs",
                "a SpanUpdate(ids (B,) in [0, n), indptr (B+1,) from 0 to nnz, indices (nnz,) "
                "in [0, m), query_coef (B,), row_coef (m,) or None)",
                coefs,
                shown=f"ids {ids.shape}, indptr {indptr.shape}, indices {indices.shape}, "
                f"query_coef {qc.shape}",
            )
        if rc is None:
            if self._ones is None:
                self._ones = np.ones(self.m)
            rc = self._ones
        rc = np.ascontiguousarray(rc, np.float64)
        if rc.shape != (self.m,):
            raise invalid(
                "coefs.row_coef", f"an array of shape ({self.m},) or None", rc, shown=f"shape {rc.shape}"
            )
        return True, ids, indptr, indices, qc, rc

    def update(self, rows, step_norms=None, coefs=None):
        """``W[rows]`` changed in place.

        Parameters
        ----------
        rows : (k,) int
            Changed rows of ``W``.
        step_norms : (k,) float, optional
            ``step_norms[s] >= ||change of W[rows[s]]||``; without it the
            drift is computed exactly from ``W`` and the anchors (``O(k d)``).
        coefs : SpanUpdate, optional
            The change as a combination of training inputs; enables the Gram
            path when a neuron is re-anchored.  Without it re-anchoring uses
            direct dot products.
        """
        rows = np.ascontiguousarray(rows, np.int64)
        if rows.size == 0:
            return
        span = self._span_arrays(coefs)  # (has_coefs, ids, indptr, indices, query_coef, row_coef)
        exact = step_norms is None
        norms = np.zeros(0) if exact else np.ascontiguousarray(step_norms, np.float64)
        if not exact and norms.shape != rows.shape:
            raise invalid(
                "step_norms", f"an array of shape {rows.shape}", norms, shown=f"shape {norms.shape}"
            )
        anchors = (self._Wref, self._drift)  # w_r(ref) (m, d) and drift bounds (m,)
        slots = (self._slot_cnt, self._slot_ids, self._slot_c)  # span coefficients (m,), (m, S), (m, S)
        drift_args = (*anchors, self.radius, self._wref_max)
        far, dmax = K.ct_note_update(self.W, rows, norms, exact, *drift_args, *span, *slots, self._mark)
        if exact:
            self._wmax = max(self._wmax, K.row_norm_max(self.W, rows))
        else:  # ||w_r|| <= ||w_r(ref)|| + drift_r
            self._wmax = max(self._wmax, self._wref_max + max(self._band, dmax))
        if far.size:
            krel = self._keys[1]
            cap = self.aerr_cap()
            data = (self._X, self._xnorm, self._xmax)  # training inputs, their norms, the largest
            use_gram, wn = K.ct_plan_reanchor(
                self.W, *anchors, far, *slots, *data, self._aerr, cap, self.gram_, krel, self._kabs_max
            )
            refresh = (self._G, self._X, *self._trees(), self._keys)
            K.ct_refresh_columns(self.W, far, use_gram, *slots, *refresh)
            if self.gram_:
                self._slot_cnt[far] = 0
            self._wref_max = max(self._wref_max, wn)
            self._wmax = max(self._wmax, wn)
            n_gram = int(np.count_nonzero(use_gram))
            self._amax = max(self._amax, float(self._aerr[far].max()))
            self.stats["reanchored_gram"] += n_gram
            self.stats["reanchored_direct"] += far.size - n_gram
        self._band = max(self._band, dmax)
        self.stats["rows_updated"] += rows.size
        self.stats["rebuilds"] += int(far.size)
        self.stats["pairs_refreshed"] += int(far.size) * self.n


class SimHashLSHIndex(FiredIndex):
    """Approximate identification by SimHash (SLIDE-style), verified exactly.

    ``n_tables`` tables, each hashing a vector to ``n_bits`` signs of random
    Gaussian projections: ``h_t(v) = (sign <g_{t,k}, v>)_k``.  Two vectors at
    angle ``theta`` collide in a table with probability ``(1 - theta/pi)^K``.
    A query takes the union of its buckets and keeps the candidates with
    ``canonical_dot > b``: no false positives, some misses (recall < 1).

    ``n_bits=None`` picks ``K = max(1, round(log2(m) / 3))`` so a bucket holds
    about ``m^(2/3)`` neurons.  Updates rehash the changed rows and move them
    between buckets (doubly linked lists, ``O(L K d)`` per row).
    """

    exact = False
    ascending = False  # buckets in table order

    def __init__(self, n_tables: int = 32, n_bits: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.n_tables = check_int("n_tables", n_tables)
        if n_bits is not None:
            n_bits = check_int("n_bits", n_bits)
            if n_bits > 30:
                raise invalid("n_bits", "an integer in [1, 30] or None", n_bits)
        self.n_bits = n_bits
        self.seed = seed

    def build(self, W, shift, X_train=None):
        self._common_build(W, shift)
        K_ = self.n_bits or max(1, round(math.log2(max(self.m, 2)) / 3))
        self.bits_ = K_
        rng = np.random.default_rng(self.seed)
        self._P = rng.standard_normal((self.d, self.n_tables * K_))  # (d, L K) projections
        self._codes = np.empty((self.n_tables, self.m), np.int32)
        for r0 in range(0, self.m, 65536):
            H = W[r0 : r0 + 65536] @ self._P
            self._codes[:, r0 : r0 + 65536] = K.lsh_codes(H, self.n_tables, K_)
        self._head = np.full((self.n_tables, 1 << K_), -1, np.int32)  # (L, 2^K) bucket heads
        self._nxt = np.empty((self.n_tables, self.m), np.int32)  # (L, m) links, -1 = end
        self._prv = np.empty((self.n_tables, self.m), np.int32)
        K.lsh_link_all(self._codes, self._head, self._nxt, self._prv)
        self._stamp = np.zeros(self.m + 1, np.int64)
        return self

    def query(self, X, ids=None):
        X = _as_queries(X, self.d)
        B = X.shape[0]
        qcodes = K.lsh_codes(X @ self._P, self.n_tables, self.bits_)  # (L, B)

        def buckets(out, cap):  # (counts, candidates checked, 0: no stored values to refresh)
            counts, checked = K.lsh_query_batch(
                qcodes, self._head, self._nxt, self.W, X, self.shift, self._stamp, out, cap
            )
            return counts, checked, 0

        return self._search(B, buckets)

    def update(self, rows, step_norms=None, coefs=None):
        rows = np.ascontiguousarray(rows, np.int64)
        if rows.size == 0:
            return
        new = K.lsh_codes(self.W[rows] @ self._P, self.n_tables, self.bits_)  # (L, k)
        K.lsh_relink(rows, new, self._codes, self._head, self._nxt, self._prv)
        self.stats["rows_updated"] += rows.size


INDEXES: dict[str, type[FiredIndex]] = {
    "brute-force": BruteForceIndex,
    "halfspace-tree": HalfspaceTreeIndex,
    "correlation-tree": CorrelationTreeIndex,
    "simhash-lsh": SimHashLSHIndex,
}
"""Name -> index class.  Adding a structure is one entry here."""

EXACT_INDEXES = tuple(name for name, cls in INDEXES.items() if cls.exact)


def make_index(name: str, **params: Any) -> FiredIndex:
    """Instantiate the index ``name`` from :data:`INDEXES` with ``params``."""
    check_choice("index", name, INDEXES)
    try:
        return INDEXES[name](**params)
    except TypeError as exc:
        raise SparsetrainError(
            f"The index {name!r} got an unknown parameter ({exc}); "
            f"see the parameters of {INDEXES[name].__name__}."
        ) from None


def recall(got: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]) -> float:
    """Fraction of true fired (input, neuron) pairs that ``got`` reports.

    ``recall = sum_q |S_q(got) & S_q(truth)| / sum_q |S_q(truth)|`` (1.0 when
    nothing fires).
    """
    gi, gx = got
    ti, tx = truth
    hit = 0
    for q in range(ti.shape[0] - 1):
        hit += np.intersect1d(gx[gi[q] : gi[q + 1]], tx[ti[q] : ti[q + 1]]).size
    total = int(ti[-1])
    return 1.0 if total == 0 else hit / total
