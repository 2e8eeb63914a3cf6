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


def check_exact(name, W, X, shift):
    idx = make_index(name, **SMALL[name]).build(W, shift, X)
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


@pytest.mark.parametrize("name", list(INDEXES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fired_sets_equal_brute_force(name, case):
    _, W, X, shift = case
    check_exact(name, np.ascontiguousarray(W), X, shift)


@pytest.mark.parametrize("with_norms", [False, True], ids=["exact-drift", "step-norms"])
@pytest.mark.parametrize("name", list(INDEXES))
def test_updates_keep_answers_exact(name, with_norms):
    rng = np.random.default_rng(3)
    m, d = 800, 5
    W = rng.standard_normal((m, d))
    X = unit_rows(rng, 16, d)
    shift = 1.2
    params = dict(SMALL[name])
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
    with pytest.raises(SparsetrainError, match="index must be one of"):
        make_index("kd-forest")
    with pytest.raises(SparsetrainError, match="leaf_size"):
        make_index("halfspace-tree", leaf_size=0)
    with pytest.raises(SparsetrainError, match="unknown parameter"):
        make_index("brute-force", leaf_size=3)
    W = np.zeros((4, 2))
    with pytest.raises(SparsetrainError, match="X_train is required"):
        make_index("correlation-tree").build(W, 0.1)
    idx = make_index("correlation-tree").build(W, 0.1, np.eye(2))
    with pytest.raises(SparsetrainError, match="ids is required"):
        idx.query(np.eye(2))
    with pytest.raises(SparsetrainError, match="W must be a 2-D float64"):
        make_index("brute-force").build(W.astype(np.float32), 0.1)
    with pytest.raises(SparsetrainError, match="X must have shape"):
        make_index("brute-force").build(W, 0.1).query(np.ones((2, 3)))
