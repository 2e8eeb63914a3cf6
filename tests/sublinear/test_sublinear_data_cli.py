"""Data loaders, the CLI hook (train, bench) and the benchmark helpers."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from sparsetrain.errors import DataNotFoundError, SparsetrainError
from sparsetrain.sublinear import fashion_mnist_two_class, synthetic
from sparsetrain.sublinear.bench import crossover, fit_slope
from sparsetrain.sublinear.cli import add_subcommand, main


def parse(argv):
    parser = argparse.ArgumentParser(prog="sparsetrain")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommand(sub)
    return parser.parse_args(argv)


def test_synthetic_is_unit_norm_and_seeded():
    X, y = synthetic(50, 7, seed=1)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)
    X2, y2 = synthetic(50, 7, seed=1)
    np.testing.assert_array_equal(y, y2)
    _, s = synthetic(20, 3, labels="sign", seed=0)
    assert set(np.unique(s)) <= {-1.0, 1.0}
    with pytest.raises(SparsetrainError, match="The 'labels' parameter must be one of"):
        synthetic(5, 2, labels="xor")


def test_fashion_mnist_two_class(data_dir):
    X, y = fashion_mnist_two_class(data_dir, classes=(0, 6), n=300, dim=16, seed=0)
    assert X.shape == (300, 16) and set(np.unique(y)) == {-1.0, 1.0}
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)
    Xr, _ = fashion_mnist_two_class(data_dir, n=10)
    assert Xr.shape == (10, 784)


def test_missing_data_dir_raises(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSETRAIN_DATA", raising=False)
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path / "cache"))  # the search includes the cache
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="Dataset 'fashion-mnist' not found"):
        fashion_mnist_two_class(tmp_path / "nothing")


def test_cli_train_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    argv = "sublinear train --width 2048 --dim 8 --n 64 --index correlation-tree --index-param radius=0.2"
    args = parse([*argv.split(), "--iters", "30", "--eval-every", "10", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["index"] == "correlation-tree" and cfg["width"] == 2048
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 30 and float(rows[5]["fired_per_input"]) > 0
    assert (out / "loss.png").stat().st_size > 1000


def test_cli_errors_are_sparsetrain_errors(capsys):
    args = parse(["sublinear", "train", "--index", "kd", "--no-progress"])
    with pytest.raises(SparsetrainError, match="The '--index' option must be one of"):
        args.func(args)
    assert main(["train", "--width", "0", "--no-progress"]) == 2
    assert "The '--width' option must be an integer >= 1" in capsys.readouterr().err
    assert main(["train", "--index-param", "radius", "--no-progress"]) == 2
    assert "The '--index-param' option must be KEY=VALUE" in capsys.readouterr().err


def test_cli_train_fashion_mnist(tmp_path, data_dir):
    argv = "sublinear train --data fashion-mnist --n 200 --dim 8 --width 1024 --index halfspace-tree"
    argv += " --iters 5 --eval-every 0 --no-progress"
    args = parse([*argv.split(), "--data-dir", str(data_dir), "--out", str(tmp_path / "fm")])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "fm" / "config.json").read_text())["dim_used"] == 8


def test_cli_bench_small(tmp_path):
    out = tmp_path / "bench"
    argv = "sublinear bench sgd --log2-widths 10:12 --dim 4 --n 32 --batch-size 4 --seeds 0,1 --iters 2"
    argv += " --warmup 1 --d-sweep 4 --d-sweep-log2-widths 10,11,12 --quiet"
    args = parse([*argv.split(), "--out", str(out)])
    assert args.func(args) == 0
    rows = list(csv.DictReader(open(out / "sgd_bench.csv")))
    assert {r["method"] for r in rows} == {
        "dense",
        "oracle-sparse",
        "halfspace-tree",
        "correlation-tree",
        "simhash-lsh",
    }
    assert len(rows) == 3 * 2 * 5
    assert all(float(r["recall"]) > 0.5 for r in rows if r["method"] == "simhash-lsh")
    for f in ("sgd_bench.png", "halfspace_d_trend.png", "sgd_bench_summary.md"):
        assert (out / f).stat().st_size > 100


def test_fit_slope_and_crossover():
    m = np.array([1, 2, 4, 8, 16] * 2, float)
    s, lo, hi = fit_slope(m, 3 * m**0.7 * np.where(np.arange(10) < 5, 1.0, 1.01))
    assert s == pytest.approx(0.7, abs=1e-2) and lo <= s <= hi
    assert math.isnan(fit_slope([1, 1], [1, 2])[0])
    assert crossover([1, 2, 4], [3, 1, 1], [2, 2, 2]) == 2
    assert crossover([1, 2, 4], [1, 3, 3], [2, 2, 2]) is None
