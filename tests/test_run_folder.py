"""A run folder is owned (issue 13, case 1): one run at a time holds ``--out`` (an flock the
system releases on any exit), a folder holding a run is never overwritten without
``--overwrite``, and ``--out`` is proven writable before any data is loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sparsetrain import data
from sparsetrain import io as sio
from sparsetrain.cli import main
from sparsetrain.errors import SparsetrainError

TINY = ["--dataset", "synthetic", "--n-samples", "200", "--n-features", "10", "--n-informative", "4",
        "--hidden", "16", "--epsilon", "3", "--no-progress", "--threads", "1"]


def user_error(capsys, argv) -> str:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("sparsetrain: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def finished_run(tmp_path):
    run = tmp_path / "RUN"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    return run


def _snapshot(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_existing_run_is_not_overwritten(capsys, finished_run):
    before = _snapshot(finished_run)
    msg = user_error(capsys, ["train", *TINY, "--epochs", "2", "--out", finished_run])
    assert "already holds a run" in msg and "--resume" in msg and "--overwrite" in msg
    assert _snapshot(finished_run) == before  # nothing written, not even config.json


def test_overwrite_replaces_the_run(capsys, finished_run):
    (finished_run / "learning_curve.png").unlink()
    assert main(["train", *TINY, "--epochs", "2", "--seed", "5", "--out", str(finished_run),
                 "--overwrite"]) == 0
    meta = sio.load_model(finished_run / "model.npz")[1]
    assert meta["epoch"] == 2 and meta["config"]["seed"] == 5
    assert not (finished_run / sio.LOCK_NAME).exists()  # released and removed


def test_resume_and_overwrite_together(capsys, finished_run):
    msg = user_error(capsys, ["train", "--out", finished_run, "--resume", "--overwrite"])
    assert "give one of them" in msg


def test_overwrite_needs_out(capsys):
    assert "'--overwrite' option needs '--out RUN'" in user_error(
        capsys, ["train", *TINY, "--overwrite"])


@pytest.mark.parametrize("extra", [[], ["--resume"], ["--overwrite"]])
def test_second_run_on_a_locked_folder_is_refused(capsys, tmp_path, extra):
    # Two runs on one --out once both "succeeded", the checkpoint going backwards.
    run = tmp_path / "RUN"
    with sio.claim_run_folder(run):
        msg = user_error(capsys, ["train", *TINY, "--epochs", "1", "--out", run, *extra])
    assert f"in use by another sparsetrain run (pid {os.getpid()} on" in msg
    assert not (run / "model.npz").exists() and not (run / "config.json").exists()
    with sio.claim_run_folder(run):  # released: claimable again
        pass


def test_lock_released_when_the_owner_is_killed(capsys, tmp_path):
    run = tmp_path / "RUN"
    code = ("import sys, time; from sparsetrain.io import claim_run_folder; "
            f"lock = claim_run_folder({str(run)!r}); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(SparsetrainError, match=f"pid {proc.pid} on"):
            sio.claim_run_folder(run)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (run / sio.LOCK_NAME).exists()  # a kill -9 leaves the file: a stale lock
    with sio.claim_run_folder(run) as lock:
        assert lock.stale_pid == proc.pid
    # The command line says it took a stale lock over, then trains.
    main_run = ["train", *TINY, "--epochs", "1", "--out", str(run)]
    (run / sio.LOCK_NAME).write_text(f"{proc.pid} elsewhere\n")
    capsys.readouterr()
    assert main(main_run) == 0
    assert f"locked by a run (pid {proc.pid}) that ended" in capsys.readouterr().err


def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    msg = user_error(capsys, ["train", *TINY, "--out", tmp_path / "f"])
    assert "'--out' option must name a folder" in msg and "is a file" in msg
    msg = user_error(capsys, ["train", *TINY, "--out", tmp_path / "f" / "sub"])
    assert "'--out' folder" in msg and "is not writable" in msg


@pytest.fixture
def no_data(monkeypatch):
    """Loading a dataset fails the test: the --out checks come first."""
    def fail(*a, **k):
        raise AssertionError("data loaded before --out was checked")
    monkeypatch.setattr(data, "load_dataset", fail)


def _unwritable(monkeypatch, folder):
    real = sio.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and os.path.samefile(dir, folder):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(sio.tempfile, "mkstemp", mkstemp)


def test_unwritable_out_refused_before_loading_data(capsys, tmp_path, monkeypatch, no_data):
    run = tmp_path / "RUN"
    run.mkdir()
    _unwritable(monkeypatch, run)  # root ignores chmod; the probe's failure is simulated
    msg = user_error(capsys, ["train", *TINY, "--out", run])
    assert "is not writable (PermissionError: Permission denied)" in msg


def test_unwritable_out_on_resume_refused_before_training(capsys, finished_run, monkeypatch,
                                                          no_data):
    # Once a whole epoch was trained before the first write failed.
    _unwritable(monkeypatch, finished_run)
    msg = user_error(capsys, ["train", "--out", finished_run, "--resume", "--epochs", "2"])
    assert "is not writable" in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores chmod")
def test_read_only_folder(capsys, tmp_path):
    run = tmp_path / "RUN"
    run.mkdir()
    run.chmod(0o500)
    try:
        assert "is not writable" in user_error(capsys, ["train", *TINY, "--out", run])
    finally:
        run.chmod(0o700)


def test_orphan_temporary_files_removed(capsys, finished_run):
    # A kill -9 during an atomic write leaves .model.npz.XXXX.tmp behind.
    orphan = finished_run / ".model.npz.k1ll3d.tmp"
    orphan.write_bytes(b"partial")
    other = finished_run / "notes.tmp"  # not ours: kept
    other.write_text("mine")
    assert main(["train", "--out", str(finished_run), "--resume", "--epochs", "2",
                 "--no-progress"]) == 0
    assert not orphan.exists() and other.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_run_files_respect_the_umask(finished_run):
    # mkstemp's 0600 once reached every run file.
    old = os.umask(0o022)
    os.umask(old)
    for name in ("model.npz", "metrics.csv", "config.json"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~old, name


def test_workers_counts(capsys, tmp_path, monkeypatch):
    msg = user_error(capsys, ["train", *TINY, "--parallel", "wasap", "--workers", "0"])
    assert "'--workers' option must be an integer >= 1. Got 0" in msg
    from sparsetrain import cli

    cli._check_workers(1)
    assert capsys.readouterr().err == ""
    cli._check_workers((os.cpu_count() or 1) + 1)
    assert "more worker processes than" in capsys.readouterr().err


def test_lock_file_content_names_the_owner(tmp_path):
    with sio.claim_run_folder(tmp_path / "R") as lock:
        owner = (tmp_path / "R" / sio.LOCK_NAME).read_text().split()
        assert owner[0] == str(os.getpid()) and lock.stale_pid is None
    assert time.time()  # released without error


def test_reproduce_folder_is_locked_too(capsys, tmp_path):
    out = tmp_path / "REP"
    with sio.claim_run_folder(out):
        msg = user_error(capsys, ["reproduce", "--dataset", "synthetic", "--epochs", "1",
                                  "--variants", "set-relu", "--out", out, "--no-progress"])
    assert "in use by another sparsetrain run" in msg
