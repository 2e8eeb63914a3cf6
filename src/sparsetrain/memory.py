"""How much memory a training run needs, how much the machine has, and the micro-batch that fits.

A truly sparse network's memory has two parts that scale differently:

* per connection (fixed for the run): value, momentum, the CSR output index and the
  derived CSC index (``BYTES_PER_CONNECTION``, 20), or without the CSC index in a lean
  network (``LEAN_BYTES_PER_CONNECTION``, 12; ``--csc-index``), plus per-neuron bias,
  bias momentum and the int32 pointer arrays;
* per sample of a (micro-)batch: for every layer of width ``n`` the activations and the
  deltas (which hold the dropout factors between the passes), ``n`` float32 each
  (``activation_bytes``). At 50 M hidden neurons one sample costs about 0.4 GB of
  these, so a 128-sample step is run
  as micro-batches, each adding its share of the step to the momentum buffers (no
  gradient buffer; see ``SparseMLP.train_step``).

The estimate is what the kernels allocate, not a measurement: the run log prints it next
to the peak resident memory so the two can be compared.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: Bytes held per connection while training: value and momentum (float32), CSR output
#: index (int32), CSC input index (int32) and CSC position of the value (int32).
BYTES_PER_CONNECTION = 4 + 4 + 4 + 4 + 4
#: The same without the CSC index (a lean network, ``--csc-index drop``).
LEAN_BYTES_PER_CONNECTION = 4 + 4 + 4
#: What ``--csc-index`` may say: keep the CSC index, drop it, or keep it if it fits.
CSC_MODES = {"auto": "keep the CSC index unless the network fits only without it",
             "keep": "keep it (20 bytes a connection; the fastest forward pass)",
             "drop": "drop it (12 bytes a connection; about 2x the forward time at huge width)"}
#: Bytes per neuron of a layer's output: bias, bias momentum (float32), CSC pointer (int32;
#: not in a lean network).
BYTES_PER_NEURON = 4 + 4 + 4
#: Bytes per neuron of a layer's input: the CSR pointer (int32).
BYTES_PER_INPUT = 4
#: Transient bytes per connection of the largest layer during its SET step (int64 keys,
#: survivors, the merged new keys and the mask/argpartition scratch).
EVOLUTION_BYTES_PER_CONNECTION = 40
_SIMD = 16  # batch columns are padded to whole 16-lane groups by the kernels


def er_connections(sizes: Sequence[int], epsilon: float) -> list[int]:
    """Connections of each layer of an Erdős–Rényi network (the count ``erdos_renyi`` draws;
    a layer denser than 1 is fully connected)."""
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        p = epsilon * (n_in + n_out) / (n_in * n_out)
        out.append(n_in * n_out if p >= 1 else max(1, round(p * n_in * n_out)))
    return out


def model_bytes(sizes: Sequence[int], connections: Sequence[int], *, csc: bool = True) -> int:
    """Parameters, momentum and indexes of a network (fixed for the run); ``csc=False``:
    a lean network, without the CSC index."""
    return connection_bytes(connections, csc=csc) + neuron_bytes(sizes, csc=csc)


def connection_bytes(connections: Sequence[int], *, csc: bool = True) -> int:
    """What the connections hold: values, momentum, their indexes."""
    return (BYTES_PER_CONNECTION if csc else LEAN_BYTES_PER_CONNECTION) * sum(connections)


def neuron_bytes(sizes: Sequence[int], *, csc: bool = True) -> int:
    """What the neurons hold: bias, its momentum, the CSR (and CSC) pointers."""
    out = BYTES_PER_NEURON - (0 if csc else 4)
    return sum(out * n_out + BYTES_PER_INPUT * (n_in + 1)
               for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))


def activation_bytes(sizes: Sequence[int], batch: int, *, training: bool = True,
                     neuron_params: bool = False) -> int:
    """Work arrays of one forward (+ backward) pass over ``batch`` samples (padded to whole
    16-sample SIMD groups): activations of every layer, and for training the deltas of
    every layer but the input (which hold the hidden layers' dropout factors between the
    passes), with SReLU also separate factors and pre-activations of the hidden layers."""
    cols = -(-batch // _SIMD) * _SIMD
    hidden = sum(sizes[1:-1])
    per_col = sum(sizes)  # activations
    if training:
        per_col += sum(sizes[1:]) + (2 * hidden if neuron_params else 0)
    return 4 * per_col * cols


def evolution_bytes(connections: Sequence[int]) -> int:
    """Transient memory of the SET step (one layer at a time)."""
    return EVOLUTION_BYTES_PER_CONNECTION * max(connections, default=0)


def available_bytes() -> int:
    """Memory this process may still use: the smaller of the kernel's ``MemAvailable`` and
    the room left under a cgroup limit (containers), in bytes."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            limits.append(max(0, int(limit) - usage))
    if not limits:  # not Linux: the physical memory
        try:
            limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62
    return min(limits)


#: Share of the available memory a run plans to use by default (the rest: the interpreter,
#: NumPy temporaries, the page cache of the data and checkpoint files).
DEFAULT_SHARE = 0.85


def default_budget() -> int:
    """Bytes a run may plan for when no budget is given: a share of what is available."""
    return int(DEFAULT_SHARE * available_bytes())


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class MemoryPlan(NamedTuple):
    """What a run holds (bytes) and the micro-batch that makes it fit."""

    micro_batch: int  # samples per forward/backward pass
    batch: int  # samples per step
    csc: bool  # whether the layers keep their CSC index
    model: int  # connections, momentum, indexes, neurons
    activations: int  # work arrays of one micro-batch
    evolution: int  # transient, the SET step of the largest layer
    budget: int
    connections: int  # of the whole network

    @property
    def total(self) -> int:
        return self.model + self.activations + self.evolution

    def describe(self) -> str:
        split = (f"micro-batches of {self.micro_batch} of each {self.batch}-sample step"
                 if self.micro_batch < self.batch else f"whole {self.batch}-sample batches")
        index = "" if self.csc else ", lean: no CSC index"
        per_conn = self.model / max(1, self.connections)
        return (f"memory plan: {fmt_bytes(self.model)} model ({per_conn:.1f} bytes a "
                f"connection{index}) + "
                f"{fmt_bytes(self.activations)} activations ({split})"
                + f" + {fmt_bytes(self.evolution)} SET step = {fmt_bytes(self.total)} "
                f"of {fmt_bytes(self.budget)} available")


def _plan(sizes, connections, batch, micro, budget, neuron_params, csc) -> MemoryPlan:
    return MemoryPlan(micro, batch, csc, model_bytes(sizes, connections, csc=csc),
                      activation_bytes(sizes, micro, neuron_params=neuron_params),
                      evolution_bytes(connections), budget, sum(connections))


def plan_micro_batch(sizes: Sequence[int], connections: Sequence[int], batch: int,
                     budget: int, *, micro_batch: int | None = None,
                     neuron_params: bool = False, csc: bool = True) -> MemoryPlan | None:
    """The plan with ``micro_batch`` samples per pass if given, else with the largest that
    fits in ``budget`` bytes: the whole batch, or a multiple of 16 below it. None if not
    even 16 samples (or the whole batch, if smaller) fit next to the model."""
    if micro_batch is not None:
        return _plan(sizes, connections, batch, min(micro_batch, batch), budget, neuron_params, csc)
    whole = _plan(sizes, connections, batch, batch, budget, neuron_params, csc)
    if whole.total <= budget:
        return whole
    smallest = _plan(sizes, connections, batch, min(batch, _SIMD), budget, neuron_params, csc)
    if smallest.total > budget:
        return None
    room = budget - (smallest.total - smallest.activations)
    groups = max(1, room // activation_bytes(sizes, _SIMD, neuron_params=neuron_params))
    return _plan(sizes, connections, batch, int(min(batch, _SIMD * groups)), budget,
                 neuron_params, csc)


def refusal(plan_16: MemoryPlan, what: str) -> str:
    """One line: why ``what`` cannot train here, and what to change."""
    return (f"{what} does not fit in memory: it needs {fmt_bytes(plan_16.model)} for its "
            f"connections and neurons and "
            f"{fmt_bytes(plan_16.activations)} for the activations of "
            f"{plan_16.micro_batch} samples (with the SET step {fmt_bytes(plan_16.total)}), "
            f"but {fmt_bytes(plan_16.budget)} are available"
            + ("" if plan_16.csc else " (without the CSC index)")
            + ". Lower --hidden or --epsilon, or free memory (--memory-budget sets what may be "
            "used)" + (", or drop the CSC index (--csc-index drop)." if plan_16.csc else "."))


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose first element starts a cache line (``align`` bytes).

    NumPy puts large buffers 16 bytes into a page, so a 64-byte vector load or block
    would straddle one more line than it needs to (the kernels' batch pools, the
    sublinear index keys and weight rows). A view into a slightly larger buffer.
    """
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(n * dtype.itemsize + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n * dtype.itemsize].view(dtype).reshape(shape)
