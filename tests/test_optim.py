"""The momentum-SGD rule (sparsetrain.optim): one floating-point contract on every path.

The same gradient applied by the sequential fused kernels, the parameter server (the
mailbox and Ray-call paths of WASAP), a WASSP step and a push to the shared model gives
the same bits; the kernel matches a NumPy float32 reference bit for bit."""

import math

import numba
import numpy as np
import pytest

from sparsetrain import optim
from sparsetrain.config import make_config
from sparsetrain.parallel import shm
from sparsetrain.parallel._kernels import shared_push
from sparsetrain.parallel.server import ParameterServer
from sparsetrain.parallel.state import (
    bind_values,
    full_state,
    get_values,
    get_velocities,
    model_from_state,
    pack_gradients,
)
from sparsetrain.trainer import build_model


def _numpy_step(w, v, g, lr, momentum, weight_decay):
    """The rule in NumPy float32 (IEEE, one rounding per operation, no fused multiply-add)."""
    lr, momentum, weight_decay = np.float32(lr), np.float32(momentum), np.float32(weight_decay)
    v = momentum * v - lr * (g + weight_decay * w)
    v[np.abs(v) < optim.TINY] = 0.0
    return w + v, v


def test_momentum_sgd_equals_numpy_float32_single_thread(rng):
    n = 4099  # not a multiple of any vector width
    w = rng.standard_normal(n).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    v[:50] = 1e-39  # velocities that decay below TINY are flushed to zero
    g[:50] = 0.0
    w[:50] = 0.0
    ref_w, ref_v = _numpy_step(w, v, g, 0.05, 0.9, 2e-4)
    assert np.all(ref_v[:50] == 0)
    numba.set_num_threads(1)
    try:
        w1, v1 = w.copy(), v.copy()
        optim.momentum_sgd(w1, v1, g, np.float32(0.05), np.float32(0.9), np.float32(2e-4))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(v1, ref_v)
    np.testing.assert_array_equal(w1, ref_w)
    for k in range(0, n, 97):  # the scalar rule is the same function
        assert optim.momentum_velocity(v[k], g[k], w[k], np.float32(0.05), np.float32(0.9),
                                       np.float32(2e-4)) == ref_v[k]


def test_scheduled_lr_is_constant_except_the_wassp_warmup():
    assert optim.scheduled_lr(0.1) == 0.1
    assert optim.scheduled_lr(0.1, workers=4, sync=False, updates=3, warmup_updates=10) == 0.1
    assert optim.scheduled_lr(0.1, workers=1, sync=True, updates=3, warmup_updates=10) == 0.1
    assert optim.scheduled_lr(0.1, workers=4, sync=True, updates=0, warmup_updates=10) == 0.1
    assert optim.scheduled_lr(0.1, workers=4, sync=True, updates=5,
                              warmup_updates=10) == pytest.approx(0.1 * 2.5)
    assert optim.scheduled_lr(0.1, workers=4, sync=True, updates=50,
                              warmup_updates=10) == pytest.approx(0.4)
    assert optim.scheduled_lr(0.1, workers=4, sync=True, warmup_updates=0) == pytest.approx(0.4)
    cfg = make_config(None, lr=0.1, momentum=0.5, weight_decay=1e-3)
    hp = optim.hyperparameters(cfg, workers=4, sync=True, updates=5, warmup_updates=10)
    assert hp == (np.float32(0.25), np.float32(0.5), np.float32(1e-3))
    assert all(isinstance(x, np.float32) for x in hp)


def test_lr_warmup_ramps_linearly_then_holds():
    ramp = [optim.scheduled_lr(0.8, updates=t, ramp_updates=4) for t in range(6)]
    assert ramp == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    # Under the WASSP ramp too: the two factors multiply.
    assert optim.scheduled_lr(0.1, workers=4, sync=True, updates=1, warmup_updates=2,
                              ramp_updates=4) == pytest.approx(0.1 * 0.5 * 2.5)
    cfg = make_config(None, lr=0.8, lr_warmup=0.5)
    assert optim.hyperparameters(cfg, updates=2, updates_per_epoch=10).lr == np.float32(0.48)
    assert optim.hyperparameters(cfg, updates=7, updates_per_epoch=10).lr == np.float32(0.8)
    with pytest.raises(ValueError, match="updates_per_epoch"):
        optim.hyperparameters(cfg)


def test_cosine_lr_schedule_decays_epoch_by_epoch():
    """``lr_schedule="cosine"``: ``lr (1 + cos(pi e / E)) / 2`` through epoch ``e`` (0-based),
    constant inside an epoch, above zero in the last; after the warm-up ramp's factor."""
    cfg = make_config(None, lr=0.2, epochs=4, lr_schedule="cosine")
    per_epoch = 5
    lrs = [float(optim.hyperparameters(cfg, updates=t, updates_per_epoch=per_epoch).lr)
           for t in range(4 * per_epoch)]
    expected = [0.2 * (1 + math.cos(math.pi * (t // per_epoch) / 4)) / 2 for t in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[0] == pytest.approx(0.2) and 0 < lrs[-1] < 0.2 * 0.15
    assert optim.hyperparameters(make_config(None, lr=0.2, epochs=4), updates=19).lr == \
        np.float32(0.2)  # the default (the paper's) stays constant
    ramped = make_config(None, lr=0.2, epochs=4, lr_schedule="cosine", lr_warmup=2.0)
    lr = optim.hyperparameters(ramped, updates=6, updates_per_epoch=per_epoch).lr
    assert lr == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)) / 2 * 7 / 10, rel=1e-6)
    with pytest.raises(ValueError, match="updates_per_epoch"):
        optim.hyperparameters(cfg)


def test_run_epoch_warms_up_batch_by_batch():
    """An epoch with ``lr_warmup`` equals the steps taken by hand at ``lr * (t + 1) / T``."""
    from sparsetrain.schedule import run_epoch

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 12)).astype(np.float32)
    y = rng.integers(0, 2, 100)
    cfg = make_config(None, hidden=(16,), epsilon=2.0, epochs=2, batch_size=32, lr=0.5,
                      lr_warmup=1.5, seed=1)
    model = build_model(cfg, X, 2)
    ref, _ = model_from_state(full_state(model))
    for epoch in (1, 2):
        run_epoch(model, X, y, cfg, epoch, shuffle_key=[9, epoch],
                  topology=lambda signal: None, on_non_finite=None)
        order = np.random.default_rng([9, epoch])
        perm = order.permutation(100).astype(np.int64)
        seeds = order.integers(0, 2**62, size=4)
        for b in range(4):
            t = (epoch - 1) * 4 + b  # 6 ramp updates: 1.5 epochs of 4 batches
            lr = np.float32(np.float32(0.5) * min(1.0, (t + 1) / 6))
            ref.train_step(X, y, perm[b * 32:(b + 1) * 32], lr=lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, seed=int(seeds[b]))
        np.testing.assert_allclose(get_values(model), get_values(ref), rtol=1e-6, atol=1e-7)


def _problem(rng, activation, fan_in_ref=100.0):
    X = rng.normal(size=(256, 20)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    cfg = make_config(None, hidden=(30, 20), epsilon=3.0, epochs=4, batch_size=32,
                      activation=activation, seed=3, weight_decay=1e-2,
                      fan_in_ref=fan_in_ref)
    return X, y, cfg, build_model(cfg, X, 3)


def _assert_same_bits(model, values, velocities):
    np.testing.assert_array_equal(get_values(model), values)
    np.testing.assert_array_equal(get_velocities(model), velocities)


# fan_in_ref 6: the last two layers (mean fan-in 7.5 and 20) get width-aware rates.
@pytest.mark.parametrize("fan_in_ref", [100.0, 6.0])
@pytest.mark.parametrize("activation", ["all-relu", "srelu"])
def test_sequential_wasap_and_wassp_steps_give_identical_bits(rng, tmp_path, activation,
                                                              fan_in_ref):
    """Two steps from the same model and gradients: the sequential kernels' fused step,
    the server's apply (mailbox and Ray-call pushes), a WASSP step (two workers with the
    same gradient: their mean is that gradient) and a shared-model push. The second step
    has non-zero momentum; the WASSP step runs at its warm-up learning rate, which the
    sequential step is given."""
    X, y, cfg, model = _problem(rng, activation, fan_in_ref)
    seq, _ = model_from_state(full_state(model))
    scales = optim.fan_in_lr_scales(model.layers, fan_in_ref)
    assert (scales is None) == (fan_in_ref == 100.0)
    async_server = ParameterServer(full_state(model), cfg, n_train=256, workers=2,
                                   mode="async", phase1_epochs=3)
    sync_server = ParameterServer(full_state(model), cfg, n_train=256, workers=2, mode="sync",
                                  phase1_epochs=3, warmup_epochs=1.0)
    shared_server = ParameterServer(full_state(model), cfg, n_train=256, workers=2,
                                    mode="async", phase1_epochs=3)
    capacity = get_values(model).size
    seg = shm.SharedModel(tmp_path / "model", capacity, create=True)
    try:
        shared_server.share(seg)
        replica, _ = model_from_state(full_state(model))
        mine = np.empty(capacity, np.float32)
        bind_values(replica, mine)
        for step in range(2):
            idx = np.arange(32 * step, 32 * step + 32, dtype=np.int64)
            loss, grads = seq.gradients(X, y, idx, seed=step)
            g = pack_gradients(seq, grads).copy()
            lr = sync_server.lr()  # step 2: the warm-up has begun (lr_1 > lr)
            assert (lr > cfg.lr) == (step == 1)
            seq.train_step(X, y, idx, lr=lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, seed=step, lr_scales=scales)
            values, velocities = get_values(seq), get_velocities(seq)
            sync_server.push_many([(0, g, loss, 32), (0, g.copy(), loss, 32)])
            _assert_same_bits(sync_server.model, values, velocities)
            if step == 0:  # asynchronous pushes run at the constant lr
                async_server.apply_push(0, g, loss, 32)
                _assert_same_bits(async_server.model, values, velocities)
                hp = optim.hyperparameters(cfg)
                ends = np.cumsum([la.nnz for la in replica.layers]).astype(np.int64)
                lrs = optim.layer_lrs(hp.lr, replica.layers, cfg.fan_in_ref)
                assert shared_push(seg.header, seg.stats, seg.values, seg.velocity, g, mine,
                                   hp.lr, hp.momentum, hp.weight_decay, 4242, 0, -1, loss,
                                   32, 0, 0, 1000, ends, lrs) == 1
                _assert_same_bits(shared_server.model, values, velocities)
                np.testing.assert_array_equal(get_values(replica), values)
    finally:
        seg.close()
