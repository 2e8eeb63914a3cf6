"""Numba kernels of the sublinear subpackage, all of them, in one module.

Network math, the four indexes, Gauss-Newton over fired pairs and the
sketches of ``J^T``.  Every kernel is a module-level function over flat NumPy
arrays; no Python objects cross the kernel boundary.  The Python code in
:mod:`.indexes`, :mod:`.network`, :mod:`.train`, :mod:`.gauss_newton` and
:mod:`.sketch` checks dtypes and dispatches here.  A parallel kernel either
gives the same bits on any thread count (each thread owns whole output rows;
the tests run it on 1 thread and on all) or has a single-thread reference
beside it (``name_par`` and ``name``; the tests compare them).

Firing rule (the one definition every index shares)
---------------------------------------------------
Neuron ``r`` fires on ``x`` iff ``canonical_dot(w_r, x) > b`` where
``canonical_dot`` is the float64 sum ``((w_0 x_0 + w_1 x_1) + ...) + w_{d-1}
x_{d-1}`` taken strictly left to right (:func:`_dot`, no reassociation, no fast
math).  Structures that compute inner products differently (BLAS in blocks,
bounds over tree boxes, stored float32 values) only decide a pair on their own
when it is farther from ``b`` than a rigorous rounding bound; every pair inside
that band is settled by :func:`_dot`.  Ties (``canonical_dot == b``) therefore
never fire, in every index.

Rounding bound: for a sum of ``d`` products, ``|computed - exact| <= gamma_d *
sum_j |w_j x_j|`` with ``gamma_d = d u / (1 - d u)``, ``u = 2^-53``.  We use the
safety band ``TOL_REL * (d + 1) * S`` with ``TOL_REL = 1e-15 > 4 u`` and ``S`` an
upper bound of ``sum_j |w_j x_j|``, which covers both the structure's own error
and the canonical dot's error.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core.extending import intrinsic, overload
from numba.cpython.unsafe.numbers import trailing_zeros

from .._kernels import _prefetch

TOL_REL = 1e-15  # > 4 * 2^-53: covers two dot-product rounding errors of gamma_d each
F32_REL = 1.2e-7  # > 2^-24 (1 + tiny): relative error of rounding a float64 to float32


#: Elements of a work list ahead of the one being processed whose memory the loops over
#: scattered rows (tree frontiers, leaf blocks, fired rows of ``W``) prefetch: enough
#: lines in flight to hide DRAM latency, few enough that they are still in cache.
AHEAD = 12


@intrinsic
def prefetch(typingctx, arr, flat):
    """Prefetch (read) the cache line of element ``flat`` of a C-contiguous array.

    A hint only: it never faults and changes no result.  Numba has no prefetch of
    its own, so this emits ``llvm.prefetch`` through the core kernels' helper.
    """
    if not isinstance(arr, types.Array) or not isinstance(flat, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        _prefetch(builder, builder.gep(ary.data, [idx]), 1)
        return context.get_dummy_value()

    return types.void(arr, flat), codegen


@numba.njit(cache=True, inline="always")
def _dot(W, r, x):
    """Canonical float64 inner product ``<W[r], x>``, summed left to right."""
    s = 0.0
    for j in range(x.shape[0]):
        s += W[r, j] * x[j]
    return s


@numba.njit(cache=True)
def canonical_dots(W, X):
    """All canonical inner products ``Z[i, r] = _dot(W, r, X[i])`` (reference, O(n m d))."""
    n = X.shape[0]
    m = W.shape[0]
    Z = np.empty((n, m))
    for i in range(n):
        for r in range(m):
            Z[i, r] = _dot(W, r, X[i])
    return Z


@numba.njit(cache=True)
def row_norm_max(W, rows):
    """``max_{r in rows} ||w_r||`` (0.0 for no rows)."""
    best = 0.0
    for t in range(rows.shape[0]):
        s = 0.0
        for j in range(W.shape[1]):
            s += W[rows[t], j] * W[rows[t], j]
        if s > best:
            best = s
    return np.sqrt(best) * (1.0 + 1e-12)


# ---------------------------------------------------------------------------
# brute force: BLAS block + threshold with a canonical re-check near b
# ---------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def bf_threshold_block(Z, W, r0, X, shift, tol, out, pos, cap):
    """Append to ``out`` the rows of the block ``W[r0:r0+Z.shape[1]]`` that fire.

    ``Z`` (B, blk) holds BLAS products of the block; ``tol`` (B,) the safety
    band per query.  Entries with ``|Z - b| <= tol`` are re-decided by
    :func:`_dot`.  Writes query ``q``'s hits after ``pos[q]`` into the
    row-major buffer ``out`` (B, cap); returns the number of canonical
    re-checks, or -1 when a row of the buffer is full.  Parallel over
    queries: each thread owns whole rows of ``out``, so the result does not
    depend on the thread count.
    """
    B, blk = Z.shape
    rechecks = np.zeros(B, np.int64)
    full = np.zeros(B, np.bool_)
    for q in numba.prange(B):
        p = pos[q]
        lo = shift - tol[q]
        hi = shift + tol[q]
        nre = 0
        for c in range(blk):
            z = Z[q, c]
            if z <= lo:
                continue
            if z <= hi:
                nre += 1
                if not (_dot(W, r0 + c, X[q]) > shift):
                    continue
            if p >= cap:
                full[q] = True
                break
            out[q, p] = r0 + c
            p += 1
        pos[q] = p
        rechecks[q] = nre
    if full.any():
        return -1
    return rechecks.sum()


# ---------------------------------------------------------------------------
# half-space tree: kd-tree with axis-aligned boxes over the weights
# ---------------------------------------------------------------------------


@numba.njit(cache=True)
def _select(perm, keys, lo, hi, k):
    """Quickselect on ``perm[lo:hi]`` by ``keys[perm]`` so position ``k`` holds the k-th."""
    while hi - lo > 1:
        pivot = keys[perm[(lo + hi) // 2]]
        i = lo
        j = hi - 1
        while i <= j:
            while keys[perm[i]] < pivot:
                i += 1
            while keys[perm[j]] > pivot:
                j -= 1
            if i <= j:
                t = perm[i]
                perm[i] = perm[j]
                perm[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:
            return


@numba.njit(cache=True)
def kd_build(W, leaf_size):
    """Build a kd-tree over the rows of ``W`` (m, d) as flat arrays.

    Returns ``perm`` (m,) rows in tree order, ``start``/``end`` (nn,) point
    ranges, ``left``/``right``/``parent`` (nn,) links (-1 = none), ``lo``/``hi``
    (nn, d) bounding boxes, ``leaf_of`` (m,) leaf node of each tree position and
    the node count.  Splits at the median of the dimension of largest spread;
    a node whose points all coincide becomes a leaf whatever its size
    (duplicate weights).
    """
    m, d = W.shape
    cap = 4 * (m // max(leaf_size, 1)) + 8
    start = np.empty(cap, np.int64)
    end = np.empty(cap, np.int64)
    left = np.full(cap, -1, np.int64)
    right = np.full(cap, -1, np.int64)
    parent = np.full(cap, -1, np.int64)
    lo = np.empty((cap, d))
    hi = np.empty((cap, d))
    perm = np.arange(m)
    leaf_of = np.empty(m, np.int64)
    keys = np.empty(m)
    stack = np.empty(cap, np.int64)
    nn = 1
    start[0] = 0
    end[0] = m
    sp = 0
    stack[sp] = 0
    sp += 1
    while sp > 0:
        sp -= 1
        node = stack[sp]
        s = start[node]
        e = end[node]
        for j in range(d):
            lo[node, j] = np.inf
            hi[node, j] = -np.inf
        for p in range(s, e):
            r = perm[p]
            for j in range(d):
                v = W[r, j]
                if v < lo[node, j]:
                    lo[node, j] = v
                if v > hi[node, j]:
                    hi[node, j] = v
        best = -1
        spread = 0.0
        for j in range(d):
            sj = hi[node, j] - lo[node, j]
            if sj > spread:
                spread = sj
                best = j
        if e - s <= leaf_size or best < 0:
            for p in range(s, e):
                leaf_of[p] = node
            continue
        for p in range(s, e):
            keys[perm[p]] = W[perm[p], best]
        mid = (s + e) // 2
        _select(perm, keys, s, e, mid)
        for child, cs, ce in ((nn, s, mid), (nn + 1, mid, e)):
            start[child] = cs
            end[child] = ce
            parent[child] = node
            stack[sp] = child
            sp += 1
        left[node] = nn
        right[node] = nn + 1
        nn += 2
    return perm, start[:nn], end[:nn], left[:nn], right[:nn], parent[:nn], lo[:nn], hi[:nn], leaf_of, nn


@numba.njit(cache=True)
def _kd_query_one(Wp, perm, start, end, left, right, lo, hi, x, shift, out, q, cap, stack):
    """One query of :func:`kd_query_batch`: returns (count or -1 if full, visited, checked)."""
    d = x.shape[0]
    visited = 0
    checked = 0
    c = 0
    sp = 0
    stack[sp] = 0
    sp += 1
    while sp > 0:
        sp -= 1
        node = stack[sp]
        visited += 1
        ub = 0.0
        lb = 0.0
        S = 0.0
        for j in range(d):
            a = lo[node, j] * x[j]
            b2 = hi[node, j] * x[j]
            if a > b2:
                ub += a
                lb += b2
            else:
                ub += b2
                lb += a
            S += max(abs(a), abs(b2))
        tol = TOL_REL * (d + 1) * S
        if ub < shift - tol:
            continue
        if lb > shift + tol:
            n_here = end[node] - start[node]
            if c + n_here > cap:
                return -1, visited, checked
            for p in range(start[node], end[node]):
                out[q, c] = perm[p]
                c += 1
            continue
        if left[node] < 0:
            for p in range(start[node], end[node]):
                checked += 1
                if _dot(Wp, p, x) > shift:
                    if c >= cap:
                        return -1, visited, checked
                    out[q, c] = perm[p]
                    c += 1
            continue
        stack[sp] = left[node]
        sp += 1
        stack[sp] = right[node]
        sp += 1
    return c, visited, checked


@numba.njit(parallel=True, cache=True)
def kd_query_batch(Wp, perm, start, end, left, right, lo, hi, X, shift, out, cap, stack_len):
    """Report ``{perm[p] : _dot(Wp, p, x) > b}`` for every row ``x`` of ``X``.

    Walk from the root with an explicit stack (``stack_len`` entries, one
    stack per query).  For a box ``[lo, hi]`` the extreme inner products are
    ``ub = sum_j max(lo_j x_j, hi_j x_j)`` and ``lb = sum_j min(lo_j x_j,
    hi_j x_j)``.  With ``S = sum_j max(|lo_j|, |hi_j|) |x_j|`` and ``tol =
    TOL_REL (d+1) S``: prune if ``ub < b - tol``; report the whole subtree if
    ``lb > b + tol``; at a leaf decide each point with :func:`_dot`.  Results
    go to ``out`` (B, cap) row by row; returns (counts (B,), nodes visited,
    leaf points checked); ``counts[q] = -1`` when row ``q`` is full.
    Parallel over queries (each thread owns whole rows of ``out``).
    """
    B = X.shape[0]
    counts = np.zeros(B, np.int64)
    visited = np.zeros(B, np.int64)
    checked = np.zeros(B, np.int64)
    for q in numba.prange(B):
        stack = np.empty(stack_len, np.int64)
        c, v, k = _kd_query_one(Wp, perm, start, end, left, right, lo, hi, X[q], shift, out, q, cap, stack)
        counts[q] = c
        visited[q] = v
        checked[q] = k
    return counts, visited.sum(), checked.sum()


@numba.njit(cache=True)
def kd_update(W, rows, Wp, pos, leaf_of, parent, lo, hi):
    """Copy ``W[rows]`` into the tree and grow the boxes on the leaf-to-root path.

    Boxes only grow, so answers stay exact; the caller rebuilds once enough
    rows moved.  Stops climbing as soon as a box already contains the point
    (its ancestors then do too).  Returns the number of nodes touched.
    """
    d = W.shape[1]
    touched = 0
    for t in range(rows.shape[0]):
        r = rows[t]
        p = pos[r]
        for j in range(d):
            Wp[p, j] = W[r, j]
        node = leaf_of[p]
        while node >= 0:
            touched += 1
            grew = False
            for j in range(d):
                v = W[r, j]
                if v < lo[node, j]:
                    lo[node, j] = v
                    grew = True
                if v > hi[node, j]:
                    hi[node, j] = v
                    grew = True
            if not grew:
                break
            node = parent[node]
    return touched


# ---------------------------------------------------------------------------
# correlation tree: per training point, a max-tree over <w_r(ref), x_i>
# ---------------------------------------------------------------------------


def ct_levels(n_blocks, fanout):
    """Level offsets of an F-ary max tree over ``n_blocks`` leaf blocks.

    Level 0 holds the ``n_blocks`` block maxima, level ``l`` holds
    ``ceil(size_{l-1} / F)`` maxima, up to a single root.  Returns ``offsets``
    (levels + 1,): level ``l`` occupies ``[offsets[l], offsets[l + 1])``.
    """
    sizes = [max(1, n_blocks)]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // fanout))
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


@numba.njit(parallel=True, cache=True)
def ct_build_maxima(V, leaf_block, fanout, offsets, tmax):
    """Fill the per-point F-ary max trees ``tmax`` (n, offsets[-1]) from ``V`` (n, m).

    Leaf ``k`` (level 0) is the max of neurons ``k L .. k L + L - 1``; node
    ``j`` of level ``l`` is the max of nodes ``j F .. j F + F - 1`` of level
    ``l - 1``.  Each level is contiguous, so a visited node scans its ``F``
    children in one cache line.  Parallel over training points (rows).
    """
    n, m = V.shape
    n_lev = offsets.shape[0] - 1
    nb = offsets[1]
    for i in numba.prange(n):
        for k in range(nb):
            mx = -np.inf
            r0 = k * leaf_block
            for r in range(r0, min(r0 + leaf_block, m)):
                if V[i, r] > mx:
                    mx = V[i, r]
            tmax[i, k] = mx
        for lev in range(1, n_lev):
            lo = offsets[lev - 1]
            size_below = offsets[lev] - lo
            for j in range(offsets[lev + 1] - offsets[lev]):
                mx = -np.inf
                for c in range(j * fanout, min(j * fanout + fanout, size_below)):
                    if tmax[i, lo + c] > mx:
                        mx = tmax[i, lo + c]
                tmax[i, offsets[lev] + j] = mx


#: Largest magnitude of an ``int16`` key; the scale of point ``i`` maps ``KEY_MAX`` to at least
#: ``max(||x_i|| wmax, |b| + 1)``, so keys saturate only after a weight outgrows the build's norm.
KEY_MAX = 32767


def store_key(V, i, r, v, s):
    """``V[i, r] <- key of v`` (float32 rounding, or int16 ``round(v / s)`` saturated)."""


@overload(store_key)
def _store_key_impl(V, i, r, v, s):
    if isinstance(V, types.Array) and V.dtype == types.int16:

        def impl(V, i, r, v, s):
            t = np.rint(v / s)
            if t > KEY_MAX:
                t = KEY_MAX
            elif t < -KEY_MAX:
                t = -KEY_MAX
            V[i, r] = np.int16(t)

        return impl

    def impl(V, i, r, v, s):
        V[i, r] = np.float32(v)

    return impl


def key_saturated(V, i, r):
    """Whether ``V[i, r]`` is a saturated int16 key (its value is only a bound); never for float32."""


@overload(key_saturated)
def _key_saturated_impl(V, i, r):
    if isinstance(V, types.Array) and V.dtype == types.int16:
        return lambda V, i, r: V[i, r] == KEY_MAX or V[i, r] == -KEY_MAX
    return lambda V, i, r: False


def key_floor(V, k):
    """A key ``<= k`` in ``V``'s dtype (int16: floor, clamped; float32: rounded down).

    So ``key < key_floor(V, k)`` implies ``key < k``: a bare key comparison may skip.
    """


@overload(key_floor)
def _key_floor_impl(V, k):
    if isinstance(V, types.Array) and V.dtype == types.int16:

        def impl(V, k):
            return np.int16(max(min(np.floor(k), KEY_MAX), -KEY_MAX - 1.0))

        return impl

    def impl(V, k):
        f = np.float32(k)
        if np.float64(f) > k:
            f = np.nextafter(f, np.float32(-np.inf))
        return f

    return impl


@numba.njit(parallel=True, cache=True)
def ct_encode_block(Z, r0, kscale, V):
    """``V[:, r0:r0+Z.shape[1]] <- keys of Z`` (n, blk) float64, per-point scale ``kscale`` (n,)."""
    n, blk = Z.shape
    for i in numba.prange(n):
        s = kscale[i]
        for c in range(blk):
            store_key(V, i, r0 + c, Z[i, c], s)


@numba.njit(cache=True, inline="always")
def _ct_keep(V, i, r, s, krel, ea, bounds, x, xn, shift, tol, amax):
    """Whether pair (r, i), whose key is near b, fires (its own bounds, else the canonical
    dot), and whether the canonical dot was needed.  ``bounds = (W, drift, aerr)``."""
    W, drift, aerr = bounds
    v = np.float64(V[i, r]) * s
    e = krel * abs(v) + ea + drift[r] * xn
    if amax > 0:  # amax bounds every aerr: all zero without Gram anchors
        e += aerr[r]
    if v + e < shift - tol:
        return False, False
    if v - e <= shift + tol:
        return _dot(W, r, x) > shift, True
    return True, False


@numba.njit(cache=True)
def _ct_query_one(trees, keys, bounds, x, i, xn, band_args, out, q, cap, fa, fb):
    """One query of :func:`ct_query_batch`: returns (count or -1 if full, visited, refreshed).

    Level-synchronous: the frontier of one level (ascending node numbers, in
    ``fa``/``fb``) gives the next; each node's children are one contiguous run,
    and the run ``AHEAD`` nodes on is prefetched, so many lines are in flight
    at once instead of one dependent miss per node.  Leaf blocks are scanned the
    same way, so the fired neurons come out ascending.  Arguments grouped as in
    :func:`ct_query_batch`.
    """
    V, tmax, leaf_block, fanout, offsets = trees
    W, drift, aerr = bounds
    shift, band, amax, tol = band_args
    m = W.shape[0]
    kscale, krel, kabs = keys
    s = kscale[i]
    ea = kabs[i]
    n_lev = offsets.shape[0] - 1
    cut = shift - tol - band * xn - amax  # below: cannot fire whatever the neuron's own bounds
    sure = shift + tol + band * xn + amax  # above: fires whatever the neuron's own bounds
    root = np.float64(tmax[i, offsets[n_lev - 1]]) * s
    if root + krel * abs(root) + ea < cut:
        return 0, 0, 0
    # the same test as a bare key comparison: key < kth implies value + key error < cut
    # (kth sits a little below the exact solution, so a key at or above it takes the full test)
    t0 = cut - ea
    vlo = t0 / (1.0 + krel) if t0 >= 0 else t0 / (1.0 - krel)
    kth = (vlo - 1e-9 * (1.0 + abs(vlo))) / s
    kth -= 1e-9 * (1.0 + abs(kth))
    kkey = key_floor(V, kth)
    tbase = i * tmax.shape[1]
    cur, nxt = fa, fb
    cur[0] = 0
    nc = 1
    visited = 0
    for lev in range(n_lev - 1, 0, -1):
        lo = offsets[lev - 1]
        size_below = offsets[lev] - lo
        nn = 0
        for t in range(nc):
            if t + AHEAD < nc:
                prefetch(tmax, tbase + lo + cur[t + AHEAD] * fanout)
            j = cur[t]
            for ch in range(j * fanout, min(j * fanout + fanout, size_below)):
                if np.float64(tmax[i, lo + ch]) < kth:
                    continue
                mx = np.float64(tmax[i, lo + ch]) * s
                if mx + krel * abs(mx) + ea >= cut:
                    nxt[nn] = ch
                    nn += 1
        visited += nc
        cur, nxt = nxt, cur
        nc = nn
    visited += nc
    vbase = i * V.shape[1]
    refreshed = 0
    c = 0
    pend = nxt  # free during the leaf scan: positions in out of the pairs near b
    plim = pend.shape[0]
    npend = 0
    for t in range(nc):
        if t + AHEAD < nc:
            prefetch(V, vbase + cur[t + AHEAD] * leaf_block)
        r0 = cur[t] * leaf_block
        nr = min(leaf_block, m - r0)
        mask = 0  # the block's keys at or above the threshold, one bit each (a vector loop)
        for k in range(nr):
            mask |= np.int64(V[i, r0 + k] >= kkey) << k
        while mask != 0:
            r = r0 + trailing_zeros(mask)
            mask &= mask - 1
            v = np.float64(V[i, r]) * s
            ek = krel * abs(v) + ea
            if v + ek < cut:  # below the band: skip without reading drift
                continue
            if c >= cap:
                return -1, visited, refreshed
            out[q, c] = r
            c += 1
            if v - ek <= sure:  # near b: the neuron's own bounds decide (second pass)
                if npend < plim:
                    pend[npend] = c - 1
                    npend += 1
                else:  # the buffer is full (a band as wide as the tree): decide now
                    keep, dotted = _ct_keep(V, i, r, s, krel, ea, bounds, x, xn, shift, tol, amax)
                    refreshed += dotted
                    if not keep:
                        c -= 1
    # second pass over the pairs near b: their bounds (and rows) prefetched ahead, so the
    # scattered reads overlap; rejected ones are marked, then the row is compacted in order
    for k in range(npend):
        if k + AHEAD < npend:
            rn = out[q, pend[k + AHEAD]]
            prefetch(V, vbase + rn)
            prefetch(drift, rn)
            if amax > 0:
                prefetch(aerr, rn)
        pos = pend[k]
        r = out[q, pos]
        keep, dotted = _ct_keep(V, i, r, s, krel, ea, bounds, x, xn, shift, tol, amax)
        refreshed += dotted
        if not keep:
            out[q, pos] = -1
    if npend > 0:
        w = pend[0]
        for p in range(pend[0], c):
            if out[q, p] >= 0:
                out[q, w] = out[q, p]
                w += 1
        c = w
    return c, visited, refreshed


@numba.njit(parallel=True, cache=True)
def ct_query_batch(trees, keys, bounds, X, ids, xnorm, band_args, out, cap, front):
    """Exact fired sets of training points ``ids`` from the per-point max trees.

    Arguments by what they are: ``trees = (V, tmax, leaf_block, fanout,
    offsets)``, the per-point keys and max trees; ``keys = (kscale, krel,
    kabs)``; ``bounds = (W, drift, aerr)``, the current weights and the
    per-neuron drift and anchor-error bounds; ``band_args = (shift, band, amax,
    tol)``, the threshold and the global bounds.

    ``V[i, r]`` is a key of ``<w_r(ref), x_i>``; with ``keys = (kscale (n,),
    krel, kabs (n,))`` its value is ``v = V[i, r] kscale[i]`` and ``|v -
    <w_r(ref), x_i>| <= krel |v| + kabs[i] + aerr[r]`` (+ the build's BLAS
    error, inside ``tol``): float32 keys have ``kscale = 1``, ``krel =
    F32_REL``, ``kabs = 0``; int16 keys a per-point scale and half a step of
    it (saturated keys stay on the safe side, see :class:`CorrelationTreeIndex`).
    ``drift[r] >= ||w_r - w_r(ref)||``.  By Cauchy-Schwarz ``|<w_r, x_i> -
    <w_r(ref), x_i>| <= drift[r] ||x_i||``, so with ``e = krel |v| + kabs[i] +
    drift[r] ||x_i|| + aerr[r]`` the pair (r, i):

    * fires for sure if ``v - e > b + tol``;
    * cannot fire if ``v + e < b - tol``;
    * otherwise (the band near the threshold) is refreshed with :func:`_dot`.

    A subtree is entered only if ``max + krel |max| + kabs[i] >= b - tol -
    band ||x_i|| - amax`` with ``band >= max_r drift[r]`` and ``amax >= max_r
    aerr[r]``.  Parallel over queries; ``front`` (threads, 2, blocks) int64
    holds each thread's two frontier buffers.  Returns (counts (B,), nodes
    visited, pairs refreshed), ``counts[q] = -1`` when row ``q`` of ``out`` is
    full.  Fired neurons are reported in ascending order.
    """
    B = ids.shape[0]
    counts = np.zeros(B, np.int64)
    visited = np.zeros(B, np.int64)
    refreshed = np.zeros(B, np.int64)
    for q in numba.prange(B):
        tid = numba.get_thread_id()
        i = ids[q]
        fa, fb = front[tid, 0], front[tid, 1]
        c, v, k = _ct_query_one(trees, keys, bounds, X[q], i, xnorm[i], band_args, out, q, cap, fa, fb)
        counts[q] = c
        visited[q] = v
        refreshed[q] = k
    return counts, visited.sum(), refreshed.sum()


ROUND_W = 2.3e-16  # > 2 u (1 + u): rounding of one SGD row update, relative to ||w|| + ||step||


@numba.njit(cache=True)
def ct_note_update(
    W,
    rows,
    step_norms,
    exact_drift,
    Wref,
    drift,
    radius,
    wref_max,
    has_coefs,
    cids,
    cptr,
    cidx,
    qcoef,
    rcoef,
    slot_cnt,
    slot_ids,
    slot_c,
    mark,
):
    """Maintenance phase 1 (serial, ``O(k + nnz S)``): drift bounds, span slots, neurons to re-anchor.

    *Span slots.*  Neuron ``r`` keeps up to ``S = slot_ids.shape[1]``
    coefficients with ``w_r - w_r(ref) ~ sum_s slot_c[r, s] x_{slot_ids[r, s]}``
    (``slot_cnt[r] = -1``: unknown, e.g. after an update given without
    coefficients or with more than ``S`` distinct inputs).  With
    ``has_coefs`` the batch CSR (``cids`` (B,) training rows, ``cptr``
    (B+1,), ``cidx`` (nnz,) neurons) adds ``qcoef[q] rcoef[r] x_{cids[q]}``
    to neuron ``r``; equal inputs are merged.  The slots are only a hint:
    :func:`ct_plan_reanchor` verifies them against ``W`` before use.

    *Drift.*  ``exact_drift``: ``drift[r] = ||w_r - w_r(ref)|| (1 + 1e-12)``
    (reads both rows); else ``drift[r] += step_norms[t] (1 + 1e-12)`` plus,
    with coefficients, the rounding of the row update (``ROUND_W (||w|| +
    ||step||)`` per input, ``||w|| <= wref_max + drift``).  Rows whose drift
    passes ``radius`` are returned (sorted, unique; ``mark`` (m,) is zero on
    entry and exit) for re-anchoring.  Returns (far rows, max kept drift).
    """
    k = rows.shape[0]
    S = slot_ids.shape[1]
    n_sub = 1
    if has_coefs:
        n_sub = max(1, cids.shape[0])
        if S > 0:
            for q in range(cids.shape[0]):
                xi = cids[q]
                for p in range(cptr[q], cptr[q + 1]):
                    r = cidx[p]
                    cnt = slot_cnt[r]
                    if cnt < 0:
                        continue
                    c = qcoef[q] * rcoef[r]
                    s = 0
                    while s < cnt and slot_ids[r, s] != xi:
                        s += 1
                    if s < cnt:
                        slot_c[r, s] += c
                    elif cnt < S:
                        slot_ids[r, cnt] = xi
                        slot_c[r, cnt] = c
                        slot_cnt[r] = cnt + 1
                    else:
                        slot_cnt[r] = -1  # more than S distinct inputs: unknown from now on
    elif S > 0:
        for t in range(k):
            slot_cnt[rows[t]] = -1
    ascending = True
    for t in range(1, k):
        if rows[t] <= rows[t - 1]:
            ascending = False
            break
    if ascending:  # unique rows: parallel over fixed parts, far rows come out ascending
        bounds = (exact_drift, Wref, drift, radius, wref_max, has_coefs, n_sub)
        return _ct_drift_chunks(W, rows, step_norms, *bounds)
    far = np.empty(k, np.int64)
    nf = 0
    dmax = 0.0
    for t in range(k):
        r = rows[t]
        sn = 0.0 if exact_drift else step_norms[t]
        dr = _ct_new_drift(W, r, sn, exact_drift, Wref, drift, wref_max, has_coefs, n_sub)
        if dr <= radius:
            drift[r] = dr
            if dr > dmax:
                dmax = dr
        elif mark[r] == 0:
            mark[r] = 1
            far[nf] = r
            nf += 1
    far = np.sort(far[:nf])
    for t in range(nf):
        mark[far[t]] = 0
    return far, dmax


@numba.njit(cache=True, inline="always")
def _ct_new_drift(W, r, step_norm, exact_drift, Wref, drift, wref_max, has_coefs, n_sub):
    """Row ``r``'s new drift bound: exact from ``W`` and the anchor, or the old bound plus the step."""
    if exact_drift:
        s2 = 0.0
        for j in range(W.shape[1]):
            df = W[r, j] - Wref[r, j]
            s2 += df * df
        return np.sqrt(s2) * (1.0 + 1e-12)
    dr = drift[r] + step_norm * (1.0 + 1e-12)
    if has_coefs:
        dr += ROUND_W * n_sub * (wref_max + dr + step_norm)
    return dr


@numba.njit(parallel=True, cache=True)
def _ct_drift_chunks(W, rows, step_norms, exact_drift, Wref, drift, radius, wref_max, has_coefs, n_sub):
    """The drift phase of :func:`ct_note_update` for strictly ascending ``rows``, in parallel.

    Fixed parts of ``rows`` (:data:`UPDATE_CHUNKS`, not the thread count), each
    prefetching the bounds a few rows ahead; the same bounds and far rows as the
    serial loop.
    """
    k = rows.shape[0]
    C = max(1, min(UPDATE_CHUNKS, k))
    far = np.empty(k, np.int64)
    nfar = np.zeros(C, np.int64)
    dmaxs = np.zeros(C)
    d = W.shape[1]
    for c in numba.prange(C):
        t0 = (c * k) // C
        t1 = ((c + 1) * k) // C
        nf = t0
        dm = 0.0
        for t in range(t0, t1):
            if t + AHEAD < t1:
                rn = rows[t + AHEAD]
                prefetch(drift, rn)
                if exact_drift:
                    prefetch(W, rn * d)
                    prefetch(Wref, rn * d)
            r = rows[t]
            sn = 0.0 if exact_drift else step_norms[t]
            dr = _ct_new_drift(W, r, sn, exact_drift, Wref, drift, wref_max, has_coefs, n_sub)
            if dr <= radius:
                drift[r] = dr
                if dr > dm:
                    dm = dr
            else:
                far[nf] = r
                nf += 1
        nfar[c] = nf - t0
        dmaxs[c] = dm
    out = np.empty(nfar.sum(), np.int64)
    o = 0
    for c in range(C):
        t0 = (c * k) // C
        out[o : o + nfar[c]] = far[t0 : t0 + nfar[c]]
        o += nfar[c]
    return out, dmaxs.max()


@numba.njit(cache=True)
def ct_plan_reanchor(
    W, Wref, drift, far, slot_cnt, slot_ids, slot_c, Xtrain, xnorm, xmax, aerr, cap, gram_on, krel, kabs_max
):
    """Maintenance phase 2 (serial, ``O(|far| S d)``): choose Gram or direct per neuron.

    Neuron ``r`` is re-anchored through the Gram matrix iff its span slots
    are known (``0 <= cnt <= d``, so ``cnt`` terms cost no more than a
    ``d``-term dot) and the resulting error bound stays below ``cap``.  The
    slots are verified a posteriori: ``P`` bounds ``||w_r - w_r(ref) - sum_s
    c_s x_s||`` from the computed residual plus its own rounding, so wrong or
    partial coefficients only make ``P`` large (then the neuron takes the
    direct path); they never make an answer wrong.  New anchor error, for
    every training point (``VB >= |V[i, r]|``, ``CX = sum_s |c_s| ||x_s||``)::

        aerr <- aerr + krel VB + kabs_max + P xmax + TOL_REL (d + cnt + 2) (VB + 1.01 CX xmax)

    (old key rounding (float32: ``krel = F32_REL``; int16: ``kabs_max``, half a
    step), unexplained residual, Gram and summation rounding;
    ``TOL_REL >= 4u`` covers ``gamma_d + gamma_(cnt+1)``).  The direct path
    resets ``aerr`` to 0.  Then ``w_r(ref) <- w_r`` and ``drift[r] <- 0``.
    Returns (use_gram (|far|,) bool, max ||w_r|| over ``far``).
    """
    nf = far.shape[0]
    d = W.shape[1]
    use = np.zeros(nf, np.bool_)
    res = np.empty(d)
    wn_max = 0.0
    for t in range(nf):
        r = far[t]
        nw = 0.0
        nr = 0.0
        for j in range(d):
            nw += W[r, j] * W[r, j]
            nr += Wref[r, j] * Wref[r, j]
        nw = np.sqrt(nw) * (1.0 + 1e-12)
        nr = np.sqrt(nr) * (1.0 + 1e-12)
        if nw > wn_max:
            wn_max = nw
        cnt = slot_cnt[r]
        if gram_on and cnt >= 0 and cnt <= d:
            cx = 0.0
            for j in range(d):
                res[j] = W[r, j] - Wref[r, j]
            for s in range(cnt):
                c = slot_c[r, s]
                xi = slot_ids[r, s]
                cx += abs(c) * xnorm[xi]
                for j in range(d):
                    res[j] -= c * Xtrain[xi, j]
            p2 = 0.0
            for j in range(d):
                p2 += res[j] * res[j]
            P = np.sqrt(p2) * (1.0 + 1e-12) + TOL_REL * (cnt + 3) * (nw + nr + 1.01 * cx)
            VB = nr * xmax * (1.0 + 3.0 * krel) + kabs_max + aerr[r]
            a_new = (
                aerr[r] + krel * VB + kabs_max + P * xmax + TOL_REL * (d + cnt + 2) * (VB + 1.01 * cx * xmax)
            )
            if a_new <= cap:
                use[t] = True
                aerr[r] = a_new
        if not use[t]:
            aerr[r] = 0.0
        for j in range(d):
            Wref[r, j] = W[r, j]
        drift[r] = 0.0
    return use, wn_max


@numba.njit(parallel=True, cache=True)
def ct_refresh_columns(
    W, far, use_gram, slot_cnt, slot_ids, slot_c, G, Xtrain, V, tmax, leaf_block, fanout, offsets, keys
):
    """Maintenance phase 3: new anchor values of the neurons ``far`` (sorted) and their max-tree paths.

    For every training point ``i`` and re-anchored neuron ``r``:

    * Gram path (SPEC 2.2 a): ``V[i, r] <- key(value(V[i, r]) + sum_s c_s G[i, s_id])``,
      ``O(cnt)`` per pair, no ``d``;
    * direct path: ``V[i, r] <- key(_dot(w_r, x_i))``, ``O(d)`` per pair, also
      for a Gram neuron's pairs whose old key is saturated (only a bound)

    (``key``: :func:`store_key` with the per-point scale ``keys[0]``).

    Then the leaf blocks holding ``far`` are rescanned and changed maxima
    climb level by level (each node once, stopping where a max is unchanged).
    Parallel over chunks of training points: a thread owns whole rows of
    ``V`` and ``tmax``, so there are no races and the result does not depend
    on the thread count.  Inside a chunk, neurons go in tiles so the rows of
    ``W`` and the slots stay in cache across the chunk's points.  Returns the
    number of (point, neuron) values recomputed.
    """
    n, m = V.shape
    kscale = keys[0]
    nf = far.shape[0]
    n_lev = offsets.shape[0] - 1
    blocks = np.empty(max(nf, 1), np.int64)  # distinct leaf blocks of far, ascending
    nb = 0
    for t in range(nf):
        kb = far[t] // leaf_block
        if nb == 0 or blocks[nb - 1] != kb:
            blocks[nb] = kb
            nb += 1
    tile = 512  # neurons per tile: W rows + slots of a tile fit in L2
    chunk = 8  # training points per parallel task
    n_chunks = (n + chunk - 1) // chunk
    for ch in numba.prange(n_chunks):
        i0 = ch * chunk
        i1 = min(i0 + chunk, n)
        for t0 in range(0, nf, tile):
            t1 = min(t0 + tile, nf)
            for i in range(i0, i1):
                for t in range(t0, t1):
                    r = far[t]
                    if use_gram[t] and not key_saturated(V, i, r):  # a saturated key is no anchor
                        v = np.float64(V[i, r]) * kscale[i]
                        for s in range(slot_cnt[r]):
                            v += slot_c[r, s] * G[i, slot_ids[r, s]]
                    else:
                        v = _dot(W, r, Xtrain[i])
                    store_key(V, i, r, v, kscale[i])
        changed = np.empty(max(nb, 1), np.int64)
        for i in range(i0, i1):
            nc = 0
            for kb in range(nb):
                k = blocks[kb]
                mx = -np.inf
                for rr in range(k * leaf_block, min(k * leaf_block + leaf_block, m)):
                    if V[i, rr] > mx:
                        mx = V[i, rr]
                if mx != tmax[i, k]:
                    tmax[i, k] = mx
                    changed[nc] = k
                    nc += 1
            for lev in range(1, n_lev):
                if nc == 0:
                    break
                lo = offsets[lev - 1]
                size_below = offsets[lev] - lo
                nn = 0
                last = -1
                for t in range(nc):
                    par = changed[t] // fanout
                    if par == last:
                        continue
                    last = par
                    mx = -np.inf
                    for c in range(par * fanout, min(par * fanout + fanout, size_below)):
                        if tmax[i, lo + c] > mx:
                            mx = tmax[i, lo + c]
                    if mx != tmax[i, offsets[lev] + par]:
                        tmax[i, offsets[lev] + par] = mx
                        changed[nn] = par
                        nn += 1
                nc = nn
    return n * nf


# ---------------------------------------------------------------------------
# SimHash LSH: L tables of K sign bits, buckets as doubly linked lists
# ---------------------------------------------------------------------------


@numba.njit(cache=True)
def lsh_codes(H, n_tables, n_bits):
    """Codes (n_tables, N) from projections ``H`` (N, n_tables * n_bits): bit = H > 0."""
    N = H.shape[0]
    codes = np.empty((n_tables, N), np.int32)
    for t in range(n_tables):
        for q in range(N):
            c = 0
            for k in range(n_bits):
                if H[q, t * n_bits + k] > 0.0:
                    c |= 1 << k
            codes[t, q] = c
    return codes


@numba.njit(cache=True)
def lsh_link_all(codes, head, nxt, prv):
    """Insert every neuron into the bucket of its code in every table."""
    L, m = codes.shape
    for t in range(L):
        for r in range(m - 1, -1, -1):  # ids ascending inside each bucket
            c = codes[t, r]
            h = head[t, c]
            nxt[t, r] = h
            prv[t, r] = -1
            if h >= 0:
                prv[t, h] = r
            head[t, c] = r


@numba.njit(cache=True)
def lsh_relink(rows, new_codes, codes, head, nxt, prv):
    """Move ``rows`` to the buckets of ``new_codes`` (L, k); O(1) per move."""
    L = codes.shape[0]
    moved = 0
    for t in range(L):
        for s in range(rows.shape[0]):
            r = rows[s]
            c_new = new_codes[t, s]
            c_old = codes[t, r]
            if c_new == c_old:
                continue
            moved += 1
            p = prv[t, r]
            nx = nxt[t, r]
            if p >= 0:
                nxt[t, p] = nx
            else:
                head[t, c_old] = nx
            if nx >= 0:
                prv[t, nx] = p
            h = head[t, c_new]
            nxt[t, r] = h
            prv[t, r] = -1
            if h >= 0:
                prv[t, h] = r
            head[t, c_new] = r
            codes[t, r] = c_new
    return moved


@numba.njit(cache=True)
def lsh_query_batch(qcodes, head, nxt, W, X, shift, stamp, out, cap):
    """Union of the query's buckets over all tables, kept if ``_dot > b``.

    ``stamp`` (m,) de-duplicates candidates (a query number per neuron).
    Returns (counts, candidates checked); counts[0] = -1 when ``out`` is full.
    """
    L, B = qcodes.shape
    counts = np.zeros(B, np.int64)
    checked = 0
    for q in range(B):
        tag = stamp[-1] + 1  # last slot holds the running query number
        stamp[-1] = tag
        c = 0
        for t in range(L):
            r = head[t, qcodes[t, q]]
            while r >= 0:
                if stamp[r] != tag:
                    stamp[r] = tag
                    checked += 1
                    if _dot(W, r, X[q]) > shift:
                        if c >= cap:
                            counts[0] = -1
                            return counts, checked
                        out[q, c] = r
                        c += 1
                r = nxt[t, r]
        counts[q] = c
    return counts, checked


# ---------------------------------------------------------------------------
# network math from fired sets (CSR: indptr (B+1,), indices (nnz,))
# ---------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def sparse_forward(W, a, shift, X, indptr, indices):
    """``f(x_q) = m^(-1/2) sum_{r in S_q} a_r (<w_r, x_q> - b)`` over given fired sets.

    Parallel over queries; each ``f[q]`` is summed in CSR order by one thread.
    The rows ``AHEAD`` positions on are prefetched (first and last element, so
    both lines of a 128-byte row).
    """
    B = X.shape[0]
    m, d = W.shape
    f = np.zeros(B)
    for q in numba.prange(B):
        s = 0.0
        hi = indptr[q + 1]
        for p in range(indptr[q], hi):
            if p + AHEAD < hi:
                rn = indices[p + AHEAD]
                prefetch(W, rn * d)
                prefetch(W, rn * d + d - 1)
                prefetch(a, rn)
            r = indices[p]
            s += a[r] * (_dot(W, r, X[q]) - shift)
        f[q] = s / np.sqrt(m)
    return f


@numba.njit(cache=True)
def _lower_bound(v, lo, hi, key):
    """First position in ``v[lo:hi]`` (ascending) holding a value ``>= key`` (``hi`` if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if v[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


#: Row ranges of the parallel SGD update: fixed (not the thread count), so the
#: returned row order and every bit are the same on any number of threads.
UPDATE_CHUNKS = 64


@numba.njit(parallel=True, cache=True)
def sparse_sgd_update(W, a, step, X, coef, indptr, indices):
    """``w_r -= step * a_r * sum_{q : r in S_q} coef_q x_q`` for fired neurons only.

    Every fired set must be ascending without repeats (the exact indexes
    report them so; others are sorted first).  The row range is cut into
    :data:`UPDATE_CHUNKS` parts processed in parallel; inside a part the ``B``
    sorted lists are merged, so each fired row is read and written once, its
    contributions added in query order (the bits of the serial loop over
    queries), and the rows coming next are prefetched.  Returns the updated
    rows (ascending, unique) and, per row, the bound ``sum_q |step coef_q a_r|
    ||x_q|| >= ||w_r(new) - w_r(old)||`` (triangle inequality), which lets an
    index track drift without re-reading the weights.
    """
    B, d = X.shape
    m = W.shape[0]
    nnz = indices.shape[0]
    xn = np.empty(B)
    for q in range(B):
        s = 0.0
        for j in range(d):
            s += X[q, j] * X[q, j]
        xn[q] = np.sqrt(s)
    for q in range(B):
        for p in range(indptr[q] + 1, indptr[q + 1]):
            if indices[p] <= indices[p - 1]:
                raise ValueError("sparse_sgd_update: every fired set must be ascending without repeats")
    C = min(UPDATE_CHUNKS, m)
    # starts[c, q]: first position of query q's list at or above the first row of part c
    starts = np.empty((C + 1, B), np.int64)
    for q in range(B):
        for c in range(C + 1):
            starts[c, q] = _lower_bound(indices, indptr[q], indptr[q + 1], (c * m) // C)
    base = np.zeros(C + 1, np.int64)  # output offsets: a part writes at most its pairs
    for c in range(C):
        base[c + 1] = base[c] + (starts[c + 1] - starts[c]).sum()
    rows = np.empty(nnz, np.int64)
    norms = np.empty(nnz)
    kept = np.zeros(C, np.int64)
    for c in numba.prange(C):
        h = starts[c].copy()
        e = starts[c + 1]
        head = np.empty(B, np.int64)  # current row of each list (m: exhausted)
        for q in range(B):
            head[q] = indices[h[q]] if h[q] < e[q] else m
        k = base[c]
        while True:
            r = m
            for q in range(B):
                r = min(r, head[q])
            if r == m:
                break
            ar = a[r]
            acc = 0.0
            for q in range(B):
                if head[q] == r:
                    g = step * coef[q] * ar
                    for j in range(d):
                        W[r, j] -= g * X[q, j]
                    acc += abs(g) * xn[q]
                    p = h[q] + 1
                    h[q] = p
                    head[q] = indices[p] if p < e[q] else m
                    if p + AHEAD // 4 < e[q]:
                        rn = indices[p + AHEAD // 4]
                        prefetch(W, rn * d)
                        prefetch(W, rn * d + d - 1)
                        prefetch(a, rn)
            rows[k] = r
            norms[k] = acc
            k += 1
        kept[c] = k - base[c]
    total = kept.sum()
    out_rows = np.empty(total, np.int64)
    out_norms = np.empty(total)
    o = 0
    for c in range(C):
        out_rows[o : o + kept[c]] = rows[base[c] : base[c] + kept[c]]
        out_norms[o : o + kept[c]] = norms[base[c] : base[c] + kept[c]]
        o += kept[c]
    return out_rows, out_norms


# ---------------------------------------------------------------------------
# Gauss-Newton over fired pairs.  CSR over inputs: indptr (n+1,), indices
# (nnz,); CSC over neurons: tptr (m+1,), tind (nnz,) (the inputs each neuron
# fires on).  Each parallel kernel ``*_par`` has a single-thread reference of
# the same name without the suffix (its ``py_func`` compiled serially); the
# tests compare the two.
# ---------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def fired_counts_par(indptr, indices, tptr, tind, n):
    """``C[i, j] = |S_i & S_j|`` (= (A A^T)[i, j]) in ``sum_r |T_r|^2`` work; rows in parallel."""
    C = np.zeros((n, n))
    for i in numba.prange(n):
        for p in range(indptr[i], indptr[i + 1]):
            r = indices[p]
            for q in range(tptr[r], tptr[r + 1]):
                C[i, tind[q]] += 1.0
    return C


fired_counts = numba.njit(cache=True)(fired_counts_par.py_func)  # single-thread reference


@numba.njit(cache=True)
def csr_transpose(indptr, indices, m):
    """CSR over inputs -> CSC over neurons (counting sort): ``tptr`` (m+1,), ``tind``, ``src``.

    ``src[q]`` is the CSR position of CSC entry ``q``; inputs are ascending
    within each neuron.
    """
    n = indptr.shape[0] - 1
    nnz = indices.shape[0]
    tptr = np.zeros(m + 1, np.int64)
    for p in range(nnz):
        tptr[indices[p] + 1] += 1
    for r in range(m):
        tptr[r + 1] += tptr[r]
    fill = tptr[:-1].copy()
    tind = np.empty(nnz, np.int64)
    src = np.empty(nnz, np.int64)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            r = indices[p]
            tind[fill[r]] = i
            src[fill[r]] = p
            fill[r] += 1
    return tptr, tind, src


@numba.njit(parallel=True, cache=True)
def jt_apply_par(tptr, tind, a, X, v, scale, out):
    """``out[r] = scale a_r sum_{i in T_r} v_i x_i`` for every neuron (rows in parallel)."""
    m = tptr.shape[0] - 1
    d = X.shape[1]
    for r in numba.prange(m):
        for k in range(d):
            out[r, k] = 0.0
        for q in range(tptr[r], tptr[r + 1]):
            c = scale * a[r] * v[tind[q]]
            i = tind[q]
            for k in range(d):
                out[r, k] += c * X[i, k]


jt_apply = numba.njit(cache=True)(jt_apply_par.py_func)  # single-thread reference


@numba.njit(parallel=True, cache=True)
def j_apply_par(indptr, indices, a, X, U, scale, out):
    """``out[i] = scale sum_{r in S_i} a_r <u_r, x_i>`` (inputs in parallel)."""
    n, d = X.shape
    for i in numba.prange(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            r = indices[p]
            t = 0.0
            for k in range(d):
                t += U[r, k] * X[i, k]
            s += a[r] * t
        out[i] = scale * s


j_apply = numba.njit(cache=True)(j_apply_par.py_func)  # single-thread reference


@numba.njit(parallel=True, cache=True)
def implicit_preacts_par(tptr, tind, ppos, ukeys, urow, coef, z0, G, n):
    """``z[q] = <w_r(0), x_i> + sum_{(r, j) in C} C[r, j] G[j, i]`` for CSC pair ``q = (r, i)``.

    ``ppos[q]``: position of the pair in the union pattern (sorted keys
    ``ukeys = r n + j``, row pointers ``urow`` (m+1,), ``coef``, ``z0``).
    """
    m = tptr.shape[0] - 1
    z = np.empty(tind.shape[0])
    for r in numba.prange(m):
        base = r * n
        for q in range(tptr[r], tptr[r + 1]):
            i = tind[q]
            s = z0[ppos[q]]
            for u in range(urow[r], urow[r + 1]):
                s += coef[u] * G[ukeys[u] - base, i]
            z[q] = s
    return z


implicit_preacts = numba.njit(cache=True)(implicit_preacts_par.py_func)  # single-thread reference


@numba.njit(parallel=True, cache=True)
def materialise_step_par(tptr, tind, delta, X, G, W, rows_out, norms_out):
    """``w_r += sum_{i in T_r} delta_q x_i`` and ``||step_r|| = sqrt(delta^T G_TT delta)``.

    Writes the moved rows (neurons with ``T_r`` nonempty, ascending) into
    ``rows_out`` and their step norms (from the Gram matrix, no ``d``) into
    ``norms_out``; returns their count.
    """
    m = tptr.shape[0] - 1
    d = X.shape[1]
    slot = np.zeros(m + 1, np.int64)
    for r in range(m):
        slot[r + 1] = slot[r] + (1 if tptr[r + 1] > tptr[r] else 0)
    for r in numba.prange(m):
        lo, hi = tptr[r], tptr[r + 1]
        if hi == lo:
            continue
        s2 = 0.0
        for q in range(lo, hi):
            i = tind[q]
            c = delta[q]
            for k in range(d):
                W[r, k] += c * X[i, k]
            for q2 in range(lo, hi):
                s2 += c * delta[q2] * G[i, tind[q2]]
        rows_out[slot[r]] = r
        norms_out[slot[r]] = np.sqrt(max(s2, 0.0))
    return slot[m]


materialise_step = numba.njit(cache=True)(materialise_step_par.py_func)  # single-thread reference


@numba.njit(cache=True)
def pair_dots(W, X, keys, n):
    """``<w_r, x_i>`` for pair keys ``r n + i`` (canonical left-to-right sums)."""
    out = np.empty(keys.shape[0])
    d = X.shape[1]
    for t in range(keys.shape[0]):
        r = keys[t] // n
        i = keys[t] - r * n
        s = 0.0
        for k in range(d):
            s += W[r, k] * X[i, k]
        out[t] = s
    return out


@numba.njit(cache=True)
def materialise_all(W0, X, ukeys, urow, coef, n):
    """``W = W(0) + C X`` from the implicit representation (m d + |C| d)."""
    W = W0.copy()
    m, d = W0.shape
    for r in range(m):
        for u in range(urow[r], urow[r + 1]):
            j = ukeys[u] - r * n
            c = coef[u]
            for k in range(d):
                W[r, k] += c * X[j, k]
    return W


# ---------------------------------------------------------------------------
# sketches of J^T (fired sets as CSR over inputs)
# ---------------------------------------------------------------------------


@numba.njit(cache=True)
def countsketch_apply(indptr, indices, a, X, bucket, sign, scale, out):
    """``out[bucket[r, k], i] += sign[r, k] * scale * a_r * x_ik`` over fired pairs."""
    n, d = X.shape
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            r = indices[p]
            c = scale * a[r]
            for k in range(d):
                out[bucket[r, k], i] += sign[r, k] * c * X[i, k]


@numba.njit(cache=True)
def _popcount(v):
    c = 0
    while v:
        v &= v - 1
        c += 1
    return c


@numba.njit(parallel=True, cache=True)
def srht_rows_par(indptr, indices, a, X, rows, dsign, scale, out):
    """``out[t, i] = scale sum_{r in S_i, k} (-1)^popcount(rows_t & (r d + k)) D_(r d + k) a_r x_ik``."""
    n, d = X.shape
    for t in numba.prange(rows.shape[0]):
        p_ = rows[t]
        for i in range(n):
            s = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                r = indices[p]
                for k in range(d):
                    q = r * d + k
                    h = 1.0 - 2.0 * (_popcount(p_ & q) & 1)
                    s += h * dsign[q] * a[r] * X[i, k]
            out[t, i] = scale * s


srht_rows = numba.njit(cache=True)(srht_rows_par.py_func)  # single-thread reference
