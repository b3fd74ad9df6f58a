"""Trained-study sections: one per paper claim, each from a study's member table.

Fixed epoch budget (Fig. 4a/b), time to threshold and success rate (Fig. 4c/d), rank-1
floor with training (Fig. 5) and generalisation (Fig. 6); the fitted scaling curves are
in `scaling`.  `study_sections` picks a study's sections from its name.  Sections take
plain data (a member table plus the study's spec values), so they are testable on
hand-built tables without MLflow.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ...run_schema import Metric
from .core import PAPER_DEEP_ERROR, PAPER_THRESHOLD, X1X2_FLOOR_RMS, Check, Section, _metric_key, verdict
from .figures import _bars_figure, _error_vs_params_figure, _threshold_figure
from .markdown import _e, _num, _range, _stats_table, _table, _when
from .scaling import scaling_section
from .stats import _best, _budgets, _cells, _median_metrics, _value, cell_stats, roles, threshold_stats

#: Study kinds of ``studies/paper/`` (a ``_laptop`` suffix selects the same report).
STUDY_KINDS = ("fixed_budget", "time_to_threshold", "rank1_nonridge", "generalization", "scaling")



def fixed_budget_section(df, out_dir: Path, meta: dict, name: str) -> Section:
    """Error after a fixed epoch budget per family (Fig. 4a/4b).

    Paper: after 5,000 and 50,000 epochs deep DLoR reaches ~1e-4 while wide DLoR stays
    near the dense baseline or barely improves on its 5,000-epoch error.  The final test
    error is the long budget; ``val_error_at_<E>`` columns (filled from the logged
    validation curves by `add_checkpoint_errors`) give the 10× shorter one.
    """
    rows, stats, r = _cells(df)
    ck_cols = sorted((c for c in rows.columns if c.startswith("val_error_at_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    ck_stats = {c: cell_stats(rows, c) for c in ck_cols}
    budgets = _budgets(stats)
    epochs = meta.get("epochs")
    deep, wide, dense = (r.get(k) for k in ("deep", "wide", "dense"))
    checks = [_lowest_everywhere(stats, deep, budgets, "median final error")]
    big = budgets[-1] if budgets else None
    d_big = _value(stats, deep, big) if big is not None else math.nan
    checks.append(Check(f"deep DLoR median error ≤ {PAPER_THRESHOLD:g} at the largest budget "
                        f"(paper: ~{PAPER_DEEP_ERROR:g})",
                        None if not math.isfinite(d_big) else d_big <= PAPER_THRESHOLD,
                        f"{_e(d_big)} at P={big}"))
    checks.append(_wide_stays(stats, ck_stats.get(ck_cols[0]) if ck_cols else None, wide, dense, budgets))
    rows_md = []
    for c in [*ck_cols, Metric.TEST_ERROR]:
        st = ck_stats.get(c, stats)
        when = _when(c, epochs)
        for _, s in st.iterrows():
            rows_md.append([when, s["family"], s["budget"], int(s["n_params"]), f"{s['n_finite']}/{s['n']}",
                            _e(s["median"]), _range(s["q25"], s["q75"], _e), _e(s["min"]), _e(s["best"])])
    metrics = _median_metrics("fixed_budget", stats)
    fig = _bars_figure({**{c: ck_stats[c] for c in ck_cols}, Metric.TEST_ERROR: stats}, meta,
                       Path(out_dir) / f"{name}_fixed_budget.png")
    body = "\n".join([
        f"Metric: {meta.get('metric', '?')} (validation curve at the shorter budget, held-out test set at the end). "
        "Rows per cell: " + ("confirmation seeds of the best config" if (rows["phase"] == "confirm").any()
                             else "all members (seeds)") + ".",
        "", _table(["when", "family", "budget", "params", "finite/n", "median", "IQR", "min", "best-by-val"], rows_md),
    ])
    return Section("fixed_budget", "Fixed training budget (Fig. 4a/4b)", body, [fig], metrics, verdict(checks))



def _lowest_everywhere(stats, label: str | None, budgets: list[int], what: str) -> Check:
    """``label`` has the lowest median of all families at every budget."""
    if label is None or not budgets:
        return Check(f"deep DLoR has the lowest {what} at every budget", None, "no deep DLoR family")
    losers = []
    for b in budgets:
        mine = _value(stats, label, b)
        others = stats[(stats["budget"] == b) & (stats["family"] != label)]["median"]
        if not (math.isfinite(mine) and all(mine < o for o in others if math.isfinite(o))):
            losers.append(b)
    detail = "every budget" if not losers else f"not at P = {losers}"
    return Check(f"deep DLoR has the lowest {what} at every budget", not losers, detail)



def _wide_stays(stats, short, wide, dense, budgets) -> Check:
    """Paper: wide stays near dense (here: within 3×) or barely improves (≤ 3×) on its shorter-budget error."""
    name = "wide DLoR stays near dense (within 3×) or barely improves (≤ 3×) over the 10× shorter budget"
    if wide is None or (dense is None and short is None):
        return Check(name, None, "needs a wide family and a dense family or a shorter-budget checkpoint")
    bad, parts = [], []
    for b in budgets:
        w = _value(stats, wide, b)
        near = dense is not None and math.isfinite(w) and math.isfinite(_value(stats, dense, b)) \
            and abs(math.log10(w / _value(stats, dense, b))) <= math.log10(3)
        flat = short is not None and math.isfinite(w) and math.isfinite(_value(short, wide, b)) \
            and _value(short, wide, b) / w <= 3
        parts.append(f"P={b}: wide {_e(w)}, dense {_e(_value(stats, dense, b))}"
                     + (f", wide at short budget {_e(_value(short, wide, b))}" if short is not None else ""))
        if not (near or flat):
            bad.append(b)
    return Check(name, not bad, "; ".join(parts))



def time_to_threshold_section(df, out_dir: Path, meta: dict, name: str, level: float = 0.95) -> Section:
    """Epochs to reach the threshold and success rate per family (Fig. 4c/4d).

    Why unpruned, many-seed members only: a pruner stops members that look slow, which
    would turn "slow" into "failed" and bias both statistics; the paper-protocol study
    therefore runs every seed to the full budget.
    """
    st = threshold_stats(df, level)
    r = roles(st)
    deep, wide, dense = (r.get(k) for k in ("deep", "wide", "dense"))
    budgets = _budgets(st)
    thr = meta.get("threshold", PAPER_THRESHOLD)
    checks = [_rate_check(st, deep, [x for x in (wide, dense) if x], budgets),
              _speed_check(st, deep, wide, budgets),
              _separated_check(st, deep, wide, budgets, level)]
    rows_md = [[s["family"], s["budget"], int(s["n_params"]), f"{s['successes']}/{s['n']}", f"{s['rate']:.0%}",
                f"{s['ci_lo']:.2f} – {s['ci_hi']:.2f}", _num(s["median_epochs"]),
                _range(s["q25_epochs"], s["q75_epochs"], _num)] for _, s in st.iterrows()]
    metrics = {}
    for _, s in st.iterrows():
        metrics[_metric_key("ttt", s["family"], s["budget"], "success_rate")] = s["rate"]
        metrics[_metric_key("ttt", s["family"], s["budget"], "median_epochs")] = s["median_epochs"]
    fig = _threshold_figure(st, thr, meta, level, Path(out_dir) / f"{name}_time_to_threshold.png")
    body = "\n".join([
        f"Threshold {meta.get('metric', 'error')} ≤ {thr:g} on the validation set, checked every "
        f"{meta.get('report_every', '?')} epochs, within {meta.get('epochs', '?')} epochs. Success rate with a "
        f"{level:.0%} Clopper–Pearson interval; epochs = median (IQR) among successes only (failures are censored "
        "at the budget, so they are excluded, not averaged in).", "",
        _table(["family", "budget", "params", "successes", "rate", f"{level:.0%} CI", "median epochs", "IQR"], rows_md),
    ])
    return Section("time_to_threshold", "Time to threshold and success rate (Fig. 4c/4d)", body, [fig], metrics,
                   verdict(checks))



def _rate_check(st, deep, others, budgets) -> Check:
    name = "deep DLoR's success rate ≥ every other family's at every budget"
    if deep is None or not others:
        return Check(name, None, "needs deep DLoR and a baseline")
    bad = [b for b in budgets for o in others
           if not _value(st, deep, b, "rate") >= _value(st, o, b, "rate")]
    detail = "; ".join(f"P={b}: " + ", ".join(f"{f} {_value(st, f, b, 'rate'):.0%}" for f in [deep, *others])
                       for b in budgets)
    return Check(name, not bad, detail)



def _speed_check(st, deep, wide, budgets) -> Check:
    """Deep needs fewer epochs (median among successes); a wide family that never succeeds is slower."""
    name = "deep DLoR reaches the threshold in fewer epochs than wide DLoR (median among successes)"
    if deep is None or wide is None:
        return Check(name, None, "needs deep and wide DLoR")
    bad, parts = [], []
    for b in budgets:
        d, w = _value(st, deep, b, "median_epochs"), _value(st, wide, b, "median_epochs")
        ok = math.isfinite(d) and (not math.isfinite(w) or d < w)
        parts.append(f"P={b}: deep {_num(d)}, wide {_num(w) if math.isfinite(w) else 'never'}")
        if not ok:
            bad.append(b)
    return Check(name, not bad, "; ".join(parts))



def _separated_check(st, deep, wide, budgets, level) -> Check:
    name = f"the success-rate gap is significant somewhere (deep's {level:.0%} CI above wide's)"
    if deep is None or wide is None:
        return Check(name, None, "needs deep and wide DLoR")
    sep = [b for b in budgets if _value(st, deep, b, "ci_lo") > _value(st, wide, b, "ci_hi")]
    return Check(name, bool(sep), f"separated at P = {sep}" if sep else "CIs overlap at every budget")



def rank1_floor_section(df, out_dir: Path, meta: dict, name: str) -> Section:
    """Trained rank-1 vs deep DLoR vs dense on a non-ridge target at the same budgets.

    Expected (Fig. 5, orthogonal blindness): rank-1's error stays on a floor however
    many parameters it gets (for x1·x2 on [-1,1]² the floor is known in closed form),
    while deep DLoR and dense, whose input layer is full rank, go far below it.  Checks
    are about that gap, not about a trend in P: x1·x2 is so easy that a 100-parameter
    DLoR net already reaches ~1e-5, after which extra depth mostly costs trainability
    (the trend is reported in the text).
    """
    _, stats, r = _cells(df)
    rank1, deep = r.get("rank1"), r.get("deep")
    budgets = _budgets(stats)
    floor = analytic_floor(meta)
    checks = []
    if rank1 is None or len(budgets) < 2:
        checks.append(Check("rank-1 error is flat in parameters", None, "needs rank-1 at ≥ 2 budgets"))
    else:
        lo, hi = _value(stats, rank1, budgets[0]), _value(stats, rank1, budgets[-1])
        checks.append(Check("rank-1 error floors: largest budget ≥ ½ × smallest budget's error", hi >= 0.5 * lo,
                            f"{_e(lo)} → {_e(hi)} (P {budgets[0]} → {budgets[-1]})"))
        if floor is not None:
            best = _best(stats, rank1)
            checks.append(Check("no trained rank-1 net beats the analytic ridge floor by more than 20 %",
                                best >= 0.8 * floor, f"best {_e(best)} vs floor {_e(floor)}"))
    if deep is None:
        checks.append(Check("deep DLoR goes far below rank-1", None, "needs deep DLoR"))
    else:
        ratios = [_value(stats, rank1, b) / _value(stats, deep, b) for b in budgets] if rank1 else []
        checks.append(Check("deep DLoR is ≥ 10× below rank-1 at every budget",
                            None if not ratios else all(q >= 10 for q in ratios),
                            ", ".join(f"P={b}: {q:.0f}×" for b, q in zip(budgets, ratios))))
        if floor is not None:
            best = _best(stats, deep)
            checks.append(Check("deep DLoR is not floored: its best member is ≥ 100× below the ridge floor",
                                best * 100 <= floor, f"best {_e(best)} vs floor {_e(floor)}"))
    trend = ""
    if deep is not None and len(budgets) >= 2:
        lo, hi = _value(stats, deep, budgets[0]), _value(stats, deep, budgets[-1])
        trend = (f" Deep DLoR's median error from the smallest to the largest budget: {_e(lo)} → {_e(hi)}"
                 + (" – it rises: with one fixed lr and epoch budget the deeper nets train worse "
                    "(the full-size study tunes the lr per cell)." if hi > lo else "."))
    metrics = _median_metrics("rank1_floor", stats)
    if floor is not None:
        metrics["rank1_floor.analytic"] = floor
    fig = _error_vs_params_figure(stats, meta, Path(out_dir) / f"{name}_rank1_floor.png",
                                  "non-ridge target: rank-1 floors, DLoR goes far below", floor)
    body = "\n".join([
        f"Test {meta.get('metric', 'error')} per cell (median over seeds, quartiles, best-by-validation member)."
        + (f" Analytic ridge floor for this target and metric: {_e(floor)}." if floor is not None else "") + trend, "",
        _stats_table(stats),
    ])
    return Section("rank1_floor", "Rank-1 floor vs DLoR with training (Fig. 5)", body, [fig], metrics, verdict(checks))



def analytic_floor(meta: dict) -> float | None:
    """Ridge-function floor of x1·x2 on [-1,1]² in the study's metric (mse or rmse), else None.

    Only for d_in = 2: with distractor inputs a rank-1 layer's direction has more room,
    and the floor is not the 2-D one.
    """
    t = meta.get("target") or {}
    if t.get("kind") != "nonridge" or t.get("function", "product") != "product" or int(t.get("d_in", 2)) != 2:
        return None
    return {"mse": X1X2_FLOOR_RMS ** 2, "rmse": X1X2_FLOOR_RMS}.get(meta.get("metric"))



def generalization_section(df, out_dir: Path, meta: dict, name: str) -> Section:
    """Test error of deep and wide DLoR vs a parameter-matched dense MLP (Fig. 6).

    Why a small training set: with plenty of data test ≈ train error and the figure
    would only repeat the approximation result; with few samples it measures whether
    DLoR's structure helps or hurts generalisation at matched parameter counts.
    """
    rows, stats, r = _cells(df)
    deep, wide, dense = (r.get(k) for k in ("deep", "wide", "dense"))
    budgets = _budgets(stats)
    checks = [_majority_check(stats, deep, dense, budgets, "deep DLoR"),
              _majority_check(stats, wide, dense, budgets, "wide DLoR", factor=3.0),
              _majority_check(stats, deep, wide, budgets, "deep DLoR", "wide DLoR")]
    ratio_rows = [[b, _ratio(stats, deep, dense, b), _ratio(stats, wide, dense, b)] for b in budgets]
    gap_md = ""
    if "train_loss_final" in rows.columns:
        train = cell_stats(rows, "train_loss_final")
        gap_md = _table(["family", "budget", "train loss (median, final)", "test error (median)", "test / train"],
                        [[s["family"], s["budget"], _e(s["median"]), _e(_value(stats, s["family"], s["budget"])),
                          _ratio_values(_value(stats, s["family"], s["budget"]), s["median"])]
                         for _, s in train.iterrows()])
    metrics = _median_metrics("generalization", stats)
    t = meta.get("target") or {}
    fig = _error_vs_params_figure(stats, meta, Path(out_dir) / f"{name}_generalization.png",
                                  f"test error vs parameters (n_train = {t.get('n_train', '?')})")
    body = "\n".join([
        f"Target: {t.get('kind', '?')} with n_train = {t.get('n_train', '?')}, test set n = {t.get('n_test', '?')}; "
        f"test {meta.get('metric', 'error')} per cell.", "",
        _stats_table(stats), "",
        _table(["budget", "deep / dense (median test error)", "wide / dense"], ratio_rows),
        *(["", "Generalisation gap (training loss is the MSE of the last logged epoch):", "", gap_md]
          if gap_md else []),
    ])
    return Section("generalization", "Generalisation vs parameter-matched dense (Fig. 6)", body, [fig], metrics,
                   verdict(checks))



def _ratio(stats, a, b, budget) -> str:
    return _ratio_values(_value(stats, a, budget), _value(stats, b, budget))



def _ratio_values(va: float, vb: float) -> str:
    return f"{va / vb:.2f}" if math.isfinite(va) and math.isfinite(vb) and vb > 0 else "–"



def _majority_check(stats, a, b, budgets, a_name, b_name="parameter-matched dense", factor: float = 1.0) -> Check:
    """``a``'s median test error ≤ factor × ``b``'s at more than half the budgets.

    factor 1 = "at least as good"; factor 3 = "comparable" (the paper's reading of wide
    DLoR: it stays near the dense baseline rather than beating it).
    """
    bound = b_name if factor == 1 else f"{factor:g}× {b_name} (comparable)"
    name = f"{a_name} test error ≤ {bound} at a majority of budgets"
    if a is None or b is None or not budgets:
        return Check(name, None, f"needs {a_name} and {b_name}")
    wins = [bb for bb in budgets if _value(stats, a, bb) <= factor * _value(stats, b, bb)]
    return Check(name, len(wins) * 2 > len(budgets), f"{len(wins)}/{len(budgets)} budgets")



def study_kind(name: str) -> str | None:
    """The report kind of a paper study: its name without a size suffix (``_laptop``, ``_cpu``, …)
    and an optional variant after it (``scaling_cpu_sawtooth`` → ``scaling``)."""
    base = re.sub(r"(_laptop|_smoke|_gpu|_full|_cpu)(_[a-z0-9]+)?$", "", name)
    return base if base in STUDY_KINDS else None



SECTIONS = {
    "fixed_budget": (fixed_budget_section,),
    "time_to_threshold": (time_to_threshold_section,),
    "rank1_nonridge": (rank1_floor_section,),
    "generalization": (generalization_section,),
    "scaling": (scaling_section,),
}



def study_sections(df, out_dir: Path, meta: dict, name: str, kind: str | None = None) -> list[Section]:
    """The sections of one study's report.

    A paper study gets its claim's section; any other study gets the generic view
    (fixed-budget bars and error vs parameters, plus time to threshold when the spec
    set a threshold), so ``dlor-scale report`` is useful on every study.
    """
    kind = kind if kind is not None else study_kind(name)
    if len(df) == 0:
        from ...errors import DlorError
        raise DlorError(f"study {name!r} has no member runs yet; launch it first (dlor-scale launch …)")
    if kind in SECTIONS:
        fns = SECTIONS[kind]
    else:
        fns = (fixed_budget_section, generalization_section)
        if meta.get("threshold"):
            fns += (time_to_threshold_section,)
    return [fn(df, out_dir, meta, name) for fn in fns]

