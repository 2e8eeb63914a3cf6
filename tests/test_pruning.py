"""Importance Pruning against brute-force references: which neurons go (percentile over the
layer's original population), that folding a pruned neuron into the next layer's bias leaves
the network's outputs unchanged for every activation, the regrowth budget after a step, and
that a resumed run prunes exactly as the uninterrupted one."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sparsetrain.activations import ACTIVATIONS
from sparsetrain.errors import SparsetrainError
from sparsetrain.model import SparseMLP
from sparsetrain.pruning import (
    fold_inputless,
    model_constants,
    neuron_importance,
    original_widths,
    prune_neurons,
    regrowth_targets,
    select_pruned,
)

EMPTY_KEYS = np.empty(0, np.int64)
EMPTY_VALUES = np.empty(0, np.float32)


def drop_incoming(layer, neurons):
    """Delete every incoming connection of the given outputs of ``layer``."""
    keep = ~np.isin(layer.row_cols, neurons)
    layer.replace_connections(keep, EMPTY_KEYS, EMPTY_VALUES)


def randomise_state(m, rng):
    """Nonzero biases of both signs, momentum everywhere, varied SReLU parameters."""
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out).astype(np.float32)
        layer.velocity[:] = rng.standard_normal(layer.nnz)
        layer.bias_velocity[:] = rng.standard_normal(layer.n_out)
        if layer.neuron_params is not None:  # t_l < 0 < t_r, slopes of both signs
            n = layer.n_out
            layer.neuron_params[0] = rng.uniform(-1.0, 0.0, n)
            layer.neuron_params[1] = rng.uniform(-0.5, 1.0, n)
            layer.neuron_params[2] = rng.uniform(0.0, 1.0, n)
            layer.neuron_params[3] = rng.uniform(0.2, 2.0, n)


def test_importance_is_column_abs_sum(rng):
    m = SparseMLP.create([30, 40, 20, 3], epsilon=4, rng=rng)
    dense = m.layers[0].to_dense()
    np.testing.assert_allclose(neuron_importance(m.layers[0]), np.abs(dense).sum(axis=0),
                               rtol=1e-6)


def test_select_pruned_percentile_and_keeps_one():
    imp = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    np.testing.assert_array_equal(select_pruned(imp, 40), [False, True, False, True, False])
    assert select_pruned(np.ones(4), 50).sum() == 3  # all tie: one neuron survives
    # Two of seven neurons already removed: they count with importance 0, so the 40th
    # percentile of (0, 0, 1, 2, 3, 4, 5) is 1.2 and only neuron 1 goes.
    np.testing.assert_array_equal(select_pruned(imp, 40, population=7),
                                  [False, True, False, False, False])
    assert select_pruned(np.ones(3), 100, population=10).sum() == 2  # still keeps one


def percentile_reference(values, q):
    """Linear-interpolation percentile written out (NumPy's default method)."""
    s = sorted(float(v) for v in values)
    rank = q / 100 * (len(s) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return s[lo] + (rank - lo) * (s[hi] - s[lo])


@pytest.mark.parametrize("case", range(40))
def test_percentile_over_original_population_brute_force(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 30))
    removed = int(rng.integers(0, 40))
    q = float(rng.choice([0.0, 10.0, 20.0, 50.0, 100.0, rng.uniform(0, 100)]))
    imp = rng.choice([0.0, 0.5, 1.0, 2.0], n) if case % 3 == 0 else rng.exponential(1.0, n)
    threshold = percentile_reference([0.0] * removed + list(imp), q)
    expect = [v <= threshold for v in imp]
    if all(expect):
        expect[int(np.argmax(imp))] = False
    np.testing.assert_array_equal(select_pruned(imp, q, population=n + removed), expect)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_fold_is_exact(rng, activation):
    """Folding input-less neurons into the next layer's bias: eval outputs unchanged, the
    layers shrink, the folded bias and its momentum follow ``b_k += sum_j c_j W_jk``."""
    m = SparseMLP.create([30, 40, 25, 20, 3], epsilon=4, rng=rng, activation=activation,
                         alpha=0.6, dropout=0.3)
    randomise_state(m, rng)
    # Input-less neurons in every hidden layer; in hidden layer 2, neuron 7 is fed only by
    # neurons that are folded, so it becomes input-less within the same fold (cascade).
    drop_incoming(m.layers[0], [0, 3, 11, 12])
    second = m.layers[1]
    keep = (second.row_cols != 7) | np.isin(second.rows(), [0, 3])
    has3 = np.any((second.rows() == 3) & (second.row_cols == 7))
    new = EMPTY_KEYS if has3 else np.array([3 * second.n_out + 7], np.int64)
    second.replace_connections(keep, new, np.full(new.size, 0.7, np.float32))
    drop_incoming(m.layers[1], [2, 9])
    drop_incoming(m.layers[2], [5])
    m.invalidate_buffers()
    X = rng.standard_normal((64, 30)).astype(np.float32)
    before = m.decision_function(X)
    W = [la.to_dense() for la in m.layers]
    V = []
    for la in m.layers:
        v = np.zeros((la.n_in, la.n_out))
        v[la.rows(), la.row_cols] = la.velocity
        V.append(v)
    c0 = model_constants(m)(0, m.layers[0])
    bias1, bvel1 = m.layers[1].bias.copy(), m.layers[1].bias_velocity.copy()

    removed = fold_inputless(m.layers, model_constants(m))
    m.invalidate_buffers()
    for la in m.layers:
        la.check()
    assert removed == [4, 3, 1]  # 2, 9 and the cascaded 7 in hidden layer 2
    assert m.sizes == [30, 36, 22, 19, 3]
    after = m.decision_function(X)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    # Layer 1's bias and momentum absorbed c_j W_jk and c_j v_jk of the folded neurons of
    # hidden layer 1 (before hidden layer 2's own fold removed some of its neurons).
    gone0 = np.array([0, 3, 11, 12])
    kept1 = np.setdiff1d(np.arange(25), [2, 7, 9])
    np.testing.assert_allclose(m.layers[1].bias,
                               (bias1 + c0[gone0] @ W[1][gone0])[kept1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.layers[1].bias_velocity,
                               (bvel1 + c0[gone0] @ V[1][gone0])[kept1], rtol=1e-5, atol=1e-6)
    assert fold_inputless(m.layers, model_constants(m)) == [0, 0, 0]  # nothing left to fold


def test_fold_keeps_one_neuron(rng):
    m = SparseMLP.create([10, 6, 3], epsilon=2, rng=rng, dropout=0.0)
    drop_incoming(m.layers[0], np.arange(6))
    X = rng.standard_normal((5, 10)).astype(np.float32)
    before = m.decision_function(X)
    assert fold_inputless(m.layers, model_constants(m)) == [5]
    m.invalidate_buffers()
    assert m.sizes == [10, 1, 3]
    np.testing.assert_allclose(m.decision_function(X), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["all-relu", "srelu"])
def test_prune_step_equals_dense_reference(rng, activation):
    """After a step the network computes exactly the dense network whose pruned neurons'
    incoming columns are zeroed; every pruned neuron has left both layers; momentum stays
    with its connection."""
    m = SparseMLP.create([30, 40, 25, 3], epsilon=4, rng=rng, activation=activation,
                         dropout=0.0)
    randomise_state(m, rng)
    X = rng.standard_normal((50, 30)).astype(np.float32)
    pruned_ref = [select_pruned(neuron_importance(la), 20, w)
                  for la, w in zip(m.layers[:-1], (44, 25), strict=True)]
    reference = SparseMLP([la.__class__(la.n_in, la.n_out, la.row_ptr, la.row_cols, la.data,
                                        bias=la.bias, neuron_params=la.neuron_params)
                           for la in m.layers], activation=activation, dropout=0.0,
                          input_mean=m.input_mean, input_std=m.input_std)
    for l, p in enumerate(pruned_ref):
        drop_incoming(reference.layers[l], np.flatnonzero(p))
    expect = reference.decision_function(X)
    velocity = {(l, i, j): v for l, la in enumerate(m.layers)
                for i, j, v in zip(la.rows(), la.row_cols, la.velocity, strict=True)}

    pruned, removed = prune_neurons(m.layers, 20, constants=model_constants(m),
                                    original_widths=[44, 25])
    m.invalidate_buffers()
    assert pruned == [int(p.sum()) for p in pruned_ref] and pruned[0] > 0 and pruned[1] > 0
    assert removed == pruned  # nothing else was input-less
    assert m.sizes == [30, 40 - pruned[0], 25 - pruned[1], 3]
    np.testing.assert_allclose(m.decision_function(X), expect, rtol=1e-5,
                               atol=1e-5 * np.abs(expect).max())
    # Momentum of every surviving connection, in original neuron numbering.
    kept = [np.flatnonzero(~p) for p in pruned_ref]
    names = [np.arange(30), kept[0], kept[1], np.arange(3)]
    for l, la in enumerate(m.layers):
        for i, j, v in zip(la.rows(), la.row_cols, la.velocity, strict=True):
            assert velocity[(l, names[l][i], names[l + 1][j])] == v


def test_paper_rule_without_folding_keeps_pruned_neurons(rng):
    """``constants=None``: the paper code's rule; a pruned neuron keeps its outgoing
    connections and stays, and only a neuron with no connection left is removed."""
    m = SparseMLP.create([30, 40, 25, 3], epsilon=4, rng=rng, dropout=0.0)
    second = m.layers[1]  # hidden neuron 0 of layer 1: weakest, and no outgoing connection
    keep = np.ones(second.nnz, bool)
    keep[second.row_ptr[0]:second.row_ptr[1]] = False
    second.replace_connections(keep, EMPTY_KEYS, EMPTY_VALUES)
    m.layers[0].data[m.layers[0].row_cols == 0] *= 1e-3
    pruned, removed = prune_neurons(m.layers, 20)
    assert pruned == [8, 5] and removed == [1, 0]
    assert m.sizes == [30, 39, 25, 3]


def test_regrowth_targets():
    from sparsetrain.layers import SparseLinear

    rng = np.random.default_rng(0)
    layers = [SparseLinear.erdos_renyi(20, 30, 3, rng), SparseLinear.erdos_renyi(30, 40, 3, rng),
              SparseLinear.erdos_renyi(40, 3, 3, rng, allow_dense=True)]
    zeta = 0.3
    targets = regrowth_targets(layers, [40, 40], zeta)
    for la, width, target in zip(layers, [40, 40, 3], targets, strict=True):
        n_set = int(zeta * np.sum(la.data < 0)) + int(zeta * np.sum(la.data >= 0))
        assert target == la.nnz - round(n_set * (width - la.n_out) / width)
    assert targets[1] == layers[1].nnz and targets[2] == layers[2].nnz  # nothing removed
    assert targets[0] < layers[0].nnz  # a quarter of the first layer's neurons are gone


def test_original_widths():
    from sparsetrain.layers import SparseLinear

    rng = np.random.default_rng(0)
    layers = [SparseLinear.erdos_renyi(10, 8, 2, rng), SparseLinear.erdos_renyi(8, 6, 2, rng),
              SparseLinear.erdos_renyi(6, 2, 2, rng, allow_dense=True)]
    assert original_widths((12, 6), layers) == [12, 6]
    assert original_widths((5, 6), layers) == [8, 6]  # never below the current width
    assert original_widths((12,), layers) == [8, 6]  # does not describe this network
    assert original_widths(None, layers) == [8, 6]


def test_bad_percentile_and_population(rng):
    m = SparseMLP.create([10, 8, 2], epsilon=2, rng=rng)
    with pytest.raises(SparsetrainError, match="'percentile'.*\\[0, 100\\]"):
        prune_neurons(m.layers, 120)
    with pytest.raises(SparsetrainError, match="'percentile'"):
        prune_neurons(m.layers, -0.5, constants=model_constants(m))
    with pytest.raises(SparsetrainError, match="original_widths has 2 entries for 1 hidden"):
        prune_neurons(m.layers, 20, original_widths=[8, 8])
    with pytest.raises(SparsetrainError, match="population of 5 is smaller"):
        select_pruned(np.ones(8), 20, population=5)


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
    # The first step removes a quarter of each hidden layer; later steps count the removed
    # neurons in the percentile (population 40), so they remove few more, not a quarter of
    # the survivors each time.
    assert neurons[0] == [20, 40, 40, 2] and neurons[1] == [20, 30, 30, 2]
    assert all(n[1] >= 26 and n[2] >= 26 for n in neurons)
    assert all(neurons[e - 1] == neurons[e - 2] for e in (3, 5, 7))


def test_resume_prunes_like_uninterrupted_run(tmp_path):
    """The population of the percentile comes from the configured hidden widths, which the
    checkpoint holds: a run stopped after a pruning step and resumed prunes exactly as the
    uninterrupted run (same neurons, connections, weights)."""
    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.trainer import Trainer, build_model

    ds = load_dataset("synthetic", standardize=False, n_samples=400, n_features=20)
    cfg = make_config("synthetic", hidden=(40, 40), epsilon=4, epochs=8, ip_start=2, ip_step=2,
                      ip_percentile=25, seed=3)

    def run(out, stop_after=None):
        class Stop(Exception):
            pass

        class Stopping(Trainer):
            def _save(self, model):
                super()._save(model)
                if self.epoch == stop_after:
                    raise Stop

        model = build_model(cfg, ds.X_train, ds.n_classes)
        trainer = Stopping(cfg, out, progress=False, verbose=False)
        trainer.write_config(model)
        try:
            trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
        except Stop:
            trainer, model = Trainer.from_checkpoint(out, progress=False)
            assert model.sizes[1] < 40  # the checkpoint holds a shrunken network
            trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
        return trainer.history, model

    full, m_full = run(tmp_path / "full")
    resumed, m_resumed = run(tmp_path / "resumed", stop_after=4)
    keys = ("n_connections", "connections_per_layer", "neurons_per_layer", "test_accuracy")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    assert m_resumed.sizes == m_full.sizes
    assert min(m_full.sizes[1:3]) >= 26  # not a quarter of the survivors at every step
    for a, b in zip(m_resumed.layers, m_full.layers, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.bias, b.bias)


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
    params0 = m.layers[0].neuron_params.copy()
    pruned = select_pruned(neuron_importance(m.layers[0]), 20)
    _, removed = prune_neurons(m.layers, 20, constants=model_constants(m))
    m.invalidate_buffers()
    assert removed[0] == pruned.sum() > 0
    np.testing.assert_array_equal(m.layers[0].neuron_params, params0[:, ~pruned])
    save_model(tmp_path / "m.npz", m)
    back, _ = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.layers[0].neuron_params, m.layers[0].neuron_params)
    np.testing.assert_array_equal(back.decision_function(X), m.decision_function(X))
