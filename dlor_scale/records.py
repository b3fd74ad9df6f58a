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
from .studydir import marker_candidates
from .tracking import Tracker

HP_PARAMS = ("lr", "weight_decay", "init_scale", "beta1", "beta2")
_INT = lambda v: None if v in (None, "", "None") else int(float(v))  # noqa: E731
_FLOAT = lambda v: math.nan if v in (None, "", "None") else float(v)  # noqa: E731


def member_runs(tracker: Tracker) -> pa.Table:
    """Every member run of the study as an Arrow table (schema in the module doc)."""
    rows = []
    for r in tracker.runs(kind="member"):
        p, t, m = r.data.params, r.data.tags, r.data.metrics
        row = {
            "run_id": r.info.run_id, "study": t.get("dlor.study"), "cell": t.get("dlor.cell"),
            "family": t.get("dlor.label", t.get("dlor.family")), "model_family": t.get("dlor.family"),
            "budget": _INT(t.get("dlor.budget")), "n_params_total": _INT(p.get("n_params_total")),
            "phase": t.get("dlor.phase"), "state": t.get("state"),
            "optuna_trial": _INT(t.get("optuna.trial")), "seed": _INT(p.get("seed")),
            "test_error": _FLOAT(m.get("test_error")), "best_val": _FLOAT(m.get("best_val")),
            "epochs_to_threshold": _FLOAT(m.get("epochs_to_threshold")),
            "epochs_trained": _FLOAT(m.get("epochs_trained")), "wall_time_s": _FLOAT(m.get("wall_time_s")),
            "best_epoch": _FLOAT(m.get("best_epoch")), "stopped_early": _FLOAT(m.get("stopped_early")),
            "undertrained": _FLOAT(m.get("undertrained")), "baseline_val": _FLOAT(m.get("baseline_val")),
            "lr_edge": t.get("dlor.lr_edge", ""),
            "confirm_of": _INT(t.get("dlor.confirm_of")),
            "width": _INT(p.get("width")), "depth": _INT(p.get("depth")), "rank": _INT(p.get("rank")),
            "branches": _INT(p.get("branches")), "diag": p.get("diag"), "activation": p.get("activation"),
        }
        for k in HP_PARAMS:
            row[f"param_{k}"] = _FLOAT(p.get(k))
        for k, v in p.items():
            if k.startswith("hp_"):
                row[f"param_{k[3:]}"] = v
        rows.append(row)
    schema = pa.schema([
        ("run_id", pa.string()), ("study", pa.string()), ("cell", pa.string()), ("family", pa.string()),
        ("model_family", pa.string()), ("budget", pa.int64()), ("n_params_total", pa.int64()),
        ("phase", pa.string()), ("state", pa.string()), ("optuna_trial", pa.int64()), ("seed", pa.int64()),
        ("test_error", pa.float64()), ("best_val", pa.float64()), ("epochs_to_threshold", pa.float64()),
        ("epochs_trained", pa.float64()), ("wall_time_s", pa.float64()),
        ("best_epoch", pa.float64()), ("stopped_early", pa.float64()), ("undertrained", pa.float64()),
        ("baseline_val", pa.float64()), ("lr_edge", pa.string()), ("confirm_of", pa.int64()),
        ("width", pa.int64()), ("depth", pa.int64()), ("rank", pa.int64()), ("branches", pa.int64()),
        ("diag", pa.string()), ("activation", pa.string()),
        *[(f"param_{k}", pa.float64()) for k in HP_PARAMS],
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
