"""WASAP-SGD and WASSP-SGD on Ray (SPEC 1.8): the options and the driver.

The actors are in :mod:`.actors`, the ways pushes travel in :mod:`.transports`, the Ray
session in :mod:`.session`.

Layout of a run with ``K`` workers:

* the **driver** (this process) splits the training set into ``K`` shards, puts each in
  Ray's object store once, starts the actors, shows the progress bar, writes
  ``metrics.csv``/``model.npz`` after every phase-1 epoch and the final model;
* the **parameter server**, a Ray actor holding a :class:`~.server.ParameterServer`
  (``num_cpus=0``: it mostly waits);
* **workers**, Ray actors (``num_cpus=1``, single-threaded kernels by default) holding a
  :class:`~.worker.Worker`. A worker that dies is restarted by Ray; it pulls the current
  state from the server and goes on with its shard (the event is recorded in metrics).

Phase 1 (epochs ``1..e1``): asynchronous (``wasap``) or synchronous (``wassp``) updates
at the server. Asynchronous pushes on the server's node go through the shared model
(:class:`~.shm.SharedModel`): the worker applies its gradient to the server's vectors
under a lock and copies the result back in the same pass, and the server's thread runs
only the epoch ends. Otherwise (mailboxes, Ray calls) each asynchronous worker pipelines
one push: it computes the next gradient while its previous one travels, so its copy is
at most one update staler than with blocking pushes. Phase 2 (``e1+1..E``):
every worker trains its replica on its shard, one pass per epoch, with its own SET
evolution. At the end the replicas are averaged over the union topology and pruned back
to the per-layer connection counts of the end of phase 1.

By default the library starts an embedded Ray on this machine (loopback only, no
dashboard) and stops it at the end; ``ray_address`` joins a running cluster instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import NonFiniteLossError, SparsetrainError
from ..io import write_arrays
from ..model import SparseMLP
from ..schedule import METRIC_COLUMNS, metrics_row
from ..trainer import Trainer
from . import _kernels as K
from . import shm
from .actors import actor_classes
from .session import RaySession, import_ray
from .state import average_models, full_state, model_from_state, vector_size
from .transports import TRANSPORT_CLASSES

MODES = ("wasap", "wassp")
TRANSPORTS = ("auto", "shared", "shm", "ray")
COMPRESS = ("auto", "none", "float16")
#: Local steps per push when pushes are Ray calls (``local_steps=None``), chosen by
#: ``benchmarks/cluster_scaling.py`` (docs/benchmarks/cluster.md): throughput against
#: accuracy over the two-namespace cluster.
DEFAULT_LOCAL_STEPS = 16
PARALLEL_COLUMNS = [*METRIC_COLUMNS, "phase", "workers", "samples_per_second", "bytes_moved",
                    "stale_updates", "mean_staleness", "dropped_updates", "dropped_entries",
                    "replica_test_accuracy", "events"]


@dataclass
class ParallelConfig:
    """Options of a parallel run.

    Attributes
    ----------
    mode : {"wasap", "wassp"}
        Asynchronous or synchronous phase 1.
    workers : int
        Number of workers ``K``.
    phase1_epochs : int or None
        Last epoch of phase 1 (default: ``round(0.7 * epochs)``, the paper's); phase 2
        runs to the last epoch.
    warmup_epochs : float
        WASSP: epochs of linear learning-rate warm-up from ``lr`` to ``K * lr``.
    worker_threads : int
        Compute threads per worker (1: K workers use K cores).
    ray_address : str or None
        Address of a running Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``);
        None starts an embedded Ray on this machine.
    max_restarts : int
        How often Ray restarts a dead worker.
    pipeline : bool or None
        WASAP over mailboxes or Ray calls: compute the next gradient (or local steps)
        while the previous push travels (hides the transfer; the copy is one push staler
        than with blocking pushes). Pushes to a shared model are applied at once, not
        pipelined. None: pipelined per-step pushes, blocking local-steps pushes (with
        their doubled staleness, pipelined local steps started training at 3x the loss in
        docs/benchmarks/cluster.md, and ``local_steps`` already amortises the wait).
    transport : {"auto", "shared", "shm", "ray"}
        How phase-1 pushes travel (see :mod:`sparsetrain.parallel.shm`): ``shared``, the
        server's model in shared memory, each worker applying its own pushes under a lock
        (asynchronous mode, same node); ``shm``, shared-memory mailboxes answered by the
        server's thread (same node); ``ray``, Ray actor calls. ``auto``: ``shared``
        (WASAP) or ``shm`` (WASSP) with the embedded Ray on x86-64 Linux, ``ray`` on a
        cluster.
    local_steps : int or None
        WASAP over Ray calls: momentum-SGD steps a worker runs on its replica between two
        pushes, each push carrying the replica's progress over them, which the server
        averages over the workers pushing (asynchronous model averaging, the local-SGD
        family; :meth:`~.server.ParameterServer.push_delta`). 1 with ``compress="none"``
        is the paper's per-step semantics (one gradient per push). None:
        :data:`DEFAULT_LOCAL_STEPS` over Ray calls, 1 for the same-node transports (whose
        pushes cost microseconds).
    compress : {"auto", "none", "float16"}
        WASAP over Ray calls: the pushed progress and the answered change as float16,
        with error feedback (what rounding leaves out goes with the next message).
        ``auto``: float16 over Ray calls, none otherwise.
    """

    mode: str = "wasap"
    workers: int = 2
    phase1_epochs: int | None = None
    warmup_epochs: float = 5.0
    worker_threads: int = 1
    ray_address: str | None = None
    max_restarts: int = 3
    pipeline: bool | None = None
    transport: str = "auto"
    local_steps: int | None = None
    compress: str = "auto"

    def validate(self, epochs: int) -> ParallelConfig:
        if self.mode not in MODES:
            raise SparsetrainError(f"The 'parallel' option must be one of {list(MODES)}. "
                                   f"Got {self.mode!r} instead.")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise SparsetrainError(f"The 'workers' option must be an integer >= 1. Got "
                                   f"{self.workers!r} instead.")
        if self.phase1_epochs is None:
            self.phase1_epochs = max(1, min(epochs, round(0.7 * epochs)))
        if not isinstance(self.phase1_epochs, int) or not 1 <= self.phase1_epochs <= epochs:
            raise SparsetrainError(f"The 'phase1_epochs' option must be in [1, {epochs}] (the "
                                   f"epochs). Got {self.phase1_epochs!r} instead.")
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise SparsetrainError(f"The 'warmup_epochs' option must be >= 0. Got "
                                   f"{self.warmup_epochs!r} instead.")
        if self.transport not in TRANSPORTS:
            raise SparsetrainError(f"The 'transport' option must be one of {list(TRANSPORTS)}. "
                                   f"Got {self.transport!r} instead.")
        if self.transport in ("shm", "shared") and not shm.available():
            raise SparsetrainError(f"transport={self.transport!r} needs x86-64 Linux with "
                                   "/dev/shm; use transport='ray'")
        if self.transport == "shared" and self.mode != "wasap":
            raise SparsetrainError("transport='shared' serves asynchronous pushes (WASAP); "
                                   f"use 'shm' or 'ray' with {self.mode!r}")
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or (
                self.max_restarts < 0):
            raise SparsetrainError(f"The 'max_restarts' option must be an integer >= 0. Got "
                                   f"{self.max_restarts!r} instead.")
        if not isinstance(self.worker_threads, int) or self.worker_threads < 1:
            raise SparsetrainError(f"The 'worker_threads' option must be an integer >= 1. Got "
                                   f"{self.worker_threads!r} instead.")
        if self.local_steps is not None and (isinstance(self.local_steps, bool) or not isinstance(
                self.local_steps, int) or not 1 <= self.local_steps <= 10_000):
            raise SparsetrainError(f"The 'local_steps' option must be an integer in [1, 10000] "
                                   f"or None. Got {self.local_steps!r} instead.")
        if self.pipeline is not None and not isinstance(self.pipeline, bool):
            raise SparsetrainError(f"The 'pipeline' option must be True, False or None. Got "
                                   f"{self.pipeline!r} instead.")
        if self.compress not in COMPRESS:
            raise SparsetrainError(f"The 'compress' option must be one of {list(COMPRESS)}. "
                                   f"Got {self.compress!r} instead.")
        deltas = (self.local_steps or 1) > 1 or self.compress == "float16"
        if deltas and (self.mode != "wasap" or self.resolved_transport() != "ray"):
            raise SparsetrainError(
                "local_steps > 1 and compress='float16' are for WASAP pushes over Ray calls "
                f"(a cluster, or transport='ray'); got mode {self.mode!r} with transport "
                f"{self.resolved_transport()!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_transport(self) -> str:
        """The transport ``auto`` stands for here (see the class docstring)."""
        if self.transport != "auto":
            return self.transport
        if self.ray_address is not None or not shm.available():
            return "ray"
        return "shared" if self.mode == "wasap" else "shm"

    def resolved_pipeline(self) -> bool:
        """Whether pushes are pipelined (``pipeline=None``: per-step pushes only)."""
        if self.pipeline is not None:
            return bool(self.pipeline)
        return self.resolved_local_steps() == 1 and self.resolved_wire() == "float32"

    def resolved_local_steps(self) -> int:
        """The local steps per push ``local_steps=None`` stands for here."""
        if self.local_steps is not None:
            return self.local_steps
        ray_calls = self.mode == "wasap" and self.resolved_transport() == "ray"
        return DEFAULT_LOCAL_STEPS if ray_calls else 1

    def resolved_wire(self) -> str:
        """The dtype of pushed values ``compress`` stands for here."""
        if self.compress == "auto":
            ray_calls = self.mode == "wasap" and self.resolved_transport() == "ray"
            return "float16" if ray_calls else "float32"
        return "float16" if self.compress == "float16" else "float32"


# ---------------------------------------------------------------------- the driver
class _ServerLost(Exception):
    """The parameter server's process died during phase 1 (restarted by the runner)."""


class ParallelTrainer(Trainer):
    """Runs a :class:`TrainConfig` with WASAP-SGD or WASSP-SGD; same outputs as
    :class:`~sparsetrain.trainer.Trainer`, with ``phase`` and ``workers`` (and traffic)
    columns in ``metrics.csv``.

    Checkpoints: after every phase-1 epoch (``model.npz`` = the server's model), and the
    final averaged model. ``--resume`` continues phase 1 from its last epoch; a run stopped
    during phase 2 restarts phase 2 from the end of phase 1.
    """

    columns = PARALLEL_COLUMNS

    def __init__(self, config: TrainConfig, parallel: ParallelConfig, out_dir=None, *,
                 progress=None, run_info=None, verbose=True):
        super().__init__(config, out_dir, progress=progress, run_info=run_info, verbose=verbose)
        self.parallel = parallel.validate(self.config.epochs)
        if self.config.val_fraction:
            raise SparsetrainError(f"val_fraction (a validation split) is for sequential "
                                   f"training; got {self.config.val_fraction!r} with parallel "
                                   "training, which trains on the whole training set: leave "
                                   "--val-fraction out, or train without --parallel")
        self.run_info["parallel"] = self.parallel.to_dict()
        self.worker_stats: list[dict] = []
        self.mailbox_paths: list = []  # the run's /dev/shm files: mailboxes or shared model
        self._events: list[str] = []  # server events still to be put in a metrics row

    @classmethod
    def from_checkpoint(cls, out_dir, *, epochs=None, progress=None):
        trainer, model = Trainer.from_checkpoint(out_dir, progress=progress)
        if "parallel" not in trainer.run_info:
            raise SparsetrainError(f"{out_dir} holds a sequential run; resume it without "
                                   "--parallel")
        if epochs is not None and epochs != trainer.config.epochs:
            raise SparsetrainError(f"a parallel run cannot change its epochs on --resume "
                                   f"(saved {trainer.config.epochs}, got {epochs})")
        saved = trainer.run_info["parallel"]
        try:  # a checkpoint is a boundary: its parallel settings pass validate (in __init__)
            par = ParallelConfig(**saved)
            new = cls(trainer.config, par, out_dir, progress=progress, run_info=trainer.run_info)
        except (TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, SparsetrainError) else f"{exc!r}"
            raise SparsetrainError(f"{out_dir}/model.npz has damaged parallel settings "
                                   f"({reason}); it was altered") from None
        new.epoch = trainer.epoch
        new.history = trainer.history
        if new.epoch > par.phase1_epochs and new.epoch < new.config.epochs:
            new.epoch = par.phase1_epochs  # phase 2 restarts from the end of phase 1
            new.history = [r for r in new.history if r["epoch"] <= new.epoch]
        return new, model

    def _save_state(self, state: dict, epoch: int, evolved: bool = True) -> None:
        if self.out_dir is None:
            return
        meta = json.loads(str(state["meta"]))
        meta.update({"epoch": epoch, "evolved": evolved, "config": self.config.to_dict(),
                     "history": self.history, "run": self.run_info})
        arrays = dict(state)
        arrays["meta"] = np.array(json.dumps(meta))
        write_arrays(self.checkpoint_path, arrays)
        self.write_metrics()

    def fit(self, model: SparseMLP, X_train, y_train, X_test=None, y_test=None) -> list[dict]:
        """Train epochs ``self.epoch + 1 .. epochs`` in parallel; returns the history and
        leaves the final (averaged) model in ``self.model``."""
        cfg, par = self.config, self.parallel
        X_train, y_train, X_test, y_test = self.prepare_data(model, X_train, y_train, X_test,
                                                             y_test)
        k = par.workers
        n = X_train.shape[0]
        if n < k:
            raise SparsetrainError(f"{k} workers need at least {k} training samples; got {n}")
        self.model = model
        self._test = (X_test, y_test) if X_test is not None else None
        stale = shm.remove_stale()  # a killed driver's segments stay until someone removes them
        if stale:
            self._events.append(f"removed {len(stale)} shared-memory segment(s) of a dead run")
        ray = import_ray()
        with RaySession(par.ray_address, num_cpus=max(os.cpu_count() or 1, k)):
            ServerActor, WorkerActor = actor_classes()
            perm = np.random.default_rng([cfg.seed, 0, 2]).permutation(n)
            shards = np.array_split(perm, k)
            test_ref = (ray.put(X_test), ray.put(y_test)) if X_test is not None else (None, None)
            # The driver keeps the shard references: a restarted worker reads them again.
            self._shards = [(ray.put(X_train[s]), ray.put(y_train[s])) for s in shards]
            self._server_options, worker_options = self._placement(ray)
            workers = [WorkerActor.options(max_restarts=par.max_restarts,
                                           max_task_retries=par.max_restarts,
                                           **worker_options).remote(
                r, xr, yr, cfg.to_dict(), par.worker_threads, *test_ref)
                for r, (xr, yr) in enumerate(self._shards)]
            self.workers = workers
            # rank -> (node id, address): where each worker runs, to notice a lost node
            self.worker_nodes = dict(enumerate(ray.get([w.node.remote() for w in workers])))
            if par.ray_address is not None:
                self._events.append("placement: " + ", ".join(
                    f"worker {r} on {ip}" for r, (_, ip) in sorted(self.worker_nodes.items())))
            self._lost: dict[int, str] = {}  # rank -> the dead node it was lost with
            self._nodes_checked = 0.0
            bar = tqdm(total=cfg.epochs, initial=self.epoch, desc=f"{par.mode} x{k}",
                       unit="epoch",
                       disable=(None if self.progress is None else not self.progress))
            try:
                if self.epoch < par.phase1_epochs:
                    model = self._phase1_restarting(model, workers, ServerActor, n, test_ref,
                                                    bar)
                if self.epoch < cfg.epochs:
                    model = self._phase2(model, [w for r, w in enumerate(workers)
                                                 if r not in self._lost], bar)
                if self._events and self.history:  # no row left to carry them
                    last = self.history[-1]
                    last["events"] = "; ".join([e for e in [last.get("events")] if e]
                                               + self._events)
                    self._events = []
                    self.write_metrics()
            finally:
                bar.close()
                for w in workers:
                    ray.kill(w)
                self.plot()
        self.model = model
        return self.history

    def _phase1_restarting(self, model, workers, ServerActor, n, test_ref, bar):
        """:meth:`_phase1`, with a new parameter server started from the last phase-1
        state (the last checkpoint, or the start of phase 1) each time the server is lost
        (its process killed or crashed), at most ``max_restarts`` times; ``events`` says
        so. The work of the epoch in progress is lost."""
        start_epoch, start_history = self.epoch, list(self.history)
        self._phase1_state = None  # (epoch, state) of the last checkpoint written
        for attempt in range(self.parallel.max_restarts + 1):
            try:
                return self._phase1(model, workers, ServerActor, n, test_ref, bar)
            except _ServerLost as exc:
                if attempt == self.parallel.max_restarts:
                    kept = (f"the last checkpoint (epoch {self.epoch}) is kept at "
                            f"{self.checkpoint_path}" if self.out_dir and self.epoch else
                            "no checkpoint was written")
                    raise SparsetrainError(
                        f"the parameter server was lost {attempt + 1} times in phase 1 "
                        f"({exc}); {kept}; rerun with --resume") from None
                if self._phase1_state is not None:
                    self.epoch, state = self._phase1_state
                    model, _ = model_from_state(state)
                    self.history = [r for r in self.history if r["epoch"] <= self.epoch]
                else:
                    self.epoch, self.history = start_epoch, list(start_history)
                bar.n = self.epoch
                bar.refresh()
                self._events.append(f"parameter server lost in phase 1 ({exc}); restarted "
                                    f"from the state after epoch {self.epoch}")
        raise AssertionError("unreachable")

    def _placement(self, ray) -> tuple[dict, dict]:
        """Ray options of ``(the server, the workers)``: on a cluster, the parameter server
        on the driver's node (the head, normally) and the workers spread over the nodes,
        one per node while there are nodes enough; on one machine, Ray's defaults."""
        if self.parallel.ray_address is None:
            return {}, {}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        return ({"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)},
                {"scheduling_strategy": "SPREAD"})

    def _check_nodes(self, nodes: dict[int, str], epoch: int, server=None) -> None:
        """Note workers whose node died (``nodes``: rank -> node id, the latest known),
        at most once a second: an event each, and ``self._lost`` (the run goes on
        without them; Ray restarts such a worker when a node has room, and it reports
        back). A lost worker seen on a live node again is taken back. ``server``: the
        phase-1 parameter server, told of each loss (it averages over the others)."""
        now = time.monotonic()
        if now - self._nodes_checked < 1.0:
            return
        self._nodes_checked = now
        ray = import_ray()
        try:
            alive = {n["NodeID"]: bool(n["Alive"]) for n in ray.nodes()}
        except Exception:  # noqa: BLE001 - the GCS is busy: check again next time
            return
        k = self.parallel.workers
        for rank, node in sorted(nodes.items()):
            if not alive.get(node, False) and rank not in self._lost:
                self._lost[rank] = node
                if server is not None:
                    server.note_lost.remote(rank)
                where = self.worker_nodes.get(rank, (node, "?"))[1]
                left = k - len(self._lost)
                self._events.append(f"worker {rank} lost with its node {where} in epoch "
                                    f"{epoch + 1}; continuing with {left} worker"
                                    f"{'s' if left != 1 else ''}")
            elif alive.get(node, False) and self._lost.get(rank) not in (None, node):
                del self._lost[rank]  # restarted on a live node (its restart is an event)

    def _stop_workers(self, transport, workers, runs) -> None:
        """Workers of a lost server stop: the shared model's done flag is raised (they
        apply their own pushes and would wait for an epoch end); workers calling the server
        fail by themselves; any still running after 30 s is killed (Ray restarts it)."""
        ray = import_ray()
        for path in transport.paths(len(workers)):
            if path.name.endswith("-model") and path.exists():
                seg = shm.SharedModel(path, transport.capacity)
                seg.header[K.SH_DONE] = 1
                seg.close()
        done, pending = ray.wait(runs, timeout=30, num_returns=len(runs))
        for w, ref in zip(workers, runs, strict=True):
            if ref in pending:
                ray.kill(w, no_restart=False)

    def _phase1(self, model, workers, ServerActor, n, test_ref, bar):
        ray = import_ray()
        cfg, par = self.config, self.parallel
        transport = TRANSPORT_CLASSES[par.resolved_transport()](
            shm.new_run_id(), vector_size(model), local_steps=par.resolved_local_steps(),
            wire=par.resolved_wire())
        self.mailbox_paths = transport.paths(par.workers)
        server = ServerActor.options(**self._server_options).remote(dict(
            state=full_state(model), config=cfg.to_dict(), n_train=n, workers=par.workers,
            mode="sync" if par.mode == "wassp" else "async", phase1_epochs=par.phase1_epochs,
            start_epoch=self.epoch, warmup_epochs=par.warmup_epochs), *test_ref, transport)
        self.server = server
        try:
            def start(w):
                return w.run_phase1.remote(server, transport, par.mode == "wassp",
                                           par.resolved_pipeline())

            runs = [start(w) for w in workers]  # by rank; a failed call is made again
            stats, left_out = {}, set()
            pending = list(runs)
            while True:
                done, pending = ray.wait(pending, timeout=0.25, num_returns=len(pending))
                try:
                    status = ray.get(server.status.remote())
                    rows, states = ray.get(server.take_rows.remote())
                except ray.exceptions.RayActorError as exc:  # its process died
                    self._stop_workers(transport, workers, runs)
                    raise _ServerLost(type(exc).__name__) from None
                for row in rows:  # a checkpoint per epoch, each with the history up to it
                    self._log(row)
                    self.epoch = row["epoch"]
                    if self.epoch in states:
                        self._save_state(states[self.epoch], self.epoch,
                                         evolved=self.epoch < cfg.epochs)
                        self._phase1_state = (self.epoch, states[self.epoch])
                    bar.update(1)
                if status["failed"]:
                    ray.get(runs)
                    kept = (f"the last good checkpoint (epoch {self.epoch}) is kept at "
                            f"{self.checkpoint_path}" if self.out_dir and self.epoch else
                            "no checkpoint was written")
                    raise NonFiniteLossError(f"training stopped: {status['failed']}; {kept}. Try a "
                                             f"lower learning rate (--lr, now {cfg.lr:g}).")
                bar.set_postfix(update=f"{status['updates']}/{status['updates_per_epoch']}",
                                refresh=False)
                self.worker_nodes.update({r: tuple(n) for r, n in status["nodes"].items()})
                self._check_nodes({r: n for r, (n, _) in self.worker_nodes.items()},
                                  status["epoch"], server)
                for ref in done:
                    rank = runs.index(ref)
                    try:
                        stats[rank] = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        # Its process or node died during the call (a killed node's calls
                        # fail as unavailable instead of being retried): call it again;
                        # Ray restarts the actor, on a node with room, and the call waits.
                        if not status["done"]:
                            runs[rank] = start(workers[rank])
                            pending.append(runs[rank])
                        else:
                            left_out.add(rank)
                if not pending:
                    break
                if status["done"] and all(runs.index(ref) in self._lost for ref in pending):
                    left_out.update(runs.index(ref) for ref in pending)
                    break
            for rank in sorted(left_out):  # Ray would restart it for a phase that is over
                ray.kill(workers[rank])
                self._lost.setdefault(rank, "")
                self._events.append(f"worker {rank} left out of phase 2 (lost in phase 1)")
            self.worker_stats = [stats[r] for r in sorted(stats)]
            try:
                _, state = ray.get(server.snapshot.remote())
            except ray.exceptions.RayActorError as exc:
                raise _ServerLost(type(exc).__name__) from None
            # e.g. a worker restarted after the last phase-1 epoch: report it with the next row
            self._events += ray.get(server.take_events.remote())
        finally:  # also on Ctrl-C or an error: stop the server, remove the mailboxes
            try:
                ray.get(server.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the server may already be gone
                pass
            ray.kill(server)
            for path in self.mailbox_paths:
                path.unlink(missing_ok=True)
        model, _ = model_from_state(state)
        return model

    def _phase2(self, model, workers, bar):
        ray = import_ray()
        cfg = self.config
        targets = [la.nnz for la in model.layers]
        state_ref = ray.put(full_state(model))
        ray.get([w.start_phase2.remote(state_ref) for w in workers])
        alive = list(workers)  # replicas still training; a lost one is left out (events)
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            alive, parts = self._gather(alive, workers, [w.local_epoch.remote(epoch)
                                                         for w in alive], epoch)
            # The replicas run side by side: an epoch takes as long as the slowest one.
            train_s, eval_s, evolution_s = (max(p[k] for p in parts) for k in (
                "train_seconds", "eval_seconds", "evolution_seconds"))
            extra = {"phase": "local", "workers": len(alive), "bytes_moved": 0, "events": "",
                     "samples_per_second": sum(p["samples"] for p in parts) / train_s}
            test = {}
            if "test_accuracy" in parts[0]:  # mean over the replicas
                test = {k: float(np.mean([p[k] for p in parts]))
                        for k in ("test_loss", "test_accuracy")}
            connections = targets
            if epoch == cfg.epochs:
                t1 = time.perf_counter()
                alive, states = self._gather(alive, workers, [w.state.remote() for w in alive],
                                             epoch)
                extra["bytes_moved"] = sum(a.nbytes for s in states for a in s.values())
                model, _ = average_models(states, targets)
                extra["phase"] = "averaged"
                extra["replica_test_accuracy"] = test.get("test_accuracy")
                if self._test is not None:
                    test["test_loss"], test["test_accuracy"] = model.evaluate(*self._test)
                evolution_s += time.perf_counter() - t1
                connections = [la.nnz for la in model.layers]
            row = metrics_row(epoch, float(np.mean([p["train_loss"] for p in parts])), test,
                              (time.perf_counter() - t0, train_s, eval_s, evolution_s),
                              connections, model.sizes, **extra)
            self._log(row)
            self.epoch = epoch
            bar.update(1)
        self.evolved = False
        self._save(model)
        return model

    def _gather(self, alive, workers, refs, epoch):
        """``(workers still alive, their results)`` of one phase-2 call per live worker.

        A worker that died (kill -9, out of memory, a lost node) is left out and the run
        goes on with the other replicas, saying so in ``events``: Ray restarts the actor,
        but its replica of this phase lived only in the dead process. A training error
        raised by a worker (a non-finite loss) stops the run as in sequential training.
        """
        ray = import_ray()
        got, lost = {}, []
        pending = dict(zip(refs, alive, strict=True))
        while pending:
            # A worker whose node died would be restarted by Ray when a node has room, its
            # call retried: waiting for it could take forever, so lost nodes are checked.
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in done:
                w = pending.pop(ref)
                try:
                    got[workers.index(w)] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, NonFiniteLossError):
                        raise NonFiniteLossError(str(cause)) from None
                    lost.append(workers.index(w))  # died, or restarted without its replica
            if pending:
                ranks = {workers.index(w): ref for ref, w in pending.items()}
                self._check_nodes({r: self.worker_nodes[r][0] for r in ranks}, epoch - 1)
                for r in [r for r in ranks if r in self._lost]:
                    del pending[ranks[r]]
                    ray.kill(workers[r])
        kept = [w for w in alive if workers.index(w) in got]
        results = [got[workers.index(w)] for w in kept]
        for rank in lost:
            self._events.append(f"worker {rank} lost in phase 2 at epoch {epoch}; continuing "
                                f"with {len(kept)} replica{'s' if len(kept) != 1 else ''}")
        if not kept:
            kept_at = (f"the last checkpoint (epoch {self.epoch}) is kept at {self.checkpoint_path}"
                       if self.out_dir and self.epoch else "no checkpoint was written")
            raise SparsetrainError(f"every worker was lost in phase 2 (epoch {epoch}); {kept_at}; "
                                   "rerun with --resume")
        return kept, results

    def _log(self, row: dict) -> None:
        if self._events:
            row["events"] = "; ".join([e for e in [row.get("events")] if e] + self._events)
            self._events = []
        self.history.append(row)
        if self.verbose:
            acc = f", test accuracy {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
            tqdm.write(f"epoch {row['epoch']}/{self.config.epochs} [{row['phase']}]: train loss "
                       f"{row['train_loss']:.4f}{acc}, {row['epoch_seconds']:.2f} s, "
                       f"{row.get('samples_per_second', 0):.0f} samples/s"
                       + (f" ({row['events']})" if row.get("events") else ""))
