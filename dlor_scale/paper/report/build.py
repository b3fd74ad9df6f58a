"""`make_report`: one target (analytic experiment or study) → Markdown + PNGs, logged to MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...studydir import MLFLOW_DB
from .analytic import ANALYTIC_BUILDERS
from .markdown import render
from .mlflow_io import add_checkpoint_errors, add_final_train_loss, log_report, study_meta
from .stats import member_frame
from .studies import study_kind, study_sections

#: Analytic experiments `make_report` knows by name (no training, no study needed).
ANALYTIC = ("reconstruction", "construction", "rank1")

#: MLflow experiment and default store of the analytic reports.
ANALYTIC_EXPERIMENT = "paper-analytic"

ANALYTIC_URI = f"sqlite:///runs/paper/{MLFLOW_DB}"



def make_report(target: str, out_dir: Path, tracking_uri: str | None = None, *, log: bool = True) -> Path:
    """Build the report of an analytic experiment or a trained study; returns the Markdown path.

    ``target``: ``reconstruction`` | ``construction`` | ``rank1`` (analytic, logged to the
    ``paper-analytic`` experiment of ``tracking_uri`` or ``sqlite:///runs/paper/mlflow.db``),
    or a study name / folder / YAML (read from its tracker, logged to its experiment).
    Writes ``<out_dir>/<name>.md`` and ``<out_dir>/<name>_*.png`` (analytic: named figures).
    ``log=False`` skips MLflow (tests, dry looks).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if target in ANALYTIC:
        sections = [ANALYTIC_BUILDERS[target](out_dir)]
        name, uri, experiment = target, tracking_uri or ANALYTIC_URI, ANALYTIC_EXPERIMENT
        preamble = f"Analytic experiment (no training), `dlor-scale report {target}`; float64, deterministic."
    else:
        from ... import records

        tracker = records.study_tracker(target, tracking_uri)
        name, uri, experiment = tracker.experiment_name, tracker.uri, tracker.experiment_name
        df = member_frame(records.member_runs(tracker))
        meta = study_meta(tracker)
        kind = study_kind(name)
        epochs = meta.get("epochs")
        if kind in ("fixed_budget", None) and isinstance(epochs, int) and epochs >= 1000 and len(df):
            df = add_checkpoint_errors(df, tracker, [epochs // 10], meta.get("report_every"))
        if kind in ("generalization", None) and len(df):
            df = add_final_train_loss(df, tracker)
        sections = study_sections(df, out_dir, meta, name, kind)
        preamble = (f"Study `{name}` ({len(df)} member runs, tracking `{uri}`), `dlor-scale report {target}`. "
                    f"Target: `{json.dumps(meta.get('target'))}`; metric {meta.get('metric')}; "
                    f"{meta.get('epochs')} epochs.")
    md_path = out_dir / f"{name}.md"
    md_path.write_text(render(f"Reproduction report: {name}", sections, out_dir, preamble), encoding="utf-8")
    if log:
        log_report(uri, experiment, name, md_path, sections)
    return md_path



def main(argv: list[str] | None = None) -> int:
    """``python -m dlor_scale.paper.report TARGET [--out DIR] [--tracking-uri URI] [--no-log]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dlor_scale.paper.report", description=main.__doc__)
    ap.add_argument("target")
    ap.add_argument("--out", type=Path, default=None, help="folder (default runs/paper/reports)")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    a = ap.parse_args(argv)
    from ...errors import DlorError

    try:
        path = make_report(a.target, a.out or Path("runs/paper/reports"), a.tracking_uri, log=not a.no_log)
    except DlorError as e:  # user errors are one line, like the CLI's
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    print(path)
    return 0

