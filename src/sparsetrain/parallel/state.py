"""What crosses process boundaries in parallel training, and the pure-NumPy algebra on it.

Only flat arrays move between the driver, the parameter server and the workers:

* a **full state** (topology, values, momentum, scaler; :func:`model_to_arrays`) when a
  replica is created or its copy of the topology is out of date;
* a **value vector**: every trainable float of the model in one float32 array (connection
  values layer by layer, then biases, then per-neuron activation parameters), in the
  order :func:`value_layout` gives for the current topology;
* a **gradient vector** in the same layout.

:func:`retain_valid` maps a gradient computed on an older topology onto the current one
(SPEC 1.8 "retain valid updates"); :func:`average_models` is the final weight averaging
over the union topology followed by magnitude pruning back to the target counts.
Nothing here imports Ray, so all of it is tested without a cluster.
"""

from __future__ import annotations

import numpy as np

from ..io import model_from_arrays, model_to_arrays
from ..layers import SparseLinear
from ..model import LayerGradient, SparseMLP


def full_state(model: SparseMLP, extra: dict | None = None) -> dict[str, np.ndarray]:
    """Named flat arrays of ``model`` (see :func:`sparsetrain.io.model_to_arrays`)."""
    return model_to_arrays(model, extra)


def model_from_state(state: dict[str, np.ndarray]) -> tuple[SparseMLP, dict]:
    """A model that owns writable copies of ``state``'s arrays (received arrays may be
    read-only views of shared memory)."""
    return model_from_arrays({k: np.array(v) for k, v in state.items()}, "received model state")


def value_layout(model: SparseMLP) -> list[tuple[int, int, int, int]]:
    """Per layer ``(weights_offset, bias_offset, neuron_offset, end)`` in a value vector."""
    out, pos = [], 0
    for la in model.layers:
        out.append([pos, 0, 0, 0])
        pos += la.nnz
    for row, la in zip(out, model.layers, strict=True):
        row[1] = pos
        pos += la.n_out
    for row, la in zip(out, model.layers, strict=True):
        row[2] = pos
        pos += 0 if la.neuron_params is None else la.neuron_params.size
        row[3] = pos
    return [tuple(r) for r in out]


def vector_size(model: SparseMLP) -> int:
    return value_layout(model)[-1][3] if model.layers else 0


_VALUES = ("data", "bias", "neuron_params")
_VELOCITIES = ("velocity", "bias_velocity", "neuron_velocity")


def _gather(model: SparseMLP, names: tuple[str, str, str], out: np.ndarray | None) -> np.ndarray:
    """The layers' ``(connection, bias, neuron-parameter)`` arrays ``names`` in one float32
    vector of the value layout."""
    layout = value_layout(model)
    out = np.empty(layout[-1][3], np.float32) if out is None else out
    conn, bias, neuron = names
    for (w, b, p, e), la in zip(layout, model.layers, strict=True):
        out[w:w + la.nnz] = getattr(la, conn)
        out[b:b + la.n_out] = getattr(la, bias)
        if la.neuron_params is not None:
            out[p:e] = getattr(la, neuron).ravel()
    return out


def get_values(model: SparseMLP, out: np.ndarray | None = None) -> np.ndarray:
    """Every trainable value of ``model`` in one float32 vector."""
    return _gather(model, _VALUES, out)


def _scatter(model: SparseMLP, names: tuple[str, str, str], vector: np.ndarray) -> None:
    """Copy a vector of the value layout (same topology) into ``model``'s arrays ``names``."""
    layout = value_layout(model)
    if vector.shape != (layout[-1][3],):
        raise ValueError(f"value vector has shape {vector.shape}, expected ({layout[-1][3]},)")
    conn, bias, neuron = names
    for (w, b, p, e), la in zip(layout, model.layers, strict=True):
        getattr(la, conn)[:] = vector[w:w + la.nnz]
        getattr(la, bias)[:] = vector[b:b + la.n_out]
        if la.neuron_params is not None:
            target = getattr(la, neuron)
            target[...] = vector[p:e].reshape(target.shape)


def set_values(model: SparseMLP, values: np.ndarray) -> None:
    """Copy a value vector (same topology) into ``model``'s arrays."""
    _scatter(model, _VALUES, values)


def set_velocities(model: SparseMLP, velocity: np.ndarray) -> None:
    """Copy a momentum vector (same topology) into ``model``'s momentum arrays."""
    _scatter(model, _VELOCITIES, velocity)


def get_velocities(model: SparseMLP, out: np.ndarray | None = None) -> np.ndarray:
    """Every momentum entry of ``model`` in one float32 vector (the value layout)."""
    return _gather(model, _VELOCITIES, out)


def bind_values(model: SparseMLP, values: np.ndarray, velocity: np.ndarray | None = None,
                ) -> int:
    """Move ``model``'s values (and momentum) into the first entries of the flat buffers
    ``values`` (``velocity``) and make its arrays views of them, so that a kernel updating
    the buffers updates the model; returns the vector size. The model's arrays may
    already be views of the same buffers (in another layout): everything is copied out
    before anything is written."""
    size = vector_size(model)
    if values.shape[0] < size or (velocity is not None and velocity.shape[0] < size):
        raise ValueError(f"value vector of {size} entries exceeds the buffer "
                         f"({values.shape[0]})")
    new_values = get_values(model)
    new_velocity = get_velocities(model) if velocity is not None else None
    values[:size] = new_values
    if velocity is not None:
        velocity[:size] = new_velocity
    for (w, b, p, e), la in zip(value_layout(model), model.layers, strict=True):
        la.data = values[w:w + la.nnz]
        la.bias = values[b:b + la.n_out]
        if velocity is not None:
            la.velocity = velocity[w:w + la.nnz]
            la.bias_velocity = velocity[b:b + la.n_out]
        if la.neuron_params is not None:
            shape = la.neuron_params.shape
            la.neuron_params = values[p:e].reshape(shape)
            if velocity is not None:
                la.neuron_velocity = velocity[p:e].reshape(shape)
    return size


def map_gradient(old: tuple[list[int], list[np.ndarray]], model: SparseMLP, grad: np.ndarray,
                 ) -> tuple[np.ndarray | None, int]:
    """A gradient computed on an older topology ``old = (layer sizes, topology keys)``, in
    the value layout of ``model``: entries of connections that still exist move to their
    new positions, connections added since get 0 (SPEC 1.8 "retain valid updates").
    Returns ``(gradient, dropped entries)``, or ``(None, 0)`` when the layer sizes differ
    (neurons were removed since: the gradient cannot be mapped)."""
    sizes, keys = [la.n_out for la in model.layers], topology_keys(model)
    if list(old[0]) != sizes:
        return None, 0
    layout = value_layout(model)
    out = np.zeros(layout[-1][3], np.float32)
    old_pos = dropped = 0
    maps = retain_valid(old[1], keys)
    for (w, *_), (src, dst), k_old in zip(layout, maps, old[1], strict=True):
        out[w + dst] = grad[old_pos + src]
        dropped += k_old.size - src.size
        old_pos += k_old.size
    # biases and neuron parameters: same sizes, same order, right after the weights
    n_neuron = layout[-1][3] - layout[0][1]
    out[layout[0][1]:] = grad[old_pos:old_pos + n_neuron]
    return out, dropped


def pack_gradients(model: SparseMLP, grads: list[LayerGradient],
                   out: np.ndarray | None = None) -> np.ndarray:
    """Per-layer gradients as one vector in the value layout of ``model`` (written into the
    first entries of ``out`` when given; the returned view has exactly the layout's size)."""
    layout = value_layout(model)
    out = np.empty(layout[-1][3], np.float32) if out is None else out[:layout[-1][3]]
    for (w, b, p, e), g, la in zip(layout, grads, model.layers, strict=True):
        out[w:w + la.nnz] = g.weights
        out[b:b + la.n_out] = g.bias
        if la.neuron_params is not None:
            out[p:e] = g.neuron.ravel()
    return out


def topology_keys(model: SparseMLP) -> list[np.ndarray]:
    """Sorted flat positions ``i * n_out + j`` of every layer's connections."""
    return [la.keys() for la in model.layers]


def retain_valid(old_keys: list[np.ndarray], new_keys: list[np.ndarray],
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each layer, ``(src, dst)``: entry ``src[k]`` of a weight gradient computed on the
    old topology belongs to connection ``dst[k]`` of the new one. Entries of connections
    removed since are dropped; connections added since get no gradient (SPEC 1.8)."""
    maps = []
    for old, new in zip(old_keys, new_keys, strict=True):
        pos = np.searchsorted(new, old)
        pos_c = np.minimum(pos, max(new.size - 1, 0))
        ok = (pos < new.size) & (new[pos_c] == old) if new.size else np.zeros(old.size, bool)
        src = np.flatnonzero(ok)
        maps.append((src, pos[src]))
    return maps


def average_models(states: list[dict[str, np.ndarray]], targets: list[int],
                   ) -> tuple[SparseMLP, dict]:
    """Final WASAP/WASSP model: the mean of the workers' models over the union topology
    (a connection a worker lacks counts as 0), then, per layer, the smallest-magnitude
    values (smallest positives and largest negatives, as in SET) removed until
    ``targets[l]`` connections are left (ties: the lower position goes first). Biases and
    neuron parameters are averaged; momentum restarts at zero. All workers must have the
    same layer sizes."""
    models = [model_from_state(s) for s in states]
    base, meta = models[0]
    k = len(models)
    layers = []
    for l, ref in enumerate(base.layers):
        shapes = {(m.layers[l].n_in, m.layers[l].n_out) for m, _ in models}
        if len(shapes) != 1:
            raise ValueError(f"layer {l} differs in size between workers: {sorted(shapes)}")
        keys = np.concatenate([m.layers[l].keys() for m, _ in models])
        vals = np.concatenate([m.layers[l].data for m, _ in models]).astype(np.float64)
        union, inverse = np.unique(keys, return_inverse=True)
        mean = np.bincount(inverse, weights=vals, minlength=union.size) / k
        target = int(targets[l])
        if union.size > target:
            # stable sort by |w| on positions already in increasing order: ties keep order.
            order = np.argsort(np.abs(mean), kind="stable")
            keep = np.sort(order[union.size - target:])
            union, mean = union[keep], mean[keep]
        rows, cols = np.divmod(union, ref.n_out)
        bias = np.mean([m.layers[l].bias for m, _ in models], axis=0, dtype=np.float64)
        params = (None if ref.neuron_params is None else
                  np.mean([m.layers[l].neuron_params for m, _ in models], axis=0, dtype=np.float64))
        layers.append(SparseLinear.from_coo(
            ref.n_in, ref.n_out, rows, cols, mean.astype(np.float32),
            bias=bias.astype(np.float32), init=ref.init, fan_in=ref.fan_in,
            neuron_params=None if params is None else params.astype(np.float32)))
    model = SparseMLP(layers, activation=base.activation, alpha=base.alpha, dropout=base.dropout,
                      loss=base.loss, input_mean=base.input_mean, input_std=base.input_std,
                      task=base.task,
                      target_mean=base.target_mean if base.task == "regression" else None,
                      target_std=base.target_std if base.task == "regression" else None)
    return model, meta
