"""The README quickstart, end to end, exactly as a user runs it.

One module-scoped launch of ``dlor-scale launch studies/quickstart.yaml --no-progress``
(a subprocess, cwd = repository root, output under a tmp ``DLOR_OUTPUT_DIR``), then every
documented way of reading the results back: the Python API, ``dlor-scale curves`` in each
format, ``export``, ``status``, the recorded ``kind=fit`` run, ``fit`` again, and a
relaunch of the finished study.

The launch's wall time and the load average go to ``benchmarks/results/quickstart_time.txt``
(printed, never asserted: timing depends on the machine and on what else runs on it).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPEC = "studies/quickstart.yaml"
FAMILIES = set(yaml.safe_load((REPO / SPEC).read_text())["families"])
FIT_ARTIFACTS = {"points.parquet", "curves.json", "comparisons.json", "scaling.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Columns the member export documents (dlor_scale/records.py module docstring).
EXPORT_COLUMNS = [
    "run_id", "study", "cell", "family", "model_family", "budget", "n_params_total", "phase",
    "state", "optuna_trial", "seed", "test_error", "best_val", "epochs_to_threshold",
    "epochs_trained", "wall_time_s", "confirm_of", "width", "depth", "rank", "branches", "diag",
    "activation",
]
LAUNCH_TIMEOUT_S = 3 * 3600  # a hang guard only; never a performance assertion
TIME_FILE = REPO / "benchmarks" / "results" / "quickstart_time.txt"


def dlor_cli() -> list[str]:
    """The installed console script of the interpreter running the tests (what a user types)."""
    script = Path(sys.executable).parent / "dlor-scale"
    if not script.exists():
        pytest.fail(f"{script} not found: install the package (pip install -e '.[test]')")
    return [str(script)]


def user_env(output_dir: Path) -> dict:
    env = dict(os.environ)
    env["DLOR_OUTPUT_DIR"] = str(output_dir)
    # Overrides a developer may have exported would send the study elsewhere.
    for k in ("MLFLOW_TRACKING_URI", "DLOR_OPTUNA_STORAGE", "RAY_ADDRESS"):
        env.pop(k, None)
    return env


def run_cli(args: list[str], env: dict, *, timeout: float = 1800) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run(dlor_cli() + args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    print(f"\n$ dlor-scale {' '.join(args)}  → rc={proc.returncode} in {time.monotonic() - t0:.1f}s")
    return proc


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def same_table(a, b) -> bool:
    """Arrow tables equal in schema and values, NaN equal to NaN (``Table.equals`` says
    NaN != NaN, and NaN is a documented value, e.g. ``epochs_to_threshold`` when never)."""
    def canon(v):
        return "NaN" if isinstance(v, float) and math.isnan(v) else v
    if not a.schema.equals(b.schema) or a.num_rows != b.num_rows:
        return False
    return all([canon(v) for v in a.column(n).to_pylist()] == [canon(v) for v in b.column(n).to_pylist()]
               for n in a.column_names)


def member_runs_in_mlflow(qs) -> list:
    client = qs.client
    out, token = [], None
    while True:
        page = client.search_runs([qs.exp_id], filter_string="tags.kind = 'member'",
                                  max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def all_runs_in_mlflow(qs) -> list:
    out, token = [], None
    while True:
        page = qs.client.search_runs([qs.exp_id], max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def fit_runs(qs) -> list:
    return qs.client.search_runs([qs.exp_id], filter_string="tags.kind = 'fit'", max_results=100)


@pytest.fixture(scope="module")
def qs(tmp_path_factory):
    """Run the README's main job once; everything below reads its results."""
    out_dir = tmp_path_factory.mktemp("quickstart_out")
    env = user_env(out_dir)
    load_before = os.getloadavg()
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    cmd = dlor_cli() + ["launch", SPEC, "--no-progress"]
    popen = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    load_1min = []  # sampled while it runs: how busy the machine was
    while True:
        try:
            stdout, stderr = popen.communicate(timeout=10)
            break
        except subprocess.TimeoutExpired:
            load_1min.append(os.getloadavg()[0])
            if time.monotonic() - t0 > LAUNCH_TIMEOUT_S:
                popen.kill()
                stdout, stderr = popen.communicate()
                break
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    wall = time.monotonic() - t0
    load_after = os.getloadavg()
    lines = [
        f"command: dlor-scale launch {SPEC} --no-progress  (tests/test_quickstart.py)",
        f"started_utc: {started.isoformat(timespec='seconds')}",
        f"wall_time_s: {wall:.1f}",
        f"exit_code: {proc.returncode}",
        f"cpus: {os.cpu_count()}",
        "loadavg_1_5_15_before: " + " ".join(f"{x:.2f}" for x in load_before),
        "loadavg_1_5_15_after: " + " ".join(f"{x:.2f}" for x in load_after),
        (f"loadavg_1min_during: mean {sum(load_1min) / len(load_1min):.2f}, max {max(load_1min):.2f} "
         f"({len(load_1min)} samples, every 10 s)") if load_1min else "loadavg_1min_during: n/a",
    ]
    TIME_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIME_FILE.write_text("\n".join(lines) + "\n")
    print("\nquickstart launch:\n  " + "\n  ".join(lines))
    assert proc.returncode == 0, explain(proc)

    from mlflow.tracking import MlflowClient

    study_dir = out_dir / "quickstart"
    info = json.loads((study_dir / "study.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{study_dir / 'mlflow.db'}"
    client = MlflowClient(info["tracking_uri"])
    exp = client.get_experiment_by_name("quickstart")
    assert exp is not None, "no MLflow experiment 'quickstart'"
    return SimpleNamespace(out_dir=out_dir, study_dir=study_dir, env=env, proc=proc, wall=wall,
                           info=info, client=client, exp_id=exp.experiment_id)


@pytest.fixture(scope="module")
def plan():
    from dlor_scale.plan import make_plan
    from dlor_scale.spec import load_study
    return make_plan(load_study(REPO / SPEC))


@pytest.fixture(scope="module")
def curves(qs):
    import dlor_scale
    return dlor_scale.curves(str(qs.study_dir))


# ------------------------------------------------------------------------------- launch

def test_launch_reports_done_and_how_to_browse(qs):
    # Not a terminal, so rich wraps the summary at 80 columns (the `browse:` command is
    # split over two lines for any real path): compare with whitespace collapsed/removed.
    out = " ".join(qs.proc.stdout.split())
    assert "done study 'quickstart'" in out, explain(qs.proc)
    assert "0 failed" in out, explain(qs.proc)
    assert "scaling fits recorded" in out, explain(qs.proc)
    assert f"mlflowui--backend-store-uri{qs.info['tracking_uri']}" in re.sub(r"\s+", "", out), \
        explain(qs.proc)
    for f in ("mlflow.db", "optuna.journal", "study.json"):
        assert (qs.study_dir / f).exists(), f


def test_every_member_recorded_once(qs, plan):
    from dlor_scale.spec import load_study
    study = load_study(REPO / SPEC)
    members = member_runs_in_mlflow(qs)
    keys = [r.data.tags["dlor.key"] for r in members]
    assert len(keys) == len(set(keys)), "duplicate member runs"
    n_search = sum(r.data.tags.get("dlor.phase") == "search" for r in members)
    n_confirm = sum(r.data.tags.get("dlor.phase") == "confirm" for r in members)
    assert n_search == len(plan.cells) * study.trials_per_cell
    assert n_confirm == len(plan.cells) * study.confirm.top_k * study.confirm.seeds


# ------------------------------------------------------------------------------ python API

def test_curves_api_has_every_family(curves):
    assert set(curves.families) == FAMILIES
    for fam in FAMILIES:
        c = curves[fam]
        if math.isfinite(c.alpha):
            lo, hi = c.ci()["alpha"]
            assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi, (fam, lo, hi)
            pred = c.predict([5000.0])
            assert pred.shape == (1,) and math.isfinite(pred[0]) and pred[0] > 0, (fam, pred)
            assert isinstance(c.extrapolation, dict) and "ok" in c.extrapolation, c.extrapolation
            # an error below the fitted floor E is unreachable (documented: None)
            if c.E > 0:
                assert c.params_for(0.5 * c.E) is None, (fam, c.E)
            if "alpha" in c.fit.at_bounds:
                # exponent not identified by the points: the package must say so
                assert any("alpha" in f for f in c.flags), (fam, c.flags)
            else:
                # params_for inverts predict inside the fitted range
                p0 = math.sqrt(c.fit.P_min * c.fit.P_max)
                p = c.params_for(float(c.predict([p0])[0]))
                assert p is not None and p == pytest.approx(p0, rel=1e-3), (fam, p0, p)
        else:
            assert c.flags, f"{fam}: NaN alpha without a flag saying why"
    df = curves.to_pandas()
    assert sorted(df["family"]) == sorted(FAMILIES)
    t = curves.to_arrow()
    assert t.num_rows == len(FAMILIES)
    assert sorted(t.column("family").to_pylist()) == sorted(FAMILIES)


def test_headline_families_fit_only_clean_cells_and_say_so(curves):
    """Deep and wide: every budget is either in the fit or listed as excluded with the
    diagnostics that kept it out; a NaN α comes with the reason."""
    for fam in ("dlor_deep", "dlor_wide"):
        c = curves[fam]
        pts = c.points.to_pylist()
        flagged = {p["budget"] for p in pts if p.get("flags")}
        assert {e["budget"] for e in c.excluded} == flagged, (fam, c.excluded, pts)
        if flagged:
            assert any("excluded" in f for f in c.flags), (fam, c.flags)
        if not math.isfinite(c.alpha):
            assert any("fit failed" in f for f in c.flags), (fam, c.flags)


def test_compare_deep_vs_wide(curves):
    """Δα with its CI when both exponents are identified; otherwise an explicit
    'not identified' and no CI (a Δα whose CI is the bound box is not a result)."""
    cmp = curves.compare("dlor_deep", "dlor_wide")
    both = curves["dlor_deep"].fit.alpha_identified and curves["dlor_wide"].fit.alpha_identified
    assert cmp["identified"] == both, cmp
    if both:
        lo, hi = cmp["delta_alpha_ci"]
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= cmp["delta_alpha"] <= hi, cmp
        assert 0.0 <= cmp["p_a_steeper"] <= 1.0
    else:
        assert cmp["verdict"] == "not identified" and not cmp.get("delta_alpha_ci"), cmp


def test_quickstart_answers_its_question(qs, curves):
    """The science issue's bar for the README study: every cell trained to capacity (no
    flagged point), every family's exponent identified (95 % CI strictly inside the fit's
    bounds) and a deep-vs-wide Δα with its CI; the search pruned and refilled.
    (The ≤ 30 % half-width goal is reported in README.md, met or not, not asserted.)"""
    for fam in FAMILIES:
        c = curves[fam]
        pts = c.points.to_pylist()
        assert not [p for p in pts if p.get("flags")], (fam, pts)
        assert c.fit.alpha_identified and not c.fit.at_bounds, (fam, c.flags)
        lo, hi = c.ci()["alpha"]
        assert 0.0 < lo <= c.alpha <= hi, (fam, lo, c.alpha, hi)
    cmp = curves.compare("dlor_deep", "dlor_wide")
    assert cmp["identified"] and cmp["delta_alpha_ci"], cmp
    out = " ".join(qs.proc.stdout.split())
    m = re.search(r"(\d+) completed, (\d+) pruned, .*?\((\d+) slots refilled\)", out)
    assert m, explain(qs.proc)
    assert int(m.group(2)) > 0 and int(m.group(3)) > 0, m.group(0)


# ------------------------------------------------------------------------------ CLI curves

def test_cli_curves_table(qs):
    proc = run_cli(["curves", str(qs.study_dir)], qs.env)
    assert proc.returncode == 0, explain(proc)
    for fam in FAMILIES:
        assert fam in proc.stdout, f"{fam} missing from the table:\n{proc.stdout}"
    assert "dlor_deep vs dlor_wide" in proc.stdout or "dlor_wide vs dlor_deep" in proc.stdout, proc.stdout


def test_cli_curves_json(qs):
    proc = run_cli(["curves", str(qs.study_dir), "--format", "json", "--predict", "5000"], qs.env)
    assert proc.returncode == 0, explain(proc)
    doc = json.loads(proc.stdout)  # stdout must be pure JSON (pipeable to jq)
    assert set(doc["families"]) == FAMILIES
    assert doc["study"] == "quickstart"
    pair = doc["comparisons"].get("dlor_deep vs dlor_wide") or doc["comparisons"]["dlor_wide vs dlor_deep"]
    if pair["identified"]:
        assert pair["delta_alpha"] is not None and len(pair["delta_alpha_ci"]) == 2, pair
    else:  # no CI for a Δα that is not identified: a bound-box interval is not a result
        assert pair["verdict"] == "not identified" and not pair.get("delta_alpha_ci"), pair
    assert set(doc["predictions"]) == FAMILIES
    assert doc["predictions"]["dlor_deep"]["5000.0"]["error"] > 0


def test_cli_curves_parquet_round_trips(qs, tmp_path, curves):
    import pyarrow.parquet as pq

    out = tmp_path / "curves.parquet"
    proc = run_cli(["curves", str(qs.study_dir), "--format", "parquet", "-o", str(out)], qs.env)
    assert proc.returncode == 0, explain(proc)
    t = pq.read_table(out)
    assert t.num_rows == len(FAMILIES)
    assert sorted(t.column("family").to_pylist()) == sorted(FAMILIES)
    again = tmp_path / "again.parquet"
    pq.write_table(t, again)
    assert same_table(pq.read_table(again), t)
    # same fits as the Python API (same data, same bootstrap seed)
    api = {r["family"]: r for r in curves.to_arrow().to_pylist()}
    for r in t.to_pylist():
        a, b = r["alpha"], api[r["family"]]["alpha"]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9), r["family"]


def test_cli_curves_parquet_needs_output(qs):
    proc = run_cli(["curves", str(qs.study_dir), "--format", "parquet"], qs.env)
    assert proc.returncode != 0 and "--output" in proc.stderr, explain(proc)


# ------------------------------------------------------------------------------ export

def test_cli_export(qs, tmp_path):
    import pyarrow.parquet as pq

    from dlor_scale.records import member_runs
    from dlor_scale.tracking import Tracker

    out = tmp_path / "members.parquet"
    proc = run_cli(["export", str(qs.study_dir), str(out)], qs.env)
    assert proc.returncode == 0, explain(proc)
    t = pq.read_table(out)
    members = member_runs_in_mlflow(qs)
    assert t.num_rows == len(members), (t.num_rows, len(members))
    assert f"wrote {len(members)} member runs" in proc.stdout, proc.stdout
    assert sorted(t.column("run_id").to_pylist()) == sorted(r.info.run_id for r in members)
    missing = [c for c in EXPORT_COLUMNS if c not in t.column_names]
    assert not missing, f"documented columns missing: {missing}"
    # param_<name> for every searched / fixed hyperparameter of the spec
    for hp in ("lr", "init_scale", "weight_decay"):
        assert f"param_{hp}" in t.column_names, t.column_names
    assert set(t.column("family").to_pylist()) == FAMILIES
    assert set(t.column("phase").to_pylist()) == {"search", "confirm"}
    # round trip: what was written is the table the package builds from MLflow
    expected = member_runs(Tracker(qs.info["tracking_uri"], "quickstart"))
    assert t.schema.equals(expected.schema), (t.schema, expected.schema)
    assert same_table(t.sort_by("run_id"), expected.sort_by("run_id"))
    again = tmp_path / "again.parquet"
    pq.write_table(t, again)
    assert same_table(pq.read_table(again), t)


# ------------------------------------------------------------------------------ status

def test_cli_status_lists_every_cell(qs, plan):
    proc = run_cli(["status", str(qs.study_dir)], qs.env)
    assert proc.returncode == 0, explain(proc)
    missing = [c.key for c in plan.cells if c.key not in proc.stdout]
    assert not missing, f"cells missing from `dlor-scale status`: {missing}\n{proc.stdout}"
    n_done = len(list((qs.study_dir / "units").glob("*.done.json")))
    assert n_done > 0
    assert f"{n_done} cohort units finished" in proc.stdout, proc.stdout


def test_cli_status_by_name_with_output_dir(qs, plan):
    """`dlor-scale status quickstart` (the README form) finds the study via DLOR_OUTPUT_DIR."""
    proc = run_cli(["status", "quickstart"], qs.env)
    assert proc.returncode == 0, explain(proc)
    assert plan.cells[0].key in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------ fit run

def test_fit_run_recorded_with_artifacts(qs):
    runs = fit_runs(qs)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("dlor.complete") == "1"
    study_run = qs.client.search_runs([qs.exp_id], filter_string="tags.kind = 'study'")[0]
    assert run.data.tags.get("mlflow.parentRunId") == study_run.info.run_id
    names = {a.path for a in qs.client.list_artifacts(run.info.run_id)}
    assert FIT_ARTIFACTS <= names, names
    for fam in ("dlor_deep", "dlor_wide"):
        assert math.isfinite(run.data.metrics[f"{fam}.alpha"]), run.data.metrics
        assert f"{fam}.alpha_lo" in run.data.metrics and f"{fam}.alpha_hi" in run.data.metrics
    assert set(run.data.params["families"].split(",")) == FAMILIES
    dl = qs.out_dir / "dl"
    dl.mkdir(exist_ok=True)
    png = Path(qs.client.download_artifacts(run.info.run_id, "scaling.png", str(dl)))
    assert png.read_bytes()[:8] == PNG_MAGIC
    cj = json.loads(Path(qs.client.download_artifacts(run.info.run_id, "curves.json",
                                                      str(dl))).read_text())
    assert set(cj["families"]) == FAMILIES


def test_cli_fit_again_is_idempotent(qs):
    """Refitting unchanged data with the same settings finds the existing fit run."""
    proc = run_cli(["fit", str(qs.study_dir)], qs.env)
    assert proc.returncode == 0, explain(proc)
    assert "dlor_deep" in proc.stdout, proc.stdout
    assert len(fit_runs(qs)) == 1


# ------------------------------------------------------------------------------ relaunch

def test_relaunch_finished_study_adds_nothing(qs):
    members_before = {r.info.run_id for r in member_runs_in_mlflow(qs)}
    runs_before = {r.info.run_id for r in all_runs_in_mlflow(qs)}
    tune_dir = qs.study_dir / "tune"
    tune_before = sorted(p.name for p in tune_dir.iterdir()) if tune_dir.exists() else []
    done_before = {p.name: p.stat().st_mtime_ns for p in (qs.study_dir / "units").glob("*.done.json")}
    t0 = time.monotonic()
    proc = run_cli(["launch", SPEC, "--no-progress"], qs.env)
    print(f"relaunch of the finished study: {time.monotonic() - t0:.1f}s "
          f"(first launch {qs.wall:.1f}s)")
    assert proc.returncode == 0, explain(proc)
    assert "done" in proc.stdout, explain(proc)
    assert {r.info.run_id for r in member_runs_in_mlflow(qs)} == members_before
    assert {r.info.run_id for r in all_runs_in_mlflow(qs)} == runs_before, "relaunch created runs"
    # nothing was trained: no new Tune experiment, no unit re-finished
    tune_after = sorted(p.name for p in tune_dir.iterdir()) if tune_dir.exists() else []
    assert tune_after == tune_before, (tune_before, tune_after)
    done_after = {p.name: p.stat().st_mtime_ns for p in (qs.study_dir / "units").glob("*.done.json")}
    assert done_after == done_before
