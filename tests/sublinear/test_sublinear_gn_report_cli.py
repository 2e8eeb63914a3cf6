"""``sublinear train --method gn|gn-sketch|gn-sublinear|ntk`` and a smoke run of ``sublinear report``."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from sparsetrain.sublinear.cli import main
from sparsetrain.sublinear.report import ReportConfig, run_report


@pytest.mark.parametrize("method", ["gn", "gn-sketch", "gn-sublinear", "ntk"])
def test_train_second_order_writes_run_folder(tmp_path, method):
    out = tmp_path / method
    argv = ["train", "--method", method, *"--width 1024 --dim 6 --n 32 --iters 6 --no-progress".split()]
    rc = main([*argv, "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == method
    assert cfg["summary"]["final_train_loss"] < 1e-6 * 0.5
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and "train_loss" in rows[0]


def test_train_bad_sketch_is_one_line_error(capsys):
    rc = main("train --method gn-sketch --sketch fjlt --width 64 --n 8 --no-progress".split())
    assert rc == 2
    assert "The '--sketch' option must be one of" in capsys.readouterr().err


def test_report_smoke(tmp_path):
    tiny = ReportConfig(n=24, dim=6, log2_widths=(8, 9, 10), seeds=(0,), warmup=1, iters=2, test_n=16)
    tiny = replace(
        tiny, conv_log2_width=10, conv_iters=8, sgd_lrs=(1.0, 8.0), shifts=(0.0, 2.0), fm_n=24, fm_dim=6
    )
    info = run_report(tmp_path, config=tiny, data_dir=str(tmp_path / "none"), progress=False)
    md = (tmp_path / "report.md").read_text()
    for fig in info["figures"]:
        assert (tmp_path / fig).stat().st_size > 1000 and f"({fig})" in md
    assert "Cost per iteration" in md and "Shift sweep" in md and "NTK ridge regression" in md
    assert "gn-sublinear" in (tmp_path / "cost.csv").read_text()
    assert "Numba thread(s)" in md  # the thread settings the timings ran with, as measured
    assert "--log2-widths 8,9,10" in md  # the command that regenerates this sweep


def test_report_bad_widths_is_one_line_error(capsys):
    assert main(["report", "--log2-widths", "0,3", "--out", "unused"]) == 2
    assert "The 'log2_widths' option must be a non-empty list of integers >= 1" in capsys.readouterr().err
