"""The scaling section: fitted laws error ≈ E + A·P^-α, deep vs wide DLoR."""

from __future__ import annotations

import math
from pathlib import Path

from .core import Check, Section, _metric_key, verdict
from .figures import _scaling_figure
from .markdown import _e, _stats_table, _table
from .stats import _budgets, _cells, _families, _value, trained

def scaling_section(df, out_dir: Path, meta: dict, name: str, n_boot: int = 1000) -> Section:
    """Fitted scaling laws error ≈ E + A·P^-α for deep vs wide DLoR ("parameter-to-expressivity").

    Uses the points and fits of `dlor_scale.curves` (module `dlor_scale.scaling`: the same
    the CLI and MLflow show: per cell the best-by-validation config, its confirmation seeds'
    mean when confirmed); if that rejects the table, fits `fit.fit_law` on the cell medians
    and compares with `fit.compare`, and says so in the section.
    """
    _, stats, r = _cells(df)
    deep, wide = r.get("deep"), r.get("wide")
    path = Path(out_dir) / f"{name}_scaling.png"
    cmp = None
    try:
        cmp = _curves_compare(trained(df), deep, wide, path, n_boot)
        note = ("Points and fits from `dlor_scale.curves` (per cell: the best-by-validation config; "
                "the mean of its confirmation seeds when the study confirmed).")
    except Exception as exc:  # noqa: BLE001 - the report must still come out; the note says why
        note = f"`dlor_scale.curves` failed ({type(exc).__name__}: {exc}); fell back to `fit.fit_law` on cell medians."
    if cmp is None:
        cmp = _fit_compare(stats, deep, wide, path, n_boot)
    budgets = _budgets(stats)
    da, p = cmp.get("delta_alpha"), cmp.get("p_a_steeper")
    da = None if da is None or not math.isfinite(da) else float(da)
    fits = cmp.get("fits", {})
    unidentified = [f for f in (deep, wide) if not _alpha_identified(fits.get(f, {}))]
    why = f"exponent not identified for {', '.join(map(str, unidentified))} (α CI reaches its bounds)"
    ratios = {b: _value(stats, wide, b) / _value(stats, deep, b) for b in budgets} if deep and wide else {}
    checks = [
        Check("deep DLoR's fitted exponent α exceeds wide DLoR's (Δα = α_deep − α_wide > 0)",
              None if da is None or unidentified else da > 0,
              ("" if da is None else f"Δα = {da:.3g}") + (f"; {why}" if unidentified else "")),
        Check("the bootstrap agrees: P(α_deep > α_wide) ≥ 0.9",
              None if p is None or unidentified else p >= 0.9,
              ("no bootstrap" if p is None else f"P = {p:.2f}") + (f"; {why}" if unidentified else "")),
        Check("deep DLoR's median error is below wide DLoR's at every budget",
              None if not ratios else all(q > 1 for q in ratios.values()),
              ", ".join(f"P={b}: wide/deep {q:.2g}" for b, q in ratios.items())),
    ]
    fit_rows = [[f, _e(v.get("E")), _e(v.get("A")), f"{v.get('alpha', math.nan):.3f}",
                 "–" if v.get("alpha_ci") is None else f"{v['alpha_ci'][0]:.3f} – {v['alpha_ci'][1]:.3f}",
                 "; ".join(v.get("flags", [])) or "–"] for f, v in fits.items()]
    metrics = {"scaling.delta_alpha": da if da is not None else math.nan,
               "scaling.p_deep_steeper": p if p is not None else math.nan,
               **{_metric_key("scaling", f, "alpha"): v.get("alpha", math.nan) for f, v in fits.items()}}
    ci = cmp.get("delta_alpha_ci")
    body = "\n".join([
        note, "", _stats_table(stats), "",
        *([_table(["family", "E", "A", "α", "α 95% CI", "flags"], fit_rows), ""] if fit_rows else []),
        f"Δα = {'–' if da is None else f'{da:.3g}'}"
        + (f" (95% CI {ci[0]:.3g} – {ci[1]:.3g})" if ci else "")
        + f"; P(α_deep > α_wide) = {'–' if p is None else f'{p:.2f}'}"
        + (f"; curves cross at P ≈ {cmp['crossover']:,.0f}" if cmp.get("crossover") else "") + ".",
    ])
    return Section("scaling", "Scaling: deep vs wide DLoR (parameter-to-expressivity)", body, [path], metrics,
                   verdict(checks))



def _alpha_identified(fit: dict) -> bool:
    """An exponent is identified when its bootstrap CI stays off the fit's bounds (0, ALPHA_MAX).

    Why: with few, noisy points `fit_law` returns *some* α, but a CI spanning [0, 5] means
    the data do not constrain it, and Δα then carries no evidence either way.
    """
    from ...fit import ALPHA_MAX

    ci = fit.get("alpha_ci")
    return bool(ci) and math.isfinite(fit.get("alpha", math.nan)) and ci[0] > 1e-9 and ci[1] < ALPHA_MAX - 1e-6



def _curves_compare(rows, deep, wide, path: Path, n_boot: int) -> dict:
    """Compare deep vs wide through `scaling.Curves` (what `dlor_scale.curves` returns).

    Takes every trained member (search and confirm): `points_from_runs` picks each cell's
    best search config itself and averages its confirmation seeds.
    """
    import pyarrow as pa

    from ...scaling import Curves, points_from_runs

    table = pa.Table.from_pandas(rows, preserve_index=False)
    curves = Curves.from_points(points_from_runs(table), n_boot=n_boot)
    out = dict(curves.compare(deep, wide)) if deep in curves.families and wide in curves.families else {}
    out["fits"] = {}
    for c in curves:
        ci = c.ci().get("alpha")
        out["fits"][c.family] = {"E": c.E, "A": c.A, "alpha": c.alpha,
                                 "alpha_ci": ci if ci and all(map(math.isfinite, ci)) else None,
                                 "flags": list(c.flags)}
    curves.plot(path)
    return out



def _fit_compare(stats, deep, wide, path: Path, n_boot: int) -> dict:
    """Fallback: saturating law per family on the cell medians, bootstrap comparison, plot."""
    from ...errors import FitError
    from ...fit import compare, fit_law

    fits, out = {}, {"fits": {}}
    for fam in _families(stats):
        s = stats[stats["family"] == fam].sort_values("n_params")
        try:
            f = fit_law(s["n_params"].to_numpy(), s["median"].to_numpy(), family=fam, n_boot=n_boot, seed=0)
        except FitError as exc:
            out["fits"][fam] = {"flags": [str(exc)]}
            continue
        fits[fam] = f
        ci = f.ci().get("alpha")
        out["fits"][fam] = {"E": f.E, "A": f.A, "alpha": f.alpha, "alpha_ci": ci, "flags": list(f.flags)}
    if deep in fits and wide in fits:
        out.update(compare(fits[deep], fits[wide]))
    _scaling_figure(stats, fits, path)
    return out

