"""Figures of the trained-study sections, and the matplotlib helpers every figure uses.

The analytic figures live with their sections in `analytic` (each plots one
construction's output); these plot per-cell statistics (`stats`) by family and budget.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .core import COLORS, PAPER_DEEP_ERROR
from .markdown import _when
from .stats import _budgets, _color, _families, _value

def _plt():
    """matplotlib with the file-only backend (reports run on headless workers and CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt



def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    from . import FIG_DPI  # read at call time: the knob is `dlor_scale.paper.report.FIG_DPI`

    fig.savefig(path, dpi=FIG_DPI, bbox_inches="tight")
    _plt().close(fig)
    return path



def _bar_x(i: int, n_fams: int, n_budgets: int) -> tuple[np.ndarray, float]:
    """x positions and width of family ``i``'s bars: one group per budget, one bar per family."""
    width = 0.8 / max(n_fams, 1)
    return np.arange(n_budgets) + (i - (n_fams - 1) / 2) * width, width


def _budget_ticks(ax, budgets: list[int]) -> None:
    ax.set_xticks(np.arange(len(budgets)), [f"P≈{b:,}" for b in budgets])


def _bars_figure(panels: dict, meta: dict, path: Path) -> Path:
    """Grouped log-scale bars: one group per budget, one bar per family (median, min–max whiskers)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (col, st) in zip(axes[0], panels.items()):
        fams, budgets = _families(st), _budgets(st)
        for i, fam in enumerate(fams):
            med = np.array([_value(st, fam, b) for b in budgets])
            lo = np.array([_value(st, fam, b, "min") for b in budgets])
            hi = np.array([_value(st, fam, b, "max") for b in budgets])
            x, width = _bar_x(i, len(fams), len(budgets))
            ax.bar(x, med, width, color=_color(st, fam), label=fam, alpha=0.85)
            ax.errorbar(x, med, yerr=[np.maximum(med - lo, 0), np.maximum(hi - med, 0)], fmt="none", ecolor="k",
                        capsize=2, lw=0.8)
        _budget_ticks(ax, budgets)
        ax.set_yscale("log")
        thr = meta.get("threshold")
        if thr:
            ax.axhline(float(thr), color="k", ls="--", lw=0.8, label=f"threshold {float(thr):g}")
        ax.axhline(PAPER_DEEP_ERROR, color="tab:blue", ls=":", lw=0.8, label=f"paper deep ~{PAPER_DEEP_ERROR:g}")
        ax.set_title(_when(col, meta.get("epochs"), long=True))
    axes[0][0].set_ylabel(f"{meta.get('metric', 'error')} (median, min–max)")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)



def _threshold_figure(st, thr, meta, level, path: Path) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    fams, budgets = _families(st), _budgets(st)
    for i, fam in enumerate(fams):
        x, width = _bar_x(i, len(fams), len(budgets))
        med = np.array([_value(st, fam, bb, "median_epochs") for bb in budgets])
        q25 = np.array([_value(st, fam, bb, "q25_epochs") for bb in budgets])
        q75 = np.array([_value(st, fam, bb, "q75_epochs") for bb in budgets])
        a.bar(x, np.nan_to_num(med), width, color=_color(st, fam), label=fam, alpha=0.85)
        err = [np.nan_to_num(np.maximum(med - q25, 0)), np.nan_to_num(np.maximum(q75 - med, 0))]
        a.errorbar(x, np.nan_to_num(med), yerr=err, fmt="none", ecolor="k", capsize=2, lw=0.8)
        for xi, m in zip(x, med):
            if not math.isfinite(m):
                a.text(xi, 0, "never", rotation=90, ha="center", va="bottom", fontsize=7)
        rate = np.array([_value(st, fam, bb, "rate") for bb in budgets])
        lo = np.array([_value(st, fam, bb, "ci_lo") for bb in budgets])
        hi = np.array([_value(st, fam, bb, "ci_hi") for bb in budgets])
        b.bar(x, rate, width, color=_color(st, fam), label=fam, alpha=0.85)
        b.errorbar(x, rate, yerr=[rate - lo, hi - rate], fmt="none", ecolor="k", capsize=2, lw=0.8)
    for ax in (a, b):
        _budget_ticks(ax, budgets)
    a.set(ylabel=f"epochs to {meta.get('metric', 'error')} ≤ {thr:g}",
          title="epochs to threshold (median, IQR; successes)")
    b.set(ylabel="success rate", ylim=(0, 1.05),
          title=f"success within {meta.get('epochs', '?')} epochs ({level:.0%} Clopper–Pearson)")
    b.legend(fontsize=7)
    return _save(fig, path)



def _error_vs_params_figure(stats, meta, path: Path, title: str, floor: float | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for fam in _families(stats):
        s = stats[stats["family"] == fam].sort_values("n_params")
        c = _color(stats, fam)
        ax.plot(s["n_params"], s["median"], "o-", color=c, label=f"{fam} (median)")
        ax.fill_between(s["n_params"], s["q25"], s["q75"], color=c, alpha=0.2, lw=0)
        ax.plot(s["n_params"], s["best"], "x", color=c, ms=5)
    ax.plot([], [], "kx", label="best-by-validation member")
    if floor is not None:
        ax.axhline(floor, color=COLORS["rank1"], ls="--", lw=0.9, label=f"analytic ridge floor {floor:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel=f"test {meta.get('metric', 'error')}", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)



def _scaling_figure(stats, fits: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for fam in _families(stats):
        s = stats[stats["family"] == fam].sort_values("n_params")
        c = _color(stats, fam)
        ax.errorbar(s["n_params"], s["median"], yerr=[s["median"] - s["q25"], s["q75"] - s["median"]], fmt="o",
                    color=c, capsize=2, label=fam)
        if fam in fits:
            P = np.geomspace(s["n_params"].min() / 1.5, s["n_params"].max() * 1.5, 100)
            f = fits[fam]
            lo, hi = f.predict_interval(P)
            ax.plot(P, f.predict(P), "-", color=c, label=f"{fam}: α = {f.alpha:.2f}")
            ax.fill_between(P, lo, hi, color=c, alpha=0.15, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="test error (median, IQR)",
           title="scaling fits E + A·P^-α (95% bootstrap band)")
    ax.legend(fontsize=7)
    return _save(fig, path)

