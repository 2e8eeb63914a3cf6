"""Command line: ``sparsetrain sublinear train | bench sgd | report``.

``train --method`` is one of :data:`METHODS`: ``sgd`` (dense or with an index),
the Gauss-Newton variants ``gn``, ``gn-sketch``, ``gn-sublinear``
(:mod:`.gauss_newton`) and ``ntk`` (kernel ridge regression with the NTK at
initialisation, :mod:`.ntk`); all write their run folder through one writer,
:func:`write_run` (``config.json``, ``metrics.csv`` and, except ``ntk``,
``loss.png``).

The package CLI calls :func:`add_subcommand` on its subparsers and then
``args.func(args)``; ``python -m sparsetrain.sublinear`` does the same on its
own parser (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import SparsetrainError
from ..io import write_csv, write_text
from ._checks import check_choice, check_int, invalid
from .indexes import INDEXES

__all__ = ["add_subcommand", "main", "cmd_train", "cmd_bench", "cmd_report", "RunRecord", "write_run"]

METHODS = ("sgd", "gn", "gn-sketch", "gn-sublinear", "ntk")
DATASETS = ("synthetic", "fashion-mnist")


def _ints(text: str) -> tuple[int, ...]:
    """``"12:20"`` -> 12..20, ``"0,1,2"`` -> (0, 1, 2)."""
    try:
        if ":" in text:
            a, b = text.split(":")
            return tuple(range(int(a), int(b) + 1))
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        message = f"must be integers as 'A:B' or 'a,b,c'. Got {text!r} instead."
        raise argparse.ArgumentTypeError(message) from None  # argparse prefixes "argument --option: "


def add_subcommand(subparsers) -> None:
    """Register ``sublinear`` with subcommands ``train`` and ``bench sgd``."""
    p = subparsers.add_parser(
        "sublinear", help="wide shifted-ReLU networks trained by activated-neuron identification"
    )
    sub = p.add_subparsers(dest="sublinear_cmd", required=True)

    t = sub.add_parser("train", help="train a shifted-ReLU network by SGD (dense or with an index)")
    t.add_argument("--width", "-m", type=int, default=4096, help="number of neurons m")
    t.add_argument("--dim", "-d", type=int, default=16, help="input dimension d (projection for real data)")
    t.add_argument("--n", type=int, default=256, help="training-set size n")
    t.add_argument("--method", choices=METHODS, default="sgd")
    t.add_argument("--index", default="dense", help="'dense' or one of: " + ", ".join(INDEXES))
    t.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="index parameter, repeatable (e.g. radius=0.2, leaf_size=16)",
    )
    t.add_argument("--shift", type=float, default=None, help="b; default sqrt(0.4 ln m)")
    t.add_argument("--lr", type=float, default=None, help="step; default 0.5 (sgd), 1.0 (Gauss-Newton)")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--iters", type=int, default=200)
    t.add_argument("--eval-every", type=int, default=10, help="full training loss every k iterations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data", choices=DATASETS, default="synthetic")
    t.add_argument("--labels", choices=("teacher", "sign"), default="teacher", help="synthetic targets")
    t.add_argument("--classes", default="0,6", help="two Fashion-MNIST classes, e.g. 0,6")
    t.add_argument("--raw-dim", action="store_true", help="real data: keep all 784 pixels (no projection)")
    t.add_argument(
        "--data-dir", default=None, help="folder with fashion_mnist/ (else $SPARSETRAIN_DATA, then the cache)"
    )
    t.add_argument(
        "--damping",
        type=float,
        default=None,
        help="Gauss-Newton / NTK: lambda = damping * tr(JJ^T)/n (default 1e-6)",
    )
    t.add_argument(
        "--sketch", default="countsketch", help="gn-sketch / sketch-cg: gaussian, srht, countsketch"
    )
    t.add_argument("--sketch-size", type=int, default=None, help="sketch rows s (default 4 n)")
    t.add_argument("--cg-tol", type=float, default=1e-10, help="relative CG residual tolerance")
    t.add_argument("--solver", choices=("direct", "sketch-cg"), default="direct", help="gn-sublinear solve")
    t.add_argument("--target-loss", type=float, default=None, help="Gauss-Newton: stop at this mean loss")
    t.add_argument("--out", default=None, help="run folder (config.json, metrics.csv, loss.png)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="benchmarks")
    b.add_argument("which", choices=("sgd",), help="what to benchmark")
    b.add_argument("--log2-widths", type=_ints, default=(12, 13, 14, 15, 16, 17, 18, 19, 20))
    b.add_argument("--dim", "-d", type=int, default=16)
    b.add_argument("--n", type=int, default=256)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    b.add_argument("--iters", type=int, default=8, help="timed iterations per run (after warm-up)")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--lr", type=float, default=0.5)
    b.add_argument("--methods", default=None, help="comma list; default all")
    b.add_argument("--d-sweep", type=_ints, default=(4, 8, 16, 64), help="half-space tree d trend ('' none)")
    b.add_argument("--d-sweep-log2-widths", type=_ints, default=(12, 14, 16, 18))
    b.add_argument("--out", default="docs/sublinear")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="regenerate report.md and its PNGs (SGD, Gauss-Newton, NTK)")
    r.add_argument("--quick", action="store_true", help="small sizes for CI smoke tests (< 5 min)")
    r.add_argument(
        "--log2-widths", type=_ints, default=None, help="cost sweep widths (default: the full or quick set)"
    )
    r.add_argument("--out", default="docs/sublinear/report")
    r.add_argument(
        "--data-dir", default=None, help="folder with fashion_mnist/ (else $SPARSETRAIN_DATA, then the cache)"
    )
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_report)


def _positive_options(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Each option ``--name`` (attribute ``name`` with ``-`` as ``_``) must be an integer >= 1."""
    for name in names:
        check_int(f"--{name.replace('_', '-')}", getattr(args, name), kind="option")


class RunRecord(NamedTuple):
    """What one training run reports: the content of its run folder and its summary line."""

    summary: dict[str, Any]  # config.json's "summary"
    history: dict[str, list[Any]]  # column name -> one entry per iteration (metrics.csv)
    columns: Sequence[str]  # metrics.csv columns, in order
    plot_title: str | None  # loss.png's title; None: no plot
    message: str  # the line printed when the run ends


def write_run(out: Path, args: argparse.Namespace, net, dim: int, run: RunRecord) -> None:
    """Write a run folder: ``config.json``, ``metrics.csv`` and, with a plot title, ``loss.png``.

    ``config.json`` holds the command-line options plus ``shift_used``,
    ``dim_used`` and ``summary``; ``metrics.csv`` one row per iteration of
    ``run.history`` in the order of ``run.columns``, floats to 6 significant
    digits; ``loss.png`` the batch loss (the training loss for full-batch
    methods) and the evaluated training loss against the iteration.  Every file
    is written atomically (:mod:`sparsetrain.io`).
    """
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config.update(shift_used=net.shift, dim_used=dim, summary=run.summary)
    write_text(out / "config.json", json.dumps(config, indent=2, default=str) + "\n")
    per_row = zip(*(run.history[c] for c in run.columns), strict=True)
    rows = [dict(zip(run.columns, values, strict=True)) for values in per_row]
    write_csv(out / "metrics.csv", rows, run.columns, float_format=".6g")
    if run.plot_title is not None:
        _plot_loss(run.history, out / "loss.png", run.plot_title)


def cmd_train(args: argparse.Namespace) -> int:
    """Run one training and write the run folder; returns the exit code."""
    from .data import fashion_mnist_two_class, synthetic
    from .network import ShiftedReLUNetwork
    from .train import DENSE

    _positive_options(args, ("width", "dim", "n", "batch_size", "iters"))
    check_choice("--index", args.index, (DENSE, *INDEXES), kind="option")
    index_params = {}
    for item in args.index_param:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise invalid("--index-param", "KEY=VALUE (e.g. radius=0.2)", item, kind="option")
        try:
            index_params[key] = json.loads(val)
        except json.JSONDecodeError:
            index_params[key] = val
    if args.data == "synthetic":
        X, y = synthetic(args.n, args.dim, labels=args.labels, seed=args.seed)
    else:
        try:
            classes = tuple(int(c) for c in args.classes.split(","))
        except ValueError:
            raise invalid("--classes", "two integers like 0,6", args.classes, kind="option") from None
        dim = None if args.raw_dim else args.dim
        X, y = fashion_mnist_two_class(args.data_dir, classes=classes, n=args.n, dim=dim, seed=args.seed)
    net = ShiftedReLUNetwork.init(args.width, X.shape[1], shift=args.shift, seed=args.seed)
    train = _train_sgd if args.method == "sgd" else _train_second_order
    run = train(args, net, X, y, index_params)
    if args.out:
        write_run(Path(args.out), args, net, X.shape[1], run)
    print(run.message + (f"; run folder {args.out}" if args.out else ""))
    return 0


def _train_sgd(args: argparse.Namespace, net, X, y, index_params: dict) -> RunRecord:
    """``--method sgd``: dense or with the index ``--index``."""
    import numpy as np

    from .train import METRIC_COLUMNS, train_sgd

    if args.lr is None:
        args.lr = 0.5
    t0 = time.perf_counter()
    res = train_sgd(
        net,
        X,
        y,
        index=args.index,
        index_params=index_params,
        lr=args.lr,
        batch_size=args.batch_size,
        n_iter=args.iters,
        seed=args.seed,
        eval_every=args.eval_every,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t0
    h = res.history
    final = h["train_loss"][-1] if args.eval_every else net.loss(X, y)
    summary = {
        "final_train_loss": final,
        "t_build": res.t_build,
        "wall_s": wall,
        "mean_fired_per_input": float(np.mean(h["fired_per_input"])),
        "mean_t_identify": float(np.mean(h["t_identify"])),
        "mean_t_maintain": float(np.mean(h["t_maintain"])),
        "mean_t_gradient": float(np.mean(h["t_gradient"])),
        "accuracy_sign": float(np.mean(np.sign(net.predict(X)) == np.sign(y))),
    }
    message = (
        f"final train loss {final:.5g}; fired/input {summary['mean_fired_per_input']:.1f} of "
        f"{args.width}; {wall:.2f}s"
    )
    title = f"sgd[{args.index}] m={args.width} d={X.shape[1]}"
    return RunRecord(summary, h, METRIC_COLUMNS, title, message)


def _train_second_order(args: argparse.Namespace, net, X, y, index_params: dict) -> RunRecord:
    """``--method gn | gn-sketch | gn-sublinear | ntk``: same run folder as SGD."""
    import numpy as np

    from .gauss_newton import DEFAULT_DAMPING, GN_COLUMNS, train_gn
    from .ntk import ntk_regression
    from .sketch import SKETCHES

    damping = DEFAULT_DAMPING if args.damping is None else args.damping
    if args.method == "ntk":
        res = ntk_regression(net, X, y, ridge=damping)
        summary = {
            "final_train_loss": res.train_loss,
            "init_loss": res.init_loss,
            "t_kernel": res.t_kernel,
            "t_solve": res.t_solve,
            "wall_s": res.t_total,
            "ridge_lambda": res.ridge_lambda,
        }
        # two rows: the initial network (iteration 0) and the kernel regression's fit (1)
        h = {
            "iteration": [0, 1],
            "train_loss": [res.init_loss, res.train_loss],
            "t_total": [0.0, res.t_total],
        }
        losses = f"{res.init_loss:.5g} -> {res.train_loss:.5g}"
        message = f"NTK regression: train loss {losses} in {res.t_total:.3f}s"
        return RunRecord(summary, h, ("iteration", "train_loss", "t_total"), None, message)
    check_choice("--sketch", args.sketch, SKETCHES, kind="option")
    params = {}
    if args.method in ("gn-sketch", "gn-sublinear"):
        params.update(sketch=args.sketch, sketch_size=args.sketch_size, cg_tol=args.cg_tol)
    if args.method == "gn-sublinear":
        params.update(index_params=index_params, solver=args.solver)
    t0 = time.perf_counter()
    res = train_gn(
        net,
        X,
        y,
        method=args.method,
        lr=1.0 if args.lr is None else args.lr,
        n_iter=args.iters,
        damping=damping,
        target_loss=args.target_loss,
        seed=args.seed,
        progress=not args.no_progress,
        **params,
    )
    wall = time.perf_counter() - t0
    h = res.history
    ran = bool(h["iteration"])
    summary = {
        "final_train_loss": res.final_loss,
        "t_build": res.t_build,
        "wall_s": wall,
        "iterations": len(h["iteration"]),
        "mean_fired_per_input": float(np.mean(h["fired_per_input"])) if ran else 0.0,
        "mean_t_total": float(np.mean(h["t_total"])) if ran else 0.0,
        "accuracy_sign": float(np.mean(np.sign(net.predict(X)) == np.sign(y))),
    }
    message = f"final train loss {res.final_loss:.5g} after {len(h['iteration'])} iterations; {wall:.2f}s"
    title = f"{args.method} m={args.width} d={X.shape[1]}"
    return RunRecord(summary, h, GN_COLUMNS, title, message)


def cmd_report(args: argparse.Namespace) -> int:
    """Regenerate ``report.md`` and its PNGs (see :mod:`.report`)."""
    import dataclasses

    from .report import FULL, QUICK, run_report

    cfg = QUICK if args.quick else FULL
    if args.log2_widths is not None:
        if not args.log2_widths or min(args.log2_widths) < 1:
            raise invalid("log2_widths", "a non-empty list of integers >= 1", args.log2_widths, kind="option")
        cfg = dataclasses.replace(cfg, log2_widths=tuple(sorted(set(args.log2_widths))))
    info = run_report(args.out, quick=args.quick, config=cfg, data_dir=args.data_dir, progress=not args.quiet)
    print(f"wrote {args.out}/report.md and {len(info['figures'])} figures in {info['wall_s']:.0f}s")
    return 0


def _plot_loss(h, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # full-batch methods (Gauss-Newton) have no batch loss: their training loss stands in
    ax.plot(h["iteration"], h.get("batch_loss", h["train_loss"]), alpha=0.4, label="batch loss")
    ev = [(i, v) for i, v in zip(h["iteration"], h["train_loss"], strict=True) if not math.isnan(v)]
    if ev:
        ax.plot(*zip(*ev, strict=True), "o-", label="training loss")
    ax.set(xlabel="iteration", ylabel="loss 1/2 mean (f - y)^2", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``bench sgd`` and write its CSV/PNG/Markdown into ``--out``."""
    from .bench import BenchConfig, method_table, run_sgd_bench

    _positive_options(args, ("dim", "n", "batch_size", "iters"))
    methods = tuple(method_table()) if not args.methods else tuple(args.methods.split(","))
    cfg = BenchConfig(
        log2_widths=tuple(args.log2_widths),
        dim=args.dim,
        n=args.n,
        batch=args.batch_size,
        seeds=tuple(args.seeds),
        iters=args.iters,
        warmup=args.warmup,
        lr=args.lr,
        methods=methods,
        d_sweep=tuple(args.d_sweep),
        d_sweep_log2_widths=tuple(args.d_sweep_log2_widths),
    )
    if args.batch_size > args.n:
        raise invalid("--batch-size", f"at most --n = {args.n}", args.batch_size, kind="option")
    s = run_sgd_bench(cfg, args.out, progress=not args.quiet)
    print(f"wrote {args.out}/sgd_bench.csv, sgd_bench.png, sgd_bench_summary.md in {s['wall_s']:.0f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m sparsetrain.sublinear {train,bench} ...``."""
    parser = argparse.ArgumentParser(prog="python -m sparsetrain.sublinear")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subcommand(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "sublinear":
        argv = ["sublinear", *argv]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SparsetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
