"""Same-node fast paths for phase-1 pushes: the shared model, and mailboxes.

:class:`SharedModel` (asynchronous mode, the default on one node) puts the server's value
and momentum vectors in shared memory: each worker applies its own push there under a
lock, so nothing travels and no server thread runs per push. :class:`Mailbox` (one per
worker; synchronous mode, or ``transport="shm"``) carries a gradient to the server's
thread and the current values back.

A Ray actor call carrying a 0.5 MB gradient and answering with 0.5 MB of values costs
3-5 ms on the 2-core machines here, more than the 2.3 ms the Fashion-MNIST step itself
takes, so workers on the server's node exchange the gradient and the answer through a
memory-mapped file in ``/dev/shm`` instead; Ray still starts, places, restarts and
stops everything, and carries full states (rare: after a topology change) and all
traffic of workers on other nodes.

Mailbox layout: an int64 header, a float64 loss, then two gradient slots and the answer
as float32 arrays of ``capacity`` entries (the size of the value vector at the start of
the run; Importance Pruning only shrinks it). A pipelined worker computes its next
gradient straight into the slot the server is not reading. The worker writes the gradient, then bumps
``PUSH_SEQ``; the server applies it, writes the answer, then sets ``REPLY_SEQ`` to the
same number. Each side writes its payload before its sequence number and reads the
sequence number before the payload; x86-64 keeps stores in order (TSO), which is why
this path is used only there. A worker killed halfway through a write never bumped its
sequence number, so the half-written gradient is never applied.
"""

from __future__ import annotations

import mmap
import os
import platform
import time
import uuid
from pathlib import Path

import numpy as np

from . import _kernels as K

PUSH_SEQ, REPLY_SEQ, VERSION, STEP, N, SIZE, KIND, R_VERSION, R_STEP, R_SIZE, SLOT = range(11)
_HEADER = 16  # int64 words
#: Answer kinds.
VALUES, FULL, DONE = 0, 1, 2
_ROOT = Path("/dev/shm")


def available() -> bool:
    """Whether this machine can use mailboxes (x86-64 Linux with /dev/shm)."""
    return platform.machine().lower() in ("x86_64", "amd64") and _ROOT.is_dir()


def new_run_id() -> str:
    """``sparsetrain-<driver pid>-<random>``: the pid lets :func:`remove_stale` tell the
    segments of a dead run (its driver was killed) from those of a live one."""
    return f"sparsetrain-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: someone else's live process
        return True
    return True


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove the segments (``sparsetrain-<pid>-*``) whose driver process is gone; returns
    them. A driver killed with -9 cannot clean up, so the next run (or ``--resume``) does."""
    root = _ROOT if root is None else Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for path in root.glob("sparsetrain-*-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # another user's file, or already gone
    return removed


class Mailbox:
    """The mailbox of one worker (created by the server, opened by the worker)."""

    def __init__(self, path, capacity: int, create: bool = False):
        self.path = Path(path)
        self.capacity = int(capacity)
        nbytes = 8 * (_HEADER + 1) + 12 * self.capacity
        if create:
            with open(self.path, "wb") as f:
                f.truncate(nbytes)
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(nbytes,))
        self.header = self._mm[:8 * _HEADER].view(np.int64)
        self.loss = self._mm[8 * _HEADER:8 * (_HEADER + 1)].view(np.float64)
        base, c = 8 * (_HEADER + 1), 4 * self.capacity
        self.slots = (self._mm[base:base + c].view(np.float32),
                      self._mm[base + c:base + 2 * c].view(np.float32))
        self.grad = self.slots[0]
        self.values = self._mm[base + 2 * c:].view(np.float32)

    @staticmethod
    def path_for(run_id: str, rank: int) -> Path:
        return _ROOT / f"{run_id}-{rank}"

    # ------------------------------------------------------------------ worker side
    def free_slot(self) -> np.ndarray:
        """The gradient slot the next :meth:`post` publishes (not the one last posted)."""
        return self.slots[(int(self.header[PUSH_SEQ]) + 1) % 2]

    def post(self, grad: np.ndarray, loss: float, n: int, version: int, step: int) -> int:
        """Write a gradient (unless it already is in :meth:`free_slot`) and announce it;
        returns its sequence number."""
        size = grad.shape[0]
        if size > self.capacity:
            raise ValueError(f"gradient of {size} values exceeds the mailbox ({self.capacity})")
        h = self.header
        slot = (int(h[PUSH_SEQ]) + 1) % 2
        if not np.shares_memory(grad, self.slots[slot]):
            self.slots[slot][:size] = grad
        self.loss[0] = loss
        h[VERSION], h[STEP], h[N], h[SIZE], h[SLOT] = version, step, n, size, slot
        seq = int(h[PUSH_SEQ]) + 1
        h[PUSH_SEQ] = seq  # last: the payload is complete once this is visible
        return seq

    def wait_reply(self, seq: int, timeout: float = 600.0, alive=None) -> dict:
        """Block until the answer to push ``seq`` is there: ``{"kind", "version", "step",
        "values"}`` (``values`` a view valid until the next post)."""
        h = self.header
        t0 = time.perf_counter()
        spins = 0
        while int(h[REPLY_SEQ]) != seq:
            spins += 1
            if spins > 200:
                time.sleep(5e-5)
                if spins % 2000 == 0:
                    if time.perf_counter() - t0 > timeout:
                        raise TimeoutError("no answer from the parameter server in "
                                           f"{timeout:.0f} s")
                    if alive is not None:
                        alive()
        return {"kind": int(h[KIND]), "version": int(h[R_VERSION]), "step": int(h[R_STEP]),
                "values": self.values[:int(h[R_SIZE])]}

    # ------------------------------------------------------------------ server side
    def pending(self) -> int:
        """Sequence number of an unanswered push, or 0."""
        seq = int(self.header[PUSH_SEQ])
        return seq if seq != int(self.header[REPLY_SEQ]) else 0

    def take(self) -> tuple[int, np.ndarray, float, int, int]:
        """``(version, gradient view, loss, n, step)`` of the pending push."""
        h = self.header
        return (int(h[VERSION]), self.slots[int(h[SLOT])][:int(h[SIZE])], float(self.loss[0]),
                int(h[N]), int(h[STEP]))

    def answer(self, seq: int, kind: int, version: int, step: int,
               values: np.ndarray | None = None, size: int | None = None) -> None:
        """Answer push ``seq``: with ``values`` copied in, or ``size`` values already
        written into :attr:`values`."""
        h = self.header
        if values is not None:
            size = values.shape[0]
            self.values[:size] = values
        size = size or 0
        h[KIND], h[R_VERSION], h[R_STEP], h[R_SIZE] = kind, version, step, size
        h[REPLY_SEQ] = seq  # last

    def close(self, unlink: bool = False) -> None:
        self.header = self.loss = self.grad = self.values = self.slots = None
        self._mm = None
        if unlink:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


class SharedModel:
    """The parameter server's value and momentum vectors in shared memory (same node).

    Asynchronous phase 1 without a round trip per push: the server's model arrays are
    views of :attr:`values` and :attr:`velocity` (layout of
    :func:`~sparsetrain.parallel.state.value_layout`), and a worker applies its own
    gradient to them under a lock (:func:`sparsetrain.parallel._kernels.shared_push`), copying the
    new values into its replica in the same pass; the server's thread only runs the
    epoch ends. Layout: ``SH_WORDS`` int64 header words (``SH_*`` in
    :mod:`sparsetrain.parallel._kernels`), 8 float64 statistics (``stats[0]``: the epoch's loss
    sum), then the two float32 vectors of ``capacity`` entries.

    The lock word holds the owner's process id, so a waiter can tell a dead owner (a
    worker killed while applying) and break its lock: that one update is then partly
    applied (entries before the kill moved, the others not) and not counted.
    """

    _STATS = 8

    def __init__(self, path, capacity: int, create: bool = False):
        self.path = Path(path)
        self.capacity = int(capacity)
        base = 8 * (K.SH_WORDS + self._STATS)
        nbytes = base + 8 * self.capacity
        if create:
            with open(self.path, "wb") as f:
                f.truncate(nbytes)
        with open(self.path, "r+b") as f:
            self._mm = mmap.mmap(f.fileno(), nbytes)
        buf = np.frombuffer(self._mm, dtype=np.uint8)
        self.header = buf[:8 * K.SH_WORDS].view(np.int64)
        self.stats = buf[8 * K.SH_WORDS:base].view(np.float64)
        self.values = buf[base:base + 4 * self.capacity].view(np.float32)
        self.velocity = buf[base + 4 * self.capacity:nbytes].view(np.float32)

    @staticmethod
    def path_for(run_id: str) -> Path:
        return _ROOT / f"{run_id}-model"

    def __getitem__(self, slot: int) -> int:
        return int(self.header[slot])

    def lock(self, owner: int, timeout: float = 600.0) -> None:
        """Take the lock (breaking that of a dead owner); raises TimeoutError."""
        t0 = time.perf_counter()
        while not K.shared_lock(self.header, owner, 20000):
            self.break_dead_lock()
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"the shared model stayed locked for {timeout:.0f} s")

    def unlock(self, owner: int) -> None:
        K.shared_unlock(self.header, owner)

    def break_dead_lock(self) -> bool:
        """Release the lock if its owner's process is gone; True if it was broken."""
        holder = int(self.header[K.SH_LOCK])
        if holder <= 0 or _alive(holder):
            return False
        return bool(K.shared_unlock(self.header, holder))

    def close(self, unlink: bool = False) -> None:
        self.header = self.stats = self.values = self.velocity = None
        try:
            self._mm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with it
            pass
        if unlink:
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
