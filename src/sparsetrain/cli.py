"""Command line: ``sparsetrain train | evaluate | datasets | sublinear``.

Every user error is a :class:`SparsetrainError`: printed on one line to stderr,
exit status 2, no traceback. Ctrl-C stops training with status 130; the last
finished epoch stays in ``RUN/model.npz`` for ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__
from .config import PARAMS, Flag, Param
from .errors import SparsetrainError


def _add_data_args(p):
    from .data import DATASETS

    p.add_argument("--dataset", help=f"{', '.join(DATASETS)} (any case), or a .npz file "
                   "with X_train, y_train, X_test, y_test (see 'sparsetrain datasets')")
    p.add_argument("--data-dir", help="folder with the dataset files (else $SPARSETRAIN_DATA, "
                   "else the cache folder)")
    p.add_argument("--no-download", action="store_true", help="never try to download data")
    g = p.add_argument_group("synthetic dataset (make_classification)")
    g.add_argument("--n-samples", type=int, help="samples (default 10000, 70/30 split)")
    g.add_argument("--n-features", type=int, help="features (default 100)")
    g.add_argument("--n-informative", type=int, help="informative features (default 20)")
    g.add_argument("--n-classes", type=int, help="classes (default 2)")
    g.add_argument("--class-sep", type=float, help="distance of the class clusters (default 1)")


def _add_option(parser, param: Param, help: str | None = None) -> None:
    """The option of one :class:`TrainConfig` field, from its entry in :data:`PARAMS`.

    Values are parsed to the field's type only; what is allowed is checked once, by
    :meth:`TrainConfig.validate`, so a bad value gets the same message as in Python.
    Unset options stay None (the preset decides); ``--no-...`` flags store False.
    """
    help = help or param.help
    if isinstance(param.rule, Flag):
        parser.add_argument(param.flag, dest=param.name, action="store_false", default=None,
                            help=help)
    else:
        parser.add_argument(param.flag, dest=param.name, type=param.rule.parse, help=help,
                            metavar=getattr(param.rule, "metavar", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsetrain", description="Truly sparse neural network training.")
    parser.add_argument("--version", action="version", version=f"sparsetrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a truly sparse MLP with SET",
                       description="Train a truly sparse MLP with Sparse Evolutionary Training. "
                       "Unset options come from the preset of the dataset.")
    _add_data_args(t)
    t.add_argument("--preset", default="paper", choices=["paper", "none"],
                   help="paper: the paper's settings for the dataset (default); none: defaults")
    ip = t.add_argument_group(PARAMS["ip_start"].group)
    ip.add_argument("--ip", action="store_true",
                    help="enable it; starts at 40%% of the epochs unless --ip-start is given")
    groups = {ip.title: ip}
    for param in PARAMS.values():
        if param.group and param.group not in groups:
            groups[param.group] = t.add_argument_group(param.group)
        _add_option(groups.get(param.group, t), param)
    groups[PARAMS["micro_batch"].group].add_argument(
        "--memory-budget", dest="memory_budget", type=float, metavar="GB",
        help="memory the model, its work arrays and the SET step may use, in GB (default: "
        "85%% of what is available); sets the micro-batch unless --micro-batch is given")
    t.add_argument("--threads", type=int, help="compute threads (default: all cores)")
    t.add_argument("--out", help="run folder: config.json, metrics.csv, model.npz, PNG")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last finished epoch")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run --out holds (without it, a folder holding a run is "
                   "refused unless --resume is given)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    par = t.add_argument_group("parallel training on Ray (SPEC 1.8; pip install -e \".[parallel]\")")
    par.add_argument("--parallel", choices=["wasap", "wassp"],
                     help="WASAP-SGD (asynchronous phase 1) or WASSP-SGD (synchronous)")
    par.add_argument("--workers", type=int, help="number of workers (default: the cores)")
    par.add_argument("--ray-address", dest="ray_address",
                     help="join this Ray cluster (auto, HOST:PORT, ray://HOST:PORT) instead of "
                     "starting an embedded one")
    par.add_argument("--phase1-epochs", dest="phase1_epochs", type=int,
                     help="last epoch of phase 1 (default: 70%% of the epochs)")
    par.add_argument("--worker-threads", dest="worker_threads", type=int, default=1,
                     help="compute threads per worker (default 1)")
    par.add_argument("--local-steps", dest="local_steps", type=int,
                     help="WASAP over Ray calls (a cluster): SGD steps per push, their "
                     "progress averaged at the server (default 16; 1 with --compress none "
                     "is the paper's one gradient per push)")
    par.add_argument("--compress", choices=["auto", "none", "float16"],
                     help="WASAP over Ray calls: values on the wire as float16 with error "
                     "feedback (auto, the default: float16 on a cluster)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test a saved model on a dataset")
    e.add_argument("--model", required=True, help="model.npz written by 'train'")
    _add_data_args(e)
    e.add_argument("--split", choices=["test", "train"], default="test")
    e.add_argument("--threads", type=int)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("reproduce", help="the paper's Table 2 variants on a dataset, over seeds",
                       description="SET ReLU, SET ReLU + IP, SET All-ReLU, SET All-ReLU + IP, "
                       "dense ReLU and dense All-ReLU with the paper's preset; writes table.md, "
                       "runs.csv and PNGs. Interrupted runs continue where they stopped.")
    r.add_argument("--dataset", required=True)
    r.add_argument("--data-dir")
    r.add_argument("--no-download", action="store_true")
    _add_option(r, PARAMS["epochs"], "epochs per run (default: the preset's 500)")
    r.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    r.add_argument("--variants", help="comma-separated subset of: " + ", ".join(
        v.slug for v in _variants()))
    r.add_argument("--rules", default="set", help="comma-separated evolution rules, each "
                   "sparse variant run under each: set (the paper's), rigl, gradient, "
                   "momentum, importance, cosine (default: set)")
    _add_option(r, PARAMS["zeta"], "rewired fraction of every sparse run (default: the "
                "preset's 0.3)")
    _add_option(r, PARAMS["lr_schedule"], "learning rate of every run over the epochs: "
                "constant (the preset's) or cosine")
    _add_option(r, PARAMS["dropout"], "dropout rate of every run's hidden layers "
                "(default: the preset's)")
    _add_option(r, PARAMS["val_fraction"], "held out for the test accuracy at the best "
                "validation epoch (default 0: none)")
    _add_option(r, PARAMS["ip_start"], "default: 40%% of the epochs")
    _add_option(r, PARAMS["ip_step"], "default: 10 * epochs / 500")
    _add_option(r, PARAMS["ip_percentile"], "default: 20")
    r.add_argument("--threads", type=int)
    r.add_argument("--out", help="output folder (default: reproduce-DATASET)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_reproduce)

    d = sub.add_parser("datasets", help="list known datasets and where each was found")
    d.add_argument("--data-dir")
    d.set_defaults(func=cmd_datasets)

    try:
        from .sublinear.cli import add_subcommand
    except ImportError:  # the sublinear module is optional
        pass
    else:
        add_subcommand(sub)
    return parser


def _set_threads(threads):
    if threads is None:
        return
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise SparsetrainError(f"The '--threads' option must be an integer in [1, {limit}]. "
                               f"Got {threads} instead.")
    numba.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def _check_data_dir(args):
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise SparsetrainError(f"The '--data-dir' folder {args.data_dir} does not exist; give "
                               "the folder holding the dataset files")


def _load_data(args, dataset=None, options=None):
    from .config import dataset_key
    from .data import load_dataset

    name = dataset or args.dataset
    if not name:
        from .data import DATASETS

        raise SparsetrainError(f"The '--dataset' option is required: one of {', '.join(DATASETS)}, "
                               "or a .npz file (see 'sparsetrain datasets')")
    _check_data_dir(args)
    if options is None:
        options = {k: getattr(args, k) for k in ("n_samples", "n_features", "n_informative",
                                                  "n_classes", "class_sep")
                   if getattr(args, k) is not None}
        if options and dataset_key(name) != "synthetic":
            raise SparsetrainError(f"options {sorted('--' + k.replace('_', '-') for k in options)}"
                                   f" apply to --dataset synthetic only, not {name!r}")
    # Standardisation is part of the model (training-set statistics), so load raw features.
    return load_dataset(name, args.data_dir, standardize=False,
                        download=not args.no_download, **options), options


def cmd_train(args) -> int:
    _set_threads(args.threads)
    budget = None
    if args.memory_budget is not None:
        if not (math.isfinite(args.memory_budget) and args.memory_budget > 0):
            raise SparsetrainError("The '--memory-budget' option must be a number of GB in "
                                   f"(0, inf). Got {args.memory_budget} instead.")
        budget = int(args.memory_budget * 1e9)
    out = Path(args.out) if args.out else None
    progress = False if args.no_progress else None
    if args.resume and out is None:
        raise SparsetrainError("The '--resume' option needs '--out RUN', the run folder to continue")
    if args.overwrite and out is None:
        raise SparsetrainError("The '--overwrite' option needs '--out RUN', the run folder to replace")
    parallel_opts = [o for o in ("workers", "ray_address", "phase1_epochs", "local_steps",
                                 "compress")
                     if getattr(args, o) is not None]
    if parallel_opts and not args.parallel:
        raise SparsetrainError(f"'--{parallel_opts[0].replace('_', '-')}' needs '--parallel "
                               "wasap' or '--parallel wassp'")
    if args.workers is not None:
        _check_workers(args.workers, cluster=args.ray_address is not None)
    if out is None:
        return _train(args, out, budget, progress)
    from .io import claim_run_folder

    # The folder is this process's until training ends (any exit releases the lock).
    with claim_run_folder(out, resume=args.resume, overwrite=args.overwrite) as run_folder:
        if run_folder.stale_pid is not None:
            print(f"sparsetrain: note: {out} was locked by a run (pid {run_folder.stale_pid}) "
                  "that ended without releasing it; taking it over", file=sys.stderr)
        return _train(args, out, budget, progress)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_same_file(run: dict) -> None:
    """A run trained on a user .npz resumes only on the same bytes."""
    want = run.get("dataset_sha256")
    path = Path(str(run.get("dataset")))
    if want is None or not path.is_file():
        return  # a missing file gets the loader's message
    if _sha256(path) != want:
        raise SparsetrainError(f"The dataset file {path} changed since this run started (its "
                               "SHA-256 differs); --resume must train on the same data. Restore "
                               "the file, or start a new run with --overwrite")


def _json_value(v):
    """NaN and infinities as null: the output must stay valid JSON."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _check_workers(workers: int, cluster: bool = False) -> None:
    import os

    if workers < 1:
        raise SparsetrainError(f"The '--workers' option must be an integer >= 1. Got {workers} "
                               "instead. Leave it out to use one worker per core.")
    cores = os.cpu_count() or 1
    if workers > cores and not cluster:  # a cluster's cores are on its nodes
        print(f"sparsetrain: warning: --workers {workers} starts more worker processes than "
              f"the {cores} cores; they will share them and each step will be slower",
              file=sys.stderr)


def _train(args, out, budget, progress) -> int:
    from .config import make_config
    from .trainer import Trainer, build_model

    if args.resume and (out / "model.npz").exists():
        trainer, model = Trainer.from_checkpoint(out, epochs=args.epochs, progress=progress)
        if "parallel" in trainer.run_info:  # a parallel run resumes in parallel
            from .parallel import ParallelTrainer

            trainer, model = ParallelTrainer.from_checkpoint(out, epochs=args.epochs,
                                                             progress=progress)
            if args.ray_address:
                trainer.parallel.ray_address = args.ray_address
        elif args.parallel:
            raise SparsetrainError(f"{out} holds a sequential run; resume it without --parallel")
        ignored = [f"--{k.replace('_', '-')}" for k in PARAMS
                   if k != "epochs" and getattr(args, k) is not None]
        if ignored or args.dataset:
            print(f"sparsetrain: warning: --resume continues with the run's saved config.json; "
                  f"ignoring {', '.join(ignored + (['--dataset'] if args.dataset else []))} "
                  "(only --epochs and --threads may change)", file=sys.stderr)
        run = trainer.run_info
        _check_same_file(run)
        ds, _ = _load_data(args, run.get("dataset"), run.get("options", {}))
        print(f"sparsetrain: resuming {out} after epoch {trainer.epoch}", file=sys.stderr)
    else:
        if args.resume:
            print(f"sparsetrain: no checkpoint in {out}; starting a new run", file=sys.stderr)
        ds, options = _load_data(args)
        overrides = {k: getattr(args, k) for k in PARAMS}
        cfg = make_config(args.dataset, args.preset, **overrides)
        if args.ip and cfg.ip_start is None:
            cfg.ip_start = max(1, round(0.4 * cfg.epochs))  # the paper: 200 of 500 epochs
        model = build_model(cfg, ds.X_train, ds.n_classes, memory_budget=budget)
        run_info = {"dataset": args.dataset, "options": options, "source": ds.source,
                    "preset": args.preset}
        if str(args.dataset).lower().endswith(".npz"):
            # --resume may run from another folder, and must train on the same data.
            path = Path(args.dataset).expanduser().resolve()
            run_info.update(dataset=str(path), dataset_sha256=_sha256(path))
        if args.parallel:
            import os

            from .parallel import ParallelConfig, ParallelTrainer

            par = ParallelConfig(mode=args.parallel, workers=args.workers or os.cpu_count() or 1,
                                 phase1_epochs=args.phase1_epochs,
                                 worker_threads=args.worker_threads,
                                 ray_address=args.ray_address, local_steps=args.local_steps,
                                 compress=args.compress or "auto")
            trainer = ParallelTrainer(cfg, par, out, progress=progress, run_info=run_info)
        else:
            trainer = Trainer(cfg, out, progress=progress, run_info=run_info)
        trainer.write_config(model)
    trainer.memory_budget = budget
    print(f"sparsetrain: {ds!r}; {model!r}", file=sys.stderr)
    if trainer.epoch >= trainer.config.epochs:
        print(f"sparsetrain: run already finished ({trainer.epoch} epochs)", file=sys.stderr)
        return 0
    history = trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    best = max(history, key=lambda r: r["test_accuracy"])
    last = history[-1]
    print(f"final test accuracy {last['test_accuracy']:.4f} (best {best['test_accuracy']:.4f} "
          f"at epoch {best['epoch']}), {last['n_connections']} connections"
          + (f"; results in {out}" if out else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .data import check_X, check_y
    from .io import load_model

    _set_threads(args.threads)
    model, meta = load_model(args.model)
    ds, _ = _load_data(args)
    X, y = (ds.X_test, ds.y_test) if args.split == "test" else (ds.X_train, ds.y_train)
    name = f"dataset {ds.name!r}"
    X = check_X(X, name, n_features=model.n_features,
                expected=f"the model in {args.model} expects {model.n_features}")
    check_y(y, f"y_{args.split} of {name}", task=model.task, n_rows=len(X),
            n_outputs=model.n_outputs, rows=name,
            origin=f"the model in {args.model} has only {model.n_outputs} classes")
    loss, acc = model.evaluate(X, y)
    print(json.dumps({"dataset": ds.name, "split": args.split, "n": int(len(y)),
                      "loss": _json_value(loss), "accuracy": _json_value(acc),
                      "epoch": meta.get("epoch")}, allow_nan=False))
    return 0


def _variants():
    from .reproduce import VARIANTS

    return VARIANTS


def cmd_reproduce(args) -> int:
    from .io import claim_run_folder
    from .reproduce import reproduce

    _set_threads(args.threads)
    _check_data_dir(args)
    out = Path(args.out or f"reproduce-{args.dataset}")
    variants = args.variants.split(",") if args.variants else None
    # One reproduce per folder at a time (it continues interrupted runs by design).
    with claim_run_folder(out, resume=True):
        reproduce(args.dataset, out, data_dir=args.data_dir, epochs=args.epochs,
                  seeds=args.seeds, ip_start=args.ip_start, ip_step=args.ip_step,
                  ip_percentile=args.ip_percentile, variants=variants,
                  rules=args.rules.split(","), val_fraction=args.val_fraction or 0.0,
                  zeta=args.zeta, lr_schedule=args.lr_schedule, dropout=args.dropout,
                  progress=False if args.no_progress else None, download=not args.no_download)
    print((out / "table.md").read_text())
    return 0


def cmd_datasets(args) -> int:
    from .data import list_datasets

    for row in list_datasets(args.data_dir):
        print(f"{row['name']:<15} {row['location']}\n{'':<15} {row['description']}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SparsetrainError as exc:
        print(f"sparsetrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsetrain: interrupted; rerun with --resume to continue from the last "
              "finished epoch", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
