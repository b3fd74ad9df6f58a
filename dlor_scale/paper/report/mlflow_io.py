"""MLflow in and out: a study's spec values and curves read back, a report logged as a run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable

from ...run_schema import Metric
from ...studydir import ARTIFACTS
from .core import Section, _metric_key

def study_meta(tracker) -> dict:
    """The study's spec values as logged on its ``kind=study`` run (metric, threshold, epochs, target…).

    Why from MLflow: a report must work from the tracking server alone (a cluster study
    reported on a laptop), and the launcher logs the whole spec as params of that run.
    JSON-encoded values (target, families…) are decoded; numbers become numbers.
    """
    run = tracker.find_run(tracker.experiment_name)
    if run is None:
        return {}
    return {k: _decode(v) for k, v in run.data.params.items()}



def _decode(v: str):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return {"None": None, "True": True, "False": False}.get(v, v)



def _history(tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    """A member's logged curve ``key`` as sorted (step, value) pairs."""
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


def add_checkpoint_errors(df, tracker, epochs: Iterable[int], report_every: int | None,
                          key: str = Metric.VAL_ERROR):
    """Add ``val_error_at_<E>`` columns: each member's validation error after E epochs.

    Why: the paper reports the error after 5,000 *and* 50,000 epochs (Fig. 4a/b); one
    50,000-epoch run holds both, in its logged validation curve.  The curve's step may be
    the epoch or the report index (one report every ``report_every`` epochs); a curve
    whose last step is far below the epochs trained is read as report indices.  The
    value taken is the last report at or before E (NaN if the member stopped earlier).
    """
    epochs = [int(e) for e in epochs]
    cols = {e: [] for e in epochs}
    for _, row in df.iterrows():
        hist = _history(tracker, row["run_id"], key)
        scale = _step_scale(hist, row.get(Metric.EPOCHS_TRAINED), report_every)
        for e in epochs:
            before = [v for s, v in hist if s * scale <= e]
            reached = hist and hist[-1][0] * scale >= e
            cols[e].append(float(before[-1]) if before and reached else math.nan)
    out = df.copy()
    for e, vals in cols.items():
        out[f"val_error_at_{e}"] = vals
    return out



def add_final_train_loss(df, tracker, key: str = Metric.TRAIN_LOSS):
    """Add ``train_loss_final``: the last logged training loss of each member.

    Why: Fig. 6 is about generalisation, which is the gap between this and the test
    error; the member table only carries the test and validation errors.
    """
    out = df.copy()
    vals = []
    for run_id in out["run_id"]:
        hist = _history(tracker, run_id, key)
        vals.append(float(hist[-1][1]) if hist else math.nan)
    out["train_loss_final"] = vals
    return out



def _step_scale(hist, epochs_trained, report_every) -> int:
    """Epochs per curve step: 1 if steps are epochs, report_every if they are report indices."""
    if not hist or not report_every or report_every <= 1:
        return 1
    last = hist[-1][0]
    try:
        trained_epochs = float(epochs_trained)
    except (TypeError, ValueError):
        return 1
    if not math.isfinite(trained_epochs):
        return 1
    return report_every if last * report_every <= trained_epochs * 1.01 and last < trained_epochs / 2 else 1



def log_report(tracking_uri: str, experiment: str, name: str, md_path: Path, sections: list[Section]) -> str:
    """Log the summary and figures as a new MLflow run tagged ``kind=report``; returns its id.

    A new run per call (keyed by time): a report is a snapshot of a study that may still
    grow, and MLflow params are immutable, so re-logging into one run could not update it.
    """
    from ...tracking import Tracker

    _ensure_experiment(tracking_uri, experiment)
    tracker = Tracker(tracking_uri, experiment)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
    run_id = tracker.get_or_create_run(f"report/{name}/{stamp}", name=f"report {name}", kind="report",
                                       tags={"report.target": name})
    metrics = [(k, v, 0) for s in sections for k, v in s.metrics.items()]
    tags = {_metric_key("verdict", s.key): s.verdict.label for s in sections if s.verdict is not None}
    tracker.log_batch(run_id, metrics=metrics, tags=tags)
    tracker.client.log_artifact(run_id, str(md_path), artifact_path="report")
    for s in sections:
        for fig in s.figures:
            tracker.client.log_artifact(run_id, str(fig), artifact_path="report")
    tracker.finish(run_id)
    return run_id



def _ensure_experiment(uri: str, experiment: str) -> None:
    """For a SQLite store, create the experiment with its artifacts next to the database.

    Why: MLflow's default artifact root is ``./mlruns`` relative to the *current*
    directory, so analytic reports made from different folders would scatter their files.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(experiment) is None:
        try:
            client.create_experiment(experiment, artifact_location=(db.parent.resolve() / ARTIFACTS).as_uri())
        except Exception:  # noqa: BLE001 - a concurrent report created it first
            if client.get_experiment_by_name(experiment) is None:
                raise

