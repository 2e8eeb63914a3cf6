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

from . import _kernels
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


def build_model(config: TrainConfig, X_train, n_classes: int, *, task: str = "classification",
                cap_density: bool = False, y_train=None, dense: bool = False) -> SparseMLP:
    """Erdős–Rényi model for ``config`` with the training set's standardisation.

    ``n_classes`` is the output width (the number of targets for ``task="regression"``,
    whose targets ``y_train`` give the target standardisation); ``cap_density`` caps
    hidden layers at density 1 instead of refusing (see :meth:`SparseMLP.create`);
    ``dense`` makes every layer fully connected (the dense baselines of ``reproduce``).
    """
    mean, std = feature_stats(X_train)
    t_mean = t_std = None
    if task == "regression" and y_train is not None:
        t_mean, t_std = feature_stats(validate_targets(X_train, y_train, n_classes, "train"))
    sizes = [X_train.shape[1], *config.hidden, n_classes]
    return SparseMLP.create(sizes, epsilon=math.inf if dense else config.epsilon,
                            rng=np.random.default_rng([config.seed, 0]),
                            activation=config.activation, alpha=config.alpha,
                            dropout=config.dropout, loss=config.loss, init=config.init,
                            fan_in=config.fan_in, input_mean=mean, input_std=std, task=task,
                            cap_density=cap_density or dense, target_mean=t_mean,
                            target_std=t_std)


def validate_targets(X, y, n_outputs: int, split: str) -> np.ndarray:
    """Real-valued regression targets for ``X``: finite, shape (n,) or (n, n_outputs);
    returned as float32 (n, n_outputs)."""
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.iscomplexobj(y):
        raise SparsetrainError(f"y_{split} must hold real numbers; got dtype {y.dtype}.")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != n_outputs or y.shape[0] != np.shape(X)[0]:
        raise SparsetrainError(
            f"y_{split} has shape {np.shape(y)}; this regression model expects "
            f"({np.shape(X)[0]}, {n_outputs})" + (f" or ({np.shape(X)[0]},)" if n_outputs == 1 else "")
            + ": one row of targets per sample.")
    y = np.ascontiguousarray(y, np.float32)
    if not np.all(np.isfinite(y)):
        raise SparsetrainError(f"y_{split} contains NaN or infinite targets (or values beyond "
                               "float32); targets must be finite. Remove or rescale them.")
    return y


def metrics_csv(history: list[dict], columns=METRIC_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
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
        Extra JSON-able facts stored with the checkpoint (dataset name, preset, options).
    verbose : bool
        Print one line per epoch (loss, accuracy, time).
    """

    #: Columns of ``metrics.csv``.
    columns = METRIC_COLUMNS

    def __init__(self, config: TrainConfig, out_dir=None, *, progress=None, run_info=None,
                 verbose=True):
        self.config = config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.verbose = bool(verbose)
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
        write_text(self.out_dir / "metrics.csv", metrics_csv(self.history, self.columns))

    def write_config(self, model: SparseMLP) -> None:
        if self.out_dir is None:
            return
        info = {"config": self.config.to_dict(), "run": self.run_info, "sizes": model.sizes,
                "connections_at_start": [la.nnz for la in model.layers]}
        write_text(self.out_dir / "config.json", json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------ training
    def fit(self, model: SparseMLP, X_train, y_train, X_test=None, y_test=None) -> list[dict]:
        """Train from ``self.epoch + 1`` to ``config.epochs``; returns the metrics history.

        Without a test set (``X_test=None``) evaluation is skipped and each history row
        holds the training loss only. To train ``k`` more epochs on the same model (the
        estimators' ``partial_fit``), raise ``config.epochs`` by ``k`` and call ``fit``
        again: the SET step skipped after the previous last epoch is applied first.
        ``y``: integer labels, or real targets (n,) / (n, n_outputs) for a regression model.
        """
        cfg = self.config
        _kernels.enable_flush_to_zero()  # subnormals would make some batches ~100x slower
        X_train, y_train, X_test, y_test = self.prepare_data(model, X_train, y_train, X_test, y_test)
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

    def prepare_data(self, model: SparseMLP, X_train, y_train, X_test=None, y_test=None):
        """Validated float32/int64 (or float32 target) arrays for :meth:`fit`; without a test
        set, the training split is validated alone and ``X_test, y_test`` stay None."""
        has_test = X_test is not None
        if has_test != (y_test is not None):
            raise SparsetrainError("give both X_test and y_test, or neither")
        if not has_test:  # validate the training split alone
            X_test, y_test = X_train, y_train
        if model.task == "regression":
            validate_arrays(X_train, np.zeros(len(X_train), np.int64), X_test,
                            np.zeros(len(X_test), np.int64), 2)
            y_train = validate_targets(X_train, y_train, model.n_outputs, "train")
            y_test = validate_targets(X_test, y_test, model.n_outputs, "test")
        else:
            n_classes = validate_arrays(X_train, y_train, X_test, y_test, model.n_outputs)
            if n_classes != model.n_outputs:
                raise SparsetrainError(f"the labels have {n_classes} classes but the model has "
                                       f"{model.n_outputs} outputs")
            y_train = np.asarray(y_train, np.int64)
            y_test = np.asarray(y_test, np.int64)
        if X_train.shape[1] != model.n_features:
            raise SparsetrainError(f"X_train has {X_train.shape[1]} features but the model "
                                   f"expects {model.n_features}")
        X_train = np.ascontiguousarray(X_train, np.float32)
        X_test = np.ascontiguousarray(X_test, np.float32) if has_test else None
        return X_train, y_train, X_test, (y_test if has_test else None)

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
        test = {}
        if X_test is not None:
            test["test_loss"], test["test_accuracy"] = model.evaluate(X_test, y_test)
            if not math.isfinite(test["test_loss"]):
                self._non_finite(test["test_loss"], epoch, "evaluation")
        t2 = time.perf_counter()
        if epoch < cfg.epochs:  # topology changes after every epoch but the last
            self._topology_step(model, epoch)
        else:
            self.evolved = False
        t3 = time.perf_counter()
        row = {"epoch": epoch, "train_loss": total / n, **test, "epoch_seconds": t3 - t0,
               "train_seconds": t1 - t0,
               "eval_seconds": t2 - t1, "evolution_seconds": t3 - t2,
               "n_connections": model.n_connections,
               "connections_per_layer": " ".join(str(la.nnz) for la in model.layers),
               "neurons_per_layer": " ".join(str(n) for n in model.sizes)}
        if self.verbose:
            scores = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in test.items())
            tqdm.write(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}"
                       f"{scores}, {row['epoch_seconds']:.2f} s")
        return row

    def prunes_after(self, epoch: int) -> bool:
        """Whether Importance Pruning runs after ``epoch`` (from ``ip_start`` every ``ip_step``
        epochs, never after the last)."""
        cfg = self.config
        return (cfg.ip_start is not None and cfg.ip_start <= epoch < cfg.epochs
                and (epoch - cfg.ip_start) % cfg.ip_step == 0)

    def _topology_step(self, model, epoch):
        """After ``epoch``: Importance Pruning when scheduled (pruned neurons folded into the
        next layer's bias and removed; the percentile over the configured hidden widths, so
        resuming from a checkpoint prunes as the uninterrupted run), then SET evolution
        (randomness from ``(seed, epoch, 1)``; after a pruning step it regrows fewer, see
        :func:`sparsetrain.pruning.regrowth_targets`)."""
        targets = [None] * len(model.layers)
        if self.prunes_after(epoch):
            from .pruning import model_constants, original_widths, regrowth_targets

            widths = original_widths(self.config.hidden, model.layers)
            prune_neurons(model.layers, self.config.ip_percentile,
                          constants=model_constants(model), original_widths=widths)
            targets = regrowth_targets(model.layers, widths, self.config.zeta)
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        last = len(model.layers) - 1
        for l, layer in enumerate(model.layers):
            if l < last or self.config.evolve_output:
                evolve_layer(layer, self.config.zeta, rng, target_nnz=targets[l],
                             regrow=self.config.regrow)
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
        if self.out_dir is None or not self.history or "test_accuracy" not in self.history[-1]:
            return
        from .plots import learning_curve

        learning_curve(self.history, self.out_dir / "learning_curve.png")
