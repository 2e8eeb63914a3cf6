"""Does the epoch time fall in proportion to the connections Importance Pruning removes?

Trains the Fashion-MNIST preset (All-ReLU) with an aggressive pruning schedule
(after every epoch from epoch 2) on one thread, and prints each epoch's training time
next to its connection count (the count the epoch trained with), the time per
connection, and a least-squares fit ``time = a + b * connections``. Time per
connection staying flat (small intercept ``a``) means pruning pays in proportion.

    python benchmarks/ip_speed.py --data-dir ../shared/datasets

Writes ``ip_speed.csv`` and ``ip_speed.png`` into ``--out`` (default: current folder).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("SPARSETRAIN_DATA"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--percentile", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=".")
    args = parser.parse_args(argv)

    import numba

    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.io import write_text
    from sparsetrain.plots import plt
    from sparsetrain.trainer import Trainer, build_model

    numba.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", args.data_dir, standardize=False)
    cfg = make_config("fashion-mnist", epochs=args.epochs, ip_start=2, ip_step=1,
                      ip_percentile=args.percentile, seed=0)
    model = build_model(cfg, ds.X_train, ds.n_classes)
    trained_with = [model.n_connections]  # connections during epoch e (before its step)
    hist = Trainer(cfg, progress=False).fit(model, ds.X_train, ds.y_train, ds.X_test,
                                            ds.y_test)
    trained_with += [r["n_connections"] for r in hist[:-1]]
    conns = np.array(trained_with[1:], float)  # epoch 1 includes compilation: skip it
    secs = np.array([r["train_seconds"] for r in hist[1:]])
    rows = ["epoch,connections,train_seconds,microseconds_per_connection,test_accuracy"]
    print(f"{'epoch':>5} {'connections':>12} {'train s':>9} {'us/conn':>8} {'test acc':>9}")
    for e, (c, t, r) in enumerate(zip(conns, secs, hist[1:], strict=True), start=2):
        print(f"{e:>5} {int(c):>12} {t:>9.3f} {1e6 * t / c:>8.2f} {r['test_accuracy']:>9.4f}")
        rows.append(f"{e},{int(c)},{t:.4f},{1e6 * t / c:.4f},{r['test_accuracy']:.4f}")
    b, a = np.polyfit(conns, secs, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "ip_speed.csv", "\n".join(rows) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    ax.plot(conns, secs, "o", label="epochs 2..")
    xs = np.linspace(0, conns.max(), 50)
    ax.plot(xs, a + b * xs, "--", label=f"fit: {a:.3f} s + {1e6 * b:.2f} us x connections")
    ax.set_xlabel("connections trained")
    ax.set_ylabel("training seconds per epoch")
    ax.set_xlim(0)
    ax.set_ylim(0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(out / "ip_speed.png", dpi=100)
    print(f"fit: train_seconds = {a:.3f} + {1e6 * b:.3f}e-6 * connections; connections fell "
          f"{conns[0] / conns[-1]:.2f}x, time fell {secs[0] / secs[-1]:.2f}x")
    print(f"time_ratio_over_connection_ratio={(secs[0] / secs[-1]) / (conns[0] / conns[-1]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
