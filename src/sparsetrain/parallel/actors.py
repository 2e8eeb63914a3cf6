"""The Ray actors of a parallel run: the parameter server and the workers.

Both are plain classes that forward to the Ray-free :class:`~.server.ParameterServer` and
:class:`~.worker.Worker`; :func:`actor_classes` turns them into Ray actor classes on first
use, so ``import sparsetrain.parallel`` does not need Ray. How phase-1 pushes travel is
the run's :class:`~.transports.Transport`, whose server side the server actor starts and
whose worker side each worker actor runs.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from ..config import TrainConfig
from .server import ParameterServer
from .session import import_ray
from .state import full_state
from .transports import Transport, single_threaded_kernels
from .worker import Worker


class ServerActor:
    """Forwards to a :class:`ParameterServer` under a lock. The transport may serve the
    workers on this node from a thread (mailboxes: every push; shared model: the epoch
    ends), while Ray calls (status, full states, pushes of workers elsewhere) are served by
    the actor's event loop.

    Parameters
    ----------
    kwargs : dict
        :class:`ParameterServer` arguments, ``config`` as a dict.
    X_test, y_test : arrays or None
    transport : Transport
    """

    def __init__(self, kwargs, X_test, y_test, transport: Transport):
        single_threaded_kernels()
        kwargs["config"] = TrainConfig.from_dict(kwargs["config"])
        self.s = ParameterServer(**kwargs, X_test=X_test, y_test=y_test)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._waiting = {}
        self._event = asyncio.Event()
        self.transport = transport
        transport.serve(self)

    async def close(self):
        self.stop.set()
        self.transport.close()

    async def pid(self):
        return os.getpid()

    async def push(self, version, grad, loss, n, step):
        with self.lock:
            return self.s.push(version, grad, loss, n, step)

    async def push_delta(self, rank, version, delta, loss_sum, n, steps, step):
        with self.lock:
            return self.s.push_delta(rank, version, delta, loss_sum, n, steps, step)

    async def push_sync(self, rank, version, grad, loss, n):
        """Barrier: the K-th push of a step applies the mean; everyone gets the result.
        A restarted worker's repeated push replaces its earlier one."""
        self._waiting[rank] = (version, grad, loss, n)
        if len(self._waiting) >= self.s.workers:
            pushes, self._waiting = list(self._waiting.values()), {}
            with self.lock:
                self.s.push_many(pushes)
            event, self._event = self._event, asyncio.Event()
            event.set()
        else:
            await self._event.wait()
        with self.lock:
            return self.s.reply(version)

    async def full(self, rank=None):
        with self.lock:
            return self.s.full(rank)

    async def status(self):
        with self.lock:
            st = self.s.status()
            if self.s.shared is not None:  # the shared model counts the updates
                st["updates"], st["total_updates"] = self.s.shared_counts()
            return st

    async def take_rows(self):
        with self.lock:
            return self.s.take_rows()

    async def snapshot(self):
        with self.lock:
            return self.s.snapshot()

    async def take_events(self):
        with self.lock:
            return self.s.take_events()

    async def note_restart(self, rank):
        with self.lock:
            self.s.note_restart(rank)

    async def note_lost(self, rank):
        with self.lock:
            self.s.note_lost(rank)

    async def note_start(self, rank, pid, node=None):
        with self.lock:
            self.s.note_start(rank, pid, node)


class WorkerActor:
    """Holds a :class:`Worker` (a replica and a data shard); ``threads`` compute threads.
    A worker Ray restarted after a crash starts a new batch stream and reports itself."""

    def __init__(self, rank, X, y, config, threads, X_test, y_test):
        import numba

        from .. import _kernels

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        _kernels.enable_flush_to_zero()
        restarted = import_ray().get_runtime_context().was_current_actor_reconstructed
        self.restarted = bool(restarted)
        self.w = Worker(rank, X, y, TrainConfig.from_dict(config),
                        start=int(time.time_ns() % (1 << 31)) if restarted else 0,
                        X_test=X_test, y_test=y_test)

    def pid(self):
        return os.getpid()

    def node(self):
        """``(Ray node id, node IP address)`` of this worker's node."""
        ray = import_ray()
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def run_phase1(self, server, transport: Transport, sync: bool, pipeline: bool):
        """Push gradients until the server says phase 1 is over; returns counters."""
        ray = import_ray()
        if self.restarted:
            ray.get(server.note_restart.remote(self.w.rank))
            self.restarted = False
        w = self.w
        ray.get(server.note_start.remote(w.rank, os.getpid(), self.node()))
        reply = ray.get(server.full.remote(w.rank))
        if transport.deltas:  # a new server (or a first start): a new copy of its values
            w.receive_delta(reply, fresh=True)
        else:
            w.receive(reply)
        t0 = time.perf_counter()
        transport.run(w, server, sync, pipeline)
        return {"rank": w.rank, "steps": w.steps, "compute_seconds": w.compute_seconds,
                "seconds": time.perf_counter() - t0}

    def start_phase2(self, state):
        self.w.receive({"state": state, "version": -1})

    def local_epoch(self, epoch):
        return self.w.local_epoch(epoch)

    def state(self):
        return full_state(self.w.model)


_REMOTE = {}


def actor_classes():
    """``(server, worker)`` Ray actor classes, made on first use (Ray is optional): the
    server takes no CPU (it mostly waits), each worker one."""
    if not _REMOTE:
        ray = import_ray()
        _REMOTE["server"] = ray.remote(num_cpus=0)(ServerActor)
        _REMOTE["worker"] = ray.remote(num_cpus=1)(WorkerActor)
    return _REMOTE["server"], _REMOTE["worker"]
