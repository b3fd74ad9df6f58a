"""Light commands (issue 13 item 4): checking a spec must not import torch or Ray.

`validate`, `schema` and `launch --dry-run` read YAML, solve budgets and check data; the
shape vocabulary they need lives in the torch-free `dlor_scale.shapes`, target schemas
import torch only where data is made, and the CLI imports heavy stacks inside the commands
that use them. Each check runs in a fresh interpreter (this test process has torch loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray")

# Runs the CLI in-process, then reports which heavy top-level packages got imported.
_CLI_PROBE = """
import json, sys
sys.argv = ["dlor-scale", *sys.argv[1:]]
from dlor_scale.cli import app
try:
    app()
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
print("PROBE " + json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONSTARTUP", None)
    return env


def _run_fresh(code: str) -> None:
    """Run `code` in a fresh interpreter (this test process has torch and MLflow loaded)."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def _probe(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _CLI_PROBE, *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    assert lines, f"probe did not finish (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return {**json.loads(lines[-1][len("PROBE "):]), "stdout": r.stdout, "stderr": r.stderr}


def test_spec_plan_budget_targets_import_neither_torch_nor_ray():
    code = ("import sys\n"
            "import dlor_scale, dlor_scale.spec, dlor_scale.plan, dlor_scale.budget, dlor_scale.targets\n"
            "import dlor_scale.shapes, dlor_scale.cli, dlor_scale.scaling, dlor_scale.fit\n"
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "assert not bad, bad\n")
    _run_fresh(code)


def test_models_reexports_the_shape_vocabulary():
    from dlor_scale import models, shapes
    for name in ("FAMILIES", "ACTIVATIONS", "IO_KINDS", "Layer", "Counts", "Shape",
                 "count_params", "parse_diag", "diag_count"):
        assert getattr(models, name) is getattr(shapes, name), name
    # The torch activation table and the torch-free name list stay in sync.
    for a in shapes.ACTIVATIONS:
        models.activation_fn(a)
    with pytest.raises(ValueError, match="unknown activation"):
        shapes.Shape("dense", 2, 1, 4, 1, activation="swish")


def test_schema_imports_neither_torch_nor_ray():
    r = _probe("schema")
    assert r["code"] == 0, r["stderr"][-4000:]
    assert r["heavy"] == []
    assert '"title"' in r["stdout"]


def test_validate_quickstart_imports_neither_torch_nor_ray():
    r = _probe("validate", "studies/quickstart.yaml")
    assert r["code"] == 0, r["stderr"][-4000:]
    assert "ok studies/quickstart.yaml" in r["stdout"]
    assert r["heavy"] == []


def test_validate_parquet_spec_checks_data_without_torch(tmp_path):
    """Parquet data is read and checked with numpy/pyarrow only, and a bad file is still
    refused (exit 2) by `validate`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200)
    pq.write_table(pa.table({"a": a, "b": b, "y": np.sin(3 * a) * b}), tmp_path / "d.parquet")
    spec = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    spec["target"] = {"kind": "parquet", "path": "d.parquet", "features": ["a", "b"], "targets": ["y"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = _probe("validate", str(tmp_path / "s.yaml"))
    assert r["code"] == 0, r["stderr"][-4000:]
    assert "data: " in r["stdout"] and r["heavy"] == []

    pq.write_table(pa.table({"a": a, "b": b, "y": np.full(200, 1.0)}), tmp_path / "d.parquet")
    r = _probe("validate", str(tmp_path / "s.yaml"))
    assert r["code"] == 2 and "constant" in r["stderr"]
    assert r["heavy"] == []


def test_parquet_check_matches_the_dataset_summary(tmp_path):
    """The torch-free data check reports exactly what the dataset workers build records."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlor_scale.targets import ParquetTarget, _parquet_summary, data_summary, make_dataset

    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"a": rng.normal(size=97), "b": rng.normal(size=97),
                             "y": rng.normal(size=97)}), tmp_path / "d.parquet")
    t = ParquetTarget(path="d.parquet", features=["a", "b"], targets=["y"], n_train=40, seed=3)
    assert _parquet_summary(t, tmp_path) == data_summary(make_dataset(t, tmp_path))


def test_validate_leaves_the_teacher_calibration_to_launch():
    """A teacher's calibration draws its weights with torch's generator, so `validate` skips
    it; `check_study_data` (what `launch` runs before creating anything) still does it."""
    from unittest import mock

    from dlor_scale import targets
    from dlor_scale.spec import load_study

    study = load_study(ROOT / "studies" / "quickstart.yaml")
    with mock.patch.object(targets, "_teacher", side_effect=AssertionError("calibrated")):
        targets.check_study_data(study, teacher=False)
        with pytest.raises(AssertionError, match="calibrated"):
            targets.check_study_data(study)


# ------------------------------------------------------------------ curves: the recorded fit


def _rows_equal(a: list[dict], b: list[dict]) -> None:
    import math
    assert [list(r) for r in a] == [list(r) for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            x, y = ra[k], rb[k]
            if isinstance(x, float) and isinstance(y, float) and math.isnan(x):
                assert math.isnan(y), (ra["family"], k, x, y)
            else:
                assert x == y, (ra["family"], k, x, y)


def test_recorded_curves_rebuild_the_table_of_the_fit():
    """`RecordedCurves` (from the fit run's curves.json) gives the very rows, Arrow table and
    JSON of the `Curves` that was recorded, flagged/unfitted families and broken form included."""
    from test_curves import synth_points

    from dlor_scale.scaling import Curves, RecordedCurves

    pts = synth_points()
    flagged = pts.to_pylist()
    flagged[3]["flags"] = "undertrained"
    import pyarrow as pa
    pts2 = pa.Table.from_pylist(flagged, schema=pts.schema)
    for points, form in ((pts, "saturating"), (pts2, "power"), (pts, "broken")):
        c = Curves.from_points(points, form=form, n_boot=40, seed=1, study="s")
        doc = json.loads(json.dumps(c.to_json(), default=str))
        r = RecordedCurves(doc, {"a vs b": {"error": "x"}})
        _rows_equal(r._rows(), c._rows())
        ta, tc = r.to_arrow(), c.to_arrow()
        assert ta.schema == tc.schema  # (NaN != NaN in Table.equals: compare rows)
        _rows_equal(ta.to_pylist(), tc.to_pylist())
        assert r.to_json() == doc and r.families == c.families and r.form == form


def test_curves_read_the_recorded_fit_run_only_when_it_matches(tmp_path, monkeypatch):
    """`load_curves(recorded=True)` returns the recorded fit run for exactly these points /
    form / bootstrap size / seed, and refits when any of them differs."""
    from test_curves import synth_points

    from dlor_scale import analysis
    from dlor_scale.scaling import Curves, RecordedCurves
    from dlor_scale.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lc")
    tracker.client.set_experiment_tag(tracker.experiment_id, "x", "1")  # create the experiment
    points = {"now": synth_points()}
    monkeypatch.setattr(analysis, "member_runs", lambda tr: None)
    monkeypatch.setattr(analysis, "points_from_runs", lambda runs: points["now"])
    monkeypatch.setattr(analysis, "study_fit_form", lambda study: "power")

    fitted = analysis.fit_and_record("lc", tracker, form="power", n_boot=30, seed=0)
    keys = [r.data.tags.get("dlor.key") for r in tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.kind = 'fit'")]
    assert keys == [analysis.fit_run_key("lc", points["now"], form="power", n_boot=30, seed=0)]

    got = analysis.load_curves("lc", uri, n_boot=30, recorded=True)
    assert isinstance(got, RecordedCurves)
    _rows_equal(got._rows(), fitted._rows())
    assert analysis.comparisons(got) == json.loads(json.dumps(
        analysis._jsonable(analysis.comparisons(fitted)), default=str))
    assert got.units["factor"] == 1.0

    # another bootstrap size, form or seed, --refit, or changed points: fitted afresh
    assert isinstance(analysis.load_curves("lc", uri, n_boot=31, recorded=True), Curves)
    assert isinstance(analysis.load_curves("lc", uri, n_boot=30, form="saturating", recorded=True), Curves)
    assert isinstance(analysis.load_curves("lc", uri, n_boot=30, seed=1, recorded=True), Curves)
    assert isinstance(analysis.load_curves("lc", uri, n_boot=30), Curves)
    points["now"] = synth_points(seed=1)
    assert isinstance(analysis.load_curves("lc", uri, n_boot=30, recorded=True), Curves)


# ------------------------------------------------------------------ units: no MLflow


def test_a_unit_imports_no_mlflow():
    """A unit only parks member records (the driver writes them), so the modules a Tune
    trial imports (`worker` and what it needs) load neither MLflow nor SQLAlchemy: ~1 s
    less start-up per trial actor (benchmarks/README.md, "Trial start-up")."""
    code = ("import sys\n"
            "import dlor_scale.worker, dlor_scale.search, dlor_scale.cohort, dlor_scale.tracking\n"
            "bad = [m for m in ('mlflow', 'sqlalchemy') if m in sys.modules]\n"
            "assert not bad, bad\n")
    _run_fresh(code)


def test_sql_stores_still_open_in_wal_mode(tmp_path):
    """The WAL pragma moved from an import side effect to `sqlite_wal.install()`: the MLflow
    store (via `Tracker.client`) and an SQLite Optuna storage (via `storages.storage`) still
    get it, in a fresh interpreter where nothing else installed it."""
    code = (
        "import sqlite3, sys\n"
        "from dlor_scale.tracking import Tracker\n"
        "from dlor_scale.storages import storage\n"
        f"Tracker('sqlite:///{tmp_path}/m.db', 'e').experiment_id\n"
        f"import optuna; optuna.create_study(storage=storage('sqlite:///{tmp_path}/o.db'))\n"
        "for f in ('m.db', 'o.db'):\n"
        f"    mode = sqlite3.connect('{tmp_path}/' + f).execute('PRAGMA journal_mode').fetchone()[0]\n"
        "    assert mode == 'wal', (f, mode)\n")
    _run_fresh(code)
