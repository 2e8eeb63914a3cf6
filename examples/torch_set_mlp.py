"""Sparse Evolutionary Training in a plain PyTorch loop: the Fashion-MNIST preset
(784-1000-1000-1000-10, epsilon 20, All-ReLU alpha 0.6, dropout 0.3, momentum SGD
lr 0.01 / 0.9, weight decay 2e-4 on the connections, SET zeta 0.3 after every epoch)
built from sparsetrain.torch modules and trained by torch.optim.SGD.

    SPARSETRAIN_DATA=/path/to/datasets python examples/torch_set_mlp.py --epochs 3

Small run (CI): --train-limit 2000 --test-limit 1000 --epochs 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from sparsetrain.data import load_dataset
from sparsetrain.torch import AllReLU, SETScheduler, SparseLinear


def build_model(sizes=(784, 1000, 1000, 1000, 10), *, epsilon=20.0, alpha=0.6, dropout=0.3,
                seed=0) -> nn.Sequential:
    """One SparseLinear per layer; hidden ones apply All-ReLU and dropout in the kernels'
    epilogue (the same as SparseLinear, AllReLU, nn.Dropout as three modules, but one pass
    and a cheaper mask). The output layer is capped at density 1 (fully connected at
    1000 -> 10, as the paper's code does)."""
    rng = np.random.default_rng(seed)
    last = len(sizes) - 2
    return nn.Sequential(*[
        SparseLinear(sizes[l], sizes[l + 1], epsilon, "he-uniform", allow_dense=l == last,
                     activation=None if l == last else AllReLU(alpha, l + 1),
                     dropout=0.0 if l == last else dropout, seed=rng)
        for l in range(last + 1)])


def make_optimizer(model, *, lr=0.01, momentum=0.9, weight_decay=2e-4):
    """Momentum SGD; weight decay on connection values only, as the paper. ``fused``: one
    pass over each tensor (torch >= 2.4 on CPU; measured 0.35 ms a step instead of 0.7)."""
    values = [m.values for m in model.modules() if isinstance(m, SparseLinear)]
    ids = {id(p) for p in values}
    others = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.SGD([{"params": values, "weight_decay": weight_decay},
                            {"params": others, "weight_decay": 0.0}], lr=lr, momentum=momentum,
                           fused=True)


def train_epoch(model, optimizer, X, y, *, batch_size=128, generator=None) -> float:
    """One epoch of mini-batch steps on ``X (N, n_features)``; returns the mean training loss."""
    model.train()
    n = y.shape[0]
    perm = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * idx.shape[0]
    return total / n


@torch.no_grad()
def accuracy(model, X, y, chunk=2048) -> float:
    model.eval()
    hits = 0
    for s in range(0, X.shape[0], chunk):
        hits += int((model(X[s:s + chunk]).argmax(1) == y[s:s + chunk]).sum())
    return hits / X.shape[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="Numba threads of the sparse kernels (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # PyTorch's share of the work is elementwise on 128 x 1000 arrays: one thread. Its
    # OpenMP pool spinning next to Numba's costs more than it brings (measured on a loaded
    # 2-vCPU machine: 70-120 s epochs with 2 PyTorch threads; docs/benchmarks/torch-layer.md).
    torch.set_num_threads(1)
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")  # standardised with the training set's statistics
    X = torch.as_tensor(ds.X_train[:args.train_limit])  # (N, 784)
    y = torch.as_tensor(ds.y_train[:args.train_limit])
    X_test = torch.as_tensor(ds.X_test[:args.test_limit])
    y_test = torch.as_tensor(ds.y_test[:args.test_limit])
    torch.manual_seed(args.seed)  # dropout masks
    model = build_model(seed=args.seed)
    opt = make_optimizer(model)
    evolve = SETScheduler(model, opt, zeta=0.3, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    print(model)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, opt, X, y, generator=gen)
        t1 = time.perf_counter()
        acc = accuracy(model, X_test, y_test)
        t2 = time.perf_counter()
        evolve.step()  # SET at the end of the epoch; SGD momentum of survivors kept
        t3 = time.perf_counter()
        print(f"epoch {epoch}: train loss {loss:.4f}  test accuracy {acc:.4f}  "
              f"train {t1 - t0:.2f} s  eval {t2 - t1:.2f} s  evolution {t3 - t2:.2f} s")
    return acc


if __name__ == "__main__":
    main()
