"""Fault injection end to end (issue 14): real `dlor-scale launch` processes, real Ray,
real kills; each test ends with the project's exactly-once verifier
(`studycheck.check_records`: one run per member, no duplicate (run, key, step) points,
Optuna states = MLflow tags, every run terminated with the right status, fit run).

Kill points: a worker SIGKILLed in the middle of a checkpoint write; the driver (which
writes the records units park) between a member's last MLflow batch and its terminate;
a worker lost between an Optuna ask and its sampling, with connections dropped around
it; the driver killed, then the checkpoints it left cut in half and the done markers
emptied or corrupted.
Workers are killed through `failpoint` hooks (``DLOR_FAILPOINTS``), so the kill lands
exactly at the point, every run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from studycheck import check_records
from test_study_e2e import TINY

pytestmark = [pytest.mark.slow]

SMALL = {**TINY, "trials_per_cell": 4, "cohort_size": 2, "checkpoint_every": 1,
         "sampler": {"kind": "random", "seed": 7}}


def write(tmp_path: Path, name: str, **over) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "name": name, "output_dir": str(tmp_path / "runs"), **over}))
    return path


def launch(spec: Path, *extra: str, env: dict | None = None, progress: bool = False, **kw):
    cmd = [sys.executable, "-m", "dlor_scale.cli", "launch", str(spec), *extra]
    if not progress:
        cmd.append("--no-progress")
    return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                          capture_output=True, text=True, timeout=900, **kw)


def verify(spec: Path, **kw):
    from dlor_scale.spec import load_study
    from dlor_scale.tune import LaunchResult
    study = load_study(spec)
    result = LaunchResult(study.study_dir(), study.resolved_tracking_uri(), study.resolved_optuna_storage(), 0)
    return study, check_records(study, result, **kw)


def fired(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*")} if folder.exists() else set()


def stray_tmp(study_dir: Path) -> list[Path]:
    return [p for p in study_dir.rglob("*.tmp*") if "tune" not in p.relative_to(study_dir).parts[:1]
            and re.fullmatch(r".*\.tmp\d+", p.name)]


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (by parent pid, read from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL a driver and every process of the Ray it started. Ray's workers run in
    process groups of their own and may train on for a while after the driver dies
    (rewriting the files the test is about to damage), so the driver's whole process
    tree is collected first, killed by pid, and waited for."""
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 60
    while any(_alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in tree), "processes of the killed driver survive"


def failpoint_env(tmp_path: Path, *specs: str) -> dict:
    return {"DLOR_FAILPOINTS": ",".join(specs), "DLOR_FAILPOINT_DIR": str(tmp_path / "failpoints")}


def run_until_it_dies(cmd: list[str], env: dict, log: Path) -> int:
    """Run a driver that is to kill itself (a failpoint), then SIGKILL every process it
    had started: its tree is recorded while it runs, since a dead driver's Ray workers
    are re-parented and may train on (rewriting the files a relaunch reads)."""
    tree: set[int] = set()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            tree.update(_descendants(proc.pid))
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 60
    while any(_alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.2)
    return rc


def test_worker_killed_mid_checkpoint_write_and_driver_killed_mid_drain(tmp_path):
    """Item 1: a worker SIGKILLed half-way through a checkpoint write (Tune retries the
    unit), and the driver SIGKILLed while writing members' records to MLflow, after a
    run's ``dlor.complete`` batch but before ``set_terminated``. The relaunch replays the
    records left parked: the run is terminated, no tmp file is left, nothing doubles."""
    spec = write(tmp_path, "kill_write")
    env = failpoint_env(tmp_path, "checkpoint.write:kill:1:2", "mlflow.complete:kill")
    cmd = [sys.executable, "-m", "dlor_scale.cli", "launch", str(spec), "--no-progress"]
    rc = run_until_it_dies(cmd, env, tmp_path / "driver1.log")
    assert rc == -9, (tmp_path / "driver1.log").read_text()[-4000:]
    assert "mlflow.complete.0" in fired(tmp_path / "failpoints")
    r = launch(spec, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert fired(tmp_path / "failpoints") == {"checkpoint.write.0", "mlflow.complete.0"}
    from dlor_scale.spec import load_study
    study_dir = load_study(spec).study_dir()
    assert stray_tmp(study_dir) == []
    assert not list((study_dir / "outbox").rglob("*.json"))
    verify(spec, expect_pruned=False)


def test_trial_left_running_without_params_and_dropped_connections(tmp_path):
    """Item 2: a worker lost between an Optuna ask and the sampling (the trial stays
    RUNNING without ``lr``), and connections dropped on the sampling afterwards: the
    retried unit samples the trial in place (no ``MemberSpec … missing 'lr'``), the
    dropped calls are retried, and the study finishes with exactly its trials."""
    spec = write(tmp_path, "no_params")
    env = failpoint_env(tmp_path, "optuna.asked:kill:1:2", "optuna.suggest:raise:3:3")
    r = launch(spec, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "MemberSpec" not in out and "required positional argument" not in out
    # (Tune does print the killed worker's actor-death traceback: that kill is the fault)
    assert {"optuna.asked.0", "optuna.suggest.0", "optuna.suggest.2"} <= fired(tmp_path / "failpoints")
    verify(spec, expect_pruned=False)


def test_driver_killed_then_truncated_checkpoints_and_corrupt_markers(tmp_path):
    """Items 3, 4, 5 and 7: kill the driver (and its Ray) while units checkpoint, cut
    every checkpoint it left in half, empty one done marker and corrupt another, and
    relaunch with the progress display on. The relaunch sets each bad file aside once,
    naming it, retrains what it must, prints no traceback, and its "N completed, M
    pruned" line counts every member of the study; no ledger holds a key twice."""
    from dlor_scale.spec import load_study
    spec = write(tmp_path, "corrupt", epochs=60, trials_per_cell=6)
    study = load_study(spec)
    study_dir = study.study_dir()
    cmd = [sys.executable, "-m", "dlor_scale.cli", "launch", str(spec), "--no-progress"]
    with open(tmp_path / "driver1.log", "w") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        try:
            while time.time() < deadline and proc.poll() is None:
                done = list((study_dir / "units").glob("*.done.json"))
                ckpt = list((study_dir / "checkpoints").glob("*.pt"))
                if len(done) >= 2 and ckpt:
                    break
                time.sleep(0.05)
        finally:
            kill_driver(proc)
    done = sorted((study_dir / "units").glob("*.done.json"))
    # (a unit killed between its done marker and removing its checkpoint leaves both;
    # the relaunch drops such a checkpoint unread)
    ckpts = [p for p in (study_dir / "checkpoints").glob("*.pt")
             if not (study_dir / "units" / p.name.replace(".pt", ".done.json")).exists()]
    assert ckpts and len(done) >= 2, (tmp_path / "driver1.log").read_text()[-3000:]
    for p in (study_dir / "checkpoints").glob("*.pt"):
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 2])
    done[0].write_text("")
    done[1].write_text('{"completed": ')

    r = launch(spec, progress=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "Traceback" not in out and "JSONDecodeError" not in out
    for p in [*ckpts, *done[:2]]:
        assert p.with_name(p.name + ".corrupt").exists(), p
        assert out.count(str(p)) >= 1, f"{p} not named in the output"
    assert stray_tmp(study_dir) == []

    _, runs = verify(spec, expect_pruned=False)
    states = Counter(r.data.tags["state"] for r in runs if r.data.tags.get("kind") == "member")
    m = re.search(r"(\d+) completed, (\d+) pruned, (\d+) diverged, (\d+) failed", out.replace("\n", " "))
    assert m, out[-2000:]
    printed = dict(zip(("completed", "pruned", "diverged", "failed"), map(int, m.groups())))
    assert printed == {k: states.get(k, 0) for k in printed}, (printed, states)
    n_cells = len(study.budgets) * len(study.families)
    assert sum(printed.values()) == n_cells * (study.trials_per_cell + study.confirm.top_k * study.confirm.seeds)
    for ledger in (study_dir / "ledger").glob("*.jsonl"):
        keys = [json.loads(line)["key"] for line in ledger.read_text().splitlines() if line.strip()]
        assert len(keys) == len(set(keys)), ledger


@pytest.mark.cluster
def test_postgres_backends_terminated_every_two_seconds(tmp_path):
    """Item 2 as measured: Optuna on PostgreSQL, every backend of the study's database
    terminated every 2 s for 40 s while the study runs. Every storage call is retried
    with backoff (and a trial is created with its unit in one commit), so the launch
    finishes on its own, with exactly its trials, each with its parameters."""
    import threading
    import uuid

    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                                 connect_timeout=3)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unavailable: {e}")
    admin.autocommit = True
    db = f"dlor_faults_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f"CREATE DATABASE {db}")
    stop, kills = threading.Event(), []

    def terminator(started: threading.Event):
        started.wait()
        t_end = time.time() + 40
        while time.time() < t_end and not stop.is_set():
            cur = admin.cursor()
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
            kills.append(cur.fetchone()[0])
            stop.wait(2.0)

    try:
        spec = write(tmp_path, "pg_drops", epochs=60,
                     optuna_storage=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")
        from dlor_scale.spec import load_study
        study_dir = load_study(spec).study_dir()
        started = threading.Event()
        th = threading.Thread(target=terminator, args=(started,), daemon=True)
        th.start()
        cmd = [sys.executable, "-m", "dlor_scale.cli", "launch", str(spec), "--no-progress"]
        with open(tmp_path / "driver.log", "w") as log:
            proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.time() + 300   # start the terminations once units are training
                while time.time() < deadline and proc.poll() is None and not list(
                        (study_dir / "checkpoints").glob("*.pt")):
                    time.sleep(0.1)
                started.set()
                rc = proc.wait(timeout=900)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        stop.set()
        th.join()
        out = (tmp_path / "driver.log").read_text()
        assert rc == 0, out[-5000:]
        assert sum(kills) > 0, "no backend was terminated: the test did not test anything"
        assert "MemberSpec" not in out
        _, runs = verify(spec, expect_pruned=False)
        import optuna

        from dlor_scale.storages import storage
        ost = storage(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")
        for s in optuna.get_all_study_summaries(ost):
            for t in optuna.load_study(study_name=s.study_name, storage=ost).get_trials():
                assert t.state.is_finished() and "lr" in t.params, (s.study_name, t.number, t.state)
        ost.engine.dispose()
    finally:
        stop.set()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
