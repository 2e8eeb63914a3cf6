"""Gauss-Newton: Gram form vs explicit J, sublinear == dense, sketched CG == direct, damping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsetrain.errors import SparsetrainError
from sparsetrain.sublinear import ShiftedReLUNetwork, synthetic
from sparsetrain.sublinear import _kernels as K
from sparsetrain.sublinear import gauss_newton as gn
from sparsetrain.sublinear import sketch as sk
from sparsetrain.sublinear.ntk import ntk_gram, ntk_regression


@pytest.fixture(scope="module")
def small():
    X, y = synthetic(24, 5, seed=3)
    net = ShiftedReLUNetwork.init(1500, 5, seed=7)
    return X, y, net


def copy(net):
    return ShiftedReLUNetwork(W=net.W.copy(), a=net.a, shift=net.shift)


def fired_csr(net, X):
    A = X @ net.W.T > net.shift
    ii, rr = np.nonzero(A)
    indptr = np.zeros(X.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(ii, minlength=X.shape[0]), out=indptr[1:])
    return indptr, rr.astype(np.int64)


def test_gram_form_equals_explicit_jacobian(small):
    X, _, net = small
    J = gn.jacobian_dense(net.W, net.a, net.shift, X)  # (n, m d)
    K_par = gn.fired_gram(fired_csr(net, X), X @ X.T, net.width)
    K_ser = gn.fired_gram(fired_csr(net, X), X @ X.T, net.width, parallel=False)
    np.testing.assert_allclose(K_par, J @ J.T, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(K_par, K_ser)


def test_explicit_jacobian_is_the_derivative(small):
    X, _, net = small
    J = gn.jacobian_dense(net.W, net.a, net.shift, X)
    rng = np.random.default_rng(0)
    V = rng.standard_normal(net.W.shape) * 1e-7  # small: no status flips
    f1 = ShiftedReLUNetwork(net.W + V, net.a, net.shift).predict(X)
    np.testing.assert_allclose(f1 - net.predict(X), J @ V.ravel(), rtol=1e-5, atol=1e-13)


def test_dense_step_equals_explicit_jacobian_step(small):
    X, y, net0 = small
    net = copy(net0)
    J = gn.jacobian_dense(net0.W, net0.a, net0.shift, X)
    r = net0.predict(X) - y
    K = J @ J.T
    lam = gn.DEFAULT_DAMPING * np.trace(K) / K.shape[0]
    g = np.linalg.solve(K + lam * np.eye(K.shape[0]), r)
    W_ref = net0.W - 0.7 * (J.T @ g).reshape(net0.W.shape)
    gn.train_gn(net, X, y, method="gn", lr=0.7, n_iter=1)
    np.testing.assert_allclose(net.W, W_ref, rtol=1e-10, atol=1e-13)


def trajectory(net0, X, y, method, n_iter=10, **kw):
    net = copy(net0)
    out = []
    res = gn.train_gn(
        net,
        X,
        y,
        method=method,
        n_iter=n_iter,
        callback=lambda t, row, s: out.append(s.weights().copy()),
        **kw,
    )
    return np.array(out), res


@pytest.fixture(scope="module")
def dense_traj(small):
    X, y, net = small
    return trajectory(net, X, y, "gn", lr=0.8)


@pytest.mark.parametrize(
    ("index", "parallel"),
    [
        ("correlation-tree", True),
        ("correlation-tree", False),
        ("brute-force", True),
        ("halfspace-tree", True),
    ],
)
def test_sublinear_iterates_equal_dense(small, dense_traj, index, parallel):
    X, y, net = small
    ref, ref_res = dense_traj
    got, res = trajectory(net, X, y, "gn-sublinear", lr=0.8, parallel=parallel, index=index)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-12 * scale)
    np.testing.assert_allclose(res.history["train_loss"], ref_res.history["train_loss"], rtol=1e-9)
    assert res.history["flips"] == ref_res.history["flips"]  # same fired pairs, iteration by iteration
    np.testing.assert_allclose(res.net.W, ref[-1], rtol=1e-5, atol=1e-12 * scale)
    # the index's explicit copy of the weights agrees with the implicit representation
    np.testing.assert_allclose(res.solver.index.W, ref[-1], rtol=1e-5, atol=1e-12 * scale)


@pytest.mark.parametrize("method", ["gn-sketch", "gn-sublinear"])
def test_sketched_cg_iterates_match_dense(small, dense_traj, method):
    X, y, net = small
    ref, _ = dense_traj
    kw = {"solver": "sketch-cg"} if method == "gn-sublinear" else {}
    got, res = trajectory(net, X, y, method, lr=0.8, cg_tol=1e-10, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9 * np.abs(ref).max())
    assert max(res.history["cg_iters"]) > 0


@pytest.mark.parametrize("name", sorted(sk.SKETCHES))
@pytest.mark.parametrize("tol", [1e-4, 1e-10])
def test_every_sketch_pcg_agrees_with_direct_solve(small, name, tol):
    X, y, net = small
    fired = fired_csr(net, X)
    K = gn.fired_gram(fired, X @ X.T, net.width)
    lam = 1e-6 * np.trace(K) / K.shape[0]
    M = K + lam * np.eye(K.shape[0])
    rhs = net.predict(X) - y
    direct = np.linalg.solve(M, rhs)
    SJt = sk.sketch_jacobian_t(name, 4 * X.shape[0], fired, net.a, X, net.width, np.random.default_rng(1))
    R = sk.sketch_preconditioner(SJt, lam)
    x, its, rel = sk.pcg(lambda v: M @ v, rhs, R, tol=tol)
    assert rel <= tol
    np.testing.assert_allclose(M @ x, rhs, atol=tol * np.linalg.norm(rhs) * 1.0001)
    cond = np.linalg.cond(M)
    assert np.linalg.norm(x - direct) <= cond * tol * np.linalg.norm(direct) * 1.01
    # the sketch is a useful preconditioner: far fewer iterations than n or plain CG
    _, its_plain, _ = sk.pcg(lambda v: M @ v, rhs, None, tol=tol)
    assert its <= its_plain


@pytest.mark.parametrize("name", sorted(sk.SKETCHES))
def test_every_sketch_is_unbiased_embedding(small, name):
    X, _, net = small
    fired = fired_csr(net, X)
    J = gn.jacobian_dense(net.W, net.a, net.shift, X)
    v = np.random.default_rng(2).standard_normal(X.shape[0])
    exact = np.linalg.norm(J.T @ v) ** 2
    est = []
    for s in range(20):
        SJt = sk.sketch_jacobian_t(name, 64, fired, net.a, X, net.width, np.random.default_rng(s))
        est.append(np.linalg.norm(SJt @ v) ** 2)
    assert abs(np.mean(est) / exact - 1) < 0.15


def test_srht_parallel_equals_serial(small):
    X, _, net = small
    fired = fired_csr(net, X)
    a = sk._srht(32, *fired, net.a, X, net.width, np.random.default_rng(5), parallel=True)
    b = sk._srht(32, *fired, net.a, X, net.width, np.random.default_rng(5), parallel=False)
    np.testing.assert_array_equal(a, b)


def test_parallel_kernels_equal_serial(small):
    X, _, net = small
    indptr, indices = fired_csr(net, X)
    m = net.width
    tptr, tind, src = K.csr_transpose(indptr, indices, m)
    np.testing.assert_array_equal(indices[src], np.repeat(np.arange(m), np.diff(tptr)))
    v = np.random.default_rng(3).standard_normal(X.shape[0])
    U1, U2 = np.empty((m, 5)), np.empty((m, 5))
    K.jt_apply_par(tptr, tind, net.a, X, v, 0.1, U1)
    K.jt_apply(tptr, tind, net.a, X, v, 0.1, U2)
    np.testing.assert_array_equal(U1, U2)
    o1, o2 = np.empty(X.shape[0]), np.empty(X.shape[0])
    K.j_apply_par(indptr, indices, net.a, X, U1, 0.1, o1)
    K.j_apply(indptr, indices, net.a, X, U1, 0.1, o2)
    np.testing.assert_array_equal(o1, o2)
    J = gn.jacobian_dense(net.W, net.a, net.shift, X)
    np.testing.assert_allclose(o1, 0.01 * math.sqrt(m) ** 2 * (J @ (J.T @ v)), rtol=1e-10)


def test_geometric_convergence_small():
    X, y = synthetic(64, 8, seed=0)
    net = ShiftedReLUNetwork.init(2**13, 8, seed=0)
    res = gn.train_gn(net, X, y, method="gn-sublinear", n_iter=30)
    L = np.array(res.history["train_loss"])
    assert res.final_loss <= 1e-6 * L[0]
    assert np.all(np.diff(L[: np.argmax(L / L[0] < 1e-12)]) < 0)  # monotone until rounding level


def test_geometric_convergence_n256_d32_m65536():
    """The must-show: relative loss <= 1e-6 within 30 iterations at n=256, d=32, m=2^16."""
    X, y = synthetic(256, 32, seed=0)
    net = ShiftedReLUNetwork.init(2**16, 32, seed=0)
    L0 = net.loss(X, y)
    res = gn.train_gn(net, X, y, method="gn-sublinear", n_iter=30, target_loss=1e-7 * L0)
    assert res.final_loss <= 1e-6 * L0
    assert len(res.history["train_loss"]) <= 30


def test_duplicate_inputs_damped_not_nan():
    X, y = synthetic(20, 6, seed=1)
    X = np.vstack([X, X[:5]])  # exact duplicates: J J^T singular
    y = np.concatenate([y, -y[:5]])  # conflicting targets: loss cannot reach 0
    net = ShiftedReLUNetwork.init(4000, 6, seed=2)
    for method in gn.GN_METHODS:
        res = gn.train_gn(copy(net), X, y, method=method, n_iter=8)
        assert np.isfinite(res.net.W).all() and math.isfinite(res.final_loss)
        floor = np.sum(y[:5] ** 2) / X.shape[0]  # best for a pair (y, -y) is f = 0: y^2 / n
        assert floor * 0.99 <= res.final_loss <= res.history["train_loss"][0]
        assert res.final_loss < 1.05 * floor


def test_singular_system_raises_damping_with_warning():
    K = np.ones((4, 4))  # rank one
    r = np.array([1.0, -1.0, 2.0, 0.0])
    with pytest.warns(gn.DampingWarning):
        g, lam = gn.damped_solve(K, r, damping=0.0)
    assert lam > 0 and np.isfinite(g).all()


def test_ntk_gram_is_initial_gauss_newton_matrix(small):
    X, y, net = small
    J = gn.jacobian_dense(net.W, net.a, net.shift, X)
    np.testing.assert_allclose(ntk_gram(net, X), J @ J.T, rtol=1e-12, atol=1e-15)
    res = ntk_regression(net, X, y, X_test=X[:5], y_test=y[:5])
    assert res.train_loss < 1e-6 * res.init_loss
    assert res.test_loss < 1e-6 * res.init_loss  # test points from the training set


def test_ntk_analytic_kernel_is_infinite_width_limit():
    X, _ = synthetic(6, 4, seed=5)
    net = ShiftedReLUNetwork.init(2**17, 4, shift=1.0, seed=3)
    emp, ana = ntk_gram(net, X), ntk_gram(net, X, kernel="analytic")
    np.testing.assert_allclose(emp, ana, atol=0.01)


def test_bad_options():
    X, y = synthetic(8, 3, seed=0)
    net = ShiftedReLUNetwork.init(64, 3, seed=0)
    with pytest.raises(SparsetrainError, match="method"):
        gn.train_gn(net, X, y, method="newton")
    with pytest.raises(SparsetrainError, match="sketch"):
        gn.train_gn(net, X, y, method="gn-sketch", sketch="fjlt")
    with pytest.raises(SparsetrainError, match="cg_tol"):
        gn.train_gn(net, X, y, method="gn-sketch", cg_tol=2.0)
    with pytest.raises(SparsetrainError, match="unknown parameter"):
        gn.train_gn(net, X, y, method="gn", sketch_size=3)
    with pytest.raises(SparsetrainError, match="exact"):
        gn.train_gn(net, X, y, method="gn-sublinear", index="simhash-lsh")
    with pytest.raises(SparsetrainError, match="damping"):
        gn.train_gn(net, X, y, damping=-1.0)
