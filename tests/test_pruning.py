"""Importance Pruning against a dense reference: which neurons go, and that the shrunken
network computes exactly what the original computes with those neurons zeroed out."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparsetrain.errors import SparsetrainError
from sparsetrain.model import SparseMLP
from sparsetrain.pruning import neuron_importance, prune_neurons, select_pruned


def test_importance_is_column_abs_sum(rng):
    m = SparseMLP.create([30, 40, 20, 3], epsilon=4, rng=rng)
    dense = m.layers[0].to_dense()
    np.testing.assert_allclose(neuron_importance(m.layers[0]), np.abs(dense).sum(axis=0),
                               rtol=1e-6)


def test_select_pruned_percentile_and_keeps_one():
    imp = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    np.testing.assert_array_equal(select_pruned(imp, 40), [False, True, False, True, False])
    assert select_pruned(np.ones(4), 50).sum() == 3  # all tie: one neuron survives


def test_prune_step_equals_dense_reference(rng):
    """After a step the network computes exactly the dense network whose pruned neurons'
    incoming columns are zeroed; momentum stays with its connection; a neuron left with no
    connection at all is dropped from both layers."""
    m = SparseMLP.create([30, 40, 25, 3], epsilon=4, rng=rng, activation="all-relu",
                         dropout=0.0)
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out) * 0.1
        layer.velocity[:] = rng.standard_normal(layer.nnz)
    # Hidden neuron 0 of layer 1: weakest incoming weights and no outgoing connection, so it
    # is pruned and then fully disconnected.
    first, second = m.layers[0], m.layers[1]
    first.data[first.row_cols == 0] *= 1e-3
    keep = np.ones(second.nnz, bool)
    keep[second.row_ptr[0]:second.row_ptr[1]] = False
    second.replace_connections(keep, np.empty(0, np.int64), np.empty(0, np.float32))

    X = rng.standard_normal((50, 30)).astype(np.float32)
    dense_W = [la.to_dense() for la in m.layers]
    dense_v = []
    for la in m.layers:
        v = np.zeros((la.n_in, la.n_out))
        v[la.rows(), la.row_cols] = la.velocity
        dense_v.append(v)
    pruned_ref = [select_pruned(neuron_importance(la), 20) for la in m.layers[:-1]]
    for l, p in enumerate(pruned_ref):
        dense_W[l][:, p] = 0.0
        dense_v[l][:, p] = 0.0
    h = X.astype(np.float64)
    h = (h - m.input_mean) / m.input_std
    slopes = m.slopes()
    for l, la in enumerate(m.layers):
        h = h @ dense_W[l] + la.bias
        if l < 2:
            h = np.where(h > 0, h, slopes[l] * h)
    expect = h

    pruned, removed = prune_neurons(m.layers, 20)
    m.invalidate_buffers()
    for la in m.layers:
        la.check()
    assert pruned == [int(p.sum()) for p in pruned_ref]
    assert removed[0] >= 1 and m.sizes[1] == 40 - removed[0]
    np.testing.assert_allclose(m.decision_function(X), expect, rtol=1e-4, atol=1e-4)
    alive = [np.ones(40, bool), np.ones(25, bool)]
    alive[0][0] = False  # the disconnected neuron
    assert removed[0] == 1 and removed[1] == 0
    reduced_W = [dense_W[0][:, alive[0]], dense_W[1][alive[0]], dense_W[2]]
    reduced_v = [dense_v[0][:, alive[0]], dense_v[1][alive[0]], dense_v[2]]
    for la, W, v in zip(m.layers, reduced_W, reduced_v, strict=True):
        assert la.nnz == np.count_nonzero(W)
        np.testing.assert_array_equal(la.data, W[la.rows(), la.row_cols].astype(np.float32))
        np.testing.assert_array_equal(la.velocity, v[la.rows(), la.row_cols].astype(np.float32))


def test_bad_percentile(rng):
    m = SparseMLP.create([10, 8, 2], epsilon=2, rng=rng)
    with pytest.raises(SparsetrainError, match="'percentile'.*\\[0, 100\\]"):
        prune_neurons(m.layers, 120)


def test_trainer_prunes_on_schedule(tmp_path):
    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.trainer import Trainer, build_model

    ds = load_dataset("synthetic", standardize=False, n_samples=400, n_features=20)
    cfg = make_config("synthetic", hidden=(40, 40), epsilon=4, epochs=7, ip_start=2, ip_step=2,
                      ip_percentile=25)
    model = build_model(cfg, ds.X_train, ds.n_classes)
    hist = Trainer(cfg, progress=False).fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    neurons = [[int(n) for n in r["neurons_per_layer"].split()] for r in hist]
    conns = [r["n_connections"] for r in hist]
    # Pruned after epochs 2, 4, 6 (not after the last, 7); a row records the counts after
    # its epoch's topology step, so rows 2, 4, 6 fall and the others keep the counts.
    assert all(conns[e - 1] < conns[e - 2] for e in (2, 4, 6))
    assert all(conns[e - 1] == conns[e - 2] for e in (3, 5, 7))  # evolution keeps counts
    assert all(n[0] == 20 and n[-1] == 2 for n in neurons)  # input and output untouched


@pytest.mark.parametrize("args, message", [
    (["--ip-percentile", "120"], "'ip_percentile' parameter must be a percentile in \\[0, 100\\]"),
    (["--ip-percentile", "-1"], "'ip_percentile'"),
    (["--ip-step", "0"], "'ip_step' parameter must be an integer >= 1"),
    (["--ip-step", "-3"], "'ip_step'"),
    (["--ip-start", "0"], "'ip_start'"),
])
def test_bad_ip_options(capsys, args, message):
    from sparsetrain.cli import main

    code = main(["train", "--dataset", "synthetic", "--n-samples", "200", "--n-features", "20",
                 "--hidden", "20", "--epsilon", "4", "--epochs", "2", "--ip", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert re.search(message, err[0])


def test_srelu_parameters_follow_pruning_and_files(rng, tmp_path):
    """SReLU's per-neuron parameters shrink with their layer and survive a save/load."""
    from sparsetrain.io import load_model, save_model

    m = SparseMLP.create([30, 40, 25, 3], epsilon=4, rng=rng, activation="srelu", dropout=0.0)
    X = rng.standard_normal((20, 30)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    for step in range(3):
        m.train_step(X, y, np.arange(20), lr=0.05, momentum=0.9, weight_decay=0, seed=step)
    second = m.layers[1]  # disconnect hidden neuron 0 of layer 1 so pruning removes it
    keep = np.ones(second.nnz, bool)
    keep[second.row_ptr[0]:second.row_ptr[1]] = False
    second.replace_connections(keep, np.empty(0, np.int64), np.empty(0, np.float32))
    m.layers[0].data[m.layers[0].row_cols == 0] *= 1e-3
    params0 = m.layers[0].neuron_params.copy()
    _, removed = prune_neurons(m.layers, 20)
    m.invalidate_buffers()
    assert removed[0] == 1
    np.testing.assert_array_equal(m.layers[0].neuron_params, params0[:, 1:])
    save_model(tmp_path / "m.npz", m)
    back, _ = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.layers[0].neuron_params, m.layers[0].neuron_params)
    np.testing.assert_array_equal(back.decision_function(X), m.decision_function(X))
