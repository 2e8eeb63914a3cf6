"""The parameter server of WASAP-SGD / WASSP-SGD phase 1 (SPEC 1.8), without Ray.

:class:`ParameterServer` holds the sparse model and its momentum. Workers push the
gradient of one mini-batch, tagged with the topology *version* of the copy they computed
it on; the server applies momentum SGD at once (asynchronous mode) or to the mean of one
gradient per worker (synchronous mode) and answers with the current values, plus the full
state when the worker's topology is out of date. Every ``n_train / batch`` applied
updates (``n_train / (K * batch)`` averaged ones) make an epoch: the server evaluates,
runs Importance Pruning (when scheduled) and SET evolution, and bumps the version.

Local-steps mode (:meth:`ParameterServer.push_delta`, the asynchronous local-SGD family
sized for a network): a worker runs several momentum-SGD steps on its replica and pushes
its progress, the difference between the replica and its copy of the server's values;
the server adds it and answers with the change of its values since that worker's copy
(:meth:`ParameterServer.delta_reply`), optionally as float16. The server keeps each
worker's copy as it knows it (a *shadow*), so whatever rounding leaves out of one answer
is in the next (error feedback), and the worker's copy stays bit for bit the shadow.

A gradient computed on an older topology keeps only the entries of connections that
still exist, mapped to their new positions (:func:`~sparsetrain.parallel.state.retain_valid`);
one computed before a change of layer sizes (neurons removed) is dropped whole. The Ray
actor in :mod:`sparsetrain.parallel.actors` only forwards calls to this class.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from ..config import TrainConfig
from ..optim import hyperparameters, layer_lrs, momentum_sgd
from ..schedule import marks_to_seconds, metrics_row, topology_step
from . import _kernels
from .state import (
    bind_values,
    full_state,
    get_values,
    map_gradient,
    model_from_state,
    topology_keys,
    value_layout,
    vector_size,
)

#: Shared-model header words an epoch end adds to the server's epoch statistics (and zeroes).
_COUNTERS = {_kernels.SH_SAMPLES: "_samples", _kernels.SH_STALENESS: "_staleness",
             _kernels.SH_PUSHES: "_pushes", _kernels.SH_BYTES: "_bytes", _kernels.SH_STALE: "_stale",
             _kernels.SH_DROPPED_UPDATES: "_dropped_updates",
             _kernels.SH_DROPPED_ENTRIES: "_dropped_entries"}
_KEEP_VERSIONS = 4  # old topologies kept to map stale gradients (older ones are dropped)
_KEEP_SNAPSHOTS = 4  # end-of-epoch states kept for a driver that polls slower than epochs end


class ParameterServer:
    """Phase-1 state of a parallel run.

    Parameters
    ----------
    state : dict of arrays
        Full model state (:func:`~sparsetrain.parallel.state.full_state`).
    config : TrainConfig
    n_train : int
        Training samples over all shards (an epoch is ``ceil(n_train / batch)`` updates).
    workers : int
    mode : {"async", "sync"}
    phase1_epochs : int
        Last epoch of phase 1.
    start_epoch : int
        Epochs already done (resume).
    X_test, y_test : arrays, optional
        Validation set evaluated after every epoch.
    """

    def __init__(self, state, config: TrainConfig, *, n_train: int, workers: int,
                 mode: str = "async", phase1_epochs: int, start_epoch: int = 0,
                 X_test=None, y_test=None, warmup_epochs: float = 5.0):
        self.model, _ = model_from_state(state)
        self.config = config
        self.workers = int(workers)
        self.mode = mode
        self.phase1_epochs = int(phase1_epochs)
        self.epoch = int(start_epoch)
        per_update = config.batch_size * (self.workers if mode == "sync" else 1)
        self.updates_per_epoch = max(1, math.ceil(n_train / per_update))
        self.updates = 0  # applied in the current epoch
        self.total_updates = self.epoch * self.updates_per_epoch
        self.warmup_updates = warmup_epochs * self.updates_per_epoch
        self.X_test, self.y_test = X_test, y_test
        self.version = 0
        self._keys = {0: self._topology()}
        self.rows: list[dict] = []
        self.events: list[str] = []
        self.failed: str | None = None  # why phase 1 stopped early (non-finite loss)
        self.restarts = 0
        self.pids: dict[int, int] = {}  # worker rank -> process id (diagnostics, tests)
        self.live: set[int] = set()  # ranks pushing now (started, not lost)
        self.nodes: dict[int, tuple] = {}  # rank -> (Ray node id, address): lost nodes
        self._reset_epoch_stats()
        self.shared = None  # the SharedModel the workers apply their pushes to, if any
        self._pid = os.getpid()
        self._snapshot = (self.epoch, self._copy_state())
        self._unsaved: dict[int, dict] = {}  # epoch -> state not yet taken by the driver
        self._shadows: dict[int, np.ndarray] = {}  # rank -> its copy of the values (deltas)
        self._flat, self._flat_version = None, -1  # see _flat_values

    # ------------------------------------------------------------------ bookkeeping
    def _topology(self):
        return [la.n_out for la in self.model.layers], topology_keys(self.model)

    def _reset_epoch_stats(self):
        self._t0 = time.perf_counter()
        self._loss = 0.0
        self._samples = 0
        self._bytes = 0
        self._stale = 0
        self._staleness = 0
        self._pushes = 0
        self._dropped_updates = 0
        self._dropped_entries = 0

    @property
    def done(self) -> bool:
        return self.failed is not None or self.epoch >= self.phase1_epochs

    def _schedule(self) -> dict:
        """Where this server is in the learning-rate schedule (:func:`~sparsetrain.optim.scheduled_lr`)."""
        return dict(workers=self.workers, sync=self.mode == "sync", updates=self.total_updates,
                    warmup_updates=self.warmup_updates, updates_per_epoch=self.updates_per_epoch)

    def lr(self) -> float:
        """Learning rate of the next update: ``lr`` (async) or ``lr * K`` reached by a
        linear warm-up over the first ``warmup_epochs`` epochs (sync, Goyal et al.)."""
        return float(hyperparameters(self.config, **self._schedule()).lr)

    def note_restart(self, rank: int) -> None:
        self.events.append(f"worker {rank} restarted")
        self.restarts += 1

    def note_start(self, rank: int, pid: int, node: tuple | None = None) -> None:
        """Worker ``rank`` runs as process ``pid`` on ``node`` = (Ray node id, address)."""
        self.pids[int(rank)] = int(pid)
        self.live.add(int(rank))
        if node is not None:
            self.nodes[int(rank)] = tuple(node)

    def note_lost(self, rank: int) -> None:
        """Worker ``rank`` stopped pushing (its node was lost): deltas are averaged over
        the others until it starts again."""
        self.live.discard(int(rank))

    def status(self) -> dict:
        return {"epoch": self.epoch, "updates": self.updates, "done": self.done,
                "failed": self.failed, "restarts": self.restarts, "pids": dict(self.pids),
                "nodes": dict(self.nodes),
                "total_updates": self.total_updates,
                "updates_per_epoch": self.updates_per_epoch, "version": self.version}

    def take_rows(self) -> tuple[list[dict], dict[int, dict]]:
        """Metrics rows of the epochs finished since the last call, and the states at the
        end of (up to the last ``_KEEP_SNAPSHOTS`` of) those epochs, for checkpoints."""
        rows, self.rows = self.rows, []
        states, self._unsaved = self._unsaved, {}
        return rows, states

    def take_events(self) -> list[str]:
        """Events not yet in a metrics row (e.g. a restart after the last phase-1 epoch)."""
        events, self.events = self.events, []
        return events

    def snapshot(self):
        """``(epoch, full state)`` at the end of the latest finished epoch."""
        return self._snapshot

    def _copy_state(self) -> dict:
        """The full state as copies (the model's arrays change in place with every update)."""
        shared = self.shared
        if shared is not None:  # a worker may be applying a push right now
            shared.lock(self._pid)
        try:
            return {k: np.array(v) for k, v in full_state(self.model).items()}
        finally:
            if shared is not None:
                shared.unlock(self._pid)

    def full(self, rank: int | None = None) -> dict:
        """Reply with the full current state (a new or restarted worker); with ``rank``,
        that worker's copy for :meth:`delta_reply` becomes these values."""
        state = self._copy_state()
        self._bytes += sum(a.nbytes for a in state.values())
        if rank is not None:
            self._shadows[int(rank)] = get_values(self.model)
        return {"done": self.done, "version": self.version, "state": state, "values": None,
                "step": self.total_updates,
                "epochs": self.total_updates / self.updates_per_epoch}  # for lr_warmup

    def reply(self, version: int) -> dict:
        """Current values for a worker whose copy has topology ``version``."""
        if self.done:
            return self._answer(done=True)
        if version != self.version:
            return self.full()
        values = get_values(self.model)
        self._bytes += values.nbytes
        return self._answer(values=values)

    def _answer(self, done: bool = False, **payload) -> dict:
        """An answer to a push: whether phase 1 is over, the topology version, the update
        count, and ``payload`` (``values`` or ``delta``; no full state)."""
        return {"done": done, "version": self.version, "state": None, "values": None,
                "step": self.total_updates, **payload}

    # ------------------------------------------------------------------ updates
    def push(self, version: int, grad: np.ndarray, loss: float, n: int, step: int = -1) -> dict:
        """Asynchronous mode: apply one worker's gradient now, answer with current values.

        ``step``: the server's update count when the worker's copy was sent (its answer's
        ``step``), to measure staleness (updates applied in between)."""
        self.apply_push(version, grad, loss, n, step)
        return self.reply(version)

    def apply_push(self, version: int, grad: np.ndarray, loss: float, n: int,
                   step: int = -1) -> None:
        """:meth:`push` without the answer (the mailbox path writes it in place)."""
        if self.done:
            return
        if step >= 0:
            self._staleness += self.total_updates - step
            self._pushes += 1
        self._bytes += grad.nbytes
        self._apply(version, grad)
        self._count(loss * n, n)

    def count_bytes(self, nbytes: int) -> None:
        self._bytes += int(nbytes)

    def push_many(self, pushes: list[tuple]) -> None:
        """Synchronous mode: apply the mean of one gradient per worker as one update;
        ``pushes``: ``(version, grad, loss, n, ...)`` per worker."""
        if self.done:
            return
        versions = {p[0] for p in pushes}
        self._bytes += sum(p[1].nbytes for p in pushes)
        if versions == {self.version}:
            grad = np.mean([p[1] for p in pushes], axis=0, dtype=np.float32)
            self._apply(self.version, grad)
        else:  # a worker restarted from an older copy: map each gradient, then average
            mapped = [self._map(p[0], p[1]) for p in pushes]
            mapped = [m for m in mapped if m is not None]
            if mapped:
                self._apply(self.version, np.mean(mapped, axis=0, dtype=np.float32))
        self._count(sum(p[2] * p[3] for p in pushes), sum(p[3] for p in pushes))

    def _count(self, loss_sum: float, n: int, steps: int = 1) -> None:
        if not math.isfinite(loss_sum):
            self.failed = (f"the loss became {loss_sum / max(n, 1)} at epoch {self.epoch + 1}, "
                           f"update {self.updates + 1}/{self.updates_per_epoch}")
            return
        self._loss += loss_sum
        self._samples += n
        self.updates += steps
        self.total_updates += steps
        if self.updates >= self.updates_per_epoch:
            over = self.updates - self.updates_per_epoch  # a push of several local steps
            self._end_epoch()
            self.updates = over

    # ------------------------------------------------------------------ local steps
    def push_delta(self, rank: int, version: int, delta: np.ndarray, loss_sum: float,
                   n: int, steps: int, step: int = -1) -> dict:
        """Local-steps mode: add worker ``rank``'s progress ``delta`` (its replica minus
        its copy of the values, after ``steps`` momentum-SGD steps on ``n`` samples whose
        losses sum to ``loss_sum``; float32 or float16) divided by the number of workers
        pushing (asynchronous model averaging), count ``steps`` updates, answer
        with :meth:`delta_reply` in ``delta``'s dtype. A delta computed on an older
        topology is mapped like a stale gradient; one with a non-finite loss is not
        applied and stops phase 1."""
        if self.done:
            return self.delta_reply(rank, version, delta.dtype)
        if step >= 0:
            self._staleness += self.total_updates - step
            self._pushes += 1
        self._bytes += delta.nbytes
        if math.isfinite(loss_sum):
            d = np.asarray(delta, np.float32)
            if version != self.version:
                d = self._map(version, d)
            if d is not None:
                # Averaged over the workers pushing: summed, K workers' local steps from
                # about the same values move the model K times as far, and diverge.
                live = max(1, len(self.live))
                self._flat_values()[:] += d if live == 1 else d / np.float32(live)
        self._count(loss_sum, n, steps)
        return self.delta_reply(rank, version, delta.dtype)

    def _flat_values(self) -> np.ndarray:
        """The model's values as one vector its arrays are views of (bound again after a
        topology change), so that a delta is one addition and an answer one subtraction."""
        flat = self._flat
        if flat is None or self._flat_version != self.version or (
                flat.shape[0] != vector_size(self.model)):
            flat = np.empty(vector_size(self.model), np.float32)
            bind_values(self.model, flat)
            self._flat, self._flat_version = flat, self.version
        return flat

    def delta_reply(self, rank: int, version: int, dtype=np.float32) -> dict:
        """The change of the values since worker ``rank``'s copy, rounded to ``dtype``
        (``delta``); its copy (the server's shadow of it) moves by exactly what is sent.
        The full state when the worker's topology is out of date or its copy unknown."""
        if self.done:
            return self._answer(done=True)
        shadow = self._shadows.get(int(rank))
        if version != self.version or shadow is None or shadow.shape[0] != vector_size(self.model):
            return self.full(rank)
        delta = (self._flat_values() - shadow).astype(dtype)
        shadow += delta  # float32 += float16 rounds as the worker's copy does
        self._bytes += delta.nbytes
        return self._answer(delta=delta)

    def _map(self, version: int, grad: np.ndarray) -> np.ndarray | None:
        """``grad`` (computed on topology ``version``) in the current layout, zeros where the
        current topology has connections the old one lacked; None if it cannot be mapped."""
        old = self._keys.get(version)
        out, dropped = (None, 0) if old is None else map_gradient(old, self.model, grad)
        if out is None:
            self._dropped_updates += 1
            return None
        self._stale += 1
        self._dropped_entries += dropped
        return out

    def _apply(self, version: int, grad: np.ndarray) -> None:
        """One momentum-SGD step (:func:`~sparsetrain.optim.momentum_sgd`) of ``grad`` at
        the scheduled learning rate: weight decay on connection values only."""
        if version != self.version:
            grad = self._map(version, grad)
            if grad is None:
                return
        lr, mom, wd = hyperparameters(self.config, **self._schedule())
        zero = np.float32(0.0)
        lrs = layer_lrs(lr, self.model.layers, self.config.fan_in_ref)
        for (w, b, p, e), la, lr_l in zip(value_layout(self.model), self.model.layers, lrs,
                                          strict=True):
            momentum_sgd(la.data, la.velocity, grad[w:w + la.nnz], lr_l, mom, wd)
            momentum_sgd(la.bias, la.bias_velocity, grad[b:b + la.n_out], lr, mom, zero)
            if la.neuron_params is not None:
                momentum_sgd(la.neuron_params.ravel(), la.neuron_velocity.ravel(), grad[p:e],
                             lr, mom, zero)

    # ------------------------------------------------------------------ shared model
    def share(self, shared) -> None:
        """Serve asynchronous pushes through ``shared`` (a
        :class:`~sparsetrain.parallel.shm.SharedModel`): the model's arrays become views
        of its vectors, which the workers update under its lock; the update counters live
        in its header until :meth:`shared_epoch_end` takes them."""
        if self.mode != "async":
            raise ValueError("a shared model serves asynchronous pushes only")
        self.shared = shared
        self._publish()

    def _publish(self) -> None:
        """Lay the current model into the shared vectors and open it for pushes."""
        h = self.shared.header
        size = bind_values(self.model, self.shared.values, self.shared.velocity)
        h[_kernels.SH_SIZE] = size
        h[_kernels.SH_N_WEIGHTS] = value_layout(self.model)[0][1]
        h[_kernels.SH_VERSION] = self.version
        h[_kernels.SH_PER_EPOCH] = self.updates_per_epoch
        h[_kernels.SH_UPDATES] = self.updates
        h[_kernels.SH_TOTAL] = self.total_updates
        h[_kernels.SH_DONE] = int(self.done)
        h[_kernels.SH_FROZEN] = int(self.done)  # last: workers may push from here on

    def shared_counts(self) -> tuple[int, int]:
        """``(updates this epoch, updates in all)`` as the shared model counts them."""
        h = self.shared.header
        return int(h[_kernels.SH_UPDATES]), int(h[_kernels.SH_TOTAL])

    def shared_epoch_end(self) -> bool:
        """If the workers froze the shared model (the epoch's last update, or a non-finite
        loss): take its counters, end the epoch (evaluation, Importance Pruning, SET) and
        open the new topology for pushes, or mark phase 1 done. True if it ran."""
        sh = self.shared
        h = sh.header
        if not h[_kernels.SH_FROZEN] or h[_kernels.SH_DONE]:
            return False
        for slot, attr in _COUNTERS.items():
            count = int(h[slot])
            _kernels.shared_add(h, slot, -count)  # atomic: a late dropped push still counts
            setattr(self, attr, getattr(self, attr) + count)
        self._loss += float(sh.stats[0])
        sh.stats[0] = 0.0
        self.updates, self.total_updates = self.shared_counts()
        if h[_kernels.SH_FAILED]:
            self.failed = (f"the loss became non-finite at epoch {self.epoch + 1}, update "
                           f"{self.updates + 1}/{self.updates_per_epoch}")
        elif self.updates >= self.updates_per_epoch:
            self._end_epoch()
        if self.done:
            h[_kernels.SH_DONE] = 1
        else:
            self._publish()
        return True

    # ------------------------------------------------------------------ epochs
    def _snapshot_state(self) -> dict:
        state = self._copy_state()
        self._unsaved[self.epoch] = state
        for e in sorted(self._unsaved)[:-_KEEP_SNAPSHOTS]:
            del self._unsaved[e]
        return state

    def _end_epoch(self) -> None:
        self.epoch += 1
        t1 = time.perf_counter()
        test = {}
        if self.X_test is not None:
            test["test_loss"], test["test_accuracy"] = self.model.evaluate(self.X_test, self.y_test)
        t2 = time.perf_counter()
        if not math.isfinite(test.get("test_loss", 0.0)):
            self.failed = f"the test loss became {test['test_loss']} at epoch {self.epoch}"
            return
        if self.epoch < self.config.epochs:  # Importance Pruning when scheduled, then SET
            rng = np.random.default_rng([self.config.seed, self.epoch, 1])
            topology_step(self.model, self.config, self.epoch, rng)
            self.version += 1
            self._keys[self.version] = self._topology()
            for v in [v for v in self._keys if v <= self.version - _KEEP_VERSIONS]:
                del self._keys[v]
        t3 = time.perf_counter()
        train_seconds = t1 - self._t0
        self.rows.append(metrics_row(
            self.epoch, self._loss / max(self._samples, 1), test,
            marks_to_seconds(self._t0, t1, t2, t3), [la.nnz for la in self.model.layers],
            self.model.sizes, phase=self.mode, workers=self.workers,
            samples_per_second=self._samples / train_seconds if train_seconds > 0 else 0.0,
            bytes_moved=self._bytes, stale_updates=self._stale,
            mean_staleness=self._staleness / self._pushes if self._pushes else "",
            dropped_updates=self._dropped_updates, dropped_entries=self._dropped_entries,
            events="; ".join(self.events)))
        self.events = []
        self._snapshot = (self.epoch, self._snapshot_state())
        self._reset_epoch_stats()
        self.updates = 0
