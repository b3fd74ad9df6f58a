"""The target's scale, recorded with a study, and errors reported in the target's own units.

Why: Parquet targets are standardized with the training split's mean/std (so one lr range
and one init fit every table), and every recorded error (``test_error``, ``best_val``,
points, fits) is in those standardized units — "RMSE 0.42" means 0.42 target std. A user
asks "how many mmol/L off?", so the scale is recorded with the study (``study.json``
``data.scale``, the MLflow study run's ``target.scale`` param, the export's schema
metadata) and ``curves`` / ``export`` convert on request (``--units target``).

Standardized stays the default: it is what the fits and pruning saw, and it is comparable
across tables. The conversion is a single factor (rmse, max_abs: × y_std; mse: × y_std²),
so a fitted law keeps its exponent α; E and A scale by the factor. It is defined only for
one target column (or columns with equal std) and never for ``rel_l2``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError, DlorError
from .run_schema import Metric
from .studydir import STUDY_MARKER

UNITS = ("standardized", "target")
ERROR_COLUMNS = (Metric.TEST_ERROR, Metric.BEST_VAL, Metric.BASELINE_VAL)  # member-export columns that are errors
SCALE_META_KEY = b"dlor.target_scale"
UNITS_META_KEY = b"dlor.error_units"
_MAX_PARAM = 6000  # MLflow's param value limit


class UnitsError(DlorError):
    """``--units target`` cannot be honoured (metric or targets without a single unit)."""

    exit_code = 2


def scale_params(data: dict | None) -> dict:
    """MLflow params of the study run describing its data (see `check_study_data`)."""
    if not data:
        return {}
    sc = data["scale"]
    y = {k: sc[k] for k in ("standardized", "targets", "y_mean", "y_std")}
    x = json.dumps({k: sc[k] for k in ("features", "x_mean", "x_std")})
    out = {"target.scale": json.dumps(y),
           "target.x_scale": x if len(x) <= _MAX_PARAM else f"too long for a param: see {STUDY_MARKER} data.scale",
           "data.n_train": data.get("n_train"), "data.n_val": data.get("n_val"), "data.n_test": data.get("n_test")}
    if data.get("kind") == "parquet":
        out.update({"data.source": data["source"], "data.sha256": data["sha256"], "data.n_rows": data["n_rows"]})
    return out


def scale_from_params(params: dict) -> dict | None:
    """The y scale logged by `scale_params` (None for studies recorded before it existed)."""
    raw = params.get("target.scale")
    return json.loads(raw) if raw else None


def check_same_data(old: dict, data: dict | None, name: str, study_dir: Path) -> None:
    """Refuse to continue a study whose Parquet file changed since it was created."""
    before = (old.get("data") or {}).get("sha256")
    now = (data or {}).get("sha256")
    if before is None or now is None or before == now:
        return
    was = old["data"]
    raise DataError(
        f"{data['source']}: the data changed since study {name!r} was created in {study_dir}: "
        f"sha256 {before[:12]}… ({was.get('n_rows')} rows) → {now[:12]}… ({data.get('n_rows')} rows). "
        "A study never mixes two versions of its data: restore the original file, or give the "
        "study another name to start a new one on the new data"
    )


def error_factor(scale: dict | None, metric: str) -> float:
    """Factor taking a recorded (standardized) error to the target's own units.

    rmse / max_abs scale with y_std, mse with y_std². Defined only when every target column
    has the same std (the recorded error averages over columns), and never for ``rel_l2``
    (a ratio to the *centred* target's norm): both raise `UnitsError`.
    """
    if not scale or not scale.get("standardized"):
        return 1.0
    stds = [float(s) for s in scale["y_std"]]
    if metric == "rel_l2":
        raise UnitsError("--units target: metric rel_l2 is a ratio to the centred target's norm and has "
                         "no target-units counterpart (use metric rmse, mse or max_abs)")
    if max(stds) - min(stds) > 1e-12 * max(stds):
        raise UnitsError(f"--units target: the error averages {len(stds)} target columns "
                         f"{scale.get('targets')} with different stds {stds}, so it has no single unit; "
                         "use one target column per study to report in target units")
    if metric not in ("rmse", "mse", "max_abs"):
        raise UnitsError(f"--units target: unknown metric {metric!r}")
    return stds[0] ** 2 if metric == "mse" else stds[0]


def study_units(tracker, units: str) -> dict:
    """What a study's errors mean: ``{"units", "factor", "metric", "scale"}``.

    ``factor`` multiplies a recorded error to give it in ``units`` (1 for standardized).
    Read from the study run's params, so it works against a remote tracking server too.
    """
    if units not in UNITS:
        raise UnitsError(f"--units: unknown {units!r}; allowed: {', '.join(UNITS)}")
    run = tracker.find_run(tracker.experiment_name)
    params = run.data.params if run is not None else {}
    scale, metric = scale_from_params(params), params.get("metric", "rmse")
    if units == "target" and scale is None:
        raise UnitsError(f"--units target: study {tracker.experiment_name!r} has no recorded target scale "
                         "(it was launched before scales were recorded); relaunch it under a new name")
    factor = error_factor(scale, metric) if units == "target" else 1.0
    return {"units": units, "factor": factor, "metric": metric, "scale": scale}


def scale_columns(table, columns, factor: float):
    """``table`` with ``columns`` (those present) multiplied by ``factor``."""
    import pyarrow.compute as pc

    if factor == 1.0:
        return table
    for c in columns:
        if c in table.column_names:
            i = table.column_names.index(c)
            table = table.set_column(i, table.schema.field(i), pc.multiply(table.column(c), factor))
    return table


def with_units_metadata(table, info: dict):
    """Attach the scale and the units of the error columns to an Arrow table's schema."""
    meta = dict(table.schema.metadata or {})
    meta[SCALE_META_KEY] = json.dumps(info.get("scale")).encode()
    meta[UNITS_META_KEY] = json.dumps({"units": info["units"], "metric": info["metric"],
                                       "factor": info["factor"]}).encode()
    return table.replace_schema_metadata(meta)
