"""A truly sparse ``nn.Module`` layer: trainable connection values, index buffers, and a
forward/backward that never builds a dense weight.

A :class:`SparseLinear` holds the layer of :class:`sparsetrain.layers.SparseLinear` as
tensors::

    values  (nnz,)     float32  Parameter   connection values w_k, CSR order over inputs
    bias    (n_out,)   float32  Parameter   (or None)
    row_ptr (n_in+1,)  int32    buffer      CSR over inputs (the order of ``values``)
    row_cols (nnz,)    int32    buffer      output index of each connection
    col_ptr (n_out+1,) int32    buffer      CSC over outputs (derived, saved too)
    col_rows (nnz,)    int32    buffer      input index of each connection, by output
    col_pos (nnz,)     int32    buffer      position in ``values`` of each CSC entry

and computes, for a batch-major input ``x (B, n_in)`` as every torch layer takes::

    y = x W + b,        y[b, j] = b_j + sum_{k = (i -> j)} w_k x[b, i]

    dL/dx[b, i] = sum_{k = (i -> j)} w_k g[b, j]          (g = dL/dy)
    dL/dw_k     = sum_b x[b, i] g[b, j]                    (only at existing connections)
    dL/db_j     = sum_b g[b, j]

CPU: the project's Numba kernels (``_kernels.sparse_forward`` and ``sparse_backward``),
on the tensors' own memory (``Tensor.numpy()`` views). The kernels are feature-major
(``(n, B)``, batch contiguous); the layer returns ``y`` as the transpose of its
``(n_out, B)`` result, so the next sparse layer (through any elementwise activation or
dropout, which keep that layout) reads its input without a copy. Only a batch-major
input (the first layer's data) is transposed once, a copy of ``B * n_in`` floats; the
products cost ``B * nnz`` multiply-adds each, 45x more on the Fashion-MNIST preset's
first layer.

A fused epilogue (``activation=``, ``dropout=``: the kernels' activation and
inverted dropout) gives ``y = f(x W + b) * m / (1 - p)`` and keeps ``f'(z) m / (1 - p)``
for the backward pass, which multiplies the incoming gradient by it.

CUDA: ``torch.sparse`` CSR products. ``W^T`` is the CSR ``(col_ptr, col_rows,
values[col_pos])`` and ``W`` the CSR ``(row_ptr, row_cols, values)``, so
``y^T = W^T x^T`` and ``dL/dx^T = W g^T`` are ``torch.sparse.mm`` and the value gradient
is ``torch.sparse.sampled_addmm`` of ``x^T g`` at ``W``'s entries (in the order of
``values``). The same path runs on CPU with ``backend="torch"`` (tests; slower).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from .. import _kernels
from ..errors import SparsetrainError, param_error
from ..layers import INITIALIZERS
from ..layers import SparseLinear as _CoreLayer
from .activations import AllReLU

_EMPTY = np.empty((0, 0), np.float32)
_EMPTY_1D = np.empty(0, np.float32)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
#: Index buffers of a layer, and their dtypes (the core layer's).
INDEX_BUFFERS = {"row_ptr": torch.int32, "row_cols": torch.int32, "col_ptr": torch.int32,
                 "col_rows": torch.int32, "col_pos": torch.int32}
BACKENDS = ("auto", "numba", "torch")
#: Activations the CPU kernels apply in the product's epilogue: module type ->
#: ``(kernel code, negative-side slope)``.
FUSABLE = {
    AllReLU: lambda m: (_kernels.ACT_PIECEWISE, m.slope),
    nn.ReLU: lambda m: (_kernels.ACT_PIECEWISE, 0.0),
    nn.LeakyReLU: lambda m: (_kernels.ACT_PIECEWISE, float(m.negative_slope)),
    nn.Sigmoid: lambda m: (_kernels.ACT_SIGMOID, 0.0),
}

_ones_cache: dict = {}


def _ones(n: int, batch: int) -> np.ndarray:
    """A cached (n, B) array of ones: the backward kernel's ``dfac_prev`` (it multiplies the
    input's delta by an activation derivative; here the activation is a separate module)."""
    key = (n, batch)
    a = _ones_cache.get(key)
    if a is None:
        if len(_ones_cache) > 16:
            _ones_cache.clear()
        a = _ones_cache[key] = np.ones((n, batch), np.float32)
    return a


def _feature_major(x: torch.Tensor) -> torch.Tensor:
    """``x (B, n)`` as a C-contiguous ``(n, B)`` tensor: a view when ``x`` already is the
    transpose of one (the output of a previous sparse layer), else one copy."""
    return x.detach().t().contiguous()


class _NumbaSparseLinear(torch.autograd.Function):
    """``y = f(x W + b) * m / (1 - p)`` through the project's CPU kernels (see the module
    docstring); ``f`` and the dropout mask ``m`` only for a fused epilogue."""

    @staticmethod
    def forward(ctx, x, values, bias, mod, code, slope, rate, seed, grad):
        if x.dtype != torch.float32 or values.dtype != torch.float32:
            raise SparsetrainError(f"SparseLinear computes in float32 on CPU; got input "
                                   f"{x.dtype} and values {values.dtype}: call .float()")
        a = _feature_major(x)  # (n_in, B)
        batch = a.shape[1]
        out = torch.empty((mod.out_features, batch), dtype=torch.float32)  # (n_out, B)
        # f'(z) * m / (1 - p), (n_out, B): what the backward multiplies the incoming grad by.
        need_d = code != _kernels.ACT_LINEAR or rate > 0
        dfac = torch.empty_like(out) if need_d and grad else None
        b = bias.detach().numpy() if bias is not None else mod._zero_bias()
        _kernels.sparse_forward(a.numpy(), mod.col_ptr.numpy(), mod.col_rows.numpy(),
                                mod.col_pos.numpy(), values.detach().numpy(), b, code,
                                np.float32(slope), np.float32(rate), np.uint64(seed),
                                out.numpy(), _EMPTY if dfac is None else dfac.numpy(),
                                np.int64(0))
        ctx.save_for_backward(a, values, dfac)
        ctx.mod = mod
        ctx.has_bias = bias is not None
        return out.t()  # (B, n_out), a transposed view

    @staticmethod
    def backward(ctx, grad_out):
        a, values, dfac = ctx.saved_tensors
        mod = ctx.mod
        g = grad_out.t()  # (n_out, B); contiguous when it comes transposed
        g = (g * dfac) if dfac is not None else g.contiguous()  # dL/dz
        n_in, batch = a.shape
        want_x = ctx.needs_input_grad[0]
        grad_values = torch.empty_like(values)  # (nnz,), aligned with values
        dx = torch.empty((n_in, batch), dtype=torch.float32) if want_x else None
        _kernels.sparse_backward(a.numpy(), g.numpy(), mod.row_ptr.numpy(),
                                 mod.row_cols.numpy(), values.detach().numpy(),
                                 _ones(n_in, batch) if want_x else _EMPTY, _ONE,
                                 grad_values.numpy(), dx.numpy() if want_x else _EMPTY,
                                 _EMPTY_1D, _ZERO, _ZERO, _ZERO, _kernels.GRAD_STORE)
        # torch's row sums, not _kernels.bias_grad: one parallel region less per layer (each
        # costs a wake-up and a barrier, which a loaded machine makes expensive).
        grad_bias = g.sum(dim=1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (dx.t() if want_x else None, grad_values if ctx.needs_input_grad[1] else None,
                grad_bias, None, None, None, None, None, None)


def _csr(crow, col, values, shape):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


class _TorchSparseLinear(torch.autograd.Function):
    """``y = x W + b`` through ``torch.sparse`` CSR products (CUDA; see the module docstring)."""

    @staticmethod
    def forward(ctx, x, values, bias, mod):
        n_in, n_out = mod.in_features, mod.out_features
        wt = _csr(mod.col_ptr.long(), mod.col_rows.long(), values[mod.col_pos.long()], (n_out, n_in))
        yt = torch.sparse.mm(wt, x.t())  # (n_out, B)
        if bias is not None:
            yt = yt + bias[:, None]
        ctx.save_for_backward(x, values)
        ctx.mod = mod
        ctx.has_bias = bias is not None
        return yt.t()

    @staticmethod
    def backward(ctx, grad_out):
        x, values = ctx.saved_tensors
        mod = ctx.mod
        w = _csr(mod.row_ptr.long(), mod.row_cols.long(), values, (mod.in_features, mod.out_features))
        dx = grad_vals = grad_bias = None
        if ctx.needs_input_grad[0]:
            dx = torch.sparse.mm(w, grad_out.t()).t()  # (B, n_in)
        if ctx.needs_input_grad[1]:
            # (x^T g) sampled at W's entries: CSR of W's pattern, values in W's order.
            pattern = _csr(mod.row_ptr.long(), mod.row_cols.long(), torch.zeros_like(values),
                           (mod.in_features, mod.out_features))
            grad_vals = torch.sparse.sampled_addmm(pattern, x.t().contiguous(),
                                                   grad_out.contiguous(), beta=0.0).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=0)
        return dx, grad_vals, grad_bias, None


class SparseLinear(nn.Module):
    """Truly sparse linear layer ``y = x W + b`` with Erdős–Rényi connectivity (SPEC 1.1).

    Parameters
    ----------
    in_features, out_features : int
    epsilon : float
        Erdős–Rényi density parameter: about ``epsilon * (in + out)`` connections.
    init : str
        Initialiser of the values (and of regrown connections with ``regrow="init"``),
        a key of :data:`sparsetrain.layers.INITIALIZERS`.
    bias : bool
    activation : nn.Module, optional
        An activation applied in the kernels' epilogue on CPU (one pass less):
        :class:`~sparsetrain.torch.AllReLU`, ``nn.ReLU``, ``nn.LeakyReLU`` or ``nn.Sigmoid``
        (:data:`FUSABLE`). Any activation also works as a separate module after the layer.
    dropout : float in [0, 1)
        Inverted dropout after the activation in training mode, ``y = f(z) * m / (1 - p)``.
        On CPU the mask comes from the kernels' counter-based hash (keyed by a draw from
        torch's generator), 10-100x cheaper than ``nn.Dropout``'s Bernoulli draws
        (measured: 2 ms per 1000x128 activation on one thread).
    fan_in : {"sparse", "dense"}
        Fan-in the initialiser scales with (see :meth:`sparsetrain.layers.SparseLinear.erdos_renyi`).
    allow_dense : bool
        Cap a density above 1 at 1 (a fully connected layer, as the paper does for the
        output layer) instead of refusing it.
    seed : int or numpy.random.Generator, optional
        Randomness of the topology and the initial values.
    backend : {"auto", "numba", "torch"}
        ``"auto"``: the project's kernels on CPU, ``torch.sparse`` on CUDA.

    Attributes ``values``, ``bias`` (parameters), ``row_ptr``, ``row_cols``, ``col_ptr``,
    ``col_rows``, ``col_pos`` (buffers; see the module docstring). A state dict loads into a
    layer of any connection count (the tensors are resized to the saved ones).
    """

    def __init__(self, in_features: int, out_features: int, epsilon: float = 20.0,
                 init: str = "he-uniform", bias: bool = True, *, activation=None,
                 dropout: float = 0.0, fan_in: str = "sparse", allow_dense: bool = False,
                 seed=None, backend: str = "auto"):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int | np.integer) or v < 1:
                raise param_error(name, "an int >= 1", v, owner="SparseLinear")
        if init not in INITIALIZERS:
            raise param_error("init", f"one of {sorted(INITIALIZERS)}", init, owner="SparseLinear")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        core = _CoreLayer.erdos_renyi(int(in_features), int(out_features), epsilon, rng,
                                      init=init, fan_in=fan_in, allow_dense=allow_dense)
        self._setup(core, bias, backend, activation, dropout)

    @classmethod
    def from_core(cls, layer: _CoreLayer, *, bias: bool = True, activation=None,
                  dropout: float = 0.0, backend: str = "auto"):
        """A module holding a copy of ``layer`` (a :class:`sparsetrain.layers.SparseLinear`)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(layer, bias, backend, activation, dropout)
        return self

    def _setup(self, core: _CoreLayer, bias: bool, backend: str, activation, dropout):
        if backend not in BACKENDS:
            raise param_error("backend", f"one of {list(BACKENDS)}", backend, owner="SparseLinear")
        if activation is not None and type(activation) not in FUSABLE:
            raise param_error("activation", "None or one of the modules "
                              f"{sorted(t.__name__ for t in FUSABLE)}", type(activation).__name__,
                              owner="SparseLinear", fix="Put any other activation after the layer.")
        if not (isinstance(dropout, float | int) and 0.0 <= dropout < 1.0):
            raise param_error("dropout", "a float in [0, 1)", dropout, owner="SparseLinear")
        self.activation = activation  # a submodule (shown in the repr, in state_dict)
        self.dropout = float(dropout)
        self.in_features, self.out_features = core.n_in, core.n_out
        self.init, self.fan_in = core.init, core.fan_in
        self.backend = backend
        self.values = nn.Parameter(torch.tensor(core.data))
        self.bias = nn.Parameter(torch.tensor(core.bias)) if bias else None
        self._set_index(core)
        self._zero = None

    def _set_index(self, core: _CoreLayer, device=None):
        csc = dict(zip(("col_ptr", "col_rows", "col_pos"), core.csc_index(), strict=True))
        for name, dtype in INDEX_BUFFERS.items():
            t = torch.as_tensor(np.asarray(csc.get(name, getattr(core, name))).copy(),
                                dtype=dtype)
            self.register_buffer(name, t if device is None else t.to(device))

    def _zero_bias(self) -> np.ndarray:
        if self._zero is None or self._zero.shape[0] != self.out_features:
            self._zero = np.zeros(self.out_features, np.float32)
        return self._zero

    # ------------------------------------------------------------------ core layer views
    def to_core(self) -> _CoreLayer:
        """The layer as a :class:`sparsetrain.layers.SparseLinear` (copies, on the CPU)."""
        bias = None if self.bias is None else self.bias.detach().cpu().numpy()
        return _CoreLayer(self.in_features, self.out_features, self.row_ptr.cpu().numpy(),
                          self.row_cols.cpu().numpy(), self.values.detach().cpu().numpy(),
                          bias=bias, init=self.init, fan_in=self.fan_in)

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    def keys(self) -> np.ndarray:
        """Flat position ``i * out_features + j`` of every connection (nnz,) int64, increasing."""
        rows = np.repeat(np.arange(self.in_features, dtype=np.int64),
                         np.diff(self.row_ptr.cpu().numpy()))
        return rows * self.out_features + self.row_cols.cpu().numpy().astype(np.int64)

    def dense_weight(self) -> torch.Tensor:
        """Dense ``(out_features, in_features)`` copy as ``nn.Linear.weight`` (tests only)."""
        keys = torch.as_tensor(self.keys(), device=self.values.device)
        w = torch.zeros(self.in_features * self.out_features, dtype=self.values.dtype,
                        device=self.values.device)
        w[keys] = self.values.detach()
        return w.view(self.in_features, self.out_features).t().contiguous()

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise SparsetrainError(f"SparseLinear expects inputs with {self.in_features} "
                                   f"features (last dimension); got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        if x.dim() != 2:
            x = x.reshape(-1, self.in_features)
        on_cpu = x.device.type == "cpu"
        if self.backend == "numba" and not on_cpu:
            raise param_error("backend", "'auto' or 'torch' for inputs on a CUDA device",
                              "numba", owner="SparseLinear",
                              fix="The Numba kernels run on the CPU only.")
        use_torch = self.backend == "torch" or not on_cpu
        rate = self.dropout if self.training else 0.0
        if use_torch:
            y = _TorchSparseLinear.apply(x, self.values, self.bias, self)
            if self.activation is not None:
                y = self.activation(y)
            if rate > 0:
                y = nn.functional.dropout(y, rate, training=True)
        else:
            code, slope = ((_kernels.ACT_LINEAR, 0.0) if self.activation is None
                           else FUSABLE[type(self.activation)](self.activation))
            # Dropout bits: the kernels' counter-based hash, keyed by a draw from torch's
            # generator (so torch.manual_seed fixes them).
            seed = int(torch.randint(0, 2**62, (1,))) if rate > 0 else 0
            grad = torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad)
            y = _NumbaSparseLinear.apply(x, self.values, self.bias, self, code, slope, rate, seed,
                                         grad)
        return y if len(lead) == 1 else y.reshape(*lead, self.out_features)

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Evolution changes the connection count: take the saved sizes before copying.
        for name in ("values", *INDEX_BUFFERS):
            saved = state_dict.get(prefix + name)
            own = getattr(self, name)
            if saved is not None and saved.shape != own.shape:
                if name == "values":
                    self.values.data = torch.empty(saved.shape, dtype=own.dtype, device=own.device)
                else:
                    self.register_buffer(name, torch.empty(saved.shape, dtype=own.dtype,
                                                           device=own.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        density = self.nnz / (self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, density={density:.4g}, bias={self.bias is not None}"
                + (f", dropout={self.dropout}" if self.dropout else ""))


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature (``inverse=True``: ``x * std + mean``): a
    :class:`SparseMLP`'s input standardisation (and a regression model's target scale)
    as a module, buffers ``mean`` and ``std`` (n,)."""

    def __init__(self, mean, std, *, inverse: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)).clone())
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)).clone())
        self.inverse = bool(inverse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverse:
            return x * self.std + self.mean
        return (x - self.mean) * torch.reciprocal(self.std)  # as the core model: * (1 / std)

    def extra_repr(self) -> str:
        return f"n={self.mean.shape[0]}, inverse={self.inverse}"
