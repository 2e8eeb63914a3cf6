"""Importance Pruning of hidden neurons (SPEC 1.6), pruned neurons folded away.

Importance of hidden neuron ``j`` of a layer = the sum of the absolute values of
its incoming connections::

    I_j = sum_i |W_ij|

A pruning step computes every hidden layer's importances from the current
weights, then, in each layer, deletes all incoming connections (with their
momentum) of every neuron whose importance is at or below the ``percentile``-th
percentile of that layer. SET evolution afterwards regrows fewer, so the number of
connections falls step after step.

Folding. A hidden neuron ``j`` with no incoming connection outputs the constant
``c_j = f(b_j)`` (its layer's activation, with All-ReLU's per-layer slope and
SReLU's per-neuron parameters), so its contribution ``c_j W_jk`` to the next layer
is exactly a bias term. Every pruned neuron (and any other hidden neuron found with
no incoming connection at a pruning step) is therefore folded::

    b_k   <- b_k   + sum_j c_j W_jk        (next layer's bias)
    v_b_k <- v_b_k + sum_j c_j v_jk        (its momentum: the folded term keeps its inertia)

and removed from both layers, which shrink: a pruned neuron costs nothing in any
kernel afterwards (bias, activation, dropout draws and delta rows included). In
evaluation mode the network computes what it computed before the fold (tests, to
float32 rounding), and the trainable function class is unchanged (``b_k`` is
trainable). Layers fold from the first hidden layer up, so a neuron whose every
input was folded away folds in the same step.

Population of the percentile. The paper's code keeps a pruned neuron in its layer,
where it sits at importance ~0 and is pruned again at every later step (measured
on Madelon: 62-80 of the 80 neurons a step prunes in a 400-wide layer are ones it
pruned before), so the threshold stays near the bottom of the *original*
population. Removed neurons count the same way here: the percentile is over the
layer's original width, the removed neurons padded in with importance 0
(``original_widths``; the trainer takes them from the configured hidden sizes, which
the checkpoint holds, so a resumed run prunes as the uninterrupted one). Without
that, every step would remove 20% of the survivors and the layers collapse
geometrically (Madelon: to one neuron per layer, 51% final accuracy).

Regrowth after a step. In the paper's code the regrowth that follows a pruning
step also lands on the pruned neurons, still in their layer, and the next step
deletes those connections again; that drain (6.5-6.9% of a layer's connections per
step on Madelon, about ``zeta`` times the pruned share) is what takes it to about
80% fewer connections. Folded neurons are gone, so :func:`regrowth_targets` has the
regrowth after a pruning step draw over the layer's original width and drop the
draws that land on removed neurons. Without it, pruning removes 20% of each hidden
layer once and then almost nothing (Madelon: 22% fewer connections, 66.7% best
accuracy against 72.3% with the paper's rule).

Departures from the paper's code (README "Departures"):

* the folded constant no longer gets dropout noise during training (the paper's
  pruned neuron feeds ``f(b_j)`` through dropout), and its outgoing weights now
  train as part of a bias: no weight decay, no SET rewiring;
* a folded neuron cannot be revived by later regrowth; the lost regrowth is
  accounted once per pruning step, as above, instead of through pruned neurons;
* a layer always keeps at least one neuron.

``prune_neurons(..., constants=None)`` keeps the paper code's rule (a pruned neuron
stays; only a neuron left with no connection at all is removed) for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .activations import apply_reference
from .errors import SparsetrainError
from .layers import SparseLinear

#: ``constants(l, layer) -> (layer.n_out,)``: the output of hidden layer ``l`` (0-based,
#: the outputs of ``layers[l]``) for a neuron with no incoming connection.
Constants = Callable[[int, SparseLinear], np.ndarray]


def neuron_importance(layer: SparseLinear) -> np.ndarray:
    """``I_j = sum_i |W_ij|`` for every output ``j`` of ``layer``: (n_out,) float64."""
    return np.bincount(layer.row_cols, weights=np.abs(layer.data), minlength=layer.n_out)


def source_importance(layer: SparseLinear) -> np.ndarray:
    """The same measure on the outgoing side, ``sum_j |W_ij|`` for every input ``i`` of
    ``layer`` (how much the layer draws on it; what importance growth scores with):
    (n_in,) float64."""
    return np.bincount(layer.rows(), weights=np.abs(layer.data), minlength=layer.n_in)


def select_pruned(importance: np.ndarray, percentile: float, population: int | None = None
                  ) -> np.ndarray:
    """Boolean mask of neurons at or below the ``percentile``-th percentile (keeps >= 1).

    ``population`` (>= ``importance.size``): the layer's original width; the neurons already
    removed count in the percentile with importance 0.
    """
    n = importance.shape[0]
    pad = 0 if population is None else int(population) - n
    if pad < 0:
        raise SparsetrainError(f"a population of {population} is smaller than the layer's "
                               f"{n} neurons")
    threshold = np.percentile(np.concatenate([np.zeros(pad), importance]), percentile)
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
        neuron_velocity=None if layer.neuron_velocity is None else layer.neuron_velocity[:, keep],
        csc=layer.csc)


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
        neuron_velocity=layer.neuron_velocity, csc=layer.csc)


def activation_constants(activation: str, alpha: float) -> Constants:
    """``constants`` for a network with this hidden activation: ``c_j = f_l(b_j)``, the value
    :meth:`SparseMLP.decision_function` computes for a neuron without incoming connections."""
    def constants(l: int, layer: SparseLinear) -> np.ndarray:
        z = layer.bias.astype(np.float32)[:, None]
        c = apply_reference(activation, z, l + 1, alpha, layer.neuron_params)
        return np.asarray(c, np.float32)[:, 0]

    return constants


def model_constants(model) -> Constants:
    """:func:`activation_constants` of a :class:`~sparsetrain.model.SparseMLP`."""
    return activation_constants(model.activation, model.alpha)


def fold_inputless(layers: list[SparseLinear], constants: Constants) -> list[int]:
    """Fold every hidden neuron without incoming connections into the next layer's bias
    (and momentum) and remove it from both layers, in place on the list; a layer keeps at
    least one neuron. Returns the number removed per hidden layer."""
    removed = []
    for l in range(len(layers) - 1):
        layer, nxt = layers[l], layers[l + 1]
        fold = np.bincount(layer.row_cols, minlength=layer.n_out) == 0
        if fold.all():
            fold[0] = False
        removed.append(int(fold.sum()))
        if not fold.any():
            continue
        c = constants(l, layer).astype(np.float64)
        rows = nxt.rows()
        conn = fold[rows]
        cols = nxt.row_cols[conn]
        scale = c[rows[conn]]
        nxt.bias = (nxt.bias.astype(np.float64) + np.bincount(
            cols, weights=scale * nxt.data[conn], minlength=nxt.n_out)).astype(np.float32)
        nxt.bias_velocity = (nxt.bias_velocity.astype(np.float64) + np.bincount(
            cols, weights=scale * nxt.velocity[conn], minlength=nxt.n_out)).astype(np.float32)
        layers[l] = keep_outputs(layer, ~fold)
        layers[l + 1] = keep_inputs(nxt, ~fold)
    return removed


def original_widths(hidden: Sequence[int] | None, layers: list[SparseLinear]) -> list[int]:
    """Population of each hidden layer for the percentile: the configured width ``hidden``
    (what the network was built with), or the current width where that is larger or
    ``hidden`` does not describe this network."""
    current = [la.n_out for la in layers[:-1]]
    if hidden is None or len(hidden) != len(current):
        return current
    return [max(int(h), n) for h, n in zip(hidden, current, strict=True)]


def regrowth_targets(layers: list[SparseLinear], original_widths: Sequence[int],
                     zeta: float) -> list[int]:
    """Connection count each layer's SET step regrows to right after a pruning step.

    The paper's code keeps pruned neurons in their layer, so the regrowth that follows a
    pruning step also places connections on them, which the next pruning step deletes
    again: its connection count falls by about ``zeta`` times the pruned share at every
    step (measured on Madelon: 6.5-6.9% per step with 20% pruned and ``zeta = 0.3``),
    and that is how it reaches about 80% fewer connections. Here the pruned neurons are
    gone, so the regrowth after a pruning step draws over the layer's original width and
    drops the draws that land on removed neurons: of the ``n`` connections SET removes,
    ``round(n * removed / original_width)`` are not regrown. Between pruning steps SET
    keeps the count, as it always does. ``original_widths`` are the hidden layers'; the
    output layer never loses outputs, so its count stays.
    """
    widths = [*original_widths, layers[-1].n_out]
    if len(widths) != len(layers):
        raise SparsetrainError(f"original_widths has {len(widths) - 1} entries for "
                               f"{len(layers) - 1} hidden layers")
    targets = []
    for layer, width in zip(layers, widths, strict=True):
        n_neg = int(np.count_nonzero(layer.data < 0))
        n_set = int(zeta * n_neg) + int(zeta * (layer.nnz - n_neg))  # as evolve_layer
        removed = max(0, int(width) - layer.n_out)
        targets.append(layer.nnz - int(round(n_set * removed / max(int(width), 1))))
    return targets


def prune_neurons(layers: list[SparseLinear], percentile: float, *,
                  constants: Constants | None = None,
                  original_widths: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """One Importance Pruning step over every hidden layer, in place on the list.

    ``constants`` (see :func:`model_constants`): fold every neuron left without incoming
    connections into the next layer and remove it; without it a pruned neuron stays (the
    paper code's rule) and only neurons with no connection at all are removed.
    ``original_widths``: each hidden layer's population for the percentile (default: its
    current width).

    Returns ``(pruned, removed)`` per hidden layer: neurons whose incoming connections
    were deleted, and neurons removed from the network.
    """
    if not 0.0 <= percentile <= 100.0:
        raise SparsetrainError(
            f"The 'percentile' parameter must be in [0, 100]. Got {percentile!r} instead.")
    hidden = len(layers) - 1
    widths = [None] * hidden if original_widths is None else list(original_widths)
    if len(widths) != hidden:
        raise SparsetrainError(f"original_widths has {len(widths)} entries for {hidden} "
                               "hidden layers")
    # Importances of every layer from the same (current) weights; outputs of layers[l]
    # are hidden layer l+1.
    prunes = [select_pruned(neuron_importance(layers[l]), percentile, widths[l])
              for l in range(hidden)]
    for l, prune in enumerate(prunes):
        layer = layers[l]
        keep = ~prune[layer.row_cols]
        if not keep.all():
            layer.replace_connections(keep, np.empty(0, np.int64), np.empty(0, np.float32))
    if constants is not None:
        return [int(p.sum()) for p in prunes], fold_inputless(layers, constants)
    removed = []
    for l in range(hidden):
        fan_in = np.bincount(layers[l].row_cols, minlength=layers[l].n_out)
        fan_out = np.diff(layers[l + 1].row_ptr)
        alive = (fan_in > 0) | (fan_out > 0)
        if not alive.any():
            alive[0] = True
        removed.append(int((~alive).sum()))
        if not alive.all():
            layers[l] = keep_outputs(layers[l], alive)
            layers[l + 1] = keep_inputs(layers[l + 1], alive)
    return [int(p.sum()) for p in prunes], removed
