"""WASAP-SGD over a real two-node Ray cluster: throughput on 2 nodes against 1 node, bytes
per phase-1 epoch, and a worker node killed mid-phase-1.

Makes the two-namespace cluster of ``benchmarks/cluster/netns_cluster.py`` (root, iproute2;
a 1 Gbit/s veth link), then, in one run:

1. **1 node**: the head alone (one CPU), one worker; then the worker node joins and
   **2 nodes**: two workers, one per node. Each with the paper's per-step pushes
   (``--local-steps 1 --compress none``: one gradient per push, answered with the values)
   and with the defaults over Ray calls (local steps, float16 on the wire). The
   Fashion-MNIST preset trains ``--epochs`` phase-1 epochs; throughput is training
   samples per second over the phase-1 epochs after the first (start-up), as the server
   measures them; bytes are what the server sent and received per epoch.
2. **A lost node**: a 2-node run whose worker node is killed (kill -9 of its raylet, object
   store and worker: ``Cluster.kill_node``) when the first epoch ends, and started again
   some seconds later; the run must finish, and its ``events`` say what happened.

    python benchmarks/cluster_scaling.py --data-dir ../shared/datasets --out docs/benchmarks

Writes ``cluster_scaling.json`` and ``cluster_scaling.png`` into ``--out``. The last line is
``speedup_2_nodes=<x>`` for the default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {"per-step (paper)": {"local_steps": 1, "compress": "none"},
            "default": {}}


def _inner(args) -> int:
    """One training run, as a driver in the head namespace: prints a JSON line."""
    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.parallel import ParallelConfig, ParallelTrainer
    from sparsetrain.trainer import build_model

    spec = json.loads(args.inner)
    ds = load_dataset("fashion-mnist", args.data_dir, standardize=False)
    cfg = make_config("fashion-mnist", epochs=spec["epochs"], seed=args.seed)
    model = build_model(cfg, ds.X_train, ds.n_classes)
    par = ParallelConfig(workers=spec["workers"], phase1_epochs=spec["phase1_epochs"],
                         ray_address=spec["address"], **spec["options"])
    t0 = time.perf_counter()
    hist = ParallelTrainer(cfg, par, progress=False, verbose=True).fit(
        model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    print("RESULT " + json.dumps({"rows": hist, "seconds": time.perf_counter() - t0,
                                  "local_steps": par.resolved_local_steps(),
                                  "wire": par.resolved_wire(),
                                  "pipeline": par.resolved_pipeline()}), flush=True)
    return 0


def _drive(cluster, args, spec, on_line=None) -> dict:
    """Run :func:`_inner` in the head namespace; ``on_line(line)`` sees its output."""
    cmd = cluster.command([sys.executable, __file__, "--inner", json.dumps(spec),
                           "--data-dir", args.data_dir, "--seed", str(args.seed)])
    proc = subprocess.Popen(cmd, env=cluster.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    result, tail = None, []
    deadline = time.monotonic() + args.timeout
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            continue
        tail = (tail + [line.rstrip()])[-20:]
        if line.startswith("epoch "):
            print("   ", line.rstrip(), flush=True)
        if on_line is not None:
            on_line(line)
        if time.monotonic() > deadline:
            proc.kill()
    proc.wait()
    if result is None:
        raise RuntimeError(f"the run {spec} failed ({proc.returncode}):\n" + "\n".join(tail))
    result["returncode"] = proc.returncode
    return result


def _throughput(rows) -> tuple[float, float]:
    """(samples/s, bytes per epoch) over the phase-1 epochs after the first."""
    p1 = [r for r in rows if r["phase"] == "async"]
    measured = p1[1:] or p1
    samples = sum(r["samples_per_second"] * r["train_seconds"] for r in measured)
    seconds = sum(r["train_seconds"] for r in measured)
    return samples / seconds, sum(r["bytes_moved"] for r in measured) / len(measured)


def _plot(result, path: Path) -> None:
    from sparsetrain.plots import plt

    names = list(SETTINGS)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, nodes in enumerate(("1 node", "2 nodes")):
        rates = [result["throughput"][n][nodes]["samples_per_second"] for n in names]
        ax1.bar([j + 0.38 * i for j in range(len(names))], rates, width=0.38, label=nodes)
    ax1.set_xticks([j + 0.19 for j in range(len(names))], names)
    ax1.set_ylabel("phase-1 training samples / s")
    ax1.legend()
    mb = [result["throughput"][n]["2 nodes"]["bytes_per_epoch"] / 1e6 for n in names]
    bars = ax2.bar(names, mb, color="gray")
    ax2.bar_label(bars, fmt="%.1f MB")
    ax2.set_ylabel("MB moved per phase-1 epoch (2 nodes)")
    fig.suptitle("WASAP-SGD, Fashion-MNIST preset, two-namespace Ray cluster "
                 f"({result['link']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("SPARSETRAIN_DATA"))
    parser.add_argument("--epochs", type=int, default=4, help="phase-1 epochs per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--skip-fault", action="store_true", help="no lost-node run")
    parser.add_argument("--only-fault", action="store_true", help="only the lost-node run")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        return _inner(args)

    sys.path.insert(0, str(HERE / "cluster"))
    from netns_cluster import Cluster, available

    ok, why = available()
    if not ok:
        print(f"cluster_scaling: cannot make the test cluster here: {why}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/cluster_scaling.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "phase1_epochs": args.epochs, "throughput": {n: {} for n in SETTINGS}}
    base = {"epochs": args.epochs, "phase1_epochs": args.epochs}
    with Cluster(nodes=1) as cluster:
        result["link"] = cluster.shaping
        for nodes, workers in () if args.only_fault else (("1 node", 1), ("2 nodes", 2)):
            if workers == 1:  # the head (one CPU) is the whole cluster
                cluster.kill_node(1)
                time.sleep(5)  # until the head counts it dead
            else:
                cluster.start_node(1)
            for label, options in SETTINGS.items():
                print(f"== {label}, {nodes}, {workers} worker(s)", flush=True)
                run = _drive(cluster, args, dict(base, workers=workers, options=options,
                                                  address=cluster.address))
                rate, nbytes = _throughput(run["rows"])
                result["throughput"][label][nodes] = {
                    "samples_per_second": rate, "bytes_per_epoch": nbytes,
                    "test_accuracy": run["rows"][-1]["test_accuracy"],
                    "local_steps": run["local_steps"], "wire": run["wire"],
                    "pipeline": run["pipeline"]}
                print(f"   {rate:,.0f} samples/s, {nbytes / 1e6:,.1f} MB per epoch", flush=True)
        for label in [] if args.only_fault else SETTINGS:
            t = result["throughput"][label]
            t["speedup_2_nodes"] = (t["2 nodes"]["samples_per_second"]
                                    / t["1 node"]["samples_per_second"])

        if not args.skip_fault:
            print("== a lost node: kill -9 of the worker node when epoch 1 ends, back 8 s later",
                  flush=True)
            marks = {}

            def on_line(line):
                if line.startswith("epoch 1/") and "killed" not in marks:
                    marks["killed"] = cluster.kill_node(1)
                    marks["t_kill"] = time.monotonic()

                    def back():
                        time.sleep(8)
                        cluster.start_node(1, wait=False)
                        marks["restarted"] = True
                    threading.Thread(target=back, daemon=True).start()

            fault_epochs = max(args.epochs + 2, 6)
            run = _drive(cluster, args, dict(epochs=fault_epochs + 2, phase1_epochs=fault_epochs,
                                             workers=2, options={}, address=cluster.address),
                         on_line)
            events = [f"epoch {r['epoch']}: {r['events']}" for r in run["rows"] if r.get("events")]
            result["lost_node"] = {"finished": run["returncode"] == 0,
                                   "processes_killed": marks.get("killed"),
                                   "events": events,
                                   "final_test_accuracy": run["rows"][-1]["test_accuracy"],
                                   "epochs": len(run["rows"])}
            for e in events:
                print("   ", e, flush=True)

    if args.only_fault:
        print(json.dumps(result.get("lost_node"), indent=2))
        return 0 if result.get("lost_node", {}).get("finished") else 1
    (out / "cluster_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out / "cluster_scaling.png")
    for label in SETTINGS:
        t = result["throughput"][label]
        print(f"{label}: 1 node {t['1 node']['samples_per_second']:,.0f}, 2 nodes "
              f"{t['2 nodes']['samples_per_second']:,.0f} samples/s "
              f"({t['speedup_2_nodes']:.2f}x); {t['2 nodes']['bytes_per_epoch'] / 1e6:,.1f} MB "
              "per epoch on 2 nodes")
    print(f"speedup_2_nodes={result['throughput']['default']['speedup_2_nodes']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
