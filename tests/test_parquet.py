"""Parquet targets as a first-class path, through the CLI a user types.

* Every bad-data case exits 2 from both ``validate`` and ``launch`` with the loader's
  message (file + column), no traceback, no study folder, and Ray never started.
* The study hash covers the file's content: relaunching on a changed file is refused.
* The target's scale is recorded (study.json, the MLflow study run) and errors convert
  to the target's units exactly (fits are scale-equivariant: α unchanged, E and A scale).

Fast tests never start Ray: `no_ray` makes ``ray.init`` fail the test if called, and the
one test that records a study stubs out the Ray phases (MLflow/Optuna stores are real).
The real end-to-end run is the ``slow`` test at the bottom.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from dlor_scale.cli import app

N_ROWS = 200
SPEC = {
    "name": "pq",
    "target": {"kind": "parquet", "path": "data.parquet", "features": ["a", "b"], "targets": ["y"]},
    "budgets": [37, 85, 177],  # dense widths 9 / 21 / 44 at depth 1 with 2 features
    "families": {"dense": {"width": {"min": 2, "max": 64}, "depth": 1}},
    "search_space": {"lr": 0.01},
    "trials_per_cell": 2, "cohort_size": 2, "epochs": 20, "report_every": 10,
    "device": "cpu", "compile": False,
}


def table(n: int = N_ROWS, **overrides) -> pa.Table:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    cols = {"a": a, "b": b, "y": 100.0 + 15.0 * np.sin(a) * b, "label": [f"r{i}" for i in range(n)]}
    cols.update(overrides)
    return pa.table(cols)


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A study folder with data.parquet and study.yaml; output under tmp; cwd = tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLOR_OUTPUT_DIR", str(tmp_path / "runs"))
    for k in ("MLFLOW_TRACKING_URI", "DLOR_OPTUNA_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    pq.write_table(table(), tmp_path / "data.parquet")

    def write(**target):
        spec = {**SPEC, "target": {**SPEC["target"], **target}}
        (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
        return tmp_path / "study.yaml"

    write()
    return type("S", (), {"dir": tmp_path, "spec": tmp_path / "study.yaml", "write": staticmethod(write),
                          "runs": tmp_path / "runs" / "pq", "data": tmp_path / "data.parquet"})


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything tries to start Ray."""
    ray = pytest.importorskip("ray")

    def boom(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", boom)
    yield ray
    assert not ray.is_initialized()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def text(res) -> str:
    return res.output + (res.stderr if res.stderr_bytes is not None else "")


# --------------------------------------------------------------------------- bad data

def _missing_file(s):
    s.data.unlink()


def _directory(s):
    s.data.unlink()
    s.data.mkdir()


def _not_parquet(s):
    s.data.write_text("a,b,y\n1,2,3\n")


def _missing_column(s):
    s.write(features=["a", "zzz"])


def _non_numeric(s):
    s.write(features=["a", "label"])


def _with(**cols):
    def mutate(s):
        pq.write_table(table(**cols), s.data)
    return mutate


def _nan():
    a = table().column("a").to_numpy().copy()
    a[[3, 9]] = np.nan
    return _with(a=a)


def _inf():
    y = table().column("y").to_numpy().copy()
    y[5] = np.inf
    return _with(y=y)


def _null():
    b = table().column("b").to_pylist()
    b[7] = None
    return _with(b=pa.array(b, pa.float64()))


def _empty(s):
    pq.write_table(table(0), s.data)


def _too_few_rows(s):
    pq.write_table(table(5), s.data)


def _n_train_too_big(s):
    s.write(n_train=10_000)


BAD = {  # case → (mutation, words the message must contain besides the file name)
    "missing-file": (_missing_file, ["not found"]),
    "directory": (_directory, ["not a file"]),
    "not-parquet": (_not_parquet, ["cannot read as Parquet"]),
    "missing-column": (_missing_column, ["'zzz'", "not found", "available columns"]),
    "non-numeric": (_non_numeric, ["'label'", "non-numeric", "string"]),
    "nan": (_nan(), ["'a'", "2 non-finite", "2 NaN"]),
    "inf": (_inf(), ["'y'", "1 non-finite", "1 inf"]),
    "null": (_null(), ["'b'", "1 null"]),
    "empty": (_empty, ["empty (0 rows)"]),
    "too-few-rows": (_too_few_rows, ["empty split", "val=0"]),
    "constant-feature": (_with(b=np.full(N_ROWS, 3.0)), ["'b'", "constant"]),
    "constant-target": (_with(y=np.full(N_ROWS, 1.0)), ["'y'", "constant"]),
    "n_train-too-big": (_n_train_too_big, ["n_train = 10000", "training rows"]),
}


@pytest.mark.parametrize("command", ["validate", "launch", "launch --dry-run"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_exits_2_before_anything_starts(study, no_ray, case, command):
    mutate, words = BAD[case]
    mutate(study)
    res = cli(*command.split(), study.spec)
    out = text(res)
    assert res.exit_code == 2, out
    assert "data.parquet" in out and all(w in out for w in words), out
    assert "Traceback" not in out and not isinstance(res.exception, AssertionError), out
    assert not (study.dir / "runs").exists(), "a study folder was created for bad data"


def test_batch_size_larger_than_train_split_is_a_data_error(study, no_ray):
    spec = yaml.safe_load(study.spec.read_text())
    study.spec.write_text(yaml.safe_dump({**spec, "batch_size": 500}))
    for cmd in (["validate"], ["launch"]):
        res = cli(*cmd, study.spec)
        assert res.exit_code == 2 and "batch_size 500" in text(res) and "140 training rows" in text(res), text(res)
    assert not (study.dir / "runs").exists()


def test_good_data_validates_and_reports_its_scale(study, no_ray):
    res = cli("validate", study.spec)
    assert res.exit_code == 0, text(res)
    out = " ".join(text(res).split())
    assert "200 rows" in out and "train 140 / val 30 / test 30" in out and "'y' mean" in out, out
    res = cli("launch", "--dry-run", study.spec)
    assert res.exit_code == 0 and "sha256" in text(res), text(res)
    assert not (study.dir / "runs").exists()


def test_pinned_sha256_must_match_the_file(study, no_ray):
    study.write(sha256="0" * 64)
    res = cli("validate", study.spec)
    assert res.exit_code == 2 and "the file changed" in text(res) and "target.sha256" in text(res), text(res)


# --------------------------------------------------------------------------- hash covers the data

def test_spec_hash_covers_the_file_content(study):
    from dlor_scale.spec import load_study

    before = load_study(study.spec).spec_hash()
    assert load_study(study.spec).spec_hash() == before
    pq.write_table(table(y=table().column("y").to_numpy() + 1.0), study.data)
    s = load_study(study.spec)
    assert s.spec_hash() != before
    # the pinned copy (what workers see) hashes the same as the file it pins
    assert s.with_data_pinned(s.data_sha256()).spec_hash() == s.spec_hash()


@pytest.fixture
def recorded(study, monkeypatch, no_ray):
    """A launch whose stores are real (study.json, MLflow, Optuna) but whose Ray phases are
    stubbed out: what the data check and the study records do, without training."""
    import dlor_scale.tune as tune

    monkeypatch.setattr(tune, "_init_ray", lambda *a, **k: False)
    monkeypatch.setattr(tune, "_run_phase", lambda *a, **k: [])
    monkeypatch.setattr(tune, "_fit_study", lambda *a, **k: None)
    res = cli("launch", "--no-progress", study.spec)
    assert res.exit_code == 0, text(res)
    return study


def test_launch_records_data_and_scale(recorded):
    from dlor_scale.tracking import Tracker
    from dlor_scale.units import scale_from_params

    info = json.loads((recorded.runs / "study.json").read_text())
    data = info["data"]
    raw = table().to_pandas()
    assert data["source"] == str(recorded.data.resolve()) and data["n_rows"] == N_ROWS
    assert (data["n_train"], data["n_val"], data["n_test"]) == (140, 30, 30)
    assert info["spec"]["target"]["sha256"] == data["sha256"]
    sc = data["scale"]
    assert sc["standardized"] and sc["targets"] == ["y"] and sc["features"] == ["a", "b"]
    # train-split statistics: close to, not equal to, the whole file's
    assert math.isclose(sc["y_mean"][0], raw["y"].mean(), rel_tol=0.02) and sc["y_mean"][0] != raw["y"].mean()
    assert math.isclose(sc["y_std"][0], raw["y"].std(ddof=0), rel_tol=0.2)
    params = Tracker(info["tracking_uri"], "pq").find_run("pq").data.params
    assert scale_from_params(params) == {k: sc[k] for k in ("standardized", "targets", "y_mean", "y_std")}
    assert params["data.sha256"] == data["sha256"] and params["data.n_rows"] == str(N_ROWS)
    assert json.loads(params["target.x_scale"])["x_std"] == sc["x_std"]


def test_relaunch_with_changed_data_is_refused(recorded):
    before = (recorded.runs / "study.json").read_text()
    pq.write_table(table(y=table().column("y").to_numpy() * 2), recorded.data)
    for cmd in (["launch", "--no-progress"], ["launch", "--resume", "--no-progress"]):
        res = cli(*cmd, recorded.spec)
        out = " ".join(text(res).split())
        assert res.exit_code == 2, out
        assert "data.parquet" in out and "the data changed since study 'pq' was created" in out, out
    assert (recorded.runs / "study.json").read_text() == before


def test_relaunch_with_same_data_continues(recorded):
    os.utime(recorded.data)  # touched, same bytes: same study
    res = cli("launch", "--no-progress", recorded.spec)
    assert res.exit_code == 0, text(res)


# --------------------------------------------------------------------------- units

def test_error_factor_per_metric():
    from dlor_scale.units import UnitsError, error_factor

    sc = {"standardized": True, "targets": ["y"], "y_mean": [100.0], "y_std": [15.0]}
    assert error_factor(sc, "rmse") == 15.0 and error_factor(sc, "max_abs") == 15.0
    assert error_factor(sc, "mse") == 225.0
    assert error_factor({**sc, "standardized": False}, "rmse") == 1.0 and error_factor(None, "mse") == 1.0
    with pytest.raises(UnitsError, match="rel_l2"):
        error_factor(sc, "rel_l2")
    with pytest.raises(UnitsError, match="different stds"):
        error_factor({**sc, "targets": ["y", "z"], "y_mean": [0, 0], "y_std": [1.0, 2.0]}, "rmse")
    assert error_factor({**sc, "targets": ["y", "z"], "y_mean": [0, 0], "y_std": [2.0, 2.0]}, "rmse") == 2.0


def test_target_units_match_errors_computed_on_unscaled_predictions(tmp_path):
    """The factor is the truth: RMSE of unscaled predictions vs raw y = factor × standardized RMSE."""
    import torch

    from dlor_scale.targets import ParquetTarget, data_summary, make_dataset
    from dlor_scale.units import error_factor

    pq.write_table(table(), tmp_path / "d.parquet")
    ds = make_dataset(ParquetTarget(path="d.parquet", features=["a", "b"], targets=["y"]), tmp_path)
    pred = ds.y_test.double() + 0.3 * torch.randn(ds.y_test.shape, generator=torch.Generator().manual_seed(0),
                                                   dtype=torch.float64)
    std_rmse = float(((pred - ds.y_test.double()) ** 2).mean().sqrt())
    raw_rmse = float(((ds.unscale_y(pred) - ds.unscale_y(ds.y_test.double())) ** 2).mean().sqrt())
    factor = error_factor(data_summary(ds)["scale"], "rmse")
    assert math.isclose(raw_rmse, factor * std_rmse, rel_tol=1e-6)


def test_fits_are_scale_equivariant():
    """Converting points then fitting = fitting then converting: α unchanged, E and A × factor."""
    from dlor_scale.scaling import POINT_SCHEMA, Curves
    from dlor_scale.units import scale_columns

    P = np.array([200, 400, 800, 1600, 3200, 6400])
    L = 0.05 + 3.0 * P ** -0.5 * np.exp(np.random.default_rng(1).normal(0, 0.02, P.size))
    pts = pa.Table.from_pylist([{"family": "f", "budget": int(p), "n_params": int(p), "error": float(e),
                                 "stderr": math.nan, "n_seeds": 1, "best_trial": 0, "source": "search"}
                                for p, e in zip(P, L)], schema=POINT_SCHEMA)
    a = Curves.from_points(pts, n_boot=50)["f"]
    b = Curves.from_points(scale_columns(pts, ("error", "stderr"), 15.0), n_boot=50)["f"]
    assert math.isclose(a.alpha, b.alpha, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(15.0 * a.E, b.E, rel_tol=1e-3) and math.isclose(15.0 * a.A, b.A, rel_tol=1e-3)
    assert math.isclose(15.0 * a.predict(np.array([1e4]))[0], b.predict(np.array([1e4]))[0], rel_tol=1e-3)


class _FakeTracker:
    experiment_name = "pq"

    def __init__(self, params):
        self._run = type("R", (), {"data": type("D", (), {"params": params})()})()

    def find_run(self, key):
        return self._run


def test_study_units_reads_the_recorded_scale():
    from dlor_scale.units import UnitsError, scale_params, study_units

    data = {"kind": "parquet", "source": "/d.parquet", "sha256": "ab" * 32, "n_rows": 10, "n_train": 6,
            "n_val": 2, "n_test": 2,
            "scale": {"standardized": True, "features": ["a"], "targets": ["y"], "x_mean": [0.0],
                      "x_std": [1.0], "y_mean": [5.0], "y_std": [2.5]}}
    params = {k: (v if isinstance(v, str) else str(v)) for k, v in scale_params(data).items()}
    t = _FakeTracker({**params, "metric": "mse"})
    assert study_units(t, "target")["factor"] == 6.25
    assert study_units(t, "standardized")["factor"] == 1.0
    with pytest.raises(UnitsError, match="allowed: standardized, target"):
        study_units(t, "furlongs")
    with pytest.raises(UnitsError, match="no recorded target scale"):
        study_units(_FakeTracker({"metric": "rmse"}), "target")


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_parquet_study_end_to_end_in_target_units(study, tmp_path):
    """Real launch (Ray, MLflow, Optuna) of a tiny Parquet study, then curves and export in
    both units: the target-units numbers are the standardized ones × y_std."""
    import subprocess

    exe = [str(Path(sys.executable).parent / "dlor-scale")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run(exe + [str(x) for x in a], cwd=study.dir, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=900)
    p = run("launch", "--no-progress", study.spec)
    assert p.returncode == 0, p.stdout + p.stderr
    y_std = json.loads((study.runs / "study.json").read_text())["data"]["scale"]["y_std"][0]

    std_f, tgt_f = tmp_path / "std.parquet", tmp_path / "tgt.parquet"
    assert run("export", study.runs, std_f).returncode == 0
    p = run("export", study.runs, tgt_f, "--units", "target")
    assert p.returncode == 0 and "target units" in p.stdout, p.stdout + p.stderr
    a, b = pq.read_table(std_f), pq.read_table(tgt_f)
    assert a.num_rows > 0
    np.testing.assert_allclose(b.column("test_error").to_numpy(), a.column("test_error").to_numpy() * y_std,
                               rtol=1e-12)
    meta = b.schema.metadata
    assert json.loads(meta[b"dlor.target_scale"])["y_std"] == [y_std]
    assert json.loads(meta[b"dlor.error_units"])["units"] == "target"

    p = run("curves", study.runs, "--format", "json", "--units", "target", "--n-boot", "50")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["units"]["units"] == "target" and math.isclose(doc["units"]["factor"], y_std)
    p = run("curves", study.runs, "--format", "json", "--n-boot", "50")
    std_doc = json.loads(p.stdout)
    for fam, f in doc["families"].items():
        for pt, sp in zip(f["points"], std_doc["families"][fam]["points"]):
            if sp["error"] is not None:
                assert math.isclose(pt["error"], sp["error"] * y_std, rel_tol=1e-12)
    p = run("curves", study.runs, "--units", "target", "--n-boot", "50")
    assert p.returncode == 0 and "in the target's units" in " ".join(p.stdout.split()), p.stdout + p.stderr


@pytest.mark.parametrize("case", ["missing-column", "nan", "constant-target"])
def test_library_launch_checks_data_before_stores_and_ray(study, no_ray, case):
    """`dlor_scale.tune.launch` (the API behind the CLI) checks too, not only the CLI."""
    from dlor_scale.errors import DataError
    from dlor_scale.spec import load_study
    from dlor_scale.tune import launch

    BAD[case][0](study)
    with pytest.raises(DataError, match="data.parquet"):
        launch(load_study(study.spec), str(study.spec), progress=None)
    assert not (study.dir / "runs").exists()


def test_docs_example_validates(tmp_path, monkeypatch, no_ray):
    """docs/parquet.md's worked example: make_data.py writes the table, study.yaml validates."""
    import runpy
    import shutil

    src = Path(__file__).resolve().parents[1] / "docs" / "examples" / "parquet"
    for f in ("make_data.py", "study.yaml"):
        shutil.copy(src / f, tmp_path / f)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLOR_OUTPUT_DIR", str(tmp_path / "runs"))
    runpy.run_path(str(tmp_path / "make_data.py"), run_name="__main__")
    res = cli("validate", tmp_path / "study.yaml")
    out = " ".join(text(res).split())
    assert res.exit_code == 0, out
    assert "4000 rows" in out and "train 2800 / val 600 / test 600" in out and "10 features → 1 target(s)" in out, out
    assert not (tmp_path / "runs").exists()
