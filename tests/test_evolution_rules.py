"""Evolution rules beyond SET (issue #17): gradient-guided and momentum growth scored
truly sparse, the cosine rewiring schedule, the validation split, ``reproduce --rules``.
References: dense gradients by brute force (``A @ D.T``) on small layers."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from sparsetrain.cli import main
from sparsetrain.config import make_config
from sparsetrain.data import load_dataset
from sparsetrain.errors import SparsetrainError
from sparsetrain.evolution import (
    GrowthSignal,
    evolve_layer,
    grow_positions,
    scheduled_zeta,
    weakest_mask,
)
from sparsetrain.io import load_model
from sparsetrain.layers import SparseLinear, sample_free_positions
from sparsetrain.trainer import Trainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(rng, n_in=30, n_out=20, nnz=150):
    keys = np.sort(rng.choice(n_in * n_out, nnz, replace=False))
    rows, cols = np.divmod(keys, n_out)
    layer = SparseLinear.from_coo(n_in, n_out, rows, cols,
                                  rng.normal(size=nnz).astype(np.float32))
    layer.velocity[:] = rng.normal(size=nnz).astype(np.float32)
    return layer


def _signal(rng, layer, batches=1, momentum=0.0, B=8):
    signal = GrowthSignal(batches, momentum)
    for _ in range(batches):
        A = rng.normal(size=(layer.n_in, B)).astype(np.float32)
        D = rng.normal(size=(layer.n_out, B)).astype(np.float32)
        signal.records.append([(A, D)])
    return signal


@pytest.mark.parametrize("batches, momentum", [(1, 0.0), (3, 0.9)])
def test_growth_takes_the_best_scored_candidates_by_brute_force(rng, batches, momentum):
    layer = _layer(rng)
    signal = _signal(rng, layer, batches, momentum)
    survivors = layer.keys()[::2]
    n_new = 40
    got = grow_positions(np.random.default_rng(5), layer, n_new, survivors, grow="gradient",
                         signal=signal, candidates=3)
    # The same candidates (same generator), scored with dense gradients.
    cand = sample_free_positions(np.random.default_rng(5), layer.n_in * layer.n_out,
                                 3 * n_new, survivors)
    G = np.zeros((layer.n_in, layer.n_out))
    for age, (A, D) in enumerate(reversed([r[0] for r in signal.records])):
        G += momentum ** age * (A.astype(np.float64) @ D.T.astype(np.float64)) / A.shape[1]
    score = np.abs(G.ravel()[cand])
    want = np.sort(cand[np.argsort(-score, kind="stable")[:n_new]])
    np.testing.assert_array_equal(got, want)
    assert not np.isin(got, survivors).any()


def test_growth_with_more_candidates_than_free_positions_scores_them_all(rng):
    layer = _layer(rng, 6, 5, 20)  # 10 free positions
    signal = _signal(rng, layer)
    survivors = layer.keys()
    got = grow_positions(rng, layer, 4, survivors, grow="gradient", signal=signal,
                         candidates=10)
    A, D = signal.records[0][0]
    G = np.abs(A.astype(np.float64) @ D.T.astype(np.float64)).ravel()
    free = np.setdiff1d(np.arange(30), survivors)
    want = np.sort(free[np.argsort(-G[free], kind="stable")[:4]])
    np.testing.assert_array_equal(got, want)


def test_importance_growth_takes_the_candidates_of_the_strongest_inputs(rng):
    layer = _layer(rng)
    layer.data[layer.rows() == 3] = 0.0  # an input with connections, all of them zero
    survivors = layer.keys()[::2]
    got = grow_positions(np.random.default_rng(5), layer, 40, survivors, grow="importance",
                         candidates=3)
    cand = sample_free_positions(np.random.default_rng(5), layer.n_in * layer.n_out, 120,
                                 survivors)
    # Brute force: each input's outgoing magnitude from the dense matrix (before pruning).
    W = np.zeros((layer.n_in, layer.n_out))
    for k, key in enumerate(layer.keys()):
        W[key // layer.n_out, key % layer.n_out] = layer.data[k]
    importance = np.abs(W).sum(axis=1)
    score = importance[cand // layer.n_out]
    want = np.sort(cand[np.argsort(-score, kind="stable")[:40]])
    np.testing.assert_array_equal(got, want)
    assert not np.isin(got, survivors).any()
    # No signal needed; none taken either.
    again = grow_positions(np.random.default_rng(5), layer, 40, survivors, grow="importance",
                           signal=_signal(rng, layer), candidates=3)
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("grow", ["random", "gradient", "momentum", "importance"])
def test_every_rule_keeps_counts_exact_and_survivors_their_momentum(rng, grow):
    layer = _layer(rng)
    signal = None if grow in ("random", "importance") else _signal(rng, layer, 2, 0.9)
    before = dict(zip(layer.keys().tolist(), zip(layer.data.tolist(),
                                                  layer.velocity.tolist(), strict=True),
                      strict=True))
    removed = weakest_mask(layer.data, 0.3)
    kept_keys = set(layer.keys()[~removed].tolist())
    rewired = evolve_layer(layer, 0.3, rng, grow=grow, signal=signal)
    assert rewired == removed.sum() and layer.nnz == 150
    for k, v, m in zip(layer.keys().tolist(), layer.data.tolist(), layer.velocity.tolist(),
                       strict=True):
        if k in kept_keys:
            assert (v, m) == before[k]  # survivors keep value and momentum
        else:
            assert (v, m) == (0.0, 0.0)  # grown: zero value, zero momentum


@pytest.mark.parametrize("grow", ["gradient", "importance"])
def test_scored_growth_never_forms_a_dense_matrix(grow):
    """A 200,000 x 200,000 layer (a dense float32 gradient: 160 GB) evolves by scored
    growth with a few MB of allocations beyond its own arrays."""
    rng = np.random.default_rng(0)
    n, nnz, B = 200_000, 400_000, 16
    keys = sample_free_positions(rng, n * n, nnz)
    rows, cols = np.divmod(keys, n)
    layer = SparseLinear.from_coo(n, n, rows, cols, rng.normal(size=nnz).astype(np.float32))
    signal = GrowthSignal(1)
    signal.records.append([(rng.normal(size=(n, B)).astype(np.float32),
                            rng.normal(size=(n, B)).astype(np.float32))])
    tracemalloc.start()
    try:
        rewired = evolve_layer(layer, 0.3, rng, grow=grow, signal=signal)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rewired == pytest.approx(0.3 * nnz, abs=2) and layer.nnz == nnz
    # 1.2 M candidates: keys, rows, cols, scores, order (8 B each) and the new layer arrays.
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB"


def test_cosine_schedule_decays_to_zero():
    assert scheduled_zeta(0.3, "constant", 7, 10) == 0.3
    assert scheduled_zeta(0.3, "cosine", 0, 10) == pytest.approx(0.3)
    assert scheduled_zeta(0.3, "cosine", 5, 10) == pytest.approx(0.15)
    assert scheduled_zeta(0.3, "cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_zeta(0.3, "cosine", 2, 10) == pytest.approx(
        0.15 * (1 + math.cos(math.pi / 5)))


@pytest.fixture(scope="module")
def small():
    return load_dataset("synthetic", standardize=False, n_samples=800, n_features=20)


def _train(ds, **overrides):
    cfg = make_config("synthetic", **{"hidden": (64, 64), "epsilon": 5.0, "epochs": 4,
                                      **overrides})
    model = build_model(cfg, ds.X_train, ds.n_classes)
    trainer = Trainer(cfg, progress=False, verbose=False)
    return trainer, model, trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)


@pytest.mark.parametrize("rule", [dict(grow="gradient"), dict(grow="momentum"),
                                  dict(grow="gradient", zeta_schedule="cosine"),
                                  dict(grow="importance")])
def test_training_with_a_rule_is_seeded_and_keeps_the_counts(small, rule):
    _, model, hist = _train(small, **rule)
    _, again, _ = _train(small, **rule)
    _, random, _ = _train(small)
    counts = [r["n_connections"] for r in hist]
    assert len(set(counts)) == 1
    for a, b in zip(model.layers, again.layers, strict=True):
        np.testing.assert_array_equal(a.keys(), b.keys())
        np.testing.assert_array_equal(a.data, b.data)
    assert any(not np.array_equal(a.keys(), c.keys())
               for a, c in zip(model.layers, random.layers, strict=True))
    assert hist[-1]["test_accuracy"] > 0.6


def test_validation_split_is_held_out_and_reported(small, tmp_path):
    cfg = make_config("synthetic", hidden=(32,), epsilon=5.0, epochs=2, val_fraction=0.25)
    model = build_model(cfg, small.X_train, small.n_classes)
    trainer = Trainer(cfg, tmp_path, progress=False, verbose=False)
    X, y, (Xv, yv) = trainer.split_validation(small.X_train, small.y_train)
    assert len(Xv) == round(0.25 * len(small.X_train)) and len(X) + len(Xv) == len(
        small.X_train)
    rows_all = {r.tobytes() for r in small.X_train}
    assert {r.tobytes() for r in X} | {r.tobytes() for r in Xv} == rows_all
    assert not {r.tobytes() for r in X} & {r.tobytes() for r in Xv}
    hist = trainer.fit(model, small.X_train, small.y_train, small.X_test, small.y_test)
    assert all(0 <= r["val_accuracy"] <= 1 for r in hist)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("test_accuracy") + 1:][:2] == ["val_loss", "val_accuracy"]
    with pytest.raises(SparsetrainError, match="'val_fraction'"):
        make_config("synthetic", val_fraction=1.0)


def test_best_validation_epoch_is_kept_as_evaluated_and_survives_a_resume(small, tmp_path):
    cfg = make_config("synthetic", hidden=(32,), epsilon=5.0, epochs=6, val_fraction=0.25,
                      ip_start=2, ip_step=1, seed=0)
    model = build_model(cfg, small.X_train, small.n_classes)
    trainer = Trainer(cfg, tmp_path / "a", progress=False, verbose=False)
    hist = trainer.fit(model, small.X_train, small.y_train, small.X_test, small.y_test)
    val = [r["val_accuracy"] for r in hist]
    best, meta = load_model(tmp_path / "a" / "best_model.npz")
    assert meta["epoch"] == int(np.argmax(val)) + 1 and meta["val_accuracy"] == max(val)
    assert meta["epoch"] < 6  # a topology step (pruning, then SET) followed that epoch
    # The saved network is the one evaluated (before that epoch's pruning and SET step).
    _, _, (Xv, yv) = trainer.split_validation(small.X_train.astype(np.float32), small.y_train)
    assert best.evaluate(Xv, yv) == (hist[meta["epoch"] - 1]["val_loss"], max(val))
    # Interrupted after epoch 3 and resumed: the same best file, bit for bit.
    cfg3 = make_config("synthetic", hidden=(32,), epsilon=5.0, epochs=3, val_fraction=0.25,
                       ip_start=2, ip_step=1, seed=0)
    Trainer(cfg3, tmp_path / "b", progress=False, verbose=False).fit(
        build_model(cfg3, small.X_train, small.n_classes), small.X_train, small.y_train,
        small.X_test, small.y_test)
    again, m2 = Trainer.from_checkpoint(tmp_path / "b", epochs=6, progress=False)
    again.verbose = False
    again.fit(m2, small.X_train, small.y_train, small.X_test, small.y_test)
    resumed, meta_b = load_model(tmp_path / "b" / "best_model.npz")
    assert meta_b["epoch"] == meta["epoch"]
    for a, b in zip(best.layers, resumed.layers, strict=True):
        np.testing.assert_array_equal(a.keys(), b.keys())
        np.testing.assert_array_equal(a.data, b.data)
    # No split, no file.
    cfg0 = make_config("synthetic", hidden=(32,), epsilon=5.0, epochs=1)
    Trainer(cfg0, tmp_path / "c", progress=False, verbose=False).fit(
        build_model(cfg0, small.X_train, small.n_classes), small.X_train, small.y_train)
    assert not (tmp_path / "c" / "best_model.npz").exists()


def test_reproduce_with_rules_and_validation(datasets_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["reproduce", "--dataset", "madelon", "--data-dir", str(datasets_dir), "--epochs",
            "3", "--variants", "set-allrelu,dense-relu", "--rules", "set,rigl,momentum",
            "--val-fraction", "0.2", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    table = (out / "table.md").read_text()
    labels = [line.split("|")[1].strip() for line in table.splitlines()
              if line.startswith("| SET") or line.startswith("| dense")]
    assert labels == ["SET All-ReLU", "SET All-ReLU (rigl)", "SET All-ReLU (momentum)",
                      "dense ReLU"]
    assert "test acc at best val" in table and "honest protocol" in table
    runs = np.genfromtxt(out / "runs.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert np.all((runs["val_selected_test_accuracy"] > 0) & (runs["evolution_seconds"] >= 0))
    assert (out / "set-allrelu-rigl" / "seed0" / "model.npz").exists()
    assert main(args[:-5] + ["--rules", "set,nope", "--out", str(tmp_path / "x")]) == 2
    assert "'rules'" in capsys.readouterr().err
