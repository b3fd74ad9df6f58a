"""`dlor-scale` command line (typer + rich).

Every user error is a `DlorError`: printed as one clear line (no traceback) with a
non-zero exit code (2 for bad specs/data), and raised before anything is started.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DlorError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Scaling studies of Diagonal-plus-Low-Rank networks (Ray Tune + Optuna + MLflow).")
# Wide when piped (rich would wrap at 80 columns), so commands and URIs stay copy-pasteable.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _fail(e: DlorError):
    # User text (paths, names, labels, keys) is escaped: "[/x]" would crash rich, "[b]" vanish.
    err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
    raise typer.Exit(getattr(e, "exit_code", 1))


def _load(path: Path):
    from .spec import load_study
    return load_study(path)


def _check_data(study, *, teacher: bool = True) -> dict:
    """Load and check the study's data now (Parquet: the whole file, split as workers will):
    a bad file is a DataError, exit 2, before any folder, store or Ray exists.
    ``teacher=False`` leaves a teacher target's calibration (the one check that needs torch)
    to `launch`: `validate` and `launch --dry-run` answer without importing torch."""
    from .targets import check_study_data
    return check_study_data(study, teacher=teacher)


def _data_line(data: dict) -> str | None:
    """One line describing Parquet data and its scale (None for synthetic targets)."""
    if data.get("kind") != "parquet":
        return None
    sc = data["scale"]
    how = ("standardized by the train split's mean/std; y: " + ", ".join(
        f"{t!r} mean {m:.4g} std {sd:.4g}" for t, m, sd in zip(sc["targets"], sc["y_mean"], sc["y_std"]))
        if sc["standardized"] else "not standardized (errors are in the target's units)")
    return (f"data: {data['source']} ({data['n_rows']} rows, sha256 {data['sha256'][:12]}): "
            f"train {data['n_train']} / val {data['n_val']} / test {data['n_test']}, "
            f"{data['d_in']} features → {data['d_out']} target(s); {how}")


def plan_table(plan) -> Table:
    t = Table(title=escape(f"plan: {plan.study.name}"), show_lines=False)
    rows = plan.table()
    cols = ["cell", "width", "depth", "rank", "branches", "diag", "n_params", "rel_err", "trials", "slots"]
    if any(c.parts > 1 for c in plan.cells):   # split cells: trials are shared out over parts
        cols.insert(-1, "parts")
    for c in cols:
        t.add_column(c, justify="left" if c in ("cell", "diag") else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(f"{r[c]:.2%}" if c == "rel_err" else escape(str(r[c])) for c in cols))
    return t


def _is_done_marker(path: Path) -> bool:
    """A unit's done marker counts only when it holds a summary (a JSON object): an empty or
    corrupt one is re-run by the next launch (`studydir.UnitFiles.read_done`). Read-only here:
    `status` never moves files."""
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (OSError, ValueError):
        return False


@app.command()
def validate(file: Path = typer.Argument(..., help="study YAML")):
    """Check a study file; print its plan size."""
    try:
        from .plan import make_plan
        from .spec import check_locations
        study = _load(file)
        check_locations(study)   # where it would land: no system folder, no foreign folder or store
        data = _check_data(study, teacher=False)
        plan = make_plan(study)
    except DlorError as e:
        _fail(e)
    out.print(f"[green]ok[/] {escape(str(file))}: study {escape(repr(study.name))}, {len(plan.cells)} cells, "
              f"{plan.total_trials} cohort units, {plan.total_members} members")
    if _data_line(data):
        out.print(_data_line(data), markup=False, highlight=False)
    _plan_remarks(plan)


def _plan_remarks(plan) -> None:
    """Shape warnings (untrainable cells, changing fixed axes), search warnings (a sampler/
    pruner/slots combination that cannot prune or learn) and designed growth notes."""
    from rich.markup import escape

    from .spec import search_warnings
    for w in (*plan.warnings, *search_warnings(plan.study)):
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    for n in plan.notes:
        out.print(f"note: {escape(n)}", highlight=False)


@app.command()
def schema():
    """Print the study JSON Schema (for editor completion/validation)."""
    from .spec import study_json_schema
    print(json.dumps(study_json_schema(), indent=2))


@app.command()
def launch(
    file: Path = typer.Argument(..., help="study YAML"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: embedded local Ray)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted study (relaunching does the same)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and exit"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress table"),
):
    """Run a study (search → confirmation → scaling fits), or continue it."""
    try:
        from .plan import make_plan
        from .spec import check_locations
        study = _load(file)
        check_locations(study)   # before anything is read, created or started
        data = _check_data(study, teacher=not dry_run)
        plan = make_plan(study)
        if dry_run:
            out.print(plan_table(plan))
            if _data_line(data):
                out.print(_data_line(data), markup=False, highlight=False)
            _plan_remarks(plan)
            out.print(f"{len(plan.cells)} cells, {plan.total_trials} cohort units, {plan.total_members} members; "
                      f"resources per unit: cpu={study.resources.cpu} gpu={study.resources.gpu}")
            out.print(f"tracking: {study.resolved_tracking_uri()}\noptuna:   {study.resolved_optuna_storage()}",
                      markup=False, highlight=False)
            return
        from .studydir import StudyDir
        marker = StudyDir(study.study_dir()).marker
        if resume and not marker.exists():
            raise DlorError(f"--resume: no study {study.name!r} in {study.study_dir()} to resume")
        from .progress import Progress
        from .tune import launch as run
        progress = None if no_progress else Progress(live=sys.stderr.isatty())
        result = run(study, str(file), address=address, progress=progress)
    except DlorError as e:
        _fail(e)
    c = result.counts
    out.print(f"[green]done[/] study {escape(repr(study.name))} → {escape(str(result.study_dir))}: "
              + ", ".join(f"{c.get(k, 0)} {k}" for k in ("completed", "pruned", "diverged", "failed"))
              + f" ({c.get('refilled', 0)} slots refilled)")
    if result.fit is not None:
        out.print(result.fit if isinstance(result.fit, str) else "scaling fits recorded (kind=fit run)", markup=False)
    from .tracking import ui_url
    uri, exp = result.tracking_uri, getattr(result, "experiment_id", None)
    if uri.startswith(("http://", "https://")):
        line = f"browse: {ui_url(uri, exp)}" if exp else f"browse: {uri}"
    else:   # the runs table ("Model training"), not MLflow 3's GenAI traces page
        line = f"browse: mlflow ui --backend-store-uri {uri}" + (
            f"  → {ui_url('http://127.0.0.1:5000', exp)}" if exp else "")
    out.print(line, markup=False, highlight=False)


def _study_info(study: str) -> dict:
    """Find a study by spec file, study folder, or name under the output dir."""
    from .studydir import marker_candidates
    candidates = marker_candidates(study)
    for c in candidates:
        if c.exists():
            info = json.loads(c.read_text())
            info["study_dir"] = str(c.parent)
            return info
    raise DlorError(f"no study {study!r} found (tried: {', '.join(str(c) for c in candidates)})")


@app.command()
def status(study: str = typer.Argument(..., help="study name, folder, or spec file")):
    """Per-cell search progress (asked, running, completed, pruned and at which epochs,
    refilled, failed; from the cell's Optuna study) and finished / live units."""
    try:
        import optuna
        from optuna.trial import TrialState

        from .search import cell_counts, format_pruned_at
        from .storages import storage
        from .studydir import StudyDir
        info = _study_info(study)
        ost = storage(info["optuna_storage"])
        t = Table(title=escape(f"study {info['name']}"))
        for c in ("cell", "asked", "running", "completed", "pruned", "pruned at (n@epoch)", "refilled",
                  "failed", "best val"):
            t.add_column(c, justify="left" if c in ("cell", "pruned at (n@epoch)") else "right")
        for s in optuna.get_all_study_summaries(ost):
            if not s.study_name.startswith(info["name"] + "/"):
                continue
            trials = optuna.load_study(study_name=s.study_name, storage=ost).get_trials(deepcopy=False)
            c = cell_counts(trials)
            best = min((tr.value for tr in trials if tr.state == TrialState.COMPLETE and tr.value is not None),
                       default=None)
            t.add_row(escape(s.study_name.split("/", 1)[1]), *(str(c[k]) for k in ("asked", "running", "completed", "pruned")),
                      format_pruned_at(c["pruned_at"]), str(c["refilled"]), str(c["failed"]),
                      "—" if best is None else f"{best:.4g}")
        out.print(t)
        folder = StudyDir(info["study_dir"])
        done = sum(_is_done_marker(p) for p in folder.done_markers())
        out.print(f"{done} cohort units finished; tracking: {info['tracking_uri']}", markup=False)
        import time
        for hb in folder.heartbeats():
            try:
                beat = json.loads(hb.read_text())
            except (OSError, ValueError):
                continue
            age = time.time() - beat["ts"]
            state = "[red]dead?[/]" if age > 30 else "[green]running[/]"
            out.print(f"unit {escape(str(beat['unit']))} on node {escape(str(beat['node'])[:12])}: {state} "
                      f"(heartbeat {age:.0f}s ago)")
    except DlorError as e:
        _fail(e)


@app.command()
def fit(
    study: str = typer.Argument(..., help="study name, folder, or spec file"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the study's)"),
    form: Optional[str] = typer.Option(None, help="saturating | power | broken (default: the spec's fit_form)"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples"),
    seed: int = typer.Option(0, help="bootstrap seed"),
):
    """(Re)fit the study's scaling laws and record them as an MLflow fit run."""
    try:
        from .analysis import fit_and_record, study_fit_form
        from .records import study_tracker
        tracker = study_tracker(study, tracking_uri)
        c = fit_and_record(tracker.experiment_name, tracker, form=form or study_fit_form(study),
                           n_boot=n_boot, seed=seed)
        from .tracking import describe_fit_runs
        describe_fit_runs(tracker)   # an unidentified exponent says so in the fit run
    except DlorError as e:
        _fail(e)
    out.print(_curves_table(c))


def _curves_table(c) -> Table:
    from rich.markup import escape  # "[0, 5]" in a cell would otherwise be read as markup

    t = Table(title=escape(f"scaling laws: {c.study} ({c.form})"))
    for col in ("family", "points", "alpha [95% CI]", "E", "A", "extrapolation", "excluded", "flags"):
        t.add_column(col)
    for _, r in c.to_pandas().iterrows():
        alpha = "—" if r["alpha"] != r["alpha"] else escape(
            f"{r['alpha']:.3f} [{r['alpha_lo']:.3f}, {r['alpha_hi']:.3f}]")
        if r["alpha"] == r["alpha"] and not r.get("alpha_identified", True):
            alpha += " NOT IDENTIFIED"  # CI on the fit's bounds: the number is not evidence
        ex = r["extrapolation_ok"]
        ex = "n/a" if ex is None or ex != ex else ("ok" if ex else "FAILED")
        t.add_row(escape(str(r["family"])), str(r["n_points"]), alpha, f"{r['E']:.3g}", f"{r['A']:.3g}", ex,
                  escape(", ".join(r.get("excluded_reasons", [])) or "—"), escape("; ".join(r["flags"])))
    return t


def _comparison_line(name: str, cmp: dict) -> str:
    """One family pair: Δα with its CI and verdict, or why there is none."""
    if "delta_alpha" not in cmp:
        return f"{name}: no comparison ({cmp.get('error', 'no fit')})"
    if not cmp.get("identified", True) or not cmp.get("delta_alpha_ci"):
        return f"{name}: Δα not identified ({cmp.get('why') or 'no bootstrap CI'})"
    lo, hi = cmp["delta_alpha_ci"]
    x = cmp.get("crossover")
    return (f"{name}: Δα = {cmp['delta_alpha']:.3f} [{lo:.3f}, {hi:.3f}] → {cmp.get('verdict')}, "
            f"P(first steeper) = {cmp['p_a_steeper']:.2f}, crossover = {'none' if x is None else f'{x:.4g}'}")


@app.command()
def curves(
    study: str = typer.Argument(..., help="study name, folder, or spec file"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the study's)"),
    format: str = typer.Option("table", "--format", help="table | json | parquet"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="file for --format parquet/json"),
    predict: list[float] = typer.Option([], "--predict", help="predict the error at P parameters (repeatable)"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples"),
    form: Optional[str] = typer.Option(None, "--form", help="saturating | power | broken (default: the spec's fit_form)"),
    units: str = typer.Option("standardized", "--units",
                              help="standardized (default: what was trained and fitted) | target (the "
                                   "target's own units, e.g. a Parquet column's; see docs/parquet.md)"),
    refit: bool = typer.Option(False, "--refit", help="refit now instead of reading the study's recorded "
                                                      "fit run (which is used only when it matches)"),
):
    """Fitted scaling curves of a study (and comparisons of every family pair).

    Reads the study's recorded fit run when it was fitted from exactly the current points
    with this form, bootstrap size and method; otherwise (or with --refit, or --predict,
    which needs the bootstrap) fits afresh."""
    try:
        from .analysis import comparisons, load_curves
        from .units import with_units_metadata
        c = load_curves(study, tracking_uri, n_boot=n_boot, units=units, form=form,
                        recorded=not refit and not predict)
        if format == "json":
            doc = {**c.to_json(), "units": c.units, "comparisons": comparisons(c)}
            if predict:
                doc["predictions"] = {f.family: {str(p): _pred(f, p) for p in predict} for f in c}
            text = json.dumps(doc, indent=1, default=str)
            output.write_text(text) if output else print(text)
        elif format == "parquet":
            import pyarrow.parquet as pq
            if output is None:
                raise DlorError("--format parquet needs --output FILE")
            pq.write_table(with_units_metadata(c.to_arrow(), c.units), output)
            out.print(f"wrote {output}", markup=False)
        elif format == "table":
            out.print(_curves_table(c))
            if _units_line(c.units):
                out.print(_units_line(c.units), markup=False, highlight=False)
            for name, cmp in comparisons(c).items():
                out.print(_comparison_line(name, cmp), markup=False, highlight=False)
            for p in predict:
                for f in c:
                    pr = _pred(f, p)
                    out.print(f"{f.family} at P={p:g}: {pr['error']:.4g} [{pr['lo']:.4g}, {pr['hi']:.4g}]",
                              markup=False)
        else:
            raise DlorError(f"--format: unknown {format!r}; allowed: table, json, parquet")
    except DlorError as e:
        _fail(e)


def _units_line(info: dict) -> str | None:
    """Which units E, A and the errors are in (α has none); None if the study recorded no scale."""
    sc = info.get("scale")
    if sc is None:
        return None
    if not sc.get("standardized"):
        return "errors in the target's own units (the target was not standardized)"
    if info["units"] == "target":
        return (f"errors ({info['metric']}) in the target's units: standardized × {info['factor']:.6g} "
                f"(y std of {sc['targets']})")
    return (f"errors ({info['metric']}) in standardized units (× y std {sc['y_std']} of {sc['targets']}); "
            "--units target for the target's units")


def _pred(f, p: float) -> dict:
    import numpy as np
    if f.fit is None:
        return {"error": float("nan"), "lo": float("nan"), "hi": float("nan")}
    lo, hi = f.predict_interval(np.array([p]))
    return {"error": float(f.predict(np.array([p]))[0]), "lo": float(lo[0]), "hi": float(hi[0])}


@app.command()
def export(
    study: str = typer.Argument(..., help="study name, folder, or spec file"),
    out_file: Path = typer.Argument(..., help="output .parquet"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the study's)"),
    units: str = typer.Option("standardized", "--units",
                              help="standardized (default: what was trained and fitted) | target (the "
                                   "target's own units, e.g. a Parquet column's; see docs/parquet.md)"),
):
    """Every member run as one Arrow/Parquet table (params, final metrics, state)."""
    try:
        from .analysis import export_runs
        table = export_runs(study, out_file, tracking_uri, units=units)
    except DlorError as e:
        _fail(e)
    out.print(f"wrote {table.num_rows} member runs to {out_file} (errors in {units} units)", markup=False)


@app.command()
def report(
    target: str = typer.Argument(..., help="reconstruction | construction | rank1, or a trained study "
                                           "(name, folder or spec file)"),
    out_dir: Path = typer.Option(Path("docs/figures"), "--out", help="folder for the PNG figures and Markdown"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the study's)"),
    log: bool = typer.Option(True, "--log/--no-log", help="also log the report to MLflow (kind=report)"),
):
    """Paper-reproduction report: figures (PNG) and a Markdown summary, also logged to MLflow."""
    try:
        from .paper.report import make_report
        path = make_report(target, out_dir, tracking_uri, log=log)
    except DlorError as e:
        _fail(e)
    out.print(f"wrote {path}", markup=False)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
