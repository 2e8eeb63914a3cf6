"""A small CNN whose classifier head is two truly sparse layers, trained with SET.

The convolutional trunk is ordinary PyTorch; the head is SparseLinear(800 -> 512,
All-ReLU and dropout in its kernels) and SparseLinear(512 -> 10). One SETScheduler
evolves only the sparse layers at the end of every epoch and keeps the optimizer's
momentum of the connections that survive; the convolutions' state is untouched.

    SPARSETRAIN_DATA=/path/to/datasets python examples/torch_cnn_sparse_head.py

Small run (CI): --train-limit 1000 --test-limit 500 --epochs 1.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from sparsetrain.data import load_dataset
from sparsetrain.torch import AllReLU, SETScheduler, SparseLinear


def build_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 13, 13)
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 5, 5)
        nn.Flatten(),  # (B, 800)
        SparseLinear(800, 512, epsilon=20.0, activation=AllReLU(0.6, 1), dropout=0.3, seed=seed),
        SparseLinear(512, 10, epsilon=20.0, allow_dense=True, seed=seed + 1),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=20000)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ds = load_dataset("fashion-mnist")  # standardised pixels, (N, 784)
    X = torch.as_tensor(ds.X_train[:args.train_limit]).view(-1, 1, 28, 28)
    y = torch.as_tensor(ds.y_train[:args.train_limit])
    Xt = torch.as_tensor(ds.X_test[:args.test_limit]).view(-1, 1, 28, 28)
    yt = torch.as_tensor(ds.y_test[:args.test_limit])
    model = build_model(args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    evolve = SETScheduler(model, opt, zeta=0.3, seed=args.seed)
    print(model)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(X.shape[0])
        for s in range(0, X.shape[0], 64):
            idx = perm[s:s + 64]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = sum(int((model(Xt[s:s + 1000]).argmax(1) == yt[s:s + 1000]).sum())
                      for s in range(0, Xt.shape[0], 1000)) / Xt.shape[0]
        rewired = evolve.step()
        print(f"epoch {epoch}: last batch loss {loss.item():.4f}  test accuracy {acc:.4f}  "
              f"{time.perf_counter() - t0:.1f} s  ({rewired} connections rewired)")


if __name__ == "__main__":
    main()
