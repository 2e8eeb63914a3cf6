"""Truly sparse multilayer perceptron: a list of :class:`SparseLinear` layers and the
math that trains them (forward, loss, backward, momentum SGD).

Forward, hidden layer ``l`` (feature-major, ``a_0`` is the standardised input)::

    z_l = W_l^T a_{l-1} + b_l,     a_l = f_l(z_l) * m_l / (1 - p)      (inverted dropout, training only)

Output: ``z_L = W_L^T a_{L-1} + b_L`` (linear). Losses per sample ``b``, averaged over the
batch (``task="classification"``: integer labels ``y_b``; ``"regression"``: real targets
``t_b`` of length ``n_outputs``)::

    cross-entropy:           L_b = log sum_k exp(z_kb) - z_{y_b, b}      delta_L = softmax(z_b) - onehot(y_b)
    mse, classification:     L_b = 1/2 sum_k (z_kb - onehot(y_b)_k)^2     delta_L = z_b - onehot(y_b)
    mse, regression:         L_b = 1/2 sum_k (z_kb - t_kb)^2              delta_L = z_b - t_b

Regression targets are standardised like the inputs, ``t = (y - target_mean) / target_std``
(training-set statistics stored in the model), so the loss is in standardised units;
``decision_function`` and ``predict`` return ``z * target_std + target_mean``, the
original units.

Backward (``delta_L = dL_b/dz_L`` per sample)::

    dW_l[k] = (1/B) sum_b a_{l-1}[i_k, b] * delta_l[j_k, b]   (only at existing connections)
    db_l    = (1/B) sum_b delta_l[:, b]
    delta_{l-1} = (W_l delta_l) * f'_{l-1}(z_{l-1}) * m_{l-1} / (1 - p)

Update (SPEC 1.3, decay inside the learning rate, on connection values only)::

    v <- momentum * v - lr * (dW + weight_decay * W);   W <- W + v
    v_b <- momentum * v_b - lr * db;                    b <- b + v_b
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _kernels
from .activations import get_activation
from .data import check_y
from .errors import SparsetrainError, param_error
from .layers import SparseLinear, check_er_density
from .memory import activation_bytes, aligned_empty
from .optim import fan_in_lr_scales, scaled_lrs

LOSSES = ("cross-entropy", "mse")


class LayerGradient(NamedTuple):
    """Gradients of one layer: ``weights`` aligned with ``layer.data`` (nnz,), ``bias``
    (n_out,), ``neuron`` (P, n_out) for per-neuron activation parameters or None."""

    weights: np.ndarray
    bias: np.ndarray
    neuron: np.ndarray | None
#: What the outputs mean: class scores (integer labels) or real-valued targets (MSE only).
TASKS = ("classification", "regression")
_EMPTY = np.empty((0, 0), np.float32)
_EMPTY_1D = np.empty(0, np.float32)
_SEED_MIX = 0x9E3779B97F4A7C15
_SIMD_COLUMNS = 16  # batch columns per vector in the kernels (16 float32 lanes: AVX-512)


def _layer_forward(layer, a_prev, code, slope, rate, seed, out, dfac, col0) -> None:
    """One layer's fused product, bias, activation and dropout: the gather over its CSC
    index, or the scatter over its CSR rows for a lean layer (the same bits)."""
    args = (layer.data, layer.bias, code, np.float32(slope), np.float32(rate), seed, out, dfac,
            np.int64(col0))
    if layer.col_ptr is not None:
        _kernels.sparse_forward(a_prev, layer.col_ptr, layer.col_rows, layer.col_pos, *args)
    else:
        _kernels.sparse_forward_csr(a_prev, layer.row_ptr, layer.row_cols, *args,
                                    np.int64(_kernels.n_threads()))


def _standardisation(mean, std, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of ``n`` values as float32 (identity where omitted); the kernels read
    them per feature (input) or per output (target), so their shape is checked."""
    mean = np.zeros(n, np.float32) if mean is None else np.ascontiguousarray(mean, np.float32)
    std = np.ones(n, np.float32) if std is None else np.ascontiguousarray(std, np.float32)
    if mean.shape != (n,) or std.shape != (n,):
        raise SparsetrainError(f"{what}_mean/{what}_std must have shape ({n},)")
    return mean, std


def second_moment_gains(act, alpha: float, dropout: float, n_layers: int) -> list[float]:
    """``E[a^2] / Var(z)`` of each layer's inputs ``a`` (``n_layers`` entries): 1 for the
    standardised features, then for hidden layer ``l``'s output
    ``(1 + slope_l^2) / 2 / (1 - dropout)`` (a piecewise activation of symmetric
    pre-activations, inverted dropout); 1 where that does not apply (smooth or
    trainable activations).

    He et al. (2015) scale a layer's initial values so that ``Var(z)`` stays the same
    through depth for ReLU inputs (gain 1/2, variance ``2 / F``); with a negative slope
    and inverted dropout the gain is larger, and the error compounds: ten All-ReLU layers
    of fan-in 2 at dropout 0.4 (the 50 M-neuron network) grew the activations' rms 1.5x
    per layer, 60x at the last one, and training diverged. Under the width-aware
    parametrisation the initial values are scaled by ``sqrt(1 / (2 gain))`` (variance
    ``1 / (F gain)``), which keeps ``Var(z) = 1`` in every layer.
    """
    gains = [1.0]
    for l in range(1, n_layers):
        if act.code == _kernels.ACT_PIECEWISE:
            slope = act.slope(l, alpha)
            gains.append((1.0 + slope * slope) / 2.0 / (1.0 - dropout))
        else:
            gains.append(1.0)
    return gains


class SparseMLP:
    """A truly sparse MLP.

    Parameters
    ----------
    layers : list of SparseLinear
        Consecutive layers (``layers[l].n_out == layers[l+1].n_in``).
    activation : str
        Hidden activation, a key of :data:`sparsetrain.activations.ACTIVATIONS`.
    alpha : float
        Negative-side slope parameter of leaky ReLU / All-ReLU.
    dropout : float
        Inverted-dropout rate on hidden layers during training, in [0, 1).
    loss : {"cross-entropy", "mse"}
        Output loss (softmax + cross-entropy, or squared error).
    task : {"classification", "regression"}
        ``"classification"``: targets are integer labels (MSE then compares with one-hot
        vectors); ``"regression"``: targets are real values, shape (n,) or (n, n_outputs),
        and ``loss`` must be ``"mse"``.
    target_mean, target_std : array (n_outputs,), optional
        Regression only: training-set standardisation of the targets (identity if omitted).
    input_mean, input_std : array (n_features,), optional
        Training-set standardisation applied to every input (identity if omitted).
    """

    def __init__(self, layers, *, activation="all-relu", alpha=0.6, dropout=0.3,
                 loss="cross-entropy", input_mean=None, input_std=None, task="classification",
                 target_mean=None, target_std=None):
        if not layers:
            raise SparsetrainError("a SparseMLP needs at least one layer")
        for a, b in zip(layers[:-1], layers[1:], strict=True):
            if a.n_out != b.n_in:
                raise SparsetrainError(
                    f"layer sizes do not chain: {a.n_out} outputs feed {b.n_in} inputs")
        # Names select code (an unknown loss would silently run the other branch): refused
        # with TrainConfig's message. Ranges of training hyperparameters such as dropout
        # are TrainConfig's alone (see sparsetrain.config).
        if loss not in LOSSES:
            raise param_error("loss", f"one of {sorted(LOSSES)}", loss)
        if task not in TASKS:
            raise param_error("task", f"one of {sorted(TASKS)}", task)
        if task == "regression" and loss != "mse":
            raise param_error("loss", "'mse' for a regression model", loss)
        self.layers = list(layers)
        self.task = task
        self.activation = activation
        self._act = get_activation(activation)
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.loss = loss
        self.input_mean, self.input_std = _standardisation(
            input_mean, input_std, self.layers[0].n_in, "input")
        self._inv_std = (1.0 / self.input_std).astype(np.float32)
        if task == "classification" and (target_mean is not None or target_std is not None):
            raise SparsetrainError("target_mean/target_std apply to regression models only")
        self.target_mean, self.target_std = _standardisation(
            target_mean, target_std, self.layers[-1].n_out, "target")
        if not np.all(self.target_std > 0):
            raise SparsetrainError("target_std must be positive")
        self._buffers = {}
        #: Samples per forward/backward pass (None: the whole batch). A larger batch runs
        #: as micro-batches whose gradients add up to the batch's, then one step: the
        #: activation memory is that of ``micro_batch`` samples (set by the trainer from
        #: its memory plan, see :mod:`sparsetrain.memory`; not saved in model files).
        self.micro_batch: int | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, sizes, *, epsilon, rng, activation="all-relu", alpha=0.6, dropout=0.3,
               loss="cross-entropy", init="he-uniform", fan_in="sparse", input_mean=None,
               input_std=None, task="classification", cap_density=False, target_mean=None,
               target_std=None, fan_in_ref=None, csc=True):
        """Erdős–Rényi sparse MLP with layer sizes ``sizes = (n_features, h1, ..., n_outputs)``.

        ``fan_in_ref`` (width-aware parametrisation, SPEC 1.11): a layer whose mean fan-in
        ``F`` exceeds it gets its initial values multiplied by ``sqrt(fan_in_ref / F)``, so
        its outputs start with the spread of a layer of fan-in ``fan_in_ref`` (µP's
        smaller output layer); the trainer lowers its learning rate by the same factor
        squared (:func:`sparsetrain.optim.fan_in_lr_scales`). With ``fan_in_ref`` and
        ``init="he-uniform"`` every layer's values are also scaled by
        ``sqrt(1 / (2 gain))`` (:func:`second_moment_gains`), so ``Var(z)`` stays 1 through
        depth. Regrown connections (``regrow="init"``) draw from the plain initialiser.

        Hidden layers must be sparse (density <= 1, else an error that gives the largest
        valid ``epsilon``) unless ``cap_density``, which caps every layer at density 1
        (fully connected; the scikit-learn estimators use it for tiny inputs); the output
        layer's density is always capped at 1, as in the paper's code, so with few
        classes it is usually fully connected.

        ``csc=False`` makes a lean network (no CSC index: see :meth:`set_csc`).
        """
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise SparsetrainError(f"layer sizes must be >= 1 and at least two. Got {sizes}.")
        last = len(sizes) - 2
        check_er_density(epsilon, sizes, range(0 if cap_density else last))
        layers = [
            SparseLinear.erdos_renyi(sizes[l], sizes[l + 1], epsilon, rng, init=init,
                                     fan_in=fan_in, allow_dense=(l == last or cap_density),
                                     csc=csc)
            for l in range(len(sizes) - 1)
        ]
        scales = fan_in_lr_scales(layers, fan_in_ref)
        if scales is not None:
            for layer, scale in zip(layers, scales, strict=True):
                if scale < 1:
                    layer.data *= np.float32(np.sqrt(scale))
        act = get_activation(activation)
        if fan_in_ref is not None and init == "he-uniform":
            for l, gain in enumerate(second_moment_gains(act, alpha, dropout, len(layers))):
                layers[l].data *= np.float32(np.sqrt(0.5 / gain))
        for layer in layers[:-1]:
            params = act.init_params(rng, layer.n_out)
            if params is not None:
                layer.neuron_params = params
                layer.neuron_velocity = np.zeros_like(params)
        return cls(layers, activation=activation, alpha=alpha, dropout=dropout, loss=loss,
                   input_mean=input_mean, input_std=input_std, task=task,
                   target_mean=target_mean, target_std=target_std)

    # ------------------------------------------------------------------ layout
    @property
    def csc(self) -> bool:
        """Whether the layers keep their CSC index (see :meth:`set_csc`)."""
        return all(layer.csc for layer in self.layers)

    def set_csc(self, keep: bool) -> None:
        """Keep (build) or drop every layer's CSC index.

        With it (20 bytes a connection: value, momentum, output index, and the CSC's
        input index and value position) the forward pass gathers each output row in
        registers; without it (a *lean* network, 12 bytes a connection) the forward pass
        scatters over the CSR rows instead (:func:`sparsetrain._kernels.sparse_forward_csr`):
        the same results, bit for bit, at about twice the forward time on layers that do
        not fit in cache. The backward pass and the SET step never use the CSC index.
        """
        for layer in self.layers:
            layer.set_csc(keep)

    # ------------------------------------------------------------------ shapes
    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].n_in] + [layer.n_out for layer in self.layers]

    @property
    def n_features(self) -> int:
        return self.layers[0].n_in

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].n_out

    @property
    def n_connections(self) -> int:
        return sum(layer.nnz for layer in self.layers)

    def slopes(self) -> list[float]:
        """Negative-side slope of each hidden layer (1-based layer index in the rule)."""
        return [self._act.slope(l + 1, self.alpha) for l in range(len(self.layers) - 1)]

    def _pool(self, name: str, n: int, batch: int) -> np.ndarray:
        """A C-contiguous ``(n, batch)`` float32 view of a flat pool shared by every batch
        size (the last partial batch and inference reuse the training memory)."""
        pool = self._buffers.get(name)
        if pool is None or pool.size < n * batch:
            # Views cached for other batch sizes would keep the old pool alive: drop them.
            for key in [k for k in self._buffers if isinstance(k, tuple)]:
                del self._buffers[key]
            # 64-byte aligned (NumPy gives 16): with a batch that is a multiple of 16
            # every row starts a cache line, and no 16-float vector load straddles two
            # (measured 1.3-1.4x faster products).
            pool = aligned_empty(n * batch, np.float32)
            self._buffers[name] = pool
        return pool[:n * batch].reshape(n, batch)

    def _release(self, training: bool):
        """Drop the pools of the other kind of pass (training: every layer's activations
        and deltas; inference: two alternating buffers), so that a wide network holds one
        set at a time: the memory plan counts the training set, and inference fills the
        same room with more columns (see :meth:`eval_batch_size`)."""
        other = ("ping", "pong") if training else ("acts", "delta", "dfac", "z")
        names = [k for k in self._buffers if isinstance(k, str) and k.startswith(other)]
        if names:
            for key in names + [k for k in self._buffers if isinstance(k, tuple)
                                and len(k) == 2 and isinstance(k[1], bool)]:
                del self._buffers[key]

    def _bufs(self, batch: int, training: bool):
        """Work arrays for one forward (+ backward) pass, all (n_l, B) feature-major.

        Training keeps every layer's activations (the backward pass reads them);
        inference only needs the layer being computed and the one before it, so its
        hidden layers alternate between two buffers (``ping``, ``pong``)."""
        key = (batch, training)
        bufs = self._buffers.get(key)
        if bufs is None:
            self._release(training)
            sizes = self.sizes
            hidden = range(1, len(sizes) - 1)
            if training:
                acts = [self._pool(f"acts{l}", n, batch) for l, n in enumerate(sizes)]
            else:
                for name in ("ping", "pong"):  # sized once for the widest hidden layer
                    self._pool(name, max(sizes[1:-1], default=0), batch)
                acts = ([self._pool("acts0", sizes[0], batch)]
                        + [self._pool("ping" if l % 2 else "pong", sizes[l], batch)
                           for l in hidden]
                        + [self._pool(f"acts{len(sizes) - 1}", sizes[-1], batch)])
            delta = [self._pool(f"delta{l}", sizes[l], batch) if training else None
                     for l in range(1, len(sizes))]
            # The dropout/derivative factors of hidden layer l live in its delta buffer:
            # the forward pass writes them, the backward kernel reads each one just before
            # it writes the delta in its place (4 bytes less per neuron and sample: at
            # 50 M neurons, twice the micro-batch in the same memory). SReLU keeps its
            # own, as its backward pass turns the delta into dL/dz after the product.
            dfac = [(delta[l - 1] if not self._act.n_params
                     else self._pool(f"dfac{l}", sizes[l], batch)) if training else _EMPTY
                    for l in hidden]
            zbuf = [self._pool(f"z{l}", sizes[l], batch) if training and self._act.n_params
                    else _EMPTY for l in hidden]  # pre-activations (SReLU)
            bufs = {"acts": acts, "dfac": dfac, "delta": delta, "z": zbuf}
            self._buffers[key] = bufs
        return bufs

    # ------------------------------------------------------------------ forward
    def _forward(self, X, idx, training: bool, seed: int = 0, col0: int = 0):
        """Run the layers on rows ``idx`` of ``X``; returns the buffers (output logits last).
        ``col0``: the first row's position in its step (micro-batches draw the dropout
        masks of their place in the whole batch)."""
        if not training:  # before the inference buffers are made: they take its room
            self._last_pass = None
        bufs = self._bufs(idx.shape[0], training)
        if training:
            self._last_pass = bufs  # for GrowthSignal (last_pass_signals)
        acts, dfac = bufs["acts"], bufs["dfac"]
        slopes = self.slopes()
        last = len(self.layers) - 1
        if not self._act.n_params and self.csc:  # every layer in one parallel region
            layers = self.layers
            rate = self.dropout if training else 0.0
            _kernels.mlp_forward(
                X, idx, self.input_mean, self._inv_std, tuple(acts),
                tuple(la.col_ptr for la in layers), tuple(la.col_rows for la in layers),
                tuple(la.col_pos for la in layers), tuple(la.data for la in layers),
                tuple(la.bias for la in layers),
                np.array([self._act.code] * last + [_kernels.ACT_LINEAR], np.int64),
                np.array(slopes + [0.0], np.float32),
                np.array([rate] * last + [0.0], np.float32),
                np.array([(seed * _SEED_MIX + l + 1) & 0xFFFFFFFFFFFFFFFF
                          for l in range(last + 1)], np.uint64),
                tuple(dfac) + (_EMPTY,), _kernels.n_threads(), np.int64(col0))
            return bufs
        _kernels.gather_standardize(X, idx, self.input_mean, self._inv_std, acts[0])
        for l, layer in enumerate(self.layers):
            if l < last:
                code, slope, d = self._act.code, slopes[l], dfac[l]
                rate = self.dropout if training else 0.0
            else:
                code, slope, d, rate = _kernels.ACT_LINEAR, 0.0, _EMPTY, 0.0
            layer_seed = np.uint64((seed * _SEED_MIX + l + 1) & 0xFFFFFFFFFFFFFFFF)
            if l < last and self._act.n_params:  # SReLU: linear product, then its own pass
                _layer_forward(layer, acts[l], _kernels.ACT_LINEAR, 0.0, 0.0, layer_seed,
                               acts[l + 1], _EMPTY, col0)
                _kernels.srelu_forward(acts[l + 1], layer.neuron_params, np.float32(rate),
                                       layer_seed, bufs["z"][l], d, np.int64(col0))
                continue
            _layer_forward(layer, acts[l], code, slope, rate, layer_seed, acts[l + 1], d, col0)
        return bufs

    def _batch_targets(self, y, idx):
        """Targets of rows ``idx``: labels (B,) int, or standardised real targets (C, B) float32."""
        if self.task == "classification":
            return y[idx]
        t = y[idx]  # (B,) or (B, C)
        t = (t.reshape(t.shape[0], -1) - self.target_mean) / self.target_std  # (B, C)
        return np.ascontiguousarray(t.T, dtype=np.float32)  # (C, B)

    def _loss_delta(self, z, y, delta):
        """Mean loss over the batch and ``delta = dL_b/dz`` (per sample) into ``delta`` (C, B).

        ``y``: labels (B,) for classification, targets (C, B) for regression.
        Overflow is not warned about: the trainer checks the loss and stops on NaN/inf.
        """
        cols = np.arange(z.shape[1])
        with np.errstate(invalid="ignore", over="ignore"):
            if self.task == "regression":
                diff = z - y  # (C, B)
                loss = float(0.5 * np.mean(np.sum(diff * diff, axis=0)))
                if delta is not None:
                    delta[...] = diff
            elif self.loss == "cross-entropy":
                zmax = z.max(axis=0)
                e = np.exp(z - zmax)
                s = e.sum(axis=0)
                loss = float(np.mean(np.log(s) + zmax - z[y, cols]))
                if delta is not None:
                    np.divide(e, s, out=delta)
                    delta[y, cols] -= 1.0
                    # Underflowed probabilities are subnormal: flush them (see _kernels.TINY).
                    delta[np.abs(delta) < _kernels.TINY] = 0.0
            else:
                diff = z.copy()
                diff[y, cols] -= 1.0
                loss = float(0.5 * np.mean(np.sum(diff * diff, axis=0)))
                if delta is not None:
                    delta[...] = diff
        return loss

    def _backward(self, bufs, step=None, *, lr_scales=None, inv_batch=None, add=False,
                  mode=None):
        """Per-layer gradients after a training forward + loss, or, with
        ``step=(lr, momentum, weight_decay)``, the momentum-SGD update applied inside the
        kernels as the gradients come (then the returned weight/bias entries are None;
        ``lr_scales``: per-layer factors of the connections' learning rate). With a step,
        ``mode`` ``GRAD_VEL_FIRST`` / ``GRAD_VEL_ADD`` adds this micro-batch's share to the
        velocities instead (values unchanged; SReLU's parameter gradients are returned,
        stored or added by ``add``), see :meth:`train_step`.

        Gradient mode: means are taken with ``inv_batch`` (default: 1 / this pass's
        columns) and, with ``add``, added to the gradient buffers instead of replacing
        them (the micro-batches of one step). Each layer's delta uses only its own (not
        yet updated) weights, so updating a layer right after its backward kernel equals
        updating all layers at the end.
        """
        acts, dfac, delta = bufs["acts"], bufs["dfac"], bufs["delta"]
        if inv_batch is None:
            inv_batch = np.float32(1.0 / acts[0].shape[1])
        update = step is not None
        if mode is None:
            mode = (_kernels.GRAD_STEP if update else
                    _kernels.GRAD_ADD if add else _kernels.GRAD_STORE)
        whole = mode == _kernels.GRAD_STEP  # SReLU's parameters step at once
        lr, mom, wd = (np.float32(v) for v in (step if update else (0.0, 0.0, 0.0)))
        layers = self.layers
        g = [_EMPTY_1D if update else self._grad_buffer(("grad", l), la.nnz)
             for l, la in enumerate(layers)]
        gb = [_EMPTY_1D if update else self._grad_buffer(("bias_grad", l), la.n_out)
              for l, la in enumerate(layers)]
        if not self._act.n_params:  # every layer in one parallel region
            _kernels.mlp_backward(
                tuple(acts[:-1]), tuple(delta), (_EMPTY,) + tuple(delta[:-1]),
                (_EMPTY,) + tuple(dfac), tuple(la.row_ptr for la in layers),
                tuple(la.row_cols for la in layers), tuple(la.data for la in layers),
                tuple(la.velocity for la in layers), tuple(la.bias for la in layers),
                tuple(la.bias_velocity for la in layers), tuple(g), tuple(gb), inv_batch,
                lr, mom, wd, mode, _kernels.n_threads(),
                None if lr_scales is None else np.asarray(lr_scales, np.float32))
            if update:
                return [LayerGradient(None, None, None) for _ in layers]
            return [LayerGradient(g[l], gb[l], None) for l in range(len(layers))]
        neuron = [None] * len(layers)  # activation parameters of layer l's outputs
        lrs = scaled_lrs(lr, lr_scales, len(layers))
        for l in range(len(layers) - 1, -1, -1):
            layer = layers[l]
            prev_delta = delta[l - 1] if l > 0 else _EMPTY
            prev_dfac = dfac[l - 1] if l > 0 else _EMPTY
            _kernels.sparse_backward(acts[l], delta[l], layer.row_ptr, layer.row_cols,
                                     layer.data, prev_dfac, inv_batch, g[l], prev_delta,
                                     layer.velocity, lrs[l], mom, wd, mode)
            if update:
                _kernels.bias_update(delta[l], layer.bias, layer.bias_velocity, lr, mom,
                                     inv_batch, mode)
            else:
                _kernels.bias_grad(delta[l], gb[l], inv_batch, mode)
            below = layers[l - 1] if l > 0 else None
            if below is not None and below.neuron_params is not None:
                # delta[l-1] holds dL/da * dropout factor: SReLU turns it into dL/dz.
                pg = np.empty_like(below.neuron_params)
                _kernels.srelu_backward(bufs["z"][l - 1], prev_delta, below.neuron_params,
                                        inv_batch, pg)
                if whole:  # its parameters are not used again in this backward pass
                    _kernels.momentum_sgd(below.neuron_params.ravel(),
                                          below.neuron_velocity.ravel(), pg.ravel(), lr, mom,
                                          np.float32(0.0))
                else:
                    acc = self._grad_buffer(("neuron_grad", l - 1), pg.size).reshape(pg.shape)
                    if add:
                        acc += pg
                    else:
                        acc[...] = pg
                    neuron[l - 1] = acc
        if update:
            return [LayerGradient(None, None, neuron[l]) for l in range(len(layers))]
        return [LayerGradient(g[l], gb[l], neuron[l]) for l in range(len(layers))]

    def _micro_batches(self, n: int) -> int:
        """Samples per pass for a step of ``n``: ``micro_batch`` if set and smaller."""
        mb = self.micro_batch
        return n if mb is None or mb >= n else int(mb)

    def _accumulated_gradients(self, X, y, idx, seed):
        """Loss and gradients of the step ``idx``, summed over micro-batches of
        :attr:`micro_batch` samples (each drawing the dropout masks of its columns in
        the whole batch): equal to the one-pass gradients up to float rounding."""
        n = idx.shape[0]
        mb = self._micro_batches(n)
        inv = np.float32(1.0 / n)
        total = 0.0
        grads = None
        for c0 in range(0, n, mb):
            sub = idx[c0:c0 + mb]
            bufs = self._forward(X, sub, training=True, seed=seed, col0=c0)
            loss = self._loss_delta(bufs["acts"][-1], self._batch_targets(y, sub),
                                    bufs["delta"][-1])
            total += loss * sub.shape[0]
            grads = self._backward(bufs, inv_batch=inv, add=c0 > 0)
        return total / n, grads

    def gradients(self, X, y, idx=None, seed=0):
        """Training-mode loss and per-layer gradients ``[(dW, db), ...]`` on rows ``idx``.

        ``y``: integer labels (n,) for classification, real targets (n,) or (n, n_outputs)
        for regression. ``dW`` is aligned with ``layer.data`` (existing connections only). The
        returned arrays are work buffers: copy them to keep them past the next call.
        """
        idx = np.arange(X.shape[0], dtype=np.int64) if idx is None else idx
        return self._accumulated_gradients(X, y, idx, seed)

    def train_step(self, X, y, idx, *, lr, momentum, weight_decay, seed, lr_scales=None):
        """One momentum-SGD step on the mini-batch ``idx``; returns the batch loss.

        ``lr_scales`` (one float per layer, or None): factors of each layer's connection
        learning rate (:func:`sparsetrain.optim.fan_in_lr_scales`). With
        :attr:`micro_batch` smaller than the batch, each micro-batch adds its share of
        the step to the momentum buffers (the first one also decays them), and the values
        move after the last: the same step to float rounding, with no gradient buffer
        (4 bytes a connection less than adding up gradients first).
        """
        n = idx.shape[0]
        mb = self._micro_batches(n)
        step = (lr, momentum, weight_decay)
        if mb == n:  # one pass, step fused in
            bufs = self._forward(X, idx, training=True, seed=seed)
            loss = self._loss_delta(bufs["acts"][-1], self._batch_targets(y, idx),
                                    bufs["delta"][-1])
            self._backward(bufs, step=step, lr_scales=lr_scales)
            return loss
        inv = np.float32(1.0 / n)
        total = 0.0
        for c0 in range(0, n, mb):
            sub = idx[c0:c0 + mb]
            bufs = self._forward(X, sub, training=True, seed=seed, col0=c0)
            total += sub.shape[0] * self._loss_delta(
                bufs["acts"][-1], self._batch_targets(y, sub), bufs["delta"][-1])
            grads = self._backward(bufs, step=step, lr_scales=lr_scales, inv_batch=inv,
                                   add=c0 > 0, mode=_kernels.GRAD_VEL_ADD if c0 > 0
                                   else _kernels.GRAD_VEL_FIRST)
        lr, mom, zero = np.float32(lr), np.float32(momentum), np.float32(0.0)
        for layer, g in zip(self.layers, grads, strict=True):
            _kernels.apply_velocity(layer.data, layer.velocity)
            _kernels.apply_velocity(layer.bias, layer.bias_velocity)
            if g.neuron is not None:
                _kernels.momentum_sgd(layer.neuron_params.ravel(),
                                      layer.neuron_velocity.ravel(), g.neuron.ravel(), lr, mom,
                                      zero)
        return total / n

    def _grad_buffer(self, key, n):
        """A cached float32 work array of ``n`` entries (gradients of one layer)."""
        g = self._buffers.get(key)
        if g is None or g.shape[0] != n:
            g = np.empty(n, np.float32)
            self._buffers[key] = g
        return g

    def __getstate__(self):
        """Pickle without the work buffers (they are rebuilt on the next call)."""
        state = self.__dict__.copy()
        state["_buffers"] = {}
        state["_last_pass"] = None
        return state

    def invalidate_buffers(self):
        """Drop cached work buffers (after a topology or size change)."""
        self._buffers.clear()
        self._last_pass = None

    def last_pass_signals(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer, copies of the input activations ``(n_in, B)`` (after dropout) and
        output deltas ``dL/dz`` ``(n_out, B)`` of the last training pass (its last
        micro-batch): what gradient-guided growth scores absent connections with
        (:class:`sparsetrain.evolution.GrowthSignal`)."""
        bufs = getattr(self, "_last_pass", None)
        if bufs is None:
            raise SparsetrainError("no training pass has run since the last topology change")
        acts, delta = bufs["acts"], bufs["delta"]
        return [(acts[l].copy(), delta[l].copy()) for l in range(len(self.layers))]

    # ------------------------------------------------------------------ inference
    def eval_batch_size(self) -> int:
        """Rows per inference chunk: keeps one activation buffer near 32 MB at most, or
        fills the room of the training work arrays (the memory plan's activations of one
        micro-batch, or the pools a training or inference pass allocated: a second call
        keeps the first one's chunks), whichever is more; those are
        released while inference runs (:meth:`_release`). Inference holds the input, two
        alternating hidden buffers and the output per row, so a deep wide network runs
        many more rows per chunk than it trains on (at 10 layers of 5 M neurons: 304
        rows where training passes hold 32), and each connection's row is fetched once
        for all of them."""
        sizes = self.sizes
        widest = max(sizes)
        rows = int(max(1, min(2048, (8 << 20) // widest)))
        per_row = 4 * (sizes[0] + 2 * max(sizes[1:-1], default=0) + sizes[-1])
        room = 0
        if self.micro_batch is not None:
            room = activation_bytes(sizes, self.micro_batch)
        pooled = [v for k, v in self._buffers.items() if isinstance(k, str)
                  and k.startswith(("acts", "delta", "dfac", "z", "ping", "pong"))]
        room = max(room, 4 * sum(p.size for p in pooled))
        if room > 4 * rows * widest:  # the training room holds more: whole SIMD groups of it
            rows = max(rows, room // per_row // _SIMD_COLUMNS * _SIMD_COLUMNS)
        return int(max(rows, self.micro_batch or 0))

    def decision_function(self, X, batch_size=None) -> np.ndarray:
        """Output-layer values ``z_L`` for every row of ``X``: (N, n_outputs) float32
        (regression: in the targets' units, ``z_L * target_std + target_mean``)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise SparsetrainError(
                f"X has shape {X.shape}; this model expects (n_samples, {self.n_features})."
            )
        bs = batch_size or self.eval_batch_size()
        out = np.empty((X.shape[0], self.n_outputs), np.float32)
        for start in range(0, X.shape[0], bs):
            stop = min(start + bs, X.shape[0])
            # Round each chunk up to whole SIMD groups (repeating its last row) so that every
            # sample takes the kernels' vector path: a row's outputs then do not depend on
            # which other rows share its call or where it sits (the scalar tail rounds
            # differently), as scikit-learn's sample-order and subset checks require.
            width = -(-(stop - start) // _SIMD_COLUMNS) * _SIMD_COLUMNS
            idx = np.minimum(np.arange(start, start + width, dtype=np.int64), stop - 1)
            bufs = self._forward(X, idx, training=False)
            out[start:stop] = bufs["acts"][-1][:, :stop - start].T
        if self.task == "regression":
            out *= self.target_std
            out += self.target_mean
        return out

    def predict_proba(self, X, batch_size=None) -> np.ndarray:
        """Softmax of the outputs (cross-entropy models); the raw outputs for MSE models."""
        if self.task == "regression":
            raise SparsetrainError("predict_proba needs a classification model; this one "
                                   "does regression: use predict")
        z = self.decision_function(X, batch_size).astype(np.float64)
        if self.loss != "cross-entropy":
            return z
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X, batch_size=None) -> np.ndarray:
        """Class index (N,) for classification; the outputs (N, n_outputs) for regression."""
        z = self.decision_function(X, batch_size)
        return z if self.task == "regression" else np.argmax(z, axis=1)

    def evaluate(self, X, y, batch_size=None) -> tuple[float, float]:
        """Mean loss and accuracy on ``(X, y)`` (regression: accuracy is NaN)."""
        z = self.decision_function(X, batch_size)
        if self.task == "regression":
            t = self._batch_targets(np.asarray(y, np.float32), slice(None))  # (C, N) standardised
            z = (z - self.target_mean) / self.target_std  # back to standardised units
            return self._loss_delta(np.ascontiguousarray(z.T), t, None), float("nan")
        # Labels checked like training's (-1 would otherwise score as the last class, and
        # one beyond the outputs read past the logits).
        y = check_y(y, "y", task=self.task, n_rows=z.shape[0], n_outputs=self.n_outputs)
        loss = self._loss_delta(np.ascontiguousarray(z.T), y, None)
        acc = float(np.mean(np.argmax(z, axis=1) == y))
        return loss, acc

    def __repr__(self):
        layers = ", ".join(f"{la.n_in}->{la.n_out}:{la.nnz}" for la in self.layers)
        task = "" if self.task == "classification" else f", task={self.task!r}"
        return f"SparseMLP([{layers}], activation={self.activation!r}, alpha={self.alpha}{task})"
