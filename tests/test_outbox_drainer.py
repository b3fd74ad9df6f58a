"""Member records leave the trial (issue 13 item 1): a unit only parks them in its outbox,
the driver's `OutboxDrainer` writes them to MLflow — while the study runs, exactly once,
and so that a drainer killed mid-drain loses and doubles nothing (real MLflow on SQLite,
real processes, real SIGKILL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from dlor_scale.tracking import OutboxDrainer, Tracker


def _tracker(tmp_path, box: str | None = None) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "drain",
                   outbox=tmp_path / "outbox" / box if box else None,
                   artifact_location=(tmp_path / "art").as_uri())


def _record(i: int, *, end_time: int | None = None, wall: float = 2.0) -> dict:
    key = f"drain/dense@120/t{i}"
    rec = {"key": key, "name": key, "kind": "member", "parent_id": None, "params": {"lr": 0.01 * (i + 1)},
           "tags": {"state": "completed", "dlor.cell": "dense@120", "optuna.trial": i},
           "curves": {"val_error": [(s, 1.0 / s) for s in (5, 10, 15, 20)],
                      "train_loss": [(s, 2.0 / s) for s in (5, 10, 15, 20)]},
           "finals": {"test_error": 0.1 * i, "wall_time_s": wall}, "status": "FINISHED"}
    if end_time is not None:
        rec["end_time"] = end_time
    return rec


def _check_exactly_once(tr: Tracker, n: int) -> None:
    runs = tr.runs(kind="member")
    assert sorted(r.data.tags["dlor.key"] for r in runs) == sorted(f"drain/dense@120/t{i}" for i in range(n))
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["dlor.complete"] == "1"
        assert r.data.params["lr"] and "test_error" in r.data.metrics
        for key in ("val_error", "train_loss"):
            steps = [m.step for m in tr.client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == [5, 10, 15, 20], (r.data.tags["dlor.key"], key, steps)


def test_drainer_writes_while_running_then_completely_on_exit(tmp_path):
    tr, unit = _tracker(tmp_path), _tracker(tmp_path, "search_dense@120_0")
    with OutboxDrainer(tr, tmp_path / "outbox", every=0.05) as drainer:
        for i in range(3):                     # a trial parks records while the study runs ...
            unit.park(_record(i), fresh=True)
        deadline = time.time() + 60            # ... and they reach MLflow before the end
        while list(unit.outbox.glob("*.json")) and time.time() < deadline:
            time.sleep(0.05)
        assert not list(unit.outbox.glob("*.json"))
        assert len(tr.runs(kind="member")) == 3
        unit.park(_record(3), fresh=True)      # parked just before the phase ends
    assert drainer.left == 0
    _check_exactly_once(tr, 4)
    assert OutboxDrainer(tr, tmp_path / "outbox").drain() == 0   # nothing left to replay


def test_run_times_are_the_members_not_the_write(tmp_path):
    tr, unit = _tracker(tmp_path), _tracker(tmp_path, "u")
    end = int(time.time() * 1000) - 60_000     # finished a minute before the driver writes it
    unit.park(_record(0, end_time=end, wall=12.5), fresh=True)
    drainer = OutboxDrainer(tr, tmp_path / "outbox")
    assert drainer.drain() == 0
    run = tr.find_run("drain/dense@120/t0")
    assert run.info.end_time == end and run.info.start_time == end - 12_500
    assert run.info.run_name == "t0 · dense@120"
    assert {m.timestamp for m in tr.client.get_metric_history(run.info.run_id, "val_error")} == {end}


def test_park_keeps_the_record_and_its_fresh_mark_and_a_resend_writes_nothing_twice(tmp_path, caplog):
    """Tracker outbox on its own: a parked record reads back with its `fresh` mark; sending
    it writes the run and unparks it; the same record parked and sent again (a replay after
    a crash) finds the complete run and adds nothing; an unreadable file is set aside."""
    from dlor_scale.tracking import read_parked
    tr = _tracker(tmp_path, "u")
    path = tr.park(_record(0), fresh=True)
    assert path.parent == tmp_path / "outbox" / "u" and path.suffix == ".json"
    assert "client" not in vars(tr) and not (tmp_path / "mlflow.db").exists()   # parking opens no store
    record, fresh = read_parked(path)
    assert fresh and json.loads(json.dumps(_record(0))) == record   # JSON: tuples come back as lists
    assert tr.send_parked(path, fresh_ok=True) and not path.exists()
    again = tr.park(_record(0))                 # a replay: same key, not fresh
    assert read_parked(again)[1] is False
    assert tr.send_parked(again) and not again.exists()
    _check_exactly_once(tr, 1)
    bad = tmp_path / "outbox" / "u" / "cut.json"
    bad.write_text('{"key": ')
    assert tr.send_parked(bad) and not bad.exists()
    assert bad.with_name("cut.json.corrupt").exists() and "cut.json" in caplog.text


def test_a_pass_stops_at_the_first_record_mlflow_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("DLOR_FAILPOINTS", "mlflow.created:raise")
    monkeypatch.setenv("DLOR_FAILPOINT_DIR", str(tmp_path / "fp"))
    tr, unit = _tracker(tmp_path), _tracker(tmp_path, "u")
    tr.attempts = 1
    for i in range(3):
        unit.park(_record(i))
    drainer = OutboxDrainer(tr, tmp_path / "outbox")
    assert drainer.drain() == 3                # down: the rest is not tried, all stay parked
    assert len(tr.runs(kind="member")) == 1    # (the failed one got as far as its create)
    assert drainer.drain() == 0
    _check_exactly_once(tr, 3)


KILLED_DRAINER = """
import sys
from pathlib import Path
from dlor_scale.tracking import OutboxDrainer, Tracker
root, uri = Path(sys.argv[1]), sys.argv[2]
drainer = OutboxDrainer(Tracker(uri, "drain"), root / "outbox")   # starts before the trials park
sys.path.insert(0, sys.argv[3])
from test_outbox_drainer import _record
unit = Tracker(uri, "drain", outbox=root / "outbox" / "u")
for i in range(3):
    unit.park(_record(i), fresh=True)          # first started by this trial: no run can exist
drainer.drain()
"""


@pytest.mark.parametrize("kill_at", ["mlflow.created:kill:1:1", "mlflow.complete:kill:1:1"])
def test_driver_killed_mid_drain_loses_and_doubles_nothing(tmp_path, kill_at):
    """The driver is SIGKILLed while writing the second record (after its run was created,
    or after its last batch): the next launch's drainer finds the files parked before it
    started, does not trust their `fresh` mark, and completes each run exactly once."""
    tr = _tracker(tmp_path)
    tr.experiment_id  # noqa: B018 - the experiment exists before the two processes race for it
    env = {**os.environ, "DLOR_FAILPOINTS": kill_at, "DLOR_FAILPOINT_DIR": str(tmp_path / "fp")}
    r = subprocess.run([sys.executable, "-c", KILLED_DRAINER, str(tmp_path), tr.uri, os.path.dirname(__file__)],
                       env=env, capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr.decode()[-3000:]
    before = {x.data.tags["dlor.key"]: x for x in tr.runs(kind="member")}
    assert sorted(before) == ["drain/dense@120/t0", "drain/dense@120/t1"]
    assert before["drain/dense@120/t1"].info.status == "RUNNING"
    assert len(list((tmp_path / "outbox" / "u").glob("*.json"))) == 2   # t1 and t2 stay parked

    drainer = OutboxDrainer(tr, tmp_path / "outbox")   # the relaunch
    assert drainer.drain() == 0
    _check_exactly_once(tr, 3)
    assert tr.find_run("drain/dense@120/t1").info.run_id == before["drain/dense@120/t1"].info.run_id
    assert len(MlflowClient(tr.uri).search_runs([tr.experiment_id])) == 3
