"""Member tables → per-cell statistics (medians and quartiles, success rates with exact CIs).

A member table is what `records.member_runs` returns (Arrow) or its pandas frame; a
"cell" is one (family label, parameter budget) pair of a study.
"""

from __future__ import annotations

import math

import numpy as np

from ...run_schema import Metric

from .core import COLORS, ROLES, _metric_key

#: Member states that count as "trained" (``failed`` is an infrastructure failure, not a
#: result; ``diverged`` is a genuine outcome: the member did not reach any error).
TRAINED_STATES = ("completed", "diverged", "pruned")



def member_frame(table):
    """A pandas frame of a member table (Arrow from `records.member_runs`, or pandas already)."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table.copy()
    return table.to_pandas()



def trained(df):
    """Members that produced a result: ``failed`` rows are infrastructure failures, not outcomes."""
    return df[df["state"].isin(TRAINED_STATES)]



def final_rows(df):
    """Rows that represent each cell's tuned result.

    Why: in a study with confirmation, the confirm runs are the best configs retrained
    with fresh seeds – the unbiased estimate; search members include bad learning
    rates and winner's-curse picks.  Without confirmation every search member counts
    (the paper-protocol studies fix the hyperparameters, so members differ by seed only).
    """
    df = trained(df)
    conf = df[df["phase"] == "confirm"]
    return conf if len(conf) else df[df["phase"] != "confirm"]



def roles(df) -> dict[str, str]:
    """role (deep, wide, dense, rank1, lowrank) → the family label that plays it.

    Labels are free-form in a spec; the model family decides the role.  With several
    labels of one family (e.g. ablations) the alphabetically first is the role holder.
    """
    out = {}
    for role, fam in ROLES.items():
        labels = sorted(set(df.loc[df["model_family"] == fam, "family"]))
        if labels:
            out[role] = labels[0]
    return out



def _best_group(cell):
    """The members that stand for a cell: in confirm rows the seeds of the config whose
    median validation error is lowest (``top_k`` > 1 retrains several configs), else all."""
    if "confirm_of" in cell and (cell["phase"] == "confirm").all() and cell["confirm_of"].notna().any():
        med = cell.groupby("confirm_of")[Metric.BEST_VAL].median()
        return cell[cell["confirm_of"] == med.idxmin()]
    return cell



def cell_stats(rows, value: str = Metric.TEST_ERROR):
    """Per (family, budget): n, median/quartiles/min/max of ``value`` and the best-by-val member's.

    ``n_params`` is the cell's median exact parameter count (shapes of one cell differ
    by ≤ tolerance).  Quantiles ignore NaN (a diverged member has no finite error).
    """
    import pandas as pd

    recs = []
    for (fam, budget), cell in rows.groupby(["family", "budget"], sort=True):
        grp = _best_group(cell)
        v = grp[value].astype(float)
        fin = v[np.isfinite(v)]
        best_val = cell[Metric.BEST_VAL].astype(float)
        best = cell.loc[best_val.idxmin(), value] if best_val.notna().any() else math.nan
        recs.append({
            "family": fam, "model_family": cell["model_family"].iloc[0], "budget": int(budget),
            "n_params": float(np.median(cell["n_params_total"])), "n": int(len(grp)),
            "n_finite": int(len(fin)),
            **_quartiles(fin),
            "min": float(fin.min()) if len(fin) else math.nan,
            "max": float(fin.max()) if len(fin) else math.nan,
            "best": float(best),
        })
    return pd.DataFrame.from_records(recs)



def _quartiles(v, suffix: str = "") -> dict[str, float]:
    """``median``/``q25``/``q75`` (+ suffix) of a series of finite values; NaN when it is empty."""
    n = len(v)
    return {f"median{suffix}": float(v.median()) if n else math.nan,
            f"q25{suffix}": float(v.quantile(0.25)) if n else math.nan,
            f"q75{suffix}": float(v.quantile(0.75)) if n else math.nan}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial CI for a success rate k/n.

    Why exact: with 10 seeds and rates near 0 or 1 the normal (Wald) interval collapses
    to a point or leaves [0, 1]; Clopper–Pearson never undercovers.
    """
    from scipy import stats

    if n <= 0:
        return math.nan, math.nan
    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi



def threshold_stats(df, level: float = 0.95):
    """Per (family, budget): runs, successes, success rate + CI, epochs to threshold among successes.

    Rows: the seeds of each cell's best configuration when the study confirmed (the
    search members mix learning rates), else every member (the paper-protocol studies
    fix all hyperparameters, so members are seeds).  Denominator: every trained member
    (completed or diverged: a diverged run is a failure to reach the threshold).  A
    *pruned* member is censored, not failed – it counts only if it had already reached
    the threshold (the paper-protocol studies never prune).
    A success is a finite ``epochs_to_threshold`` (NaN = never reached within the budget).
    """
    import pandas as pd

    df = final_rows(df)
    hit = np.isfinite(df[Metric.EPOCHS_TO_THRESHOLD].astype(float))
    df = df[(df["state"] != "pruned") | hit]
    recs = []
    for (fam, budget), cell in df.groupby(["family", "budget"], sort=True):
        cell = _best_group(cell)
        ep = cell[Metric.EPOCHS_TO_THRESHOLD].astype(float)
        ok = ep[np.isfinite(ep)]
        n, k = int(len(cell)), int(len(ok))
        lo, hi = clopper_pearson(k, n, level)
        recs.append({
            "family": fam, "model_family": cell["model_family"].iloc[0], "budget": int(budget),
            "n_params": float(np.median(cell["n_params_total"])), "n": n, "successes": k,
            "rate": k / n if n else math.nan, "ci_lo": lo, "ci_hi": hi,
            **_quartiles(ok, "_epochs"),
        })
    return pd.DataFrame.from_records(recs)



def _cells(df):
    """A section's starting point: its final rows, their per-cell stats and the role holders."""
    rows = final_rows(df)
    return rows, cell_stats(rows), roles(rows)


def _value(stats, label: str | None, budget: int, col: str = "median") -> float:
    if label is None:
        return math.nan
    row = stats[(stats["family"] == label) & (stats["budget"] == budget)]
    return float(row[col].iloc[0]) if len(row) else math.nan



def _best(stats, label: str) -> float:
    """The lowest value any member of family ``label`` reached, over all its budgets."""
    return float(stats.loc[stats["family"] == label, "min"].min())


def _budgets(stats) -> list[int]:
    return sorted(int(b) for b in set(stats["budget"]))



def _families(stats) -> list[str]:
    """Family labels in a stable, meaningful order: deep, wide, dense, rank1, others."""
    order = {fam: i for i, fam in enumerate(ROLES.values())}
    pairs = {(order.get(m, 99), f) for f, m in zip(stats["family"], stats["model_family"])}
    return [f for _, f in sorted(pairs)]



def _color(stats, label: str) -> str | None:
    fam = stats.loc[stats["family"] == label, "model_family"]
    return COLORS.get(fam.iloc[0]) if len(fam) else None



def _median_metrics(prefix: str, stats) -> dict[str, float]:
    """``<prefix>.<family>.<budget>.median`` for every cell (the numbers MLflow keeps)."""
    return {_metric_key(prefix, s["family"], s["budget"], "median"): s["median"] for _, s in stats.iterrows()}

