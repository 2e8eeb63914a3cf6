"""Dense reference vs autograd / finite differences, and sparse math from fired sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sublinear_helpers import unit_rows

from sparsetrain.errors import SparsetrainError
from sparsetrain.sublinear import (
    ShiftedReLUNetwork,
    default_shift,
    dense_forward,
    dense_gradient,
    gaussian_tail,
    make_index,
    sparse_forward,
    sparse_gradient,
)


def test_default_shift_and_tail():
    m = 2**16
    b = default_shift(m)
    assert b == pytest.approx(math.sqrt(0.4 * math.log(m)))
    assert gaussian_tail(b) <= math.exp(-(b**2) / 2) == pytest.approx(m**-0.2)
    assert gaussian_tail(0.0) == 0.5


def test_init_is_seeded_and_shaped():
    a = ShiftedReLUNetwork.init(100, 3, seed=5)
    b = ShiftedReLUNetwork.init(100, 3, seed=5)
    np.testing.assert_array_equal(a.W, b.W)
    assert set(np.unique(a.a)) <= {-1.0, 1.0}
    assert a.W.shape == (100, 3) and a.shift == default_shift(100)
    with pytest.raises(SparsetrainError, match="The 'width' parameter must be an integer >= 1"):
        ShiftedReLUNetwork.init(0, 3)


def test_dense_gradient_matches_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    net = ShiftedReLUNetwork.init(300, 6, shift=0.8, seed=1)
    X = unit_rows(rng, 10, 6)
    y = rng.standard_normal(10)
    G, loss = dense_gradient(net.W, net.a, net.shift, X, y)
    Wt = torch.tensor(net.W, requires_grad=True)
    f = torch.relu(torch.tensor(X) @ Wt.T - net.shift) @ torch.tensor(net.a) / math.sqrt(300)
    lt = 0.5 * torch.mean((f - torch.tensor(y)) ** 2)
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(G, Wt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_dense_gradient_matches_finite_differences(rng):
    net = ShiftedReLUNetwork.init(40, 3, shift=0.3, seed=2)
    X = unit_rows(rng, 5, 3)
    y = rng.standard_normal(5)
    G, _ = dense_gradient(net.W, net.a, net.shift, X, y)
    eps = 1e-6
    for r, j in [(0, 0), (5, 2), (17, 1), (39, 0)]:
        Wp, Wm = net.W.copy(), net.W.copy()
        Wp[r, j] += eps
        Wm[r, j] -= eps
        lp = 0.5 * np.mean((dense_forward(Wp, net.a, net.shift, X)[0] - y) ** 2)
        lm = 0.5 * np.mean((dense_forward(Wm, net.a, net.shift, X)[0] - y) ** 2)
        assert G[r, j] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-9)


def test_sparse_forward_and_gradient_equal_dense(rng):
    net = ShiftedReLUNetwork.init(2000, 8, seed=3)
    X = unit_rows(rng, 9, 8)
    y = rng.standard_normal(9)
    fired = make_index("brute-force").build(net.W, net.shift).query(X)
    f_dense, _ = dense_forward(net.W, net.a, net.shift, X)
    np.testing.assert_allclose(
        sparse_forward(net.W, net.a, net.shift, X, fired), f_dense, rtol=1e-12, atol=1e-14
    )
    G, loss = dense_gradient(net.W, net.a, net.shift, X, y)
    rows, Gs, loss_s = sparse_gradient(net.W, net.a, net.shift, X, y, fired)
    assert loss_s == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(Gs, G[rows], rtol=1e-10, atol=1e-15)
    rest = np.setdiff1d(np.arange(2000), rows)
    assert not G[rest].any()  # non-fired neurons have exactly zero gradient
