"""How phase-1 pushes travel between the workers and the parameter server: one class per
transport, each holding both ends of its protocol.

* :class:`RayCalls` (``transport="ray"``): every push is a Ray actor call; works across
  nodes. Per-step pushes carry a gradient and are answered with the current values; in
  local-steps mode (``local_steps > 1`` or float16 on the wire) a push carries the
  progress of several local steps and is answered with the change since the worker's
  copy (:meth:`~.server.ParameterServer.push_delta`), a fraction of the bytes per sample.
* :class:`Mailboxes` (``"shm"``): each worker has a :class:`~.shm.Mailbox` in
  ``/dev/shm``; a server thread applies the pushes and writes the answers (same node).
* :class:`SharedModelPushes` (``"shared"``, asynchronous mode only): the server's vectors
  are a :class:`~.shm.SharedModel`; each worker applies its own push under its lock
  (:func:`~sparsetrain.parallel._kernels.shared_push`), and a server thread runs only the
  epoch ends (same node).

The driver makes one object per run (small and picklable: a name, the run's id and the
vector capacity) and hands it to the server actor, which calls :meth:`Transport.serve`,
and to every worker actor, which calls :meth:`Transport.run` in phase 1. Asynchronous
workers over mailboxes and Ray calls pipeline one push (they compute the next gradient
while the previous one travels); pushes to the shared model are applied at once.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np

from ..optim import layer_lrs
from . import _kernels as K
from . import shm
from .session import import_ray
from .state import bind_values, get_values, map_gradient, topology_keys, vector_size


def single_threaded_kernels() -> None:
    """This thread's Numba kernels on one thread, with subnormals flushed to zero (each
    server thread applies updates with the core it has)."""
    import numba

    from .. import _kernels

    numba.set_num_threads(1)
    _kernels.enable_flush_to_zero()


class Transport:
    """Base of the transports: the run's id (names its ``/dev/shm`` files) and the
    capacity of the value vectors (their size at the start; pruning only shrinks them)."""

    name = ""

    def __init__(self, run_id: str, capacity: int, *, local_steps: int = 1,
                 wire: str = "float32"):
        self.run_id = run_id
        self.capacity = int(capacity)
        self.local_steps = int(local_steps)
        self.wire = wire  # dtype of the values on the wire (local-steps mode)

    @property
    def deltas(self) -> bool:
        """Whether pushes carry local progress (local-steps mode) instead of gradients."""
        return self.local_steps > 1 or self.wire != "float32"

    def paths(self, workers: int) -> list[Path]:
        """The run's files in ``/dev/shm`` (the driver removes them whatever happens)."""
        return []

    # ------------------------------------------------------------------ server side
    def serve(self, actor) -> None:
        """Start serving the workers for the server ``actor`` (``actor.s`` its
        :class:`~.server.ParameterServer`, ``actor.lock`` guarding it, ``actor.stop`` a
        :class:`threading.Event` set at close)."""

    def close(self) -> None:
        """Remove what :meth:`serve` created (after ``actor.stop`` is set)."""

    # ------------------------------------------------------------------ worker side
    def run(self, w, server, sync: bool, pipeline: bool) -> None:
        """Push ``w``'s gradients (a :class:`~.worker.Worker` holding the current copy) to
        the server actor handle ``server`` until phase 1 is over."""
        raise NotImplementedError


class RayCalls(Transport):
    """Pushes as Ray actor calls (``server.push``, or the ``server.push_sync`` barrier)."""

    name = "ray"

    def run(self, w, server, sync, pipeline):
        if self.deltas:
            return self._run_deltas(w, server, pipeline)
        ray = import_ray()
        pending = None
        while True:
            loss, g, n, version, step = w.gradient()
            if sync or not pipeline:
                reply = ray.get(server.push_sync.remote(w.rank, version, g, loss, n) if sync
                                else server.push.remote(version, g, loss, n, step))
            else:  # pipelined: collect the previous answer after computing this gradient
                reply = ray.get(pending) if pending is not None else None
                pending = None
                if reply is None or not reply["done"]:
                    if reply is not None:
                        w.receive(reply)
                    pending = server.push.remote(version, g, loss, n, step)
                    continue
            if reply["done"]:
                break
            w.receive(reply)

    def _run_deltas(self, w, server, pipeline):
        """Local-steps mode: ``local_steps`` momentum-SGD steps on the replica, then a push
        of its progress; pipelined, the next steps run while the push travels and the
        answer is merged after them (:meth:`~.worker.Worker.receive_delta`)."""
        ray = import_ray()
        dtype = np.dtype(self.wire)
        pending = None
        while True:
            loss_sum, n, steps = w.train_local(self.local_steps)
            if pending is not None:
                reply, pending = ray.get(pending), None
                if reply["done"]:
                    break
                w.receive_delta(reply)
            push = server.push_delta.remote(w.rank, w.version, w.delta(dtype), loss_sum, n,
                                            steps, w.step)
            if pipeline and math.isfinite(loss_sum):
                pending = push
                continue
            reply = ray.get(push)
            if reply["done"]:
                break
            w.receive_delta(reply)


class Mailboxes(Transport):
    """One mailbox per worker; a server thread applies pushes and writes the answers."""

    name = "shm"

    def paths(self, workers):
        return [shm.Mailbox.path_for(self.run_id, r) for r in range(workers)]

    # ------------------------------------------------------------------ server side
    def serve(self, actor):
        self.boxes = [shm.Mailbox(path, self.capacity, create=True)
                      for path in self.paths(actor.s.workers)]
        threading.Thread(target=self._serve, args=(actor,), daemon=True).start()

    def close(self):
        for box in getattr(self, "boxes", []):
            box.close(unlink=True)

    @staticmethod
    def _answer(s, box, seq, version):
        if s.done:
            box.answer(seq, shm.DONE, s.version, s.total_updates)
        elif version != s.version:
            box.answer(seq, shm.FULL, s.version, s.total_updates)
        else:
            values = get_values(s.model, out=box.values[:vector_size(s.model)])
            s.count_bytes(values.nbytes)
            box.answer(seq, shm.VALUES, s.version, s.total_updates, size=values.shape[0])

    def _serve(self, actor):
        single_threaded_kernels()  # per thread: this one applies the updates
        s, boxes = actor.s, self.boxes
        sync = s.mode == "sync"
        idle = 0
        while not actor.stop.is_set():
            seqs = [box.pending() for box in boxes]
            ready = [i for i, q in enumerate(seqs) if q]
            if not ready or (sync and len(ready) < len(boxes)):
                # Pipelined workers collect an answer only after their next gradient
                # (milliseconds), so a short nap costs no throughput and leaves the
                # cores to them; spin briefly first for the synchronous case.
                idle += 1
                if idle > 20:
                    time.sleep(2e-4)
                continue
            idle = 0
            with actor.lock:
                if sync:
                    pushes = [boxes[i].take() for i in ready]
                    s.push_many(pushes)
                    for i, p in zip(ready, pushes, strict=True):
                        self._answer(s, boxes[i], seqs[i], p[0])
                else:
                    for i in ready:
                        version, grad, loss, n, step = boxes[i].take()
                        s.apply_push(version, grad, loss, n, step)
                        self._answer(s, boxes[i], seqs[i], version)

    # ------------------------------------------------------------------ worker side
    def run(self, w, server, sync, pipeline):
        box = shm.Mailbox(shm.Mailbox.path_for(self.run_id, w.rank), self.capacity)
        while box.pending():  # a push of this worker's previous life is being answered
            time.sleep(1e-3)
        seq = None
        try:
            while True:
                # The next gradient goes straight into the slot the server is not
                # reading (it may still be applying the previous push).
                loss, g, n, version, step = w.gradient(out=box.free_slot())
                if seq is not None:  # the answer to the previous push (pipelined)
                    if self._take(w, box.wait_reply(seq), server):
                        break
                seq = box.post(g, loss, n, version, step)
                if sync or not pipeline:
                    reply, seq = box.wait_reply(seq), None
                    if self._take(w, reply, server):
                        break
        finally:
            box.close()

    @staticmethod
    def _take(w, reply, server) -> bool:
        """Apply a mailbox answer to the replica; True when phase 1 is over."""
        if reply["kind"] == shm.DONE:
            return True
        if reply["kind"] == shm.FULL:
            w.receive(import_ray().get(server.full.remote()))
        else:
            w.receive({"values": reply["values"], "version": reply["version"],
                       "step": reply["step"]})
        return False


class SharedModelPushes(Transport):
    """The server's vectors in shared memory; each worker applies its own pushes."""

    name = "shared"

    def paths(self, workers):
        return [shm.SharedModel.path_for(self.run_id)]

    # ------------------------------------------------------------------ server side
    def serve(self, actor):
        self.segment = shm.SharedModel(shm.SharedModel.path_for(self.run_id), self.capacity,
                                       create=True)
        actor.s.share(self.segment)
        threading.Thread(target=self._serve, args=(actor,), daemon=True).start()

    def close(self):
        segment = getattr(self, "segment", None)
        if segment is not None:
            segment.path.unlink(missing_ok=True)

    def _serve(self, actor):
        """The workers apply their own pushes; this thread runs the epoch ends."""
        single_threaded_kernels()
        seg = self.segment
        while not actor.stop.is_set():
            if seg[K.SH_FROZEN] and not seg[K.SH_DONE]:
                with actor.lock:
                    actor.s.shared_epoch_end()
            else:
                time.sleep(1e-3)  # an epoch end waits at most this long

    # ------------------------------------------------------------------ worker side
    def run(self, w, server, sync, pipeline):
        """Apply every push to the server's shared model; after an epoch end, pull the
        new topology and map the gradient computed on the old one onto it."""
        ray = import_ray()
        capacity = self.capacity
        seg = shm.SharedModel(shm.SharedModel.path_for(self.run_id), capacity)
        pid = os.getpid()
        # The shared model serves asynchronous pushes only (ParameterServer.share refuses
        # synchronous mode), and the asynchronous schedule is the constant lr, after the
        # lr_warmup ramp over this worker's own first steps (Worker.hyperparameters).
        mine = np.empty(capacity, np.float32)  # the replica's values (its arrays view it)
        gbuf = np.empty(capacity, np.float32)
        bind_values(w.model, mine)
        try:
            while not seg[K.SH_DONE]:
                lr, mom, wd = w.hyperparameters()
                loss, g, n, version, step = w.gradient(out=gbuf)
                # The width-aware rate of each layer's connections (its topology may have
                # changed at the last epoch end).
                ends = np.cumsum([la.nnz for la in w.model.layers]).astype(np.int64)
                lrs = layer_lrs(lr, w.model.layers, w.config.fan_in_ref)
                stale = dropped = 0
                t0 = time.perf_counter()
                while True:
                    r = K.shared_push(seg.header, seg.stats, seg.values, seg.velocity, g, mine,
                                      lr, mom, wd, pid, version, step, loss, n, stale, dropped,
                                      20000, ends, lrs)
                    if r > 0:
                        w.step = int(r)  # the server's count once this update is in
                        break
                    if time.perf_counter() - t0 > 600:
                        raise TimeoutError("the parameter server did not open the shared "
                                           "model for 600 s")
                    if r == -1:  # locked for long: its owner may have died
                        seg.break_dead_lock()
                        continue
                    while (seg[K.SH_FROZEN] and not seg[K.SH_DONE]
                           and time.perf_counter() - t0 < 600):
                        time.sleep(1e-4)  # the server is ending an epoch
                    if seg[K.SH_DONE]:
                        break
                    if seg[K.SH_VERSION] != w.version:  # a new topology: pull, map
                        old = ([la.n_out for la in w.model.layers], topology_keys(w.model))
                        w.receive(ray.get(server.full.remote()))
                        bind_values(w.model, mine)
                        g, dropped = map_gradient(old, w.model, g)
                        if g is None:  # neurons were removed since: drop it
                            K.shared_add(seg.header, K.SH_DROPPED_UPDATES, 1)
                            break
                        stale, version = 1, w.version
        finally:
            seg.close()


#: Transport classes by the name ``ParallelConfig.transport`` resolves to.
TRANSPORT_CLASSES = {cls.name: cls for cls in (RayCalls, Mailboxes, SharedModelPushes)}
