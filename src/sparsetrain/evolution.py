"""Sparse Evolutionary Training: prune the weakest connections, regrow at random (SPEC 1.4).

For a layer with connection values ``w`` and rewiring fraction ``zeta``:

1. negatives ``N = {k : w_k < 0}`` lose the ``floor(zeta * |N|)`` values closest to
   zero (the largest ones); non-negatives ``P = {k : w_k >= 0}`` lose the
   ``floor(zeta * |P|)`` smallest. (Exact zeros count with the positives, as the
   weakest of them.)
2. The same number of connections are regrown at uniformly random positions
   that are empty after step 1, with zero momentum and value zero (``regrow="zero"``,
   the default: what the Keras SET code effectively does, new mask entries keeping
   their zeroed weight) or a fresh draw from the layer's initialiser
   (``regrow="init"``); survivors keep value and momentum. Measured on Fashion-MNIST
   (All-ReLU preset, seed 0, one run each): full-scale initialiser values injected
   every epoch hold test accuracy at 83-84% by epoch 15 and ~83% by epoch 50;
   zero regrowth gives 85.8% at epoch 15 and 87.8% at 40 (0.1x the initialiser:
   87.7%).

Everything is vectorised (``argpartition`` + one sorted merge); no Python loop
runs over connections.
"""

from __future__ import annotations

import numpy as np

from .errors import SparsetrainError
from .layers import SparseLinear, sample_free_positions


def weakest_mask(values: np.ndarray, zeta: float) -> np.ndarray:
    """Boolean mask of the connections SET removes (step 1 above)."""
    remove = np.zeros(values.shape[0], dtype=bool)
    neg = np.flatnonzero(values < 0)
    pos = np.flatnonzero(values >= 0)
    k_neg = int(zeta * neg.size)
    k_pos = int(zeta * pos.size)
    if k_neg:
        part = np.argpartition(values[neg], neg.size - k_neg)
        remove[neg[part[neg.size - k_neg:]]] = True
    if k_pos:
        part = np.argpartition(values[pos], k_pos - 1)
        remove[pos[part[:k_pos]]] = True
    return remove


REGROW = ("zero", "init")


def evolve_layer(layer: SparseLinear, zeta: float, rng: np.random.Generator,
                 target_nnz: int | None = None, regrow: str = "zero") -> int:
    """One SET step on ``layer`` in place. Returns the number of connections rewired.

    ``target_nnz`` (default: the current count) is the count after regrowth;
    Importance Pruning lowers it.
    """
    if not 0.0 <= zeta < 1.0:
        raise SparsetrainError(f"The 'zeta' parameter must be in [0, 1). Got {zeta!r} instead.")
    if regrow not in REGROW:
        raise SparsetrainError(f"The 'regrow' parameter must be one of {list(REGROW)}. "
                               f"Got {regrow!r} instead.")
    n_total = layer.n_in * layer.n_out
    if layer.nnz >= n_total:
        return 0  # fully connected: nothing to explore, regrowth would only re-initialise
    target = layer.nnz if target_nnz is None else int(target_nnz)
    keep = ~weakest_mask(layer.data, zeta)
    survivors = layer.keys()[keep]
    n_new = target - survivors.size
    new_keys = sample_free_positions(rng, n_total, max(n_new, 0), survivors)
    values = (np.zeros(new_keys.size, np.float32) if regrow == "zero"
              else layer.init_values(rng, new_keys.size))
    layer.replace_connections(keep, new_keys, values)
    return int((~keep).sum())


def evolve_layers(layers: list[SparseLinear], zeta: float, rng: np.random.Generator, *,
                  evolve_output: bool = True, targets: list[int | None] | None = None,
                  regrow: str = "zero") -> int:
    """One SET step on every layer in order (all from ``rng``), the output layer only if
    ``evolve_output``; ``targets[l]`` is layer ``l``'s ``target_nnz`` (default: keep its
    count). Returns the number of connections rewired."""
    last = len(layers) - 1
    targets = [None] * len(layers) if targets is None else targets
    return sum(evolve_layer(layer, zeta, rng, target_nnz=targets[l], regrow=regrow)
               for l, layer in enumerate(layers) if l < last or evolve_output)
