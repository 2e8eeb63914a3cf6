"""Cost-per-iteration benchmark of SGD with activated-neuron identification (SPEC 2.5).

For fixed ``n``, ``d``, batch ``B`` and several seeds, sweep the width ``m``
and run, in the same process and on the same data and initial weights:

* ``dense``: the reference SGD step over all ``m`` neurons;
* ``oracle-sparse``: brute-force identification + sparse math (separates the
  sparsity gain from the data structure's cost);
* every index of :data:`~sparsetrain.sublinear.indexes.INDEXES` except
  brute force (which *is* the oracle).

Per iteration we record the time split (identification, index maintenance,
gradient) and work counters; index construction is reported apart.  Then we
fit ``log t = c + s log m`` per method (OLS over all widths and seeds, 95%
t-interval on ``s``), find the crossover width against dense, check the LSH
recall against brute force, and sweep ``d`` for the half-space tree.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_csv, write_text
from ..memory import aligned_empty
from ._checks import check_choice, invalid
from .data import synthetic
from .indexes import INDEXES, make_index, recall
from .network import ShiftedReLUNetwork, default_shift, gaussian_tail
from .train import DENSE, train_sgd

__all__ = ["BenchConfig", "run_sgd_bench", "fit_slope", "crossover", "method_table"]

ORACLE = "oracle-sparse"

#: Columns of ``sgd_bench.csv``: the run, its median seconds per iteration, firing, work counters.
BENCH_COLUMNS = (
    ("method", "width", "log2_width", "dim", "n", "batch", "seed", "shift")
    + ("t_total", "t_identify", "t_maintain", "t_gradient", "t_build")
    + ("fired_per_input", "fired_fraction", "bound_m_pow", "gaussian_tail")
    + ("neurons_updated", "nodes_visited", "pairs_refreshed", "recall", "index_bytes_per_pair")
)


def method_table() -> dict[str, str]:
    """Benchmark method name -> trainer ``index`` argument."""
    table = {DENSE: DENSE, ORACLE: "brute-force"}
    table.update({k: k for k in INDEXES if k != "brute-force"})
    return table


@dataclass
class BenchConfig:
    """Settings of one benchmark run (all recorded in the output)."""

    log2_widths: tuple[int, ...] = tuple(range(12, 21))
    dim: int = 16
    n: int = 256
    batch: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    iters: int = 8
    warmup: int = 2
    lr: float = 0.5
    methods: tuple[str, ...] = tuple(method_table())
    d_sweep: tuple[int, ...] = (4, 8, 16, 64)
    d_sweep_log2_widths: tuple[int, ...] = (12, 14, 16, 18)
    recall_queries: int = 64


def fit_slope(m: np.ndarray, t: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """OLS slope of ``log t`` on ``log m`` with a ``level`` t-interval: (slope, lo, hi)."""
    from scipy import stats

    x = np.log(np.asarray(m, float))
    y = np.log(np.asarray(t, float))
    if x.size < 3 or np.ptp(x) == 0:
        return math.nan, math.nan, math.nan
    res = stats.linregress(x, y)
    q = stats.t.ppf(0.5 + level / 2, x.size - 2)
    return float(res.slope), float(res.slope - q * res.stderr), float(res.slope + q * res.stderr)


def crossover(widths: np.ndarray, t_method: np.ndarray, t_dense: np.ndarray) -> int | None:
    """Smallest width from which the method is faster than dense at every larger width."""
    faster = np.asarray(t_method) < np.asarray(t_dense)
    for k in range(len(widths)):
        if faster[k:].all():
            return int(widths[k])
    return None


def _run_one(method: str, net0: ShiftedReLUNetwork, X, y, cfg: BenchConfig, seed: int):
    W = aligned_empty(net0.W.shape, np.float64)  # a copy whose rows start cache lines, like init's
    W[:] = net0.W
    net = ShiftedReLUNetwork(W=W, a=net0.a, shift=net0.shift)
    index = method_table()[method]
    res = train_sgd(
        net,
        X,
        y,
        index=index,
        lr=cfg.lr,
        batch_size=cfg.batch,
        n_iter=cfg.warmup + cfg.iters,
        seed=seed,
    )
    h = {k: np.asarray(v[cfg.warmup :], float) for k, v in res.history.items()}
    row: dict[str, Any] = {
        "t_total": float(np.median(h["t_total"])),
        "t_identify": float(np.median(h["t_identify"])),
        "t_maintain": float(np.median(h["t_maintain"])),
        "t_gradient": float(np.median(h["t_gradient"])),
        "t_build": res.t_build,
        "fired_per_input": float(np.mean(h["fired_per_input"])),
        "neurons_updated": float(np.mean(h["neurons_updated"])),
        "nodes_visited": float(np.mean(h["nodes_visited"])),
        "pairs_refreshed": float(np.mean(h["pairs_refreshed"])),
        "recall": math.nan,
        "index_bytes_per_pair": float(getattr(res.index, "bytes_per_pair", math.nan)),
    }
    if res.index is not None and not res.index.exact:
        q = X[: cfg.recall_queries]
        ids = np.arange(q.shape[0])
        truth = make_index("brute-force").build(net.W, net.shift).query(q)
        row["recall"] = recall(res.index.query(q, ids), truth)
    return row, net


def _d_trend(cfg: BenchConfig, progress) -> list[dict[str, Any]]:
    """Identification time per batch for the half-space tree vs brute force over ``d``."""
    rows = []
    for d in cfg.d_sweep:
        for lw in cfg.d_sweep_log2_widths:
            m = 1 << lw
            X, _ = synthetic(cfg.batch * 4, d, seed=0)
            net = ShiftedReLUNetwork.init(m, d, seed=0)
            for name in ("brute-force", "halfspace-tree"):
                idx = make_index(name)
                t0 = time.perf_counter()
                idx.build(net.W, net.shift)
                t_build = time.perf_counter() - t0
                times = []
                for rep in range(8):
                    Xb = X[(rep % 4) * cfg.batch : (rep % 4 + 1) * cfg.batch]
                    t0 = time.perf_counter()
                    idx.query(Xb)
                    times.append(time.perf_counter() - t0)
                rows.append(
                    dict(
                        dim=d,
                        width=m,
                        index=name,
                        t_query_batch=float(np.median(times)),
                        t_build=t_build,
                        nodes_visited=idx.stats["nodes_visited"] / 8,
                        fired_per_input=idx.stats["fired"] / idx.stats["queries"],
                    )
                )
                progress(f"d-trend d={d} m=2^{lw} {name}: {rows[-1]['t_query_batch']:.2e}s")
    return rows


def run_sgd_bench(cfg: BenchConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run the sweep, write CSV/PNG/Markdown into ``out_dir``, return the summary."""
    table = method_table()
    for meth in cfg.methods:
        check_choice("methods", meth, table)
    if DENSE not in cfg.methods:
        raise invalid("methods", "a tuple that includes 'dense' (the baseline)", cfg.methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *_: None)
    X_all: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for lw in cfg.log2_widths:
        m = 1 << lw
        for seed in cfg.seeds:
            if seed not in X_all:
                X_all[seed] = synthetic(cfg.n, cfg.dim, seed=1000 + seed)
            X, y = X_all[seed]
            net0 = ShiftedReLUNetwork.init(m, cfg.dim, seed=seed)
            for meth in cfg.methods:
                r, _ = _run_one(meth, net0, X, y, cfg, seed)
                b = net0.shift
                r.update(
                    method=meth,
                    width=m,
                    log2_width=lw,
                    dim=cfg.dim,
                    n=cfg.n,
                    batch=cfg.batch,
                    seed=seed,
                    shift=b,
                    fired_fraction=r["fired_per_input"] / m,
                    bound_m_pow=m**-0.2,
                    gaussian_tail=gaussian_tail(b),
                )
                rows.append(r)
                say(
                    f"[{time.perf_counter() - t_start:7.1f}s] m=2^{lw} seed={seed} {meth:17s} "
                    f"t={r['t_total']:.3e}s (id {r['t_identify']:.1e}, mt {r['t_maintain']:.1e}, "
                    f"gr {r['t_gradient']:.1e}) build={r['t_build']:.2e}s fired/in={r['fired_per_input']:.0f}"
                    + (f" recall={r['recall']:.3f}" if not math.isnan(r["recall"]) else "")
                )
    write_csv(out / "sgd_bench.csv", rows, BENCH_COLUMNS, float_format=".6g")
    d_rows = _d_trend(cfg, say) if cfg.d_sweep else []
    if d_rows:
        write_csv(out / "halfspace_d_trend.csv", d_rows, list(d_rows[0]), float_format=".6g")
    summary = _summarise(rows, d_rows, cfg)
    write_text(out / "sgd_bench_summary.json", json.dumps(summary, indent=2))
    write_text(out / "sgd_bench_summary.md", _summary_md(summary))
    _plot(rows, d_rows, cfg, summary, out)
    summary["wall_s"] = time.perf_counter() - t_start
    return summary


def _summarise(rows, d_rows, cfg: BenchConfig) -> dict[str, Any]:
    widths = np.array(sorted({r["width"] for r in rows}))
    by = {}
    for meth in cfg.methods:
        rs = [r for r in rows if r["method"] == meth]
        m_ = np.array([r["width"] for r in rs])
        t_ = np.array([r["t_total"] for r in rs])
        mean_t = np.array([np.mean(t_[m_ == w]) for w in widths])
        s, lo, hi = fit_slope(m_, t_)
        ti = np.array([r["t_identify"] for r in rs])
        si = fit_slope(m_, ti) if (ti > 0).all() else (math.nan,) * 3
        rec = [r["recall"] for r in rs if not math.isnan(r["recall"])]
        # slope of t_method / t_dense (same width and seed): < 0 means the gap grows with m
        dense_of = {(r["width"], r["seed"]): r["t_total"] for r in rows if r["method"] == DENSE}
        sr = fit_slope(m_, t_ / np.array([dense_of[(r["width"], r["seed"])] for r in rs]))
        upper = m_ >= widths[len(widths) // 2]  # the top half of the widths: the asymptotic trend
        su = fit_slope(m_[upper], t_[upper])
        top = [r for r in rs if r["width"] == widths[-1]]
        visited = float(np.mean([r["nodes_visited"] for r in top]))
        bpp = [r.get("index_bytes_per_pair", math.nan) for r in top]
        by[meth] = dict(
            index_bytes_per_pair=None if np.isnan(bpp).all() else float(np.nanmean(bpp)),
            slope_upper=su[0],
            slope_upper_lo=su[1],
            slope_upper_hi=su[2],
            mean_t_identify=[float(np.mean(ti[m_ == w])) for w in widths],
            ns_per_node_at_max=(
                1e9 * float(np.mean([r["t_identify"] for r in top])) / visited if visited > 0 else None
            ),
            slope=s,
            slope_lo=lo,
            slope_hi=hi,
            slope_identify=si[0],
            slope_vs_dense=sr[0],
            slope_vs_dense_lo=sr[1],
            slope_vs_dense_hi=sr[2],
            mean_t_total=mean_t.tolist(),
            mean_t_build=[float(np.mean([r["t_build"] for r in rs if r["width"] == w])) for w in widths],
            recall_min=min(rec) if rec else None,
            recall_mean=float(np.mean(rec)) if rec else None,
        )
    dense_t = np.array(by[DENSE]["mean_t_total"])
    for meth in cfg.methods:
        if meth == DENSE:
            continue
        x = crossover(widths, np.array(by[meth]["mean_t_total"]), dense_t)
        by[meth]["crossover_width"] = x
        by[meth]["speedup_at_max"] = float(dense_t[-1] / by[meth]["mean_t_total"][-1])
        if ORACLE in by:
            by[meth]["speedup_vs_oracle_at_max"] = float(
                by[ORACLE]["mean_t_total"][-1] / by[meth]["mean_t_total"][-1]
            )
    fired = []
    for w in widths:
        rs = [r for r in rows if r["width"] == w and r["method"] == DENSE]
        b = default_shift(int(w))
        fired.append(
            dict(
                width=int(w),
                shift=b,
                fired_fraction=float(np.mean([r["fired_fraction"] for r in rs])),
                bound_m_pow=float(w) ** -0.2,
                gaussian_tail=gaussian_tail(b),
            )
        )
    d_trend = {}
    for d in sorted({r["dim"] for r in d_rows}):
        out = {}
        for name in ("brute-force", "halfspace-tree"):
            rs = [r for r in d_rows if r["dim"] == d and r["index"] == name]
            s = fit_slope([r["width"] for r in rs], [r["t_query_batch"] for r in rs])
            out[name] = dict(slope=s[0], slope_lo=s[1], slope_hi=s[2], t=[r["t_query_batch"] for r in rs])
        out["widths"] = [r["width"] for r in d_rows if r["dim"] == d and r["index"] == "brute-force"]
        out["ratio_tree_over_bf"] = [
            a / b for a, b in zip(out["halfspace-tree"]["t"], out["brute-force"]["t"], strict=True)
        ]
        d_trend[int(d)] = out
    dense_rows = [r for r in rows if r["method"] == DENSE]
    fired_slope = fit_slope([r["width"] for r in dense_rows], [r["fired_per_input"] for r in dense_rows])
    return dict(
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        widths=widths.tolist(),
        fired_slope=fired_slope[0],
        methods=by,
        fired=fired,
        d_trend=d_trend,
    )


def _fmt_w(w) -> str:
    return "none in range" if w is None else f"2^{int(round(math.log2(w)))}"


def _summary_md(s: dict[str, Any]) -> str:
    c = s["config"]
    lines = [
        f"SGD cost per iteration, d={c['dim']}, n={c['n']}, batch={c['batch']}, "
        f"seeds={c['seeds']}, widths 2^{c['log2_widths'][0]}..2^{c['log2_widths'][-1]}",
        "",
        "| method | slope (95% CI) | slope of t/t_dense (95% CI) | identify slope "
        "| crossover vs dense | speed-up at max m | LSH recall (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for meth, v in s["methods"].items():
        rec = "" if v["recall_min"] is None else f"{v['recall_min']:.3f}"
        cross = "" if meth == DENSE else _fmt_w(v.get("crossover_width"))
        sp = "" if meth == DENSE else f"{v['speedup_at_max']:.2f}x"
        lines.append(
            f"| {meth} | {v['slope']:.3f} [{v['slope_lo']:.3f}, {v['slope_hi']:.3f}] | "
            + (
                ""
                if meth == DENSE
                else f"{v['slope_vs_dense']:.3f} [{v['slope_vs_dense_lo']:.3f}, {v['slope_vs_dense_hi']:.3f}]"
            )
            + f" | {v['slope_identify']:.3f} | {cross} | {sp} | {rec} |"
        )
    top = _fmt_w(s["widths"][-1])
    lines += [
        "",
        f"Fired neurons per input grow with slope {s['fired_slope']:.3f} over these widths (the work "
        "any exact sparse method has to do).",
        "",
        f"| method | slope over the top half of the widths (95% CI) | vs oracle-sparse at {top} "
        f"| identification ns per visited node at {top} | index bytes per (point, neuron) |",
        "|---|---|---|---|---|",
    ]
    for meth, v in s["methods"].items():
        vs = v.get("speedup_vs_oracle_at_max")
        ns = v.get("ns_per_node_at_max")
        lines.append(
            f"| {meth} | {v['slope_upper']:.3f} [{v['slope_upper_lo']:.3f}, {v['slope_upper_hi']:.3f}] | "
            + ("" if vs is None or meth == ORACLE else f"{vs:.2f}x")
            + " | "
            + ("" if ns is None or meth in (DENSE, ORACLE) else f"{ns:.1f}")
            + " | "
            + ("" if v["index_bytes_per_pair"] is None else f"{v['index_bytes_per_pair']:.2f}")
            + " |"
        )
    meths = list(s["methods"])
    lines += [
        "",
        "Mean seconds per iteration (identification in brackets):",
        "",
        "| m | " + " | ".join(meths) + " |",
        "|---|" + "---|" * len(meths),
    ]
    for k, w in enumerate(s["widths"]):
        cells = []
        for meth in meths:
            v = s["methods"][meth]
            ident = "" if meth == DENSE else f" ({v['mean_t_identify'][k]:.3g})"
            cells.append(f"{v['mean_t_total'][k]:.3g}{ident}")
        lines.append(f"| {_fmt_w(w)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| m | b | measured fired fraction | m^-0.2 bound | P[N(0,1) > b] |",
        "|---|---|---|---|---|",
    ]
    for f in s["fired"]:
        lines.append(
            f"| 2^{int(round(math.log2(f['width'])))} | {f['shift']:.3f} | {f['fired_fraction']:.4f} | "
            f"{f['bound_m_pow']:.4f} | {f['gaussian_tail']:.4f} |"
        )
    if s["d_trend"]:
        lines += [
            "",
            "| d | tree slope (95% CI) | brute-force slope | tree / brute-force time at each m |",
            "|---|---|---|---|",
        ]
        for d, v in s["d_trend"].items():
            t = v["halfspace-tree"]
            ratios = ", ".join(
                f"2^{int(round(math.log2(w)))}: {r:.2f}"
                for w, r in zip(v["widths"], v["ratio_tree_over_bf"], strict=True)
            )
            lines.append(
                f"| {d} | {t['slope']:.3f} [{t['slope_lo']:.3f}, {t['slope_hi']:.3f}] | "
                f"{v['brute-force']['slope']:.3f} | {ratios} |"
            )
    return "\n".join(lines) + "\n"


def _plot(rows, d_rows, cfg: BenchConfig, summary, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = np.array(summary["widths"])
    meths = list(cfg.methods)
    ncol = 3
    nrow = math.ceil((len(meths) + 1) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 4 * nrow), squeeze=False)
    ax0 = axes[0, 0]
    for meth in meths:
        v = summary["methods"][meth]
        ax0.plot(widths, v["mean_t_total"], "o-", label=f"{meth} (slope {v['slope']:.2f})")
    ax0.set(
        xscale="log",
        yscale="log",
        xlabel="width m",
        ylabel="s / iteration",
        title=f"total, d={cfg.dim}, n={cfg.n}, B={cfg.batch}",
    )
    ax0.legend(fontsize=7)
    parts = [
        ("t_total", "total", "k-"),
        ("t_identify", "identify", "C0--"),
        ("t_maintain", "maintain", "C1:"),
        ("t_gradient", "gradient", "C2-."),
    ]
    for k, meth in enumerate(meths, start=1):
        ax = axes[k // ncol, k % ncol]
        for key, lab, sty in parts:
            ys = [np.mean([r[key] for r in rows if r["method"] == meth and r["width"] == w]) for w in widths]
            if max(ys) > 0:
                ax.plot(widths, np.maximum(ys, 1e-7), sty, label=lab)
        ax.plot(
            widths, summary["methods"][DENSE]["mean_t_total"], color="grey", alpha=0.5, label="dense total"
        )
        ax.set(xscale="log", yscale="log", xlabel="width m", title=meth)
        ax.legend(fontsize=7)
    for k in range(len(meths) + 1, nrow * ncol):
        axes[k // ncol, k % ncol].axis("off")
    fig.tight_layout()
    fig.savefig(out / "sgd_bench.png", dpi=90)
    plt.close(fig)
    if d_rows:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for d in cfg.d_sweep:
            for name, sty in (("halfspace-tree", "-o"), ("brute-force", "--x")):
                rs = [r for r in d_rows if r["dim"] == d and r["index"] == name]
                ax[0].plot(
                    [r["width"] for r in rs], [r["t_query_batch"] for r in rs], sty, label=f"{name} d={d}"
                )
            v = summary["d_trend"][d]
            ax[1].plot(v["widths"], v["ratio_tree_over_bf"], "-o", label=f"d={d}")
        ax[0].set(xscale="log", yscale="log", xlabel="width m", ylabel=f"s per query batch (B={cfg.batch})")
        ax[0].legend(fontsize=6)
        ax[1].axhline(1.0, color="grey")
        ax[1].set(xscale="log", yscale="log", xlabel="width m", ylabel="tree / brute-force time")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "halfspace_d_trend.png", dpi=90)
        plt.close(fig)
