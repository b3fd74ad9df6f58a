"""Read back what a study recorded: MLflow member runs → one Arrow table.

Why a table: scaling points, fits, exports and notebooks all want the same thing —
one row per member with its hyperparameters, final metrics and state — and Arrow
is the lingua franca (Parquet, pandas, DuckDB, Polars).

Columns: run_id, study, cell, family (the study's family label), model_family,
budget, n_params_total, phase ('search'|'confirm'), state, optuna_trial, seed,
test_error (at the best-val weights), best_val, epochs_to_threshold (NaN if never),
epochs_trained, wall_time_s, best_epoch, stopped_early (1/0), undertrained (1/0: still
improving at its last epoch), baseline_val (mean predictor's val error), lr_edge
('low'/'high'/'': lr at the edge of its search range), confirm_of (null unless a confirmation run), width, depth, rank,
branches, diag, activation, and param_<name> for every hyperparameter.
"""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa

from .errors import DlorError
from .run_schema import HPARAMS, Kind, Metric, Param, Tag
from .studydir import marker_candidates
from .tracking import Tracker

_INT = lambda v: None if v in (None, "", "None") else int(float(v))  # noqa: E731
_FLOAT = lambda v: math.nan if v in (None, "", "None") else float(v)  # noqa: E731


def member_runs(tracker: Tracker) -> pa.Table:
    """Every member run of the study as an Arrow table (schema in the module doc)."""
    rows = []
    for r in tracker.runs(kind=Kind.MEMBER):
        p, t, m = r.data.params, r.data.tags, r.data.metrics
        row = {
            "run_id": r.info.run_id, "study": t.get(Tag.STUDY), "cell": t.get(Tag.CELL),
            "family": t.get(Tag.LABEL, t.get(Tag.FAMILY)), "model_family": t.get(Tag.FAMILY),
            "budget": _INT(t.get(Tag.BUDGET)), "n_params_total": _INT(p.get(Param.N_PARAMS_TOTAL)),
            "phase": t.get(Tag.PHASE), "state": t.get(Tag.STATE),
            "optuna_trial": _INT(t.get(Tag.OPTUNA_TRIAL)), "seed": _INT(p.get(Param.SEED)),
            **{k: _FLOAT(m.get(k)) for k in Metric.FINALS},   # each final is a column of its own name
            "lr_edge": t.get(Tag.LR_EDGE, ""),
            "confirm_of": _INT(t.get(Tag.CONFIRM_OF)),
            **{k: _INT(p.get(k)) for k in Param.SHAPE_INTS}, **{k: p.get(k) for k in Param.SHAPE_STRS},
        }
        for k in HPARAMS:
            row[f"param_{k}"] = _FLOAT(p.get(k))
        for k, v in p.items():
            if k.startswith(Param.HP_PREFIX):
                row[f"param_{k[len(Param.HP_PREFIX):]}"] = v
        rows.append(row)
    schema = pa.schema([
        ("run_id", pa.string()), ("study", pa.string()), ("cell", pa.string()), ("family", pa.string()),
        ("model_family", pa.string()), ("budget", pa.int64()), ("n_params_total", pa.int64()),
        ("phase", pa.string()), ("state", pa.string()), ("optuna_trial", pa.int64()), ("seed", pa.int64()),
        *[(k, pa.float64()) for k in Metric.FINALS],
        ("lr_edge", pa.string()), ("confirm_of", pa.int64()),
        *[(k, pa.int64()) for k in Param.SHAPE_INTS], *[(k, pa.string()) for k in Param.SHAPE_STRS],
        *[(f"param_{k}", pa.float64()) for k in HPARAMS],
    ])
    extra = sorted({k for r in rows for k in r} - set(schema.names))
    for k in extra:
        schema = schema.append(pa.field(k, pa.string()))
        for r in rows:
            if k in r and r[k] is not None:
                r[k] = str(r[k])
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.sort_by([("family", "ascending"), ("budget", "ascending"), ("phase", "ascending")]) \
        if table.num_rows else table


def find_study(study: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(study name, tracking URI) from a name, a study folder, or a spec file."""
    info_file = next((c for c in marker_candidates(study) if c.exists()), None)
    if info_file is not None:
        info = json.loads(info_file.read_text())
        return info["name"], tracking_uri or info["tracking_uri"]
    if tracking_uri is None:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri is None:
        raise DlorError(f"study {study!r} not found locally; pass tracking_uri= (or set MLFLOW_TRACKING_URI)")
    return study, tracking_uri


def study_tracker(study: str, tracking_uri: str | None = None) -> Tracker:
    name, uri = find_study(study, tracking_uri)
    tracker = Tracker(uri, name)
    if tracker.client.get_experiment_by_name(name) is None:
        raise DlorError(f"no MLflow experiment {name!r} at {uri}")
    return tracker
