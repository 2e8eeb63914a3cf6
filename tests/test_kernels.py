"""Every compiled kernel against an independent NumPy/SciPy reference, and single-thread
against multi-thread (the parallel loops write disjoint outputs, so results are identical)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from sparsetrain import _kernels as K
from sparsetrain.layers import SparseLinear

EMPTY = np.empty((0, 0), np.float32)


def threads_agree(fn, *make_args):
    """Run ``fn(*args)`` with 1 thread and with all threads on fresh copies; return both outputs."""
    outs = []
    for n in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(n)
        try:
            args = make_args[0]()
            fn(*args)
            outs.append(args)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return outs


def random_layer(rng, n_in, n_out, nnz):
    keys = rng.choice(n_in * n_out, size=nnz, replace=False)
    layer = SparseLinear.from_coo(n_in, n_out, keys // n_out, keys % n_out,
                                  rng.standard_normal(nnz).astype(np.float32))
    layer.bias[:] = rng.standard_normal(n_out)
    return layer


# Sizes chosen so the unrolled loops see every remainder (rows with 0..12 connections).
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_sparse_forward_matches_dense(rng, batch):
    layer = random_layer(rng, 37, 23, 300)
    a = rng.standard_normal((37, batch)).astype(np.float32)
    W = layer.to_dense()  # (n_in, n_out)
    z = W.T.astype(np.float64) @ a + layer.bias[:, None]
    for act, slope in [(K.ACT_LINEAR, 0.0), (K.ACT_PIECEWISE, 0.0), (K.ACT_PIECEWISE, -0.6),
                       (K.ACT_PIECEWISE, 0.3), (K.ACT_SIGMOID, 0.0)]:
        def make(act=act, slope=slope):
            return (a, layer.col_ptr, layer.col_rows, layer.col_pos, layer.data, layer.bias, act,
                    np.float32(slope), np.float32(0.0), np.uint64(1),
                    np.empty((23, batch), np.float32), np.empty((23, batch), np.float32))
        one, many = threads_agree(K.sparse_forward, make)
        np.testing.assert_array_equal(one[10], many[10])
        np.testing.assert_array_equal(one[11], many[11])
        if act == K.ACT_LINEAR:
            f, d = z, np.ones_like(z)
        elif act == K.ACT_PIECEWISE:
            f, d = np.where(z > 0, z, slope * z), np.where(z > 0, 1.0, slope)
        else:
            f = 1 / (1 + np.exp(-z))
            d = f * (1 - f)
        np.testing.assert_allclose(one[10], f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(one[11], d, rtol=1e-5, atol=1e-5)


def reference_uniform(seed, counter):
    """Independent NumPy implementation of the counter-based generator (splitmix64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.asarray(counter, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def dropout_mask(seed, n_out, batch, rate):
    counters = np.arange(n_out * batch, dtype=np.uint64).reshape(n_out, batch)
    return reference_uniform(seed, counters) >= rate


def test_dropout_is_inverted_and_reproducible(rng):
    layer = random_layer(rng, 50, 400, 4000)
    a = rng.standard_normal((50, 64)).astype(np.float32)
    rate, seed = 0.3, 987654321

    def make():
        return (a, layer.col_ptr, layer.col_rows, layer.col_pos, layer.data, layer.bias,
                K.ACT_PIECEWISE, np.float32(0.0), np.float32(rate), np.uint64(seed),
                np.empty((400, 64), np.float32), np.empty((400, 64), np.float32))

    one, many = threads_agree(K.sparse_forward, make)
    np.testing.assert_array_equal(one[10], many[10])
    z = layer.to_dense().T @ a + layer.bias[:, None]
    keep = dropout_mask(seed, 400, 64, rate)
    expect = np.where(keep, np.maximum(z, 0) / (1 - rate), 0.0)
    np.testing.assert_allclose(one[10], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one[11], np.where(keep, (z > 0) / (1 - rate), 0.0), rtol=1e-6)
    assert abs(keep.mean() - (1 - rate)) < 0.01  # 25600 draws: 5 sigma is about 0.0145
    # A different seed gives a different mask.
    assert (dropout_mask(seed + 1, 400, 64, rate) != keep).mean() > 0.3


@pytest.mark.parametrize("want_prev", [True, False])
def test_sparse_backward_matches_dense(rng, want_prev):
    layer = random_layer(rng, 41, 29, 500)
    batch = 19
    a = rng.standard_normal((41, batch)).astype(np.float32)
    delta = rng.standard_normal((29, batch)).astype(np.float32)
    dfac = rng.standard_normal((41, batch)).astype(np.float32)

    def make():
        prev = np.empty((41, batch), np.float32) if want_prev else EMPTY
        return (a, delta, layer.row_ptr, layer.row_cols, layer.data,
                dfac if want_prev else EMPTY, np.float32(1 / batch),
                np.empty(layer.nnz, np.float32), prev, np.empty(0, np.float32),
                np.float32(0), np.float32(0), np.float32(0), False)

    one, many = threads_agree(K.sparse_backward, make)
    np.testing.assert_array_equal(one[7], many[7])
    dense_grad = (a.astype(np.float64) @ delta.T) / batch  # (n_in, n_out)
    np.testing.assert_allclose(one[7], dense_grad[layer.rows(), layer.row_cols], rtol=1e-4,
                               atol=1e-5)
    if want_prev:
        np.testing.assert_array_equal(one[8], many[8])
        expect = (layer.to_dense() @ delta) * dfac
        np.testing.assert_allclose(one[8], expect, rtol=1e-4, atol=1e-5)


def test_sparse_backward_fused_update(rng):
    """With update=True the kernel applies momentum SGD in place, using the gradient it
    would have returned and the pre-update weights for the delta."""
    layer = random_layer(rng, 41, 29, 500)
    batch = 19
    a = rng.standard_normal((41, batch)).astype(np.float32)
    delta = rng.standard_normal((29, batch)).astype(np.float32)
    dfac = rng.standard_normal((41, batch)).astype(np.float32)
    v0 = rng.standard_normal(layer.nnz).astype(np.float32)
    grad = np.empty(layer.nnz, np.float32)
    plain = np.empty((41, batch), np.float32)
    K.sparse_backward(a, delta, layer.row_ptr, layer.row_cols, layer.data, dfac,
                      np.float32(1 / batch), grad, plain, np.empty(0, np.float32),
                      np.float32(0), np.float32(0), np.float32(0), False)

    def make():
        return (a, delta, layer.row_ptr, layer.row_cols, layer.data.copy(), dfac,
                np.float32(1 / batch), np.empty(0, np.float32), np.empty((41, batch), np.float32),
                v0.copy(), np.float32(0.05), np.float32(0.9), np.float32(2e-4), True)

    one, many = threads_agree(K.sparse_backward, make)
    for k in (4, 8, 9):
        np.testing.assert_array_equal(one[k], many[k])
    np.testing.assert_array_equal(one[8], plain)  # delta from the weights before the step
    v = 0.9 * v0.astype(np.float64) - 0.05 * (grad + 2e-4 * layer.data)
    np.testing.assert_allclose(one[9], v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one[4], layer.data + v, rtol=1e-5, atol=1e-7)


def test_bias_step(rng):
    d = rng.standard_normal((31, 45)).astype(np.float32)
    b0 = rng.standard_normal(31).astype(np.float32)
    v0 = rng.standard_normal(31).astype(np.float32)
    one, many = threads_agree(K.bias_step, lambda: (d, b0.copy(), v0.copy(), np.float32(0.1),
                                                    np.float32(0.9)))
    np.testing.assert_array_equal(one[1], many[1])
    v = 0.9 * v0.astype(np.float64) - 0.1 * d.mean(axis=1)
    np.testing.assert_allclose(one[2], v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one[1], b0 + v, rtol=1e-5, atol=1e-7)


def test_gather_standardize(rng):
    X = rng.standard_normal((100, 13)).astype(np.float32)
    idx = rng.integers(0, 100, 17).astype(np.int64)
    mean = rng.standard_normal(13).astype(np.float32)
    inv = rng.uniform(0.5, 2, 13).astype(np.float32)
    one, many = threads_agree(K.gather_standardize,
                              lambda: (X, idx, mean, inv, np.empty((13, 17), np.float32)))
    np.testing.assert_array_equal(one[4], many[4])
    np.testing.assert_allclose(one[4], ((X[idx] - mean) * inv).T, rtol=1e-6)


def test_row_mean_and_momentum_sgd(rng):
    x = rng.standard_normal((31, 45)).astype(np.float32)
    one, many = threads_agree(K.row_mean, lambda: (x, np.empty(31, np.float32)))
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_allclose(one[1], x.mean(axis=1), rtol=1e-5, atol=1e-6)

    w0 = rng.standard_normal(1000).astype(np.float32)
    v0 = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    one, many = threads_agree(
        K.momentum_sgd, lambda: (w0.copy(), v0.copy(), g, np.float32(0.05), np.float32(0.9),
                                 np.float32(2e-4)))
    np.testing.assert_array_equal(one[0], many[0])
    v = 0.9 * v0.astype(np.float64) - 0.05 * (g + 2e-4 * w0)
    np.testing.assert_allclose(one[1], v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one[0], w0 + v, rtol=1e-5, atol=1e-7)


def test_csr_to_csc_matches_scipy(rng):
    layer = random_layer(rng, 60, 45, 700)
    csc = layer.to_scipy().tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(layer.col_ptr, csc.indptr)
    np.testing.assert_array_equal(layer.col_rows, csc.indices)
    np.testing.assert_array_equal(layer.data[layer.col_pos], csc.data)


def srelu_reference(z, p):
    tl, al, tr, ar = (p[k][:, None] for k in range(4))
    right, left = z >= tr, (z <= tl) & (z < tr)
    f = np.where(right, tr + ar * (z - tr), np.where(left, tl + al * (z - tl), z))
    d = np.where(right, ar, np.where(left, al, 1.0))
    return f, d, right, left


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_srelu_forward_backward(rng, rate):
    n, batch, seed = 40, 33, 77
    z = rng.standard_normal((n, batch)).astype(np.float32) * 3
    params = np.stack([rng.uniform(-2, 0, n), rng.uniform(0, 1, n), rng.uniform(0, 3, n),
                       rng.uniform(0.5, 1.5, n)]).astype(np.float32)  # t_l, a_l, t_r, a_r
    z[0, 0] = params[2, 0]  # ties at both thresholds take the documented branch
    z[1, 0] = params[0, 1]
    one, many = threads_agree(K.srelu_forward, lambda: (
        z.copy(), params, np.float32(rate), np.uint64(seed), np.empty((n, batch), np.float32),
        np.empty((n, batch), np.float32)))
    for k in (0, 4, 5):
        np.testing.assert_array_equal(one[k], many[k])
    f, d, right, left = srelu_reference(z.astype(np.float64), params)
    keep = dropout_mask(seed, n, batch, rate) / (1 - rate)
    np.testing.assert_allclose(one[0], f * keep, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(one[4], z)
    np.testing.assert_allclose(one[5], keep, rtol=1e-6)

    g = rng.standard_normal((n, batch)).astype(np.float32)
    one, many = threads_agree(K.srelu_backward, lambda: (
        z, g.copy(), params, np.float32(1 / batch), np.empty((4, n), np.float32)))
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_array_equal(one[4], many[4])
    np.testing.assert_allclose(one[1], g * d, rtol=1e-6)
    tl, al, tr, ar = params.astype(np.float64)
    expect = np.stack([
        (g * left * (1 - al[:, None])).mean(1), (g * left * (z - tl[:, None])).mean(1),
        (g * right * (1 - ar[:, None])).mean(1), (g * right * (z - tr[:, None])).mean(1)])
    np.testing.assert_allclose(one[4], expect, rtol=1e-4, atol=1e-6)


@numba.njit(parallel=True)
def _halve(x, out):
    for i in numba.prange(x.shape[0]):
        out[i] = x[i] * np.float32(0.5)


def test_flush_to_zero_in_every_thread():
    if not K._X86:
        pytest.skip("MXCSR flush-to-zero is x86 only")
    x = np.full(1024, np.finfo(np.float32).tiny, np.float32)  # halving gives a subnormal
    assert K.enable_flush_to_zero()
    out = np.ones_like(x)
    _halve(x, out)
    assert np.all(out == 0)  # both threads flushed
