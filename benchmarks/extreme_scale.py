"""The paper's extreme-scale networks (Table 4, SPEC 1.9) on this machine, one epoch each.

    python benchmarks/extreme_scale.py --rows 1 --task both --epochs 3
    python benchmarks/extreme_scale.py --rows 5            # the 50-million-neuron network

Each row runs in a child process (so its peak resident memory is its own): the synthetic
task of the paper (``make_classification``, 10,000 samples x 65,536 features, 70/30
split; ``--task paper``: Madelon's 20 informative features and ``class_sep=1``, where a
linear model scores 0.58; ``learnable``: ``--learnable-informative 1000`` features at
``--learnable-class-sep 4``, where it reaches 0.86 (class_sep 3 gave 0.54, 5 gave 0.94:
each informative feature's within-cluster spread grows with their number; 1000 of them
put one in the reach of about 15% of the first layer's neurons at epsilon 10, where 20
reach 0.3%), and the run fits that
linear baseline on the same split), the preset ``synthetic`` (dropout
0.4, batch 128, momentum 0.9, leaky ReLU 0.6, lr 0.4 after a one-epoch warm-up,
width-aware learning rate) and sequential
training on every core. Per row it prints initialisation, training, inference and
evolution minutes next to the paper's (96 cores, WASAP workers), the peak RSS, the bytes
held per connection, the training loss of each tenth of every epoch, and the test
accuracy. Results go to ``--out`` (``extreme_scale.csv``/``.json`` and a PNG of the loss
tenths); each row's run folder is kept there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Table 4 of the paper: architecture (hidden widths), epsilon, workers, and minutes for
# initialisation, training (one epoch), inference and topology evolution.
ROWS = {
    1: dict(hidden=[500_000] * 2, epsilon=10.0, paper=dict(workers=16, init=1, train=6,
                                                           inference=2.5, evolution=1)),
    2: dict(hidden=[2_500_000] * 2, epsilon=5.0, paper=dict(workers=16, init=2, train=10,
                                                            inference=6, evolution=2)),
    3: dict(hidden=[5_000_000] * 2, epsilon=5.0, paper=dict(workers=16, init=3, train=20,
                                                            inference=11, evolution=5)),
    4: dict(hidden=[5_000_000] * 4, epsilon=1.0, paper=dict(workers=8, init=5, train=26,
                                                            inference=18, evolution=6)),
    5: dict(hidden=[5_000_000] * 10, epsilon=1.0, paper=dict(workers=8, init=9, train=52,
                                                             inference=20, evolution=6)),
}
N_FEATURES = 65_536


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def child_network(args) -> dict:
    """One row: data, model, ``--epochs`` epochs with evaluation, then one SET step."""
    import numpy as np

    from sparsetrain import memory
    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.schedule import topology_step
    from sparsetrain.trainer import Trainer, build_model

    row = ROWS[args.row]
    t = time.perf_counter()
    ds = load_dataset("synthetic", standardize=False, n_samples=args.n_samples,
                      n_features=N_FEATURES, n_informative=args.informative,
                      class_sep=args.class_sep, seed=args.seed)
    data_s = time.perf_counter() - t
    cfg = make_config("synthetic", hidden=tuple(row["hidden"]), epsilon=row["epsilon"],
                      epochs=args.epochs, seed=args.seed, micro_batch=args.micro_batch,
                      csc_index=args.csc_index)
    budget = None if args.memory_budget is None else int(args.memory_budget * 1e9)
    t = time.perf_counter()
    model = build_model(cfg, ds.X_train, ds.n_classes, memory_budget=budget)
    init_s = time.perf_counter() - t
    trainer = Trainer(cfg, args.run_dir, progress=args.progress, memory_budget=budget,
                      run_info={"dataset": "synthetic", "benchmark": "extreme_scale"})
    history = trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    # The SET step after the last epoch (the trainer skips it: no epoch follows).
    t = time.perf_counter()
    topology_step(model, cfg, args.epochs, np.random.default_rng([cfg.seed, args.epochs, 1]))
    evolution_s = time.perf_counter() - t
    nnz = model.n_connections
    plan = trainer.memory_plan  # what is held for the run (a micro-batched step adds nothing)
    conn_bytes = memory.connection_bytes([la.nnz for la in model.layers], csc=plan.csc)
    return {
        "row": args.row, "task": args.task, "n_informative": args.informative,
        "class_sep": args.class_sep,
        "architecture": f"{N_FEATURES}-" + "-".join(str(h) for h in row["hidden"]) + "-2",
        "epsilon": row["epsilon"], "neurons": sum(row["hidden"]), "connections": nnz,
        "micro_batch": model.micro_batch or cfg.batch_size, "data_minutes": data_s / 60,
        "init_minutes": init_s / 60,
        "train_minutes": [r["train_seconds"] / 60 for r in history],
        "inference_minutes": [r["eval_seconds"] / 60 for r in history],
        "evolution_minutes": evolution_s / 60,
        "train_loss": [r["train_loss"] for r in history],
        "train_loss_tenths": [[float(v) for v in r["train_loss_tenths"].split()]
                              for r in history],
        "test_loss": [r["test_loss"] for r in history],
        "test_accuracy": [r["test_accuracy"] for r in history],
        "csc_index": plan.csc, "bytes_per_connection": plan.model / nnz,
        "connection_bytes_per_connection": conn_bytes / nnz,
        "neuron_bytes_per_connection": (plan.model - conn_bytes) / nnz,
        "peak_rss_gb": _peak_rss_gb(),
        "threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)),
    }


def child_linear(args) -> dict:
    """The linear baseline: logistic regression by SGD on the standardised features."""
    from sklearn.linear_model import SGDClassifier

    from sparsetrain.data import load_dataset

    t = time.perf_counter()
    ds = load_dataset("synthetic", standardize=True, n_samples=args.n_samples,
                      n_features=N_FEATURES, n_informative=args.informative,
                      class_sep=args.class_sep, seed=args.seed)
    clf = SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=20, tol=None,
                        random_state=args.seed).fit(ds.X_train, ds.y_train)
    return {"linear_accuracy": float(clf.score(ds.X_test, ds.y_test)),
            "linear_minutes": (time.perf_counter() - t) / 60,
            "linear_peak_rss_gb": _peak_rss_gb()}


def _run_child(kind: str, args, row: int, task: str, class_sep: float, run_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(row), "--task", task,
           "--informative", str(args.informative), "--class-sep", str(class_sep),
           "--epochs", str(args.epochs),
           "--n-samples", str(args.n_samples), "--seed", str(args.seed),
           "--run-dir", str(run_dir)]
    if args.memory_budget is not None:
        cmd += ["--memory-budget", str(args.memory_budget)]
    if args.micro_batch is not None:
        cmd += ["--micro-batch", str(args.micro_batch)]
    cmd += ["--csc-index", args.csc_index]
    if args.progress:
        cmd.append("--progress")
    out = run_dir / f"{kind}.json"
    cmd += ["--result", str(out)]
    print("+", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        return {"error": f"{kind} child exited with {proc.returncode}"}
    return json.loads(out.read_text())


def _print(r: dict) -> None:
    p = ROWS[r["row"]]["paper"]
    print(f"\nrow {r['row']} {r['architecture']} eps {r['epsilon']:g} ({r['task']} task, "
          f"n_informative {r['n_informative']}, class_sep {r['class_sep']:g}): "
          f"{r['connections'] / 1e6:.1f} M connections, "
          f"micro-batch {r['micro_batch']}"
          + ("" if r.get("csc_index", True) else ", lean (no CSC index)"))
    print(f"  minutes      ours (2 cores)   paper ({p['workers']} workers, 96 cores)")
    for key, ours in (("init", r["init_minutes"]), ("train", r["train_minutes"][0]),
                      ("inference", r["inference_minutes"][0]),
                      ("evolution", r["evolution_minutes"])):
        print(f"  {key:<12} {ours:>8.2f}         {p[key]:>6}")
    print(f"  peak RSS {r['peak_rss_gb']:.2f} GB, {r['bytes_per_connection']:.1f} bytes held per "
          f"connection: {r['connection_bytes_per_connection']:.1f} by the connections (value, "
          f"momentum, indexes), {r['neuron_bytes_per_connection']:.1f} by the neurons (bias, "
          "its momentum, pointers)")
    for e, tenths in enumerate(r["train_loss_tenths"], 1):
        print(f"  epoch {e}: train loss by tenth {' '.join(f'{v:.3g}' for v in tenths)}; "
              f"test loss {r['test_loss'][e - 1]:.4f}, test accuracy "
              f"{r['test_accuracy'][e - 1]:.4f}")
    if "linear_accuracy" in r:
        print(f"  linear baseline (logistic regression, SGD) test accuracy "
              f"{r['linear_accuracy']:.4f}")


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if "train_loss_tenths" not in r:
            continue
        ys = [v for tenths in r["train_loss_tenths"] for v in tenths]
        xs = [(i + 1) / 10 for i in range(len(ys))]
        ax.plot(xs, ys, marker=".", label=f"row {r['row']} {r['task']}")
    ax.axhline(0.6931, color="grey", lw=0.8, ls="--", label="ln 2 (constant guess)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over each tenth)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1", help="rows of Table 4, e.g. 1,5 (default 1)")
    parser.add_argument("--task", choices=["paper", "learnable", "both"], default="paper")
    parser.add_argument("--informative", type=int, default=20, help="informative features")
    parser.add_argument("--learnable-informative", type=int, default=1000,
                        help="informative features of the learnable task (default 1000)")
    parser.add_argument("--learnable-class-sep", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget", type=float, help="GB (default: the trainer's)")
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--csc-index", choices=["auto", "keep", "drop"], default="auto",
                        help="keep or drop the forward pass's CSC index (the trainer's option)")
    parser.add_argument("--progress", action="store_true", help="progress bar in each child")
    parser.add_argument("--out", default="extreme_scale_results")
    parser.add_argument("--child", choices=["network", "linear"], help=argparse.SUPPRESS)
    parser.add_argument("--class-sep", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.row = int(args.rows)
        result = (child_network if args.child == "network" else child_linear)(args)
        Path(args.result).write_text(json.dumps(result, indent=1))
        return 0
    rows = [int(r) for r in args.rows.split(",")]
    if not all(r in ROWS for r in rows):
        parser.error(f"--rows takes numbers from {sorted(ROWS)}; got {args.rows!r}")
    tasks = ["paper", "learnable"] if args.task == "both" else [args.task]
    paper_informative = args.informative
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for row in rows:
        for task in tasks:
            class_sep = 1.0 if task == "paper" else args.learnable_class_sep
            args.informative = (paper_informative if task == "paper"
                                else args.learnable_informative)
            run_dir = out / f"row{row}-{task}"
            if run_dir.exists() and any(run_dir.iterdir()):
                print(f"{run_dir} exists: not overwriting it (remove it or pick --out)")
                return 1
            run_dir.mkdir(parents=True, exist_ok=True)
            r = _run_child("network", args, row, task, class_sep, run_dir)
            if task == "learnable" and "error" not in r:
                r.update(_run_child("linear", args, row, task, class_sep, run_dir))
            if "error" in r:
                print(f"row {row} ({task}): {r['error']}")
                continue
            results.append(r)
            _print(r)
            (out / "extreme_scale.json").write_text(json.dumps(results, indent=1))
    if results:
        from sparsetrain.io import write_csv

        flat = [{k: (" ".join(f"{x:.6g}" for x in v) if isinstance(v, list)
                     and not isinstance(v[0], list) else v)
                 for k, v in r.items() if k != "train_loss_tenths"} for r in results]
        columns = list(dict.fromkeys(k for r in flat for k in r))
        write_csv(out / "extreme_scale.csv", flat, columns, float_format=".6g")
        _plot(results, out / "extreme_scale.png")
        print(f"\nresults in {out}/extreme_scale.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
