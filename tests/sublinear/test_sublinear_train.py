"""SGD with identification equals dense SGD; counters and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from sparsetrain.errors import SparsetrainError
from sparsetrain.sublinear import EXACT_INDEXES, ShiftedReLUNetwork, synthetic, train_sgd


@pytest.fixture(scope="module")
def problem():
    X, y = synthetic(64, 6, seed=4)
    return X, y, ShiftedReLUNetwork.init(3000, 6, seed=9)


def run(problem, index, **kw):
    X, y, net0 = problem
    net = ShiftedReLUNetwork(W=net0.W.copy(), a=net0.a, shift=net0.shift)
    res = train_sgd(net, X, y, index=index, lr=2.0, batch_size=8, n_iter=100, seed=11, **kw)
    return net, res


@pytest.fixture(scope="module")
def dense_run(problem):
    return run(problem, "dense", eval_every=25)


def test_dense_sgd_decreases_loss(dense_run):
    _, res = dense_run
    tl = [v for v in res.history["train_loss"] if not np.isnan(v)]
    assert tl[-1] < tl[0]


@pytest.mark.parametrize("index", EXACT_INDEXES)
def test_sgd_with_exact_index_equals_dense(problem, dense_run, index):
    ref, ref_res = dense_run
    net, res = run(problem, index)
    np.testing.assert_allclose(net.W, ref.W, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(res.history["batch_loss"], ref_res.history["batch_loss"], rtol=1e-9)
    np.testing.assert_array_equal(res.history["fired_per_input"], ref_res.history["fired_per_input"])
    np.testing.assert_array_equal(res.history["neurons_updated"], ref_res.history["neurons_updated"])
    assert res.index.stats["rows_updated"] == sum(res.history["neurons_updated"])
    assert min(res.history["t_identify"]) > 0 and min(res.history["t_maintain"]) > 0


def test_lsh_sgd_runs_and_stays_close(problem, dense_run):
    ref, _ = dense_run
    net, res = run(problem, "simhash-lsh")
    assert np.isfinite(net.W).all()
    rel = np.linalg.norm(net.W - ref.W) / np.linalg.norm(ref.W - problem[2].W)
    assert rel < 0.5  # approximate, but most of the update is found


def test_same_seed_same_result(problem):
    a, _ = run(problem, "correlation-tree")
    b, _ = run(problem, "correlation-tree")
    np.testing.assert_array_equal(a.W, b.W)


def test_bad_arguments(problem):
    X, y, net = problem
    with pytest.raises(SparsetrainError, match=r"The 'index' parameter must be one of \['dense', "):
        train_sgd(net, X, y, index="nope")
    with pytest.raises(SparsetrainError, match="The 'lr' parameter must be a float"):
        train_sgd(net, X, y, lr=-1.0)
    with pytest.raises(SparsetrainError, match="The 'batch_size' parameter must be at most"):
        train_sgd(net, X, y, batch_size=1000)
    with pytest.raises(SparsetrainError, match="X has 3 features but the network takes 6 inputs"):
        train_sgd(net, X[:, :3], y)


def test_sparse_update_returns_step_norm_bounds(rng):
    from sparsetrain.sublinear import _kernels as K
    from sparsetrain.sublinear import make_index

    net = ShiftedReLUNetwork.init(500, 4, shift=0.5, seed=0)
    X, y = synthetic(8, 4, seed=1)
    indptr, indices = make_index("brute-force").build(net.W, net.shift).query(X)
    W0 = net.W.copy()
    rows, norms = K.sparse_sgd_update(net.W, net.a, 0.3, X, y, indptr, indices)
    np.testing.assert_array_equal(rows, np.unique(indices))  # ascending, each row once
    moved = np.linalg.norm(net.W[rows] - W0[rows], axis=1)
    assert np.all(moved <= norms * (1 + 1e-12)) and np.all(norms > 0)
    untouched = np.setdiff1d(np.arange(500), rows)
    np.testing.assert_array_equal(net.W[untouched], W0[untouched])
