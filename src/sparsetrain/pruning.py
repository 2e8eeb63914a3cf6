"""Importance Pruning of hidden neurons (SPEC 1.6).

Importance of hidden neuron ``j`` of a layer = the sum of the absolute values of
its incoming connections::

    I_j = sum_i |W_ij|

A pruning step removes every hidden neuron whose importance is at or below the
``percentile``-th percentile of its layer. The neuron is removed for real: its
incoming connections (with their momentum) leave the layer that feeds it, its
outgoing connections leave the next layer, its bias and any per-neuron
activation parameters go too, and both layers shrink, so a pruned neuron costs
nothing in any later kernel. SET evolution afterwards keeps the reduced counts.

Departure: a layer always keeps at least one neuron (a layer whose importances
are all equal would otherwise lose every neuron).
"""

from __future__ import annotations

import numpy as np

from .errors import SparsetrainError
from .layers import SparseLinear


def neuron_importance(layer: SparseLinear) -> np.ndarray:
    """``I_j = sum_i |W_ij|`` for every output ``j`` of ``layer``: (n_out,) float64."""
    return np.bincount(layer.row_cols, weights=np.abs(layer.data), minlength=layer.n_out)


def select_pruned(importance: np.ndarray, percentile: float) -> np.ndarray:
    """Boolean mask of neurons at or below the ``percentile``-th percentile (keeps >= 1)."""
    threshold = np.percentile(importance, percentile)
    prune = importance <= threshold
    if prune.all():
        prune[np.argmax(importance)] = False
    return prune


def keep_outputs(layer: SparseLinear, keep: np.ndarray) -> SparseLinear:
    """Layer without the outputs where ``keep`` is False (connections, bias, neuron state)."""
    new_index = np.cumsum(keep) - 1  # old output -> new output (monotone: order preserved)
    conn = keep[layer.row_cols]
    rows = layer.rows()[conn]
    row_ptr = np.zeros(layer.n_in + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=layer.n_in), out=row_ptr[1:])
    return SparseLinear(
        layer.n_in, int(keep.sum()), row_ptr, new_index[layer.row_cols[conn]], layer.data[conn],
        bias=layer.bias[keep], velocity=layer.velocity[conn],
        bias_velocity=layer.bias_velocity[keep], init=layer.init, fan_in=layer.fan_in,
        neuron_params=None if layer.neuron_params is None else layer.neuron_params[:, keep],
        neuron_velocity=None if layer.neuron_velocity is None else layer.neuron_velocity[:, keep])


def keep_inputs(layer: SparseLinear, keep: np.ndarray) -> SparseLinear:
    """Layer without the inputs where ``keep`` is False (their outgoing connections go)."""
    counts = np.diff(layer.row_ptr)
    conn = np.repeat(keep, counts)
    row_ptr = np.zeros(int(keep.sum()) + 1, np.int64)
    np.cumsum(counts[keep], out=row_ptr[1:])
    return SparseLinear(
        int(keep.sum()), layer.n_out, row_ptr, layer.row_cols[conn], layer.data[conn],
        bias=layer.bias, velocity=layer.velocity[conn], bias_velocity=layer.bias_velocity,
        init=layer.init, fan_in=layer.fan_in, neuron_params=layer.neuron_params,
        neuron_velocity=layer.neuron_velocity)


def prune_neurons(layers: list[SparseLinear], percentile: float) -> list[int]:
    """One Importance Pruning step over every hidden layer, in place on the list.

    Returns the number of neurons removed per hidden layer.
    """
    if not 0.0 <= percentile <= 100.0:
        raise SparsetrainError(
            f"The 'percentile' parameter must be in [0, 100]. Got {percentile!r} instead.")
    # Every layer's importances come from the same (current) weights, then all prune at once.
    # Outputs of layers[l] are hidden layer l+1.
    prunes = [select_pruned(neuron_importance(layers[l]), percentile)
              for l in range(len(layers) - 1)]
    for l, prune in enumerate(prunes):
        if prune.any():
            layers[l] = keep_outputs(layers[l], ~prune)
            layers[l + 1] = keep_inputs(layers[l + 1], ~prune)
    return [int(p.sum()) for p in prunes]
