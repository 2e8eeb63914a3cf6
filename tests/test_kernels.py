"""Every compiled kernel against an independent NumPy/SciPy reference, and single-thread
against multi-thread (the parallel loops write disjoint outputs, so results are identical)."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from sparsetrain import _kernels as K
from sparsetrain import optim
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


# Rows with 0..12 connections; batches that use every SIMD block width (8, 4 and 1
# vectors of 16 columns) and the scalar tail.
@pytest.mark.parametrize("batch", [1, 7, 87, 128, 151])
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
                    np.empty((23, batch), np.float32), np.empty((23, batch), np.float32),
                    np.int64(0))
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


def reference_row_key(seed, rows):
    """Independent NumPy implementation of the per-row key (splitmix64 of seed + row * golden)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.asarray(rows, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def reference_bits(seed, n_out, batch):
    """The 32 random bits of every (unit, sample): lowbias32(low32(key_j) + b * 0x9E3779B9)."""
    key = (reference_row_key(seed, np.arange(n_out)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    with np.errstate(over="ignore"):
        x = key[:, None] + np.arange(batch, dtype=np.uint32)[None, :] * np.uint32(0x9E3779B9)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def dropout_mask(seed, n_out, batch, rate):
    threshold = np.uint32(min(2**32 - 1, int(np.float64(np.float32(rate)) * 2**32)))
    return reference_bits(seed, n_out, batch) >= threshold


def test_dropout_bits_look_uniform():
    """The per-sample bits: uniform bytes, no correlation between neighbouring samples or
    rows, and independent of the other draws of the same seed."""
    bits = reference_bits(2024, 400, 256).astype(np.float64) / 2**32
    assert abs(bits.mean() - 0.5) < 0.002  # 102,400 draws: sd 0.0009
    assert abs(np.var(bits) - 1 / 12) < 0.002
    for a, b in ((bits[:, 1:], bits[:, :-1]), (bits[1:], bits[:-1])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.015
    hist = np.bincount((bits.ravel() * 64).astype(int), minlength=64)
    expect = bits.size / 64
    assert ((hist - expect) ** 2 / expect).sum() < 120  # chi2(63): p ~ 1e-5 at 120


# Batches with whole vector blocks only, and with a scalar tail; a first column col0 > 0
# (a micro-batch) draws the bits of samples col0 + b.
@pytest.mark.parametrize("batch,col0", [(64, 0), (151, 0), (48, 37)])
def test_dropout_is_inverted_and_reproducible(rng, batch, col0):
    layer = random_layer(rng, 50, 400, 4000)
    a = rng.standard_normal((50, batch)).astype(np.float32)
    rate, seed, slope = 0.3, 987654321, -0.4

    def make():
        return (a, layer.col_ptr, layer.col_rows, layer.col_pos, layer.data, layer.bias,
                K.ACT_PIECEWISE, np.float32(slope), np.float32(rate), np.uint64(seed),
                np.empty((400, batch), np.float32), np.empty((400, batch), np.float32),
                np.int64(col0))

    one, many = threads_agree(K.sparse_forward, make)
    np.testing.assert_array_equal(one[10], many[10])
    z = layer.to_dense().T @ a + layer.bias[:, None]
    keep = dropout_mask(seed, 400, col0 + batch, rate)[:, col0:]
    expect = np.where(keep, np.where(z > 0, z, slope * z) / (1 - rate), 0.0)
    np.testing.assert_allclose(one[10], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one[11], np.where(keep, np.where(z > 0, 1.0, slope) / (1 - rate),
                                                 0.0), rtol=1e-6)
    assert abs(keep.mean() - (1 - rate)) < 0.017  # >= 19200 draws: 5 sigma about 0.0165
    # A different seed gives a different mask.
    assert (dropout_mask(seed + 1, 400, batch, rate) != dropout_mask(seed, 400, batch,
                                                                      rate)).mean() > 0.3
    # Without the factor buffer, the same activations.
    args = list(make())
    args[11] = np.zeros((0, 0), np.float32)
    K.sparse_forward(*args)
    np.testing.assert_array_equal(args[10], one[10])


@pytest.mark.parametrize("batch", [19, 128, 151])
@pytest.mark.parametrize("want_prev", [True, False])
def test_sparse_backward_matches_dense(rng, want_prev, batch):
    layer = random_layer(rng, 41, 29, 500)
    a = rng.standard_normal((41, batch)).astype(np.float32)
    delta = rng.standard_normal((29, batch)).astype(np.float32)
    dfac = rng.standard_normal((41, batch)).astype(np.float32)

    def make():
        prev = np.empty((41, batch), np.float32) if want_prev else EMPTY
        return (a, delta, layer.row_ptr, layer.row_cols, layer.data,
                dfac if want_prev else EMPTY, np.float32(1 / batch),
                np.empty(layer.nnz, np.float32), prev, np.empty(0, np.float32),
                np.float32(0), np.float32(0), np.float32(0), K.GRAD_STORE)

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
                      np.float32(0), np.float32(0), np.float32(0), K.GRAD_STORE)

    def make():
        return (a, delta, layer.row_ptr, layer.row_cols, layer.data.copy(), dfac,
                np.float32(1 / batch), np.empty(0, np.float32), np.empty((41, batch), np.float32),
                v0.copy(), np.float32(0.05), np.float32(0.9), np.float32(2e-4), K.GRAD_STEP)

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


def test_micro_batched_velocity_kernels(rng):
    """bias_update's velocity modes and apply_velocity against NumPy: two micro-batches'
    shares, then the values move by the flushed velocity."""
    d1, d2 = (rng.standard_normal((31, 16)).astype(np.float32) for _ in range(2))
    b0 = rng.standard_normal(31).astype(np.float32)
    v0 = rng.standard_normal(31).astype(np.float32)
    inv, lr, mom = np.float32(1 / 32), np.float32(0.1), np.float32(0.9)

    def run(b, v):
        K.bias_update(d1, b, v, lr, mom, inv, K.GRAD_VEL_FIRST)
        K.bias_update(d2, b, v, lr, mom, inv, K.GRAD_VEL_ADD)
        np.testing.assert_array_equal(b, b0)  # values wait for apply_velocity
        K.apply_velocity(b, v)

    one, many = threads_agree(run, lambda: (b0.copy(), v0.copy()))
    np.testing.assert_array_equal(one[0], many[0])
    v = 0.9 * v0.astype(np.float64) - 0.1 * (d1.sum(axis=1) + d2.sum(axis=1)) / 32
    np.testing.assert_allclose(one[1], v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one[0], b0 + v, rtol=1e-5, atol=1e-7)
    w = np.array([1.0, 2.0], np.float32)
    vel = np.array([1e-39, 0.5], np.float32)  # a subnormal velocity ends flushed
    K.apply_velocity(w, vel)
    np.testing.assert_array_equal(vel, [0.0, 0.5])
    np.testing.assert_array_equal(w, [1.0, 2.5])


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
        optim.momentum_sgd, lambda: (w0.copy(), v0.copy(), g, np.float32(0.05), np.float32(0.9),
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
        np.empty((n, batch), np.float32), np.int64(0)))
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


def random_stack(rng, sizes, nnz):
    layers = [random_layer(rng, a, b, k) for a, b, k in zip(sizes[:-1], sizes[1:], nnz, strict=True)]
    for la in layers:
        la.bias *= 0.1
    return layers


def forward_layer_by_layer(X, idx, mean, inv, layers, codes, slopes, rates, seeds, batch):
    """The reference chain for mlp_forward: gather_standardize, then sparse_forward per layer."""
    acts = [np.empty((layers[0].n_in, batch), np.float32)]
    dfacs = []
    K.gather_standardize(X, idx, mean, inv, acts[0])
    for l, la in enumerate(layers):
        acts.append(np.empty((la.n_out, batch), np.float32))
        dfacs.append(np.empty((la.n_out, batch), np.float32) if l < len(layers) - 1 else EMPTY)
        K.sparse_forward(acts[l], la.col_ptr, la.col_rows, la.col_pos, la.data, la.bias,
                         codes[l], slopes[l], rates[l], seeds[l], acts[l + 1], dfacs[l],
                         np.int64(0))
    return acts, dfacs


# Layer sizes give phases of one to many scheduling chunks, and a last layer narrower
# than the thread count; rows hold 0 to ~20 connections (every unrolled remainder).
STACK = ([13, 70, 40, 3], [300, 900, 100])


# Batches that use each SIMD block width (8, 4 and 1 vectors of 16) and the scalar tail.
@pytest.mark.parametrize("batch", [1, 7, 87, 128])
@pytest.mark.parametrize("act", [K.ACT_PIECEWISE, K.ACT_SIGMOID])
def test_mlp_forward_equals_layer_by_layer(rng, batch, act):
    sizes, nnz = STACK
    layers = random_stack(rng, sizes, nnz)
    X = rng.standard_normal((50, sizes[0])).astype(np.float32)
    idx = rng.integers(0, 50, batch).astype(np.int64)
    mean = rng.standard_normal(sizes[0]).astype(np.float32)
    inv = rng.uniform(0.5, 2, sizes[0]).astype(np.float32)
    n = len(layers)
    codes = np.array([act] * (n - 1) + [K.ACT_LINEAR], np.int64)
    slopes = np.array([-0.6, 0.6, 0.0], np.float32)
    rates = np.array([0.3, 0.3, 0.0], np.float32)
    seeds = np.array([11, 12, 13], np.uint64)
    ref_acts, ref_dfacs = forward_layer_by_layer(X, idx, mean, inv, layers, codes, slopes, rates,
                                                 seeds, batch)

    def make(n_threads=None):
        acts = tuple(np.full((s, batch), np.nan, np.float32) for s in sizes)
        dfacs = tuple(np.full((s, batch), np.nan, np.float32) for s in sizes[1:-1]) + (EMPTY,)
        return (X, idx, mean, inv, acts, tuple(la.col_ptr for la in layers),
                tuple(la.col_rows for la in layers), tuple(la.col_pos for la in layers),
                tuple(la.data for la in layers), tuple(la.bias for la in layers), codes, slopes,
                rates, seeds, dfacs, n_threads or K.n_threads())

    one, many = threads_agree(K.mlp_forward, make)
    for out in (one, many):
        for got, want in zip(out[4], ref_acts, strict=True):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(out[14], ref_dfacs, strict=True):
            np.testing.assert_array_equal(got, want)
    # More scheduled workers than threads running them (e.g. a nested call that gets one
    # thread): whoever runs takes every chunk, nothing waits for a worker that never starts.
    numba.set_num_threads(1)
    try:
        args = make(n_threads=3)
        K.mlp_forward(*args)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for got, want in zip(args[4], ref_acts, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batch", [19, 87, 128])
@pytest.mark.parametrize("update", [False, True])
def test_mlp_backward_equals_layer_by_layer(rng, update, batch):
    sizes, nnz = STACK
    layers = random_stack(rng, sizes, nnz)
    n = len(layers)
    acts = [rng.standard_normal((s, batch)).astype(np.float32) for s in sizes[:-1]]
    deltas = [rng.standard_normal((s, batch)).astype(np.float32) for s in sizes[1:]]
    dfacs = [EMPTY] + [rng.standard_normal((s, batch)).astype(np.float32) for s in sizes[1:-1]]
    lr, mom, wd = np.float32(0.05), np.float32(0.9), np.float32(2e-4)
    v0 = [rng.standard_normal(la.nnz).astype(np.float32) for la in layers]
    vb0 = [rng.standard_normal(la.n_out).astype(np.float32) for la in layers]

    # Reference: the separate kernels, last layer first, each reading the delta it needs.
    ref = {"data": [la.data.copy() for la in layers], "vel": [v.copy() for v in v0],
           "bias": [la.bias.copy() for la in layers], "bvel": [v.copy() for v in vb0],
           "grad": [np.empty(la.nnz, np.float32) for la in layers],
           "gb": [np.empty(la.n_out, np.float32) for la in layers],
           "deltas": [d.copy() for d in deltas]}
    for l in range(n - 1, -1, -1):
        la = layers[l]
        prev = ref["deltas"][l - 1] if l > 0 else EMPTY
        K.sparse_backward(acts[l], ref["deltas"][l], la.row_ptr, la.row_cols, ref["data"][l],
                          dfacs[l], np.float32(1 / batch),
                          np.empty(0, np.float32) if update else ref["grad"][l], prev,
                          ref["vel"][l], lr, mom, wd, int(update))
        if update:
            K.bias_step(ref["deltas"][l], ref["bias"][l], ref["bvel"][l], lr, mom)
        else:
            K.row_mean(ref["deltas"][l], ref["gb"][l])

    def make(n_threads=None):
        d = tuple(x.copy() for x in deltas)
        e1 = np.empty(0, np.float32)
        return (tuple(acts), d, (EMPTY,) + d[:-1], tuple(dfacs),
                tuple(la.row_ptr for la in layers), tuple(la.row_cols for la in layers),
                tuple(la.data.copy() for la in layers), tuple(v.copy() for v in v0),
                tuple(la.bias.copy() for la in layers), tuple(v.copy() for v in vb0),
                tuple(e1 if update else np.full(la.nnz, np.nan, np.float32) for la in layers),
                tuple(e1 if update else np.full(la.n_out, np.nan, np.float32) for la in layers),
                np.float32(1 / batch), lr, mom, wd, update, n_threads or K.n_threads())

    one, many = threads_agree(K.mlp_backward, make)
    numba.set_num_threads(1)
    try:
        extra = make(n_threads=3)
        K.mlp_backward(*extra)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for out in (one, many, extra):
        for l in range(n):
            np.testing.assert_array_equal(out[1][l], ref["deltas"][l])
            if update:
                np.testing.assert_array_equal(out[6][l], ref["data"][l])
                np.testing.assert_array_equal(out[7][l], ref["vel"][l])
                np.testing.assert_array_equal(out[8][l], ref["bias"][l])
                np.testing.assert_array_equal(out[9][l], ref["bvel"][l])
            else:
                np.testing.assert_array_equal(out[10][l], ref["grad"][l])
                np.testing.assert_array_equal(out[11][l], ref["gb"][l])
                np.testing.assert_array_equal(out[6][l], layers[l].data)  # untouched


def test_weight_gradient_sums_in_a_fixed_order(rng):
    """Each connection's sum over a 16-column block follows one addition tree (lane i plus
    lane i + n/2, halving n), whether the kernel reduces it alone or four at a time."""
    n_in, n_out, batch = 30, 40, 16
    rows = np.repeat(np.arange(n_in), 7)  # 7 = four reduced together + three alone
    cols = np.concatenate([rng.choice(n_out, 7, replace=False) for _ in range(n_in)])
    layer = SparseLinear.from_coo(n_in, n_out, rows, cols,
                                  rng.standard_normal(rows.size).astype(np.float32))
    a = rng.standard_normal((n_in, batch)).astype(np.float32)
    d = rng.standard_normal((n_out, batch)).astype(np.float32)
    grad = np.empty(layer.nnz, np.float32)
    K.sparse_backward(a, d, layer.row_ptr, layer.row_cols, layer.data, EMPTY, np.float32(1),
                      grad, EMPTY, np.empty(0, np.float32), np.float32(0), np.float32(0),
                      np.float32(0), K.GRAD_STORE)

    def tree(v):
        while v.size > 1:
            v = v[:v.size // 2] + v[v.size // 2:]  # float32 throughout
        return v[0]

    expect = [tree(a[i] * d[j]) for i, j in zip(layer.rows(), layer.row_cols, strict=True)]
    np.testing.assert_array_equal(grad, np.array(expect, np.float32))


_TRAIN_SCRIPT = """
import sys
import numpy as np
from sparsetrain.model import SparseMLP
rng = np.random.default_rng(0)
m = SparseMLP.create([20, 96, 64, 3], epsilon=8, rng=rng, dropout=0.3)
X = rng.standard_normal((300, 20)).astype(np.float32)
y = rng.integers(0, 3, 300)
for s in range(4):
    m.train_step(X, y, np.arange(s * 64, s * 64 + 70), lr=0.05, momentum=0.9,
                 weight_decay=2e-4, seed=s)
np.savez(sys.argv[1], *[a for la in m.layers for a in (la.data, la.velocity, la.bias)])
"""


def test_compiled_and_cached_kernels_train_alike(tmp_path):
    """The same steps in a process that compiles the kernels and in one that loads them
    from Numba's cache give the same bits (fast-math once made them round differently)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    outs = []
    for name in ("compiled", "cached"):
        out = tmp_path / f"{name}.npz"
        subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, str(out)], env=env, check=True,
                       timeout=600)
        outs.append(np.load(out))
    for key in outs[0].files:
        np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=key)


# Operands above FAR_BYTES take the prefetching blocks; batches 32 and 48 use the 32-column
# block (48 = 32 + 16), 80 the 64- and 16-column ones, 19 the scalar tail.
@pytest.mark.parametrize("batch", [19, 32, 48, 80])
def test_far_products_match_the_sparse_reference(batch):
    import scipy.sparse as sp

    rng = np.random.default_rng(batch)
    n = K.FAR_BYTES // (4 * batch) + 1000  # rows of a_prev and delta: beyond FAR_BYTES
    nnz = 3 * n
    rows = rng.integers(0, n, nnz)
    cols = rng.integers(0, n, nnz)
    keys = np.unique(rows * n + cols)
    layer = SparseLinear.from_coo(n, n, keys // n, keys % n,
                                  rng.standard_normal(keys.size).astype(np.float32))
    W = sp.csr_matrix((layer.data.astype(np.float64), layer.row_cols, layer.row_ptr),
                      shape=(n, n))
    a = rng.standard_normal((n, batch)).astype(np.float32)
    delta = rng.standard_normal((n, batch)).astype(np.float32)
    dfac = rng.standard_normal((n, batch)).astype(np.float32)

    def forward():
        return (a, layer.col_ptr, layer.col_rows, layer.col_pos, layer.data, layer.bias,
                K.ACT_LINEAR, np.float32(0), np.float32(0), np.uint64(1),
                np.empty((n, batch), np.float32), EMPTY, np.int64(0))

    one, many = threads_agree(K.sparse_forward, forward)
    np.testing.assert_array_equal(one[10], many[10])
    np.testing.assert_allclose(one[10], W.T @ a.astype(np.float64) + layer.bias[:, None],
                               rtol=1e-4, atol=1e-5)

    def backward():  # dfac_prev and delta_prev one array, as in training
        prev = dfac.copy()
        return (a, delta, layer.row_ptr, layer.row_cols, layer.data, prev,
                np.float32(1 / batch), np.empty(layer.nnz, np.float32), prev,
                np.empty(0, np.float32), np.float32(0), np.float32(0), np.float32(0), K.GRAD_STORE)

    one, many = threads_agree(K.sparse_backward, backward)
    np.testing.assert_array_equal(one[7], many[7])
    np.testing.assert_array_equal(one[8], many[8])
    grad = np.einsum("kb,kb->k", a[layer.rows()].astype(np.float64),
                     delta[layer.row_cols].astype(np.float64)) / batch
    np.testing.assert_allclose(one[7], grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one[8], (W @ delta.astype(np.float64)) * dfac, rtol=1e-4,
                               atol=1e-5)


# Output counts below and above the 2 x threads ranges; batches with and without a scalar
# tail; the last case's output rows exceed FAR_BYTES (the prefetching path).
@pytest.mark.parametrize(("n_in", "n_out", "nnz", "batch"), [
    (37, 23, 300, 87), (64, 1, 40, 16), (20, 3, 30, 5), (50, 400, 4000, 48),
    (3000, K.FAR_BYTES // (4 * 32) + 1000, 60000, 32)])
def test_forward_without_the_csc_index_is_the_gather_bit_for_bit(rng, n_in, n_out, nnz, batch):
    """The lean forward product (scatter over the CSR rows) against the gather over the
    CSC index, with every activation, dropout from a micro-batch's column, with and
    without the factor buffer; and against a dense product."""
    layer = random_layer(rng, n_in, n_out, nnz)
    a = rng.standard_normal((n_in, batch)).astype(np.float32)
    for act, slope, rate, factors in [(K.ACT_PIECEWISE, 0.6, 0.3, True),
                                      (K.ACT_LINEAR, 0.0, 0.0, False),
                                      (K.ACT_SIGMOID, 0.0, 0.2, True),
                                      (K.ACT_PIECEWISE, 0.0, 0.0, False)]:
        def out(factors=factors):
            return (np.full((n_out, batch), np.nan, np.float32),
                    np.full((n_out, batch) if factors else (0, 0), np.nan, np.float32))

        tail = (act, np.float32(slope), np.float32(rate), np.uint64(11))
        gather = (a, layer.col_ptr, layer.col_rows, layer.col_pos, layer.data, layer.bias,
                  *tail, *out(), np.int64(5))
        K.sparse_forward(*gather)
        one, many = threads_agree(K.sparse_forward_csr, lambda tail=tail, out=out: (
            a, layer.row_ptr, layer.row_cols, layer.data, layer.bias, *tail, *out(),
            np.int64(5), np.int64(K.n_threads())))
        for lean in (one, many):
            np.testing.assert_array_equal(lean[9], gather[10])
            np.testing.assert_array_equal(lean[10], gather[11])
        if act == K.ACT_LINEAR and n_in * n_out < 10**6:
            z = layer.to_dense().T.astype(np.float64) @ a + layer.bias[:, None]
            np.testing.assert_allclose(one[9], z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [19, 32, 128])
def test_backward_reads_the_factors_before_writing_the_delta_over_them(rng, batch):
    """delta_prev may be the dfac_prev array itself (the model keeps a hidden layer's
    dropout factors in its delta buffer): same bits as with two arrays."""
    layer = random_layer(rng, 41, 29, 500)
    a = rng.standard_normal((41, batch)).astype(np.float32)
    delta = rng.standard_normal((29, batch)).astype(np.float32)
    dfac = rng.standard_normal((41, batch)).astype(np.float32)
    outs = []
    for shared in (False, True):
        prev = dfac.copy() if shared else np.empty((41, batch), np.float32)
        grad = np.empty(layer.nnz, np.float32)
        K.sparse_backward(a, delta, layer.row_ptr, layer.row_cols, layer.data, prev if shared
                          else dfac, np.float32(1 / batch), grad, prev, np.empty(0, np.float32),
                          np.float32(0), np.float32(0), np.float32(0), K.GRAD_STORE)
        outs.append((grad, prev))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
