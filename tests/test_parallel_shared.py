"""WASAP phase 1 through the shared model (sparsetrain.parallel.shm.SharedModel), without
Ray: workers apply their own pushes under the lock, the server runs the epoch ends."""

import subprocess
import sys

import numpy as np
import pytest

from sparsetrain.config import make_config
from sparsetrain.errors import SparsetrainError
from sparsetrain.optim import TINY
from sparsetrain.parallel import ParallelConfig, shm
from sparsetrain.parallel import _kernels as K
from sparsetrain.parallel.server import ParameterServer
from sparsetrain.parallel.state import (
    bind_values,
    full_state,
    get_values,
    map_gradient,
    model_from_state,
    pack_gradients,
    topology_keys,
)
from sparsetrain.trainer import build_model

OWNER = 4242  # any positive id: the tests hold the lock only inside the kernel


def _problem(rng, n=320, d=20, k=3, hidden=(30, 20), activation="all-relu"):
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    cfg = make_config(None, hidden=hidden, epsilon=3.0, epochs=4, batch_size=32,
                      activation=activation, seed=3)
    return X, y, cfg, build_model(cfg, X, k)


@pytest.fixture
def shared(tmp_path, rng):
    X, y, cfg, model = _problem(rng)
    server = ParameterServer(full_state(model), cfg, n_train=X.shape[0], workers=2,
                             phase1_epochs=3, X_test=X[:64], y_test=y[:64])
    seg = shm.SharedModel(tmp_path / "model", 2 * server.model.n_connections + 200, create=True)
    server.share(seg)
    yield X, y, cfg, server, seg
    seg.close()


class _Replica:
    """What a worker holds: a model whose arrays view its own value vector."""

    def __init__(self, server, seg):
        self.model, _ = model_from_state(server.full()["state"])
        self.version = server.version
        self.mine = np.empty(seg.capacity, np.float32)
        self.grad = np.empty(seg.capacity, np.float32)
        bind_values(self.model, self.mine)

    def gradient(self, X, y, idx, seed):
        loss, grads = self.model.gradients(X, y, idx, seed=seed)
        return float(loss), pack_gradients(self.model, grads, self.grad)

    def push(self, seg, cfg, loss, g, step=-1, stale=0, dropped=0, spins=1000):
        return K.shared_push(seg.header, seg.stats, seg.values, seg.velocity, g, self.mine,
                             np.float32(cfg.lr), np.float32(cfg.momentum),
                             np.float32(cfg.weight_decay), OWNER, self.version, step, loss, 32,
                             stale, dropped, spins)


def _momentum_reference(values, velocity, grad, n_weights, cfg):
    """The server's update (SPEC 1.3) in NumPy float32: weight decay on connections only."""
    lr, mom = np.float32(cfg.lr), np.float32(cfg.momentum)
    wd = np.where(np.arange(values.size) < n_weights, np.float32(cfg.weight_decay),
                  np.float32(0.0)).astype(np.float32)
    v = mom * velocity - lr * (grad + wd * values)
    v[np.abs(v) < TINY] = 0
    return values + v, v


def test_pushes_update_the_shared_model_as_momentum_sgd(shared, rng):
    X, y, cfg, server, seg = shared
    a, b = _Replica(server, seg), _Replica(server, seg)
    size = seg[K.SH_SIZE]
    assert size == get_values(server.model).size and seg[K.SH_N_WEIGHTS] == \
        server.model.n_connections
    for step in range(6):
        rep = (a, b)[step % 2]  # two workers taking turns: b's copy is one update stale
        idx = rng.choice(X.shape[0], 32, replace=False).astype(np.int64)
        loss, g = rep.gradient(X, y, idx, seed=step)
        values0, velocity0 = seg.values[:size].copy(), seg.velocity[:size].copy()
        ref_values, ref_velocity = _momentum_reference(values0, velocity0, g,
                                                       seg[K.SH_N_WEIGHTS], cfg)
        assert rep.push(seg, cfg, loss, g, step=step - 1) == step + 1  # the new update count
        np.testing.assert_allclose(seg.values[:size], ref_values, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(seg.velocity[:size], ref_velocity, rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(rep.mine[:size], seg.values[:size])  # the copy back
        # the server's model *is* the shared vectors
        np.testing.assert_array_equal(get_values(server.model), seg.values[:size])
    assert seg[K.SH_TOTAL] == seg[K.SH_UPDATES] == 6 and seg[K.SH_SAMPLES] == 6 * 32
    assert seg[K.SH_PUSHES] == 5 and seg[K.SH_STALENESS] == 5  # 1 update between pull and push
    assert seg[K.SH_LOCK] == 0 and not seg[K.SH_FROZEN]


def test_epoch_end_freezes_evolves_and_reopens(shared, rng):
    X, y, cfg, server, seg = shared
    rep = _Replica(server, seg)
    old = ([la.n_out for la in rep.model.layers], topology_keys(rep.model))
    for step in range(server.updates_per_epoch):
        idx = rng.choice(X.shape[0], 32, replace=False).astype(np.int64)
        loss, g = rep.gradient(X, y, idx, seed=step)
        assert rep.push(seg, cfg, loss, g) > 0
    assert seg[K.SH_FROZEN] and not seg[K.SH_DONE]
    loss, g = rep.gradient(X, y, np.arange(32, dtype=np.int64), seed=99)
    assert rep.push(seg, cfg, loss, g) == -2  # frozen: nothing applied
    assert server.shared_epoch_end()
    assert not server.shared_epoch_end()  # nothing left to do
    assert server.epoch == 1 and server.version == 1 == seg[K.SH_VERSION]
    assert not seg[K.SH_FROZEN] and seg[K.SH_UPDATES] == 0
    assert seg[K.SH_TOTAL] == server.updates_per_epoch
    rows, states = server.take_rows()
    assert [r["epoch"] for r in rows] == [1] and sorted(states) == [1]
    assert rows[0]["train_loss"] > 0 and rows[0]["bytes_moved"] > 0
    # the state kept for the checkpoint is a copy: later pushes do not change it
    kept = {k: v.copy() for k, v in states[1].items()}
    # A push computed on the old topology is refused; mapped onto the new one, it moves
    # only the connections that survived SET (brute force over (input, output) keys).
    assert rep.push(seg, cfg, loss, g) == -2
    before = [(la.keys(), la.data.copy()) for la in server.model.layers]
    stale_keys = [la.keys() for la in rep.model.layers]
    stale_grad = g.copy()
    rep.model, _ = model_from_state(server.full()["state"])
    rep.version = server.version
    bind_values(rep.model, rep.mine)
    mapped, dropped = map_gradient(old, rep.model, stale_grad)
    assert dropped > 0
    assert rep.push(seg, cfg, loss, mapped, stale=1, dropped=dropped) > 0
    pos = 0
    for l, la in enumerate(server.model.layers):
        keys, data = before[l]
        old_grad = dict(zip(stale_keys[l].tolist(), stale_grad[pos:pos + stale_keys[l].size],
                            strict=True))
        pos += stale_keys[l].size
        for p, key in enumerate(keys.tolist()):
            if key not in old_grad:  # regrown since the copy: no gradient, momentum 0
                assert la.data[p] == pytest.approx(data[p] * (1 - cfg.lr * cfg.weight_decay),
                                                   rel=1e-6, abs=1e-9)
            elif old_grad[key] != 0:
                assert la.data[p] != data[p]
    for k, v in kept.items():
        np.testing.assert_array_equal(states[1][k], v)
    # the next epoch end reports the mapped push
    for step in range(server.updates_per_epoch - 1):
        idx = rng.choice(X.shape[0], 32, replace=False).astype(np.int64)
        loss, g = rep.gradient(X, y, idx, seed=100 + step)
        assert rep.push(seg, cfg, loss, g) > 0
    assert server.shared_epoch_end()
    row = server.take_rows()[0][0]
    assert row["epoch"] == 2 and row["stale_updates"] == 1 and row["dropped_entries"] == dropped


def test_last_epoch_marks_phase1_done(tmp_path, rng):
    X, y, cfg, model = _problem(rng)
    server = ParameterServer(full_state(model), cfg, n_train=64, workers=1, phase1_epochs=1)
    seg = shm.SharedModel(tmp_path / "model", 4000, create=True)
    try:
        server.share(seg)
        rep = _Replica(server, seg)
        for step in range(server.updates_per_epoch):
            loss, g = rep.gradient(X, y, np.arange(32, dtype=np.int64) + 32 * step, seed=step)
            assert rep.push(seg, cfg, loss, g) > 0
        assert server.shared_epoch_end() and server.done and seg[K.SH_DONE]
        assert seg[K.SH_FROZEN]  # nothing is applied after phase 1
    finally:
        seg.close()


def test_non_finite_loss_is_not_applied_and_stops_phase1(shared, rng):
    X, y, cfg, server, seg = shared
    rep = _Replica(server, seg)
    values = seg.values[:seg[K.SH_SIZE]].copy()
    loss, g = rep.gradient(X, y, np.arange(32, dtype=np.int64), seed=0)
    assert rep.push(seg, cfg, float("nan"), g) == -2
    np.testing.assert_array_equal(seg.values[:values.size], values)
    assert seg[K.SH_FAILED] and seg[K.SH_FROZEN]
    assert server.shared_epoch_end()
    assert server.failed and "non-finite" in server.failed and seg[K.SH_DONE]


def test_lock_of_a_dead_owner_is_broken(shared, rng):
    X, y, cfg, server, seg = shared
    rep = _Replica(server, seg)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = int(child.stdout)  # a process that has exited
    loss, g = rep.gradient(X, y, np.arange(32, dtype=np.int64), seed=0)
    seg.header[K.SH_LOCK] = dead  # killed while applying a push
    assert rep.push(seg, cfg, loss, g, spins=50) == -1
    assert seg.break_dead_lock() and seg[K.SH_LOCK] == 0
    assert rep.push(seg, cfg, loss, g) == 1
    import os

    seg.header[K.SH_LOCK] = os.getpid()  # a live owner keeps its lock
    assert not seg.break_dead_lock() and seg[K.SH_LOCK] == os.getpid()
    assert rep.push(seg, cfg, loss, g, spins=50) == -1
    seg.unlock(os.getpid())
    assert rep.push(seg, cfg, loss, g) == 2


def test_atomic_compare_and_swap():
    h = np.zeros(K.SH_WORDS, np.int64)
    assert K.shared_lock(h, 7, 1) and h[K.SH_LOCK] == 7
    assert not K.shared_lock(h, 8, 3) and h[K.SH_LOCK] == 7
    assert not K.shared_unlock(h, 8) and h[K.SH_LOCK] == 7
    assert K.shared_unlock(h, 7) and h[K.SH_LOCK] == 0
    assert K.shared_add(h, 3, 5) == 0 and K.shared_add(h, 3, -2) == 5 and h[3] == 3


def test_shared_transport_options():
    assert ParallelConfig(mode="wasap").resolved_transport() == (
        "shared" if shm.available() else "ray")
    assert ParallelConfig(mode="wassp").resolved_transport() == (
        "shm" if shm.available() else "ray")
    assert ParallelConfig(ray_address="auto").resolved_transport() == "ray"
    if shm.available():
        with pytest.raises(SparsetrainError, match="asynchronous pushes"):
            ParallelConfig(mode="wassp", transport="shared").validate(10)


@pytest.mark.skipif(not shm.available(), reason="needs /dev/shm on x86-64 Linux")
def test_segments_of_a_killed_driver_are_removed_by_the_next_run():
    # A driver killed with -9 left /dev/shm/sparsetrain-<pid>-* behind for good.
    code = ("import os, signal; from sparsetrain.parallel import shm; "
            "p = shm.Mailbox.path_for(shm.new_run_id(), 0); shm.Mailbox(p, 16, create=True); "
            "print(p, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    from pathlib import Path

    dead = Path(proc.stdout.strip())
    assert dead.exists() and dead.name.startswith("sparsetrain-")
    mine = shm.Mailbox.path_for(shm.new_run_id(), 0)
    live = shm._ROOT / "sparsetrain-1-livetest-0"  # pid 1 is always alive
    for path in (mine, live):
        path.write_bytes(b"x")
    try:
        removed = shm.remove_stale()
        assert dead in removed and not dead.exists()
        assert mine.exists() and live.exists()
    finally:
        for path in (mine, live, dead):
            path.unlink(missing_ok=True)
