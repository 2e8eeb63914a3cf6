"""A WASAP/WASSP worker without Ray: a replica of the model and a shard of the data.

Phase 1: :meth:`Worker.gradient` gives the loss and the gradient vector of the next
mini-batch of the shard on the replica; :meth:`Worker.receive` takes the server's answer
(current values, or a full state after a topology change). Phase 2:
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
from ..schedule import run_epoch, topology_step
from .state import model_from_state, pack_gradients, set_values


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
        self.compute_seconds = 0.0

    # ------------------------------------------------------------------ phase 1
    def receive(self, reply: dict) -> None:
        if reply.get("state") is not None:
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

    # ------------------------------------------------------------------ phase 2
    def local_epoch(self, epoch: int) -> dict:
        """One pass over the shard, evaluation of the replica, then its SET step
        (:func:`~sparsetrain.schedule.run_epoch`); returns its metrics row with the
        shard's ``samples``."""
        if self.model is None:
            raise SparsetrainError(f"worker {self.rank} has no model for phase 2 (it was "
                                   "restarted after phase 1 ended)")
        cfg, model = self.config, self.model

        def topology():
            # No Importance Pruning in phase 2 (prune=False): each replica would remove the
            # neurons its own weights rank lowest, different ones on different workers, and
            # the final averaging (state.average_models) needs every replica to keep the
            # same neurons. The server prunes in phase 1, where there is one model.
            rng = np.random.default_rng([cfg.seed, epoch, 1, self.rank + 1])
            topology_step(model, cfg, epoch, rng, prune=False)

        def fail(value, where):
            raise NonFiniteLossError(f"training stopped: the loss became {value} at epoch "
                                     f"{epoch} on worker {self.rank} (phase 2, {where})")

        row = run_epoch(model, self.X, self.y, cfg, epoch,
                        shuffle_key=[cfg.seed, epoch, 7, self.rank], topology=topology,
                        on_non_finite=fail, X_test=self.X_test, y_test=self.y_test)
        row["samples"] = self.X.shape[0]
        return row
