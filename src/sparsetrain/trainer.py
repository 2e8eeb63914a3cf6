"""Sequential SET training: shuffle, mini-batch momentum SGD, evaluate, evolve, checkpoint.

Epoch ``e`` (1-based) draws all its randomness (shuffle, dropout masks,
regrowth positions) from ``numpy.random.default_rng([seed, e])``, so a run
resumed after epoch ``e - 1`` continues exactly as the uninterrupted run would.

With an output folder, every finished epoch writes (atomically, in this order)
``model.npz`` (weights, momentum, config, metrics history, epoch) and
``metrics.csv``; the learning-curve PNG is drawn when training stops. With a validation
split, ``best_model.npz`` holds the network of the epoch of best validation accuracy
(the first such epoch), as it was evaluated: before that epoch's topology step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import _kernels
from . import memory as _memory
from .config import TrainConfig
from .data import check_targets, check_X, check_y, feature_stats
from .errors import NonFiniteLossError, SparsetrainError
from .io import load_model, save_model, write_csv, write_text
from .model import SparseMLP
from .schedule import METRIC_COLUMNS, prunes_after, run_epoch, topology_step


def build_model(config: TrainConfig, X_train, n_classes: int, *, task: str = "classification",
                cap_density: bool = False, y_train=None, dense: bool = False,
                memory_budget: int | None = None) -> SparseMLP:
    """Erdős–Rényi model for ``config`` with the training set's standardisation.

    ``n_classes`` is the output width (the number of targets for ``task="regression"``,
    whose targets ``y_train`` give the target standardisation); ``cap_density`` caps
    hidden layers at density 1 instead of refusing (see :meth:`SparseMLP.create`);
    ``dense`` makes every layer fully connected (the dense baselines of ``reproduce``).

    A network that cannot train in ``memory_budget`` bytes (default: a share of the
    available memory, :func:`sparsetrain.memory.default_budget`) even with micro-batches
    of 16 samples is refused before anything is allocated.
    """
    sizes = [X_train.shape[1], *config.hidden, n_classes]
    plan = check_fits(config, sizes,
                      _memory.er_connections(sizes, math.inf if dense else config.epsilon),
                      memory_budget)
    mean, std = feature_stats(X_train)
    t_mean = t_std = None
    if task == "regression" and y_train is not None:
        t_mean, t_std = feature_stats(validate_targets(X_train, y_train, n_classes, "train"))
    return SparseMLP.create(sizes, epsilon=math.inf if dense else config.epsilon,
                            rng=np.random.default_rng([config.seed, 0]),
                            activation=config.activation, alpha=config.alpha,
                            dropout=config.dropout, loss=config.loss, init=config.init,
                            fan_in=config.fan_in, input_mean=mean, input_std=std, task=task,
                            cap_density=cap_density or dense, target_mean=t_mean,
                            target_std=t_std, fan_in_ref=config.fan_in_ref, csc=plan.csc)


def check_fits(config: TrainConfig, sizes, connections,
               memory_budget: int | None = None) -> _memory.MemoryPlan:
    """The memory plan of training a network of ``sizes`` with ``connections`` per layer
    under ``config``; raises :class:`SparsetrainError` with one line (the estimate, the
    memory available, what to change) if nothing fits."""
    budget = _memory.default_budget() if memory_budget is None else int(memory_budget)
    srelu = config.activation == "srelu"
    layouts = {"keep": (True,), "drop": (False,), "auto": (True, False)}[config.csc_index]
    for csc in layouts:
        plan = _memory.plan_micro_batch(sizes, connections, config.batch_size, budget,
                                        micro_batch=config.micro_batch, neuron_params=srelu,
                                        csc=csc)
        if plan is not None:
            return plan
    smallest = _memory.plan_micro_batch(sizes, connections, config.batch_size, budget,
                                        micro_batch=16, neuron_params=srelu, csc=layouts[-1])
    shape = "-".join(str(n) for n in sizes)
    raise SparsetrainError(_memory.refusal(smallest, f"The network {shape}"))


def validate_targets(X, y, n_outputs: int, split: str) -> np.ndarray:
    """Regression targets for ``X`` as float32 (n, n_outputs): :func:`~sparsetrain.data.check_targets`."""
    return check_targets(y, f"y_{split}", n_rows=len(X), n_outputs=n_outputs, rows=f"X_{split}")


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
        Print one line per epoch (loss, accuracy, time), and the memory plan.
    memory_budget : int, optional
        Bytes the model, its work arrays and the SET step may use (default: a share of
        the available memory). It sets the micro-batch when ``config.micro_batch`` is
        None (:mod:`sparsetrain.memory`).
    """

    #: Columns of ``metrics.csv``.
    columns = METRIC_COLUMNS

    def __init__(self, config: TrainConfig, out_dir=None, *, progress=None, run_info=None,
                 verbose=True, memory_budget: int | None = None):
        self.config = config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.verbose = bool(verbose)
        self.run_info = dict(run_info or {})
        self.history: list[dict] = []
        self.epoch = 0
        self.evolved = True  # whether the topology step after self.epoch has been applied
        self.memory_budget = memory_budget
        self.memory_plan: _memory.MemoryPlan | None = None

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

    @property
    def best_model_path(self) -> Path | None:
        """``best_model.npz``: the network of the best validation epoch (with a split)."""
        return self.out_dir / "best_model.npz" if self.out_dir else None

    def _keep_best(self, model: SparseMLP, epoch: int, scores: dict) -> None:
        """Write ``best_model.npz`` when ``scores`` beat every earlier validation accuracy
        of the run (the history holds them, also after a resume)."""
        acc = scores.get("val_accuracy")
        if self.out_dir is None or acc is None:
            return
        earlier = [r["val_accuracy"] for r in self.history if "val_accuracy" in r]
        if earlier and not acc > max(earlier):
            return
        save_model(self.best_model_path, model, {"epoch": epoch, "val_accuracy": acc,
                                                 "test_accuracy": scores.get("test_accuracy"),
                                                 "run": self.run_info})

    def _save(self, model: SparseMLP) -> None:
        if self.out_dir is None:
            return
        extra = {"epoch": self.epoch, "evolved": self.evolved, "config": self.config.to_dict(),
                 "history": self.history, "run": self.run_info}
        save_model(self.checkpoint_path, model, extra)
        self.write_metrics()

    def write_metrics(self) -> None:
        """``metrics.csv``: one row per epoch of :attr:`history`, columns :attr:`columns`."""
        if self.out_dir is not None:
            write_csv(self.out_dir / "metrics.csv", self.history, self.metric_columns)

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
        X_train, y_train, self._val = self.split_validation(X_train, y_train)
        self.plan_memory(model)
        if not self.evolved and 0 < self.epoch < cfg.epochs:
            # The schedule was extended after its last epoch: apply the step it skipped.
            self._topology_step(model, self.epoch)
        try:
            for epoch in range(self.epoch + 1, cfg.epochs + 1):
                row = self._epoch(model, epoch, X_train, y_train, X_test, y_test)
                self.history.append(row)
                self.epoch = epoch
                self._save(model)
        finally:
            self.plot()
        return self.history

    def plan_memory(self, model: SparseMLP) -> _memory.MemoryPlan:
        """Set ``model.micro_batch`` from ``config.micro_batch`` or, if None, from the
        memory plan (the whole batch when it fits in the budget), and keep or drop the
        layers' CSC index as ``config.csc_index`` and the plan say; refuses a model that
        does not fit even in micro-batches of 16 samples."""
        budget = self.memory_budget
        conns = [la.nnz for la in model.layers]
        if budget is None:  # what is free now, plus what the model already holds
            budget = (_memory.default_budget()
                      + _memory.model_bytes(model.sizes, conns, csc=model.csc))
        plan = check_fits(self.config, model.sizes, conns, budget)
        model.set_csc(plan.csc)
        model.micro_batch = plan.micro_batch if plan.micro_batch < plan.batch else None
        if self.verbose and (plan.micro_batch < plan.batch or plan.total > 1 << 30
                             or not plan.csc):
            tqdm.write(f"sparsetrain: {plan.describe()}")
        self.memory_plan = plan
        return plan

    def split_validation(self, X_train, y_train):
        """``(X, y, (X_val, y_val) or None)``: the training set without the held-out
        ``config.val_fraction`` (at least one sample each side), drawn from
        ``(seed, 'validation')`` so that a resumed run holds out the same rows."""
        frac = self.config.val_fraction
        if not frac:
            return X_train, y_train, None
        n = X_train.shape[0]
        if n < 2:
            raise SparsetrainError(f"val_fraction {frac} needs at least 2 training samples; "
                                   f"got {n}")
        n_val = min(max(1, round(frac * n)), n - 1)
        perm = np.random.default_rng([self.config.seed, 0x76616C]).permutation(n)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        return X_train[train], y_train[train], (X_train[val], y_train[val])

    @property
    def metric_columns(self) -> list[str]:
        """:attr:`columns`, with the validation columns after the test ones if held out."""
        if not self.config.val_fraction:
            return list(self.columns)
        cols = list(self.columns)
        at = cols.index("test_accuracy") + 1
        return cols[:at] + ["val_loss", "val_accuracy"] + cols[at:]

    def prepare_data(self, model: SparseMLP, X_train, y_train, X_test=None, y_test=None):
        """Float32 features and int64 labels (or float32 targets) for :meth:`fit`, checked
        against ``model`` by :func:`~sparsetrain.data.check_X` and
        :func:`~sparsetrain.data.check_y`; without a test set ``X_test, y_test`` stay None."""
        if (X_test is None) != (y_test is None):
            raise SparsetrainError("give both X_test and y_test, or neither")
        arrays = []
        for split, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
            if X is not None:
                X = check_X(X, f"X_{split}", n_features=model.n_features,
                            expected=f"the model expects {model.n_features}")
                y = check_y(y, f"y_{split}", task=model.task, n_rows=len(X),
                            n_outputs=model.n_outputs, rows=f"X_{split}")
                X = np.ascontiguousarray(X, np.float32)
            arrays += [X, y]
        return tuple(arrays)

    def _epoch(self, model, epoch, X_train, y_train, X_test, y_test) -> dict:
        """Epoch ``epoch``: shuffle and dropout from ``(seed, epoch)``, the topology step
        (Importance Pruning, then SET) from ``(seed, epoch, 1)``."""
        cfg = self.config
        X_val, y_val = self._val or (None, None)
        row = run_epoch(model, X_train, y_train, cfg, epoch, shuffle_key=[cfg.seed, epoch],
                        topology=lambda signal: self._topology_step(model, epoch, signal),
                        on_non_finite=lambda value, where: self._non_finite(value, epoch, where),
                        X_test=X_test, y_test=y_test, progress=self.progress, X_val=X_val,
                        y_val=y_val, evaluated=lambda scores: self._keep_best(model, epoch, scores))
        if epoch == cfg.epochs:
            self.evolved = False  # the step after the last epoch waits for a longer schedule
        if self.verbose:
            test = {k: row[k] for k in ("test_loss", "test_accuracy", "val_accuracy")
                    if k in row}
            scores = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in test.items())
            tqdm.write(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}"
                       f"{scores}, {row['epoch_seconds']:.2f} s")
        return row

    def prunes_after(self, epoch: int) -> bool:
        """Whether Importance Pruning runs after ``epoch`` (see
        :func:`sparsetrain.schedule.prunes_after`)."""
        return prunes_after(self.config, epoch)

    def _topology_step(self, model, epoch, signal=None):
        """The topology step after ``epoch`` (:func:`sparsetrain.schedule.topology_step`:
        Importance Pruning when scheduled, then SET from ``(seed, epoch, 1)``; ``signal``:
        what a gradient growth rule scores with)."""
        topology_step(model, self.config, epoch,
                      np.random.default_rng([self.config.seed, epoch, 1]), signal=signal)
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
