"""WASAP-SGD / WASSP-SGD end to end on an embedded Ray (small models; skipped without Ray)."""

import csv
import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from sklearn.datasets import make_classification  # noqa: E402

from sparsetrain.cli import main  # noqa: E402
from sparsetrain.config import make_config  # noqa: E402
from sparsetrain.io import load_model  # noqa: E402
from sparsetrain.parallel import ParallelConfig, ParallelTrainer, RaySession, shm  # noqa: E402
from sparsetrain.trainer import build_model  # noqa: E402


@pytest.fixture(scope="module")
def ray_session():
    with RaySession(num_cpus=2) as session:
        yield session


def _data(n=3000, d=30, seed=0):
    X, y = make_classification(n_samples=n, n_features=d, n_informative=10, n_classes=3,
                               random_state=seed)
    X = X.astype(np.float32)
    cut = int(0.8 * n)
    return X[:cut], y[:cut], X[cut:], y[cut:]


@pytest.mark.parametrize("mode, transport, options", [
    ("wasap", "auto", {}), ("wassp", "auto", {}), ("wasap", "shm", {}),
    ("wasap", "ray", {}),  # a cluster's defaults: local steps, float16 on the wire
    ("wasap", "ray", {"local_steps": 1, "compress": "none"}),  # the paper's per-step pushes
    ("wasap", "ray", {"local_steps": 4, "compress": "none", "pipeline": True}),
    ("wassp", "ray", {})])
def test_parallel_run_end_to_end(ray_session, tmp_path, mode, transport, options):
    if transport == "shm" and not shm.available():
        pytest.skip("mailboxes need x86-64 Linux")
    Xtr, ytr, Xte, yte = _data()
    cfg = make_config(None, hidden=(64, 32), epsilon=5.0, epochs=4, batch_size=32, seed=1)
    model = build_model(cfg, Xtr, 3)
    targets = [la.nnz for la in model.layers]
    par = ParallelConfig(mode=mode, workers=2, phase1_epochs=2, transport=transport, **options)
    trainer = ParallelTrainer(cfg, par, tmp_path, progress=False, verbose=False)
    history = trainer.fit(model, Xtr, ytr, Xte, yte)
    assert [r["phase"] for r in history] == ["sync" if mode == "wassp" else "async"] * 2 + [
        "local", "averaged"]
    assert all(r["workers"] == 2 for r in history)
    assert history[-1]["test_accuracy"] > 0.5  # 3 balanced classes: chance is 1/3
    assert history[0]["bytes_moved"] > 0 and history[2]["bytes_moved"] == 0
    final = trainer.model
    assert [la.nnz for la in final.layers] == targets  # averaging pruned back to the targets
    saved, meta = load_model(tmp_path / "model.npz")
    assert meta["epoch"] == 4 and meta["run"]["parallel"]["mode"] == mode
    np.testing.assert_array_equal(saved.predict(Xte), final.predict(Xte))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert {"phase", "workers", "bytes_moved", "samples_per_second"} <= set(rows[0])
    assert (tmp_path / "learning_curve.png").exists()


def test_worker_killed_in_phase1_is_restarted_and_run_finishes(ray_session, tmp_path):
    Xtr, ytr, Xte, yte = _data(n=8000, d=60, seed=2)
    cfg = make_config(None, hidden=(300, 300), epsilon=20.0, epochs=13, batch_size=32, seed=4)
    model = build_model(cfg, Xtr, 3)
    par = ParallelConfig(mode="wasap", workers=2, phase1_epochs=12)
    trainer = ParallelTrainer(cfg, par, tmp_path, progress=False, verbose=False)
    killed = {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            server = getattr(trainer, "server", None)
            if server is not None:
                try:
                    st = ray.get(server.status.remote(), timeout=5)
                except ray.exceptions.GetTimeoutError:  # e.g. the server is still starting
                    killed["timeouts"] = killed.get("timeouts", 0) + 1
                    continue
                except Exception as exc:  # noqa: BLE001 - the server is gone: phase 1 ended
                    killed["error"] = repr(exc)
                    return
                killed["seen"] = st["total_updates"]
                if st["total_updates"] >= 100 and 0 in st["pids"]:
                    os.kill(st["pids"][0], signal.SIGKILL)
                    killed["at"] = st["total_updates"]
                    killed["epoch"] = st["epoch"]
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    history = trainer.fit(model, Xtr, ytr, Xte, yte)
    thread.join()
    assert "at" in killed, f"phase 1 ended before the worker could be killed: {killed}"
    assert killed["epoch"] < par.phase1_epochs
    events = [r["events"] for r in history if r.get("events")]
    assert events == ["worker 0 restarted"], events
    assert history[-1]["epoch"] == cfg.epochs and history[-1]["phase"] == "averaged"
    assert history[-1]["test_accuracy"] > 0.6


def test_cli_parallel_train_and_resume_refusal(ray_session, tmp_path, capsys):
    Xtr, ytr, Xte, yte = _data(n=1500, d=12)
    path = tmp_path / "small.npz"
    np.savez(path, X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte)
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(path), "--preset", "none", "--hidden", "32,16",
                 "--epsilon", "4", "--epochs", "3", "--batch-size", "32", "--parallel", "wasap",
                 "--workers", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "final test accuracy" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["phase"] for r in rows] == ["async", "async", "averaged"]
    # finished run: --resume says so and changes nothing
    assert main(["train", "--out", str(out), "--resume", "--dataset", str(path),
                 "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert main(["train", "--dataset", str(path), "--workers", "2"]) == 2
    assert "needs '--parallel" in capsys.readouterr().err


@pytest.mark.parametrize("stop_after", ["phase1_epoch1", "phase2"])
def test_interrupted_parallel_run_resumes(ray_session, tmp_path, monkeypatch, stop_after):
    """Interrupted after the first phase-1 checkpoint or during phase 2, ``--resume``
    finishes the run with every epoch in the history exactly once."""
    Xtr, ytr, Xte, yte = _data(n=1500, d=12)
    cfg = make_config(None, hidden=(32, 16), epsilon=4.0, epochs=4, batch_size=32, seed=2)
    model = build_model(cfg, Xtr, 3)
    par = ParallelConfig(mode="wasap", workers=2, phase1_epochs=3)
    trainer = ParallelTrainer(cfg, par, tmp_path, progress=False, verbose=False)
    if stop_after == "phase1_epoch1":
        original = ParallelTrainer._save_state

        def save_then_stop(self, state, epoch, evolved=True):
            original(self, state, epoch, evolved)
            raise KeyboardInterrupt

        monkeypatch.setattr(ParallelTrainer, "_save_state", save_then_stop)
    else:
        def stop(self, *args):
            raise KeyboardInterrupt

        monkeypatch.setattr(ParallelTrainer, "_phase2", stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(model, Xtr, ytr, Xte, yte)
    monkeypatch.undo()
    _, meta = load_model(tmp_path / "model.npz")
    assert meta["epoch"] == (1 if stop_after == "phase1_epoch1" else 3)
    resumed, model = ParallelTrainer.from_checkpoint(tmp_path, progress=False)
    resumed.verbose = False
    history = resumed.fit(model, Xtr, ytr, Xte, yte)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["phase"] for r in history] == ["async"] * 3 + ["averaged"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    with pytest.raises(Exception, match="cannot change its epochs"):
        ParallelTrainer.from_checkpoint(tmp_path, epochs=9)


def test_non_finite_loss_stops_parallel_run_keeping_checkpoint(ray_session, tmp_path):
    Xtr, ytr, Xte, yte = _data(n=1500, d=12)
    cfg = make_config(None, hidden=(32, 16), epsilon=4.0, epochs=4, batch_size=32, seed=2,
                      lr=1e9, momentum=0.0)
    model = build_model(cfg, Xtr, 3)
    trainer = ParallelTrainer(cfg, ParallelConfig(workers=2, phase1_epochs=3), tmp_path,
                              progress=False, verbose=False)
    from sparsetrain.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="training stopped: the (test )?loss became"):
        trainer.fit(model, Xtr, ytr, Xte, yte)
    assert trainer.mailbox_paths and not any(p.exists() for p in trainer.mailbox_paths)


def test_importance_pruning_on_the_server_shrinks_layers(ray_session, tmp_path):
    """IP runs on the server in phase 1: layers shrink, workers get the new sizes, stale
    gradients from before a neuron removal are dropped, and phase 2 averages replicas of
    the shrunk model."""
    Xtr, ytr, Xte, yte = _data(n=3000, d=30)
    cfg = make_config(None, hidden=(64, 32), epsilon=5.0, epochs=5, batch_size=32, seed=1,
                      ip_start=1, ip_step=1, ip_percentile=20.0)
    model = build_model(cfg, Xtr, 3)
    trainer = ParallelTrainer(cfg, ParallelConfig(workers=2, phase1_epochs=3), tmp_path,
                              progress=False, verbose=False)
    history = trainer.fit(model, Xtr, ytr, Xte, yte)
    widths = [[int(w) for w in r["neurons_per_layer"].split()] for r in history]
    assert widths[0][1] < 64 and widths[0][2] < 32  # pruned after epoch 1 and removed
    assert widths[-1] == widths[2]  # phase 2 (no pruning) keeps the sizes of phase 1's end
    assert trainer.model.sizes == widths[-1]
    assert history[-1]["test_accuracy"] > 0.5


def test_worker_killed_in_phase2_run_finishes_with_events(ray_session, tmp_path, monkeypatch):
    # Once a multi-line remote Ray traceback ended the run; now the replica is dropped.
    Xtr, ytr, Xte, yte = _data()
    cfg = make_config(None, hidden=(64, 32), epsilon=5.0, epochs=5, batch_size=32, seed=1)
    model = build_model(cfg, Xtr, 3)
    par = ParallelConfig(mode="wasap", workers=2, phase1_epochs=2)
    trainer = ParallelTrainer(cfg, par, tmp_path, progress=False, verbose=False)
    killed = []
    gather = ParallelTrainer._gather

    def kill_worker_1(self, alive, workers, refs, epoch):
        if epoch == 3 and not killed:  # kill -9 the process of worker 1 in phase 2
            killed.append(ray.get(workers[1].pid.remote()))
            os.kill(killed[0], signal.SIGKILL)
        return gather(self, alive, workers, refs, epoch)

    monkeypatch.setattr(ParallelTrainer, "_gather", kill_worker_1)
    history = trainer.fit(model, Xtr, ytr, Xte, yte)
    assert killed
    events = [r["events"] for r in history if r.get("events")]
    assert len(events) == 1 and "worker 1 lost in phase 2" in events[0], events
    assert "continuing with 1 replica" in events[0]
    assert history[-1]["epoch"] == cfg.epochs and history[-1]["phase"] == "averaged"
    assert history[-1]["workers"] == 1 and history[-1]["test_accuracy"] > 0.5
    assert load_model(tmp_path / "model.npz")[1]["epoch"] == cfg.epochs


def _listen_addresses(port: int) -> set[str]:
    """Hex local addresses of the LISTEN sockets on ``port`` (/proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="Linux /proc")
def test_embedded_ray_listens_on_loopback_only(ray_session):
    # Ray listened on all interfaces (the GCS on *:port) although the README says 127.0.0.1.
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    assert host == "127.0.0.1"
    addresses = _listen_addresses(int(port))
    assert addresses and not any(set(a) == {"0"} for a in addresses), addresses
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # while it runs


def test_server_killed_in_phase1_is_restarted_from_the_last_checkpoint(ray_session, tmp_path):
    # Killing the server actor once ended the run with a raw ActorDiedError.
    Xtr, ytr, Xte, yte = _data(n=6000, d=40, seed=3)
    cfg = make_config(None, hidden=(200, 200), epsilon=10.0, epochs=7, batch_size=32, seed=5)
    model = build_model(cfg, Xtr, 3)
    par = ParallelConfig(mode="wasap", workers=2, phase1_epochs=6)
    trainer = ParallelTrainer(cfg, par, tmp_path, progress=False, verbose=False)
    killed = {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and "pid" not in killed:
            server = getattr(trainer, "server", None)
            if server is not None:
                try:
                    st = ray.get(server.status.remote(), timeout=5)
                    if st["epoch"] >= 2:  # after the first checkpoint
                        killed["pid"] = ray.get(server.pid.remote(), timeout=5)
                        killed["epoch"] = st["epoch"]
                        os.kill(killed["pid"], signal.SIGKILL)
                except Exception as exc:  # noqa: BLE001 - starting, or phase 1 over
                    killed["error"] = repr(exc)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    history = trainer.fit(model, Xtr, ytr, Xte, yte)
    thread.join()
    assert "pid" in killed, f"phase 1 ended before the server could be killed: {killed}"
    events = [r["events"] for r in history if r.get("events")]
    assert any("parameter server lost in phase 1" in e for e in events), events
    assert [r["epoch"] for r in history] == list(range(1, cfg.epochs + 1))
    assert history[-1]["phase"] == "averaged" and history[-1]["test_accuracy"] > 0.5
    assert load_model(tmp_path / "model.npz")[1]["epoch"] == cfg.epochs
    assert not list(shm._ROOT.glob(f"sparsetrain-{os.getpid()}-*"))  # nothing left behind
