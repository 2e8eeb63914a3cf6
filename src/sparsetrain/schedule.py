"""One training epoch and the topology step after it: the schedule every trainer shares.

An epoch of truly sparse training (SPEC 1.3-1.6) is::

    shuffle -> mini-batch momentum-SGD steps -> evaluate -> topology step -> metrics row

:func:`run_epoch` runs it on one model (the sequential :class:`~sparsetrain.trainer.Trainer`
and each phase-2 worker of parallel training); :func:`topology_step` is the step after an
epoch, Importance Pruning (when scheduled, :func:`prunes_after`) then SET evolution, which
the parameter server also runs at the end of a phase-1 epoch; :func:`metrics_row` builds
the row every trainer reports. Randomness comes in as explicit seed keys
(``numpy.random.default_rng(key)``), so each caller keeps its own streams.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .evolution import (
    GRADIENT_SAMPLES,
    MOMENTUM_BATCHES,
    GrowthSignal,
    evolve_layers,
    scheduled_zeta,
)
from .optim import fan_in_lr_scales, hyperparameters
from .pruning import model_constants, original_widths, prune_neurons, regrowth_targets

#: Columns of ``metrics.csv`` (in this order) for a sequential run.
METRIC_COLUMNS = ["epoch", "train_loss", "test_loss", "test_accuracy", "epoch_seconds",
                  "train_seconds", "eval_seconds", "evolution_seconds", "n_connections",
                  "connections_per_layer", "neurons_per_layer", "train_loss_tenths"]


def prunes_after(config, epoch: int) -> bool:
    """Whether Importance Pruning runs after ``epoch`` (from ``ip_start`` every ``ip_step``
    epochs, never after the last) for a :class:`~sparsetrain.config.TrainConfig`."""
    return (config.ip_start is not None and config.ip_start <= epoch < config.epochs
            and (epoch - config.ip_start) % config.ip_step == 0)


def topology_step(model, config, epoch: int, rng: np.random.Generator, *,
                  prune: bool = True, signal: GrowthSignal | None = None) -> None:
    """The topology step after ``epoch``, in place on ``model``.

    1. Importance Pruning when ``prune`` and :func:`prunes_after` (pruned neurons folded
       into the next layer's bias and removed; the percentile over the configured hidden
       widths, so a run resumed from a checkpoint prunes as the uninterrupted one), see
       :mod:`sparsetrain.pruning`;
    2. SET evolution of every layer (the output layer if ``config.evolve_output``) from
       ``rng``, rewiring ``config.zeta`` on its ``zeta_schedule``; after a pruning step it
       regrows fewer (:func:`sparsetrain.pruning.regrowth_targets`). Where it regrows is
       ``config.grow``; the gradient rules score candidates with ``signal`` (the epoch's
       last batches, :func:`growth_signal`) and grow at random without one (a parameter
       server, or the first step after a resume) or after a pruning step (the recorded
       activations belong to the neurons before it).
    """
    targets = None
    zeta = scheduled_zeta(config.zeta, config.zeta_schedule, epoch, config.epochs)
    if prune and prunes_after(config, epoch):
        signal = None
        widths = original_widths(config.hidden, model.layers)
        prune_neurons(model.layers, config.ip_percentile, constants=model_constants(model),
                      original_widths=widths)
        targets = regrowth_targets(model.layers, widths, zeta)
    evolve_layers(model.layers, zeta, rng, evolve_output=config.evolve_output,
                  targets=targets, regrow=config.regrow, grow=config.grow, signal=signal,
                  candidates=config.grow_candidates)
    model.invalidate_buffers()


def growth_signal(config) -> GrowthSignal | None:
    """What the growth rule ``config.grow`` scores with, to fill during an epoch (None for
    random growth): the last batches of :data:`GRADIENT_SAMPLES` samples, their gradients
    summed (``gradient``), or the last :data:`MOMENTUM_BATCHES` weighted by
    ``momentum^age`` (``momentum``)."""
    if config.grow == "gradient":
        return GrowthSignal(math.ceil(GRADIENT_SAMPLES / config.batch_size), 1.0)
    if config.grow == "momentum":
        return GrowthSignal(MOMENTUM_BATCHES, config.momentum)
    return None


def metrics_row(epoch: int, train_loss: float, test: dict, seconds: Sequence[float],
                connections: Sequence[int], sizes: Sequence[int], **extra) -> dict:
    """One row of ``metrics.csv`` (:data:`METRIC_COLUMNS`, then ``extra``).

    ``test``: ``{"test_loss", "test_accuracy"}`` or empty (no test set); ``seconds``:
    ``(epoch, train, eval, evolution)``; ``connections``: per layer; ``sizes``: neurons
    per layer, input and output included.
    """
    epoch_s, train_s, eval_s, evolution_s = seconds
    return {"epoch": epoch, "train_loss": train_loss, **test, "epoch_seconds": epoch_s,
            "train_seconds": train_s, "eval_seconds": eval_s,
            "evolution_seconds": evolution_s, "n_connections": int(sum(connections)),
            "connections_per_layer": " ".join(str(c) for c in connections),
            "neurons_per_layer": " ".join(str(n) for n in sizes), **extra}


def marks_to_seconds(t0: float, t1: float, t2: float, t3: float) -> tuple[float, ...]:
    """``(epoch, train, eval, evolution)`` seconds from the clock readings at the start,
    after training, after evaluation and after the topology step."""
    return t3 - t0, t1 - t0, t2 - t1, t3 - t2


def run_epoch(model, X, y, config, epoch: int, *, shuffle_key: Sequence[int],
              topology: Callable[..., None], on_non_finite: Callable[[float, str], None],
              X_test=None, y_test=None, progress: bool | None = False, X_val=None,
              y_val=None, evaluated: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` for epoch ``epoch`` (1-based) of ``config`` on ``X, y``; returns its
    :func:`metrics_row`.

    The batch order and the batches' dropout seeds come from ``default_rng(shuffle_key)``;
    ``topology(signal)`` runs the topology step (normally :func:`topology_step` with the
    caller's seed key) after every epoch but the last; ``signal`` holds what the growth
    rule scores with (:func:`growth_signal`, None for random growth). ``X_val, y_val``:
    a validation split, evaluated after the test set (``val_loss``, ``val_accuracy``).
    ``evaluated(scores)``, if given, sees the test and validation scores while the model
    is still the one they measured (before the topology step). A non-finite batch or
    test loss calls ``on_non_finite(value, where)``, which is expected to raise.
    ``progress``: a tqdm bar over the batches (None: only on a terminal).
    """
    lr_scales = fan_in_lr_scales(model.layers, config.fan_in_ref)  # per layer, or None
    batch = config.batch_size
    n = X.shape[0]
    n_batches = math.ceil(n / batch)
    done = (epoch - 1) * n_batches  # updates before this epoch
    lr, momentum, weight_decay = hyperparameters(config, updates=done,
                                                 updates_per_epoch=n_batches)
    ramping = epoch - 1 < config.lr_warmup  # the learning rate changes batch by batch
    signal = growth_signal(config)
    record_from = n_batches - (signal.batches if signal is not None else 0)
    rng = np.random.default_rng(shuffle_key)
    perm = rng.permutation(n).astype(np.int64)
    seeds = rng.integers(0, 2**62, size=n_batches)
    losses = np.empty(n_batches)  # sum of each batch's sample losses
    total = 0.0  # summed in batch order, as before the tenths existed (same train_loss bits)
    t0 = time.perf_counter()
    # Over samples, so that the bar shows samples/s and the time left inside long epochs.
    bar = tqdm(total=n, desc=f"epoch {epoch}/{config.epochs}", unit="sample", unit_scale=True,
               leave=False, disable=None if progress is None else not progress)
    for b in range(n_batches):
        idx = perm[b * batch:(b + 1) * batch]
        if ramping:
            lr = hyperparameters(config, updates=done + b, updates_per_epoch=n_batches).lr
        loss = model.train_step(X, y, idx, lr=lr, momentum=momentum,
                                weight_decay=weight_decay, seed=int(seeds[b]),
                                lr_scales=lr_scales)
        if not math.isfinite(loss):
            on_non_finite(loss, f"batch {b + 1}/{n_batches}")
        if b >= record_from:
            signal.record(model)
        losses[b] = loss * idx.shape[0]
        total += losses[b]
        bar.update(idx.shape[0])
        if b % 20 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    bar.close()
    t1 = time.perf_counter()
    test = {}
    if X_test is not None:
        test["test_loss"], test["test_accuracy"] = model.evaluate(X_test, y_test)
        if not math.isfinite(test["test_loss"]):
            on_non_finite(test["test_loss"], "evaluation")
    if X_val is not None:
        test["val_loss"], test["val_accuracy"] = model.evaluate(X_val, y_val)
    if evaluated is not None:
        evaluated(test)
    t2 = time.perf_counter()
    if epoch < config.epochs:  # the topology changes after every epoch but the last
        topology(signal)
    t3 = time.perf_counter()
    return metrics_row(epoch, total / n, test, marks_to_seconds(t0, t1, t2, t3),
                       [la.nnz for la in model.layers], model.sizes,
                       train_loss_tenths=loss_tenths(losses, perm.shape[0], batch))


def loss_tenths(batch_losses: np.ndarray, n: int, batch: int) -> str:
    """Mean training loss over each tenth of the epoch's batches (fewer parts when there
    are fewer than ten batches), as space-separated numbers: does the loss fall inside
    an epoch (long epochs of very wide networks)."""
    sizes = np.full(batch_losses.shape[0], batch, np.float64)
    sizes[-1] = n - batch * (batch_losses.shape[0] - 1)
    parts = zip(np.array_split(batch_losses, min(10, batch_losses.shape[0])),
                np.array_split(sizes, min(10, batch_losses.shape[0])), strict=True)
    return " ".join(f"{loss.sum() / size.sum():.4g}" for loss, size in parts)
