"""The query API users see: scaling points from member runs, and fitted curves per family.

Two steps, kept separate so each can be tested and cached on its own:

1. ``points_from_runs(runs)`` reduces the member-run export (one row per training run) to
   one *scaling point* per (family, budget): the error of the best tuned configuration.
2. ``Curves.from_points(points)`` fits a law per family (``fit.fit_law``), runs the held-out
   extrapolation check, and serves the results (tables, JSON, a plot, comparisons).

A family whose fit fails becomes a ``FamilyCurve`` with NaN parameters and flags saying why,
so one all-diverged family never hides the others.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dlor_scale.errors import DataError, FitError
from dlor_scale.run_schema import Flag, Metric

if TYPE_CHECKING:  # pyarrow is imported where tables are made: `import dlor_scale` (and so
    import pyarrow as pa  # every CLI command, `validate` included) stays light
from dlor_scale.fit import (DEFAULT_REL_TOL, PARAM_NAMES, LawFit, _jsonable, compare,
                            extrapolation_check, fit_law)

POINT_COLUMNS = ("family", "budget", "n_params", "error", "stderr", "n_seeds", "best_trial",
                 "source", "flags")


@functools.cache
def _point_schema():
    import pyarrow as pa
    return pa.schema([
        ("family", pa.string()), ("budget", pa.int64()), ("n_params", pa.int64()),
        ("error", pa.float64()), ("stderr", pa.float64()), ("n_seeds", pa.int64()),
        ("best_trial", pa.int64()),  # null when the cell has no completed search run
        ("source", pa.string()),
        ("flags", pa.string()),  # comma-separated cell diagnostics of the selected member; "" = clean
    ])


def __getattr__(name: str):
    """``POINT_SCHEMA`` (the Arrow schema of `points_from_runs`), built on first use."""
    if name == "POINT_SCHEMA":
        return _point_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RUN_COLUMNS = ("study", "cell", "family", "budget", "n_params_total", "phase", "state",
               "optuna_trial", "seed", Metric.TEST_ERROR, Metric.BEST_VAL, "confirm_of")
# Optional member diagnostics (absent in tables recorded before they existed: no flag then).
DIAG_COLUMNS = (Metric.BASELINE_VAL, Metric.UNDERTRAINED, Metric.STOPPED_EARLY, Metric.BEST_EPOCH, "lr_edge")
NOT_TRAINED_FRACTION = 0.9  # best val ≥ 90% of the mean predictor's: the net learned ~nothing
POINT_FLAGS = Flag.ALL


# --------------------------------------------------------------------------- points


def points_from_runs(runs: pa.Table) -> pa.Table:
    """One scaling point per (family, budget) from the member-run export table.

    Rules (why in brackets):

    * The point's configuration is the **search-phase** member with the lowest ``best_val``
      (validation error, lower is better) among ``state == 'completed'`` runs. Pruned runs
      never count, even if nothing completed: their ``best_val`` is from a truncated
      schedule, and mixing them in would bias small budgets (more pruning) optimistic.
      Ties break on the lower ``optuna_trial`` so the choice is deterministic.
    * ``error`` is that member's ``test_error`` (selected on validation, scored on test, so
      the selection does not leak into the point), with ``n_seeds = 1`` and NaN stderr.
    * If completed **confirm-phase** runs exist with ``confirm_of`` equal to that member's
      ``optuna_trial`` (same study and cell), ``error`` is their mean ``test_error``,
      ``stderr = std(ddof=1)/sqrt(n)`` (NaN for n = 1) and ``n_seeds = n``. Confirm runs
      that diverged or failed are excluded from the mean and counted in ``source``.
    * A (family, budget) with no completed search run still gets a row, with NaN error and
      a null ``best_trial``: the fit then reports the dropped budget instead of silently
      fitting around an all-diverged cell.
    * ``flags`` (comma-separated, "" when clean) are the selected member's cell diagnostics,
      from the optional columns ``DIAG_COLUMNS`` (missing column or null value = unknown =
      no flag): ``undertrained`` (val error still falling at its last report: the point is
      above the cell's capacity floor), ``lr_edge:low|high`` (its lr lies at the edge of the
      search range: the optimum may lie outside it), ``not_trained`` (best val ≥ 0.9 ×
      the mean predictor's val error: the net learned ~nothing). A law fitted through such
      points measures the protocol, not the architecture; ``Curves.from_points`` excludes
      them by default.
    """
    missing = [c for c in RUN_COLUMNS if c not in runs.column_names]
    if missing:
        raise DataError(f"runs table: missing column(s) {missing}; have {runs.column_names}")
    diag = [c for c in DIAG_COLUMNS if c in runs.column_names]
    df = runs.select(list(RUN_COLUMNS) + diag).to_pandas()
    rows: list[dict[str, Any]] = []
    for (family, budget), g in df.groupby(["family", "budget"], sort=True):
        search = g[g["phase"] == "search"]
        done = search[(search["state"] == "completed") & np.isfinite(search[Metric.BEST_VAL])]
        if done.empty:
            states = search["state"].value_counts().to_dict()
            detail = ", ".join(f"{v} {k}" for k, v in sorted(states.items())) or "no runs"
            n_params = search["n_params_total"].dropna()
            rows.append({"family": family, "budget": int(budget),
                         "n_params": int(n_params.iloc[0]) if len(n_params) else int(budget),
                         "error": math.nan, "stderr": math.nan, "n_seeds": 0,
                         "best_trial": None,
                         "source": f"none: 0 completed search runs ({detail})", "flags": ""})
            continue
        best = done.sort_values([Metric.BEST_VAL, "optuna_trial"], kind="stable").iloc[0]
        trial = int(best["optuna_trial"])
        conf = g[(g["phase"] == "confirm") & (g["confirm_of"] == trial)
                 & (g["study"] == best["study"]) & (g["cell"] == best["cell"])]
        ok = conf[(conf["state"] == "completed") & np.isfinite(conf[Metric.TEST_ERROR])]
        n_bad = len(conf) - len(ok)
        if len(ok):
            errs = ok[Metric.TEST_ERROR].to_numpy(dtype=float)
            n = errs.size
            err, se, source = float(errs.mean()), (float(errs.std(ddof=1) / math.sqrt(n))
                                                   if n > 1 else math.nan), "confirm"
        else:
            n, err, se, source = 1, float(best[Metric.TEST_ERROR]), math.nan, "search"
        if n_bad:
            source += f" ({n_bad} of {len(conf)} confirm runs not completed, excluded)"
        rows.append({"family": family, "budget": int(budget),
                     "n_params": int(best["n_params_total"]), "error": err, "stderr": se,
                     "n_seeds": int(n), "best_trial": trial, "source": source,
                     "flags": ",".join(_point_flags(best, ok))})
    import pyarrow as pa
    return pa.Table.from_pylist(rows, schema=_point_schema())


def _point_flags(best, confirms) -> list[str]:
    """The point's flags: ``lr_edge`` from the selected configuration; ``undertrained`` and
    ``not_trained`` from the runs the error is read from — the confirm runs (a majority of
    them) when there are any, else the selected search member."""
    flags = _member_flags(best)
    if len(confirms) == 0:
        return flags
    per_run = [_member_flags(r) for _, r in confirms.iterrows()]
    flags = [f for f in flags if f in Flag.LR_EDGE.values()]
    for f in (Flag.UNDERTRAINED, Flag.NOT_TRAINED):
        if 2 * sum(f in fl for fl in per_run) > len(per_run):
            flags.append(f)
    return flags


def _member_flags(row) -> list[str]:
    """Diagnostics of one member row (pandas Series); unknown values raise no flag."""
    def num(col):
        v = row.get(col) if col in row.index else None
        try:
            v = float(v)
        except (TypeError, ValueError):
            return math.nan
        return v

    flags = []
    if num(Metric.UNDERTRAINED) == 1.0:
        flags.append(Flag.UNDERTRAINED)
    edge = row.get("lr_edge") if "lr_edge" in row.index else None
    if isinstance(edge, str) and edge.strip().lower() in Flag.LR_EDGE:
        flags.append(Flag.LR_EDGE[edge.strip().lower()])
    best, base = num(Metric.BEST_VAL), num(Metric.BASELINE_VAL)
    if math.isfinite(best) and math.isfinite(base) and base > 0 \
            and best >= NOT_TRAINED_FRACTION * base:
        flags.append(Flag.NOT_TRAINED)
    return flags


# --------------------------------------------------------------------------- curves


@dataclass
class FamilyCurve:
    """One family's curve. ``fit`` is None when no law could be fitted (see ``flags``).

    ``points`` holds every point of the family, including ``excluded`` ones: budgets left out
    of the fit because their cell was flagged (``{"budget", "n_params", "error", "flags"}``
    per budget), so a reader sees what the law was *not* fitted to and why.
    """

    family: str
    form: str
    points: pa.Table
    fit: LawFit | None
    extrapolation: dict[str, Any]
    flags: list[str] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def alpha(self) -> float:
        return self.fit.alpha if self.fit else math.nan

    @property
    def E(self) -> float:
        return self.fit.E if self.fit else math.nan

    @property
    def A(self) -> float:
        return self.fit.A if self.fit else math.nan

    @property
    def ok(self) -> bool:
        """Fitted, converged, α identified and passed the extrapolation check."""
        return bool(self.fit and self.fit.converged and self.fit.alpha_identified
                    and self.extrapolation.get("ok") is True)

    def ci(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        if self.fit is None:
            return {n: (math.nan, math.nan) for n in PARAM_NAMES[self.form]}
        return self.fit.ci(level)

    def predict(self, P) -> np.ndarray:
        return self.fit.predict(P) if self.fit else np.full(np.shape(P), np.nan)

    def predict_interval(self, P, level: float = 0.95):
        if self.fit is None:
            nan = np.full(np.shape(P), np.nan)
            return nan, nan.copy()
        return self.fit.predict_interval(P, level)

    def params_for(self, error: float) -> float | None:
        return self.fit.params_for(error) if self.fit else None


class Curves:
    """Fitted curves for every family of a study. Build with ``Curves.from_points``."""

    def __init__(self, curves: dict[str, FamilyCurve], *, form: str = "saturating",
                 study: str | None = None, level: float = 0.95):
        self._curves = dict(sorted(curves.items()))
        self.form, self.study, self.level = form, study, level

    @classmethod
    def from_points(cls, points: pa.Table, *, form: str = "saturating", n_boot: int = 1000,
                    seed: int = 0, study: str | None = None, holdout: int | None = None,
                    rel_tol: float | None = DEFAULT_REL_TOL, level: float = 0.95,
                    exclude_flagged: bool = True) -> "Curves":
        """Fit every family in a points table (``POINT_COLUMNS``; extra columns ignored).

        The law is fitted against ``n_params`` (the realised parameter count), not the
        nominal ``budget``: structures hit a budget only within tolerance, and the law is
        about parameters actually trained.

        ``exclude_flagged`` (default): points whose ``flags`` column is non-empty (an
        undertrained, lr-at-edge or not-trained cell, see ``points_from_runs``) are left out
        of the fit and listed in the family's ``excluded`` and ``flags``. Such a point sits
        above the cell's capacity floor, and fitting it bends the law toward the protocol's
        failure. With ``exclude_flagged=False`` they are fitted and the flags still say so.
        ``rel_tol``: tolerance of the extrapolation check (``fit.extrapolation_check``).
        Each family's bootstrap seed is derived from ``seed`` and its name
        (``fit._family_seed``), so two families never share bootstrap noise.
        """
        need = ("family", "n_params", "error")
        missing = [c for c in need if c not in points.column_names]
        if missing:
            raise DataError(f"points table: missing column(s) {missing}")
        import pyarrow as pa
        curves = {}
        fam_col = points.column("family").to_pylist()
        for family in sorted(set(fam_col)):
            sub = points.filter(pa.array([f == family for f in fam_col]))
            curves[family] = _fit_family(family, sub, form=form, n_boot=n_boot,
                                         seed=seed, holdout=holdout, rel_tol=rel_tol,
                                         level=level, exclude_flagged=exclude_flagged)
        return cls(curves, form=form, study=study, level=level)

    # -- access --------------------------------------------------------------------------
    @property
    def families(self) -> list[str]:
        return list(self._curves)

    def family(self, name: str) -> FamilyCurve:
        try:
            return self._curves[name]
        except KeyError:
            raise KeyError(f"no family {name!r}; have {self.families}") from None

    __getitem__ = family

    def __iter__(self):
        return iter(self._curves.values())

    def __len__(self) -> int:
        return len(self._curves)

    def compare(self, a: str, b: str, target_error: float | None = None) -> dict[str, Any]:
        """``fit.compare`` for two families; FitError if either has no fit.

        ``identified`` / ``verdict`` say whether Δα means anything: with either exponent not
        identified the verdict is "not identified" and no Δα CI is given. The two fits'
        bootstraps are independent (seeds derived per family)."""
        ca, cb = self.family(a), self.family(b)
        for c in (ca, cb):
            if c.fit is None:
                raise FitError(f"family {c.family!r} has no fitted law to compare: "
                               f"{'; '.join(c.flags)}")
        return compare(ca.fit, cb.fit, target_error=target_error, level=self.level)

    # -- export ----------------------------------------------------------------------------
    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for c in self:
            f, ci = c.fit, c.ci(self.level)
            row: dict[str, Any] = {"family": c.family, "form": c.form,
                                   "n_points": f.n_points if f else 0}
            for name in ("alpha", "E", "A") + (("alpha2", "P_break")
                                               if c.form == "broken" else ()):
                val = getattr(f, name) if f else math.nan
                lo, hi = ci.get(name, (0.0, 0.0) if name == "E" else (math.nan, math.nan))
                row.update({name: _f(val), f"{name}_lo": _f(lo), f"{name}_hi": _f(hi)})
            ex = c.extrapolation
            row.update({
                "sigma": _f(f.sigma if f else math.nan), "loss": _f(f.loss if f else math.nan),
                "converged": bool(f.converged) if f else False,
                "grad_norm": _f(f.grad_norm if f else math.nan),
                "at_bounds": list(f.at_bounds) if f else [],
                "n_boot": int(f.boot.shape[0]) if f else 0,
                "P_min": _f(f.P_min if f else math.nan), "P_max": _f(f.P_max if f else math.nan),
                "extrapolation_ok": ex.get("ok"),
                "extrapolation_max_rel_err": _f(ex.get("max_rel_err")),
                "alpha_identified": bool(f.alpha_identified) if f else False,
                "excluded_budgets": [x["budget"] for x in c.excluded],
                "excluded_reasons": [f"{x['budget']}: {x['flags']}" for x in c.excluded],
                "flags": list(c.flags),
            })
            rows.append(row)
        return rows

    def to_pandas(self):
        """One row per family: parameters with CI bounds, convergence, extrapolation, flags."""
        import pandas as pd

        return pd.DataFrame(self._rows())

    def to_arrow(self) -> pa.Table:
        """Same rows as ``to_pandas`` with an explicit schema (so an all-clean study still
        types ``flags`` as list<string>, not list<null>)."""
        import pyarrow as pa
        rows = self._rows()
        if not rows:
            return pa.table({"family": pa.array([], pa.string())})
        types = {"family": pa.string(), "form": pa.string(), "n_points": pa.int64(),
                 "n_boot": pa.int64(), "converged": pa.bool_(),
                 "extrapolation_ok": pa.bool_(), "at_bounds": pa.list_(pa.string()),
                 "alpha_identified": pa.bool_(), "excluded_budgets": pa.list_(pa.int64()),
                 "excluded_reasons": pa.list_(pa.string()), "flags": pa.list_(pa.string())}
        schema = pa.schema([(k, types.get(k, pa.float64())) for k in rows[0]])
        return pa.Table.from_pylist(rows, schema=schema)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → None): per family the fit summary, check, flags, points."""
        fams = {}
        for c in self:
            fams[c.family] = {
                "fit": c.fit.to_dict(self.level) if c.fit else None,
                "extrapolation": c.extrapolation, "flags": list(c.flags),
                "excluded": list(c.excluded), "points": c.points.to_pylist(),
            }
        return _jsonable({"study": self.study, "form": self.form, "level": self.level,
                          "families": fams})

    def plot(self, path) -> str:
        """Log-log PNG: points (± stderr) and each fitted curve with its CI band."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 5))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, c in enumerate(self):
            col = colors[i % len(colors)]
            P = np.asarray(c.points.column("n_params").to_pylist(), dtype=float)
            L = np.asarray(c.points.column("error").to_pylist(), dtype=float)
            se = (np.asarray(c.points.column("stderr").to_pylist(), dtype=float)
                  if "stderr" in c.points.column_names else np.full(P.shape, np.nan))
            ok = np.isfinite(P) & (P > 0) & np.isfinite(L) & (L > 0)
            fl = (np.array([bool((f or "").strip()) for f in c.points.column("flags").to_pylist()])
                  if "flags" in c.points.column_names else np.zeros(P.shape, dtype=bool))
            out = ok & fl if c.excluded else np.zeros(P.shape, dtype=bool)
            ok = ok & ~out
            label = c.family
            if c.fit is not None:
                lo_a, hi_a = c.ci(self.level).get("alpha", (math.nan, math.nan))
                label += f": α={c.alpha:.3f} [{lo_a:.3f}, {hi_a:.3f}]"
                if c.extrapolation.get("ok") is False:
                    label += " (extrapolation FAILED)"
                grid = np.geomspace(c.fit.P_min / 2, c.fit.P_max * 4, 200)
                ax.plot(grid, c.predict(grid), color=col, lw=1.5)
                lo, hi = c.predict_interval(grid, self.level)
                if np.isfinite(lo).all():
                    ax.fill_between(grid, lo, hi, color=col, alpha=0.2, lw=0)
            else:
                label += " (no fit)"
            ax.errorbar(P[ok], L[ok], yerr=np.where(np.isfinite(se[ok]), se[ok], 0.0),
                        fmt="o", ms=4, color=col, capsize=2, label=label)
            if out.any():  # flagged cells left out of the fit: hollow markers
                ax.plot(P[out], L[out], "o", ms=6, mfc="none", color=col,
                        label=f"{c.family}: excluded (flagged)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters P")
        ax.set_ylabel("test error")
        ax.set_title(f"{self.study or 'scaling'}: {self.form} fits, "
                     f"{int(self.level * 100)}% bootstrap bands")
        ax.grid(True, which="both", alpha=0.3)
        if len(self):
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return str(path)


class RecordedCurves:
    """The table side of a `Curves`, rebuilt from a recorded fit run's ``curves.json``
    (`Curves.to_json`) and ``comparisons.json``: what `dlor-scale curves` prints, exports
    and compares, without refitting. It holds no bootstrap, so it cannot predict or
    compare anew; `analysis.load_curves` returns it only when the recorded fit's key (a
    hash of the points, form, bootstrap size, seed and method) matches the study now.
    """

    def __init__(self, doc: dict[str, Any], comparisons: dict[str, Any], units: dict | None = None):
        self.doc, self.recorded_comparisons, self.units = doc, comparisons, units
        self.study, self.form, self.level = doc.get("study"), doc["form"], doc.get("level", 0.95)

    @property
    def families(self) -> list[str]:
        return sorted(self.doc["families"])

    def __len__(self) -> int:
        return len(self.doc["families"])

    def to_json(self) -> dict[str, Any]:
        return self.doc

    def _rows(self) -> list[dict[str, Any]]:
        """`Curves._rows` from the recorded summaries (same keys, order and values)."""
        rows = []
        for family in self.families:
            c = self.doc["families"][family]
            f, ex = c["fit"], c.get("extrapolation") or {}
            form = (f or {}).get("form", self.form)
            row: dict[str, Any] = {"family": family, "form": form, "n_points": f["n_points"] if f else 0}
            ci = f.get("ci", {}) if f else {n: (None, None) for n in PARAM_NAMES[form]}
            for name in ("alpha", "E", "A") + (("alpha2", "P_break") if form == "broken" else ()):
                lo, hi = ci.get(name, (0.0, 0.0) if name == "E" else (None, None))
                row.update({name: _f(f.get(name) if f else None), f"{name}_lo": _f(lo), f"{name}_hi": _f(hi)})
            g = f or {}
            row.update({
                "sigma": _f(g.get("sigma")), "loss": _f(g.get("loss")),
                "converged": bool(g.get("converged", False)),
                "grad_norm": _f(g.get("grad_norm")),
                "at_bounds": list(g.get("at_bounds") or []),
                "n_boot": int(g.get("n_boot") or 0),
                "P_min": _f(g.get("P_min")), "P_max": _f(g.get("P_max")),
                "extrapolation_ok": ex.get("ok"),
                "extrapolation_max_rel_err": _f(ex.get("max_rel_err")),
                "alpha_identified": bool(g.get("alpha_identified", False)),
                "excluded_budgets": [x["budget"] for x in c.get("excluded", [])],
                "excluded_reasons": [f"{x['budget']}: {x['flags']}" for x in c.get("excluded", [])],
                "flags": list(c.get("flags", [])),
            })
            rows.append(row)
        return rows

    to_pandas = Curves.to_pandas
    to_arrow = Curves.to_arrow


def _f(v) -> float:
    return math.nan if v is None else float(v)


def _fit_family(family: str, pts: pa.Table, *, form, n_boot, seed, holdout, rel_tol,
                level, exclude_flagged=True) -> FamilyCurve:
    P = np.asarray(pts.column("n_params").to_pylist(), dtype=float)  # null → NaN
    L = np.asarray(pts.column("error").to_pylist(), dtype=float)
    se = (np.asarray(pts.column("stderr").to_pylist(), dtype=float)
          if "stderr" in pts.column_names else None)
    pflags = ([f or "" for f in pts.column("flags").to_pylist()]
              if "flags" in pts.column_names else [""] * pts.num_rows)
    budgets = (pts.column("budget").to_pylist() if "budget" in pts.column_names
               else [None] * pts.num_rows)
    flagged = np.array([bool(f.strip()) for f in pflags], dtype=bool)
    excluded = [{"budget": b, "n_params": _num_or_none(p), "error": _num_or_none(e),
                 "flags": f} for b, p, e, f, m in zip(budgets, P, L, pflags, flagged) if m]
    head: list[str] = []
    if flagged.any():
        desc = "; ".join(f"P={x['n_params'] if x['n_params'] is not None else x['budget']}"
                         f" ({x['flags']})" for x in excluded)
        if exclude_flagged:
            head.append(f"excluded {len(excluded)} flagged point(s) from the fit: {desc}")
            keep = ~flagged
            P, L = P[keep], L[keep]
            se = se[keep] if se is not None else None
        else:
            head.append(f"fit INCLUDES {len(excluded)} flagged point(s): {desc}")
            excluded = []
    kw = dict(family=family, form=form, n_boot=n_boot, seed=seed)
    try:
        fit = fit_law(P, L, stderr=se, level=level, **kw)
    except FitError as exc:
        return FamilyCurve(family, form, pts, None,
                           {"ok": None, "verdict": "n/a", "reason": "no fit", "held_out": []},
                           head + [f"fit failed: {exc}"], excluded)
    flags = head + list(fit.flags)
    ex = extrapolation_check(P, L, stderr=se, holdout=holdout, level=level, rel_tol=rel_tol,
                             **kw)
    if ex["ok"] is not None and not fit.alpha_identified:
        # the reduced fit may pin α by luck; the full fit cannot, so the check says nothing
        ex["ok"], ex["verdict"] = None, "n/a"
        ex["reason"] = f"α not identified by the full fit ({fit.identification})"
    if ex["ok"] is None:
        flags.append(f"extrapolation n/a: {ex['reason']}")
    elif not ex["ok"]:
        tol = ex["rel_tol"]
        bad = [h for h in ex["held_out"] if not h["inside"] or h["rel_err"] > tol]
        flags.append(f"extrapolation check FAILED (tolerance {tol:.0%}): " + "; ".join(
            f"P={h['P']:.4g} observed {h['L']:.4g} vs predicted {h['pred']:.4g} "
            f"({h['rel_err']:.1%} off, {int(level * 100)}% interval "
            f"[{h['lo']:.4g}, {h['hi']:.4g}])" for h in bad))
    return FamilyCurve(family, form, pts, fit, ex, flags, excluded)


def _num_or_none(v):
    v = float(v)
    if not math.isfinite(v):
        return None
    return int(v) if v.is_integer() else v
