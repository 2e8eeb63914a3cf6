"""PyTorch interop: export a :class:`SparseMLP` as a ``torch.nn.Module`` with ``torch.sparse``
weights or as a trainable ``nn.Sequential`` of :mod:`sparsetrain.torch` modules, and import
masked or sparse PyTorch MLPs (and those sequentials) back.

PyTorch stays optional: it is imported inside the functions (and on first access to
:class:`TorchSparseMLP`), so ``import sparsetrain`` never needs it.

The exported module computes exactly our inference forward (eval mode; in train mode
hidden layers apply ``torch.nn.functional.dropout`` with the model's rate)::

    h_0 = (x - input_mean) / input_std                       x: (B, n_features) raw features
    h_l = f_l(W_l^T h_{l-1} + b_l)        W_l^T: torch sparse (n_out, n_in), CSR or COO
    out = W_L^T h_{L-1} + b_L             (regression: out * target_std + target_mean)

with ``f_l`` the model's activation and per-layer negative slope (All-ReLU alternates the
sign of ``alpha`` over hidden layers). Output: the values of
:meth:`SparseMLP.decision_function` (class scores before softmax, or regression targets).
"""

from __future__ import annotations

import warnings

import numpy as np

from .activations import ACTIVATIONS, get_activation
from .errors import SparsetrainError
from .layers import INITIALIZERS, SparseLinear
from .model import SparseMLP

__all__ = ["TorchSparseMLP", "from_torch", "to_sequential", "to_torch"]  # noqa: F822 (TorchSparseMLP: __getattr__)

_TORCH_CLASSES: dict = {}


def _require_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise SparsetrainError("PyTorch interop needs torch: pip install torch "
                               "(CPU build: pip install torch==2.13.0)") from None
    return torch


def _torch_classes() -> dict:
    """Build the torch Module class once, on first use (keeps torch optional)."""
    if _TORCH_CLASSES:
        return _TORCH_CLASSES
    torch = _require_torch()
    nn = torch.nn

    class TorchSparseMLP(nn.Module):
        """A :class:`SparseMLP` as a PyTorch module; weights are sparse ``nn.Parameter``s.

        Attributes: ``weights`` (ParameterList of sparse (n_out, n_in) tensors, i.e. the
        transposed layers), ``biases``, buffers ``input_mean``, ``input_std``,
        ``target_mean``, ``target_std``, ``slopes`` (negative-side slope per hidden layer);
        ``activation`` (name in :data:`sparsetrain.activations.ACTIVATIONS`), ``alpha``,
        ``dropout``, ``loss``, ``task``.
        """

        def __init__(self, weights, biases, *, activation, alpha, slopes, dropout, loss, task,
                     input_mean, input_std, target_mean, target_std, neuron_params=()):
            super().__init__()
            self.weights = nn.ParameterList([nn.Parameter(w) for w in weights])
            self.biases = nn.ParameterList([nn.Parameter(b) for b in biases])
            # SReLU: (4, n) per hidden layer, rows t_l, a_l, t_r, a_r.
            self.neuron_params = nn.ParameterList([nn.Parameter(p) for p in neuron_params])
            self.activation = activation
            self.alpha = float(alpha)
            self.dropout = float(dropout)
            self.loss = loss
            self.task = task
            self.register_buffer("slopes", torch.tensor(slopes, dtype=torch.float32))
            self.register_buffer("input_mean", input_mean)
            self.register_buffer("input_std", input_std)
            self.register_buffer("target_mean", target_mean)
            self.register_buffer("target_std", target_std)

        def forward(self, x):
            h = ((x - self.input_mean) / self.input_std).T  # (n_in, B)
            last = len(self.weights) - 1
            sigmoid = self.activation == "sigmoid"
            for l, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = torch.sparse.mm(w, h) + b[:, None]  # (n_out, B)
                if l < last and len(self.neuron_params):
                    tl, al, tr, ar = (p[:, None] for p in self.neuron_params[l])
                    h = torch.where(h >= tr, tr + ar * (h - tr),
                                    torch.where(h <= tl, tl + al * (h - tl), h))
                elif l < last:
                    h = torch.sigmoid(h) if sigmoid else torch.where(h > 0, h, self.slopes[l] * h)
                    if self.training and self.dropout > 0:
                        h = nn.functional.dropout(h, self.dropout, training=True)
            out = h.T  # (B, n_outputs)
            if self.task == "regression":
                out = out * self.target_std + self.target_mean
            return out

        def extra_repr(self):
            sizes = [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]
            nnz = [int(w._nnz()) for w in self.weights]
            return (f"sizes={sizes}, nnz={nnz}, activation={self.activation!r}, "
                    f"alpha={self.alpha}, layout={self.weights[0].layout}")

    TorchSparseMLP.__module__ = __name__
    TorchSparseMLP.__qualname__ = "TorchSparseMLP"
    _TORCH_CLASSES["TorchSparseMLP"] = TorchSparseMLP
    return _TORCH_CLASSES


def __getattr__(name):
    # Module attribute created on demand, so pickled modules load without special steps.
    if name == "TorchSparseMLP":
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_torch(model: SparseMLP, *, layout: str = "csr", dtype=None):
    """Export ``model`` as a :class:`TorchSparseMLP` in eval mode.

    Parameters
    ----------
    model : SparseMLP
    layout : {"csr", "coo"}
        Storage of the weight tensors (``torch.sparse_csr`` or ``torch.sparse_coo``).
    dtype : torch.dtype, optional
        Parameter dtype (default ``torch.float32``, as our model).

    Returns
    -------
    torch.nn.Module
        ``module(torch.as_tensor(X))`` equals ``model.decision_function(X)`` (raw,
        unstandardised features in; within float32 rounding).
    """
    torch = _require_torch()
    if layout not in ("csr", "coo"):
        raise SparsetrainError(f"The 'layout' parameter must be 'csr' or 'coo'. Got {layout!r} instead.")
    dtype = dtype or torch.float32
    weights, biases = [], []
    for layer in model.layers:
        # Our CSC index over outputs is the CSR of W^T: crow (n_out+1,), col/values (nnz,).
        col_ptr, col_rows, col_pos = layer.csc_index()
        crow = torch.as_tensor(col_ptr.astype(np.int64))
        col = torch.as_tensor(col_rows.astype(np.int64))
        val = torch.as_tensor(layer.data[col_pos], dtype=dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            w = torch.sparse_csr_tensor(crow, col, val, size=(layer.n_out, layer.n_in),
                                        check_invariants=True)
        if layout == "coo":
            w = w.to_sparse_coo().coalesce()
        weights.append(w)
        biases.append(torch.as_tensor(layer.bias.copy(), dtype=dtype))
    cls = _torch_classes()["TorchSparseMLP"]

    def buf(a):
        return torch.as_tensor(np.array(a, np.float32), dtype=dtype)

    module = cls(weights, biases, activation=model.activation, alpha=model.alpha,
                 slopes=model.slopes(), dropout=model.dropout, loss=model.loss, task=model.task,
                 input_mean=buf(model.input_mean), input_std=buf(model.input_std),
                 target_mean=buf(model.target_mean), target_std=buf(model.target_std),
                 neuron_params=[torch.as_tensor(la.neuron_params.copy(), dtype=dtype)
                                for la in model.layers[:-1] if la.neuron_params is not None])
    return module.eval()


def _sequential_activation(modules, torch):
    """(activation, alpha) named by the nonlinearity modules of an ``nn.Sequential``."""
    nn = torch.nn
    found = set()
    for m in modules:
        if isinstance(m, nn.LeakyReLU):
            found.add(("leaky-relu", float(m.negative_slope)))
        elif isinstance(m, nn.ReLU):
            found.add(("relu", 0.0))
        elif isinstance(m, nn.Sigmoid):
            found.add(("sigmoid", 0.0))
        elif not isinstance(m, nn.Linear | nn.Dropout | nn.Identity | nn.Sequential):
            raise SparsetrainError(
                f"cannot import a {type(m).__name__} module: sparsetrain MLPs hold Linear "
                f"layers and one of the activations {sorted(ACTIVATIONS)}; pass a list of "
                "nn.Linear and activation=...")
    if len(found) > 1:
        raise SparsetrainError(f"the module mixes activations {sorted(found)}; sparsetrain "
                               "uses one activation for all hidden layers")
    return found.pop() if found else (None, None)


def _to_numpy(t):
    return t.detach().cpu().to_dense().numpy() if t.layout != _require_torch().strided \
        else t.detach().cpu().numpy()


def from_torch(module, masks=None, *, activation=None, alpha=None, dropout=0.0,
               loss="cross-entropy", task="classification", input_mean=None, input_std=None,
               init="he-uniform") -> SparseMLP:
    """Import a masked or sparse PyTorch MLP as a :class:`SparseMLP`.

    Parameters
    ----------
    module : TorchSparseMLP, nn.Module, or list
        A module exported by :func:`to_torch` (everything is taken from it); a module
        whose layers are :class:`sparsetrain.torch.SparseLinear` (as :func:`to_sequential`
        builds: the topology, values, activations, dropout and scalers are read from
        its modules; ``loss`` and, without an ``nn.Dropout``, ``dropout`` from the
        arguments); an
        ``nn.Sequential`` / ``nn.Module`` whose ``nn.Linear`` children, in registration
        order, are the layers; or a list of ``nn.Linear`` or of ``(weight, bias)`` pairs
        with ``weight`` of shape (n_out, n_in), dense or a torch sparse tensor.
    masks : list of array-like (n_out, n_in) of bool, optional
        Which connections exist, per layer. Default: the ``weight_mask`` buffer left by
        ``torch.nn.utils.prune`` when there is one, else the stored entries of a sparse
        weight, else the nonzero entries (an exact zero counts as absent).
    activation, alpha : str, float, optional
        Hidden activation and slope; default: read from the ``nn.ReLU`` /
        ``nn.LeakyReLU`` / ``nn.Sigmoid`` modules of the module (required when there
        are none and more than one layer). The child order is taken as the layer order.
    dropout, loss, task, input_mean, input_std, init
        As :class:`SparseMLP` (``init`` is the initialiser SET uses for regrown
        connections if the model is trained further).
    """
    torch = _require_torch()
    nn = torch.nn
    cls = _TORCH_CLASSES.get("TorchSparseMLP")
    if cls is not None and isinstance(module, cls):
        layers = []
        for w, b in zip(module.weights, module.biases, strict=True):
            coo = w.detach().to_sparse_coo().coalesce()
            cols, rows = coo.indices().numpy()  # W^T (n_out, n_in): (out, in) pairs
            layers.append(SparseLinear.from_coo(w.shape[1], w.shape[0], rows, cols,
                                                coo.values().numpy(), bias=_to_numpy(b),
                                                init=init, fan_in=coo._nnz() / w.shape[0]))
        for layer, params in zip(layers, getattr(module, "neuron_params", ()), strict=False):
            layer.neuron_params = np.ascontiguousarray(_to_numpy(params), np.float32)
            layer.neuron_velocity = np.zeros_like(layer.neuron_params)
        task = module.task
        return SparseMLP(layers, activation=module.activation, alpha=module.alpha,
                         dropout=module.dropout, loss=module.loss, task=task,
                         input_mean=_to_numpy(module.input_mean),
                         input_std=_to_numpy(module.input_std),
                         target_mean=_to_numpy(module.target_mean) if task == "regression" else None,
                         target_std=_to_numpy(module.target_std) if task == "regression" else None)

    if isinstance(module, nn.Module) and _holds_sparse_linear(module):
        return _from_sequential(module, dropout=dropout, loss=loss)
    if isinstance(module, nn.Module):
        children = list(module.modules())[1:]
        linears = [m for m in children if isinstance(m, nn.Linear)]
        seq_act, seq_alpha = _sequential_activation(
            [m for m in children if not list(m.children())], torch)
    else:
        linears, (seq_act, seq_alpha) = list(module), (None, None)
    if not linears:
        raise SparsetrainError("found no nn.Linear layers (or (weight, bias) pairs) to import")
    if activation is None and seq_act is None and len(linears) > 1:
        raise SparsetrainError("cannot tell the hidden activation of this module (no nn.ReLU, "
                               "nn.LeakyReLU or nn.Sigmoid child); pass activation=...")
    activation = activation or seq_act or "relu"
    get_activation(activation)
    alpha = alpha if alpha is not None else (seq_alpha if seq_alpha is not None else 0.0)
    if init not in INITIALIZERS:
        raise SparsetrainError(f"The 'init' parameter must be one of {sorted(INITIALIZERS)}. "
                               f"Got {init!r} instead.")
    if masks is not None and len(masks) != len(linears):
        raise SparsetrainError(f"got {len(masks)} masks for {len(linears)} layers; give one "
                               "(n_out, n_in) mask per layer")
    layers = []
    for l, lin in enumerate(linears):
        if isinstance(lin, nn.Linear):
            weight, bias = lin.weight, lin.bias
            prune_mask = getattr(lin, "weight_mask", None)
        else:
            weight, bias = lin
            prune_mask = None
        weight = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(np.asarray(weight))
        n_out, n_in = weight.shape
        if masks is not None:
            mask = np.asarray(_to_numpy(masks[l]) if isinstance(masks[l], torch.Tensor)
                              else masks[l]).astype(bool)
        elif prune_mask is not None:
            mask = _to_numpy(prune_mask).astype(bool)
        elif weight.layout != torch.strided:
            coo = weight.detach().to_sparse_coo().coalesce()
            mask = np.zeros((n_out, n_in), bool)
            mask[tuple(coo.indices().numpy())] = True
        else:
            mask = None
        w = _to_numpy(weight).astype(np.float32)  # (n_out, n_in)
        if mask is None:
            mask = w != 0
        if mask.shape != (n_out, n_in):
            raise SparsetrainError(f"mask {l} has shape {mask.shape}; layer {l} weight is "
                                   f"({n_out}, {n_in})")
        outs, ins = np.nonzero(mask)
        b = np.zeros(n_out, np.float32) if bias is None else _to_numpy(bias).astype(np.float32)
        fan = max(outs.size, 1) / n_out
        layers.append(SparseLinear.from_coo(n_in, n_out, ins, outs, w[outs, ins], bias=b,
                                            init=init, fan_in=fan))
    return SparseMLP(layers, activation=activation, alpha=alpha, dropout=dropout, loss=loss,
                     task=task, input_mean=input_mean, input_std=input_std)


def _activation_modules(torch) -> dict:
    """Hidden activation name -> ``make(l, alpha, layer)``: the module of hidden layer ``l``
    (1-based) of a :class:`SparseMLP` (``layer``: the core layer before it)."""
    from .torch import AllReLU, SReLU
    nn = torch.nn
    return {
        "relu": lambda l, alpha, layer: nn.ReLU(),
        "leaky-relu": lambda l, alpha, layer: nn.LeakyReLU(alpha),
        "all-relu": lambda l, alpha, layer: AllReLU(alpha, l),
        "sigmoid": lambda l, alpha, layer: nn.Sigmoid(),
        "srelu": lambda l, alpha, layer: SReLU(layer.n_out, params=layer.neuron_params),
    }


def to_sequential(model: SparseMLP, *, backend: str = "auto"):
    """``model`` as a trainable ``torch.nn.Sequential`` of :mod:`sparsetrain.torch` modules::

        Standardize(input_mean, input_std),
        SparseLinear(activation=f_1, dropout=p), ..., SparseLinear    (output layer, linear)
        [Standardize(target_mean, target_std, inverse=True)]           (regression only)

    Hidden activations run in the layer's kernel epilogue where they can
    (:data:`sparsetrain.torch.layer.FUSABLE`); SReLU follows its layer as a module, then
    ``nn.Dropout``. In eval mode the output equals :meth:`SparseMLP.decision_function`
    to float32 rounding; :func:`from_torch` takes it back. ``backend``: as
    :class:`sparsetrain.torch.SparseLinear`.
    """
    torch = _require_torch()
    from .torch import SparseLinear as TorchLinear
    from .torch import Standardize
    from .torch.layer import FUSABLE
    make = _activation_modules(torch)[model.activation]
    mods = [Standardize(model.input_mean, model.input_std)]
    last = len(model.layers) - 1
    for l, layer in enumerate(model.layers):
        act = make(l + 1, model.alpha, layer) if l < last else None
        if act is None or type(act) in FUSABLE:
            mods.append(TorchLinear.from_core(layer, activation=act, backend=backend,
                                              dropout=model.dropout if l < last else 0.0))
            continue
        mods += [TorchLinear.from_core(layer, backend=backend), act]
        if model.dropout > 0:
            mods.append(torch.nn.Dropout(model.dropout))
    if model.task == "regression":
        mods.append(Standardize(model.target_mean, model.target_std, inverse=True))
    return torch.nn.Sequential(*mods)


def _holds_sparse_linear(module) -> bool:
    from .torch import SparseLinear as TorchLinear
    return any(isinstance(m, TorchLinear) for m in module.modules())


def _from_sequential(module, *, dropout, loss) -> SparseMLP:
    """:func:`from_torch` of a module whose layers are :class:`sparsetrain.torch.SparseLinear`."""
    torch = _require_torch()
    nn = torch.nn
    from .torch import AllReLU, SReLU, Standardize
    from .torch import SparseLinear as TorchLinear
    def name_of(act):  # (activation name, alpha) of an activation module
        if isinstance(act, AllReLU):
            return "all-relu", act.alpha
        return _sequential_activation([act], torch)

    fused = {id(m.activation) for m in module.modules() if isinstance(m, TorchLinear)}
    layers, acts, scale_in, scale_out = [], set(), None, None
    for m in module.modules():
        if isinstance(m, TorchLinear):
            layers.append(m.to_core())
            if m.activation is not None:
                acts.add(name_of(m.activation))
            if m.dropout > 0:
                dropout = m.dropout
        elif list(m.children()) or id(m) in fused:
            continue  # containers, and activations read with their layer
        elif isinstance(m, Standardize):
            if m.inverse:
                scale_out = m
            else:
                scale_in = m
        elif isinstance(m, SReLU):
            layers[-1].neuron_params = np.ascontiguousarray(_to_numpy(m.params), np.float32)
            layers[-1].neuron_velocity = np.zeros_like(layers[-1].neuron_params)
            acts.add(("srelu", 0.0))
        elif isinstance(m, nn.Dropout):
            dropout = float(m.p)
        elif not isinstance(m, nn.Identity):
            acts.add(name_of(m))
    if len(acts) > 1:
        raise SparsetrainError(f"the module mixes activations {sorted(acts)}; sparsetrain "
                               "uses one activation for all hidden layers")
    activation, alpha = acts.pop() if acts else ("relu", 0.0)
    regression = scale_out is not None
    return SparseMLP(
        layers, activation=activation, alpha=alpha, dropout=dropout,
        loss="mse" if regression else loss, task="regression" if regression else "classification",
        input_mean=None if scale_in is None else _to_numpy(scale_in.mean),
        input_std=None if scale_in is None else _to_numpy(scale_in.std),
        target_mean=_to_numpy(scale_out.mean) if regression else None,
        target_std=_to_numpy(scale_out.std) if regression else None)
