"""Truly sparse layer: connections in flat arrays, never a dense matrix with a mask.

A :class:`SparseLinear` with ``n_in`` inputs and ``n_out`` outputs stores::

    row_ptr  (n_in+1,)  int32    CSR over inputs
    row_cols (nnz,)     int32    output index of each connection
    data     (nnz,)     float32  connection values w_ij
    velocity (nnz,)     float32  momentum buffer, aligned with data
    bias     (n_out,)   float32, bias_velocity (n_out,)
    col_ptr (n_out+1,), col_rows (nnz,), col_pos (nnz,)   CSC index into data (derived;
                                                          None in a lean layer, csc=False)

Every index is int32 (a layer holds fewer than 2**31 connections, checked): at 50 M
neurons and two connections a neuron, int64 pointers would add 4 bytes a connection.

Connections are ordered by (input, output): the flat key ``i * n_out + j`` is
strictly increasing along ``data``, which makes membership tests a binary search.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from . import _kernels
from .errors import SparsetrainError, param_error

FAN_IN_MODES = ("sparse", "dense")


def _he_uniform(rng, size, fan_in, fan_out):
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size)


def _xavier_uniform(rng, size, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size)


def _normal(rng, size, fan_in, fan_out):
    # N(0, 1) / 10, as the reference code's "normal" initialiser (SPEC 1.1).
    return rng.standard_normal(size) * 0.1


#: Initialisers by name: f(rng, size, fan_in, fan_out) -> float64 array.
INITIALIZERS = {
    "he-uniform": _he_uniform,
    "xavier": _xavier_uniform,
    "normal": _normal,
}


def largest_epsilon_text(n_in: int, n_out: int) -> str:
    """The largest epsilon keeping an ``n_in x n_out`` layer at density <= 1, rounded *down*
    to 4 significant digits so that the printed value is itself valid."""
    bound = n_in * n_out / (n_in + n_out)
    digits = 3 - math.floor(math.log10(bound))
    return f"{math.floor(bound * 10**digits) / 10**digits:g}"


def er_density(n_in: int, n_out: int, epsilon: float) -> float:
    """Erdős–Rényi connection probability ``epsilon * (n_in + n_out) / (n_in * n_out)`` (uncapped)."""
    return epsilon * (n_in + n_out) / (n_in * n_out)


def check_er_density(epsilon: float, sizes, layers) -> None:
    """Refuse an ``epsilon`` that is not positive, or that makes one of ``layers`` (indices
    ``l`` of the ``sizes[l] -> sizes[l + 1]`` layers) denser than 1; the message gives the
    largest epsilon that keeps all of them sparse.

    The one density rule of :meth:`SparseLinear.erdos_renyi` and :meth:`SparseMLP.create`:
    unlike the other hyperparameters (checked by ``TrainConfig``) it needs the layer sizes,
    which only the model knows.
    """
    layers = list(layers)
    q = min(layers, key=lambda q: sizes[q] * sizes[q + 1] / (sizes[q] + sizes[q + 1]),
            default=None)
    largest = "inf" if q is None else largest_epsilon_text(sizes[q], sizes[q + 1])
    if not epsilon > 0:  # also NaN
        raise param_error("epsilon", "a float in (0, inf)" if q is None
                          else f"a float in (0, {largest}] for these layer sizes", epsilon)
    for l in layers:
        p = er_density(sizes[l], sizes[l + 1], epsilon)
        if p > 1.0:
            raise param_error(
                "epsilon", f"at most {largest} for these layer sizes", epsilon,
                fix=f"It makes layer {l + 1} ({sizes[l]}->{sizes[l + 1]}) denser than 1 "
                f"(density {p:.6g} = epsilon*(n_in+n_out)/(n_in*n_out)); use epsilon <= "
                f"{largest} or wider layers.")


#: Most connections a layer may hold: its pointers and positions are int32.
MAX_LAYER_CONNECTIONS = 2**31 - 1


def _index_array(ptr, name: str) -> np.ndarray:
    """A layer's CSR pointer array as int32, refusing a layer too large for it."""
    ptr = np.asarray(ptr)
    if ptr.size and int(ptr[-1]) > MAX_LAYER_CONNECTIONS:
        raise SparsetrainError(
            f"a layer holds at most 2**31 - 1 connections (they take 20 bytes each, 43 GB); "
            f"this one has {int(ptr[-1])} ({name}). Lower epsilon.")
    return np.ascontiguousarray(ptr, dtype=np.int32)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort + adjacent difference: NumPy 2's hash-based
    ``np.unique`` is several times slower on 10^7 int64)."""
    x = np.sort(x)
    if x.size:
        x = x[np.concatenate(([True], x[1:] != x[:-1]))]
    return x


def sample_free_positions(rng, n_total: int, k: int, occupied=None) -> np.ndarray:
    """Draw ``k`` distinct flat positions uniformly from ``[0, n_total)`` minus ``occupied``.

    ``occupied`` must be sorted (int64). Never allocates ``n_total`` entries
    unless the free set is small enough to list (then it lists it), so layers of
    millions of neurons sample in time proportional to ``k``.

    Returns the positions sorted ascending.
    """
    occ = np.empty(0, np.int64) if occupied is None else occupied
    n_free = n_total - occ.size
    if k > n_free:
        raise SparsetrainError(
            f"cannot place {k} connections: only {n_free} free positions in a layer of {n_total}"
        )
    if k == 0:
        return np.empty(0, np.int64)
    # Dense-ish case: rejection sampling would spin; list the free positions instead.
    if n_free <= 4 * k and n_total <= 50_000_000:
        free = np.arange(n_total, dtype=np.int64)
        if occ.size:
            mask = np.ones(n_total, dtype=bool)
            mask[occ] = False
            free = free[mask]
        return np.sort(rng.choice(free, size=k, replace=False))
    chosen = np.empty(0, np.int64)
    while chosen.size < k:
        need = k - chosen.size
        # Expected hit rate is n_free / n_total; draw enough for one pass most of the time.
        rate = max((n_free - chosen.size) / n_total, 1e-3)
        draw = rng.integers(0, n_total, size=int(need / rate * 1.05) + 32, dtype=np.int64)
        draw = _sorted_unique(draw)
        if occ.size:
            pos = np.searchsorted(occ, draw)
            pos[pos == occ.size] = 0
            draw = draw[occ[pos] != draw]
        if chosen.size:
            draw = draw[~np.isin(draw, chosen, assume_unique=True)]
        rng.shuffle(draw)  # sorted above; take a uniformly random subset
        chosen = np.concatenate([chosen, draw[:need]])
    return np.sort(chosen)


class SparseLinear:
    """A sparse fully-connected layer ``z = a @ W + b`` with ``W`` held as CSR over inputs.

    Parameters
    ----------
    n_in, n_out : int
        Number of inputs and outputs.
    rows, cols : array of int
        Connection endpoints, sorted by ``(row, col)`` and unique.
    values : array of float
        Connection values, aligned with ``rows``/``cols``.
    init : str
        Initialiser name (key of :data:`INITIALIZERS`), used for regrown connections.
    fan_in : float
        Fan-in the initialiser uses (the layer's mean fan-in ``nnz / n_out`` or ``n_in``).
    """

    def __init__(self, n_in, n_out, row_ptr, row_cols, data, *, bias=None, velocity=None,
                 bias_velocity=None, init="he-uniform", fan_in=None, neuron_params=None,
                 neuron_velocity=None, csc=True):
        self.n_in = int(n_in)
        self.n_out = int(n_out)
        self.row_ptr = _index_array(row_ptr, "row_ptr")  # (n_in+1,)
        self.row_cols = np.ascontiguousarray(row_cols, dtype=np.int32)  # (nnz,)
        self.data = np.ascontiguousarray(data, dtype=np.float32)  # (nnz,)
        nnz = self.data.shape[0]
        self.velocity = (np.zeros(nnz, np.float32) if velocity is None
                         else np.ascontiguousarray(velocity, dtype=np.float32))
        self.bias = (np.zeros(self.n_out, np.float32) if bias is None
                     else np.ascontiguousarray(bias, dtype=np.float32))
        self.bias_velocity = (np.zeros(self.n_out, np.float32) if bias_velocity is None
                              else np.ascontiguousarray(bias_velocity, dtype=np.float32))
        self.init = init
        self.fan_in = float(fan_in if fan_in is not None else self.n_in)
        # Trainable per-output-neuron activation parameters (SReLU), (P, n_out), or None.
        self.neuron_params = (None if neuron_params is None
                              else np.ascontiguousarray(neuron_params, dtype=np.float32))
        self.neuron_velocity = (None if neuron_params is None else np.zeros_like(self.neuron_params)
                                if neuron_velocity is None
                                else np.ascontiguousarray(neuron_velocity, dtype=np.float32))
        self.check()
        #: Whether the layer keeps its CSC index (8 bytes a connection; the forward pass
        #: gathers through it). A lean layer has none, and its forward pass scatters over
        #: the CSR rows (:func:`sparsetrain._kernels.sparse_forward_csr`).
        self.csc = bool(csc)
        self.rebuild_index()

    # ------------------------------------------------------------------ construction
    @classmethod
    def erdos_renyi(cls, n_in, n_out, epsilon, rng, *, init="he-uniform", fan_in="sparse",
                    allow_dense=False, csc=True):
        """Erdős–Rényi sparse layer (SPEC 1.1): ``round(p * n_in * n_out)`` connections at
        uniformly random positions, ``p = epsilon * (n_in + n_out) / (n_in * n_out)``.

        A density above 1 is an error unless ``allow_dense`` (then it is capped at 1:
        the layer is fully connected, as the paper's code does for the output layer).
        ``fan_in="sparse"`` scales the initialiser by the mean fan-in ``nnz / n_out``
        (the default, see README "Departures"); ``"dense"`` uses ``n_in`` as the paper's code.
        """
        # Names select code (an unknown one has none to run): the message is TrainConfig's.
        if init not in INITIALIZERS:
            raise param_error("init", f"one of {sorted(INITIALIZERS)}", init)
        if fan_in not in FAN_IN_MODES:
            raise param_error("fan_in", f"one of {sorted(FAN_IN_MODES)}", fan_in)
        if not allow_dense:
            check_er_density(epsilon, [n_in, n_out], [0])
        p = er_density(n_in, n_out, epsilon)
        n_total = n_in * n_out
        nnz = n_total if p >= 1.0 else max(1, int(round(p * n_total)))
        keys = sample_free_positions(rng, n_total, nnz)
        rows = keys // n_out
        cols = keys - rows * n_out
        fan = nnz / n_out if fan_in == "sparse" else float(n_in)
        fan_out = nnz / n_in if fan_in == "sparse" else float(n_out)
        values = INITIALIZERS[init](rng, nnz, fan, fan_out)
        row_ptr = np.zeros(n_in + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n_in), out=row_ptr[1:])
        return cls(n_in, n_out, row_ptr, cols, values, init=init, fan_in=fan, csc=csc)

    @classmethod
    def from_coo(cls, n_in, n_out, rows, cols, values, **kwargs):
        """Layer from (row, col, value) triplets in any order (duplicates are an error)."""
        rows = np.asarray(rows, np.int64)
        cols = np.asarray(cols, np.int64)
        keys = rows * n_out + cols
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if keys.size > 1 and np.any(keys[1:] == keys[:-1]):
            raise SparsetrainError("duplicate connections in from_coo")
        row_ptr = np.zeros(n_in + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n_in), out=row_ptr[1:])
        return cls(n_in, n_out, row_ptr, cols[order], np.asarray(values)[order], **kwargs)

    # ------------------------------------------------------------------ derived state
    def rebuild_index(self):
        """Recompute the CSC index (after any change of topology); a lean layer has none."""
        self.col_ptr = self.col_rows = self.col_pos = None
        if self.csc:
            self.col_ptr, self.col_rows, self.col_pos = self.csc_index()

    def csc_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(col_ptr, col_rows, col_pos)``: the layer's CSC index, or a new one for a
        lean layer (not kept)."""
        if self.col_ptr is not None:
            return self.col_ptr, self.col_rows, self.col_pos
        nnz = self.nnz
        col_ptr = np.empty(self.n_out + 1, np.int32)  # (n_out+1,)
        col_rows = np.empty(nnz, np.int32)  # (nnz,)
        col_pos = np.empty(nnz, np.int32)  # (nnz,) position in data
        _kernels.csr_to_csc(self.row_ptr, self.row_cols, self.n_out, col_ptr, col_rows,
                            col_pos)
        return col_ptr, col_rows, col_pos

    def set_csc(self, keep: bool) -> None:
        """Keep (build) or drop the CSC index."""
        if bool(keep) != self.csc:
            self.csc = bool(keep)
            self.rebuild_index()

    def check(self):
        """Validate structural invariants; raise :class:`SparsetrainError` with the broken one."""
        nnz = self.data.shape[0]
        problems = []
        if self.row_ptr.shape != (self.n_in + 1,):
            problems.append(f"row_ptr has shape {self.row_ptr.shape}, expected ({self.n_in + 1},)")
        elif self.row_ptr[0] != 0 or self.row_ptr[-1] != nnz or np.any(np.diff(self.row_ptr) < 0):
            problems.append("row_ptr is not a nondecreasing 0..nnz offset array")
        if self.row_cols.shape != (nnz,) or self.velocity.shape != (nnz,):
            problems.append("indices, values and velocity differ in length")
        elif nnz and (self.row_cols.min() < 0 or self.row_cols.max() >= self.n_out):
            problems.append(f"an output index is outside [0, {self.n_out})")
        if self.bias.shape != (self.n_out,) or self.bias_velocity.shape != (self.n_out,):
            problems.append(f"bias has shape {self.bias.shape}, expected ({self.n_out},)")
        if self.neuron_params is not None and (
                self.neuron_params.ndim != 2 or self.neuron_params.shape[1] != self.n_out
                or self.neuron_velocity.shape != self.neuron_params.shape):
            problems.append(f"neuron parameters have shape {self.neuron_params.shape}, "
                            f"expected (P, {self.n_out})")
        if not problems and nnz:
            keys = self.keys()
            if np.any(keys[1:] <= keys[:-1]):
                problems.append("connections are not sorted by (input, output) or repeat")
        if problems:
            raise SparsetrainError(f"invalid {self.n_in}->{self.n_out} sparse layer: "
                                   + "; ".join(problems))

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @property
    def density(self) -> float:
        return self.nnz / (self.n_in * self.n_out)

    def rows(self) -> np.ndarray:
        """Input index of every connection, (nnz,) int64."""
        return np.repeat(np.arange(self.n_in, dtype=np.int64), np.diff(self.row_ptr))

    def keys(self) -> np.ndarray:
        """Flat position ``i * n_out + j`` of every connection, strictly increasing, (nnz,)."""
        return self.rows() * self.n_out + self.row_cols.astype(np.int64)

    def to_scipy(self) -> sp.csr_matrix:
        """The weight matrix as ``scipy.sparse.csr_matrix`` of shape (n_in, n_out) (copies)."""
        return sp.csr_matrix((self.data.copy(), self.row_cols.copy(), self.row_ptr.copy()),
                             shape=(self.n_in, self.n_out))

    def to_dense(self) -> np.ndarray:
        """Dense (n_in, n_out) copy, for tests and small layers only."""
        return self.to_scipy().toarray()

    def init_values(self, rng, size) -> np.ndarray:
        """Values for ``size`` new connections from the layer's initialiser."""
        fan_out = self.nnz / self.n_in if self.nnz else 1.0
        return INITIALIZERS[self.init](rng, size, self.fan_in, fan_out).astype(np.float32)

    def replace_connections(self, keep, new_keys, new_values):
        """Keep the connections where ``keep`` is True, add ``new_keys`` (absent, sorted) with
        ``new_values`` and zero momentum; survivors keep their values and momentum."""
        old_keys = self.keys()[keep]
        keys = np.concatenate([old_keys, new_keys])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        self.data = np.concatenate([self.data[keep], new_values.astype(np.float32)])[order]
        self.velocity = np.concatenate(
            [self.velocity[keep], np.zeros(new_keys.size, np.float32)])[order]
        rows = keys // self.n_out
        self.row_cols = (keys - rows * self.n_out).astype(np.int32)
        row_ptr = np.zeros(self.n_in + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n_in), out=row_ptr[1:])
        self.row_ptr = _index_array(row_ptr, "row_ptr")
        self.rebuild_index()

    def __repr__(self):
        return (f"SparseLinear({self.n_in}->{self.n_out}, nnz={self.nnz}, "
                f"density={self.density:.4g}, init={self.init!r})")
