"""Every script in examples/ runs to completion (CI runs this with the real datasets)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets_path import shared_datasets_dir

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
NEEDS = {"quickstart.py": ["fashion_mnist"], "sklearn_pipeline.py": ["madelon"],
         "torch_export.py": [], "torch_set_mlp.py": ["fashion_mnist"],
         "torch_cnn_sparse_head.py": ["fashion_mnist"]}
#: Command-line arguments that keep a script's CI run small.
ARGS = {"torch_set_mlp.py": ["--train-limit", "2000", "--test-limit", "1000", "--epochs", "1"],
        "torch_cnn_sparse_head.py": ["--train-limit", "1000", "--test-limit", "500",
                                     "--epochs", "1"]}


def test_every_example_is_listed():
    assert {p.name for p in EXAMPLES} == set(NEEDS)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    data = shared_datasets_dir()
    missing = [d for d in NEEDS[script.name] if not (data / d).is_dir()]
    if missing:
        pytest.skip(f"datasets {missing} not found in {data} (set SPARSETRAIN_TEST_DATA)")
    if "torch" in script.read_text() and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    env = {**os.environ, "SPARSETRAIN_DATA": str(data), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), *ARGS.get(script.name, [])], env=env,
                          capture_output=True, text=True, timeout=120, cwd=script.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
