"""PNG figures drawn from metrics (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_write  # noqa: E402


def learning_curve(history: list[dict], path) -> None:
    """Two panels: train/test loss and test accuracy against the epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train loss (with dropout)")
    ax1.plot(epochs, [r["test_loss"] for r in history], label="test loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * r["test_accuracy"] for r in history], color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy (%)")
    ax2.grid(alpha=0.3)
    best = max(history, key=lambda r: r["test_accuracy"])
    ax2.set_title(f"best {100 * best['test_accuracy']:.2f}% at epoch {best['epoch']}")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def variant_curves(path, variants, runs, key, title, *, scale=1.0, log=False, ylabel=None):
    """One line per variant: the mean over seeds of ``history[key]`` against the epoch,
    with a band from the lowest to the highest seed."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for i, variant in enumerate(variants):
        series = [[scale * r[key] for r in run["history"]] for run in runs
                  if run["slug"] == variant.slug]
        n = min(len(s) for s in series)
        a = np.array([s[:n] for s in series])
        epochs = np.arange(1, n + 1)
        ax.plot(epochs, a.mean(0), color=f"C{i}", label=variant.label,
                linestyle="--" if variant.dense else "-")
        if len(a) > 1:
            ax.fill_between(epochs, a.min(0), a.max(0), color=f"C{i}", alpha=0.15)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or title)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
