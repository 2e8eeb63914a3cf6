"""Every exact index returns exactly the brute-force fired set (property test over INDEXES)."""

from __future__ import annotations

import numpy as np
import pytest
from sublinear_helpers import unit_rows

from sparsetrain.errors import SparsetrainError
from sparsetrain.sublinear import _kernels as K
from sparsetrain.sublinear.indexes import EXACT_INDEXES, INDEXES, make_index, recall

# small parameters so trees have several levels even for small m
SMALL = {
    "brute-force": {"block": 37},
    "halfspace-tree": {"leaf_size": 4},
    "correlation-tree": {"leaf_block": 4, "radius": 0.05, "fanout": 3},
    "simhash-lsh": {"n_tables": 8},
}


def truth_sets(W, X, shift):
    Z = K.canonical_dots(W, X)  # (B, m) canonical float64 dots
    return [np.flatnonzero(Z[q] > shift) for q in range(X.shape[0])]


def fired_lists(idx, X):
    indptr, indices = idx.query(X, np.arange(X.shape[0]))
    return [np.sort(indices[indptr[q] : indptr[q + 1]]) for q in range(X.shape[0])]


#: every index with its small parameters, and the correlation tree with float32 keys too
CONFIGS = [(name, SMALL[name]) for name in INDEXES] + [
    ("correlation-tree", {**SMALL["correlation-tree"], "keys": "float32"})
]
CONFIG_IDS = [name + ("-" + p["keys"] if "keys" in p else "") for name, p in CONFIGS]


def check_exact(name, W, X, shift, params=None):
    idx = make_index(name, **(SMALL[name] if params is None else params)).build(W, shift, X)
    got = fired_lists(idx, X)
    want = truth_sets(W, X, shift)
    for q in range(X.shape[0]):
        if INDEXES[name].exact:
            np.testing.assert_array_equal(got[q], want[q], err_msg=f"{name} query {q}")
        else:  # approximate: verified candidates only, never a false positive
            assert np.isin(got[q], want[q]).all()
    return idx


def adversarial_cases():
    rng = np.random.default_rng(7)
    cases = []
    # random, default-like shift
    W = rng.standard_normal((500, 6))
    X = unit_rows(rng, 12, 6)
    cases.append(("random", W, X, np.sqrt(0.4 * np.log(500))))
    # ties: the shift equals the canonical dot of some (row, input) pairs
    Z = K.canonical_dots(W, X)
    cases.append(("tie-canonical", W, X, float(Z[0, 17])))
    # exact ties on an axis: x = e_0, w_r0 = b for many rows, neighbours one ulp away
    b = 1.25
    W2 = rng.standard_normal((300, 3))
    W2[:100, 0] = b
    W2[100:150, 0] = np.nextafter(b, np.inf)
    W2[150:200, 0] = np.nextafter(b, -np.inf)
    X2 = np.eye(3)[[0, 0, 1]].copy()
    cases.append(("tie-axis", W2, X2, b))
    # near ties: rows nudged so their dots with x land within a few ulps of b
    x = unit_rows(rng, 1, 8)
    W3 = rng.standard_normal((400, 8))
    s = K.canonical_dots(W3, x)[0]
    W3 += np.outer((1.3 - s), x[0])  # now <w_r, x> ~= 1.3 up to rounding
    cases.append(("near-tie", W3, np.vstack([x, unit_rows(rng, 3, 8)]), 1.3))
    # duplicate weights: all rows equal, and half the rows equal
    W4 = np.tile(rng.standard_normal((1, 5)), (257, 1))
    X4 = unit_rows(rng, 5, 5)
    cases.append(("all-duplicate", W4, X4, float(K.canonical_dots(W4[:1], X4[:1])[0, 0])))
    W5 = rng.standard_normal((300, 5))
    W5[::2] = W5[1]
    cases.append(("half-duplicate", W5, X4, float(K.canonical_dots(W5[1:2], X4[2:3])[0, 0])))
    # d = 1 and m = 1, shift 0 and negative
    W6 = rng.standard_normal((200, 1))
    W6[:20] = 0.0
    X6 = np.array([[1.0], [-1.0]])
    cases.append(("d=1", W6, X6, 0.0))
    cases.append(("d=1-neg", W6, X6, -0.5))
    cases.append(("m=1", rng.standard_normal((1, 4)), unit_rows(rng, 6, 4), 0.1))
    cases.append(("m=1-d=1", np.array([[0.7]]), np.array([[1.0], [-1.0]]), 0.7))
    return cases


CASES = adversarial_cases()


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fired_sets_equal_brute_force(name, params, case):
    _, W, X, shift = case
    check_exact(name, np.ascontiguousarray(W), X, shift, params)


@pytest.mark.parametrize("with_norms", [False, True], ids=["exact-drift", "step-norms"])
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_updates_keep_answers_exact(name, params, with_norms):
    rng = np.random.default_rng(3)
    m, d = 800, 5
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, 16, d)
    shift = 1.2
    params = dict(params)
    if name == "halfspace-tree":
        params["rebuild_factor"] = 0.3  # force a rebuild in between
    idx = make_index(name, **params).build(W, shift, X)
    for step in range(6):
        rows = rng.choice(m, size=60, replace=False)
        scale = 0.01 if step % 2 else 0.5  # small drifts and jumps beyond the radius
        old = W[rows].copy()
        W[rows] += scale * rng.standard_normal((60, d))
        W[rows[:5], 0] = shift / X[0, 0] if X[0, 0] != 0 else W[rows[:5], 0]  # near-ties
        norms = np.linalg.norm(W[rows] - old, axis=1) if with_norms else None
        idx.update(rows, norms)
        got = fired_lists(idx, X)
        want = truth_sets(W, X, shift)
        for q in range(X.shape[0]):
            if INDEXES[name].exact:
                np.testing.assert_array_equal(got[q], want[q])
            else:
                assert np.isin(got[q], want[q]).all()
    if name == "halfspace-tree":
        assert idx.stats["rebuilds"] >= 1
    if name == "correlation-tree":
        assert idx.stats["rebuilds"] >= 1  # re-anchored neurons


@pytest.mark.parametrize("with_norms", [False, True], ids=["exact-drift", "step-norms"])
def test_int16_keys_saturate_and_stay_exact(with_norms):
    """Weights grown far past the build's largest norm: re-anchored keys saturate, answers stay exact."""
    rng = np.random.default_rng(12)
    m, d = 600, 4
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, 10, d)
    shift = 0.8
    idx = make_index("correlation-tree", leaf_block=4, fanout=3, keys="int16").build(W, shift, X)
    for scale in (8.0, -8.0, 0.05):  # grow both signs far past the key range, then shrink
        rows = rng.choice(m, size=80, replace=False)
        old = W[rows].copy()
        W[rows] *= scale
        idx.update(rows, np.linalg.norm(W[rows] - old, axis=1) * (1 + 1e-12) if with_norms else None)
        if scale > 1:
            assert (np.abs(idx._V) == K.KEY_MAX).any()  # some keys really are saturated
        got = fired_lists(idx, X)
        want = truth_sets(W, X, shift)
        for q in range(X.shape[0]):
            np.testing.assert_array_equal(got[q], want[q])
    err, bound = stored_value_bound(idx, W, X)
    sat = np.abs(idx._V) == K.KEY_MAX
    assert (err[~sat] <= bound[~sat]).all()  # unsaturated keys are within their bound


def test_index_bytes_per_pair():
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((4096, 4)), unit_rows(rng, 8, 4)
    got = {
        k: make_index("correlation-tree", keys=k).build(W, 1.0, X).bytes_per_pair
        for k in ("int16", "float32")
    }
    # keys, plus the tree's 256 + 16 + 1 maxima per point padded to whole 64-byte lines (288)
    assert got["int16"] == pytest.approx(2 * (4096 + 288) / 4096)
    assert got["float32"] == pytest.approx(4 * (4096 + 288) / 4096)


def test_exact_table_lists_the_exact_indexes():
    assert set(EXACT_INDEXES) == {"brute-force", "halfspace-tree", "correlation-tree"}


def test_lsh_recall_on_gaussian_data():
    rng = np.random.default_rng(0)
    m, d = 4096, 16
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, 32, d)
    b = np.sqrt(0.4 * np.log(m))
    truth = make_index("brute-force").build(W, b).query(X)
    got = make_index("simhash-lsh").build(W, b).query(X)
    assert recall(got, truth) >= 0.9
    assert recall(truth, truth) == 1.0


def test_canonical_dots_match_numpy(rng):
    W = rng.standard_normal((50, 7))
    X = unit_rows(rng, 4, 7)
    np.testing.assert_allclose(K.canonical_dots(W, X), X @ W.T, rtol=1e-12, atol=1e-12)


def test_output_buffer_grows(rng):
    # every neuron fires: the output buffer must grow past its initial capacity
    W = np.abs(rng.standard_normal((3000, 2))) + 1.0
    X = np.array([[0.6, 0.8]])
    for name in EXACT_INDEXES:
        idx = make_index(name).build(W, 0.5, X)
        indptr, _ = idx.query(X, np.array([0]))
        assert indptr[-1] == 3000, name


def test_bad_parameters_raise():
    with pytest.raises(SparsetrainError, match="The 'index' parameter must be one of"):
        make_index("kd-forest")
    with pytest.raises(SparsetrainError, match="leaf_size"):
        make_index("halfspace-tree", leaf_size=0)
    with pytest.raises(SparsetrainError, match=r"The 'leaf_block' parameter must be an integer in \[1, 64\]"):
        make_index("correlation-tree", leaf_block=65)
    with pytest.raises(SparsetrainError, match="The 'keys' parameter must be one of"):
        make_index("correlation-tree", keys="float16")
    with pytest.raises(SparsetrainError, match="unknown parameter"):
        make_index("brute-force", leaf_size=3)
    W = np.zeros((4, 2))
    with pytest.raises(SparsetrainError, match="The 'X_train' parameter must be the training set"):
        make_index("correlation-tree").build(W, 0.1)
    idx = make_index("correlation-tree").build(W, 0.1, np.eye(2))
    with pytest.raises(SparsetrainError, match="The 'ids' parameter must be the training-set row of each"):
        idx.query(np.eye(2))
    with pytest.raises(SparsetrainError, match="The 'W' parameter must be a 2-D float64"):
        make_index("brute-force").build(W.astype(np.float32), 0.1)
    with pytest.raises(SparsetrainError, match=r"The 'X' parameter must be an array of shape \(B, 2\)"):
        make_index("brute-force").build(W, 0.1).query(np.ones((2, 3)))


# ---------------------------------------------------------------------------
# correlation tree: Gram-matrix maintenance (SPEC 2.2 a)
# ---------------------------------------------------------------------------


def sgd_steps(idx, W, a, X, y, n_steps, seed, lr=3.0, batch=8, coefs=True):
    """SGD on the shifted-ReLU net with the index's fired sets; tells the index each step."""
    from sparsetrain.sublinear.indexes import SpanUpdate

    rng = np.random.default_rng(seed)
    m = W.shape[0]
    step = lr / (batch * np.sqrt(m))
    for _ in range(n_steps):
        ids = np.sort(rng.choice(X.shape[0], size=batch, replace=False))
        indptr, indices = idx.query(X[ids], ids)
        f = K.sparse_forward(W, a, idx.shift, X[ids], indptr, indices)
        res = f - y[ids]
        rows, norms = K.sparse_sgd_update(W, a, step, X[ids], res, indptr, indices)
        idx.update(rows, norms, SpanUpdate(ids, indptr, indices, -(step * res), a) if coefs else None)


def stored_value_bound(idx, W, X):
    """|V[i, r] - canonical <w_r, x_i>| and the bound the index relies on (same shapes)."""
    Z = K.canonical_dots(W, X)  # (n, m)
    kscale, krel, kabs = idx._keys
    V = idx._V.astype(np.float64) * kscale[:, None]  # the stored values the keys stand for
    err = np.abs(V - Z)
    key_err = krel * np.abs(V) + kabs[:, None]
    bound = key_err + idx._drift[None, :] * idx._xnorm[:, None] + idx._aerr[None, :] + idx._tol()
    return err, bound


@pytest.mark.parametrize("radius", [0.0, 0.02], ids=["eager", "lazy"])
def test_gram_updates_keep_values_and_fired_sets_exact(radius):
    rng = np.random.default_rng(21)
    m, d, n = 1500, 6, 40
    W = rng.standard_normal((m, d))
    a = rng.choice([-1.0, 1.0], m)
    X = unit_rows(rng, n, d)
    y = rng.standard_normal(n)
    shift = 1.0
    tree = {"radius": radius, "leaf_block": 4, "fanout": 3, "span_slots": 4, "keys": "float32"}
    idx = make_index("correlation-tree", **tree).build(W, shift, X)
    sgd_steps(idx, W, a, X, y, n_steps=150, seed=5)
    st = idx.stats
    assert st["reanchored_gram"] > 0, st
    if radius == 0.0:  # eager: every re-anchor spans one step's inputs, so Gram nearly always
        assert st["reanchored_gram"] > 10 * st["reanchored_direct"], st
        assert idx._aerr.max() > 0  # Gram-derived anchors carry a (bounded) error
    err, bound = stored_value_bound(idx, W, X)
    assert (err <= bound).all(), float((err - bound).max())
    assert idx._aerr.max() <= idx.aerr_cap()
    got = fired_lists(idx, X)
    want = truth_sets(W, X, shift)
    for q in range(n):
        np.testing.assert_array_equal(got[q], want[q])


def test_gram_anchor_values_match_direct_recompute():
    # eager Gram maintenance vs an index that recomputes every anchor directly
    rng = np.random.default_rng(8)
    m, d, n = 600, 5, 24
    W0 = rng.standard_normal((m, d))
    a = rng.choice([-1.0, 1.0], m)
    X = unit_rows(rng, n, d)
    y = rng.standard_normal(n)
    W1, W2 = W0.copy(), W0.copy()
    gram = make_index("correlation-tree", radius=0.0, span_slots=2, keys="float32").build(W1, 0.8, X)
    direct = make_index("correlation-tree", radius=0.0, span_slots=0, keys="float32").build(W2, 0.8, X)
    sgd_steps(gram, W1, a, X, y, n_steps=60, seed=1)
    sgd_steps(direct, W2, a, X, y, n_steps=60, seed=1)
    np.testing.assert_array_equal(W1, W2)  # same fired sets, so the same SGD trajectory
    assert gram.stats["reanchored_gram"] > 0 and direct.stats["reanchored_gram"] == 0
    Vg, Vd = gram._V.astype(np.float64), direct._V.astype(np.float64)
    bound = K.F32_REL * (np.abs(Vg) + np.abs(Vd)) + gram._aerr[None, :] + gram._tol() + direct._tol()
    assert (np.abs(Vg - Vd) <= bound).all()
    assert np.abs(Vg - Vd).max() > 0  # the Gram path really produced its own values
    np.testing.assert_array_equal(gram._tmax[:, : gram._offsets[-1]], K_tmax_from(gram))


def K_tmax_from(idx):
    """Max trees rebuilt from scratch from the index's stored values (without the row padding)."""
    t = np.empty_like(idx._tmax)
    K.ct_build_maxima(idx._V, idx.leaf_block, idx.fanout, idx._offsets, t)
    return t[:, : idx._offsets[-1]]


def test_wrong_or_missing_coefficients_fall_back_to_direct():
    from sparsetrain.sublinear.indexes import SpanUpdate

    rng = np.random.default_rng(4)
    m, d, n = 300, 4, 10
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, n, d)
    idx = make_index("correlation-tree", radius=0.0, leaf_block=4, fanout=3).build(W, 0.9, X)
    rows = np.arange(0, m, 3)
    ids = np.array([2])
    old = W[rows].copy()
    W[rows] += 0.3 * X[2]  # the true change: +0.3 x_2 ...
    coefs = SpanUpdate(ids, np.array([0, rows.size]), rows, np.array([0.1]))  # ... claimed: +0.1 x_2
    idx.update(rows, np.linalg.norm(W[rows] - old, axis=1), coefs)
    assert idx.stats["reanchored_direct"] == rows.size and idx.stats["reanchored_gram"] == 0
    W[rows] -= 0.05 * X[5]
    idx.update(rows, np.full(rows.size, 0.05))  # no coefficients: direct
    assert idx.stats["reanchored_gram"] == 0
    err, bound = stored_value_bound(idx, W, X)
    assert (err <= bound).all()
    got, want = fired_lists(idx, X), truth_sets(W, X, 0.9)
    for q in range(n):
        np.testing.assert_array_equal(got[q], want[q])
    with pytest.raises(SparsetrainError, match="The 'coefs' parameter must be a SpanUpdate"):
        idx.update(rows, None, SpanUpdate(ids, np.array([0, 1]), rows, np.array([0.1])))
