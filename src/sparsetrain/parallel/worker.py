"""A WASAP/WASSP worker without Ray: a replica of the model and a shard of the data.

Phase 1: :meth:`Worker.gradient` gives the loss and the gradient vector of the next
mini-batch of the shard on the replica; :meth:`Worker.receive` takes the server's answer
(current values, or a full state after a topology change). In local-steps mode
(:meth:`~sparsetrain.parallel.server.ParameterServer.push_delta`) the worker trains its
replica itself (:meth:`Worker.train_local`), pushes its progress (:meth:`Worker.delta`)
and takes the server's change since its copy (:meth:`Worker.receive_delta`). Phase 2:
:meth:`Worker.local_epoch` trains the replica on the shard for one pass with momentum
SGD (the sequential trainer's epoch, :func:`~sparsetrain.schedule.run_epoch`), then
evolves its topology with SET on its own randomness, without Importance Pruning (see
there why).

Randomness: the batch order of shard pass ``p`` comes from ``(seed, 7, rank, start, p)``
(``start`` counts restarts of the worker), dropout seeds from the same stream; phase-2
epoch ``e`` from ``(seed, e, 7, rank)`` and its evolution from ``(seed, e, 1, rank + 1)``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..config import TrainConfig
from ..errors import NonFiniteLossError, SparsetrainError
from ..optim import fan_in_lr_scales, hyperparameters
from ..schedule import run_epoch, topology_step
from .state import (
    bind_values,
    get_values,
    get_velocities,
    map_gradient,
    model_from_state,
    pack_gradients,
    set_values,
    set_velocities,
    topology_keys,
)


class Worker:
    def __init__(self, rank: int, X, y, config: TrainConfig, *, start: int = 0, X_test=None,
                 y_test=None):
        self.rank = int(rank)
        self.X = X
        self.y = y
        self.config = config
        self.X_test, self.y_test = X_test, y_test
        self.start = int(start)
        self.model = None
        self.version = -1
        self.step = -1  # the server's update count when this copy was sent
        self._pass = 0
        self._order = np.empty(0, np.int64)
        self._seeds = np.empty(0, np.int64)
        self._pos = 0
        self.steps = 0
        # Where the lr_warmup ramp stands: the server's epochs done at the last full state
        # and this worker's step count then (so a restarted or resumed worker does not
        # warm up again).
        self._ramp_at = (0.0, 0)
        self.compute_seconds = 0.0
        self.copy: np.ndarray | None = None  # local steps: the server's values as known here
        self._sent: np.ndarray | None = None  # local steps: the pushed delta not yet answered
        self._values: np.ndarray | None = None  # local steps: the replica's values, flat

    # ------------------------------------------------------------------ phase 1
    def _note_full(self, reply: dict) -> None:
        if "epochs" in reply:
            self._ramp_at = (float(reply["epochs"]), self.steps)

    def receive(self, reply: dict) -> None:
        if reply.get("state") is not None:
            self._note_full(reply)
            self.model, _ = model_from_state(reply["state"])
        elif reply.get("values") is not None:
            set_values(self.model, reply["values"])
        self.version = int(reply["version"])
        self.step = int(reply.get("step", -1))

    def _next_batch(self):
        if self._pos >= self._order.size:
            rng = np.random.default_rng([self.config.seed, 7, self.rank, self.start, self._pass])
            n = self.X.shape[0]
            self._order = rng.permutation(n).astype(np.int64)
            self._seeds = rng.integers(0, 2**62, size=math.ceil(n / self.config.batch_size))
            self._pos = 0
            self._pass += 1
        b = self._pos // self.config.batch_size
        idx = self._order[self._pos:self._pos + self.config.batch_size]
        self._pos += self.config.batch_size
        return idx, int(self._seeds[b])

    def gradient(self, out: np.ndarray | None = None) -> tuple[float, np.ndarray, int, int, int]:
        """``(loss, gradient vector, batch size, version, step)`` of the next mini-batch;
        the vector is written into ``out`` (at least as long) when given."""
        if self.model is None:
            raise SparsetrainError(f"worker {self.rank} has no model yet")
        t = time.perf_counter()
        idx, seed = self._next_batch()
        loss, grads = self.model.gradients(self.X, self.y, idx, seed=seed)
        g = pack_gradients(self.model, grads, out)
        self.compute_seconds += time.perf_counter() - t
        self.steps += 1
        return loss, g, int(idx.size), self.version, self.step

    def hyperparameters(self):
        """``(lr, momentum, weight_decay)`` of this worker's next step: the asynchronous
        schedule (constant ``lr``) after the ``lr_warmup`` ramp, whose position is the
        server's epochs done at the last full state plus this worker's steps since (its
        shard's batches make its epoch)."""
        per_epoch = max(1, math.ceil(self.X.shape[0] / self.config.batch_size))
        epochs, steps = self._ramp_at
        updates = round(epochs * per_epoch) + self.steps - steps
        return hyperparameters(self.config, updates=updates, updates_per_epoch=per_epoch)

    # ------------------------------------------------------------------ local steps
    def train_local(self, steps: int) -> tuple[float, int, int]:
        """``steps`` momentum-SGD steps of the replica on the next mini-batches of the
        shard (the asynchronous schedule: constant learning rate, width-aware per-layer
        rates); returns ``(loss sum, samples, steps)``, stopping after a non-finite loss."""
        if self.model is None:
            raise SparsetrainError(f"worker {self.rank} has no model yet")
        t = time.perf_counter()
        lr_scales = fan_in_lr_scales(self.model.layers, self.config.fan_in_ref)
        loss_sum, n, done = 0.0, 0, 0
        for _ in range(steps):
            lr, momentum, weight_decay = self.hyperparameters()
            idx, seed = self._next_batch()
            loss = self.model.train_step(self.X, self.y, idx, lr=lr, momentum=momentum,
                                         weight_decay=weight_decay, seed=seed,
                                         lr_scales=lr_scales)
            loss_sum += loss * idx.size
            n += int(idx.size)
            done += 1
            self.steps += 1
            if not math.isfinite(loss):
                break
        self.compute_seconds += time.perf_counter() - t
        return loss_sum, n, done

    def delta(self, dtype=np.float32) -> np.ndarray:
        """The replica's progress since its copy of the server's values, rounded to
        ``dtype``, to push; what rounding leaves out stays in the replica and goes with the
        next push (error feedback)."""
        self._sent = (self._values - self.copy).astype(dtype)
        return self._sent

    def receive_delta(self, reply: dict, fresh: bool = False) -> None:
        """Take the server's answer to a delta push: its change since this worker's copy
        (``delta``), or a full state (first contact, new topology). The replica keeps
        what it learned since the push (local steps run while the push travelled, and the
        rounding residual), mapped onto a new topology like a stale gradient, and its own
        momentum likewise (dropped when neurons were removed). ``fresh``: the state of a
        new server (or a first start), taken as it is, with nothing of the replica kept."""
        if fresh:
            self.copy = self._sent = None
        self.version = int(reply["version"])
        self.step = int(reply.get("step", -1))
        sent = 0.0 if self._sent is None else self._sent.astype(np.float32)
        self._sent = None
        if reply.get("state") is None:
            progress = self._values - self.copy - sent
            self.copy += reply["delta"]
            np.add(self.copy, progress, out=self._values)
            return
        self._note_full(reply)
        fresh = self.model is None or self.copy is None
        if not fresh:
            old = ([la.n_out for la in self.model.layers], topology_keys(self.model))
            progress = self._values - self.copy - sent
            velocity = get_velocities(self.model)
        self.model, _ = model_from_state(reply["state"])
        self.copy = get_values(self.model)
        # The replica's values as one vector its arrays are views of: a delta is one pass.
        self._values = np.empty_like(self.copy)
        bind_values(self.model, self._values)
        if fresh:
            return
        progress, _ = map_gradient(old, self.model, progress)
        velocity, _ = map_gradient(old, self.model, velocity)
        if progress is not None:
            np.add(self.copy, progress, out=self._values)
            set_velocities(self.model, velocity)

    # ------------------------------------------------------------------ phase 2
    def local_epoch(self, epoch: int) -> dict:
        """One pass over the shard, evaluation of the replica, then its SET step
        (:func:`~sparsetrain.schedule.run_epoch`); returns its metrics row with the
        shard's ``samples``."""
        if self.model is None:
            raise SparsetrainError(f"worker {self.rank} has no model for phase 2 (it was "
                                   "restarted after phase 1 ended)")
        cfg, model = self.config, self.model

        def topology(signal):
            # No Importance Pruning in phase 2 (prune=False): each replica would remove the
            # neurons its own weights rank lowest, different ones on different workers, and
            # the final averaging (state.average_models) needs every replica to keep the
            # same neurons. The server prunes in phase 1, where there is one model.
            rng = np.random.default_rng([cfg.seed, epoch, 1, self.rank + 1])
            topology_step(model, cfg, epoch, rng, prune=False, signal=signal)

        def fail(value, where):
            raise NonFiniteLossError(f"training stopped: the loss became {value} at epoch "
                                     f"{epoch} on worker {self.rank} (phase 2, {where})")

        row = run_epoch(model, self.X, self.y, cfg, epoch,
                        shuffle_key=[cfg.seed, epoch, 7, self.rank], topology=topology,
                        on_non_finite=fail, X_test=self.X_test, y_test=self.y_test)
        row["samples"] = self.X.shape[0]
        return row
