"""``sparsetrain sublinear report``: the experiment readers of seed 002 asked for (SPEC 2.5).

One command regenerates ``report.md`` and its PNGs:

1. cost per iteration vs ``m`` for SGD (dense, correlation tree) and Gauss-Newton
   (``gn``, ``gn-sketch``, ``gn-sublinear``), split into identification, index
   maintenance, Jacobian/gradient work and solve, with log-log slopes (95% CI);
   fired fraction, Jacobian density and status flips per iteration vs ``m``;
2. loss vs iterations and vs seconds at one width, Gauss-Newton against SGD at
   its best step from a grid (same wall-clock budget as dense Gauss-Newton),
   NTK kernel ridge regression beside them; time to a target relative loss;
3. a sweep over the shift ``b``: fired fraction, Jacobian density, and whether
   Gauss-Newton still reaches the target;
4. the convergence comparison again on a two-class Fashion-MNIST subset (when
   the data is found).

Everything runs in this process, single configuration per call; ``--quick``
uses small sizes (CI smoke test, well under 5 minutes).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataNotFoundError
from ..io import write_csv, write_text
from .bench import fit_slope
from .data import fashion_mnist_two_class, synthetic
from .gauss_newton import train_gn
from .network import ShiftedReLUNetwork, default_shift, gaussian_tail
from .ntk import ntk_regression
from .train import train_sgd

__all__ = ["ReportConfig", "QUICK", "FULL", "run_report", "COST_METHODS"]

COST_METHODS = (
    "sgd-dense",
    "sgd-oracle-sparse",
    "sgd-correlation-tree",
    "gn",
    "gn-sketch",
    "gn-oracle-sparse",
    "gn-sublinear",
)
SGD_INDEX = {
    "sgd-dense": "dense",
    "sgd-oracle-sparse": "brute-force",
    "sgd-correlation-tree": "correlation-tree",
}
GN_COST = {
    "gn": ("gn", {}),
    "gn-sketch": ("gn-sketch", {}),
    "gn-oracle-sparse": ("gn-sublinear", {"index": "brute-force"}),
    "gn-sublinear": ("gn-sublinear", {}),
}
GN_VARIANTS = ("gn", "gn-sketch", "gn-sublinear")
#: Columns of ``cost.csv``: the run, its median seconds per iteration by component, the sparsity.
COST_COLUMNS = (
    ("method", "m", "seed")
    + ("t_total", "t_identify", "t_maintain", "t_jacobian", "t_solve", "t_build")
    + ("density", "flips")
)


@dataclass(frozen=True)
class ReportConfig:
    """Sizes of one report run (recorded in its header)."""

    n: int = 256
    dim: int = 32
    log2_widths: tuple[int, ...] = (12, 13, 14, 15, 16, 17, 18, 19, 20)
    seeds: tuple[int, ...] = (0, 1, 2)
    warmup: int = 1
    iters: int = 4  # timed iterations per (method, m, seed)
    sgd_batch: int = 16
    conv_log2_width: int = 16
    conv_iters: int = 30
    target_rel: float = 1e-6
    sgd_lrs: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)
    shifts: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    fm_n: int = 256
    fm_dim: int = 32
    test_n: int = 256
    extra: dict[str, Any] = field(default_factory=dict)


FULL = ReportConfig()
QUICK = ReportConfig(
    n=64,
    dim=16,
    log2_widths=(10, 11, 12, 13),
    seeds=(0,),
    iters=3,
    conv_log2_width=13,
    conv_iters=20,
    sgd_lrs=(1.0, 4.0, 16.0),
    shifts=(0.0, 1.0, 2.0, 3.0),
    fm_n=64,
    fm_dim=16,
    test_n=64,
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cost_run(method: str, X, y, m: int, seed: int, cfg: ReportConfig) -> dict[str, float]:
    net = ShiftedReLUNetwork.init(m, X.shape[1], seed=seed)
    total = cfg.warmup + cfg.iters
    if method in SGD_INDEX:
        res = train_sgd(
            net,
            X,
            y,
            index=SGD_INDEX[method],
            lr=1.0,
            batch_size=min(cfg.sgd_batch, X.shape[0]),
            n_iter=total,
            seed=seed,
        )
        h = res.history
        comp = dict(
            t_identify=h["t_identify"],
            t_maintain=h["t_maintain"],
            t_jacobian=h["t_gradient"],
            t_solve=[0.0] * total,
        )
        flips, density = math.nan, float(np.mean(h["fired_per_input"])) / m
    else:
        name, params = GN_COST[method]
        res = train_gn(net, X, y, method=name, n_iter=total, seed=seed, **params)
        h = res.history
        comp = {k: h[k] for k in ("t_identify", "t_maintain", "t_jacobian", "t_solve")}
        fl = [v for v in h["flips"] if v >= 0]
        flips, density = (float(np.mean(fl)) if fl else math.nan), float(np.mean(h["jacobian_density"]))
    row = {k: float(np.median(v[cfg.warmup :])) for k, v in comp.items()}
    row["t_total"] = sum(row.values())
    row.update(method=method, m=m, seed=seed, t_build=float(res.t_build), flips=flips, density=density)
    return row


def _convergence(X, y, m: int, cfg: ReportConfig, Xt=None, yt=None, seed: int = 0) -> dict[str, Any]:
    """Loss curves vs iterations and seconds (cumulative, build included) + NTK + tuned SGD."""
    out: dict[str, Any] = {}
    net0 = ShiftedReLUNetwork.init(m, X.shape[1], seed=seed)
    L0 = net0.loss(X, y)
    for meth in GN_VARIANTS:
        net = ShiftedReLUNetwork(net0.W.copy(), net0.a, net0.shift)
        res = train_gn(net, X, y, method=meth, n_iter=cfg.conv_iters, seed=seed)
        L = list(res.history["train_loss"]) + [res.final_loss]
        t = np.concatenate([[res.t_build], res.t_build + np.cumsum(res.history["t_total"])])
        out[meth] = dict(loss=np.array(L), time=t, t_build=res.t_build)
    budget = float(out["gn"]["time"][-1])
    # SGD: per-iteration time measured on a short run, then the same budget for every step size
    net = ShiftedReLUNetwork(net0.W.copy(), net0.a, net0.shift)
    probe = train_sgd(net, X, y, index="dense", lr=1.0, batch_size=min(cfg.sgd_batch, X.shape[0]), n_iter=20)
    per = max(float(np.median(probe.history["t_total"])), 1e-6)
    n_sgd = int(min(max(budget / per, 50), 20000))
    best = None
    for lr in cfg.sgd_lrs:
        net = ShiftedReLUNetwork(net0.W.copy(), net0.a, net0.shift)
        every = max(1, n_sgd // 50)
        try:
            r = train_sgd(
                net,
                X,
                y,
                index="dense",
                lr=lr,
                batch_size=min(cfg.sgd_batch, X.shape[0]),
                n_iter=n_sgd,
                seed=seed,
                eval_every=every,
            )
        except Exception:  # a diverging step size is a legitimate grid outcome
            continue
        h = r.history
        it = [i for i, v in enumerate(h["train_loss"]) if not math.isnan(v)]
        L = np.array([h["train_loss"][i] for i in it])
        if not np.isfinite(L).all():
            continue
        cand = dict(lr=lr, loss=L, iters=np.array(it), time=np.cumsum(h["t_total"])[it], n_iter=n_sgd)
        if best is None or L[-1] < best["loss"][-1]:
            best = cand
    out["sgd"] = best
    ntk = ntk_regression(net0, X, y, X_test=Xt, y_test=yt)
    out["ntk"] = ntk
    out["L0"] = L0
    out["budget"] = budget
    if Xt is not None:
        for meth in GN_VARIANTS[:1]:
            net = ShiftedReLUNetwork(net0.W.copy(), net0.a, net0.shift)
            train_gn(net, X, y, method=meth, n_iter=cfg.conv_iters, seed=seed)
            out["gn_test_loss"] = net.loss(Xt, yt)
    return out


def _time_to(curve_t, curve_L, target):
    hit = np.flatnonzero(np.asarray(curve_L) <= target)
    return float(np.asarray(curve_t)[hit[0]]) if hit.size else math.nan


def _plot_convergence(conv, path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    L0 = conv["L0"]
    for meth in GN_VARIANTS:
        c = conv[meth]
        axes[0].plot(np.arange(len(c["loss"])), c["loss"] / L0, "o-", ms=3, label=meth)
        axes[1].plot(c["time"], c["loss"] / L0, "o-", ms=3, label=meth)
    s = conv["sgd"]
    if s is not None:
        axes[0].plot(s["iters"], s["loss"] / L0, "-", label=f"sgd dense, best lr={s['lr']:g} (B-sample its)")
        axes[1].plot(s["time"], s["loss"] / L0, "-", label=f"sgd dense, lr={s['lr']:g}")
    ntk = conv["ntk"]
    axes[1].plot([ntk.t_total], [max(ntk.train_loss / L0, 1e-34)], "k*", ms=12, label="NTK ridge regression")
    for ax, xl in zip(axes, ("iteration", "seconds (cumulative, index build included)"), strict=True):
        ax.set(yscale="log", xlabel=xl, ylabel="training loss / initial loss")
        ax.axhline(1e-6, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=7)
    axes[1].set_xscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_report(
    out: str | Path,
    *,
    quick: bool = False,
    config: ReportConfig | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every experiment of the report and write ``out/report.md`` plus PNGs."""
    cfg = config or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log = print if progress else (lambda *a, **k: None)
    plt = _plt()
    figures: list[str] = []
    X, y = synthetic(cfg.n + cfg.test_n, cfg.dim, seed=0)
    Xt, yt = X[cfg.n :], y[cfg.n :]
    X, y = np.ascontiguousarray(X[: cfg.n]), np.ascontiguousarray(y[: cfg.n])

    # 1. cost per iteration vs m
    rows = []
    for e in cfg.log2_widths:
        for seed in cfg.seeds:
            for meth in COST_METHODS:
                rows.append(_cost_run(meth, X, y, 2**e, seed, cfg))
        log(f"[report] cost sweep m=2^{e} done ({time.perf_counter() - t_start:.0f}s)")
    write_csv(out / "cost.csv", rows, COST_COLUMNS, float_format=".6g")
    by = {mt: [r for r in rows if r["method"] == mt] for mt in COST_METHODS}
    slopes = {mt: fit_slope([r["m"] for r in rs], [r["t_total"] for r in rs]) for mt, rs in by.items()}

    def med(mt, key):
        ms = sorted({r["m"] for r in by[mt]})
        return np.array(ms), np.array([np.median([r[key] for r in by[mt] if r["m"] == m_]) for m_ in ms])

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for mt in COST_METHODS:
        ms, t = med(mt, "t_total")
        axes[0].loglog(ms, t, "o-", label=f"{mt} (slope {slopes[mt][0]:.2f})")
    axes[0].set(xlabel="width m", ylabel="seconds per iteration (median)", title="cost per iteration")
    axes[0].legend(fontsize=7)
    m_top = 2 ** max(cfg.log2_widths)
    comps = ("t_identify", "t_maintain", "t_jacobian", "t_solve")
    bottom = np.zeros(len(COST_METHODS))
    for c in comps:
        v = np.array([med(mt, c)[1][-1] for mt in COST_METHODS])
        axes[1].bar(range(len(COST_METHODS)), v, bottom=bottom, label=c[2:])
        bottom += v
    axes[1].set_xticks(range(len(COST_METHODS)), COST_METHODS, rotation=20, fontsize=7)
    axes[1].set(ylabel="seconds per iteration", title=f"component split at m = {m_top}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost_vs_m.png", dpi=90)
    plt.close(fig)
    figures.append("cost_vs_m.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ms, dens = med("gn", "density")
    axes[0].loglog(ms, dens, "o-", label="measured fired fraction = Jacobian density")
    axes[0].loglog(ms, [gaussian_tail(default_shift(int(m_))) for m_ in ms], "--", label="P[N(0,1) > b]")
    axes[0].loglog(ms, ms**-0.2, ":", label="m^-0.2 bound")
    axes[0].set(xlabel="width m", ylabel="fraction of (input, neuron) pairs", title="sparsity vs m")
    axes[0].legend(fontsize=7)
    for mt in GN_VARIANTS[:1]:
        ms, fl = med(mt, "flips")
        axes[1].loglog(ms, np.maximum(fl, 0.5), "o-", label="status flips per iteration (Gauss-Newton)")
    axes[1].set(xlabel="width m", ylabel="pairs changing status per iteration", title="flips vs m")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sparsity_vs_m.png", dpi=90)
    plt.close(fig)
    figures.append("sparsity_vs_m.png")

    # 2. convergence at one width, synthetic
    m_conv = 2**cfg.conv_log2_width
    conv = _convergence(X, y, m_conv, cfg, Xt, yt)
    _plot_convergence(
        conv, out / "convergence_synthetic.png", f"synthetic teacher data, n={cfg.n}, d={cfg.dim}, m={m_conv}"
    )
    figures.append("convergence_synthetic.png")
    log(f"[report] convergence done ({time.perf_counter() - t_start:.0f}s)")

    # 3. shift sweep at m_conv (dense Gauss-Newton; fired sets identical in every variant)
    shift_rows = []
    for b in cfg.shifts:
        net = ShiftedReLUNetwork.init(m_conv, cfg.dim, shift=b, seed=0)
        W0 = net.W.copy()
        L0 = net.loss(X, y)
        dead = int(np.count_nonzero(~((X @ net.W.T) > b).any(axis=1)))  # inputs no neuron fires on at init
        res = train_gn(net, X, y, method="gn", n_iter=cfg.conv_iters, target_loss=cfg.target_rel * L0)
        move = float(np.sqrt(np.einsum("ij,ij->i", net.W - W0, net.W - W0)).max())
        after = float(np.mean((X @ net.W.T) > b))
        shift_rows.append(
            dict(
                shift=b,
                density=res.history["jacobian_density"][0],
                after=after,
                move=move,
                rel=res.final_loss / L0,
                iters=len(res.history["iteration"]),
                reached=res.final_loss <= cfg.target_rel * L0,
                dead=dead,
            )
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    sh = [r["shift"] for r in shift_rows]
    ax.semilogy(sh, [r["density"] for r in shift_rows], "o-", label="Jacobian density")
    ax.semilogy(
        sh, [max(r["rel"], 1e-34) for r in shift_rows], "s-", label=f"rel. loss after <= {cfg.conv_iters} its"
    )
    ax.axhline(cfg.target_rel, color="grey", ls=":")
    ax.axvline(default_shift(m_conv), color="k", ls="--", lw=0.8, label="default b = sqrt(0.4 ln m)")
    ax.set(xlabel="shift b", title=f"shift sweep, m={m_conv}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "shift_sweep.png", dpi=90)
    plt.close(fig)
    figures.append("shift_sweep.png")

    # 4. Fashion-MNIST subset
    fm = None
    try:
        Xf, yf = fashion_mnist_two_class(data_dir, n=cfg.fm_n + cfg.test_n, dim=cfg.fm_dim, seed=0)
        fm = _convergence(
            np.ascontiguousarray(Xf[: cfg.fm_n]),
            np.ascontiguousarray(yf[: cfg.fm_n]),
            m_conv,
            cfg,
            Xf[cfg.fm_n :],
            yf[cfg.fm_n :],
        )
        _plot_convergence(
            fm,
            out / "convergence_fashion_mnist.png",
            f"Fashion-MNIST T-shirt vs shirt, n={cfg.fm_n}, d={cfg.fm_dim} (projected), m={m_conv}",
        )
        figures.append("convergence_fashion_mnist.png")
    except DataNotFoundError as exc:
        log(f"[report] Fashion-MNIST skipped: {exc}")
    wall = time.perf_counter() - t_start
    md = _markdown(cfg, quick, wall, rows, slopes, by, med, conv, shift_rows, fm, m_conv)
    write_text(out / "report.md", md)
    return dict(wall_s=wall, figures=figures, slopes=slopes, conv=conv, shift_rows=shift_rows)


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _conv_table(conv, cfg) -> list[str]:
    L0 = conv["L0"]
    target = cfg.target_rel * L0
    lines = [
        "| method | rel. loss after last iteration | iterations to target | seconds to target "
        "(build incl.) | preprocessing s |",
        "|---|---|---|---|---|",
    ]
    for meth in GN_VARIANTS:
        c = conv[meth]
        hit = np.flatnonzero(c["loss"] <= target)
        lines.append(
            f"| {meth} | {_fmt(c['loss'][-1] / L0)} | {hit[0] if hit.size else 'not reached'} | "
            f"{_fmt(_time_to(c['time'], c['loss'], target))} | {_fmt(c['t_build'])} |"
        )
    s = conv["sgd"]
    if s is not None:
        tt = _time_to(s["time"], s["loss"], target)
        hit = np.flatnonzero(s["loss"] <= target)
        its = f"{s['iters'][hit[0]]} (batch {cfg.sgd_batch})" if hit.size else "not reached"
        edge = " (grid edge!)" if s["lr"] in (min(cfg.sgd_lrs), max(cfg.sgd_lrs)) else ""
        lines.append(
            f"| sgd dense, best lr {s['lr']:g}{edge} of {list(cfg.sgd_lrs)}, {s['n_iter']} its "
            "(same seconds as gn) | "
            f"{_fmt(s['loss'][-1] / L0)} | {its} | "
            f"{_fmt(tt) if not math.isnan(tt) else 'not reached'} | 0 |"
        )
    k = conv["ntk"]
    lines.append(
        f"| NTK ridge regression (one solve) | {_fmt(k.train_loss / L0)} | 1 solve | {_fmt(k.t_total)} | — |"
    )
    if not math.isnan(k.test_loss):
        lines.append("")
        lines.append(
            f"Held-out loss (same distribution): NTK regression {_fmt(k.test_loss)}, "
            f"Gauss-Newton {_fmt(conv.get('gn_test_loss', math.nan))}, initial network "
            f"{_fmt(L0)} (train)."
        )
    return lines


def _threads() -> str:
    """The thread settings the timings ran with (Numba's pool, the BLAS and OpenMP variables)."""
    import os

    import numba

    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    return f"{numba.get_num_threads()} Numba thread(s) (`{env}`)"


def _markdown(cfg, quick, wall, rows, slopes, by, med, conv, shift_rows, fm, m_conv) -> str:
    base = QUICK if quick else FULL
    widths = ""
    if cfg.log2_widths != base.log2_widths:
        widths = " --log2-widths " + ",".join(map(str, cfg.log2_widths))
    cmd = "sparsetrain sublinear report" + (" --quick" if quick else "") + widths + " --out <folder>"
    L = [
        f"# Sublinear training II: Gauss-Newton, sketching, NTK regression ({'quick' if quick else 'full'})",
        "",
        f"Regenerate with `{cmd}`; this run took **{wall:.0f} s** with {_threads()}.",
        "",
        f"Configuration: `{asdict(replace(cfg, extra={}))}`.",
        "",
        "Losses are `1/(2n) sum (f - y)^2`; relative loss is loss / initial loss.  Gauss-Newton: full step "
        "(`eta = 1`), damping `lambda = 1e-6 tr(JJ^T)/n`, sketch `countsketch` with `s = 4n`, CG tolerance "
        "`1e-10`.  SGD: batch 16, lr 1 in the cost sweep.  `*-oracle-sparse`: brute-force identification "
        "(`n m d`, BLAS) followed by the same sparse math as the index variant; the difference to "
        "`*-correlation-tree` / `gn-sublinear` is the data structure's own cost or gain.",
        "",
        "## 1. Cost per iteration vs m",
        "",
        "![cost](cost_vs_m.png)",
        "",
        "| method | slope of s/iteration vs m [95% CI] | s/iteration at smallest m | at largest m | "
        "identify | maintain | jacobian/gradient | solve | preprocessing s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mt in by:
        ms, t = med(mt, "t_total")
        comp = [med(mt, c)[1][-1] for c in ("t_identify", "t_maintain", "t_jacobian", "t_solve")]
        s = slopes[mt]
        L.append(
            f"| {mt} | {s[0]:.2f} [{s[1]:.2f}, {s[2]:.2f}] | {_fmt(t[0])} | {_fmt(t[-1])} | "
            + " | ".join(_fmt(c) for c in comp)
            + f" | {_fmt(med(mt, 't_build')[1][-1])} |"
        )
    ms, tg = med("gn", "t_total")
    _, ts = med("gn-sublinear", "t_total")
    _, tk = med("gn-sketch", "t_total")
    L += [
        "",
        "Speed-up of `gn-sublinear` over dense `gn` per iteration: "
        + ", ".join(f"m={m_}: {a / b:.1f}x" for m_, a, b in zip(ms, tg, ts, strict=True))
        + ".  Over `gn-sketch`: "
        + ", ".join(f"{a / b:.1f}x" for a, b in zip(tk, ts, strict=True))
        + ".",
        "",
        "## 2. Sparsity, Jacobian density and status flips vs m",
        "",
        "![sparsity](sparsity_vs_m.png)",
        "",
        "| m | Jacobian density (fired fraction) | P[N(0,1) > b] | status flips / iteration (gn) | "
        "flips / fired pairs |",
        "|---|---|---|---|---|",
    ]
    _, dens = med("gn", "density")
    _, fl = med("gn", "flips")
    for m_, dn, f_ in zip(ms, dens, fl, strict=True):
        L.append(
            f"| {m_} | {dn:.4f} | {gaussian_tail(default_shift(int(m_))):.4f} | {_fmt(f_)} | "
            f"{_fmt(f_ / (dn * m_ * cfg.n))} |"
        )
    L += [
        "",
        f"Flips are the mean over iterations 1..{cfg.warmup + cfg.iters - 1} of the cost runs (full "
        "Gauss-Newton steps from initialisation: the first steps move the weights the most).",
    ]
    L += ["", f"## 3. Convergence at m = {m_conv} (synthetic)", "", "![conv](convergence_synthetic.png)", ""]
    L += _conv_table(conv, cfg)
    L += [
        "",
        f"## 4. Shift sweep at m = {m_conv} (dense Gauss-Newton, target rel. loss {cfg.target_rel:g})",
        "",
        "![shift](shift_sweep.png)",
        "",
        "| shift b | P[N(0,1) > b] | Jacobian density at init | inputs with no fired neuron at init | "
        "iterations | rel. loss | reached | density after | max neuron movement max_r ||w_r - w_r(0)|| |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shift_rows:
        L.append(
            f"| {r['shift']:g} | {gaussian_tail(r['shift']):.3g} | {r['density']:.4g} | {r['dead']} | "
            f"{r['iters']} | {_fmt(r['rel'])} | {'yes' if r['reached'] else 'no'} | {r['after']:.4g} | "
            f"{_fmt(r['move'])} |"
        )
    L += [
        "",
        "Read the last two columns against the initial density and `||w_r(0)|| ~ sqrt(d)`: where they grow "
        "a lot, the run reached the target by leaving the lazy (NTK) regime the analysis assumes (few fired "
        "pairs per input make the Gauss-Newton step put a large change on the few neurons that fire).",
    ]
    ok = [r["shift"] for r in shift_rows if r["reached"]]
    bad = [r["shift"] for r in shift_rows if not r["reached"]]
    head = (
        f"Smallest shift reaching the target: {min(ok):g}; largest: {max(ok):g}" if ok else "None reached it"
    )
    tail = (
        f"; not reached at b = {', '.join(f'{b:g}' for b in bad)}."
        if bad
        else "; every shift tried reached it."
    )
    L += ["", head + tail]
    if fm is not None:
        L += [
            "",
            f"## 5. Fashion-MNIST subset (T-shirt vs shirt), m = {m_conv}",
            "",
            "![fm](convergence_fashion_mnist.png)",
            "",
        ]
        L += _conv_table(fm, cfg)
    else:
        L += ["", "## 5. Fashion-MNIST subset", "", "Skipped: data not found (pass `--data-dir`)."]
    return "\n".join(L) + "\n"
