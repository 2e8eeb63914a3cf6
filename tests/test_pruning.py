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


def test_pruned_network_equals_zeroed_dense(rng):
    m = SparseMLP.create([30, 40, 25, 3], epsilon=4, rng=rng, activation="all-relu",
                         dropout=0.0)
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out) * 0.1
        layer.velocity[:] = rng.standard_normal(layer.nnz)
    X = rng.standard_normal((50, 30)).astype(np.float32)
    dense_W = [la.to_dense() for la in m.layers]
    dense_b = [la.bias.copy() for la in m.layers]
    dense_v = []
    for la in m.layers:
        v = np.zeros((la.n_in, la.n_out))
        v[la.rows(), la.row_cols] = la.velocity
        dense_v.append(v)
    imps = [neuron_importance(la) for la in m.layers[:-1]]
    before = m.n_connections
    removed = prune_neurons(m.layers, 20)
    m.invalidate_buffers()
    for la in m.layers:
        la.check()
    # Reference: drop the same neurons from the dense matrices.
    keeps = [~select_pruned(imp, 20) for imp in imps]
    assert removed == [int((~k).sum()) for k in keeps]
    assert m.sizes == [30, int(keeps[0].sum()), int(keeps[1].sum()), 3]
    h = X.astype(np.float64)
    slopes = m.slopes()
    for l in range(3):
        W, b = dense_W[l], dense_b[l]
        if l > 0:
            W = W[keeps[l - 1]]
        if l < 2:
            W, b = W[:, keeps[l]], b[keeps[l]]
        h = h @ W + b
        if l < 2:
            h = np.where(h > 0, h, slopes[l] * h)
    np.testing.assert_allclose(m.decision_function(X), h, rtol=1e-4, atol=1e-4)
    # Connections of pruned neurons are gone (in and out), momentum follows its connection.
    reduced = [dense_W[0][:, keeps[0]], dense_W[1][keeps[0]][:, keeps[1]], dense_W[2][keeps[1]]]
    assert m.n_connections == sum(int(np.count_nonzero(W)) for W in reduced) < before
    reduced_v = [dense_v[0][:, keeps[0]], dense_v[1][keeps[0]][:, keeps[1]], dense_v[2][keeps[1]]]
    for la, v in zip(m.layers, reduced_v, strict=True):
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
    # Pruned after epochs 2, 4, 6 (not after the last, 7); a row records the sizes after
    # its epoch's topology step, so rows 2, 4, 6 shrink and the others keep the counts.
    changed = [e + 1 for e in range(1, 7) if neurons[e] != neurons[e - 1]]
    assert changed == [2, 4, 6]
    assert all(conns[e - 1] < conns[e - 2] for e in (2, 4, 6))
    assert all(conns[e - 1] == conns[e - 2] for e in (3, 5, 7))  # evolution keeps counts
    assert neurons[-1][0] == 20 and neurons[-1][-1] == 2  # input and output layers untouched
    assert neurons[-1][1] < 40 and neurons[-1][2] < 40


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
