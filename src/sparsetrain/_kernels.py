"""Compiled kernels of the truly sparse MLP (Numba, module level, flat arrays only).

Layout conventions shared by every kernel here:

* Activations and deltas are **feature-major**: ``a`` has shape ``(n_units, B)``
  with the batch contiguous, so one connection ``(i -> j, w)`` costs one
  contiguous ``B``-wide multiply-add (``out[j, :] += w * a[i, :]``), which the
  compiler vectorises.
* A layer's connections are stored once, in CSR over its inputs:
  ``row_ptr (n_in+1,)``, ``row_cols (nnz,)`` (output index of each connection),
  ``data (nnz,)`` (connection values). The forward product walks the same
  connections grouped by output through a CSC index that points into ``data``:
  ``col_ptr (n_out+1,)``, ``col_rows (nnz,)``, ``col_pos (nnz,)``.
* Parallel loops (``numba.prange``) run over output rows (forward) or input
  rows (backward), so no two threads write the same element and results do not
  depend on the number of threads.

Activation codes (``ACT_*``) select the nonlinearity inside the fused kernels;
the Python side maps names to codes through one table (``activations.py``).
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

# Reassociation lets LLVM vectorise the reductions; no "nnan"/"ninf", so NaN and inf
# propagate exactly as in IEEE arithmetic and the trainer's non-finite guard sees them.
_FAST = {"reassoc", "contract", "arcp", "nsz"}

ACT_LINEAR = 0  # f(z) = z (output layer: softmax / MSE handled outside)
ACT_PIECEWISE = 1  # f(z) = z if z > 0 else slope * z  (ReLU, leaky ReLU, All-ReLU)
ACT_SIGMOID = 2  # f(z) = 1 / (1 + exp(-z))
# SReLU (Jin et al. 2016) runs as a second pass (srelu_forward) after a linear sparse_forward.
SRELU_TL, SRELU_AL, SRELU_TR, SRELU_AR = 0, 1, 2, 3  # rows of a (4, n) parameter array

# Smallest normal float32. Subnormal operands make x86 multiply-adds ~100x slower; a
# confident softmax underflows to them and they spread through deltas and momentum, so
# values below this are flushed to zero where they arise (no information is lost).
TINY = np.float32(np.finfo(np.float32).tiny)

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_FTZ_ENABLED = False


@intrinsic
def _set_ftz_daz(typingctx):
    """Set the flush-to-zero and denormals-are-zero bits (0x8040) of this thread's MXCSR."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p])
        store = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.stmxcsr")
        load = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.ldmxcsr")
        slot = cgutils.alloca_once(builder, i32)
        ptr = builder.bitcast(slot, i8p)
        builder.call(store, [ptr])
        builder.store(builder.or_(builder.load(slot), ir.Constant(i32, 0x8040)), slot)
        builder.call(load, [ptr])
        return context.get_dummy_value()
    return types.void(), codegen


@numba.njit(parallel=True)
def _ftz_all_threads(n):
    for _ in prange(n):  # static schedule: every pool thread runs some iterations
        _set_ftz_daz()


def enable_flush_to_zero() -> bool:
    """Make every Numba worker thread and the calling thread flush subnormal floats to
    zero (x86 MXCSR FTZ + DAZ; like ``torch.set_flush_denormal(True)``), once per process.

    Subnormal operands or results take a microcode path ~100x slower than normal
    arithmetic; products of tiny deltas and small weights produce them during training
    even when no stored array holds one. Side effect: NumPy float arithmetic in the
    calling thread flushes subnormals too. Returns whether it is enabled (False off x86).
    """
    global _FTZ_ENABLED
    if _FTZ_ENABLED or not _X86:
        return _FTZ_ENABLED
    current = numba.get_num_threads()
    total = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(total)
    try:
        _ftz_all_threads(64 * total)
    finally:
        numba.set_num_threads(current)
    _FTZ_ENABLED = True
    return True


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _uniform01(seed, counter):
    """Counter-based uniform in [0, 1): splitmix64 of ``seed + counter * golden``.

    Stateless, so dropout masks are the same whatever the number of threads.
    """
    z = np.uint64(seed) + np.uint64(counter) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(1.0 / 16777216.0)


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def gather_standardize(X, idx, mean, inv_std, out):
    """``out[f, b] = (X[idx[b], f] - mean[f]) * inv_std[f]``.

    Gathers a mini-batch from the row-major data matrix ``X (N, F)`` into the
    feature-major buffer ``out (F, B)`` and standardises it on the way.
    """
    n_feat = X.shape[1]
    batch = idx.shape[0]
    for f in prange(n_feat):
        m = mean[f]
        s = inv_std[f]
        for b in range(batch):
            out[f, b] = (X[idx[b], f] - m) * s


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def sparse_forward(a_prev, col_ptr, col_rows, col_pos, data, bias, act, slope,
                   drop_rate, seed, out, dfac):
    """Fused sparse product, bias, activation and inverted dropout.

    ``z[j, b] = bias[j] + sum_{k in col j} data[col_pos[k]] * a_prev[col_rows[k], b]``
    then ``out = f(z) * m / (1 - p)`` with a Bernoulli(1 - p) keep mask ``m``
    (only when ``drop_rate > 0``), and ``dfac = f'(z) * m / (1 - p)``: the factor
    the backward pass multiplies the incoming delta by. ``dfac`` is written only
    when it has at least one column (pass a ``(0, 0)`` array to skip it).

    The connection loop is unrolled by 8: one load/store of ``out[j, :]`` per
    eight multiply-adds instead of one per connection.

    Shapes: a_prev (n_in, B), out and dfac (n_out, B).
    """
    n_out = col_ptr.shape[0] - 1
    batch = a_prev.shape[1]
    want_d = dfac.shape[1] > 0
    one = np.float32(1.0)
    keep_scale = one / (one - np.float32(drop_rate))
    for j in prange(n_out):
        bj = bias[j]
        for b in range(batch):
            out[j, b] = bj
        k = col_ptr[j]
        end = col_ptr[j + 1]
        while k + 8 <= end:
            w0 = data[col_pos[k]]
            w1 = data[col_pos[k + 1]]
            w2 = data[col_pos[k + 2]]
            w3 = data[col_pos[k + 3]]
            w4 = data[col_pos[k + 4]]
            w5 = data[col_pos[k + 5]]
            w6 = data[col_pos[k + 6]]
            w7 = data[col_pos[k + 7]]
            i0 = col_rows[k]
            i1 = col_rows[k + 1]
            i2 = col_rows[k + 2]
            i3 = col_rows[k + 3]
            i4 = col_rows[k + 4]
            i5 = col_rows[k + 5]
            i6 = col_rows[k + 6]
            i7 = col_rows[k + 7]
            for b in range(batch):
                out[j, b] += ((w0 * a_prev[i0, b] + w1 * a_prev[i1, b])
                              + (w2 * a_prev[i2, b] + w3 * a_prev[i3, b])) + (
                                 (w4 * a_prev[i4, b] + w5 * a_prev[i5, b])
                                 + (w6 * a_prev[i6, b] + w7 * a_prev[i7, b]))
            k += 8
        while k < end:
            w = data[col_pos[k]]
            i = col_rows[k]
            for b in range(batch):
                out[j, b] += w * a_prev[i, b]
            k += 1
        # Epilogue: branch-free inner loops so they vectorise.
        if act == ACT_PIECEWISE:
            if want_d:
                for b in range(batch):
                    z = out[j, b]
                    pos = z > 0
                    dfac[j, b] = one if pos else slope
                    out[j, b] = z if pos else slope * z
            else:
                for b in range(batch):
                    z = out[j, b]
                    out[j, b] = z if z > 0 else slope * z
        elif act == ACT_SIGMOID:
            for b in range(batch):
                out[j, b] = one / (one + np.exp(-out[j, b]))
            if want_d:
                for b in range(batch):
                    s = out[j, b]
                    dfac[j, b] = s * (one - s)
        elif want_d:
            for b in range(batch):
                dfac[j, b] = one
        if drop_rate > 0.0:
            base = j * batch
            for b in range(batch):
                keep = keep_scale if _uniform01(seed, base + b) >= drop_rate else np.float32(0.0)
                out[j, b] *= keep
                if want_d:
                    dfac[j, b] *= keep


@numba.njit(inline="always")
def _finish(k, g, data, grad, velocity, lr, momentum, weight_decay, update):
    """Either store the gradient of connection ``k``, or apply momentum SGD to it at once."""
    if update:
        vk = momentum * velocity[k] - lr * (g + weight_decay * data[k])
        vk = vk if abs(vk) >= TINY else np.float32(0.0)
        velocity[k] = vk
        data[k] += vk
    else:
        grad[k] = g


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def sparse_backward(a_prev, delta, row_ptr, row_cols, data, dfac_prev, inv_batch,
                    grad, delta_prev, velocity, lr, momentum, weight_decay, update):
    """Fused transposed product and sampled dense-dense product (SDDMM), optionally with
    the momentum-SGD step of every connection.

    For every connection ``k = (i -> j)`` of the layer::

        g[k] = inv_batch * sum_b a_prev[i, b] * delta[j, b]        # dL/dw only where w exists
        delta_prev[i, b] = dfac_prev[i, b] * sum_{k in row i} data[k] * delta[j, b]

    Both read ``delta[j, :]`` once per connection; the loop is unrolled by 4
    connections. ``delta_prev`` is skipped when it has no columns (first layer:
    nobody needs the input's delta). With ``update`` False, ``grad[k] = g[k]``;
    with ``update`` True the step is applied in place instead (SPEC 1.3)::

        velocity[k] <- momentum * velocity[k] - lr * (g[k] + weight_decay * data[k])
        data[k]     <- data[k] + velocity[k]

    which is safe inside the kernel: row ``i`` (its connections, its ``delta_prev``
    row) belongs to one thread, and ``data[k]`` is read for ``delta_prev`` before it
    is updated.

    Shapes: a_prev and dfac_prev (n_in, B), delta (n_out, B), grad/velocity (nnz,).
    """
    n_in = row_ptr.shape[0] - 1
    batch = a_prev.shape[1]
    want_prev = delta_prev.shape[1] > 0
    zero = np.float32(0.0)
    for i in prange(n_in):
        if want_prev:
            for b in range(batch):
                delta_prev[i, b] = zero
        k = row_ptr[i]
        end = row_ptr[i + 1]
        while k + 4 <= end:
            j0 = row_cols[k]
            j1 = row_cols[k + 1]
            j2 = row_cols[k + 2]
            j3 = row_cols[k + 3]
            g0 = zero
            g1 = zero
            g2 = zero
            g3 = zero
            if want_prev:
                w0 = data[k]
                w1 = data[k + 1]
                w2 = data[k + 2]
                w3 = data[k + 3]
                for b in range(batch):
                    ai = a_prev[i, b]
                    d0 = delta[j0, b]
                    d1 = delta[j1, b]
                    d2 = delta[j2, b]
                    d3 = delta[j3, b]
                    g0 += ai * d0
                    g1 += ai * d1
                    g2 += ai * d2
                    g3 += ai * d3
                    delta_prev[i, b] += (w0 * d0 + w1 * d1) + (w2 * d2 + w3 * d3)
            else:
                for b in range(batch):
                    ai = a_prev[i, b]
                    g0 += ai * delta[j0, b]
                    g1 += ai * delta[j1, b]
                    g2 += ai * delta[j2, b]
                    g3 += ai * delta[j3, b]
            _finish(k, g0 * inv_batch, data, grad, velocity, lr, momentum, weight_decay, update)
            _finish(k + 1, g1 * inv_batch, data, grad, velocity, lr, momentum, weight_decay,
                    update)
            _finish(k + 2, g2 * inv_batch, data, grad, velocity, lr, momentum, weight_decay,
                    update)
            _finish(k + 3, g3 * inv_batch, data, grad, velocity, lr, momentum, weight_decay,
                    update)
            k += 4
        while k < end:
            j = row_cols[k]
            g = zero
            if want_prev:
                w = data[k]
                for b in range(batch):
                    d = delta[j, b]
                    g += a_prev[i, b] * d
                    delta_prev[i, b] += w * d
            else:
                for b in range(batch):
                    g += a_prev[i, b] * delta[j, b]
            _finish(k, g * inv_batch, data, grad, velocity, lr, momentum, weight_decay, update)
            k += 1
        if want_prev:
            for b in range(batch):
                d = delta_prev[i, b] * dfac_prev[i, b]
                delta_prev[i, b] = d if abs(d) >= TINY else zero


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def bias_step(delta, bias, velocity, lr, momentum):
    """Bias gradient ``g_j = mean_b delta[j, b]`` and its momentum step, fused::

        velocity[j] <- momentum * velocity[j] - lr * g_j;   bias[j] <- bias[j] + velocity[j]
    """
    n = delta.shape[0]
    batch = delta.shape[1]
    inv = np.float32(1.0) / np.float32(batch)
    for j in prange(n):
        s = np.float32(0.0)
        for b in range(batch):
            s += delta[j, b]
        vj = momentum * velocity[j] - lr * (s * inv)
        vj = vj if abs(vj) >= TINY else np.float32(0.0)
        velocity[j] = vj
        bias[j] += vj


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def srelu_forward(out, params, drop_rate, seed, zbuf, dfac):
    """SReLU with per-neuron parameters ``(t_l, a_l, t_r, a_r) = params[:, j]`` and dropout,
    in place on the pre-activations ``out`` (n, B)::

        f(z) = t_r + a_r (z - t_r)   if z >= t_r
             = t_l + a_l (z - t_l)   if z <= t_l   (and z < t_r)
             = z                     otherwise

    Writes ``zbuf = z`` and ``dfac = m / (1 - p)`` (the dropout factor only: the
    activation's derivative needs the parameters, so :func:`srelu_backward` applies it)
    when they have columns. The dropout mask equals the one ``sparse_forward`` draws.
    """
    n = out.shape[0]
    batch = out.shape[1]
    want_z = zbuf.shape[1] > 0
    want_d = dfac.shape[1] > 0
    one = np.float32(1.0)
    keep_scale = one / (one - np.float32(drop_rate))
    for j in prange(n):
        tl = params[SRELU_TL, j]
        al = params[SRELU_AL, j]
        tr = params[SRELU_TR, j]
        ar = params[SRELU_AR, j]
        base = j * batch
        for b in range(batch):
            z = out[j, b]
            if want_z:
                zbuf[j, b] = z
            if z >= tr:
                f = tr + ar * (z - tr)
            elif z <= tl:
                f = tl + al * (z - tl)
            else:
                f = z
            keep = one
            if drop_rate > 0.0:
                keep = keep_scale if _uniform01(seed, base + b) >= drop_rate else np.float32(0.0)
            out[j, b] = f * keep
            if want_d:
                dfac[j, b] = keep


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def srelu_backward(zbuf, delta, params, inv_batch, pgrad):
    """SReLU parameter gradients and the delta through the activation, in place.

    On entry ``delta[j, b] = dL/da * m / (1 - p)`` (what ``sparse_backward`` returns with
    the dropout factor as ``dfac``); on exit ``delta[j, b] = dL/dz``. ``pgrad (4, n)``
    receives ``inv_batch * sum_b`` of::

        dL/dt_r = g (1 - a_r), dL/da_r = g (z - t_r)     where z >= t_r
        dL/dt_l = g (1 - a_l), dL/da_l = g (z - t_l)     where z <= t_l (and z < t_r)
        dL/dz   = g a_r / g a_l / g                       (right / left / middle)
    """
    n = zbuf.shape[0]
    batch = zbuf.shape[1]
    one = np.float32(1.0)
    for j in prange(n):
        tl = params[SRELU_TL, j]
        al = params[SRELU_AL, j]
        tr = params[SRELU_TR, j]
        ar = params[SRELU_AR, j]
        gtl = np.float32(0.0)
        gal = np.float32(0.0)
        gtr = np.float32(0.0)
        gar = np.float32(0.0)
        for b in range(batch):
            z = zbuf[j, b]
            g = delta[j, b]
            if z >= tr:
                gtr += g * (one - ar)
                gar += g * (z - tr)
                delta[j, b] = g * ar
            elif z <= tl:
                gtl += g * (one - al)
                gal += g * (z - tl)
                delta[j, b] = g * al
        pgrad[SRELU_TL, j] = gtl * inv_batch
        pgrad[SRELU_AL, j] = gal * inv_batch
        pgrad[SRELU_TR, j] = gtr * inv_batch
        pgrad[SRELU_AR, j] = gar * inv_batch


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def row_mean(x, out):
    """``out[j] = mean_b x[j, b]`` (bias gradient from a feature-major delta)."""
    n = x.shape[0]
    batch = x.shape[1]
    inv = np.float32(1.0) / np.float32(batch)
    for j in prange(n):
        s = np.float32(0.0)
        for b in range(batch):
            s += x[j, b]
        out[j] = s * inv


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def momentum_sgd(w, v, g, lr, momentum, weight_decay):
    """Momentum SGD with L2 weight decay inside the learning rate (SPEC 1.3)::

        v <- momentum * v - lr * (g + weight_decay * w);   w <- w + v
    """
    for k in prange(w.shape[0]):
        vk = momentum * v[k] - lr * (g[k] + weight_decay * w[k])
        vk = vk if abs(vk) >= TINY else np.float32(0.0)  # no subnormal momentum
        v[k] = vk
        w[k] += vk


@numba.njit(cache=True)
def csr_to_csc(row_ptr, row_cols, n_out, col_ptr, col_rows, col_pos):
    """Build the CSC index of a CSR layer (counting sort; rows stay ordered within a column).

    ``col_pos[k']`` is the position in the CSR arrays of the k'-th connection in
    column order, so ``data[col_pos[k']]`` reads the value without a copy.
    """
    n_in = row_ptr.shape[0] - 1
    counts = np.zeros(n_out + 1, dtype=np.int64)
    nnz = row_cols.shape[0]
    for k in range(nnz):
        counts[row_cols[k] + 1] += 1
    for j in range(n_out):
        counts[j + 1] += counts[j]
    for j in range(n_out + 1):
        col_ptr[j] = counts[j]
    for i in range(n_in):
        for k in range(row_ptr[i], row_ptr[i + 1]):
            j = row_cols[k]
            dst = counts[j]
            col_rows[dst] = i
            col_pos[dst] = k
            counts[j] = dst + 1
