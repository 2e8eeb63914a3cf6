"""A WASAP/WASSP worker without Ray: a replica of the model and a shard of the data.

Phase 1: :meth:`Worker.gradient` gives the loss and the gradient vector of the next
mini-batch of the shard on the replica; :meth:`Worker.receive` takes the server's answer
(current values, or a full state after a topology change). Phase 2:
:meth:`Worker.local_epoch` trains the replica on the shard for one pass with momentum
SGD, then evolves its topology with SET on its own randomness.

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
from ..evolution import evolve_layer
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
        """One pass over the shard, evaluation of the replica, then its SET step."""
        if self.model is None:
            raise SparsetrainError(f"worker {self.rank} has no model for phase 2 (it was "
                                   "restarted after phase 1 ended)")
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch, 7, self.rank])
        n = self.X.shape[0]
        perm = rng.permutation(n).astype(np.int64)
        n_batches = math.ceil(n / cfg.batch_size)
        seeds = rng.integers(0, 2**62, size=n_batches)
        t0 = time.perf_counter()
        total = 0.0
        for b in range(n_batches):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = self.model.train_step(self.X, self.y, idx, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, seed=int(seeds[b]))
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"training stopped: the loss became {loss} at epoch "
                                         f"{epoch} on worker {self.rank} (phase 2)")
            total += loss * idx.size
        t1 = time.perf_counter()
        row = {"train_loss": total / n, "train_seconds": t1 - t0, "samples": n}
        if self.X_test is not None:
            row["test_loss"], row["test_accuracy"] = self.model.evaluate(self.X_test, self.y_test)
        t2 = time.perf_counter()
        if epoch < cfg.epochs:
            erng = np.random.default_rng([cfg.seed, epoch, 1, self.rank + 1])
            last = len(self.model.layers) - 1
            for l, layer in enumerate(self.model.layers):
                if l < last or cfg.evolve_output:
                    evolve_layer(layer, cfg.zeta, erng, regrow=cfg.regrow)
            self.model.invalidate_buffers()
        row["eval_seconds"] = t2 - t1
        row["evolution_seconds"] = time.perf_counter() - t2
        return row
