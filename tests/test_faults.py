"""Fault injection at the unit level (no Ray): the kill points of issue 14.

Each fault is injected where it happens in production — through the `failpoint`
hooks (``DLOR_FAILPOINTS``), by damaging the files a killed process leaves, or by a
storage that drops its connection — and the unit must heal: no run left RUNNING, no
trial left without parameters, no corrupt file read twice, no duplicate ledger entry,
counts over every attempt. The end-to-end versions (real Ray, real kills, ending with
`studycheck.check_records`) are in test_faults_e2e.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from dlor_scale.search import OptunaSource
from dlor_scale.storages import db_retry
from dlor_scale.spec import Distribution
from dlor_scale.tracking import FailpointError, Tracker
from dlor_scale.studydir import UnitFiles, clean_stray_tmp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def failpoints(monkeypatch, tmp_path):
    """``set("name:action[:times[:skip]]", ...)`` arms failpoints for this test."""
    import dlor_scale.tracking as tr
    monkeypatch.setattr(tr, "_FAILPOINT_HITS", {})
    monkeypatch.setenv("DLOR_FAILPOINT_DIR", str(tmp_path / "failpoints"))

    def arm(*specs):
        tr._FAILPOINT_HITS.clear()
        if specs:
            monkeypatch.setenv("DLOR_FAILPOINTS", ",".join(specs))
        else:
            monkeypatch.delenv("DLOR_FAILPOINTS", raising=False)
    return arm


@pytest.fixture
def fast_backoff(monkeypatch):
    import dlor_scale.storages as storages
    monkeypatch.setattr(storages, "DB_BASE_DELAY", 0.01)
    monkeypatch.setattr(storages, "DB_MAX_DELAY", 0.02)


def _tracker(tmp_path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "faults", outbox=tmp_path / "outbox",
                   artifact_location=(tmp_path / "art").as_uri())


def _record(key="faults/m0", state="completed"):
    return {"key": key, "name": key, "kind": "member", "parent_id": None,
            "params": {"lr": 0.1}, "tags": {"state": state},
            "curves": {"val_error": [(5, 0.5), (10, 0.4)], "train_loss": [(5, 1.0), (10, 0.9)]},
            "finals": {"test_error": 0.4}, "status": "FINISHED" if state in ("completed", "pruned") else "FAILED"}


# ----------------------------------------------------------------------------- 1. killed between batch and terminate


def test_replay_terminates_a_complete_run_left_running(tmp_path, failpoints):
    tr = _tracker(tmp_path)
    failpoints("mlflow.complete:raise:2")          # the writer dies after the last batch, twice
    for rec in (_record("faults/m0"), _record("faults/m1", "diverged")):
        with pytest.raises(FailpointError):
            tr.record_run(**rec)
        run = tr.find_run(rec["key"])
        assert run.data.tags["dlor.complete"] == "1" and run.info.status == "RUNNING"   # the state
    failpoints()
    for rec in (_record("faults/m0"), _record("faults/m1", "diverged")):
        tr.record_run(**rec)                        # the replay (outbox or retried member)
        run = tr.find_run(rec["key"])
        assert run.info.status == rec["status"]
        steps = [m.step for m in tr.client.get_metric_history(run.info.run_id, "val_error")]
        assert sorted(steps) == [5, 10]              # nothing sent twice
    assert len(tr.runs(kind="member")) == 2


def test_drain_killed_before_terminate_is_repaired_by_the_next_pass(tmp_path, failpoints):
    from dlor_scale.tracking import OutboxDrainer
    tr = _tracker(tmp_path)
    Tracker(tr.uri, "faults", outbox=tmp_path / "outbox" / "u").park(_record(), fresh=True)
    failpoints("mlflow.complete:raise")
    drainer = OutboxDrainer(tr, tmp_path / "outbox")
    assert drainer.drain() == 1                     # the write failed after its last batch: still parked
    assert tr.find_run("faults/m0").info.status == "RUNNING"
    assert drainer.drain() == 0                     # the replay terminates the run
    run = tr.find_run("faults/m0")
    assert run.info.status == "FINISHED" and run.data.tags["dlor.complete"] == "1"
    assert not list((tmp_path / "outbox").rglob("*.json"))
    assert len(tr.runs(kind="member")) == 1


def test_sweep_closes_complete_member_runs_left_running(tmp_path, failpoints):
    from dlor_scale.tune import close_member_runs
    tr = _tracker(tmp_path)
    failpoints("mlflow.complete:raise:2")
    for rec in (_record("faults/m0"), _record("faults/m1", "failed")):
        with pytest.raises(FailpointError):
            tr.record_run(**rec)
    failpoints()
    assert close_member_runs(tr) == 2
    assert tr.find_run("faults/m0").info.status == "FINISHED"
    assert tr.find_run("faults/m1").info.status == "FAILED"
    assert close_member_runs(tr) == 0


def test_checkpoint_write_killed_midway_leaves_old_checkpoint_and_a_tmp_that_start_removes(tmp_path):
    files = UnitFiles(tmp_path, "search/dense@100/0")
    files.save_checkpoint({"members": [], "n": 1})
    code = ("import sys; from pathlib import Path; from dlor_scale.studydir import UnitFiles; "
            "UnitFiles(Path(sys.argv[1]), 'search/dense@100/0').save_checkpoint("
            "{'members': [], 'n': 2, 'pad': b'x' * 100000})")
    env = {**os.environ, "DLOR_FAILPOINTS": "checkpoint.write:kill",
           "DLOR_FAILPOINT_DIR": str(tmp_path / "fp")}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    tmps = list(files.checkpoint.parent.glob("*.tmp*"))
    assert len(tmps) == 1 and 0 < tmps[0].stat().st_size < 100000
    assert files.load_checkpoint()["n"] == 1         # the old checkpoint is whole
    # stray tmp files anywhere in the study folder go at start; Tune's own folder and
    # files that merely contain ".tmp" stay
    (tmp_path / "outbox" / "u").mkdir(parents=True)
    (tmp_path / "outbox" / "u" / "k.tmp123").write_text("{")
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "x.tmp5").write_text("ray's")
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "notes.tmpl").write_text("keep")
    gone = clean_stray_tmp(tmp_path)
    assert sorted(p.name for p in gone) == sorted([tmps[0].name, "k.tmp123"])
    assert (tmp_path / "tune" / "x.tmp5").exists() and (tmp_path / "units" / "notes.tmpl").exists()


# ----------------------------------------------------------------------------- 2. Optuna trial without params

SPACE = {"lr": Distribution(type="float", low=1e-3, high=1e-1, log=True), "weight_decay": 0.0}


def _ostudy(tmp_path, name="cell"):
    from dlor_scale.storages import storage
    st = storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return optuna.create_study(study_name=name, storage=st, direction="minimize", load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _source(study, **kw):
    return OptunaSource(study, unit="search/dense@100/0", cell_key="dense@100", space=SPACE,
                        quota=kw.pop("quota", 3), base_seed=0, final_epoch=30, **kw)


def test_trial_left_running_without_params_is_sampled_on_resume(tmp_path, failpoints):
    study = _ostudy(tmp_path)
    failpoints("optuna.asked:raise")                # connection lost between the ask and the sampling
    src = _source(study)
    with pytest.raises(FailpointError):
        src.next_member()
    [t] = study.get_trials()
    assert t.state == TrialState.RUNNING and t.params == {}
    assert t.user_attrs["unit"] == "search/dense@100/0"   # the ask carried its unit: never an orphan
    failpoints()
    src = _source(study)                            # the retried unit
    m = src.next_member()
    assert m.key == "dense@100/t0" and 1e-3 <= m.lr <= 1e-1 and m.weight_decay == 0.0
    assert study.get_trials()[0].params == {"lr": m.lr}
    assert [src.next_member().key, src.next_member().key, src.next_member()] == \
        ["dense@100/t1", "dense@100/t2", None]      # the quota counts the repaired trial once
    assert len(study.get_trials()) == 3


def test_transient_storage_errors_are_retried_and_a_landed_create_is_adopted(tmp_path, monkeypatch,
                                                                            fast_backoff, caplog):
    study = _ostudy(tmp_path)
    st = study._storage
    real_create, real_param, real_report = st.create_new_trial, st.set_trial_param, st.set_trial_intermediate_value
    calls = {"create": 0, "param": 0, "report": 0}

    def create(study_id, template_trial=None):
        calls["create"] += 1
        tid = real_create(study_id, template_trial)
        if calls["create"] == 1:                    # committed, then the connection dropped
            raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")
        return tid

    def param(*a, **k):
        calls["param"] += 1
        if calls["param"] <= 2:
            import sqlalchemy.exc
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("terminating connection"))
        return real_param(*a, **k)

    def report(*a, **k):
        calls["report"] += 1
        if calls["report"] == 1:
            raise ConnectionError("connection reset")
        return real_report(*a, **k)

    monkeypatch.setattr(st, "create_new_trial", create)
    monkeypatch.setattr(st, "set_trial_param", param)
    monkeypatch.setattr(st, "set_trial_intermediate_value", report)
    src = _source(study, quota=2)
    with caplog.at_level(logging.WARNING, logger="dlor_scale.search"):
        a = src.next_member()
    assert calls["create"] == 1                     # the landed trial was found, not created twice
    assert len(study.get_trials()) == 1 and study.get_trials()[0].params == {"lr": a.lr}
    assert "retrying" in caplog.text
    src._tell_step(a.key, 0.5, 5)
    assert study.get_trials()[0].intermediate_values == {5: 0.5}
    # a deterministic error is not retried
    with pytest.raises(ValueError):
        db_retry(lambda: (_ for _ in ()).throw(ValueError("bad value")), "x")


def test_only_transient_storage_errors_count_as_transient():
    import sqlalchemy.exc as sa

    from dlor_scale.storages import transient_db_error

    def wrapped(cause):
        try:
            raise optuna.exceptions.StorageInternalError("commit failed") from cause
        except optuna.exceptions.StorageInternalError as e:
            return e
    dropped = sa.OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command"))
    assert transient_db_error(dropped) and transient_db_error(wrapped(dropped))
    assert transient_db_error(ConnectionResetError()) and transient_db_error(sa.InterfaceError("x", {}, Exception()))
    for bad in (sa.ArgumentError("Could not parse SQLAlchemy URL"), sa.IntegrityError("INSERT", {}, Exception()),
                sa.DatabaseError("x", {}, Exception("file is not a database")), ValueError("bad"),
                wrapped(sa.DataError("x", {}, Exception("value too long")))):
        assert not transient_db_error(bad), bad


def test_orphan_running_trial_of_an_older_version_is_failed_by_the_driver(tmp_path):
    from dlor_scale.search import cell_counts
    from dlor_scale.tune import fail_orphan_trials
    study = _ostudy(tmp_path)
    orphan = study.ask()                            # ask committed, the unit attr never was
    owned = _source(study).next_member()
    assert fail_orphan_trials(study) == 1
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[int(owned.key.rsplit("t", 1)[1])].state == TrialState.RUNNING   # a unit resumes it
    c = cell_counts(trials)
    assert (c["asked"], c["failed"], c["running"]) == (1, 0, 1)
    assert fail_orphan_trials(study) == 0


def test_a_failed_unit_names_its_cause():
    from dlor_scale.tune import _cause
    err = RuntimeError("Traceback (most recent call last):\n  File 'x.py'\n    torch.load(f)\n"
                       "OSError: [Errno 22] Invalid argument: '/runs/s/checkpoints/u.pt'\n")
    assert _cause(err) == "OSError: [Errno 22] Invalid argument: '/runs/s/checkpoints/u.pt'"


# ----------------------------------------------------------------------------- 3./4./7. corrupt files


def test_truncated_checkpoint_is_set_aside_once_with_its_path(tmp_path, caplog):
    files = UnitFiles(tmp_path, "search/dense@100/0")
    files.save_checkpoint({"members": [None, {"spec": {"key": "dense@100/t1"}}], "flat": torch.zeros(1000)})
    data = files.checkpoint.read_bytes()
    files.checkpoint.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="dlor_scale.worker"):
        assert files.load_checkpoint() is None
        assert files.load_checkpoint() is None      # set aside: not read (nor logged) again
    msgs = [r.getMessage() for r in caplog.records if str(files.checkpoint) in r.getMessage()]
    assert len(msgs) == 1 and "unreadable" in msgs[0]
    assert files.checkpoint.with_name(files.checkpoint.name + ".corrupt").exists()
    for junk in (b"", b"not a torch file", None):
        if junk is None:
            torch.save({"no": "members"}, files.checkpoint)
        else:
            files.checkpoint.write_bytes(junk)
        assert files.load_checkpoint() is None and not files.checkpoint.exists()


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b"\x00\xff"])
def test_empty_or_corrupt_done_marker_is_not_done(tmp_path, content, caplog):
    from dlor_scale.progress import Progress
    from dlor_scale.tune import unit_totals
    units = [{"id": "search/dense@100/0", "cell": "dense@100", "quota": 4},
             {"id": "search/dense@200/0", "cell": "dense@200", "quota": 4}]
    good, bad = (UnitFiles(tmp_path, u["id"]) for u in units)
    good.write_done({"completed": 3, "pruned": 1})
    bad.done.parent.mkdir(parents=True, exist_ok=True)
    bad.done.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="dlor_scale.worker"):
        prog = Progress(live=False)
        prog.add_phase(units)
        prog.mark_done(units, tmp_path)             # no JSONDecodeError
        assert prog.done_units == {units[0]["id"]}
        assert unit_totals(tmp_path, units) == {"completed": 3, "pruned": 1}
        assert not bad.is_done()
    assert sum(str(bad.done) in r.getMessage() for r in caplog.records) == 1
    assert good.is_done()


def test_ledger_is_written_once_per_member_and_read_tolerantly(tmp_path, caplog):
    files = UnitFiles(tmp_path, "confirm/dense@100/0")
    files.append_ledger("dense@100/c0s0", "completed")
    files.append_ledger("dense@100/c0s0", "completed")   # replayed after a kill: no second line
    files.append_ledger("dense@100/c0s1", "diverged")
    lines = files.ledger.read_text().splitlines()
    assert len(lines) == 2
    # a ledger from before atomic writes: a doubled line and a line cut by a kill
    files.ledger.write_text(files.ledger.read_text() + lines[0] + "\n" + '{"key": "dense@100/c0')
    with caplog.at_level(logging.WARNING, logger="dlor_scale.worker"):
        assert files.ledger_states() == {"dense@100/c0s0": "completed", "dense@100/c0s1": "diverged"}
    assert "unreadable line" in caplog.text
    files.append_ledger("dense@100/c1s0", "completed")   # rewrites it clean
    assert len(files.ledger.read_text().splitlines()) == 3


# ----------------------------------------------------------------------------- 5. a unit retried: counts of all attempts


def _tiny_study(tmp_path):
    from dlor_scale.spec import load_study
    spec = {
        "name": "faults", "output_dir": str(tmp_path / "runs"),
        "target": {"kind": "teacher", "d_in": 3, "widths": [8], "n_train": 64, "n_val": 32, "n_test": 32, "seed": 0},
        "budgets": [120], "tolerance": 0.05,
        "families": {"dense": {"width": {"min": 2, "max": 64}, "depth": [0, 1, 2]}},
        "search_space": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True}},
        "sampler": {"kind": "random", "seed": 7}, "pruner": {"kind": "none"},
        "trials_per_cell": 4, "cohort_size": 2, "epochs": 20, "report_every": 5, "checkpoint_every": 1,
        "confirm": {"top_k": 1, "seeds": 2}, "resources": {"cpu": 1, "gpu": 0}, "device": "cpu",
        "compile": False,
    }
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_study(path), str(path)


def test_unit_resumed_after_failures_counts_every_member_and_heals_its_files(tmp_path, failpoints):
    from dlor_scale.plan import make_plan
    from dlor_scale.storages import storage
    from dlor_scale.targets import check_study_data
    from dlor_scale.tune import build_context, confirm_units, flush_all_outboxes, prepare_stores, search_units
    from dlor_scale.worker import run_unit

    study, source = _tiny_study(tmp_path)
    plan = make_plan(study)
    data = check_study_data(study)
    study = study.with_data_pinned(data.get("sha256"))
    ctx = build_context(study, source, threads=1, data=data)
    tracker, ctx = prepare_stores(ctx, plan)
    [unit] = search_units(study, plan)
    assert unit["quota"] == 4 and unit["slots"] == 2
    files = UnitFiles(ctx.study_dir, unit["id"])

    # attempt 1: the first wave finishes, then the connection drops between the refill's
    # ask and its sampling; the driver's drain of its records dies between batch and terminate
    failpoints("mlflow.complete:raise", "optuna.asked:raise:1:2")
    with pytest.raises(FailpointError):
        run_unit(ctx, unit)
    assert not files.is_done() and len(files.ledger_states()) == 2
    assert tracker.runs(kind="member") == []          # the trial only parks
    assert flush_all_outboxes(ctx) == 2               # the first write died: the pass stops
    ost = optuna.load_study(study_name=unit["optuna_study"], storage=storage(ctx.optuna_storage))
    assert [(t.number, t.state.name, sorted(t.params)) for t in ost.get_trials()][2] == (2, "RUNNING", [])
    # attempt 2: the trial gets its parameters; the unit dies after a checkpoint of the second wave
    failpoints("checkpoint.saved:raise:1:1")
    with pytest.raises(FailpointError):
        run_unit(ctx, unit)
    assert "lr" in ost.get_trials()[2].params
    # ... and that checkpoint is then cut in half (disk full, or a copy interrupted)
    data_ = files.checkpoint.read_bytes()
    files.checkpoint.write_bytes(data_[: len(data_) // 2])
    # attempt 3 sets the checkpoint aside, retrains the second wave from its trials,
    # and counts all four members, not only its own
    failpoints()
    out = run_unit(ctx, unit)
    assert files.checkpoint.with_name(files.checkpoint.name + ".corrupt").exists()
    assert out["completed"] + out["diverged"] + out["failed"] == 4 and out["asked"] == 4
    assert files.read_done()["completed"] == out["completed"]
    # an emptied marker: the unit is re-verified (nothing retrained) and counted again
    files.done.write_text("")
    again = run_unit(ctx, unit)
    assert {k: again[k] for k in ("completed", "pruned", "diverged", "failed", "asked")} == \
        {k: out[k] for k in ("completed", "pruned", "diverged", "failed", "asked")}
    assert again["model_steps"] == 0

    ost = optuna.load_study(study_name=unit["optuna_study"], storage=storage(ctx.optuna_storage))
    trials = ost.get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() and "lr" in t.params for t in trials)
    assert flush_all_outboxes(ctx) == 0
    members = tracker.runs(kind="member")
    assert sorted(r.data.tags["dlor.key"] for r in members) == sorted(f"faults/dense@120/t{t.number}" for t in trials)
    for r in members:
        assert r.info.status == "FINISHED" and r.data.tags["dlor.complete"] == "1"
        by_number = {t.number: t for t in trials}[int(r.data.tags["optuna.trial"])]
        assert {"completed": "COMPLETE", "pruned": "PRUNED"}.get(r.data.tags["state"], "FAIL") == by_number.state.name
        steps = [m.step for m in tracker.client.get_metric_history(r.info.run_id, "val_error")]
        assert len(steps) == len(set(steps)) == 4
    # the confirmation unit: killed writing the checkpoint after its members finished; retrained from
    # the previous one, its ledger stays one line per member
    [cunit] = confirm_units(study, plan, storage(ctx.optuna_storage))
    failpoints("checkpoint.write:raise:1:3")
    with pytest.raises(FailpointError):
        run_unit(ctx, cunit)
    failpoints()
    cout = run_unit(ctx, cunit)
    cfiles = UnitFiles(ctx.study_dir, cunit["id"])
    keys = [json.loads(x)["key"] for x in cfiles.ledger.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 2
    assert cout["completed"] + cout["diverged"] + cout["failed"] == 2
