"""Momentum SGD with L2 weight decay (SPEC 1.3): the one update rule of every training
path, and its learning-rate schedule.

For a trainable value ``w`` with gradient ``g`` and momentum (velocity) ``v``:

.. math::

    v \\leftarrow m\\,v - \\eta\\,(g + \\lambda\\,w), \\qquad w \\leftarrow w + v

with learning rate :math:`\\eta` (``lr``), momentum :math:`m` and weight decay
:math:`\\lambda` (connection values only; biases and activation parameters get
:math:`\\lambda = 0`). This is PyTorch's ``SGD(momentum=m, weight_decay=λ)`` with the
learning rate inside the velocity (``v`` holds ``-η`` times torch's buffer), which equals
it for a constant :math:`\\eta`. One departure: a velocity of magnitude below the
smallest normal float32 (:data:`TINY`) is stored as zero, so no subnormal value enters
the next step's arithmetic (subnormal operands take a slow microcode path on x86).

:func:`momentum_velocity` is the rule itself, compiled once with exact IEEE float32
arithmetic (no fast-math, so no fused multiply-add): the sequential kernels
(:mod:`sparsetrain._kernels`), the parameter server (mailboxes, Ray calls, WASSP's
averaged step) and the workers' shared-model pushes (:mod:`sparsetrain.parallel._kernels`)
all call it, so the same inputs give the same bits on every path
(``tests/test_optim.py``).

:func:`scheduled_lr` is the learning-rate schedule: constant (the paper), or cosine-decayed
epoch by epoch (``lr_schedule="cosine"``, Loshchilov & Hutter 2017), after an optional
linear ramp and with WASSP's linear warm-up from ``lr`` to ``K lr`` (Goyal et al. 2017);
:func:`hyperparameters` is where the learning rate, momentum and weight decay are read from
a :class:`~sparsetrain.config.TrainConfig`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

# Smallest normal float32. Subnormal operands take a slow microcode path on x86 (figures
# in docs/benchmarks/kernel-notes.md); a confident softmax underflows to them and they
# spread through deltas and momentum, so values below this are flushed to zero where they
# arise (no information is lost).
TINY = np.float32(np.finfo(np.float32).tiny)


@numba.njit(fastmath=False, cache=True)  # explicit: Numba would inherit the caller's
def momentum_velocity(v, g, w, lr, momentum, weight_decay):
    """The new velocity ``momentum * v - lr * (g + weight_decay * w)``, zero below TINY.

    Scalar float32 arguments; the caller stores it as the velocity and adds it to ``w``.
    No fast-math flags (set explicitly, or a fast-math caller's would be inherited): LLVM
    inlines it but may not contract it into fused multiply-adds, so vectorised and scalar
    copies of a loop round alike in every kernel that calls it, and the result does not
    depend on where a scheduling chunk starts.
    """
    vk = momentum * v - lr * (g + weight_decay * w)
    return vk if abs(vk) >= TINY else np.float32(0.0)


@numba.njit(fastmath=False, cache=True)
def velocity_start(v, g, w, lr, momentum, weight_decay):
    """The first micro-batch's share of a step's velocity: ``momentum * v - lr * (g +
    weight_decay * w)`` without the flush (the micro-batches that follow subtract
    :func:`velocity_add`'s ``lr * g``; :func:`sparsetrain._kernels.apply_velocity` flushes
    and moves ``w`` after the last). Adding into the velocity instead of a gradient
    buffer equals the one-pass rule up to float rounding. No fast-math, as above."""
    return momentum * v - lr * (g + weight_decay * w)


@numba.njit(fastmath=False, cache=True)
def velocity_add(v, g, lr):
    """``v - lr * g``: a later micro-batch's share (see :func:`velocity_start`)."""
    return v - lr * g


@numba.njit(parallel=True, fastmath=False, cache=True)
def momentum_sgd(w, v, g, lr, momentum, weight_decay):
    """Momentum SGD on flat float32 arrays, in place (see the module docstring)::

        v <- momentum * v - lr * (g + weight_decay * w);   w <- w + v

    Every element through :func:`momentum_velocity`, so the result is bit for bit the
    one the fused training kernels give, whatever the number of threads.
    """
    for k in prange(w.shape[0]):
        vk = momentum_velocity(v[k], g[k], w[k], lr, momentum, weight_decay)
        v[k] = vk
        w[k] += vk


class Hyperparameters(NamedTuple):
    """The scalars of one momentum-SGD step, as the kernels take them (float32)."""

    lr: np.float32
    momentum: np.float32
    weight_decay: np.float32


#: How the learning rate changes over the epochs (``TrainConfig.lr_schedule``).
LR_SCHEDULES = ("constant", "cosine")


def cosine_factor(epoch: int, epochs: int) -> float:
    """``(1 + cos(pi e / E)) / 2`` for ``e = epoch`` of ``E = epochs`` (``e`` clipped to
    ``[0, E]``): the factor of every cosine schedule. The learning rate takes it at the
    0-based epoch (1 in the first, above zero in the last), the rewired fraction
    (:func:`sparsetrain.evolution.scheduled_zeta`) after the 1-based epoch."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(epoch, 0), epochs) / max(epochs, 1)))


def scheduled_lr(lr: float, *, workers: int = 1, sync: bool = False, updates: int = 0,
                 warmup_updates: float = 0.0, ramp_updates: float = 0.0,
                 decay: float = 1.0) -> float:
    """Learning rate of update ``updates`` (0-based count of updates applied before it).

    ``decay``: the factor of the epoch-wise schedule (:func:`cosine_factor`, 1 for the
    constant one), applied first. ``ramp_updates`` (the config's ``lr_warmup`` in
    updates): the rate ramps linearly, ``lr_t = lr * min(1, (t + 1) / T_ramp)``, then the
    schedule below applies.

    Constant ``lr`` for sequential training, asynchronous pushes (WASAP) and one worker.
    Synchronous mode (WASSP: each update is the mean of ``K = workers`` gradients) ramps
    linearly to ``K lr`` over ``warmup_updates`` updates (Goyal et al. 2017)::

        lr_t = lr * (1 + (K - 1) * min(1, t / T_warmup))        (T_warmup = 0: K lr at once)
    """
    lr = lr * decay
    if ramp_updates:
        lr = lr * min(1.0, (updates + 1) / ramp_updates)
    if not sync or workers == 1:
        return lr
    frac = min(1.0, updates / warmup_updates) if warmup_updates else 1.0
    return lr * (1.0 + (workers - 1) * frac)


def hyperparameters(config, *, workers: int = 1, sync: bool = False, updates: int = 0,
                    warmup_updates: float = 0.0,
                    updates_per_epoch: int | None = None) -> Hyperparameters:
    """``(lr, momentum, weight_decay)`` of the next step of a run with ``config`` (a
    :class:`~sparsetrain.config.TrainConfig`), the learning rate from :func:`scheduled_lr`
    (the keyword arguments are its schedule's). ``config.lr_warmup`` and a cosine
    ``config.lr_schedule`` need ``updates_per_epoch`` (the ramp's length is counted in
    updates; the cosine's epoch is ``updates // updates_per_epoch``)."""
    ramp = config.lr_warmup
    cosine = config.lr_schedule == "cosine"
    if (ramp or cosine) and updates_per_epoch is None:
        raise ValueError("hyperparameters: lr_warmup and lr_schedule need updates_per_epoch")
    decay = cosine_factor(updates // updates_per_epoch, config.epochs) if cosine else 1.0
    lr = scheduled_lr(config.lr, workers=workers, sync=sync, updates=updates,
                      warmup_updates=warmup_updates,
                      ramp_updates=ramp * updates_per_epoch if ramp else 0.0, decay=decay)
    return Hyperparameters(np.float32(lr), np.float32(config.momentum),
                           np.float32(config.weight_decay))


def layer_lrs(lr: np.float32, layers, fan_in_ref: float | None) -> np.ndarray:
    """The learning rate of each layer's connection values (float32): ``lr`` times
    :func:`fan_in_lr_scales`, rounded as the training kernels round it."""
    return scaled_lrs(lr, fan_in_lr_scales(layers, fan_in_ref), len(layers))


def scaled_lrs(lr: np.float32, lr_scales, n_layers: int) -> np.ndarray:
    """``lr * lr_scales[l]`` per layer as float32 products (what the fused kernels compute
    from ``lr_scales``); ``lr`` for every layer when ``lr_scales`` is None."""
    lr = np.float32(lr)
    if lr_scales is None:
        return np.full(n_layers, lr, np.float32)
    return lr * np.asarray(lr_scales, np.float32)


def fan_in_lr_scales(layers, fan_in_ref: float | None) -> np.ndarray | None:
    """Width-aware learning rate (SPEC 1.11): the factor ``min(1, fan_in_ref / F_l)`` of each
    layer's connection learning rate, ``F_l = nnz_l / n_out_l`` its mean fan-in (the
    initial values of such a layer are scaled by the square root of the same factor, see
    :meth:`sparsetrain.model.SparseMLP.create`).

    One SGD step moves an output ``z_j = sum_i w_ij a_i`` by about
    ``lr * sum_i a_i^2 * delta_j``, which grows with the fan-in: a layer whose outputs
    each sum 10^5-10^6 inputs (the output layers of the paper's extreme-scale networks)
    moves 10^3-10^4 times further per step than one summing 10^2, and training diverges.
    Scaling such a layer's rate by ``fan_in_ref / F_l`` bounds that move at the one of a
    fan-in of ``fan_in_ref``; layers at or below it keep ``lr`` (so networks whose layers
    all have a fan-in up to ``fan_in_ref`` train exactly as with one rate). Biases keep
    ``lr``. Returns None (one rate everywhere) when ``fan_in_ref`` is None or no layer
    exceeds it.
    """
    if fan_in_ref is None:
        return None
    fan_in = np.array([la.nnz / max(la.n_out, 1) for la in layers])
    if np.all(fan_in <= fan_in_ref):
        return None
    return np.minimum(1.0, fan_in_ref / np.maximum(fan_in, 1e-30)).astype(np.float32)

