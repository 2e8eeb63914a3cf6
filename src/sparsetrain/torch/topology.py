"""Topology steps of a torch model at the end of an epoch: SET evolution (SPEC 1.4) and
Importance Pruning (SPEC 1.6) of every :class:`~sparsetrain.torch.SparseLinear`, with the
optimizer's per-connection state carried over.

Each step runs the project's own rule on a copy of the layer
(:func:`sparsetrain.evolution.evolve_layer`, :mod:`sparsetrain.pruning`), then installs
the result: a new ``values`` parameter (and index buffers) in the module, the new
parameter in place of the old one in the optimizer's param groups, and the old
parameter's state remapped. A per-connection state tensor ``s`` (shape (nnz,): SGD's
``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``, ...) becomes::

    s_new[k] = s_old[src[k]]   if connection k survived (src: its old position)
             = 0               if it was regrown

and any other state (Adam's ``step``) is kept as it is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import param_error
from ..evolution import REGROW, evolve_layer
from ..pruning import neuron_importance, select_pruned
from .layer import SparseLinear


def remap_connection_state(state: torch.Tensor, survived: np.ndarray, src: np.ndarray
                           ) -> torch.Tensor:
    """``s_new`` of the module docstring: (new nnz,) from ``state`` (old nnz,),
    ``survived`` (new nnz,) bool and ``src`` (survived.sum(),) old positions."""
    out = torch.zeros(survived.shape[0], dtype=state.dtype, device=state.device)
    out[torch.as_tensor(survived, device=state.device)] = state[torch.as_tensor(src, device=state.device)]
    return out


def _rewire(module: SparseLinear, optimizer, change) -> None:
    """Apply ``change(core_layer)`` (in place, as the core's topology functions do) to
    ``module`` and carry the optimizer state over. Survivors are told apart from regrown
    connections by the core layer's momentum, used here as a marker: ``replace_connections``
    keeps a survivor's and gives a regrown connection zero."""
    core = module.to_core()
    old_keys = core.keys()
    core.velocity[:] = 1.0  # marker (the torch optimizer keeps the real state)
    change(core)
    survived = core.velocity != 0  # (new nnz,)
    src = np.searchsorted(old_keys, core.keys()[survived])  # their old positions
    old = module.values
    device = old.device
    new = nn.Parameter(torch.as_tensor(core.data, dtype=old.dtype).to(device),
                       requires_grad=old.requires_grad)
    module.values = new
    module._set_index(core, device)
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {
            k: remap_connection_state(v, survived, src)
            if isinstance(v, torch.Tensor) and v.shape == old.shape else v
            for k, v in state.items()}


def _sparse_layers(model: nn.Module) -> list[SparseLinear]:
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    return layers


class SETScheduler:
    """SET evolution of every :class:`SparseLinear` of ``model`` (SPEC 1.4), called at the
    end of an epoch: each layer loses the fraction ``zeta`` of its positive and of its
    negative connections closest to zero and regrows as many at random empty positions
    (value zero, or a draw from the layer's initialiser with ``regrow="init"``).
    ``optimizer`` (optional): its param groups get the new value tensors and its
    per-connection state is remapped (survivors keep theirs, regrown start at zero).

    Parameters
    ----------
    model : nn.Module
        Its :class:`SparseLinear` submodules, in ``model.modules()`` order, evolve.
    optimizer : torch.optim.Optimizer, optional
    zeta : float in [0, 1)
    regrow : {"zero", "init"}
    evolve_output : bool
        Whether the last :class:`SparseLinear` evolves too (a fully connected one never does).
    seed : int or numpy.random.Generator, optional
    """

    def __init__(self, model: nn.Module, optimizer=None, zeta: float = 0.3, *,
                 regrow: str = "zero", evolve_output: bool = True, seed=None):
        if not (isinstance(zeta, float | int) and 0.0 <= zeta < 1.0):
            raise param_error("zeta", "a float in [0, 1)", zeta, owner="SETScheduler")
        if regrow not in REGROW:
            raise param_error("regrow", f"one of {list(REGROW)}", regrow, owner="SETScheduler")
        self.model, self.optimizer = model, optimizer
        self.zeta, self.regrow, self.evolve_output = float(zeta), regrow, bool(evolve_output)
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def step(self) -> int:
        """One SET step on every layer; returns the number of connections rewired."""
        layers = _sparse_layers(self.model)
        rewired = 0
        for l, module in enumerate(layers):
            if l == len(layers) - 1 and not self.evolve_output:
                continue
            if module.nnz >= module.in_features * module.out_features:
                continue  # fully connected: SET leaves it (and its parameter) as it is

            def change(core):
                nonlocal rewired
                rewired += evolve_layer(core, self.zeta, self._rng, regrow=self.regrow)
            _rewire(module, self.optimizer, change)
        return rewired


class ImportancePruning:
    """Importance Pruning (SPEC 1.6) of the hidden :class:`SparseLinear` layers (all but the
    last): the incoming connections of every neuron whose importance ``I_j = sum_i |W_ij|``
    is at or below the ``percentile``-th percentile of its layer are deleted, with their
    optimizer state.

    Departure from the core trainer: the neuron stays in the module (layer shapes, and
    any module that depends on them, do not change) and outputs ``f(b_j)``, the rule of
    the paper's code; the core trainer folds it into the next layer's bias and removes
    it. Later SET steps keep each layer's (lower) connection count.
    """

    def __init__(self, model: nn.Module, optimizer=None, percentile: float = 20.0):
        if not (isinstance(percentile, float | int) and 0.0 <= percentile <= 100.0):
            raise param_error("percentile", "a float in [0, 100]", percentile,
                              owner="ImportancePruning")
        self.model, self.optimizer, self.percentile = model, optimizer, float(percentile)

    def step(self) -> list[int]:
        """Prune every hidden layer; returns the number of neurons pruned in each."""
        layers = _sparse_layers(self.model)[:-1]
        # Importances of every layer from the same (current) weights.
        prunes = [select_pruned(neuron_importance(m.to_core()), self.percentile) for m in layers]
        for module, prune in zip(layers, prunes, strict=True):
            def change(core, prune=prune):
                keep = ~prune[core.row_cols]
                core.replace_connections(keep, np.empty(0, np.int64), np.empty(0, np.float32))
            _rewire(module, self.optimizer, change)
        return [int(p.sum()) for p in prunes]
