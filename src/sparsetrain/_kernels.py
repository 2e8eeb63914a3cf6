"""Compiled kernels of the truly sparse MLP (Numba, module level, flat arrays only).

Layout conventions shared by every kernel here:

* Activations and deltas are **feature-major**: ``a`` has shape ``(n_units, B)``
  with the batch contiguous, so one connection ``(i -> j, w)`` costs one
  contiguous ``B``-wide multiply-add (``out[j, :] += w * a[i, :]``), done 16 lanes
  at a time in explicit vector code (see "explicit SIMD blocks"). Kernels need
  C-contiguous arrays; rows that start on a 64-byte boundary are fastest.
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

import os
import platform

# OpenMP threads spin this long (GNU libgomp: iterations of a `pause` loop) at a barrier
# or between parallel regions before they sleep. The package sets OMP_WAIT_POLICY=PASSIVE
# (sleep at once, see __init__.py) so that idle threads do not compete with other busy
# processes for the cores; but a sleeping thread can take longer to wake than the gap
# between the two parallel regions of a training step (on a virtual machine, its idle
# vCPU has halted), and this short spin bridges that gap. The value was chosen from the
# measurements in docs/benchmarks/kernel-notes.md. Read when libgomp loads (at the first
# parallel kernel, after this import); a value already in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.core.extending import intrinsic  # noqa: E402

# Reassociation lets LLVM vectorise the reductions; no "nnan"/"ninf", so NaN and inf
# propagate exactly as in IEEE arithmetic and the trainer's non-finite guard sees them.
_FAST = {"reassoc", "contract", "arcp", "nsz"}
# The training kernels do their sums in explicit vector code (below) and need no fast-math.
# With it, a kernel compiled afresh and the same kernel loaded from Numba's cache rounded
# the dropout-scaled negative side differently ((slope * z) * keep vs. z * (slope * keep),
# 1-2 ulp), so the same seed trained different models in different processes. Said
# explicitly, so that callees do not inherit a caller's fast-math either.
_EXACT = False

ACT_LINEAR = 0  # f(z) = z (output layer: softmax / MSE handled outside)
ACT_PIECEWISE = 1  # f(z) = z if z > 0 else slope * z  (ReLU, leaky ReLU, All-ReLU)
ACT_SIGMOID = 2  # f(z) = 1 / (1 + exp(-z))
# SReLU (Jin et al. 2016) runs as a second pass (srelu_forward) after a linear sparse_forward.
SRELU_TL, SRELU_AL, SRELU_TR, SRELU_AR = 0, 1, 2, 3  # rows of a (4, n) parameter array

# What the backward kernels do with a connection's (or bias's) gradient g (``update``):
GRAD_STORE = 0  # grad[k] = g (also False)
GRAD_STEP = 1  # momentum-SGD step in place, no gradient kept (also True)
GRAD_ADD = 2  # grad[k] += g: micro-batches of one step add up their gradients
# A micro-batched step adds its micro-batches' terms straight into the momentum buffer
# (no gradient buffer: 4 bytes a connection less), then apply_velocity moves the values:
GRAD_VEL_FIRST = 3  # v[k] = momentum * v[k] - lr * (g + weight_decay * w[k]), w unchanged
GRAD_VEL_ADD = 4  # v[k] -= lr * g

# TINY (smallest normal float32): values below it are flushed to zero where they arise
# (deltas here, velocities in the update rule), see sparsetrain.optim. The momentum-SGD
# rule itself lives there; momentum_sgd is re-exported for the model's SReLU parameters.
from .optim import TINY, momentum_sgd, momentum_velocity, velocity_add, velocity_start  # noqa: E402, F401

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

    Subnormal operands or results take a slow microcode path on x86 (figures in
    docs/benchmarks/kernel-notes.md); products of tiny deltas and small weights produce
    them during training even when no stored array holds one. Side effect: NumPy float arithmetic in the
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


# ---------------------------------------------------------------- dynamic scheduling
# The fused kernels (mlp_forward, mlp_backward) run a whole pass (every layer) in ONE
# parallel region instead of one region per kernel: on a virtual machine, a thread that
# went to sleep between regions can take longer to wake than a layer's work (see
# docs/benchmarks/kernel-notes.md). Inside the region, the layers are phases split
# into chunks of a few rows; each thread takes the chunks of its own share of a phase
# (atomic counters), then helps with what is left of the others' shares, and starts the
# next phase once every chunk of this one is done. Waiting threads spin briefly, then
# yield the CPU. A thread never waits while holding an unfinished chunk, and waits for a
# phase only after every chunk of it has been taken, so this cannot deadlock whatever
# number of threads actually runs (one thread simply takes every chunk). Every chunk
# computes the same arithmetic whichever thread runs it, so results do not depend on the
# number of threads.

_HAS_YIELD = platform.system() != "Windows"
_SPIN = 1000  # reads (a few us) before a waiting thread starts yielding the CPU
_SLOT = 16  # int64 slots between counters of the scheduler state (no false sharing)


def _item_pointer(context, builder, aryty, ary, idx):
    arr = context.make_array(aryty)(context, builder, ary)
    idx = context.cast(builder, idx[1], idx[0], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [idx], wraparound=False)


def _int64_vector(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


@intrinsic
def _atomic_add(typingctx, arr, idx, val):
    """``old = arr[idx]; arr[idx] += val; return old`` atomically (sequentially consistent)."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer)
            and isinstance(val, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0],
                            (signature.args[1], args[1]))
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")
    return types.int64(arr, idx, val), codegen


@intrinsic
def _atomic_load(typingctx, arr, idx):
    """``arr[idx]`` read atomically with acquire ordering (sees writes made before the
    matching ``_atomic_add``)."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0],
                            (signature.args[1], args[1]))
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def _atomic_cas(typingctx, arr, idx, expected, new):
    """``old = arr[idx]; if old == expected: arr[idx] = new; return old`` atomically
    (sequentially consistent; works across processes on shared memory)."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer)
            and isinstance(expected, types.Integer) and isinstance(new, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0],
                            (signature.args[1], args[1]))
        cmp = context.cast(builder, args[2], signature.args[2], types.int64)
        val = context.cast(builder, args[3], signature.args[3], types.int64)
        pair = builder.cmpxchg(ptr, cmp, val, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return types.int64(arr, idx, expected, new), codegen


@intrinsic
def _os_yield(typingctx):
    """``sched_yield()``: let another runnable thread have this CPU."""
    def codegen(context, builder, signature, args):
        if _HAS_YIELD:
            fnty = ir.FunctionType(ir.IntType(32), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@numba.njit(inline="always")
def _wait_at_least(state, slot, target):
    """Wait until ``state[slot] >= target``: re-read it ``_SPIN`` times, then yield the CPU
    between reads.

    No ``pause`` instruction in the loop: a hypervisor's pause-loop exiting traps a vCPU
    that spins on ``pause``, and on a virtual machine such waits slowed both threads for
    seconds at a time (docs/benchmarks/kernel-notes.md); re-reading the counter and then
    yielding does not trigger it.
    """
    spins = 0
    while _atomic_load(state, slot) < target:
        if spins < _SPIN:
            spins += 1
        else:
            _os_yield()


# Scheduler state, one counter every _SLOT int64: chunks taken from each (phase, owner)
# share, chunks done in each phase, then threads that entered and helpers that left.
@numba.njit(inline="always")
def _state_size(n_phases, n_threads):
    return _SLOT * (n_phases * (n_threads + 1) + 2)


@numba.njit(inline="always")
def _claim(state, phase, owner, n_split, n_chunks, n_threads):
    """Take the next chunk of ``phase`` from ``owner``'s share, or -1 if none is left.

    Thread ``w`` owns chunks ``n_split * w // n_threads`` up to the next thread's first
    (the last thread also owns chunks ``n_split:n_chunks``); it takes its own in order,
    then what is left of the others'. The same units then stay with the same thread from
    one layer's forward to the next layer's backward (their rows stay in its cache).
    """
    lo = n_split * owner // n_threads
    hi = n_chunks if owner == n_threads - 1 else n_split * (owner + 1) // n_threads
    c = lo + _atomic_add(state, _SLOT * (phase * n_threads + owner), 1)
    return c if c < hi else -1


@numba.njit(inline="always")
def _chunk_done(state, phase, n_phases, n_threads):
    _atomic_add(state, _SLOT * (n_phases * n_threads + phase), 1)


@numba.njit(inline="always")
def _wait_phase(state, phase, n_phases, n_threads, n_chunks):
    """Wait until every chunk of ``phase`` is done."""
    _wait_at_least(state, _SLOT * (n_phases * n_threads + phase), n_chunks)


@numba.njit(inline="always")
def _enter(state, n_phases, n_threads):
    _atomic_add(state, _SLOT * n_phases * (n_threads + 1), 1)


@numba.njit(inline="always")
def _leave(state, w, n_phases, n_threads):
    """The calling thread (``w == 0``) leaves last, so it does not sleep in OpenMP's
    closing barrier waiting for a helper (waking it costs as much as a layer)."""
    entered = _SLOT * n_phases * (n_threads + 1)
    if w == 0:
        _wait_at_least(state, entered + _SLOT, _atomic_load(state, entered) - 1)
    else:
        _atomic_add(state, entered + _SLOT, 1)


def n_threads() -> int:
    """Threads the parallel kernels use now (``numba.get_num_threads()``); the fused
    kernels take it as an argument (calling it inside a kernel prevents caching)."""
    return numba.get_num_threads()


@numba.njit(inline="always")
def _chunk_size(n, n_threads):
    """Rows per scheduling chunk: at most 16, and at least ~8 chunks per thread."""
    return max(1, min(16, n // (8 * n_threads)))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _row_key(seed, row):
    """splitmix64 of ``seed + row * golden``: the 64-bit dropout key of one unit's row.

    Stateless (counter-based), so dropout masks are the same whatever the number of
    threads and whichever thread draws them.
    """
    z = np.uint64(seed) + np.uint64(row) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@intrinsic
def _sample_bits(typingctx, key, b):
    """32 random bits for sample ``b`` of the row keyed ``key``: Wellons' ``lowbias32``
    integer hash of ``low32(key) + b * 0x9E3779B9`` (mod 2^32), in 32-bit arithmetic.

    One 32-bit hash per draw (two 32-bit multiplies, 16 per AVX-512 instruction) instead
    of a 64-bit splitmix64 per draw; the 64-bit per-row key keeps rows, layers and steps
    independent.
    """
    if not (isinstance(key, types.Integer) and isinstance(b, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)

        def low32(val, ty):
            val = context.cast(builder, val, ty, types.uint64)
            return builder.trunc(val, i32)

        x = builder.add(low32(args[0], signature.args[0]),
                        builder.mul(low32(args[1], signature.args[1]),
                                    ir.Constant(i32, 0x9E3779B9)))
        x = builder.xor(x, builder.lshr(x, ir.Constant(i32, 16)))
        x = builder.mul(x, ir.Constant(i32, 0x7FEB352D))
        x = builder.xor(x, builder.lshr(x, ir.Constant(i32, 15)))
        x = builder.mul(x, ir.Constant(i32, 0x846CA68B))
        return builder.xor(x, builder.lshr(x, ir.Constant(i32, 16)))
    return types.uint32(key, b), codegen


@numba.njit(inline="always")
def _drop_threshold(drop_rate):
    """A sample is dropped when its 32 bits are below this: P = floor(p 2^32) / 2^32."""
    return np.uint32(min(4294967295.0, np.float64(drop_rate) * 4294967296.0))


# ---------------------------------------------------------------- explicit SIMD blocks
# The products below keep a block of up to 128 batch columns (8 vectors of 16 float32:
# one AVX-512 register each) in registers while they walk a row's connections, written
# as LLVM vector IR through llvmlite: written as plain Numba loops, LLVM re-loads and
# re-stores the accumulators for every group of connections, because it cannot prove the
# output row does not alias the rows it reads (see docs/benchmarks/kernel-notes.md). LLVM lowers
# <16 x float> to whatever the CPU has (one AVX-512 register, two AVX2 ones, ...).
# Arrays must be C-contiguous; each block adds up its connections in storage order.

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VW = 16  # float32 lanes per vector
_VEC = ir.VectorType(_F32, _VW)


def _c_array(ty, dtype, ndim):
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == ndim and \
        ty.layout == "C"


def _index(context, builder, signature, args, n):
    return context.cast(builder, args[n], signature.args[n], types.int64)


def _row_address(builder, arr, row, col):
    """``float*`` to ``arr[row, col]`` of a C-contiguous 2-D float32 array."""
    stride = builder.extract_value(arr.strides, 0)  # bytes
    base = builder.ptrtoint(arr.data, _I64)
    offset = builder.add(builder.mul(row, stride), builder.mul(col, ir.Constant(_I64, 4)))
    return builder.inttoptr(builder.add(base, offset), _F32.as_pointer())


def _vector_at(builder, fptr, v):
    """``<16 x float>*`` to the ``v``-th vector from ``fptr``."""
    if v:
        fptr = builder.gep(fptr, [ir.Constant(_I64, v * _VW)])
    return builder.bitcast(fptr, _VEC.as_pointer())


def _splat(builder, x):
    vec = builder.insert_element(ir.Constant(_VEC, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, _VW), [0] * _VW))


def _vfma(builder, a, b, c):
    """``a * b + c`` lane by lane, one rounding (``llvm.fma``)."""
    fnty = ir.FunctionType(_VEC, [_VEC, _VEC, _VEC])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{_VW}f32")
    return builder.call(fn, [a, b, c])


def _hsum(builder, vec):
    """Sum of the 16 lanes, as a fixed tree (halves added pairwise)."""
    n = _VW
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(vec, vec,
                                    ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
        vec = builder.fadd(lo, hi)
    return builder.extract_element(vec, ir.Constant(_I32, 0))


def _loop(builder, start, stop):
    """``for k in range(start, stop)`` (int64) as a context manager yielding ``k``."""
    return cgutils.for_range_slice(builder, start, stop, ir.Constant(_I64, 1), inc=True)


#: Connections ahead whose rows the products prefetch when their operands are far (see
#: :func:`_far`): enough to cover DRAM latency, few enough that the lines are still in L1.
_PREFETCH_AHEAD = 8


def _prefetch(builder, fptr, n_lines):
    """``llvm.prefetch`` (read, high locality) of ``n_lines`` 64-byte lines from ``fptr``."""
    i8p = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
    for line in range(n_lines):
        ptr = builder.gep(fptr, [ir.Constant(_I64, 16 * line)]) if line else fptr
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                          ir.Constant(_I32, 1)])


def _ahead(builder, k, n):
    """``min(k + _PREFETCH_AHEAD, n - 1)``: the connection to prefetch (never past the
    index arrays: the next rows' connections count, a row may hold only one or two)."""
    kp = builder.add(k, ir.Constant(_I64, _PREFETCH_AHEAD))
    last = builder.sub(n, ir.Constant(_I64, 1))
    return builder.select(builder.icmp_signed("<", kp, last), kp, last)


#: ``mode`` bits of the forward blocks' store: apply the piecewise activation, draw
#: dropout, write the factor buffer (0: store the sums as they are).
EPI_PIECEWISE = 1
EPI_DROP = 2
EPI_FACTOR = 4


def _store_activated(context, builder, z, optr, dptr, mode, slope, keep_scale, thr, key32,
                     first):
    """Stores one vector of sums ``z`` (columns ``first .. first + 15`` of the step) at
    ``optr``: as they are (``mode`` 0), or (``EPI_PIECEWISE``) ``(z if z > 0 else slope
    * z) * keep`` and (``EPI_FACTOR``) ``(1 if z > 0 else slope) * keep`` at ``dptr``,
    ``keep`` being ``keep_scale`` or 0 by the dropout draw ``_sample_bits(key, c) >=
    thr`` (``EPI_DROP``), else 1: the scalar epilogue's arithmetic lane by lane (same
    bits), the hash in 32-bit vector integers. ``mode`` is a run-time value: the
    branches are the same for a whole row, so they predict."""
    ivec = ir.VectorType(_I32, _VW)
    one = _splat(builder, ir.Constant(_F32, 1.0))
    zero = ir.Constant(_VEC, [0.0] * _VW)

    def bit(flag):
        return builder.icmp_unsigned("!=", builder.and_(mode, ir.Constant(_I64, flag)),
                                     ir.Constant(_I64, 0))

    with builder.if_else(bit(EPI_PIECEWISE), likely=True) as (act, raw):
        with raw:
            builder.store(z, optr, align=4)
        with act:
            keep_slot = cgutils.alloca_once_value(builder, one)
            with builder.if_then(bit(EPI_DROP)):
                def isplat(x):
                    v = builder.insert_element(ir.Constant(ivec, ir.Undefined), x,
                                               ir.Constant(_I32, 0))
                    return builder.shuffle_vector(v, ir.Constant(ivec, ir.Undefined),
                                                  ir.Constant(ivec, [0] * _VW))

                def const(c):
                    return ir.Constant(ivec, [c] * _VW)

                cols = builder.add(isplat(builder.trunc(first, _I32)),
                                   ir.Constant(ivec, list(range(_VW))))
                x = builder.add(isplat(key32), builder.mul(cols, const(0x9E3779B9)))
                x = builder.xor(x, builder.lshr(x, const(16)))
                x = builder.mul(x, const(0x7FEB352D))
                x = builder.xor(x, builder.lshr(x, const(15)))
                x = builder.mul(x, const(0x846CA68B))
                x = builder.xor(x, builder.lshr(x, const(16)))
                kept = builder.icmp_unsigned(">=", x, isplat(thr))
                builder.store(builder.select(kept, _splat(builder, keep_scale), zero),
                              keep_slot)
            keep = builder.load(keep_slot)
            pos = builder.fcmp_ordered(">", z, zero)
            f = builder.select(pos, z, builder.fmul(slope, z))
            builder.store(builder.fmul(f, keep), optr, align=4)
            with builder.if_then(bit(EPI_FACTOR)):
                builder.store(builder.fmul(builder.select(pos, one, slope), keep), dptr,
                              align=4)


def _store_args(context, builder, signature, args, first, df, mode, j, b0):
    """The :func:`_store_activated` operands an intrinsic takes as its arguments
    ``first .. first + 3`` (slope, keep scale, dropout threshold, row key): the slope as a
    vector, the scale, the low 32 bits of threshold and key, and the address of
    ``dfac[j, b0]`` (row 0 unless ``mode`` writes factors: ``dfac`` may have no columns,
    and its address is then never formed)."""
    tys = signature.args
    slope = _splat(builder, context.cast(builder, args[first], tys[first], types.float32))
    scale = context.cast(builder, args[first + 1], tys[first + 1], types.float32)
    thr = builder.trunc(context.cast(builder, args[first + 2], tys[first + 2], types.uint32),
                        _I32)
    key32 = builder.trunc(context.cast(builder, args[first + 3], tys[first + 3], types.uint64),
                          _I32)
    dbase = builder.select(builder.icmp_unsigned(
        "!=", builder.and_(mode, ir.Constant(_I64, EPI_FACTOR)), ir.Constant(_I64, 0)),
        j, ir.Constant(_I64, 0))
    return slope, scale, thr, key32, _row_address(builder, df, dbase, b0)


def _make_forward_block(nv, far=False):
    @intrinsic
    def block(typingctx, out, j, b0, a_prev, col_rows, col_pos, data, k0, k1, bias_j, dfac,
              mode, slope, keep_scale, thr, key, col0):
        """``z = bias_j + sum_{k0 <= k < k1} data[col_pos[k]] * a_prev[col_rows[k], ...]``
        on columns ``b0:b0+16nv`` of row ``j``, added up in connection order from
        ``bias_j``, stored to ``out`` (and ``dfac``) by :func:`_store_activated` with
        ``mode``, the dropout bits of samples ``col0 + b0 + ...``."""
        if not (_c_array(out, types.float32, 2) and _c_array(a_prev, types.float32, 2)
                and _c_array(col_rows, types.int32, 1)
                and (_c_array(col_pos, types.int32, 1) or _c_array(col_pos, types.int64, 1))
                and _c_array(data, types.float32, 1) and _c_array(dfac, types.float32, 2)):
            return None

        def codegen(context, builder, signature, args):
            tys = signature.args
            o, a, rows, pos, w, df = (context.make_array(tys[n])(context, builder, args[n])
                                      for n in (0, 3, 4, 5, 6, 10))
            j, b0, k0, k1 = (_index(context, builder, signature, args, n) for n in (1, 2, 7, 8))
            optr = _row_address(builder, o, j, b0)
            accs = [cgutils.alloca_once(builder, _VEC) for _ in range(nv)]
            start = _splat(builder, context.cast(builder, args[9], tys[9], types.float32))
            for v in range(nv):
                builder.store(start, accs[v])
            n_conn = builder.extract_value(rows.shape, 0)
            with _loop(builder, k0, k1) as (k, _):
                if far:  # the value and activation row of a connection a few ahead
                    kp = _ahead(builder, k, n_conn)
                    ip = builder.sext(builder.load(builder.gep(rows.data, [kp])), _I64)
                    pp = builder.load(builder.gep(pos.data, [kp]))
                    _prefetch(builder, _row_address(builder, a, ip, b0), nv)
                    _prefetch(builder, builder.gep(w.data, [pp]), 1)
                i = builder.sext(builder.load(builder.gep(rows.data, [k])), _I64)
                p = builder.load(builder.gep(pos.data, [k]))
                if p.type != _I64:  # int32 positions (the layers' own)
                    p = builder.sext(p, _I64)
                wk = _splat(builder, builder.load(builder.gep(w.data, [p])))
                aptr = _row_address(builder, a, i, b0)
                for v in range(nv):
                    x = builder.load(_vector_at(builder, aptr, v), align=4)
                    builder.store(_vfma(builder, wk, x, builder.load(accs[v])), accs[v])
            mode, first = (_index(context, builder, signature, args, n) for n in (11, 16))
            first = builder.add(first, b0)
            slope, scale, thr, key32, dptr = _store_args(context, builder, signature, args, 12,
                                                         df, mode, j, b0)
            for v in range(nv):
                _store_activated(context, builder, builder.load(accs[v]),
                                 _vector_at(builder, optr, v), _vector_at(builder, dptr, v),
                                 mode, slope, scale, thr, key32,
                                 builder.add(first, ir.Constant(_I64, v * _VW)))
            return context.get_dummy_value()
        return (types.void(out, j, b0, a_prev, col_rows, col_pos, data, k0, k1, bias_j, dfac,
                           mode, slope, keep_scale, thr, key, col0), codegen)
    return block


def _shuffle(builder, x, y, lanes):
    return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, len(lanes)), lanes))


def _hsum4(builder, s0, s1, s2, s3):
    """The four lane sums of ``s0..s3`` as one 4-lane vector: the additions of
    :func:`_hsum` (lane ``i`` plus lane ``i + n/2``, halving ``n``), shared between the
    vectors, so each sum rounds exactly as ``_hsum`` alone would (15 instead of 32 shuffles
    and additions)."""
    half = list(range(8))
    c01 = builder.fadd(_shuffle(builder, s0, s1, half + [16 + x for x in half]),
                       _shuffle(builder, s0, s1, [8 + x for x in half] + [24 + x for x in half]))
    c23 = builder.fadd(_shuffle(builder, s2, s3, half + [16 + x for x in half]),
                       _shuffle(builder, s2, s3, [8 + x for x in half] + [24 + x for x in half]))
    d = builder.fadd(_shuffle(builder, c01, c23, [0, 1, 2, 3, 8, 9, 10, 11,
                                                 16, 17, 18, 19, 24, 25, 26, 27]),
                     _shuffle(builder, c01, c23, [4, 5, 6, 7, 12, 13, 14, 15,
                                                 20, 21, 22, 23, 28, 29, 30, 31]))
    e = builder.fadd(_shuffle(builder, d, d, [0, 1, 4, 5, 8, 9, 12, 13]),
                     _shuffle(builder, d, d, [2, 3, 6, 7, 10, 11, 14, 15]))
    return builder.fadd(_shuffle(builder, e, e, [0, 2, 4, 6]), _shuffle(builder, e, e, [1, 3, 5, 7]))


def _make_backward_block(nv, with_prev, far=False):
    @intrinsic
    def block(typingctx, i, b0, k0, k1, a_prev, delta, row_cols, data, gsum, gbase, delta_prev,
              dfac_prev):
        """For the connections ``k0 <= k < k1`` of input row ``i``, on batch columns
        ``c = b0:b0+16nv``: ``gsum[k - gbase] += sum_c a_prev[i, c] * delta[j_k, c]`` and
        (``with_prev``) ``delta_prev[i, c] = flush(dfac_prev[i, c] * sum_k data[k] *
        delta[j_k, c])`` (``flush``: 0 below ``TINY`` in magnitude). ``dfac_prev`` is read
        before ``delta_prev`` is written, so the two may be one array. Connections go four
        at a time (their lane sums share shuffles), then one at a time."""
        if not (_c_array(a_prev, types.float32, 2) and _c_array(delta, types.float32, 2)
                and _c_array(row_cols, types.int32, 1) and _c_array(data, types.float32, 1)
                and _c_array(gsum, types.float32, 1) and isinstance(gbase, types.Integer)
                and _c_array(delta_prev, types.float32, 2)
                and _c_array(dfac_prev, types.float32, 2)):
            return None

        def codegen(context, builder, signature, args):
            tys = signature.args
            a, d, cols, w, gs, dp, df = (context.make_array(tys[n])(context, builder, args[n])
                                         for n in (4, 5, 6, 7, 8, 10, 11))
            n_conn = builder.extract_value(cols.shape, 0)
            i, b0, k0, k1, gbase = (_index(context, builder, signature, args, n)
                                    for n in (0, 1, 2, 3, 9))
            aptr = _row_address(builder, a, i, b0)
            av = [builder.load(_vector_at(builder, aptr, v), align=4) for v in range(nv)]
            accs = [cgutils.alloca_once(builder, _VEC) for _ in range(nv if with_prev else 0)]
            for acc in accs:
                builder.store(ir.Constant(_VEC, [0.0] * _VW), acc)

            def connection(k):
                """Adds connection k's term to delta_prev; returns its 16 partial sums."""
                if far:  # the delta row of a connection a few ahead
                    jp = builder.sext(builder.load(builder.gep(cols.data, [_ahead(
                        builder, k, n_conn)])), _I64)
                    _prefetch(builder, _row_address(builder, d, jp, b0), nv)
                j = builder.sext(builder.load(builder.gep(cols.data, [k])), _I64)
                dptr = _row_address(builder, d, j, b0)
                dv = [builder.load(_vector_at(builder, dptr, v), align=4) for v in range(nv)]
                if with_prev:
                    wk = _splat(builder, builder.load(builder.gep(w.data, [k])))
                    for v in range(nv):
                        builder.store(_vfma(builder, wk, dv[v], builder.load(accs[v])), accs[v])
                # Two interleaved chains over the vectors, then their sum.
                parts = [builder.fmul(av[v], dv[v]) for v in range(min(2, nv))]
                for v in range(2, nv):
                    parts[v % 2] = _vfma(builder, av[v], dv[v], parts[v % 2])
                return builder.fadd(parts[0], parts[1]) if nv > 1 else parts[0]

            four = ir.Constant(_I64, 4)
            k4 = builder.add(k0, builder.mul(builder.sdiv(builder.sub(k1, k0), four), four))
            with cgutils.for_range_slice(builder, k0, k4, four, inc=True) as (k, _):
                sums = _hsum4(builder, *(connection(builder.add(k, ir.Constant(_I64, m)))
                                         for m in range(4)))
                gptr = builder.bitcast(builder.gep(gs.data, [builder.sub(k, gbase)]),
                                       ir.VectorType(_F32, 4).as_pointer())
                builder.store(builder.fadd(builder.load(gptr, align=4), sums), gptr, align=4)
            with _loop(builder, k4, k1) as (k, _):
                s = _hsum(builder, connection(k))
                gptr = builder.gep(gs.data, [builder.sub(k, gbase)])
                builder.store(builder.fadd(builder.load(gptr), s), gptr)
            if with_prev:
                pptr = _row_address(builder, dp, i, b0)
                fptr = _row_address(builder, df, i, b0)
                tiny = _splat(builder, ir.Constant(_F32, float(TINY)))
                zero = ir.Constant(_VEC, [0.0] * _VW)
                fabs = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(_VEC, [_VEC]), f"llvm.fabs.v{_VW}f32")
                facs = [builder.load(_vector_at(builder, fptr, v), align=4) for v in range(nv)]
                for v in range(nv):
                    x = builder.fmul(builder.load(accs[v]), facs[v])
                    keep = builder.fcmp_ordered(">=", builder.call(fabs, [x]), tiny)
                    builder.store(builder.select(keep, x, zero), _vector_at(builder, pptr, v),
                                  align=4)
            return context.get_dummy_value()
        return (types.void(i, b0, k0, k1, a_prev, delta, row_cols, data, gsum, gbase, delta_prev,
                           dfac_prev), codegen)
    return block


_forward_block8 = _make_forward_block(8)
_forward_block4 = _make_forward_block(4)
_forward_block1 = _make_forward_block(1)
_backward_block8 = _make_backward_block(8, True)
_backward_block4 = _make_backward_block(4, True)
_backward_block1 = _make_backward_block(1, True)
_sddmm_block8 = _make_backward_block(8, False)
_sddmm_block4 = _make_backward_block(4, False)
_sddmm_block1 = _make_backward_block(1, False)
# The same with prefetching, for layers whose rows come from DRAM (micro-batches of at
# most 64 columns: only wide networks run those, see _far).
_forward_block2 = _make_forward_block(2)
_backward_block2 = _make_backward_block(2, True)
_sddmm_block2 = _make_backward_block(2, False)
# The same with prefetching, for layers whose rows come from DRAM (see _far): same
# arithmetic in the same order, so the same bits.
_far_forward_block8 = _make_forward_block(8, True)
_far_forward_block4 = _make_forward_block(4, True)
_far_forward_block2 = _make_forward_block(2, True)
_far_forward_block1 = _make_forward_block(1, True)
_far_backward_block8 = _make_backward_block(8, True, True)
_far_backward_block4 = _make_backward_block(4, True, True)
_far_backward_block2 = _make_backward_block(2, True, True)
_far_backward_block1 = _make_backward_block(1, True, True)
_far_sddmm_block8 = _make_backward_block(8, False, True)
_far_sddmm_block4 = _make_backward_block(4, False, True)
_far_sddmm_block2 = _make_backward_block(2, False, True)
_far_sddmm_block1 = _make_backward_block(1, False, True)

#: Bytes of the randomly read operand (a layer's input rows in the forward product, its
#: output deltas in the backward one) above which the products prefetch: beyond the
#: last-level cache every connection's row is a DRAM miss, and the connections of a
#: wide sparse layer's row are too few (1-20) for the core to overlap those misses alone.
FAR_BYTES = 4 << 20


@numba.njit(inline="always")
def _far(arr):
    return arr.shape[0] * arr.shape[1] * 4 > FAR_BYTES


@intrinsic
def _row_sum(typingctx, arr, j):
    """``sum(arr[j, :])`` in a fixed order: 16-lane partial sums over the full vectors
    (lanes added pairwise at the end), then the last ``n % 16`` elements one by one."""
    if not (_c_array(arr, types.float32, 2) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        j = _index(context, builder, signature, args, 1)
        n = builder.extract_value(a.shape, 1)
        n_vec = builder.udiv(n, ir.Constant(_I64, _VW))
        row = _row_address(builder, a, j, ir.Constant(_I64, 0))
        acc = cgutils.alloca_once(builder, _VEC)
        builder.store(ir.Constant(_VEC, [0.0] * _VW), acc)
        with _loop(builder, ir.Constant(_I64, 0), n_vec) as (v, _):
            x = builder.load(builder.bitcast(builder.gep(row, [builder.mul(
                v, ir.Constant(_I64, _VW))]), _VEC.as_pointer()), align=4)
            builder.store(builder.fadd(builder.load(acc), x), acc)
        total = cgutils.alloca_once(builder, _F32)
        builder.store(_hsum(builder, builder.load(acc)), total)
        with _loop(builder, builder.mul(n_vec, ir.Constant(_I64, _VW)), n) as (c, _):
            builder.store(builder.fadd(builder.load(total),
                                       builder.load(builder.gep(row, [c]))), total)
        return builder.load(total)
    return types.float32(arr, j), codegen


@numba.njit(fastmath=False, cache=True)  # explicit: Numba would inherit the caller's
def _forward_tail(out, j, b, a_prev, col_rows, col_pos, data, k0, k1):
    """Columns ``b:`` (fewer than 16) of the forward product of row ``j``, in connection
    order, without fast-math: the same rounding in every kernel that calls it."""
    for k in range(k0, k1):
        w = data[col_pos[k]]
        i = col_rows[k]
        for c in range(b, out.shape[1]):
            out[j, c] += w * a_prev[i, c]


@numba.njit(fastmath=False, cache=True)  # explicit: Numba would inherit the caller's
def _backward_tail(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, gbase, delta_prev,
                   dfac_prev):
    """Columns ``b:`` (fewer than 16) of the backward products of input row ``i``: adds
    to ``gsum[k - gbase]``, and sets ``delta_prev[i, b:]`` (times ``dfac_prev[i, b:]``,
    flushed below ``TINY``; the two may be one array) when it has columns; in connection
    and column order, without fast-math."""
    batch = a_prev.shape[1]
    for k in range(k0, k1):
        j = row_cols[k]
        s = np.float32(0.0)
        for c in range(b, batch):
            s += a_prev[i, c] * delta[j, c]
        gsum[k - gbase] += s
    if delta_prev.shape[1] > 0:
        zero = np.float32(0.0)
        for c in range(b, batch):
            acc = zero
            for k in range(k0, k1):
                acc += data[k] * delta[row_cols[k], c]
            d = acc * dfac_prev[i, c]
            delta_prev[i, c] = d if abs(d) >= TINY else zero


@numba.njit(inline="always")
def _gather_rows(f0, f1, X, idx, mean, inv_std, out):
    """Features ``f0:f1`` of :func:`gather_standardize`."""
    batch = idx.shape[0]
    for f in range(f0, f1):
        m = mean[f]
        s = inv_std[f]
        for b in range(batch):
            out[f, b] = (X[idx[b], f] - m) * s


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def gather_standardize(X, idx, mean, inv_std, out):
    """``out[f, b] = (X[idx[b], f] - mean[f]) * inv_std[f]``.

    Gathers a mini-batch from the row-major data matrix ``X (N, F)`` into the
    feature-major buffer ``out (F, B)`` and standardises it on the way.
    """
    n_feat = X.shape[1]
    n_chunks = (n_feat + 15) // 16
    for c in prange(n_chunks):
        _gather_rows(c * 16, min(n_feat, c * 16 + 16), X, idx, mean, inv_std, out)


@numba.njit(inline="always")
def _forward_rows(j0, j1, a_prev, col_ptr, col_rows, col_pos, data, bias, act, slope,
                  drop_rate, seed, out, dfac, col0):
    """Output rows ``j0:j1`` of :func:`sparse_forward`.

    The SIMD blocks apply a piecewise activation, its factor and dropout as they store
    (in registers: a second pass over the row cost as much as its connections at
    epsilon 1); the scalar tail and the other activations get :func:`_epilogue`.
    """
    batch = a_prev.shape[1]
    far = _far(a_prev)
    want_d = dfac.shape[1] > 0
    drop, keep_scale, thr, mode = _epilogue_setup(act, drop_rate, want_d)
    for j in range(j0, j1):
        bj = bias[j]
        key = _row_key(seed, j)
        k0 = col_ptr[j]
        k1 = col_ptr[j + 1]
        b = 0
        if far:
            while b + 128 <= batch:
                _far_forward_block8(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 128
            if b + 64 <= batch:
                _far_forward_block4(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 64
            if b + 32 <= batch:
                _far_forward_block2(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 32
            if b + 16 <= batch:
                _far_forward_block1(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 16
        else:
            while b + 128 <= batch:
                _forward_block8(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 128
            if b + 64 <= batch:
                _forward_block4(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 64
            if b + 32 <= batch:
                _forward_block2(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 32
            if b + 16 <= batch:
                _forward_block1(out, j, b, a_prev, col_rows, col_pos, data, k0, k1, bj,
                                    dfac, mode, slope, keep_scale, thr, key, col0)
                b += 16
        if b < batch:
            for c in range(b, batch):
                out[j, c] = bj
            _forward_tail(out, j, b, a_prev, col_rows, col_pos, data, k0, k1)
        _epilogue(out, dfac, j, b if mode else 0, batch, act, slope, drop, want_d, keep_scale,
                  thr, key, col0)


@numba.njit(inline="always")
def _epilogue_setup(act, drop_rate, want_d):
    """``(drop, keep_scale, thr, mode)`` of a forward product's store: whether dropout
    applies, the inverted-dropout scale, the draw threshold and the SIMD blocks' ``mode``
    bits (:func:`_store_activated`)."""
    drop = drop_rate > 0.0
    keep_scale = np.float32(1.0) / (np.float32(1.0) - np.float32(drop_rate))
    thr = _drop_threshold(drop_rate)
    mode = 0
    if act == ACT_PIECEWISE:
        mode = EPI_PIECEWISE + (EPI_DROP if drop else 0) + (EPI_FACTOR if want_d else 0)
    return drop, keep_scale, thr, mode


@numba.njit(inline="always")
def _epilogue(out, dfac, j, b0, b1, act, slope, drop, want_d, keep_scale, thr, key, col0):
    """Activation, its derivative and inverted dropout of columns ``b0:b1`` of row ``j``:
    what the SIMD blocks did not apply (a piecewise row's scalar tail of fewer than 16
    columns, or a whole row of another activation), with their arithmetic."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if act != ACT_LINEAR or drop or want_d:
        for b in range(b0, b1):
            z = out[j, b]
            f = z
            d = one
            if act == ACT_PIECEWISE:
                f = z if z > zero else slope * z
                d = one if z > zero else slope
            elif act == ACT_SIGMOID:
                f = one / (one + np.exp(-z))
                d = f * (one - f)
            keep = one
            if drop:
                keep = keep_scale if _sample_bits(key, b + col0) >= thr else zero
            out[j, b] = f * keep
            if want_d:
                dfac[j, b] = d * keep


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def sparse_forward(a_prev, col_ptr, col_rows, col_pos, data, bias, act, slope,
                   drop_rate, seed, out, dfac, col0):
    """Fused sparse product, bias, activation and inverted dropout.

    ``z[j, b] = bias[j] + sum_{k in col j} data[col_pos[k]] * a_prev[col_rows[k], b]``
    then ``out = f(z) * m / (1 - p)`` with a Bernoulli(1 - p) keep mask ``m``
    (only when ``drop_rate > 0``), and ``dfac = f'(z) * m / (1 - p)``: the factor
    the backward pass multiplies the incoming delta by. ``dfac`` is written only
    when it has at least one column (pass a ``(0, 0)`` array to skip it).
    Column ``b`` draws the dropout bits of sample ``col0 + b`` of the step, so a step
    run as micro-batches (``col0`` = the micro-batch's first column) drops the same
    units as the whole batch.

    Each block of up to 128 batch columns of ``out[j, :]`` stays in registers while the
    row's connections are walked: one load and one store per block, not per connection.

    Shapes: a_prev (n_in, B), out and dfac (n_out, B).
    """
    n_out = col_ptr.shape[0] - 1
    for c in prange((n_out + 15) // 16):
        _forward_rows(c * 16, min(n_out, c * 16 + 16), a_prev, col_ptr, col_rows, col_pos, data,
                      bias, act, slope, drop_rate, seed, out, dfac, col0)


# ---------------------------------------------------------------- forward without the CSC
# The lean layout (``csc=False``) keeps no column index: 12 bytes a connection instead of
# 20. Its forward product scatters over the CSR rows: each thread owns a range of output
# rows and walks every input row, adding ``w * a_prev[i, :]`` into ``out[j, :]`` for its
# connections, in input order, so each sum is ``bias + sum_i`` in the same order and with
# the same roundings as the gather over the CSC: the same bits.


@intrinsic
def _axpy_vector(typingctx, out, j, b0, w, a_prev, i):
    """``out[j, b0:b0+16] = fma(w, a_prev[i, b0:b0+16], out[j, b0:b0+16])``."""
    if not (_c_array(out, types.float32, 2) and _c_array(a_prev, types.float32, 2)
            and isinstance(w, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        o = context.make_array(tys[0])(context, builder, args[0])
        a = context.make_array(tys[4])(context, builder, args[4])
        j, b0, i = (_index(context, builder, signature, args, n) for n in (1, 2, 5))
        optr = _vector_at(builder, _row_address(builder, o, j, b0), 0)
        x = builder.load(_vector_at(builder, _row_address(builder, a, i, b0), 0), align=4)
        wv = _splat(builder, context.cast(builder, args[3], tys[3], types.float32))
        builder.store(_vfma(builder, wv, x, builder.load(optr, align=4)), optr, align=4)
        return context.get_dummy_value()
    return types.void(out, j, b0, w, a_prev, i), codegen


@intrinsic
def _prefetch_line(typingctx, arr, j, b0):
    """Prefetch the cache line of ``arr[j, b0]`` (a hint: never faults)."""
    if not _c_array(arr, types.float32, 2):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        j, b0 = (_index(context, builder, signature, args, n) for n in (1, 2))
        _prefetch(builder, _row_address(builder, a, j, b0), 1)
        return context.get_dummy_value()
    return types.void(arr, j, b0), codegen


@intrinsic
def _activate_vector(typingctx, out, j, b0, dfac, mode, slope, keep_scale, thr, key, col0):
    """:func:`_store_activated` of the sums already in ``out[j, b0:b0+16]``, in place:
    what the forward blocks do as they store (same arithmetic, same bits)."""
    if not (_c_array(out, types.float32, 2) and _c_array(dfac, types.float32, 2)):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        o = context.make_array(tys[0])(context, builder, args[0])
        df = context.make_array(tys[3])(context, builder, args[3])
        j, b0, mode, col0 = (_index(context, builder, signature, args, n) for n in (1, 2, 4, 9))
        optr = _row_address(builder, o, j, b0)
        slope, scale, thr, key32, dptr = _store_args(context, builder, signature, args, 5, df,
                                                     mode, j, b0)
        z = builder.load(_vector_at(builder, optr, 0), align=4)
        _store_activated(context, builder, z, _vector_at(builder, optr, 0),
                         _vector_at(builder, dptr, 0), mode, slope, scale, thr, key32,
                         builder.add(col0, b0))
        return context.get_dummy_value()
    return (types.void(out, j, b0, dfac, mode, slope, keep_scale, thr, key, col0), codegen)


@numba.njit(fastmath=False, cache=True)  # explicit: the same rounding as _forward_tail
def _scatter_tail(out, j, b, w, a_prev, i):
    for c in range(b, out.shape[1]):
        out[j, c] += w * a_prev[i, c]


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def sparse_forward_csr(a_prev, row_ptr, row_cols, data, bias, act, slope, drop_rate, seed,
                       out, dfac, col0, n_threads):
    """:func:`sparse_forward` from the CSR arrays alone (no CSC index): the same outputs,
    bit for bit.

    The output rows are split into ``2 n_threads`` ranges; each range's task sets its
    rows to the bias, walks all connections in storage (input) order, adds those whose
    output is in its range (prefetching the output rows ahead when they come from DRAM),
    then applies the activation, dropout and factor to its rows. Every connection's
    index is read once per range (sequential), every output row updated in place (a
    random read and write per connection and block of 16 columns, where the gather reads
    an input row and a value): about 2x the gather's time on a 10 M-connection layer
    that does not fit in cache.
    """
    n_in = row_ptr.shape[0] - 1
    n_out = out.shape[0]
    batch = out.shape[1]
    full = batch // 16 * 16
    nnz = row_cols.shape[0]
    far = _far(out)
    want_d = dfac.shape[1] > 0
    drop, keep_scale, thr, mode = _epilogue_setup(act, drop_rate, want_d)
    parts = max(1, min(2 * n_threads, n_out))
    ahead = _PREFETCH_AHEAD * parts
    for r in prange(parts):
        j0 = r * n_out // parts
        j1 = (r + 1) * n_out // parts
        for j in range(j0, j1):
            bj = bias[j]
            for c in range(batch):
                out[j, c] = bj
        for i in range(n_in):
            for k in range(row_ptr[i], row_ptr[i + 1]):
                j = row_cols[k]
                if j < j0 or j >= j1:
                    continue
                if far:  # about _PREFETCH_AHEAD of this range's connections ahead
                    jp = row_cols[min(k + ahead, nnz - 1)]
                    if j0 <= jp < j1:
                        for b in range(0, batch, 16):
                            _prefetch_line(out, jp, b)
                w = data[k]
                for b in range(0, full, 16):
                    _axpy_vector(out, j, b, w, a_prev, i)
                if full < batch:
                    _scatter_tail(out, j, full, w, a_prev, i)
        for j in range(j0, j1):
            key = _row_key(seed, j)
            if mode:
                for b in range(0, full, 16):
                    _activate_vector(out, j, b, dfac, mode, slope, keep_scale, thr, key, col0)
            _epilogue(out, dfac, j, full if mode else 0, batch, act, slope, drop, want_d,
                      keep_scale, thr, key, col0)


@numba.njit(inline="always")
def _finish(k, g, data, grad, velocity, lr, momentum, weight_decay, update):
    """Store the gradient of connection ``k`` (``GRAD_STORE``), add it to the stored one
    (``GRAD_ADD``), apply momentum SGD to it at once (``GRAD_STEP``), or start / add to
    a micro-batched step's velocity (``GRAD_VEL_FIRST``, ``GRAD_VEL_ADD``)."""
    if update == GRAD_STEP:
        vk = momentum_velocity(velocity[k], g, data[k], lr, momentum, weight_decay)
        velocity[k] = vk
        data[k] += vk
    elif update == GRAD_ADD:
        grad[k] += g
    elif update == GRAD_VEL_FIRST:
        velocity[k] = velocity_start(velocity[k], g, data[k], lr, momentum, weight_decay)
    elif update == GRAD_VEL_ADD:
        velocity[k] = velocity_add(velocity[k], g, lr)
    else:
        grad[k] = g


@numba.njit(inline="always")
def _backward_rows(i0, i1, a_prev, delta, row_ptr, row_cols, data, dfac_prev, inv_batch,
                   grad, delta_prev, velocity, lr, momentum, weight_decay, update, gsum):
    """Input rows ``i0:i1`` of :func:`sparse_backward`; ``gsum`` is scratch space for at
    least ``row_ptr[i1] - row_ptr[i0]`` floats."""
    batch = a_prev.shape[1]
    want_prev = delta_prev.shape[1] > 0
    zero = np.float32(0.0)
    first = row_ptr[i0]
    last = row_ptr[i1]
    for k in range(last - first):
        gsum[k] = zero  # per-connection sums over the batch
    far = _far(delta)
    for i in range(i0, i1):
        k0 = row_ptr[i]
        k1 = row_ptr[i + 1]
        b = 0
        # Column blocks of 128, 64, 32 and 16 (one call each, so a connection's sum over
        # the batch adds its blocks' partial sums in the same order on every path).
        if want_prev and far:
            while b + 128 <= batch:
                _far_backward_block8(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                     delta_prev, dfac_prev)
                b += 128
            if b + 64 <= batch:
                _far_backward_block4(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                     delta_prev, dfac_prev)
                b += 64
            if b + 32 <= batch:
                _far_backward_block2(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                     delta_prev, dfac_prev)
                b += 32
            if b + 16 <= batch:
                _far_backward_block1(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                     delta_prev, dfac_prev)
                b += 16
        elif want_prev:
            while b + 128 <= batch:
                _backward_block8(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                 delta_prev, dfac_prev)
                b += 128
            if b + 64 <= batch:
                _backward_block4(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                 delta_prev, dfac_prev)
                b += 64
            if b + 32 <= batch:
                _backward_block2(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                 delta_prev, dfac_prev)
                b += 32
            if b + 16 <= batch:
                _backward_block1(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                 delta_prev, dfac_prev)
                b += 16
        elif far:
            while b + 128 <= batch:
                _far_sddmm_block8(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                  delta_prev, dfac_prev)
                b += 128
            if b + 64 <= batch:
                _far_sddmm_block4(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                  delta_prev, dfac_prev)
                b += 64
            if b + 32 <= batch:
                _far_sddmm_block2(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                  delta_prev, dfac_prev)
                b += 32
            if b + 16 <= batch:
                _far_sddmm_block1(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                                  delta_prev, dfac_prev)
                b += 16
        else:
            while b + 128 <= batch:
                _sddmm_block8(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                              delta_prev, dfac_prev)
                b += 128
            if b + 64 <= batch:
                _sddmm_block4(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                              delta_prev, dfac_prev)
                b += 64
            if b + 32 <= batch:
                _sddmm_block2(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                              delta_prev, dfac_prev)
                b += 32
            if b + 16 <= batch:
                _sddmm_block1(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first,
                              delta_prev, dfac_prev)
                b += 16
        if b < batch:
            _backward_tail(i, b, k0, k1, a_prev, delta, row_cols, data, gsum, first, delta_prev,
                           dfac_prev)
    # data[k] was read for delta_prev above: now it may change (one loop over the chunk's
    # connections, which are contiguous, so it vectorises).
    for k in range(first, last):
        _finish(k, gsum[k - first] * inv_batch, data, grad, velocity, lr, momentum,
                weight_decay, update)


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
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
    for c in prange((n_in + 15) // 16):
        i0 = c * 16
        i1 = min(n_in, i0 + 16)
        _backward_rows(i0, i1, a_prev, delta, row_ptr, row_cols, data, dfac_prev, inv_batch,
                       grad, delta_prev, velocity, lr, momentum, weight_decay, update,
                       np.empty(row_ptr[i1] - row_ptr[i0], np.float32))


@numba.njit(inline="always")
def _bias_rows(j0, j1, delta, bias, velocity, lr, momentum, mean_out, update, inv):
    """Rows ``j0:j1`` with ``g_j = inv * sum_b delta[j, b]``: :func:`bias_step`
    (``GRAD_STEP``), ``mean_out[j] = g_j`` (``GRAD_STORE``) or ``mean_out[j] += g_j``
    (``GRAD_ADD``); the velocity of a micro-batched step as :func:`_finish` (no weight
    decay on biases)."""
    for j in range(j0, j1):
        s = _row_sum(delta, j)
        if update == GRAD_STEP:
            vj = momentum_velocity(velocity[j], s * inv, np.float32(0.0), lr, momentum,
                                    np.float32(0.0))
            velocity[j] = vj
            bias[j] += vj
        elif update == GRAD_VEL_FIRST:
            velocity[j] = velocity_start(velocity[j], s * inv, np.float32(0.0), lr, momentum,
                                         np.float32(0.0))
        elif update == GRAD_VEL_ADD:
            velocity[j] = velocity_add(velocity[j], s * inv, lr)
        elif update == GRAD_ADD:
            mean_out[j] += s * inv
        else:
            mean_out[j] = s * inv


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def bias_step(delta, bias, velocity, lr, momentum):
    """Bias gradient ``g_j = mean_b delta[j, b]`` and its momentum step, fused::

        velocity[j] <- momentum * velocity[j] - lr * g_j;   bias[j] <- bias[j] + velocity[j]
    """
    n = delta.shape[0]
    inv = np.float32(1.0) / np.float32(delta.shape[1])
    for j in prange(n):
        _bias_rows(j, j + 1, delta, bias, velocity, lr, momentum, bias, GRAD_STEP, inv)


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def bias_update(delta, bias, velocity, lr, momentum, inv, update):
    """:func:`bias_step` with the batch mean taken with ``inv`` and any ``update`` mode of
    :func:`_bias_rows` (the micro-batches of one step)."""
    n = delta.shape[0]
    for j in prange(n):
        _bias_rows(j, j + 1, delta, bias, velocity, lr, momentum, bias, update, inv)


@numba.njit(parallel=True, fastmath=False, cache=True)
def apply_velocity(w, v):
    """The end of a micro-batched step: ``v`` flushed to zero below TINY as
    :func:`momentum_velocity` does, then ``w += v``."""
    for k in prange(w.shape[0]):
        vk = v[k] if abs(v[k]) >= TINY else np.float32(0.0)
        v[k] = vk
        w[k] += vk


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def _fused_forward(X, idx, mean, inv_std, acts, col_ptrs, col_rowss, col_poss, datas, biases,
                   codes, slopes, rates, seeds, dfacs, n_layers, n_threads, col0):
    """:func:`mlp_forward`'s compiled pass over the first ``n_layers`` entries of its
    (padded) tuples."""
    n_feat = X.shape[1]
    n_phases = n_layers + 1
    sizes = np.empty(n_phases, np.int64)  # rows per phase: features, then each layer's outputs
    sizes[0] = n_feat
    for l in range(n_layers):
        sizes[l + 1] = biases[l].shape[0]
    step = np.empty(n_phases, np.int64)
    n_chunks = np.empty(n_phases, np.int64)
    for p in range(n_phases):
        step[p] = _chunk_size(sizes[p], n_threads)
        n_chunks[p] = (sizes[p] + step[p] - 1) // step[p]
    state = np.zeros(_state_size(n_phases, n_threads), np.int64)
    for w in prange(n_threads):
        _enter(state, n_phases, n_threads)
        for p in range(n_phases):
            # This phase's arrays, taken out of the tuples once (every access counts a
            # reference: an atomic write that both threads would contend for).
            l = max(p - 1, 0)
            a_prev, out, dfac = acts[l], acts[p], dfacs[l]
            col_ptr, col_rows, col_pos = col_ptrs[l], col_rowss[l], col_poss[l]
            data, bias, code, slope, rate, seed = (datas[l], biases[l], codes[l], slopes[l],
                                                   rates[l], seeds[l])
            if p > 0:
                _wait_phase(state, p - 1, n_phases, n_threads, n_chunks[p - 1])
            for v in range(n_threads):
                owner = (w + v) % n_threads
                while True:
                    c = _claim(state, p, owner, n_chunks[p], n_chunks[p], n_threads)
                    if c < 0:
                        break
                    r0 = c * step[p]
                    r1 = min(sizes[p], r0 + step[p])
                    if p == 0:
                        _gather_rows(r0, r1, X, idx, mean, inv_std, out)
                    else:
                        _forward_rows(r0, r1, a_prev, col_ptr, col_rows, col_pos, data, bias, code,
                                      slope, rate, seed, out, dfac, col0)
                    _chunk_done(state, p, n_phases, n_threads)
        _leave(state, w, n_phases, n_threads)


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def _fused_backward(acts, deltas, prev_deltas, dfacs, row_ptrs, row_colss, datas, velocities,
                    biases, bias_velocities, grads, bias_grads, inv_batch, lr, momentum,
                    weight_decay, update, n_layers, n_threads, lr_scales):
    """:func:`mlp_backward`'s compiled pass over the first ``n_layers`` entries of its
    (padded) tuples."""
    # Phase q handles layer l = n_layers - 1 - q: its input rows, then its bias rows.
    n_rows = np.empty(n_layers, np.int64)
    n_out = np.empty(n_layers, np.int64)
    rstep = np.empty(n_layers, np.int64)
    n_row_chunks = np.empty(n_layers, np.int64)
    n_chunks = np.empty(n_layers, np.int64)  # row chunks, then bias chunks of 64
    scratch = 1  # the most connections in one chunk of rows
    for q in range(n_layers):
        l = n_layers - 1 - q
        row_ptr = row_ptrs[l]
        n_rows[q] = row_ptr.shape[0] - 1
        n_out[q] = biases[l].shape[0]
        rstep[q] = _chunk_size(n_rows[q], n_threads)
        n_row_chunks[q] = (n_rows[q] + rstep[q] - 1) // rstep[q]
        n_chunks[q] = n_row_chunks[q] + (n_out[q] + 63) // 64
        for r0 in range(0, n_rows[q], rstep[q]):
            scratch = max(scratch, row_ptr[min(n_rows[q], r0 + rstep[q])] - row_ptr[r0])
    state = np.zeros(_state_size(n_layers, n_threads), np.int64)
    for w in prange(n_threads):
        _enter(state, n_layers, n_threads)
        gsum = np.empty(scratch, np.float32)
        for q in range(n_layers):
            l = n_layers - 1 - q
            a_prev, delta, delta_prev, dfac_prev = acts[l], deltas[l], prev_deltas[l], dfacs[l]
            row_ptr, row_cols, data, velocity = row_ptrs[l], row_colss[l], datas[l], velocities[l]
            bias, bias_velocity = biases[l], bias_velocities[l]
            grad, bias_grad = grads[l], bias_grads[l]
            lr_l = np.float32(lr * lr_scales[l])
            if q > 0:
                _wait_phase(state, q - 1, n_layers, n_threads, n_chunks[q - 1])
            for v in range(n_threads):
                owner = (w + v) % n_threads
                while True:
                    c = _claim(state, q, owner, n_row_chunks[q], n_chunks[q], n_threads)
                    if c < 0:
                        break
                    if c < n_row_chunks[q]:
                        r0 = c * rstep[q]
                        r1 = min(n_rows[q], r0 + rstep[q])
                        _backward_rows(r0, r1, a_prev, delta, row_ptr, row_cols, data, dfac_prev,
                                       inv_batch, grad, delta_prev, velocity, lr_l, momentum,
                                       weight_decay, update, gsum)
                    else:
                        r0 = (c - n_row_chunks[q]) * 64
                        r1 = min(n_out[q], r0 + 64)
                        _bias_rows(r0, r1, delta, bias, bias_velocity, lr, momentum, bias_grad,
                                   update, inv_batch)
                    _chunk_done(state, q, n_layers, n_threads)
        _leave(state, w, n_layers, n_threads)


#: Layers the tuples of the fused kernels hold. A network's tuples are padded with empty
#: arrays to a multiple of this, so every network up to this depth runs ONE compiled
#: version of each kernel (a new tuple length, or a read-only array where a writable one
#: was, is a new type to Numba: 10-15 s of compilation each, 13 of them in a CI run).
LAYER_SLOTS = 12


def _slots(n_layers: int) -> int:
    return -(-n_layers // LAYER_SLOTS) * LAYER_SLOTS


def _padded(items, length: int, template: np.ndarray) -> tuple:
    """``items`` as a tuple of ``length`` arrays, the missing ones empty like ``template``."""
    items = tuple(items)
    empty = np.empty((0,) * template.ndim, template.dtype)
    return items + (empty,) * (length - len(items))


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (the kernels only read it; see LAYER_SLOTS)."""
    view = a.view()
    view.flags.writeable = False
    return view


def mlp_forward(X, idx, mean, inv_std, acts, col_ptrs, col_rowss, col_poss, datas, biases,
                codes, slopes, rates, seeds, dfacs, n_threads, col0=0):
    """Every layer's forward pass in one parallel region: :func:`gather_standardize`
    into ``acts[0]``, then for each layer ``l`` :func:`sparse_forward` from ``acts[l]``
    into ``acts[l + 1]`` with activation ``codes[l]``, slope ``slopes[l]``, dropout rate
    ``rates[l]`` and seed ``seeds[l]``, writing ``dfacs[l]`` when it has columns
    (``col0``: the first column's sample number in the step, as in :func:`sparse_forward`).

    The per-layer arguments are tuples (one entry per layer); ``n_threads`` is
    ``numba.get_num_threads()``. Same results as the separate kernels, bit for bit.
    """
    n = len(datas)
    s = _slots(n)
    def model(arrays):  # read-only, padded
        return tuple(map(_frozen, _padded(arrays, s, arrays[0])))

    _fused_forward(_frozen(X), idx, _frozen(mean), _frozen(inv_std), _padded(acts, s + 1, acts[0]),
                   model(col_ptrs), model(col_rowss), model(col_poss), model(datas), model(biases),
                   codes, slopes, rates, seeds, _padded(dfacs, s, acts[0]), np.int64(n),
                   np.int64(n_threads), np.int64(col0))


def mlp_backward(acts, deltas, prev_deltas, dfacs, row_ptrs, row_colss, datas, velocities,
                 biases, bias_velocities, grads, bias_grads, inv_batch, lr, momentum,
                 weight_decay, update, n_threads, lr_scales=None):
    """Every layer's backward pass in one parallel region, last layer first: for layer
    ``l``, :func:`sparse_backward` with ``a_prev = acts[l]``, ``delta = deltas[l]``,
    ``dfac_prev = dfacs[l]`` and ``delta_prev = prev_deltas[l]`` (``deltas[l - 1]``, or
    a ``(0, 0)`` array for the first layer), and the bias: :func:`bias_step` if
    ``update``, else :func:`row_mean` into ``bias_grads[l]``. With ``update`` False the
    weight gradients go to ``grads[l]`` (``GRAD_ADD``: are added to them, every mean
    taken with ``inv_batch``). ``lr_scales`` (float32, one per layer; None: all 1)
    multiplies the learning rate of layer ``l``'s connections (not of its bias).

    Layer ``l - 1`` starts once every row of layer ``l`` is done (it reads the delta
    layer ``l`` wrote). Tuples hold one entry per layer. Same results as the separate
    kernels, bit for bit.
    """
    n = len(datas)
    s = _slots(n)
    f2, i8, i4, f1 = acts[0], row_ptrs[0], row_colss[0], datas[0]
    scales = np.ones(n, np.float32) if lr_scales is None else np.asarray(lr_scales, np.float32)
    _fused_backward(_padded(acts, s, f2), _padded(deltas, s, f2), _padded(prev_deltas, s, f2),
                    _padded(dfacs, s, f2), _padded(row_ptrs, s, i8), _padded(row_colss, s, i4),
                    _padded(datas, s, f1), _padded(velocities, s, f1), _padded(biases, s, f1),
                    _padded(bias_velocities, s, f1), _padded(grads, s, f1),
                    _padded(bias_grads, s, f1), np.float32(inv_batch), np.float32(lr),
                    np.float32(momentum), np.float32(weight_decay), np.int64(update), np.int64(n),
                    np.int64(n_threads), scales)


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def srelu_forward(out, params, drop_rate, seed, zbuf, dfac, col0):
    """SReLU with per-neuron parameters ``(t_l, a_l, t_r, a_r) = params[:, j]`` and dropout,
    in place on the pre-activations ``out`` (n, B)::

        f(z) = t_r + a_r (z - t_r)   if z >= t_r
             = t_l + a_l (z - t_l)   if z <= t_l   (and z < t_r)
             = z                     otherwise

    Writes ``zbuf = z`` and ``dfac = m / (1 - p)`` (the dropout factor only: the
    activation's derivative needs the parameters, so :func:`srelu_backward` applies it)
    when they have columns. The dropout mask equals the one ``sparse_forward`` draws
    (the same ``col0``).
    """
    n = out.shape[0]
    batch = out.shape[1]
    want_z = zbuf.shape[1] > 0
    want_d = dfac.shape[1] > 0
    one = np.float32(1.0)
    keep_scale = one / (one - np.float32(drop_rate))
    thr = _drop_threshold(drop_rate)
    for j in prange(n):
        tl = params[SRELU_TL, j]
        al = params[SRELU_AL, j]
        tr = params[SRELU_TR, j]
        ar = params[SRELU_AR, j]
        key = _row_key(seed, j)
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
                keep = keep_scale if _sample_bits(key, b + col0) >= thr else np.float32(0.0)
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


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def bias_grad(delta, out, inv_batch, update):
    """Bias gradients ``g_j = inv_batch * sum_b delta[j, b]`` stored in ``out``
    (``GRAD_STORE``) or added to it (``GRAD_ADD``)."""
    n = delta.shape[0]
    for j in prange(n):
        _bias_rows(j, j + 1, delta, out, out, np.float32(0.0), np.float32(0.0), out, update,
                   inv_batch)


@numba.njit(parallel=True, fastmath=_EXACT, cache=True)
def row_mean(x, out):
    """``out[j] = mean_b x[j, b]`` (bias gradient from a feature-major delta)."""
    n = x.shape[0]
    inv = np.float32(1.0) / np.float32(x.shape[1])
    for j in prange(n):
        _bias_rows(j, j + 1, x, out, out, np.float32(0.0), np.float32(0.0), out, GRAD_STORE,
                   inv)


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
