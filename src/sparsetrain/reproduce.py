"""``sparsetrain reproduce``: the paper's Table 2 variants on one dataset, over seeds.

Variants (SPEC 1.5-1.7, paper Table 2): SET ReLU, SET ReLU + IP, SET All-ReLU,
SET All-ReLU + IP, dense ReLU, dense All-ReLU. "Dense" runs every layer fully
connected through the same code path (evolution never touches a full layer), with
Xavier (Glorot-uniform) initial weights, the default of the Keras ``Dense`` layers the
paper's dense baselines used (Madelon's N(0,1)/10 preset ignores the fan-in and makes
dense All-ReLU diverge to NaN by epoch 3). Each
run trains in its own folder ``OUT/<variant>/seed<k>`` with a checkpoint after every
epoch, so an interrupted ``reproduce`` continues where it stopped.

Importance Pruning schedule: the paper's is start 200, every 10 epochs, 20th
percentile, for 500 epochs; with another budget ``E`` it scales with it (start at
40% of ``E``, step ``10 * E / 500``) unless given.

Evolution rules (``rules``, :data:`RULES`): each sparse variant also runs with every rule
named besides ``set`` (the paper's), as the variant ``<slug>-<rule>``: ``rigl``
(gradient-guided growth, cosine-decayed rewiring), ``gradient`` (gradient growth, the
paper's constant rewiring), ``momentum`` (growth by gradient momentum), ``importance``
(growth by input-neuron importance), ``cosine`` (the paper's random growth with RigL's
cosine-decayed rewiring).

Model selection (``val_fraction``): every run holds out that fraction of the training set
and reports, next to the paper's protocol (the best test accuracy over the epochs), the
honest one: the test accuracy at the epoch of best validation accuracy.

Outputs in ``OUT``: ``table.md`` (best and final test accuracy, mean +- std over
seeds, the validation-selected test accuracy, connections at start and end, hidden
neurons at the end, minutes per run and evolution seconds per epoch, the paper's figure),
``runs.csv`` (one row per run), ``learning_curves.png`` and ``connections.png``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import make_config
from .errors import param_error
from .io import write_text
from .trainer import Trainer, build_model


@dataclass(frozen=True)
class Variant:
    slug: str
    label: str
    activation: str
    ip: bool
    dense: bool
    rule: str = "set"


#: Evolution rules: the config fields each sets (see :mod:`sparsetrain.evolution`).
RULES = {"set": dict(grow="random", zeta_schedule="constant"),
         "rigl": dict(grow="gradient", zeta_schedule="cosine"),
         "gradient": dict(grow="gradient", zeta_schedule="constant"),
         "momentum": dict(grow="momentum", zeta_schedule="constant"),
         "importance": dict(grow="importance", zeta_schedule="constant"),
         "cosine": dict(grow="random", zeta_schedule="cosine")}


VARIANTS = (
    Variant("set-relu", "SET ReLU", "relu", False, False),
    Variant("set-relu-ip", "SET ReLU + IP", "relu", True, False),
    Variant("set-allrelu", "SET All-ReLU", "all-relu", False, False),
    Variant("set-allrelu-ip", "SET All-ReLU + IP", "all-relu", True, False),
    Variant("dense-relu", "dense ReLU", "relu", False, True),
    Variant("dense-allrelu", "dense All-ReLU", "all-relu", False, True),
)

#: Paper Table 2: best test accuracy (%) over 500 epochs, in VARIANTS order.
PAPER_TABLE2 = {
    "fashion-mnist": (90.48, 89.43, 91.38, 90.12, 90.85, 90.73),
    "madelon": (68.50, 75.00, 71.33, 77.00, 59.66, 62.00),
    "higgs": (73.59, 73.50, 73.67, 73.76, 70.59, 70.10),
    "cifar10": (67.05, 65.21, 69.83, 68.55, 64.94, 67.96),
}


def ip_schedule(epochs: int) -> tuple[int, int]:
    """The paper's (start 200, step 10) of 500 epochs, scaled to ``epochs``."""
    return max(1, round(0.4 * epochs)), max(1, round(10 * epochs / 500))


def with_rules(variants, rules) -> list[Variant]:
    """``variants``, each sparse one followed by its copies under the other ``rules``."""
    out = []
    for v in variants:
        for rule in rules:
            if rule == "set":
                out.append(v)
            elif not v.dense:
                out.append(Variant(f"{v.slug}-{rule}", f"{v.label} ({rule})", v.activation,
                                   v.ip, v.dense, rule))
    return out


def run_one(variant: Variant, seed: int, ds, dataset: str, folder: Path, epochs, ip, progress,
            val_fraction: float = 0.0, settings: dict | None = None):
    """Train (or resume, or just read) one run; returns its metrics history."""
    if (folder / "model.npz").exists():
        trainer, model = Trainer.from_checkpoint(folder, epochs=epochs, progress=progress)
    else:
        overrides = {"activation": variant.activation, "seed": seed, "epochs": epochs,
                     "val_fraction": val_fraction, **RULES[variant.rule]}
        overrides.update(settings or {})
        if variant.dense:
            overrides["init"] = "xavier"
        if variant.ip:
            overrides.update(ip_start=ip[0], ip_step=ip[1], ip_percentile=ip[2])
        cfg = make_config(dataset, "paper", **overrides)
        model = build_model(cfg, ds.X_train, ds.n_classes, dense=variant.dense)
        trainer = Trainer(cfg, folder, progress=progress,
                          run_info={"dataset": dataset, "variant": variant.label})
        trainer.write_config(model)
    if trainer.epoch < trainer.config.epochs:
        trainer.fit(model, ds.X_train, ds.y_train, ds.X_test, ds.y_test)
    return trainer.history


def reproduce(dataset: str, out, *, data_dir=None, epochs=None, seeds=1, ip_start=None,
              ip_step=None, ip_percentile=None, variants=None, progress=None,
              download=True, rules=("set",), val_fraction=0.0, zeta=None,
              lr_schedule=None, dropout=None) -> list[dict]:
    """Run the Table 2 variants of ``dataset`` (under each of ``rules``); write the table
    and figures into ``out``. ``zeta`` (the rewired fraction of every sparse run),
    ``lr_schedule`` and ``dropout``: settings of every run instead of the preset's (None:
    the preset's); the table names those given."""
    from .data import load_dataset

    if not isinstance(seeds, int) or seeds < 1:
        raise param_error("seeds", "an integer >= 1", seeds)
    rules = list(rules)
    if not rules or set(rules) - set(RULES) or len(set(rules)) != len(rules):
        raise param_error("rules", f"a list of distinct names from {list(RULES)}", rules)
    chosen = VARIANTS if variants is None else [v for v in VARIANTS if v.slug in variants]
    unknown = set(variants or ()) - {v.slug for v in VARIANTS}
    if unknown or not chosen:
        raise param_error("variants", f"a non-empty list of names from {[v.slug for v in VARIANTS]}",
                          sorted(unknown) or variants)
    settings = {k: v for k, v in dict(zeta=zeta, lr_schedule=lr_schedule,
                                      dropout=dropout).items() if v is not None}
    epochs = make_config(dataset, "paper").epochs if epochs is None else epochs
    start, step = ip_schedule(epochs)
    ip = (start if ip_start is None else ip_start, step if ip_step is None else ip_step,
          20.0 if ip_percentile is None else ip_percentile)
    make_config(dataset, "paper", epochs=epochs, ip_start=ip[0], ip_step=ip[1],
                ip_percentile=ip[2], val_fraction=val_fraction,
                **settings)  # validated before any work
    chosen = with_rules(chosen, rules)
    ds = load_dataset(dataset, data_dir, standardize=False, download=download)
    out = Path(out)
    runs = []
    for variant in chosen:
        for seed in range(seeds):
            hist = run_one(variant, seed, ds, dataset, out / variant.slug / f"seed{seed}", epochs,
                           ip, progress, val_fraction, settings)
            acc = [r["test_accuracy"] for r in hist]
            val = [r.get("val_accuracy") for r in hist]
            chosen_epoch = int(np.argmax(val)) if None not in val else None  # first best
            runs.append({"variant": variant.label, "slug": variant.slug, "seed": seed,
                         "best_test_accuracy": max(acc), "final_test_accuracy": acc[-1],
                         "best_epoch": int(np.argmax(acc)) + 1,
                         "val_selected_test_accuracy": (None if chosen_epoch is None
                                                        else acc[chosen_epoch]),
                         "val_selected_epoch": (None if chosen_epoch is None
                                                else chosen_epoch + 1),
                         "evolution_seconds": float(np.mean(
                             [r["evolution_seconds"] for r in hist[:-1]] or [0.0])),
                         "connections_start": _first_connections(out / variant.slug / f"seed{seed}",
                                                                 hist),
                         "connections_end": hist[-1]["n_connections"],
                         "hidden_neurons_end": _hidden_neurons(hist[-1]),
                         "minutes": sum(r["epoch_seconds"] for r in hist) / 60, "history": hist})
    write_text(out / "runs.csv", _runs_csv(runs))
    write_text(out / "table.md", _table(dataset, epochs, seeds, ip, chosen, runs, val_fraction,
                                          settings))
    _plots(out, chosen, runs)
    return runs


def _first_connections(folder, hist):
    import json

    try:
        return sum(json.loads((folder / "config.json").read_text())["connections_at_start"])
    except (OSError, KeyError, ValueError):
        return hist[0]["n_connections"]


def _hidden_neurons(row) -> int:
    """Hidden neurons (all hidden layers) in a metrics row."""
    return sum(int(n) for n in str(row["neurons_per_layer"]).split()[1:-1])


def _runs_csv(runs) -> str:
    buf = io.StringIO()
    cols = ["variant", "seed", "best_test_accuracy", "best_epoch", "final_test_accuracy",
            "val_selected_test_accuracy", "val_selected_epoch", "connections_start",
            "connections_end", "hidden_neurons_end", "minutes", "evolution_seconds"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(runs)
    return buf.getvalue()


def _table(dataset, epochs, seeds, ip, chosen, runs, val_fraction=0.0, settings=None) -> str:
    paper = PAPER_TABLE2.get(dataset)
    base = {v.slug: i for i, v in enumerate(VARIANTS)}
    val = (f" Validation: {100 * val_fraction:g}% of the training set held out; \"test acc at "
           "best val\" is the test accuracy at the epoch of best validation accuracy (the "
           "honest protocol; the paper's is the best test accuracy)." if val_fraction else "")
    lines = [f"# Table 2 variants on {dataset}: {epochs} epochs, {seeds} seed(s)", "",
             f"Importance Pruning: start {ip[0]}, every {ip[1]} epochs, {ip[2]:g}th percentile. "
             + "".join(f"Every run: {k} = {f'{v:g}' if isinstance(v, float) else v} "
                       f"(--{k.replace('_', '-')}). " for k, v in (settings or {}).items())
             + "Accuracies in %, mean +- std over seeds; connections and hidden neurons (all "
             "hidden layers) as means over seeds; minutes per run (train + eval + "
             "evolution); evolution seconds per epoch." + val, "",
             "| variant | best test acc | test acc at best val | final test acc | connections "
             "start | connections end | change | hidden neurons end | minutes | evolution s "
             "| paper best (500 ep.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant in chosen:
        rs = [r for r in runs if r["slug"] == variant.slug]
        best = 100 * np.array([r["best_test_accuracy"] for r in rs])
        final = 100 * np.array([r["final_test_accuracy"] for r in rs])
        sel = [r["val_selected_test_accuracy"] for r in rs]
        sel = ("n/a" if None in sel else
               f"{100 * np.mean(sel):.2f} +- {100 * np.std(sel):.2f}")
        c0 = np.mean([r["connections_start"] for r in rs])
        c1 = np.mean([r["connections_end"] for r in rs])
        h1 = np.mean([r["hidden_neurons_end"] for r in rs])
        slug = variant.slug.removesuffix(f"-{variant.rule}")
        ref = (f"{paper[base[slug]]:.2f}" if paper and variant.rule == "set" else "n/a")
        lines.append(f"| {variant.label} | {best.mean():.2f} +- {best.std():.2f} | {sel} | "
                     f"{final.mean():.2f} +- {final.std():.2f} | {c0:,.0f} | {c1:,.0f} | "
                     f"{100 * (c1 / c0 - 1):+.1f}% | {h1:,.0f} | "
                     f"{np.mean([r['minutes'] for r in rs]):.2f} | "
                     f"{np.mean([r['evolution_seconds'] for r in rs]):.3f} | {ref} |")
    return "\n".join(lines) + "\n"


def _plots(out, chosen, runs):
    from .plots import variant_curves

    variant_curves(out / "learning_curves.png", chosen, runs, "test_accuracy", "test accuracy",
                   scale=100, ylabel="test accuracy (%)")
    variant_curves(out / "connections.png", chosen, runs, "n_connections", "connections",
                   log=True, ylabel="connections (all layers)")
