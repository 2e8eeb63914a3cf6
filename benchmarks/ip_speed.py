"""Does the epoch time fall in proportion to what Importance Pruning removes?

Trains the Fashion-MNIST preset (All-ReLU) with pruning after every epoch from epoch 2
on one thread, twice:

* ``ip``: the trainer's Importance Pruning as it is (20th percentile of each layer's
  original population, pruned neurons folded into the next layer and removed): hidden
  neurons fall by a fifth at the first step, connections keep falling step after step;
* ``survivors``: every step prunes the percentile of the *surviving* neurons (a probe,
  not a training rule), so hidden neurons fall geometrically too and the per-neuron
  and per-connection costs can be told apart.

Each epoch's training time (epoch 1, which compiles, is skipped) is fitted by least
squares over both runs as ``seconds = a + b * connections + c * hidden_neurons`` (the
counts the epoch trained with), and printed next to the fit's prediction, the time
relative to epoch 2 (the full network: the first step prunes after it) and the
fractions of connections and hidden neurons left.

    python benchmarks/ip_speed.py --data-dir ../shared/datasets --out docs/benchmarks

Writes ``ip_speed.csv`` and ``ip_speed.png`` into ``--out`` (default: current folder).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def run(ds, cfg, survivors: bool):
    """Train ``cfg``; returns per-epoch (connections, hidden neurons, train seconds, test
    accuracy) for the epochs after the first, each with the counts it trained with."""
    from sparsetrain.evolution import evolve_layer
    from sparsetrain.pruning import model_constants, prune_neurons
    from sparsetrain.trainer import Trainer, build_model

    class SurvivorsTrainer(Trainer):
        def _topology_step(self, model, epoch):  # percentile of the survivors, no padding
            if self.prunes_after(epoch):
                prune_neurons(model.layers, self.config.ip_percentile,
                              constants=model_constants(model))
            rng = np.random.default_rng([self.config.seed, epoch, 1])
            for layer in model.layers:
                evolve_layer(layer, self.config.zeta, rng, regrow=self.config.regrow)
            model.invalidate_buffers()
            self.evolved = True

    model = build_model(cfg, ds.X_train, ds.n_classes)
    counts = [(model.n_connections, sum(model.sizes[1:-1]))]
    trainer = (SurvivorsTrainer if survivors else Trainer)(cfg, progress=False, verbose=False)
    hist = trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    counts += [(r["n_connections"], sum(int(n) for n in r["neurons_per_layer"].split()[1:-1]))
               for r in hist[:-1]]
    return [(c, n, r["train_seconds"], r["test_accuracy"])
            for (c, n), r in zip(counts[1:], hist[1:], strict=True)]


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

    numba.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", args.data_dir, standardize=False)
    cfg = make_config("fashion-mnist", epochs=args.epochs, ip_start=2, ip_step=1,
                      ip_percentile=args.percentile, seed=0)
    runs = {name: run(ds, cfg, name == "survivors") for name in ("ip", "survivors")}

    rows = [(name, e, *r) for name, rs in runs.items() for e, r in enumerate(rs, start=2)]
    conns = np.array([r[2] for r in rows], float)
    neurons = np.array([r[3] for r in rows], float)
    secs = np.array([r[4] for r in rows])
    design = np.column_stack([np.ones_like(conns), conns, neurons])
    (a, b, c), *_ = np.linalg.lstsq(design, secs, rcond=None)
    pred = design @ np.array([a, b, c])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["run,epoch,connections,hidden_neurons,train_seconds,predicted_seconds,"
             "time_vs_epoch2,connections_left,neurons_left,test_accuracy"]
    print(f"{'run':>9} {'epoch':>5} {'connections':>11} {'neurons':>7} {'train s':>8} "
          f"{'fit s':>7} {'time':>6} {'conn left':>9} {'neur left':>9} {'test acc':>8}")
    for name in runs:
        idx = [i for i, r in enumerate(rows) if r[0] == name]
        c0, n0, t0 = conns[idx[0]], neurons[idx[0]], secs[idx[0]]
        for i in idx:
            _, e, c_, n_, t, acc = rows[i]
            vals = (t / t0, c_ / c0, n_ / n0)
            print(f"{name:>9} {e:>5} {int(c_):>11} {int(n_):>7} {t:>8.3f} {pred[i]:>7.3f} "
                  f"{vals[0]:>6.3f} {vals[1]:>9.3f} {vals[2]:>9.3f} {acc:>8.4f}")
            lines.append(f"{name},{e},{int(c_)},{int(n_)},{t:.4f},{pred[i]:.4f},"
                         f"{vals[0]:.4f},{vals[1]:.4f},{vals[2]:.4f},{acc:.4f}")
    write_text(out / "ip_speed.csv", "\n".join(lines) + "\n")

    rel = np.abs(pred / secs - 1)
    fit_text = f"{a:.3f} s + {1e6 * b:.2f} us x connections + {1e6 * c:.1f} us x neurons"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, marker in (("ip", "o"), ("survivors", "s")):
        idx = [i for i, r in enumerate(rows) if r[0] == name]
        ax1.plot(pred[idx], secs[idx], marker, label=f"run '{name}'")
    lim = 1.05 * max(secs.max(), pred.max())
    ax1.plot([0, lim], [0, lim], "k--", lw=0.8, label="measured = fit")
    ax1.set(xlim=(0, lim), ylim=(0, lim), xlabel=f"fit: {fit_text}",
            ylabel="measured training seconds per epoch",
            title="epochs 2..: measured against the fitted work")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for name, style in (("ip", "-"), ("survivors", ":")):
        idx = [i for i, r in enumerate(rows) if r[0] == name]
        ep = [rows[i][1] for i in idx]
        ax2.plot(ep, secs[idx] / secs[idx[0]], "k" + style, marker="o", label=f"{name}: time")
        ax2.plot(ep, conns[idx] / conns[idx[0]], "C0" + style, label=f"{name}: connections")
        ax2.plot(ep, neurons[idx] / neurons[idx[0]], "C1" + style,
                 label=f"{name}: hidden neurons")
    ax2.set(xlabel="epoch (pruned after every epoch from 2)", ylabel="relative to epoch 2",
            ylim=(0, 1.05), title="what is left, and the epoch time")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.savefig(out / "ip_speed.png", dpi=100)

    print(f"fit: train_seconds = {a:.4f} + {1e6 * b:.3f}e-6 * connections + "
          f"{1e6 * c:.2f}e-6 * hidden_neurons (max |fit/measured - 1| = {rel.max():.3f})")
    for name in runs:
        idx = [i for i, r in enumerate(rows) if r[0] == name]
        f, l_ = idx[0], idx[-1]
        print(f"{name}: connections fell {conns[f] / conns[l_]:.2f}x, hidden neurons "
              f"{neurons[f] / neurons[l_]:.2f}x, epoch time {secs[f] / secs[l_]:.2f}x "
              f"(fit: {pred[f] / pred[l_]:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
