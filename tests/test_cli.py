"""Tests of the command line: every bad input is one 'sparsetrain: error:' line and exit 2,
and a training run writes its documented output files."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsetrain import data
from sparsetrain.cli import main
from sparsetrain.io import load_model

TINY = ["--dataset", "synthetic", "--n-samples", "600", "--n-features", "20",
        "--hidden", "64,64", "--epsilon", "5", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder of a tiny 20-feature, 2-class model trained for one epoch (read only)."""
    run = tmp_path_factory.mktemp("tiny") / "RUN"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    return run


def user_error(capsys, argv) -> str:
    """Run the CLI in-process; assert exit 2 and a single error line; return that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("sparsetrain: error: ")
    return lines[0]


def write_npz(path, X_train, y_train, X_test, y_test) -> Path:
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    return path


def small_arrays(seed=0, n_features=4):
    rng = np.random.default_rng(seed)
    X_train = rng.standard_normal((40, n_features)).astype(np.float32)
    X_test = rng.standard_normal((10, n_features)).astype(np.float32)
    y_train = np.arange(40) % 2
    y_test = np.arange(10) % 2
    return X_train, y_train, X_test, y_test


def rewrite_model(src: Path, dst: Path, edit) -> None:
    """Copy the model file ``src`` to ``dst`` after ``edit(arrays, meta)`` (in place)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)


# ---------------------------------------------------------------------------- bad data


def test_nan_in_features(capsys, tmp_path):
    X_train, y_train, X_test, y_test = small_arrays()
    X_train[3, 1] = np.nan
    X_train[7, 2] = np.nan
    path = write_npz(tmp_path / "nan.npz", X_train, y_train, X_test, y_test)
    msg = user_error(capsys, ["train", "--dataset", path, "--hidden", "8,8", "--epsilon", "1",
                              "--no-progress"])
    assert "X_train" in msg and "NaN" in msg
    assert "2 NaN or infinite values (in 2 of 40 rows)" in msg


def test_inf_in_features(capsys, tmp_path):
    X_train, y_train, X_test, y_test = small_arrays()
    X_test[4, 0] = np.inf
    X_test[4, 3] = -np.inf
    path = write_npz(tmp_path / "inf.npz", X_train, y_train, X_test, y_test)
    msg = user_error(capsys, ["train", "--dataset", path, "--hidden", "8,8", "--epsilon", "1",
                              "--no-progress"])
    assert "X_test" in msg and "infinite" in msg
    assert "2 NaN or infinite values (in 1 of 10 rows)" in msg


def test_negative_label(capsys, tmp_path):
    X_train, y_train, X_test, y_test = small_arrays()
    y_train[5] = -1
    path = write_npz(tmp_path / "neg.npz", X_train, y_train, X_test, y_test)
    msg = user_error(capsys, ["train", "--dataset", path, "--hidden", "8,8", "--epsilon", "1",
                              "--no-progress"])
    assert "y_train" in msg and "label -1" in msg


def test_test_label_outside_training_range(capsys, tmp_path):
    X_train, y_train, X_test, y_test = small_arrays()
    y_test[2] = 3  # y_train holds 0 and 1 only: 2 classes
    path = write_npz(tmp_path / "range.npz", X_train, y_train, X_test, y_test)
    msg = user_error(capsys, ["train", "--dataset", path, "--hidden", "8,8", "--epsilon", "1",
                              "--no-progress"])
    assert "y_test" in msg and "label 3" in msg and "n_classes is 2" in msg


def test_evaluate_more_classes_than_model(capsys, tiny_run):
    msg = user_error(capsys, ["evaluate", "--model", tiny_run / "model.npz", "--dataset",
                              "synthetic", "--n-samples", "600", "--n-features", "20",
                              "--n-informative", "4", "--n-classes", "3", "--threads", "1"])
    assert "y_test of dataset 'synthetic' contains label 2" in msg and "only 2 classes" in msg


def test_evaluate_wrong_feature_count_synthetic(capsys, tiny_run):
    model = tiny_run / "model.npz"
    msg = user_error(capsys, ["evaluate", "--model", model, "--dataset", "synthetic",
                              "--n-features", "30", "--n-samples", "600", "--threads", "1"])
    assert "30 features" in msg and "expects 20" in msg and str(model) in msg


def test_evaluate_wrong_feature_count_madelon(capsys, tiny_run, datasets_dir):
    model = tiny_run / "model.npz"
    msg = user_error(capsys, ["evaluate", "--model", model, "--dataset", "madelon",
                              "--data-dir", datasets_dir, "--no-download", "--threads", "1"])
    assert "'madelon' has 500 features" in msg and "expects 20" in msg


def test_evaluate_matching_data_works(capsys, tiny_run):
    """Control for the evaluate errors above: the training data itself evaluates fine."""
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tiny_run / "model.npz"), "--dataset", "synthetic",
                 "--n-samples", "600", "--n-features", "20", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    with open(tiny_run / "metrics.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    assert result["n"] == 180 and result["epoch"] == 1
    assert result["accuracy"] == pytest.approx(float(row["test_accuracy"]), abs=1e-12)
    assert result["loss"] == pytest.approx(float(row["test_loss"]), rel=1e-6)


# ---------------------------------------------------------------------------- epsilon


def test_epsilon_too_large_gives_largest_valid(capsys):
    argv = ["train", "--dataset", "synthetic", "--n-samples", "600", "--n-features", "20",
            "--hidden", "10,10", "--no-progress", "--threads", "1", "--epochs", "1"]
    msg = user_error(capsys, [*argv, "--epsilon", "50"])
    assert "'epsilon'" in msg
    # 20->10 allows epsilon <= 20*10/30 = 6.67, 10->10 allows 10*10/20 = 5: the bound is 5.
    largest = float(re.search(r"epsilon <= ([0-9.eE+-]+)", msg).group(1))
    assert largest == 5
    assert main([*argv, "--epsilon", "5"]) == 0  # the bound itself is valid
    user_error(capsys, [*argv, "--epsilon", "5.001"])  # and it is the largest


def test_suggested_epsilon_is_accepted(capsys):
    argv = ["train", "--dataset", "synthetic", "--n-samples", "600", "--n-features", "20",
            "--hidden", "20,10", "--no-progress", "--threads", "1", "--epochs", "1"]
    msg = user_error(capsys, [*argv, "--epsilon", "50"])
    suggested = float(re.search(r"epsilon <= ([0-9.eE+-]+)", msg).group(1))
    assert suggested <= 20 * 10 / 30
    capsys.readouterr()
    assert main([*argv, "--epsilon", repr(suggested)]) == 0


# ---------------------------------------------------------------------------- data location


def test_unknown_dataset(capsys):
    msg = user_error(capsys, ["train", "--dataset", "mnist-fashionn", "--no-progress"])
    assert "'mnist-fashionn'" in msg
    for known in ("fashion-mnist", "madelon", "synthetic"):
        assert known in msg


def test_missing_data_dir(capsys):
    msg = user_error(capsys, ["train", "--dataset", "madelon", "--data-dir", "/nonexistent/x",
                              "--no-progress"])
    assert "'--data-dir'" in msg and "/nonexistent/x" in msg


def test_empty_data_dir_no_download(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = user_error(capsys, ["train", "--dataset", "madelon", "--data-dir", empty,
                              "--no-download", "--no-progress"])
    assert "'madelon' not found" in msg
    assert "--data-dir" in msg and "SPARSETRAIN_DATA" in msg
    assert str(tmp_path / "cache" / "madelon") in msg  # the cache folder of this test
    assert str(empty) in msg and "madelon_train.data" in msg
    assert "download was disabled" in msg


def test_empty_data_dir_download_fails(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = user_error(capsys, ["train", "--dataset", "fashion-mnist", "--data-dir", empty,
                              "--no-progress"])
    assert "'fashion-mnist' not found" in msg and "network disabled in tests" in msg


def test_synthetic_options_on_real_dataset(capsys):
    msg = user_error(capsys, ["train", "--dataset", "madelon", "--n-features", "20",
                              "--no-progress"])
    assert "--n-features" in msg and "synthetic" in msg


# ---------------------------------------------------------------------------- model files


def test_missing_model_file(capsys, tmp_path):
    missing = tmp_path / "nothing" / "model.npz"
    msg = user_error(capsys, ["evaluate", "--model", missing, *TINY[:6]])
    assert str(missing) in msg and "does not exist" in msg


def test_truncated_model(capsys, tmp_path, tiny_run):
    raw = (tiny_run / "model.npz").read_bytes()
    bad = tmp_path / "model.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    msg = user_error(capsys, ["evaluate", "--model", bad, *TINY[:6]])
    assert str(bad) in msg and "truncated" in msg


def test_model_format_version_too_new(capsys, tmp_path, tiny_run):
    bad = tmp_path / "model.npz"
    rewrite_model(tiny_run / "model.npz", bad, lambda arrays, meta: meta.update(format_version=99))
    msg = user_error(capsys, ["evaluate", "--model", bad, *TINY[:6]])
    assert str(bad) in msg and "format version 99" in msg and "upgrade" in msg


def test_model_tampered_array_shape(capsys, tmp_path, tiny_run):
    bad = tmp_path / "model.npz"

    def drop_last(arrays, meta):
        arrays["layers.0.data"] = arrays["layers.0.data"][:-1]

    rewrite_model(tiny_run / "model.npz", bad, drop_last)
    msg = user_error(capsys, ["evaluate", "--model", bad, *TINY[:6]])
    assert str(bad) in msg and "20->64" in msg and "inconsistent" in msg


def test_model_tampered_dtype(capsys, tmp_path, tiny_run):
    bad = tmp_path / "model.npz"

    def widen(arrays, meta):
        arrays["layers.1.row_cols"] = arrays["layers.1.row_cols"].astype(np.int64)

    rewrite_model(tiny_run / "model.npz", bad, widen)
    msg = user_error(capsys, ["evaluate", "--model", bad, *TINY[:6]])
    assert str(bad) in msg and "layers.1.row_cols" in msg and "int64" in msg


def test_unmodified_rewrite_still_loads(tmp_path, tiny_run):
    """Control for the tampering tests: the rewrite itself keeps a valid model."""
    copy = tmp_path / "model.npz"
    rewrite_model(tiny_run / "model.npz", copy, lambda arrays, meta: None)
    model, meta = load_model(copy)
    assert meta["epoch"] == 1 and model.sizes == [20, 64, 64, 2]


# ---------------------------------------------------------------------------- option values


@pytest.mark.parametrize(("option", "value", "named"), [
    ("--threads", "0", "'--threads'"),
    ("--dropout", "1.5", "'dropout'"),
    ("--zeta", "-0.1", "'zeta'"),
    ("--lr", "0", "'lr'"),
    ("--lr", "nan", "'lr'"),
    ("--epsilon", "-1", "'epsilon'"),
    ("--momentum", "1", "'momentum'"),
    ("--epochs", "0", "'epochs'"),
    ("--batch-size", "0", "'batch_size'"),
    ("--seed", "-3", "'seed'"),
    ("--activation", "tanhh", "'activation'"),
    ("--init", "zeros", "'init'"),
])
def test_bad_option_value(capsys, option, value, named):
    argv = ["train", "--dataset", "synthetic", "--n-samples", "600", "--n-features", "20",
            "--hidden", "64,64", "--no-progress"]
    if option != "--epsilon":
        argv += ["--epsilon", "5"]
    msg = user_error(capsys, [*argv, option, value])
    assert named in msg
    assert value in msg


@pytest.mark.parametrize("value", ["0,5", "abc", "10,-3", ""])
def test_bad_hidden_is_an_argparse_error(capsys, value):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "synthetic", "--hidden", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "argument --hidden" in err.splitlines()[-1]


def test_bad_synthetic_option(capsys):
    msg = user_error(capsys, ["train", "--dataset", "synthetic", "--n-features", "10",
                              "--n-informative", "30", "--no-progress"])
    assert "'n_informative'" in msg and "30" in msg


def test_subprocess_error_has_no_traceback(tmp_path):
    X_train, y_train, X_test, y_test = small_arrays()
    X_train[0, 0] = np.nan
    path = write_npz(tmp_path / "bad.npz", X_train, y_train, X_test, y_test)
    proc = subprocess.run([sys.executable, "-m", "sparsetrain.cli", "train", "--dataset", str(path),
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsetrain: error: X_train contains 1 NaN")


def test_entry_point_error_has_no_traceback(tmp_path):
    exe = shutil.which("sparsetrain")
    if exe is None:
        pytest.skip("the sparsetrain entry point is not on PATH")
    proc = subprocess.run([exe, "evaluate", "--model", str(tmp_path / "none.npz"), "--dataset",
                           "synthetic"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sparsetrain: error: model file")


# ---------------------------------------------------------------------------- datasets, outputs


def test_datasets_lists_folders(capsys, datasets_dir):
    capsys.readouterr()
    assert main(["datasets", "--data-dir", str(datasets_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    found = {line.split()[0]: line.split(None, 1)[1] for line in lines if line and not line[0].isspace()}
    assert found["fashion-mnist"] == str(datasets_dir / "fashion_mnist")
    assert found["madelon"] == str(datasets_dir / "madelon")
    assert found["synthetic"] == "generated"


def test_datasets_not_found(capsys, tmp_path):
    capsys.readouterr()
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    madelon = next(line for line in out.splitlines() if line.startswith("madelon"))
    assert "not found" in madelon and str(tmp_path) in madelon


def test_train_writes_output_files(capsys, tmp_path):
    run = tmp_path / "RUN"
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["hidden"] == [64, 64] and cfg["config"]["epochs"] == 2
    assert cfg["sizes"] == [20, 64, 64, 2]
    assert cfg["run"]["dataset"] == "synthetic"

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for col in ("epoch", "train_loss", "test_loss", "test_accuracy", "epoch_seconds",
                "n_connections"):
        assert col in rows[0]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["test_loss"]))
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert float(r["epoch_seconds"]) > 0
        assert int(r["n_connections"]) == sum(cfg["connections_at_start"])

    with np.load(run / "model.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert z["layers.0.data"].shape == (cfg["connections_at_start"][0],)
    assert meta["epoch"] == 2 and meta["format"] == "sparsetrain.model"

    # The model on disk reproduces the last row's test accuracy.
    model, _ = load_model(run / "model.npz")
    ds = data.load_dataset("synthetic", standardize=False, n_samples=600, n_features=20)
    _, acc = model.evaluate(ds.X_test, ds.y_test)
    assert acc == pytest.approx(float(rows[-1]["test_accuracy"]), abs=1e-12)
    assert f"final test accuracy {float(rows[-1]['test_accuracy']):.4f}" in out

    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fashion_mnist_smoke(capsys, tmp_path, datasets_dir):
    run = tmp_path / "RUN"
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(datasets_dir),
                 "--no-download", "--epochs", "1", "--hidden", "100,100", "--epsilon", "10",
                 "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert float(rows[0]["test_accuracy"]) > 0.7
    assert [int(n) for n in rows[0]["connections_per_layer"].split()][-1] == 100 * 10


@pytest.mark.parametrize("budget", ["0", "-1", "nan"])
def test_bad_memory_budget(capsys, budget):
    msg = user_error(capsys, ["train", "--dataset", "synthetic", "--n-samples", "50",
                              "--memory-budget", budget])
    assert "'--memory-budget' option must be a number of GB in (0, inf)" in msg
    assert f"Got {float(budget)}" in msg


def test_network_too_large_for_the_budget_is_refused_before_building(capsys):
    msg = user_error(capsys, ["train", "--dataset", "synthetic", "--n-samples", "50",
                              "--hidden", "5000000,5000000", "--epsilon", "1",
                              "--memory-budget", "0.5"])
    assert "does not fit in memory" in msg and "0.50 GB are available" in msg
    assert "Lower --hidden or --epsilon" in msg


# --- issue 13: smaller items ----------------------------------------------------------------


def test_help_lists_every_dataset_and_activation(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in data.DATASETS:
        assert name in out
    assert "srelu" in out


def test_dataset_name_in_any_case(capsys, tmp_path):
    argv = ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "R")]
    argv[argv.index("synthetic")] = "Synthetic"  # the synthetic-only options still apply
    assert main(argv) == 0


def _regression_free_json(line):
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))


def test_evaluate_prints_valid_json(capsys, tiny_run):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tiny_run / "model.npz"), *TINY[:6]]) == 0
    result = _regression_free_json(capsys.readouterr().out)
    assert 0 <= result["accuracy"] <= 1
    from sparsetrain.cli import _json_value

    assert _json_value(float("nan")) is None and _json_value(float("inf")) is None


@pytest.mark.parametrize(("label", "fragment"), [(-1, "contains label -1"),
                                                 (7, "contains label 7")])
def test_evaluate_bad_label(capsys, tmp_path, label, fragment):
    # SparseMLP.evaluate scored -1 as the last class and raised IndexError for 7.
    X_train, y_train, X_test, y_test = small_arrays(n_features=4)
    y_test = y_test.copy()
    y_test[0] = label
    path = write_npz(tmp_path / "d.npz", X_train, y_train, X_test, y_test)
    ok = write_npz(tmp_path / "ok.npz", *small_arrays(n_features=4))
    assert main(["train", "--dataset", str(ok), "--hidden", "8", "--epsilon", "2", "--epochs",
                 "1", "--out", str(tmp_path / "R"), "--no-progress", "--threads", "1"]) == 0
    msg = user_error(capsys, ["evaluate", "--model", tmp_path / "R" / "model.npz",
                              "--dataset", path])
    assert fragment in msg


def test_resume_user_npz_from_another_folder_and_changed_file(capsys, tmp_path, monkeypatch):
    X_train, y_train, X_test, y_test = small_arrays(n_features=4)
    (tmp_path / "a").mkdir()
    write_npz(tmp_path / "a" / "d.npz", X_train, y_train, X_test, y_test)
    monkeypatch.chdir(tmp_path / "a")
    run = tmp_path / "R"
    assert main(["train", "--dataset", "d.npz", "--hidden", "8", "--epsilon", "2",
                 "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    monkeypatch.chdir(tmp_path)  # the relative path no longer resolves from here
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert load_model(run / "model.npz")[1]["epoch"] == 2
    write_npz(tmp_path / "a" / "d.npz", X_train + 1, y_train, X_test, y_test)
    msg = user_error(capsys, ["train", "--resume", "--out", run, "--epochs", "3"])
    assert "changed since this run started" in msg
