"""Very wide networks: micro-batched steps, the memory plan, the width-aware learning rate."""

import copy

import numpy as np
import pytest

from sparsetrain.activations import apply_reference, get_activation
from sparsetrain.config import NONE, make_config
from sparsetrain.data import load_dataset
from sparsetrain.errors import SparsetrainError
from sparsetrain.memory import activation_bytes, er_connections, model_bytes, plan_micro_batch
from sparsetrain.model import SparseMLP, second_moment_gains
from sparsetrain.optim import fan_in_lr_scales
from sparsetrain.trainer import Trainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(activation, dropout, micro):
    rng = np.random.default_rng(3)
    model = SparseMLP.create([30, 64, 48, 5], epsilon=5, rng=rng, activation=activation,
                             dropout=dropout)
    split = copy.deepcopy(model)
    split.micro_batch = micro
    X = rng.standard_normal((300, 30)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    return model, split, X, y


@pytest.mark.parametrize("activation", ["all-relu", "srelu"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("micro", [16, 48])  # 128 = 8 x 16; 48 + 48 + 32
def test_micro_batched_step_equals_the_whole_batch(activation, dropout, micro):
    whole, split, X, y = _pair(activation, dropout, micro)
    scales = np.array([1.0, 0.5, 0.25], np.float32)
    for step in range(3):
        idx = np.arange(step, step + 128, dtype=np.int64)
        kw = dict(lr=0.05, momentum=0.9, weight_decay=2e-4, seed=step, lr_scales=scales)
        assert whole.train_step(X, y, idx, **kw) == pytest.approx(
            split.train_step(X, y, idx, **kw), rel=1e-6)
    for a, b in zip(whole.layers, split.layers, strict=True):
        # Same dropout masks and the same step: only the order of the sums differs.
        np.testing.assert_allclose(b.data, a.data, rtol=0, atol=2e-6)
        np.testing.assert_allclose(b.velocity, a.velocity, rtol=0, atol=2e-6)
        np.testing.assert_allclose(b.bias, a.bias, rtol=0, atol=2e-6)
        if a.neuron_params is not None:
            np.testing.assert_allclose(b.neuron_params, a.neuron_params, rtol=0, atol=2e-6)
    # The micro-batches added into the momentum buffers: no gradient buffer was made.
    assert not any(isinstance(k, tuple) and k[0] in ("grad", "bias_grad")
                   for k in split._buffers)
    # The step moved the weights far more than the tolerance: the comparison has teeth.
    fresh, _, _, _ = _pair(activation, dropout, micro)
    assert max(np.abs(a.data - f.data).max()
               for a, f in zip(whole.layers, fresh.layers, strict=True)) > 1e-3


def test_micro_batched_gradients_equal_the_one_pass_gradients():
    whole, split, X, y = _pair("all-relu", 0.3, 16)
    idx = np.arange(100, dtype=np.int64)
    loss, grads = whole.gradients(X, y, idx, seed=7)
    grads = [(g.weights.copy(), g.bias.copy()) for g in grads]
    loss_split, grads_split = split.gradients(X, y, idx, seed=7)
    assert loss_split == pytest.approx(loss, rel=1e-6)
    for (w, b), g in zip(grads, grads_split, strict=True):
        np.testing.assert_allclose(g.weights, w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.bias, b, rtol=1e-5, atol=1e-7)


def test_memory_plan_chooses_the_largest_micro_batch_that_fits():
    sizes = [100, 20000, 20000, 2]
    conns = er_connections(sizes, 5.0)
    fixed = model_bytes(sizes, conns)
    whole = plan_micro_batch(sizes, conns, 128, 1 << 40)
    assert whole.micro_batch == 128
    # Room for 32 samples and half a 16-sample group more: 32 (multiples of 16 only).
    budget = (fixed + 40 * max(conns) + activation_bytes(sizes, 32)
              + activation_bytes(sizes, 16) // 2)
    plan = plan_micro_batch(sizes, conns, 128, budget)
    assert plan.micro_batch == 32 and plan.total <= budget
    assert plan_micro_batch(sizes, conns, 128, fixed) is None


def test_a_network_that_cannot_fit_is_refused_before_allocation():
    ds = load_dataset("synthetic", standardize=False, n_samples=200, n_features=20)
    cfg = make_config("synthetic", hidden=(5_000_000,) * 10, epsilon=1.0)
    with pytest.raises(SparsetrainError) as err:
        build_model(cfg, ds.X_train, ds.n_classes, memory_budget=2 * 10**9)
    message = str(err.value)
    assert "\n" not in message and "does not fit in memory" in message
    assert "2.00 GB are available" in message and "--hidden" in message


def test_trainer_runs_micro_batches_within_its_budget():
    ds = load_dataset("synthetic", standardize=False, n_samples=400, n_features=20)
    cfg = make_config("synthetic", hidden=(256, 256), epsilon=4.0, epochs=2, batch_size=64)
    model = build_model(cfg, ds.X_train, ds.n_classes)
    conns = [la.nnz for la in model.layers]
    budget = (model_bytes(model.sizes, conns) + 40 * max(conns)
              + activation_bytes(model.sizes, 16))
    trainer = Trainer(cfg, progress=False, verbose=False, memory_budget=budget)
    history = trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    assert model.micro_batch == 16 and trainer.memory_plan.micro_batch == 16
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert len(history[-1]["train_loss_tenths"].split()) == 5  # 280 samples: 5 batches


def test_fan_in_scales():
    rng = np.random.default_rng(0)
    model = SparseMLP.create([10, 4000, 2], epsilon=2, rng=rng, cap_density=True)
    fan = [la.nnz / la.n_out for la in model.layers]
    assert fan[1] == 4000  # fully connected output layer
    assert fan_in_lr_scales(model.layers, None) is None
    assert fan_in_lr_scales(model.layers, 1e6) is None  # no layer exceeds it: one rate
    scales = fan_in_lr_scales(model.layers, 1000.0)
    np.testing.assert_allclose(scales, [1.0, 0.25])


def test_width_aware_parametrisation_keeps_a_wide_output_layer_from_diverging():
    # SPEC 1.11: a 20000-wide layer feeding 2 outputs (fan-in 20000). With one rate and
    # the plain initialiser the first steps move the outputs by hundreds and the loss
    # explodes; with the default width-aware parametrisation it starts near ln 2 and falls.
    ds = load_dataset("synthetic", standardize=False, n_samples=3000, n_features=50)
    losses = {}
    for name in ("default", "none"):
        cfg = make_config("synthetic", hidden=(20000,), epsilon=10.0, epochs=3,
                          fan_in_ref=None if name == "default" else NONE)
        model = build_model(cfg, ds.X_train, ds.n_classes)
        history = Trainer(cfg, progress=False, verbose=False).fit(model, ds.X_train,
                                                                  ds.y_train)
        losses[name] = [row["train_loss"] for row in history]
        tenths = [float(v) for v in history[0]["train_loss_tenths"].split()]
        if name == "default":
            assert make_config("synthetic").fan_in_ref == cfg.fan_in_ref == 100.0
            assert max(tenths) < 2 * tenths[0] and tenths[-1] < tenths[0]
    assert losses["default"][0] < 2 * np.log(2) and max(losses["default"][1:]) < np.log(2)
    assert min(losses["none"]) > 5 * max(losses["default"])


@pytest.mark.parametrize("activation,alpha,dropout", [("all-relu", 0.6, 0.4),
                                                      ("leaky-relu", 0.3, 0.0), ("relu", 0, 0.2)])
def test_second_moment_gains_match_sampling(activation, alpha, dropout):
    """E[a^2] / Var(z) of a layer's inputs, against Monte Carlo through the activation
    reference and an inverted dropout mask."""
    rng = np.random.default_rng(1)
    gains = second_moment_gains(get_activation(activation), alpha, dropout, 4)
    assert gains[0] == 1.0
    z = rng.standard_normal((200_000, 1))
    for l in (1, 2, 3):
        keep = (rng.random(z.shape) >= dropout) / (1 - dropout)
        a = apply_reference(activation, z, l, alpha) * keep
        assert gains[l] == pytest.approx(np.mean(a * a), rel=0.02)


def test_deep_networks_start_with_the_same_activation_scale_in_every_layer():
    # Ten All-ReLU layers of fan-in 2 at dropout 0.4 (the 50 M-neuron network's shape):
    # He's initialiser grows the rms about 1.5x per layer (60x at the last); the
    # width-aware parametrisation keeps it near 1. The paper's presets keep He's values.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 256)).astype(np.float32)
    rms = {}
    for ref in (100.0, None):
        model = SparseMLP.create([256] + [20000] * 10 + [2], epsilon=1.0,
                                 rng=np.random.default_rng(3), dropout=0.4, fan_in_ref=ref)
        acts = model._forward(X, np.arange(64), training=True, seed=1)["acts"]
        rms[ref] = [float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) for a in acts]
    assert all(0.8 < r < 1.3 for r in rms[100.0][1:-1]), rms[100.0]
    assert rms[None][10] > 20 * rms[None][1]
    plain = SparseMLP.create([256, 300, 2], epsilon=5.0, rng=np.random.default_rng(3))
    he = SparseMLP.create([256, 300, 2], epsilon=5.0, rng=np.random.default_rng(3),
                          fan_in_ref=100.0)
    assert not np.allclose(plain.layers[0].data, he.layers[0].data)
    limit = np.sqrt(6.0 / plain.layers[0].fan_in)  # He-uniform, unchanged without it
    assert np.abs(plain.layers[0].data).max() <= limit and \
        np.abs(plain.layers[0].data).max() > 0.9 * limit


def test_inference_fills_the_training_room_with_more_rows_and_gives_back_the_memory():
    """After micro-batched training, inference runs in chunks as large as the training
    work arrays allow (two alternating hidden buffers instead of every layer's) and
    releases those arrays while it runs; predictions do not depend on the chunk, and
    training goes on bit for bit as if no evaluation had happened."""
    model, _, X, y = _pair("all-relu", 0.3, 16)
    model.micro_batch = 16
    other = copy.deepcopy(model)
    idx = np.arange(64, dtype=np.int64)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=2e-4)
    for m in (model, other):
        m.train_step(X, y, idx, seed=0, **kw)
    rows = model.eval_batch_size()
    assert rows > 16 and rows % 16 == 0
    z = model.decision_function(X)
    held = [k for k in model._buffers if isinstance(k, str)]
    assert not any(k.startswith(("delta", "dfac")) for k in held) and "ping" in held
    np.testing.assert_array_equal(z, model.decision_function(X, batch_size=16))
    assert model.eval_batch_size() == rows  # the inference pools hold the same room
    for m in (model, other):
        m.train_step(X, y, idx + 64, seed=1, **kw)
    assert "ping" not in model._buffers
    for a, b in zip(model.layers, other.layers, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("bad", [-1, 5])
def test_evaluate_refuses_labels_outside_the_outputs(bad):
    model, _, X, y = _pair("all-relu", 0.0, 16)
    y = y.copy()
    y[3] = bad
    with pytest.raises(SparsetrainError, match="label"):
        model.evaluate(X, y)


def test_the_synthetic_preset_learns_with_its_defaults():
    """What ``sparsetrain train --dataset synthetic`` runs (100-1000-1000-2, leaky ReLU, lr 0.4
    after a one-epoch warm-up, 10 epochs). The preset before (All-ReLU at lr 0.01) scored
    0.871 with seed 0; lr 0.8 gave a NaN loss in epoch 4."""
    ds = load_dataset("synthetic", standardize=False)
    cfg = make_config("synthetic", seed=0)
    assert (cfg.activation, cfg.lr, cfg.lr_warmup) == ("leaky-relu", 0.4, 1.0)
    model = build_model(cfg, ds.X_train, ds.n_classes)
    history = Trainer(cfg, progress=False, verbose=False).fit(
        model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    assert len(history) == 10
    assert history[0]["train_loss"] < np.log(2) and history[-1]["test_accuracy"] >= 0.9


@pytest.mark.parametrize("activation", ["all-relu", "srelu"])
def test_a_lean_network_trains_and_evolves_bit_for_bit_like_the_csc_one(activation):
    """Without the CSC index (--csc-index drop) the forward pass scatters over the CSR
    rows: micro-batched steps, a SET step and inference give the same bits, and the index
    stays dropped through the topology change."""
    from sparsetrain.schedule import topology_step

    model, lean, X, y = _pair(activation, 0.3, 48)
    model.micro_batch = 48
    lean.set_csc(False)
    assert not lean.csc and all(la.col_ptr is None for la in lean.layers)
    cfg = make_config("fashion-mnist", epsilon=5.0)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=2e-4)
    for epoch in range(2):
        for step in range(2):
            idx = np.arange(step * 128, step * 128 + 128, dtype=np.int64)
            assert model.train_step(X, y, idx, seed=step, **kw) == lean.train_step(
                X, y, idx, seed=step, **kw)
        for m in (model, lean):
            topology_step(m, cfg, epoch, np.random.default_rng([epoch, 1]))
    assert all(la.col_ptr is None for la in lean.layers)
    for a, b in zip(model.layers, lean.layers, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.row_cols, b.row_cols)
    np.testing.assert_array_equal(model.decision_function(X), lean.decision_function(X))
    lean.set_csc(True)  # built again, equal to the one kept all along
    for a, b in zip(model.layers, lean.layers, strict=True):
        np.testing.assert_array_equal(a.col_pos, b.col_pos)


def test_the_csc_index_is_dropped_only_when_the_network_fits_only_without_it():
    """The default (auto) keeps the index when it fits, drops it when only the lean
    layout fits (and says so), and refuses with a message that names both."""
    ds = load_dataset("synthetic", standardize=False, n_samples=400, n_features=20)
    cfg = make_config("synthetic", hidden=(256, 256), epsilon=4.0, epochs=1, batch_size=64,
                      micro_batch=None)
    assert cfg.csc_index == "auto"
    sizes = [20, 256, 256, 2]
    conns = er_connections(sizes, 4.0)
    rest = 40 * max(conns) + activation_bytes(sizes, 16)
    lean_only = model_bytes(sizes, conns, csc=False) + rest
    assert lean_only < model_bytes(sizes, conns) + rest
    model = build_model(cfg, ds.X_train, ds.n_classes, memory_budget=lean_only)
    assert not model.csc
    trainer = Trainer(cfg, progress=False, verbose=False, memory_budget=lean_only)
    history = trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    assert not model.csc and not trainer.memory_plan.csc and np.isfinite(history[0]["train_loss"])
    assert "lean: no CSC index" in trainer.memory_plan.describe()
    roomy = model_bytes(sizes, conns) + rest
    assert build_model(cfg, ds.X_train, ds.n_classes, memory_budget=roomy).csc
    for mode, csc in (("keep", True), ("drop", False)):
        pinned = make_config("synthetic", hidden=(256, 256), epsilon=4.0, csc_index=mode)
        assert build_model(pinned, ds.X_train, ds.n_classes).csc is csc
    keep = make_config("synthetic", hidden=(256, 256), epsilon=4.0, csc_index="keep")
    with pytest.raises(SparsetrainError, match="--csc-index drop"):
        build_model(keep, ds.X_train, ds.n_classes, memory_budget=lean_only)
    with pytest.raises(SparsetrainError, match="without the CSC index"):
        build_model(cfg, ds.X_train, ds.n_classes, memory_budget=lean_only // 2)
