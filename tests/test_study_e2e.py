"""End-to-end studies with real Ray, real MLflow and real Optuna storage.

Marked slow: each launches a local Ray and trains a handful of tiny cohorts.
The invariants checked are the product's promises: one MLflow run per member with
study → cell → member nesting, pruned members tagged and shorter, Optuna states equal
to MLflow state tags, a scaling point per cell, and exactly-once resume.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from studycheck import check_records

pytestmark = pytest.mark.slow

TINY = {
    "name": "e2e",
    "target": {"kind": "teacher", "d_in": 3, "widths": [8], "n_train": 128, "n_val": 64, "n_test": 64, "seed": 0},
    "budgets": [120, 300],
    "tolerance": 0.05,
    "families": {
        "dense": {"width": {"min": 2, "max": 64}, "depth": [0, 1, 2]},
        "dlor_deep": {"width": 8, "rank": 1, "depth": {"min": 1, "max": 40}, "diag": "scalar"},
    },
    "search_space": {"lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-1, "log": True}},
    "sampler": {"kind": "random", "seed": 0},
    "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "trials_per_cell": 6,
    "cohort_size": 2,
    "epochs": 30,
    "report_every": 5,
    "confirm": {"top_k": 1, "seeds": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "device": "cpu",
    "compile": False,
}


def write_spec(tmp_path: Path, **over) -> Path:
    spec = {**TINY, "output_dir": str(tmp_path / "runs"), **over}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray
    tmp = Path("/tmp") / f"dlor-t-{uuid.uuid4().hex[:6]}"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    yield
    ray.shutdown()


def run_study(path: Path):
    from dlor_scale.spec import load_study
    from dlor_scale.tune import launch
    study = load_study(path)
    return study, launch(study, str(path))


def test_study_sqlite_mlflow_and_sqlite_optuna(tmp_path, ray_local):
    study, result = run_study(write_spec(tmp_path))
    check_records(study, result)
    # relaunching a finished study trains nothing and writes nothing new
    from mlflow.tracking import MlflowClient
    n_before = len(MlflowClient(result.tracking_uri).search_runs(
        [MlflowClient(result.tracking_uri).get_experiment_by_name(study.name).experiment_id], max_results=5000))
    _, result2 = run_study(write_spec(tmp_path))
    check_records(study, result2)
    n_after = len(MlflowClient(result.tracking_uri).search_runs(
        [MlflowClient(result.tracking_uri).get_experiment_by_name(study.name).experiment_id], max_results=5000))
    assert n_after == n_before


def _search_by_place(study, result) -> dict:
    """Each search member by (unit, place in unit) → (params, state, value), from Optuna."""
    import optuna

    from dlor_scale.plan import make_plan
    from dlor_scale.storages import storage
    out = {}
    for cell in make_plan(study).cells:
        for t in optuna.load_study(study_name=cell.optuna_study_name(study.name),
                                   storage=storage(result.optuna_storage)).get_trials():
            out[(t.user_attrs["unit"], t.user_attrs["seq"])] = (t.params, t.state.name, t.value)
    return out


def test_split_cells_search_the_same_on_every_launch(tmp_path, ray_local):
    """parts_per_cell: 2 runs each cell as two Tune trials at once; each part samples (TPE),
    prunes and seeds from its own trials, so two launches give the same members and points
    whatever order Ray ran the parts in."""
    from dlor_scale.plan import make_plan
    from dlor_scale.records import member_runs
    from dlor_scale.scaling import points_from_runs
    from dlor_scale.tracking import Tracker
    from dlor_scale.tune import search_units
    over = {"parts_per_cell": 2, "trials_per_cell": 8, "cohort_size": 2,
            "sampler": {"kind": "tpe", "seed": 0, "n_startup_trials": 2}}
    got = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        study, result = run_study(write_spec(tmp_path / name, **over))
        check_records(study, result)
        units = search_units(study, make_plan(study))
        assert len(units) == 4 * 2 and all(u["quota"] == 4 and u["slots"] == 2 for u in units)
        # (the Optuna trial numbers of parts running at once interleave in timing order:
        # only the point's best_trial, a number naming the member, may differ)
        points = points_from_runs(member_runs(Tracker(result.tracking_uri, study.name))).drop(["best_trial"])
        got.append((_search_by_place(study, result), points))
    assert got[0][0] == got[1][0] and len(got[0][0]) == 4 * 8
    assert got[0][1].to_pylist() == got[1][1].to_pylist() and got[0][1].num_rows == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_url() -> str | None:
    try:
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unavailable: {e}")
    name = f"dlor_e2e_{uuid.uuid4().hex[:8]}"
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return name


def _drop_db(name: str):
    import psycopg2
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


def test_study_mlflow_server_and_postgres_optuna(tmp_path, ray_local):
    db = _pg_url()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        import urllib.request
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except Exception:  # noqa: BLE001
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(1)
        path = write_spec(tmp_path, tracking_uri=f"http://127.0.0.1:{port}",
                          optuna_storage=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")
        study, result = run_study(path)
        check_records(study, result)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        _drop_db(db)


def test_interrupted_launch_resumes_exactly_once(tmp_path):
    """Kill the driver mid-study, relaunch: finished units are not retrained and no
    run or trial is duplicated."""
    path = write_spec(tmp_path, trials_per_cell=6, epochs=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dlor_scale.cli", "launch", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    units = tmp_path / "runs" / "e2e" / "units"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(units.glob("*.done.json"))) < 1:
        time.sleep(0.5)
    assert list(units.glob("*.done.json")), "no unit finished before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in units.glob("*.done.json")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, mtime in done_before.items():
        assert (units / name).stat().st_mtime_ns == mtime, f"finished unit {name} was retrained"
    from dlor_scale.spec import load_study
    from dlor_scale.tune import LaunchResult
    study = load_study(path)
    result = LaunchResult(study.study_dir(), study.resolved_tracking_uri(), study.resolved_optuna_storage(), 0)
    check_records(study, result, expect_pruned=False)
