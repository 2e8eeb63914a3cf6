"""Sequential SET training: shuffle, mini-batch momentum SGD, evaluate, evolve, checkpoint.

Epoch ``e`` (1-based) draws all its randomness (shuffle, dropout masks,
regrowth positions) from ``numpy.random.default_rng([seed, e])``, so a run
resumed after epoch ``e - 1`` continues exactly as the uninterrupted run would.

With an output folder, every finished epoch writes (atomically, in this order)
``model.npz`` (weights, momentum, config, metrics history, epoch) and
``metrics.csv``; the learning-curve PNG is drawn when training stops.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import feature_stats, validate_arrays
from .errors import NonFiniteLossError, SparsetrainError
from .evolution import evolve_layer
from .io import load_model, save_model, write_text
from .model import SparseMLP
from .pruning import prune_neurons

METRIC_COLUMNS = ["epoch", "train_loss", "test_loss", "test_accuracy", "epoch_seconds",
                  "train_seconds", "eval_seconds", "evolution_seconds", "n_connections",
                  "connections_per_layer", "neurons_per_layer"]


def build_model(config: TrainConfig, X_train, n_classes: int) -> SparseMLP:
    """Erdős–Rényi model for ``config`` with the training set's standardisation."""
    mean, std = feature_stats(X_train)
    sizes = [X_train.shape[1], *config.hidden, n_classes]
    return SparseMLP.create(sizes, epsilon=config.epsilon,
                            rng=np.random.default_rng([config.seed, 0]),
                            activation=config.activation, alpha=config.alpha,
                            dropout=config.dropout, loss=config.loss, init=config.init,
                            fan_in=config.fan_in, input_mean=mean, input_std=std)


def metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
    return buf.getvalue()


class Trainer:
    """Runs :class:`TrainConfig` on a :class:`SparseMLP`.

    Parameters
    ----------
    config : TrainConfig
    out_dir : path, optional
        Run folder for ``model.npz``, ``metrics.csv``, ``config.json`` and the PNG.
    progress : bool or None
        tqdm progress bar (None: only on a terminal).
    run_info : dict, optional
        Extra JSON-able facts stored with the checkpoint (dataset name, options).
    """

    def __init__(self, config: TrainConfig, out_dir=None, *, progress=None, run_info=None):
        self.config = config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.run_info = dict(run_info or {})
        self.history: list[dict] = []
        self.epoch = 0
        self.evolved = True  # whether the topology step after self.epoch has been applied

    # ------------------------------------------------------------------ state
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "model.npz" if self.out_dir else None

    @classmethod
    def from_checkpoint(cls, out_dir, *, epochs=None, progress=None):
        """Trainer and model restored from ``out_dir/model.npz`` (config, epoch, history).

        ``epochs`` may extend (or shorten) the saved schedule; nothing else changes.
        """
        model, meta = load_model(Path(out_dir) / "model.npz")
        if "config" not in meta:
            raise SparsetrainError(f"{out_dir}/model.npz holds no training state to resume")
        cfg = TrainConfig.from_dict(meta["config"])
        if epochs is not None:
            cfg.epochs = epochs
        trainer = cls(cfg, out_dir, progress=progress, run_info=meta.get("run", {}))
        trainer.epoch = int(meta.get("epoch", 0))
        trainer.evolved = bool(meta.get("evolved", True))
        trainer.history = [r for r in meta.get("history", []) if r["epoch"] <= trainer.epoch]
        return trainer, model

    def _save(self, model: SparseMLP) -> None:
        if self.out_dir is None:
            return
        extra = {"epoch": self.epoch, "evolved": self.evolved, "config": self.config.to_dict(),
                 "history": self.history, "run": self.run_info}
        save_model(self.checkpoint_path, model, extra)
        write_text(self.out_dir / "metrics.csv", metrics_csv(self.history))

    def write_config(self, model: SparseMLP) -> None:
        if self.out_dir is None:
            return
        info = {"config": self.config.to_dict(), "run": self.run_info, "sizes": model.sizes,
                "connections_at_start": [la.nnz for la in model.layers]}
        write_text(self.out_dir / "config.json", json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------ training
    def fit(self, model: SparseMLP, X_train, y_train, X_test, y_test) -> list[dict]:
        """Train from ``self.epoch + 1`` to ``config.epochs``; returns the metrics history."""
        cfg = self.config
        n_classes = validate_arrays(X_train, y_train, X_test, y_test, model.n_outputs)
        if n_classes != model.n_outputs:
            raise SparsetrainError(f"the labels have {n_classes} classes but the model has "
                                   f"{model.n_outputs} outputs")
        if X_train.shape[1] != model.n_features:
            raise SparsetrainError(f"X_train has {X_train.shape[1]} features but the model "
                                   f"expects {model.n_features}")
        X_train = np.ascontiguousarray(X_train, np.float32)
        X_test = np.ascontiguousarray(X_test, np.float32)
        y_train = np.asarray(y_train, np.int64)
        y_test = np.asarray(y_test, np.int64)
        n = X_train.shape[0]
        n_batches = math.ceil(n / cfg.batch_size)
        if not self.evolved and 0 < self.epoch < cfg.epochs:
            # The schedule was extended after its last epoch: apply the step it skipped.
            self._topology_step(model, self.epoch)
        try:
            for epoch in range(self.epoch + 1, cfg.epochs + 1):
                row = self._epoch(model, epoch, X_train, y_train, X_test, y_test, n, n_batches)
                self.history.append(row)
                self.epoch = epoch
                self._save(model)
        finally:
            self.plot()
        return self.history

    def _epoch(self, model, epoch, X_train, y_train, X_test, y_test, n, n_batches) -> dict:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch])
        perm = rng.permutation(n).astype(np.int64)
        seeds = rng.integers(0, 2**62, size=n_batches)
        total = 0.0
        t0 = time.perf_counter()
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   leave=False, disable=(None if self.progress is None else not self.progress))
        for b in bar:
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = model.train_step(X_train, y_train, idx, lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, seed=int(seeds[b]))
            if not math.isfinite(loss):
                self._non_finite(loss, epoch, f"batch {b + 1}/{n_batches}")
            total += loss * idx.shape[0]
            if b % 20 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.close()
        t1 = time.perf_counter()
        test_loss, test_acc = model.evaluate(X_test, y_test)
        if not math.isfinite(test_loss):
            self._non_finite(test_loss, epoch, "evaluation")
        t2 = time.perf_counter()
        if epoch < cfg.epochs:  # topology changes after every epoch but the last
            self._topology_step(model, epoch)
        else:
            self.evolved = False
        t3 = time.perf_counter()
        row = {"epoch": epoch, "train_loss": total / n, "test_loss": test_loss,
               "test_accuracy": test_acc, "epoch_seconds": t3 - t0, "train_seconds": t1 - t0,
               "eval_seconds": t2 - t1, "evolution_seconds": t3 - t2,
               "n_connections": model.n_connections,
               "connections_per_layer": " ".join(str(la.nnz) for la in model.layers),
               "neurons_per_layer": " ".join(str(n) for n in model.sizes)}
        tqdm.write(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
                   f"test loss {test_loss:.4f}, test accuracy {test_acc:.4f}, "
                   f"{row['epoch_seconds']:.2f} s")
        return row

    def prunes_after(self, epoch: int) -> bool:
        """Whether Importance Pruning runs after ``epoch`` (from ``ip_start`` every ``ip_step``
        epochs, never after the last)."""
        cfg = self.config
        return (cfg.ip_start is not None and cfg.ip_start <= epoch < cfg.epochs
                and (epoch - cfg.ip_start) % cfg.ip_step == 0)

    def _topology_step(self, model, epoch):
        """After ``epoch``: Importance Pruning when scheduled, then SET evolution (randomness
        from ``(seed, epoch, 1)``)."""
        if self.prunes_after(epoch):
            prune_neurons(model.layers, self.config.ip_percentile)
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        last = len(model.layers) - 1
        for l, layer in enumerate(model.layers):
            if l < last or self.config.evolve_output:
                evolve_layer(layer, self.config.zeta, rng)
        model.invalidate_buffers()
        self.evolved = True

    def _non_finite(self, value, epoch, where):
        kept = (f"the last good checkpoint (epoch {self.epoch}) is kept at {self.checkpoint_path}"
                if self.checkpoint_path is not None and self.epoch > 0 else "no checkpoint was written")
        raise NonFiniteLossError(
            f"training stopped: the loss became {value} at epoch {epoch}, {where}; {kept}. "
            f"Try a lower learning rate (--lr, now {self.config.lr:g}) and check that the "
            f"inputs are standardised.")

    def plot(self) -> None:
        """Learning curves (loss and test accuracy per epoch) as ``learning_curve.png``."""
        if self.out_dir is None or not self.history:
            return
        from .plots import learning_curve

        learning_curve(self.history, self.out_dir / "learning_curve.png")
