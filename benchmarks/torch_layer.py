"""One Fashion-MNIST-preset epoch three ways, in one run with the same compute threads:

* ``sparsetrain.torch``: examples/torch_set_mlp.py's model, optimizer and epoch (a plain
  PyTorch loop over SparseLinear modules; torch.optim.SGD; SETScheduler at the end);
* ``sparsetrain train``: the library's own epoch (``schedule.run_epoch``, what its
  Trainer runs: fused kernels, SGD inside them);
* dense-masked PyTorch: benchmarks/epoch_time.py's baseline (dense nn.Linear, mask
  re-applied after every step, SET on the dense masks), in a child process of its own
  (PyTorch's OpenMP pool sharing a process with Numba's slows PyTorch down, see there).

The first two alternate epoch by epoch (ours, then the trainer's), so that the drift of a
shared machine hits both alike; each part's figure is the median over the epochs. Both
use ``--threads`` Numba threads; in our process PyTorch runs ``--torch-threads`` (default
1: its share of the work is elementwise on 128 x 1000 arrays, and two OpenMP pools
spinning against each other cost more than they bring). The dense-masked baseline uses
``--threads`` PyTorch threads. With a CUDA device, the sparse model also trains an epoch
on it (torch.sparse CSR products), next to a dense-masked epoch on the same device.

    SPARSETRAIN_DATA=/path/to/datasets python benchmarks/torch_layer.py --threads 2

The last lines are ``ratio_vs_trainer=<ours / trainer's epoch>`` (target <= 1.5) and
``speedup_vs_dense_masked=<dense-masked / ours>`` (target >= 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _uptime() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


def torch_epoch(example, model, opt, evolve, X, y, X_test, y_test, gen, device="cpu") -> dict:
    """One epoch of examples/torch_set_mlp.py: train, evaluate, SET step."""
    import torch

    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    t0 = time.perf_counter()
    loss = example.train_epoch(model, opt, X, y, generator=gen)
    sync()
    t1 = time.perf_counter()
    acc = example.accuracy(model, X_test, y_test)
    t2 = time.perf_counter()
    evolve.step()
    sync()
    t3 = time.perf_counter()
    return {"train_seconds": t1 - t0, "eval_seconds": t2 - t1, "evolution_seconds": t3 - t2,
            "epoch_seconds": t3 - t0, "test_accuracy": acc, "train_loss": loss}


def _limited(ds, args):
    if args.train_limit:
        n = args.train_limit
        ds = dataclasses.replace(ds, X_train=ds.X_train[:n], y_train=ds.y_train[:n])
    return ds


def _baseline(args) -> int:
    """Child process: the dense-masked PyTorch epoch of benchmarks/epoch_time.py."""
    import torch

    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.trainer import build_model

    epoch_time = _load(HERE / "epoch_time.py", "epoch_time")
    torch.set_num_threads(args.threads)
    ds = _limited(load_dataset("fashion-mnist", args.data_dir, standardize=False), args)
    cfg = make_config("fashion-mnist", "paper", epochs=3, seed=args.seed)
    model = build_model(cfg, ds.X_train, 10)
    print(json.dumps(epoch_time.dense_masked_epoch(model, ds, cfg, args.seed)))
    return 0


def _cuda_part(example, ds, args) -> dict:
    """Sparse (torch.sparse CSR) vs dense-masked epoch on the CUDA device."""
    import torch
    from torch import nn

    dev = "cuda"
    X = torch.as_tensor(ds["X"], device=dev)
    y = torch.as_tensor(ds["y"], device=dev)
    Xt = torch.as_tensor(ds["Xt"], device=dev)
    yt = torch.as_tensor(ds["yt"], device=dev)
    model = example.build_model(seed=args.seed).to(dev)
    opt = example.make_optimizer(model)
    evolve = example.SETScheduler(model, opt, zeta=0.3, seed=args.seed)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    example.train_epoch(model, opt, X[:1024], y[:1024], generator=gen)  # warm-up
    sparse = torch_epoch(example, model, opt, evolve, X, y, Xt, yt, gen, dev)
    # Dense-masked: nn.Linear with the same masks, mask re-applied after each step.
    lins, masks = [], []
    for m in [m for m in model.modules() if isinstance(m, example.SparseLinear)]:
        lin = nn.Linear(m.in_features, m.out_features).to(dev)
        with torch.no_grad():
            lin.weight.copy_(m.dense_weight())
        lins.append(lin)
        masks.append(lin.weight != 0)
    slopes = [m.activation.slope for m in model.modules()
              if isinstance(m, example.SparseLinear) and m.activation is not None]

    def forward(x):
        for l, lin in enumerate(lins):
            x = lin(x)
            if l < len(lins) - 1:
                x = nn.functional.dropout(nn.functional.leaky_relu(x, slopes[l]), 0.3, True)
        return x

    dopt = torch.optim.SGD([p for lin in lins for p in lin.parameters()], lr=0.01, momentum=0.9)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    perm = torch.randperm(X.shape[0], device=dev)
    for s in range(0, X.shape[0], 128):
        idx = perm[s:s + 128]
        loss = nn.functional.cross_entropy(forward(X[idx]), y[idx])
        dopt.zero_grad()
        loss.backward()
        dopt.step()
        with torch.no_grad():
            for lin, mask in zip(lins, masks, strict=True):
                lin.weight.mul_(mask)
    torch.cuda.synchronize()
    return {"device": torch.cuda.get_device_name(), "sparse": sparse,
            "dense_masked_train_seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("SPARSETRAIN_DATA"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="train on the first N images (smoke runs; the figures need all)")
    ap.add_argument("--only-baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only_baseline:
        return _baseline(args)
    user_env = dict(os.environ)  # the baseline gets no sparsetrain OpenMP settings
    load_start = _uptime()
    child = subprocess.run(
        [sys.executable, __file__, "--only-baseline", "--threads", str(args.threads),
         "--seed", str(args.seed)] + (["--data-dir", args.data_dir] if args.data_dir else [])
        + (["--train-limit", str(args.train_limit)] if args.train_limit else []),
        check=True, capture_output=True, text=True, env=user_env)
    dense = json.loads(child.stdout.strip().splitlines()[-1])

    import numba
    import torch

    from sparsetrain import _kernels
    from sparsetrain.config import make_config
    from sparsetrain.data import load_dataset
    from sparsetrain.schedule import run_epoch, topology_step
    from sparsetrain.trainer import build_model

    example = _load(HERE.parent / "examples" / "torch_set_mlp.py", "torch_set_mlp")
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.torch_threads)
    ds = _limited(load_dataset("fashion-mnist", args.data_dir, standardize=False), args)
    cfg = make_config("fashion-mnist", "paper", epochs=1, seed=args.seed)
    core = build_model(cfg, ds.X_train, 10)
    # Our model reads standardised features (the trainer standardises inside its kernels).
    mean, std = core.input_mean, core.input_std
    std_ds = {"X": (ds.X_train - mean) / std, "y": ds.y_train,
              "Xt": (ds.X_test - mean) / std, "yt": ds.y_test}
    X, y = torch.as_tensor(std_ds["X"]), torch.as_tensor(std_ds["y"])
    Xt, yt = torch.as_tensor(std_ds["Xt"]), torch.as_tensor(std_ds["yt"])
    torch.manual_seed(args.seed)
    model = example.build_model(seed=args.seed)
    opt = example.make_optimizer(model)
    evolve = example.SETScheduler(model, opt, zeta=0.3, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    # Compile (or load cached) kernels outside the timed region, on throwaway copies.
    warm = example.build_model(seed=args.seed + 1)
    example.train_epoch(warm, example.make_optimizer(warm), X[:512], y[:512])
    example.accuracy(warm, Xt[:100], yt[:100])
    w2 = build_model(cfg, ds.X_train[:256], 10)
    w2.train_step(ds.X_train, ds.y_train, np.arange(128), lr=0.01, momentum=0.9,
                  weight_decay=2e-4, seed=1)
    w2.evaluate(ds.X_test[:100], ds.y_test[:100])

    # The trainer's epoch is schedule.run_epoch (what Trainer.fit runs per epoch), called
    # here one epoch at a time so that the two alternate; like Trainer.fit, subnormals are
    # flushed to zero in every Numba thread (which serves both).
    _kernels.enable_flush_to_zero()
    full = make_config("fashion-mnist", "paper", epochs=args.epochs + 1, seed=args.seed)

    def stop(value, where):
        raise RuntimeError(f"non-finite loss {value} at {where}")

    ours, theirs = [], []
    for e in range(1, args.epochs + 1):
        ours.append(torch_epoch(example, model, opt, evolve, X, y, Xt, yt, gen))
        theirs.append(run_epoch(
            core, ds.X_train, ds.y_train, full, e, shuffle_key=[args.seed, e],
            topology=lambda e=e: topology_step(core, full, e,
                                               np.random.default_rng([args.seed, e, 1])),
            on_non_finite=stop, X_test=ds.X_test, y_test=ds.y_test))
        print(f"epoch {e}: sparsetrain.torch {ours[-1]['epoch_seconds']:.2f} s "
              f"(acc {ours[-1]['test_accuracy']:.4f}), sparsetrain train "
              f"{theirs[-1]['epoch_seconds']:.2f} s (acc {theirs[-1]['test_accuracy']:.4f}); "
              f"load {_uptime()}", flush=True)
    med = {
        name: {k: float(np.median([r[k] for r in rows])) for k in
               ("train_seconds", "eval_seconds", "evolution_seconds", "epoch_seconds")}
        for name, rows in (("torch", ours), ("trainer", theirs))}
    print(f"threads: Numba {args.threads}, PyTorch {args.torch_threads} (ours) / "
          f"{args.threads} (dense-masked); epochs {args.epochs} (median); load average at "
          f"start {load_start}, at end {_uptime()}")
    print(f"{'part':<11}{'sparsetrain.torch s':>21}{'sparsetrain train s':>21}"
          f"{'dense-masked s':>16}")
    for part in ("train", "eval", "evolution", "epoch"):
        k = f"{part}_seconds"
        print(f"{part:<11}{med['torch'][k]:>21.3f}{med['trainer'][k]:>21.3f}{dense[k]:>16.3f}")
    print(f"test accuracy after epoch {args.epochs}: sparsetrain.torch "
          f"{ours[-1]['test_accuracy']:.4f}, sparsetrain train {theirs[-1]['test_accuracy']:.4f}"
          f"; dense-masked after 1: {dense['test_accuracy']:.4f}")
    result = {"threads": args.threads, "torch_threads": args.torch_threads,
              "load_start": load_start, "load_end": _uptime(), "sparsetrain_torch": ours,
              "sparsetrain_train": theirs, "dense_masked": dense, "median": med}
    if torch.cuda.is_available():
        gpu = _cuda_part(example, std_ds, args)
        result["cuda"] = gpu
        print(f"CUDA ({gpu['device']}): sparse train {gpu['sparse']['train_seconds']:.3f} s, "
              f"dense-masked train {gpu['dense_masked_train_seconds']:.3f} s")
    else:
        print("CUDA: no device here, GPU part skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ratio = med["torch"]["epoch_seconds"] / med["trainer"]["epoch_seconds"]
    speedup = dense["epoch_seconds"] / med["torch"]["epoch_seconds"]
    print(f"ratio_vs_trainer={ratio:.2f}")
    print(f"speedup_vs_dense_masked={speedup:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
