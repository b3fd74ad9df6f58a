"""Scaling laws of a recorded study: MLflow member runs in, a `kind=fit` run out.

Why recompute from runs: the member runs are the source of truth; a fit is a pure
function of them (plus form, bootstrap size and seed), so the fit run is keyed by a
hash of its inputs — refitting unchanged data finds the existing run instead of
piling up duplicates, and new data gives a new, separately browsable fit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .scaling import Curves, RecordedCurves, points_from_runs
from .records import member_runs, study_tracker
from .run_schema import FitMetric, Kind, Tag, fit_metric
from .studydir import atomic_write_bytes
from .tracking import Tracker
from .units import ERROR_COLUMNS, scale_columns, study_units, with_units_metadata

# Part of the fit run's key: a changed fitting method must not find (and return) a fit run
# recorded by the old one. bc-t/1: BC percentile-t CIs, flagged cells excluded.
FIT_METHOD = "bc-t/1"


def study_fit_form(study: str) -> str:
    """The law the study's spec asks for (``fit_form``), read from its ``study.json`` or spec
    file; ``saturating`` when neither is found (e.g. a study known only to MLflow)."""
    from .studydir import marker_candidates
    p = Path(study)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from .spec import load_study
        return load_study(p).fit_form
    for info in marker_candidates(study):
        try:
            return json.loads(info.read_text())["spec"].get("fit_form", "saturating")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return "saturating"


def load_curves(study: str, tracking_uri: str | None = None, *, form: str | None = None,
                n_boot: int = 1000, seed: int = 0, units: str = "standardized",
                recorded: bool = False) -> Curves | RecordedCurves:
    """`dlor_scale.curves(...)`: fitted scaling curves of a study, per family label.

    ``form`` defaults to the study's ``fit_form``.
    ``units="target"`` reports errors (points, E, A, predictions) in the target's own units
    (see `units`); α is unchanged. ``curves.units`` says which units and the factor used.

    ``recorded=True`` (what `dlor-scale curves` does unless ``--refit``): return the
    study's recorded fit run as a `RecordedCurves` when one exists for exactly these
    inputs (its key hashes the points, form, bootstrap size, seed and fitting method, so a
    changed study, form or method finds none) and the errors need no rescaling; otherwise
    fit afresh. A `RecordedCurves` tabulates and exports, but cannot predict.
    """
    form = form or study_fit_form(study)
    tracker = study_tracker(study, tracking_uri)
    info = study_units(tracker, units)
    raw = points_from_runs(member_runs(tracker))
    if recorded and info["factor"] == 1.0:
        c = recorded_fit(tracker, raw, form=form, n_boot=n_boot, seed=seed)
        if c is not None:
            c.units = info
            return c
    points = scale_columns(raw, ("error", "stderr"), info["factor"])
    c = Curves.from_points(points, form=form, n_boot=n_boot, seed=seed, study=tracker.experiment_name)
    c.units = info
    return c


def fit_run_key(study_name: str, points: pa.Table, *, form: str, n_boot: int, seed: int) -> str:
    """The fit run's key: a hash of everything the fit is a function of."""
    digest = hashlib.sha256(
        json.dumps({"points": points.to_pylist(), "form": form, "n_boot": n_boot, "seed": seed,
                    "method": FIT_METHOD}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{study_name}/fit/{digest}"


def recorded_fit(tracker: Tracker, points: pa.Table, *, form: str, n_boot: int = 1000,
                 seed: int = 0) -> RecordedCurves | None:
    """The complete recorded fit run of exactly these points and settings, or None (none
    recorded, incomplete, or its artifacts unreadable: the caller refits)."""
    run = tracker.find_run(fit_run_key(tracker.experiment_name, points, form=form, n_boot=n_boot, seed=seed))
    if run is None or run.data.tags.get(Tag.COMPLETE) != "1":
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars on stderr
    try:
        with tempfile.TemporaryDirectory() as d:
            docs = {}
            for name in ("curves.json", "comparisons.json"):
                path = tracker.client.download_artifacts(run.info.run_id, name, d)
                docs[name] = json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - a missing/corrupt artifact means: refit, never fail
        return None
    doc = docs["curves.json"]
    if doc.get("form") != form or not isinstance(doc.get("families"), dict):
        return None
    return RecordedCurves(doc, docs["comparisons.json"])


def export_runs(study: str, out: Path, tracking_uri: str | None = None, *,
                units: str = "standardized") -> pa.Table:
    """Every member run as one Parquet file (written atomically). The target's scale and the
    error units ride in the schema metadata (`units.SCALE_META_KEY`, `units.UNITS_META_KEY`)."""
    tracker = study_tracker(study, tracking_uri)
    info = study_units(tracker, units)
    table = with_units_metadata(scale_columns(member_runs(tracker), ERROR_COLUMNS, info["factor"]), info)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(Path(out), buf.getvalue().to_pybytes())
    return table


def comparisons(curves: Curves) -> dict:
    """Every ordered pair of fitted families (deep vs wide is the headline).

    Each is ``fit.compare``'s dict: ``identified`` / ``verdict`` say whether Δα means anything
    (no CI is given when either exponent is not identified). A `RecordedCurves` gives its
    recorded comparisons."""
    if isinstance(curves, RecordedCurves):
        return curves.recorded_comparisons
    out = {}
    fams = [c.family for c in curves if c.fit is not None]
    for i, a in enumerate(fams):
        for b in fams[i + 1:]:
            try:
                out[f"{a} vs {b}"] = curves.compare(a, b)
            except Exception as exc:  # noqa: BLE001 - a failed comparison is reported, not fatal
                out[f"{a} vs {b}"] = {"error": str(exc)}
    return out


def fit_and_record(study_name: str, tracker: Tracker, *, form: str = "saturating", n_boot: int = 1000,
                   seed: int = 0) -> Curves:
    """Fit every family and store the fit as an MLflow run with its artifacts."""
    points = points_from_runs(member_runs(tracker))
    curves = Curves.from_points(points, form=form, n_boot=n_boot, seed=seed, study=study_name)
    key = fit_run_key(study_name, points, form=form, n_boot=n_boot, seed=seed)
    existing = tracker.find_run(key)
    if existing is not None and existing.data.tags.get(Tag.COMPLETE) == "1":
        return curves
    parent = tracker.find_run(study_name)
    table = curves.to_pandas()
    F = FitMetric
    finals = {}
    for _, row in table.iterrows():
        fam = row["family"]
        # the curves table's columns carry the metric suffixes' names
        for k in (F.ALPHA, F.ALPHA_LO, F.ALPHA_HI, F.E, F.A, F.EXTRAPOLATION_MAX_REL_ERR):
            finals[fit_metric(fam, k)] = row[k]
        ok = row["extrapolation_ok"]  # True / False / None ("n/a" → NaN, never a pass)
        finals[fit_metric(fam, F.EXTRAPOLATION_OK)] = math.nan if ok is None or ok != ok else float(bool(ok))
        finals[fit_metric(fam, F.ALPHA_IDENTIFIED)] = float(bool(row["alpha_identified"]))
        finals[fit_metric(fam, F.N_EXCLUDED)] = float(len(row["excluded_budgets"]))
    comps = comparisons(curves)
    for name, c in comps.items():
        if "delta_alpha" in c:
            pair = name.replace(' ', '_')  # not `key`: that is the run's key (it was overwritten)
            finals[fit_metric(pair, F.DELTA_ALPHA)] = c["delta_alpha"]
            finals[fit_metric(pair, F.IDENTIFIED)] = float(bool(c.get("identified")))
            if c.get("delta_alpha_ci"):
                finals[fit_metric(pair, F.DELTA_ALPHA_LO)], finals[fit_metric(pair, F.DELTA_ALPHA_HI)] = \
                    c["delta_alpha_ci"]
    run_id = tracker.get_or_create_run(key, name=f"fit {form}", kind=Kind.FIT,
                                       parent_id=parent.info.run_id if parent else None,
                                       tags={Tag.STUDY: study_name, Tag.FIT_FORM: form})
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        pq.write_table(points, d / "points.parquet")
        (d / "curves.json").write_text(json.dumps(curves.to_json(), indent=1, default=str))
        (d / "comparisons.json").write_text(json.dumps(_jsonable(comps), indent=1, default=str))
        curves.plot(d / "scaling.png")
        for f in ("points.parquet", "curves.json", "comparisons.json", "scaling.png"):
            tracker.client.log_artifact(run_id, str(d / f))
    tracker.log_batch(run_id, params={"form": form, "n_boot": n_boot, "seed": seed,
                                      "families": ",".join(curves.families)},
                      tags={Tag.COMPLETE: "1"}, metrics=[(k, v, 0) for k, v in finals.items()])
    tracker.finish(run_id)
    return curves


def _jsonable(obj):
    from .fit import _jsonable as j
    return j(obj)
