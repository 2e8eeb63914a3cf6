"""`sparsetrain reproduce` on a tiny budget: table, figures, IP scaling, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsetrain.cli import main
from sparsetrain.reproduce import ip_schedule


def test_ip_schedule_scales_with_budget():
    assert ip_schedule(500) == (200, 10)  # the paper's
    assert ip_schedule(100) == (40, 2)
    assert ip_schedule(3) == (1, 1)


def test_reproduce_madelon_small(datasets_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["reproduce", "--dataset", "madelon", "--data-dir", str(datasets_dir), "--epochs", "4",
            "--seeds", "2", "--variants", "set-allrelu,set-allrelu-ip,dense-relu", "--out",
            str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| SET") or
            line.startswith("| dense")]
    assert [r.split("|")[1].strip() for r in rows] == ["SET All-ReLU", "SET All-ReLU + IP",
                                                       "dense ReLU"]
    assert "start 2, every 1 epochs" in table  # 40% of 4 epochs, 10 * 4 / 500 -> 1
    runs = np.genfromtxt(out / "runs.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert len(runs) == 6
    ip = runs[runs["variant"] == "SET All-ReLU + IP"]
    assert np.all(ip["connections_end"] < ip["connections_start"])
    # Pruned neurons are folded away (400 + 100 + 400 hidden neurons at the start).
    assert np.all(ip["hidden_neurons_end"] < 900)
    assert np.all(runs[runs["variant"] == "SET All-ReLU"]["hidden_neurons_end"] == 900)
    assert "| hidden neurons end |" in table
    dense = runs[runs["variant"] == "dense ReLU"]
    assert np.all(dense["connections_start"] == 500 * 400 + 400 * 100 + 100 * 400 + 400 * 2)
    for png in ("learning_curves.png", "connections.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Rerunning finds every run finished and trains nothing.
    before = (out / "set-allrelu" / "seed0" / "model.npz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert (out / "set-allrelu" / "seed0" / "model.npz").stat().st_mtime_ns == before
    assert "epoch 1/4" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--ip-percentile", "150"], "'ip_percentile'"),
    (["--ip-step", "0"], "'ip_step'"),
    (["--variants", "nope"], "'variants'"),
    (["--seeds", "0"], "'seeds'"),
    (["--zeta", "1.5"], "'zeta'"),
    (["--lr-schedule", "step"], "'lr_schedule'"),
    (["--dropout", "1"], "'dropout'"),
])
def test_reproduce_bad_options(datasets_dir, tmp_path, capsys, extra, message):
    code = main(["reproduce", "--dataset", "madelon", "--data-dir", str(datasets_dir),
                 "--epochs", "2", "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_reproduce_zeta_reaches_every_sparse_run(datasets_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["reproduce", "--dataset", "madelon", "--data-dir", str(datasets_dir),
                 "--epochs", "2", "--variants", "set-allrelu", "--rules", "set,importance",
                 "--zeta", "0.5", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert "Every run: zeta = 0.5 (--zeta)" in (out / "table.md").read_text()
    for slug in ("set-allrelu", "set-allrelu-importance"):
        config = json.loads((out / slug / "seed0" / "config.json").read_text())
        flat = json.dumps(config)
        assert '"zeta": 0.5' in flat
    assert '"grow": "importance"' in flat


def test_reproduce_cosine_rule_and_lr_schedule(datasets_dir, tmp_path):
    """``--rules cosine``: random growth on the cosine-decayed rewiring; ``--lr-schedule`` and
    ``--dropout`` reach every run and the table says so."""
    out = tmp_path / "rep"
    assert main(["reproduce", "--dataset", "madelon", "--data-dir", str(datasets_dir),
                 "--epochs", "2", "--variants", "set-allrelu", "--rules", "set,cosine",
                 "--lr-schedule", "cosine", "--dropout", "0.4", "--out", str(out),
                 "--no-progress", "--threads", "1"]) == 0
    table = (out / "table.md").read_text()
    assert "lr_schedule = cosine (--lr-schedule)" in table and "dropout = 0.4" in table
    for slug, schedule in (("set-allrelu", "constant"), ("set-allrelu-cosine", "cosine")):
        config = json.loads((out / slug / "seed0" / "config.json").read_text())["config"]
        assert (config["grow"], config["zeta_schedule"], config["lr_schedule"],
                config["dropout"]) == ("random", schedule, "cosine", 0.4)
