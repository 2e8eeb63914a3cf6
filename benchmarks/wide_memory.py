"""Peak memory of training a very wide truly sparse network.

Runs the CLI in a child process and reports its peak resident memory, next to what a
dense weight matrix of the same shape would need:

    python benchmarks/wide_memory.py --hidden 200000 --epsilon 10 --epochs 2

(the synthetic dataset: 10000 samples x 100 features, 2 classes).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="200000")
    parser.add_argument("--epsilon", default="10")
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--n-features", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "sparsetrain.cli", "train", "--dataset", "synthetic",
               "--n-features", str(args.n_features), "--hidden", args.hidden, "--epsilon",
               args.epsilon, "--epochs", args.epochs, "--no-progress", "--out", out]
        print(" ".join(cmd[2:]))
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    widths = [args.n_features, *map(int, args.hidden.split(",")), 2]
    dense_gb = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) * 4 * 3 / 1e9
    print(f"wall time {seconds:.1f} s; dense float32 weights + gradient + momentum would be "
          f"{dense_gb:.2f} GB before any activation")
    print(f"peak_rss_mb={peak_mb:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
