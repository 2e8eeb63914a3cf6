"""Training throughput of WASAP-SGD with 1 and 2 workers (single-threaded kernels each).

Runs the Fashion-MNIST preset with ``--parallel wasap`` for ``--epochs`` epochs (phase 1
up to ``--phase1-epochs``, then phase 2) once with one worker and once with two, in one
Ray session, plus sequential training on 1 and 2 threads for reference. Throughput is
training samples per second of training time: phase-1 epochs as the server measures
them (from the epoch's first update to its last; evaluation and evolution excluded; the
first epoch, which includes worker start-up, is skipped), phase-2 epochs as the slowest
worker's pass over its shard. Also reports the bytes moved per phase-1 epoch.

    python benchmarks/parallel_scaling.py --data-dir ../shared/datasets

Writes ``parallel_scaling.json`` and ``parallel_scaling.png`` into ``--out``. The last
line is ``speedup_2_workers=<x>``: overall throughput with 2 workers over 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _throughput(rows, phase1_epochs):
    """(phase-1, phase-2, overall) samples/s over the measured epochs."""
    p1 = [r for r in rows if r["phase"] in ("async", "sync") and r["epoch"] > 1]
    p2 = [r for r in rows if r["phase"] in ("local", "averaged")]
    s1 = sum(r["samples_per_second"] * r["train_seconds"] for r in p1)
    t1 = sum(r["train_seconds"] for r in p1)
    s2 = sum(r["samples_per_second"] * r["train_seconds"] for r in p2)
    t2 = sum(r["train_seconds"] for r in p2)
    return (s1 / t1 if t1 else float("nan"), s2 / t2 if t2 else float("nan"),
            (s1 + s2) / (t1 + t2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("SPARSETRAIN_DATA"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--phase1-epochs", type=int, default=4)
    parser.add_argument("--mode", default="wasap", choices=["wasap", "wassp"])
    parser.add_argument("--transport", default="auto", choices=["auto", "shm", "ray"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".")
    args = parser.parse_args(argv)

    import numba

    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.io import write_text
    from sparsetrain.parallel import ParallelConfig, ParallelTrainer, RaySession
    from sparsetrain.plots import plt
    from sparsetrain.trainer import Trainer, build_model

    ds = load_dataset("fashion-mnist", args.data_dir, standardize=False)
    cfg = make_config("fashion-mnist", epochs=args.epochs, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/parallel_scaling.py " + " ".join(argv or []),
              "cpus": os.cpu_count(), "epochs": args.epochs,
              "phase1_epochs": args.phase1_epochs, "mode": args.mode, "runs": {}}

    # Sequential reference on 1 and 2 threads (epoch 1 includes compilation: skipped).
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        seq_cfg = make_config("fashion-mnist", epochs=3, seed=args.seed)
        model = build_model(seq_cfg, ds.X_train, ds.n_classes)
        hist = Trainer(seq_cfg, progress=False, verbose=False).fit(model, ds.X_train, ds.y_train)
        secs = sum(r["train_seconds"] for r in hist[1:])
        rate = len(ds.X_train) * (len(hist) - 1) / secs
        result["runs"][f"sequential_{threads}_threads"] = {"samples_per_second": rate}
        print(f"sequential, {threads} thread(s): {rate:,.0f} samples/s")

    with RaySession():
        for k in (1, 2):
            par = ParallelConfig(mode=args.mode, workers=k, phase1_epochs=args.phase1_epochs,
                                 transport=args.transport)
            model = build_model(cfg, ds.X_train, ds.n_classes)
            t0 = time.perf_counter()
            hist = ParallelTrainer(cfg, par, progress=False, verbose=False).fit(
                model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
            wall = time.perf_counter() - t0
            p1, p2, overall = _throughput(hist, args.phase1_epochs)
            bytes1 = [r["bytes_moved"] for r in hist if r["phase"] in ("async", "sync")]
            result["runs"][f"{args.mode}_{k}_workers"] = {
                "phase1_samples_per_second": p1, "phase2_samples_per_second": p2,
                "samples_per_second": overall, "wall_seconds": wall,
                "bytes_per_phase1_epoch": sum(bytes1) / len(bytes1),
                "final_test_accuracy": hist[-1]["test_accuracy"], "history": hist}
            print(f"{args.mode}, {k} worker(s): phase 1 {p1:,.0f}, phase 2 {p2:,.0f}, overall "
                  f"{overall:,.0f} samples/s; {sum(bytes1) / len(bytes1) / 1e6:.0f} MB moved "
                  f"per phase-1 epoch; final test accuracy {hist[-1]['test_accuracy']:.4f}; "
                  f"{wall:.0f} s wall")

    runs = result["runs"]
    one, two = runs[f"{args.mode}_1_workers"], runs[f"{args.mode}_2_workers"]
    speedup = two["samples_per_second"] / one["samples_per_second"]
    result["speedup_2_workers"] = speedup
    result["speedup_phase1"] = two["phase1_samples_per_second"] / one["phase1_samples_per_second"]
    result["speedup_phase2"] = two["phase2_samples_per_second"] / one["phase2_samples_per_second"]
    result["vs_sequential_2_threads"] = (two["samples_per_second"]
                                         / runs["sequential_2_threads"]["samples_per_second"])
    write_text(out / "parallel_scaling.json", json.dumps(result, indent=1, default=float) + "\n")

    labels = ["sequential\n1 thread", "sequential\n2 threads", f"{args.mode}\n1 worker",
              f"{args.mode}\n2 workers"]
    rates = [runs["sequential_1_threads"]["samples_per_second"],
             runs["sequential_2_threads"]["samples_per_second"],
             one["samples_per_second"], two["samples_per_second"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, [r / 1000 for r in rates], color=["#999", "#666", "#6a9", "#286"])
    ax.set_ylabel("training throughput (1000 samples/s)")
    ax.set_title(f"Fashion-MNIST preset, {args.epochs} epochs ({args.phase1_epochs} in phase 1)")
    fig.tight_layout()
    fig.savefig(out / "parallel_scaling.png", dpi=120)
    plt.close(fig)

    print(f"phase 1: {result['speedup_phase1']:.2f}x, phase 2: {result['speedup_phase2']:.2f}x; "
          f"2 workers vs sequential on 2 threads: {result['vs_sequential_2_threads']:.2f}x")
    print(f"speedup_2_workers={speedup:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
