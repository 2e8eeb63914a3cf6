"""He-uniform fan-in: the layer's mean sparse fan-in (our default) against the dense
fan-in n_in (the paper's code), Fashion-MNIST preset, test accuracy after each of the
first epochs, several seeds.

    python benchmarks/fan_in.py --data-dir ../shared/datasets --epochs 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("SPARSETRAIN_DATA"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.trainer import Trainer, build_model

    ds = load_dataset("fashion-mnist", args.data_dir, standardize=False)
    results = {}
    for mode in ("sparse", "dense"):
        accs = []
        for seed in args.seeds:
            cfg = make_config("fashion-mnist", fan_in=mode, epochs=args.epochs, seed=seed)
            model = build_model(cfg, ds.X_train, ds.n_classes)
            hist = Trainer(cfg, progress=False).fit(model, ds.X_train, ds.y_train, ds.X_test,
                                                    ds.y_test)
            accs.append([r["test_accuracy"] for r in hist])
        results[mode] = np.array(accs)  # (seeds, epochs)
    print(f"\ntest accuracy, mean +- std over seeds {args.seeds}")
    print("fan-in   " + "".join(f"{'epoch ' + str(e + 1):>18}" for e in range(args.epochs)))
    for mode, a in results.items():
        print(f"{mode:<9}" + "".join(f"{m:>11.4f} +- {s:.4f}" for m, s in zip(a.mean(0), a.std(0),
                                                                             strict=True)))
    best = max(results, key=lambda m: results[m][:, -1].mean())
    print(f"better_fan_in={best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
