"""Compiled kernels of the shared model (:class:`~sparsetrain.parallel.shm.SharedModel`).

WASAP phase 1 on one node: the parameter server's value and momentum vectors live in
shared memory behind an int64 header; each worker applies its own push there under a
lock whose word holds the owner's process id (:func:`shared_push`: the update rule of
:func:`sparsetrain.optim.momentum_velocity`, and the new values copied back into the
worker's replica in the same pass), and the server's thread runs only the epoch ends.
The atomics are those of the training kernels (:mod:`sparsetrain._kernels`); they work
across processes on shared memory.
"""

from __future__ import annotations

import numba
import numpy as np

from .._kernels import _SPIN, _atomic_add, _atomic_cas, _os_yield
from ..optim import momentum_velocity

# Header words (int64): the lock, the model's state flags and layout, then the epoch's
# counters, which the server's epoch end adds to its statistics and zeroes.
SH_LOCK, SH_FROZEN, SH_VERSION, SH_DONE, SH_FAILED, SH_SIZE, SH_N_WEIGHTS, SH_PER_EPOCH = range(8)
SH_UPDATES, SH_TOTAL, SH_SAMPLES, SH_STALENESS, SH_PUSHES, SH_BYTES, SH_STALE = range(8, 15)
SH_DROPPED_UPDATES, SH_DROPPED_ENTRIES = 15, 16
SH_WORDS = 32  # header size in int64 words (the vectors start 64-byte aligned after it)


@numba.njit(cache=True)
def shared_lock(header, owner, spins):
    """Try to take the lock for process ``owner`` (> 0) ``spins`` times; True if taken.
    Re-reads the word ``_SPIN`` times, then yields the CPU between tries."""
    for t in range(spins):
        if _atomic_cas(header, SH_LOCK, 0, owner) == 0:
            return True
        if t >= _SPIN:
            _os_yield()
    return False


@numba.njit(cache=True)
def shared_unlock(header, owner):
    """Release the lock if ``owner`` holds it (also: break the lock of a dead owner);
    True if it was released."""
    return _atomic_cas(header, SH_LOCK, owner, 0) == owner


@numba.njit(fastmath=False, cache=True)
def shared_push(header, stats, values, velocity, grad, mine, lr, momentum, weight_decay,
                owner, version, step, loss, n, stale, dropped_entries, spins,
                weight_ends=None, weight_lrs=None):
    """Apply one asynchronous push to the shared model: under the lock, momentum SGD
    (weight decay on the first ``header[SH_N_WEIGHTS]`` entries, the connection values)
    of ``grad`` on ``values``/``velocity``, the new values copied into ``mine`` (the
    worker's own value vector) in the same pass, and the epoch's counters updated.

    Applied only if the shared model is not frozen (an epoch end is due or running),
    holds topology ``version`` and has ``grad``'s size. The push that completes the epoch
    freezes the model; a non-finite ``loss`` is not applied and freezes it with
    ``SH_FAILED`` set. Returns the server's update count after this update (>= 1), -1 if
    the lock was not taken in ``spins`` tries, -2 if not applied.

    ``weight_lrs[l]`` (float32), if given, is the learning rate of the connection values
    of layer ``l``, entries ``weight_ends[l - 1]:weight_ends[l]`` (the width-aware
    rates of :func:`sparsetrain.optim.fan_in_lr_scales`); biases and the rest use ``lr``.
    """
    if not shared_lock(header, owner, spins):
        return -1
    status = -2
    size = grad.shape[0]
    if (header[SH_FROZEN] == 0 and header[SH_VERSION] == version
            and header[SH_SIZE] == size):
        if not np.isfinite(loss):
            header[SH_FAILED] = 1
            header[SH_FROZEN] = 1
        else:
            n_weights = header[SH_N_WEIGHTS]
            zero = np.float32(0.0)
            seg = 0
            for k in range(size):
                wd = weight_decay if k < n_weights else zero
                lr_k = lr
                if weight_lrs is not None and k < n_weights:
                    while seg < weight_ends.shape[0] - 1 and k >= weight_ends[seg]:
                        seg += 1
                    lr_k = weight_lrs[seg]
                vk = momentum_velocity(velocity[k], grad[k], values[k], lr_k, momentum, wd)
                velocity[k] = vk
                wk = values[k] + vk
                values[k] = wk
                mine[k] = wk
            total = header[SH_TOTAL]
            if step >= 0:
                header[SH_STALENESS] += total - step
                header[SH_PUSHES] += 1
            stats[0] += loss * n
            header[SH_SAMPLES] += n
            header[SH_BYTES] += 8 * size  # the gradient in, the values out
            header[SH_STALE] += stale
            header[SH_DROPPED_ENTRIES] += dropped_entries
            header[SH_TOTAL] = total + 1
            header[SH_UPDATES] += 1
            if header[SH_UPDATES] >= header[SH_PER_EPOCH]:
                header[SH_FROZEN] = 1
            status = total + 1
    shared_unlock(header, owner)
    return status


@numba.njit(cache=True)
def shared_add(header, slot, value):
    """``header[slot] += value`` atomically (counters kept outside the lock)."""
    return _atomic_add(header, slot, value)
