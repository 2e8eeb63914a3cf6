"""Every parallel kernel of the sublinear module: 1 thread == all threads == a reference (NumPy or serial)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from sublinear_helpers import unit_rows

from sparsetrain.sublinear import _kernels as K
from sparsetrain.sublinear.indexes import make_index
from sparsetrain.sublinear.network import fired_sets

THREADS = sorted({1, numba.config.NUMBA_NUM_THREADS})


def on_threads(fn):
    """Run ``fn()`` on 1 thread and on all threads; return the list of results."""
    before = numba.get_num_threads()
    out = []
    try:
        for t in THREADS:
            numba.set_num_threads(t)
            out.append(fn())
    finally:
        numba.set_num_threads(before)
    return out


def assert_same(results):
    for r in results[1:]:
        for a, b in zip(results[0], r, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(2)
    m, d, n = 2000, 5, 48
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, n, d)
    shift = 1.1
    Z = K.canonical_dots(W, X)  # (n, m)
    truth = [np.flatnonzero(Z[q] > shift) for q in range(n)]
    return W, X, shift, truth


def rows_of(out, counts):
    return [np.sort(out[q, : counts[q]]) for q in range(counts.shape[0])]


def test_bf_threshold_block(problem):
    W, X, shift, truth = problem
    tol = np.full(X.shape[0], 1e-12)

    def run():
        out = np.full((X.shape[0], W.shape[0]), -1, np.int64)
        pos = np.zeros(X.shape[0], np.int64)
        rc = K.bf_threshold_block(X @ W.T, W, 0, X, shift, tol, out, pos, W.shape[0])
        return out.copy(), pos.copy(), np.array([rc])

    res = on_threads(run)
    assert_same(res)
    for q, got in enumerate(rows_of(res[0][0], res[0][1])):
        np.testing.assert_array_equal(got, truth[q])
    small = np.empty((X.shape[0], 2), np.int64)  # a full buffer reports -1 on any thread count
    assert all(
        r == -1
        for r in on_threads(
            lambda: K.bf_threshold_block(
                X @ W.T, W, 0, X, shift, tol, small, np.zeros(X.shape[0], np.int64), 2
            )
        )
    )


@pytest.mark.parametrize("name", ["halfspace-tree", "correlation-tree"])
def test_tree_queries(problem, name):
    W, X, shift, truth = problem
    params = {"halfspace-tree": {"leaf_size": 8}, "correlation-tree": {"leaf_block": 4, "fanout": 3}}[name]
    idx = make_index(name, **params).build(W, shift, X)
    ids = np.arange(X.shape[0])

    res = on_threads(lambda: idx.query(X, ids))
    assert_same(res)  # the same sets in the same order
    indptr, indices = res[0]
    for q in range(X.shape[0]):
        np.testing.assert_array_equal(np.sort(indices[indptr[q] : indptr[q + 1]]), truth[q])


@pytest.mark.parametrize("keys", ["float32", "int16"])
def test_ct_query_batch_counters_and_full_buffer(problem, keys):
    W, X, shift, truth = problem
    idx = make_index("correlation-tree", leaf_block=4, fanout=3, keys=keys).build(W, shift, X)
    ids = np.arange(X.shape[0])
    bounds = (W, idx._drift, idx._aerr)
    args = (idx._trees(), idx._keys, bounds, X, ids, idx._xnorm, (shift, 0.01, 0.0, idx._tol()))

    def run(cap):
        out = np.full((X.shape[0], cap), -1, np.int64)
        counts, vis, ref = K.ct_query_batch(*args, out, cap, idx._front)
        return out, counts, np.array([vis, ref])

    out, counts, _ = run(W.shape[0])
    for q in range(X.shape[0]):  # exact, and already ascending (no sort here)
        np.testing.assert_array_equal(out[q, : counts[q]], truth[q])

    assert_same(on_threads(lambda: run(W.shape[0])))
    assert all((r[1] < 0).any() for r in on_threads(lambda: run(1)))


def test_ct_build_maxima(problem):
    W, X, shift, _ = problem
    V = (X @ W.T).astype(np.float32)  # (n, m)
    L, F = 4, 3
    offsets = K.ct_levels(-(-W.shape[0] // L), F)

    def run():
        t = np.empty((X.shape[0], int(offsets[-1])), np.float32)
        K.ct_build_maxima(V, L, F, offsets, t)
        return (t,)

    res = on_threads(run)
    assert_same(res)
    # NumPy reference: block maxima, then maxima of groups of F, level by level
    pad = -(-V.shape[1] // L) * L
    level = (
        np.pad(V, ((0, 0), (0, pad - V.shape[1])), constant_values=-np.inf).reshape(V.shape[0], -1, L).max(2)
    )
    for lev in range(len(offsets) - 1):
        np.testing.assert_array_equal(res[0][0][:, offsets[lev] : offsets[lev + 1]], level)
        g = -(-level.shape[1] // F) * F
        level = (
            np.pad(level, ((0, 0), (0, g - level.shape[1])), constant_values=-np.inf)
            .reshape(V.shape[0], -1, F)
            .max(2)
        )


@pytest.mark.parametrize("keys", ["int16", "float32"])
def test_ct_refresh_columns(problem, keys):
    W0, X, shift, _ = problem
    rng = np.random.default_rng(9)
    tree = {"leaf_block": 4, "fanout": 3, "radius": 0.0, "span_slots": 3, "keys": keys}
    base = make_index("correlation-tree", **tree).build(W0, shift, X)
    kscale, krel, kabs = base._keys
    m, n = W0.shape[0], X.shape[0]
    far = np.sort(rng.choice(m, 300, replace=False))
    use = rng.random(300) < 0.5  # half Gram, half direct
    cnt = np.zeros(m, np.int32)
    cnt[far] = rng.integers(0, 4, far.size)
    sid = rng.integers(0, n, (m, 3)).astype(np.int32)
    sc = rng.standard_normal((m, 3)) * 1e-2
    W = W0.copy()
    W[far] += rng.standard_normal((far.size, W.shape[1])) * 0.1

    def run():
        V, T = base._V.copy(), base._tmax.copy()
        K.ct_refresh_columns(W, far, use, cnt, sid, sc, base._G, X, V, T, 4, 3, base._offsets, base._keys)
        return V, T

    res = on_threads(run)
    assert_same(res)
    V, T = res[0]
    # NumPy reference: Gram columns, direct columns, untouched columns, rebuilt maxima
    ref = base._V.astype(np.float64) * kscale[:, None]  # the values the keys stand for
    for t, r in enumerate(far):
        if use[t]:
            col = ref[:, r].copy()
            for s in range(cnt[r]):
                col += sc[r, s] * base._G[:, sid[r, s]]
        else:
            col = X @ W[r]
        got = V[:, r].astype(np.float64) * kscale
        np.testing.assert_array_less(np.abs(got - col), krel * np.abs(col) + kabs + 1e-12)
    other = np.setdiff1d(np.arange(m), far)
    np.testing.assert_array_equal(V[:, other], base._V[:, other])
    T2 = np.empty_like(T)
    K.ct_build_maxima(V, 4, 3, base._offsets, T2)
    used = base._offsets[-1]  # the rows are padded to whole cache lines
    np.testing.assert_array_equal(T[:, :used], T2[:, :used])


def test_sparse_sgd_update(problem):
    W0, X, shift, truth = problem
    rng = np.random.default_rng(3)
    a = rng.choice([-1.0, 1.0], W0.shape[0])
    coef = rng.standard_normal(X.shape[0])
    indptr = np.concatenate([[0], np.cumsum([t.size for t in truth])]).astype(np.int64)
    indices = np.concatenate(truth).astype(np.int64)

    def run():
        W = W0.copy()
        rows, norms = K.sparse_sgd_update(W, a, 0.25, X, coef, indptr, indices)
        return W, rows, norms

    res = on_threads(run)
    assert_same(res)  # the same bits and row order on any thread count
    W, rows, norms = res[0]
    # serial reference: queries in order, each adding its step to its fired rows
    Wr = W0.copy()
    bound = np.zeros(W0.shape[0])
    for q in range(X.shape[0]):
        for r in truth[q]:
            g = 0.25 * coef[q] * a[r]
            Wr[r] -= g * X[q]
            bound[r] += abs(g) * np.linalg.norm(X[q])
    np.testing.assert_array_equal(W, Wr)
    np.testing.assert_array_equal(rows, np.unique(indices))
    np.testing.assert_allclose(norms, bound[rows], rtol=1e-14)
    bad = indices.copy()
    q = next(q for q in range(X.shape[0]) if truth[q].size > 1)
    bad[indptr[q] : indptr[q + 1]] = bad[indptr[q] : indptr[q + 1]][::-1]
    with pytest.raises(ValueError, match="ascending"):
        K.sparse_sgd_update(W0.copy(), a, 0.25, X, coef, indptr, bad)


@pytest.mark.parametrize("exact", [False, True], ids=["step-norms", "exact-drift"])
def test_ct_note_update_parallel_drift_equals_serial(exact):
    """Ascending rows take the parallel drift pass; the same rows shuffled take the serial loop."""
    rng = np.random.default_rng(5)
    m, d, k = 5000, 4, 1500
    W = rng.standard_normal((m, d))
    Wref = W.copy()
    rows = np.sort(rng.choice(m, k, replace=False))
    W[rows] += rng.standard_normal((k, d)) * rng.choice([1e-3, 0.2], k)[:, None]  # some pass the radius
    norms = np.linalg.norm(W[rows] - Wref[rows], axis=1) * (1 + 1e-9)
    drift0 = rng.random(m) * 0.01
    e = np.zeros(0, np.int64)
    no_span = (False, e, np.zeros(1, np.int64), e, np.zeros(0), np.zeros(1))
    slots = (np.full(m, -1, np.int32), np.zeros((m, 0), np.int32), np.zeros((m, 0)))

    def run(order):
        drift = drift0.copy()
        r = rows[order]
        far, dmax = K.ct_note_update(
            W, r, norms[order], exact, Wref, drift, 0.05, 3.0, *no_span, *slots, np.zeros(m, np.uint8)
        )
        return drift, far, np.array([dmax])

    parallel = on_threads(lambda: run(np.arange(k)))
    assert_same(parallel)
    serial = run(rng.permutation(k))
    assert_same([parallel[0], serial])
    assert 0 < parallel[0][1].size < k  # both kinds of rows occur


def test_sparse_forward(problem):
    W, X, shift, truth = problem
    a = np.random.default_rng(0).choice([-1.0, 1.0], W.shape[0])
    indptr = np.concatenate([[0], np.cumsum([t.size for t in truth])]).astype(np.int64)
    indices = np.concatenate(truth).astype(np.int64)
    res = on_threads(lambda: (K.sparse_forward(W, a, shift, X, indptr, indices),))
    assert_same(res)
    ref = np.maximum(X @ W.T - shift, 0.0) @ a / np.sqrt(W.shape[0])
    np.testing.assert_allclose(res[0][0], ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# kernels with a single-thread reference (``name_par`` beside ``name``): same bits
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs_problem():
    """Fired pairs of a small network as CSR over inputs and CSC over neurons, plus operands."""
    rng = np.random.default_rng(4)
    m, d, n = 600, 5, 20
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, n, d)
    indptr, indices = fired_sets(X @ W.T > 0.8)
    tptr, tind, _ = K.csr_transpose(indptr, indices, m)
    keys = np.repeat(np.arange(m), np.diff(tptr)) * n + tind  # CSC pair keys r n + i, ascending
    p = {"m": m, "n": n, "W": W, "X": X, "G": X @ X.T, "a": rng.choice([-1.0, 1.0], m), "keys": keys}
    p.update(csr=(indptr, indices), csc=(tptr, tind), urow=np.searchsorted(keys, np.arange(m + 1) * n))
    p.update(coef=rng.standard_normal(keys.size), z0=rng.standard_normal(keys.size))
    p.update(
        v=rng.standard_normal(n), U=rng.standard_normal((m, d)), delta=0.1 * rng.standard_normal(keys.size)
    )
    return p


def _fired_counts(kern, p):
    return (kern(*p["csr"], *p["csc"], p["n"]),)


def _jt_apply(kern, p):
    out = np.empty_like(p["W"])
    kern(*p["csc"], p["a"], p["X"], p["v"], 0.3, out)
    return (out,)


def _j_apply(kern, p):
    out = np.empty(p["n"])
    kern(*p["csr"], p["a"], p["X"], p["U"], 0.3, out)
    return (out,)


def _implicit_preacts(kern, p):
    ppos = np.arange(p["keys"].size)  # every fired pair is in the union pattern, in order
    return (kern(*p["csc"], ppos, p["keys"], p["urow"], p["coef"], p["z0"], p["G"], p["n"]),)


def _materialise_step(kern, p):
    W, rows, norms = p["W"].copy(), np.empty(p["m"], np.int64), np.empty(p["m"])
    k = kern(*p["csc"], p["delta"], p["X"], p["G"], W, rows, norms)
    return W, rows[:k], norms[:k]


def _srht_rows(kern, p):
    rng = np.random.default_rng(5)
    N = 1 << int(np.ceil(np.log2(p["W"].size)))
    rows = np.sort(rng.choice(N, size=16, replace=False))
    out = np.empty((16, p["n"]))
    kern(*p["csr"], p["a"], p["X"], rows, rng.choice([-1.0, 1.0], p["W"].size), 0.5, out)
    return (out,)


WITH_REFERENCE = {
    "fired_counts": _fired_counts,
    "jt_apply": _jt_apply,
    "j_apply": _j_apply,
    "implicit_preacts": _implicit_preacts,
    "materialise_step": _materialise_step,
    "srht_rows": _srht_rows,
}


def test_every_reference_pair_is_tested():
    assert {name[: -len("_par")] for name in dir(K) if name.endswith("_par")} == set(WITH_REFERENCE)


@pytest.mark.parametrize("name", sorted(WITH_REFERENCE))
def test_parallel_kernel_equals_its_reference(pairs_problem, name):
    run = WITH_REFERENCE[name]
    parallel = on_threads(lambda: run(getattr(K, f"{name}_par"), pairs_problem))
    assert_same(parallel)
    assert_same([parallel[0], run(getattr(K, name), pairs_problem)])
