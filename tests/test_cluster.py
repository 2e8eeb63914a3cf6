"""WASAP-SGD on a real two-node Ray cluster: two network namespaces joined by a veth pair
(``benchmarks/cluster/netns_cluster.py``). Needs root and iproute2; skipped otherwise.

One cluster for the module: a run that places one worker per node and finishes, then a
run whose worker node is killed (kill -9 of all its processes) in phase 1 and that
finishes with the other worker, saying so in ``events``.
"""

import csv
import importlib.util
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cluster" / "netns_cluster.py"
_spec = importlib.util.spec_from_file_location("netns_cluster", _SCRIPT)
netns_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns_cluster)

_OK, _WHY = netns_cluster.available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"no two-namespace cluster here: {_WHY}")


@pytest.fixture(scope="module")
def cluster():
    with netns_cluster.Cluster(nodes=1) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=22000, n_features=40, n_informative=12, n_classes=3,
                               random_state=0)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    cut = 20000
    np.savez(path, X_train=X[:cut].astype(np.float32), y_train=y[:cut],
             X_test=X[cut:].astype(np.float32), y_test=y[cut:])
    return path


def _train(cluster, dataset, out, epochs, phase1, on_line=None, timeout=240):
    cmd = cluster.command([sys.executable, "-m", "sparsetrain.cli", "train", "--dataset",
                           str(dataset), "--hidden", "1000,1000", "--epsilon", "20",
                           "--batch-size", "32", "--epochs", str(epochs), "--parallel", "wasap",
                           "--workers", "2", "--phase1-epochs", str(phase1), "--ray-address",
                           "{address}", "--out", str(out), "--no-progress"])
    proc = subprocess.Popen(cmd, env=cluster.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
        proc.wait()
    finally:
        timer.cancel()
    output = "".join(lines)
    assert (out / "metrics.csv").exists(), output[-3000:]
    return proc.returncode, output, list(csv.DictReader(open(out / "metrics.csv")))


def test_one_worker_per_node_over_the_link(cluster, dataset, tmp_path):
    code, output, rows = _train(cluster, dataset, tmp_path / "run", epochs=3, phase1=2)
    assert code == 0, output[-2000:]
    placement = rows[0]["events"]
    assert "192.0.2.1" in placement and "192.0.2.2" in placement, placement
    assert [r["phase"] for r in rows] == ["async", "async", "averaged"]
    assert float(rows[-1]["test_accuracy"]) > 0.6  # three classes: chance is 1/3
    assert int(rows[1]["bytes_moved"]) > 0


def test_killing_the_worker_node_in_phase1_the_run_finishes(cluster, dataset, tmp_path):
    killed = {}

    def on_line(line):
        if line.startswith("epoch 1/") and not killed:
            killed["n"] = cluster.kill_node(1)

    try:
        code, output, rows = _train(cluster, dataset, tmp_path / "run", epochs=5, phase1=4,
                                    on_line=on_line)
    finally:
        if cluster.alive_nodes() < 2:
            cluster.start_node(1)
    assert killed.get("n", 0) > 0, "the node was never killed"
    assert code == 0, output[-2000:]
    events = " ".join(r["events"] for r in rows)
    assert re.search(r"worker [01] lost with its node 192\.0\.2\.2", events), events
    assert rows[-1]["phase"] == "averaged" and int(rows[-1]["workers"]) == 1
    assert float(rows[-1]["test_accuracy"]) > 0.6
