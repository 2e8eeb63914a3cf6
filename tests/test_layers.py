"""Sparse layer construction, Erdős–Rényi placement, initialisers, and SET evolution."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from sparsetrain.errors import SparsetrainError
from sparsetrain.evolution import evolve_layer, weakest_mask
from sparsetrain.layers import INITIALIZERS, SparseLinear, er_density, sample_free_positions
from sparsetrain.model import SparseMLP


def test_er_count_and_structure(rng):
    layer = SparseLinear.erdos_renyi(784, 1000, 20, rng)
    expect = round(20 * (784 + 1000) / (784 * 1000) * 784 * 1000)
    assert layer.nnz == expect == 35680
    layer.check()
    keys = layer.keys()
    assert np.all(np.diff(keys) > 0)  # unique, sorted
    # Uniform placement: per-input counts are Binomial-like around the mean.
    counts = np.diff(layer.row_ptr)
    assert abs(counts.mean() - 35680 / 784) < 1e-9
    assert counts.std() < 3 * math.sqrt(35680 / 784)
    # Outputs covered roughly uniformly as well (chi-square-ish bound).
    col_counts = np.bincount(layer.row_cols, minlength=1000)
    assert col_counts.min() > 10 and col_counts.max() < 70


def test_er_never_allocates_dense(rng):
    """A 10^6 x 10^6 layer (4 TB dense) initialises in memory proportional to its nnz."""
    tracemalloc.start()
    layer = SparseLinear.erdos_renyi(1_000_000, 1_000_000, 1, rng)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert layer.nnz == 2_000_000
    assert peak < 400 * layer.nnz  # bytes; a dense bool mask alone would be 10^12


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_initializers(rng, name):
    layer = SparseLinear.erdos_renyi(400, 300, 10, rng, init=name, fan_in="sparse")
    fan = layer.nnz / 300
    w = layer.data
    assert w.dtype == np.float32
    if name == "he-uniform":
        assert np.abs(w).max() <= math.sqrt(6 / fan) + 1e-6
        assert abs(w.std() - math.sqrt(2 / fan)) < 0.05 * math.sqrt(2 / fan)
    elif name == "xavier":
        assert np.abs(w).max() <= math.sqrt(6 / (fan + layer.nnz / 400)) + 1e-6
    else:
        assert abs(w.std() - 0.1) < 0.005
    dense = SparseLinear.erdos_renyi(400, 300, 10, np.random.default_rng(0), init=name,
                                     fan_in="dense")
    if name == "he-uniform":
        assert np.abs(dense.data).max() <= math.sqrt(6 / 400) + 1e-6


def test_density_above_one(rng):
    with pytest.raises(SparsetrainError, match=r"epsilon.*at most"):
        SparseLinear.erdos_renyi(10, 10, 50, rng)
    with pytest.raises(SparsetrainError, match=r"'epsilon'.*layer 1.*denser than 1"):
        SparseMLP.create([20, 10, 10, 2], epsilon=50, rng=rng)
    # The output layer is capped at density 1 (fully connected), as in the paper's code.
    m = SparseMLP.create([784, 1000, 10], epsilon=20, rng=rng)
    assert er_density(1000, 10, 20) > 1 and m.layers[-1].nnz == 10000


def test_sample_free_positions_excludes_and_is_uniform(rng):
    occupied = np.sort(rng.choice(1000, 600, replace=False)).astype(np.int64)
    hits = np.zeros(1000)
    for _ in range(300):
        pos = sample_free_positions(rng, 1000, 100, occupied)
        assert pos.size == 100 and np.unique(pos).size == 100
        assert not np.isin(pos, occupied).any()
        hits[pos] += 1
    free = np.setdiff1d(np.arange(1000), occupied)
    assert hits[occupied].sum() == 0
    # Each free position is drawn with probability 100/400 per round: mean 75 hits.
    assert abs(hits[free].mean() - 75) < 1e-9 and hits[free].std() < 15
    with pytest.raises(SparsetrainError, match="only 400 free"):
        sample_free_positions(rng, 1000, 401, occupied)


def brute_force_removed(values, zeta):
    """Reference for SPEC 1.4 step 1 with plain sorting: indices SET removes."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    neg = [k for k in order if values[k] < 0]  # ascending: most negative first
    pos = [k for k in order if values[k] >= 0]  # ascending: closest to zero first
    k_neg = int(zeta * len(neg))
    k_pos = int(zeta * len(pos))
    return set(neg[len(neg) - k_neg:]) | set(pos[:k_pos])


@pytest.mark.parametrize("regrow", ["zero", "init"])
@pytest.mark.parametrize("zeta", [0.0, 0.1, 0.3, 0.5, 0.99])
def test_evolution_removes_spec_sets_and_keeps_counts(rng, zeta, regrow):
    layer = SparseLinear.erdos_renyi(30, 40, 4, rng)
    layer.data[:5] = 0.0  # exact zeros count with the positives, as the weakest
    layer.velocity[:] = rng.standard_normal(layer.nnz)
    removed = brute_force_removed(layer.data.tolist(), zeta)
    assert set(np.flatnonzero(weakest_mask(layer.data, zeta))) == removed

    keys0, vals0, vel0 = layer.keys(), layer.data.copy(), layer.velocity.copy()
    counts_before = layer.nnz
    n = evolve_layer(layer, zeta, rng, regrow=regrow)
    layer.check()
    assert n == len(removed)
    assert layer.nnz == counts_before
    kept = np.setdiff1d(np.arange(keys0.size), sorted(removed))
    new_keys = layer.keys()
    # Survivors keep their value and momentum at the same position.
    pos = np.searchsorted(new_keys, keys0[kept])
    np.testing.assert_array_equal(new_keys[pos], keys0[kept])
    np.testing.assert_array_equal(layer.data[pos], vals0[kept])
    np.testing.assert_array_equal(layer.velocity[pos], vel0[kept])
    # Regrown connections: zero momentum, value zero or from the initialiser, never a
    # survivor's position.
    grown = np.setdiff1d(np.arange(new_keys.size), pos)
    assert grown.size == len(removed)
    assert np.all(layer.velocity[grown] == 0)
    if regrow == "zero":
        assert np.all(layer.data[grown] == 0)
    else:
        assert np.all(np.abs(layer.data[grown]) <= math.sqrt(6 / layer.fan_in) + 1e-6)
        assert grown.size == 0 or np.count_nonzero(layer.data[grown]) == grown.size
    # CSC index rebuilt consistently with the new CSR arrays.
    csc = layer.to_scipy().tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(layer.col_ptr, csc.indptr)
    np.testing.assert_array_equal(layer.data[layer.col_pos], csc.data)


def test_evolution_regrows_uniformly_over_empty_positions(rng):
    """Over many steps regrowth hits every empty position about equally often."""
    hits = np.zeros(20 * 20)
    for _ in range(400):
        layer = SparseLinear.erdos_renyi(20, 20, 2, rng)  # 80 of 400 positions
        before = set(layer.keys().tolist())
        evolve_layer(layer, 0.3, rng)
        after = set(layer.keys().tolist())
        hits[list(after - before)] += 1
    # 24 regrown of ~344 candidates per step: about 28 hits each on average.
    assert hits.min() > 5 and hits.max() < 60


def test_fully_connected_layer_does_not_evolve(rng):
    layer = SparseLinear.erdos_renyi(10, 3, 100, rng, allow_dense=True)
    data = layer.data.copy()
    assert evolve_layer(layer, 0.3, rng) == 0
    np.testing.assert_array_equal(layer.data, data)
