"""`worker.run_unit` on its own: no Ray, no MLflow. A fake tracker stands in for the outbox
(what a unit parks is what the driver would write), the Optuna storage is a real journal
file, and the unit's files (ledger, done marker, checkpoint) are the real ones."""

from __future__ import annotations

import pickle
from dataclasses import replace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dlor_scale import worker
from dlor_scale.plan import make_plan
from dlor_scale.run_schema import MEMBER_STATES, Kind, Tag
from dlor_scale.spec import load_study
from dlor_scale.storages import storage
from dlor_scale.studydir import UnitFiles
from dlor_scale.tune import build_context, confirm_units, search_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeTracker:
    """Records what a unit parks and logs instead of touching MLflow."""

    parked: list[tuple[dict, bool]] = []
    batches: list[tuple[str, dict]] = []

    def __init__(self, tracking_uri, experiment, *, outbox=None, **kw):
        self.outbox = outbox

    def park(self, record: dict, fresh: bool = False):
        FakeTracker.parked.append((record, fresh))

    def log_batch(self, run_id: str, **kw):
        FakeTracker.batches.append((run_id, kw))


@pytest.fixture
def unit_ctx(tmp_path, monkeypatch):
    """A tiny study's context with made-up MLflow run ids and its Optuna study created."""
    FakeTracker.parked, FakeTracker.batches = [], []
    monkeypatch.setattr(worker, "Tracker", FakeTracker)
    spec = {
        "name": "unit", "output_dir": str(tmp_path / "runs"),
        "target": {"kind": "teacher", "d_in": 3, "widths": [8], "n_train": 64, "n_val": 32, "n_test": 32,
                   "seed": 0},
        "budgets": [120], "tolerance": 0.05,
        "families": {"dense": {"width": {"min": 2, "max": 64}, "depth": [0, 1, 2]}},
        "search_space": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True}},
        "sampler": {"kind": "random", "seed": 7}, "pruner": {"kind": "none"},
        "trials_per_cell": 4, "cohort_size": 2, "epochs": 10, "report_every": 5,
        "confirm": {"top_k": 1, "seeds": 2}, "resources": {"cpu": 1, "gpu": 0}, "device": "cpu",
        "compile": False,
    }
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = load_study(path)
    plan = make_plan(study)
    ctx = build_context(study, str(path), threads=1)
    ctx = replace(ctx, study_run="study-run", cell_runs={c.key: f"run-of-{c.key}" for c in plan.cells})
    for cell in plan.cells:
        optuna.create_study(study_name=cell.optuna_study_name(study.name), storage=storage(ctx.optuna_storage),
                            direction="minimize")
    return ctx, plan


def test_context_pickles_as_is(unit_ctx):
    ctx, _ = unit_ctx
    again = pickle.loads(pickle.dumps(ctx))
    assert again == ctx and again.study.spec_hash() == ctx.study.spec_hash()
    with pytest.raises(AttributeError):
        ctx.threads = 2   # frozen: no unit changes what another sees


def test_search_unit_parks_every_member_and_leaves_ledger_marker_and_told_trials(unit_ctx):
    ctx, plan = unit_ctx
    [unit] = search_units(ctx.study, plan)
    files = UnitFiles(ctx.study_dir, unit["id"])

    out = worker.run_unit(ctx, unit)

    assert sum(out[s] for s in MEMBER_STATES) == 4 and out["asked"] == 4
    trials = optuna.load_study(study_name=unit["optuna_study"], storage=storage(ctx.optuna_storage)).get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    # one parked record per trial, first written by this attempt (fresh), under its cell run
    records = {r["tags"][Tag.OPTUNA_TRIAL]: (r, fresh) for r, fresh in FakeTracker.parked}
    assert sorted(records) == [t.number for t in trials]
    for t in trials:
        r, fresh = records[t.number]
        assert fresh and r["kind"] == Kind.MEMBER and r["parent_id"] == f"run-of-{unit['cell']}"
        assert r["key"] == f"unit/{unit['cell']}/t{t.number}"
        assert {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(
            r["tags"][Tag.STATE], TrialState.FAIL) == t.state
        assert r["tags"][Tag.UNIT] == unit["id"] and r["tags"][Tag.SPEC_HASH] == ctx.spec_hash
    # the unit's files: a ledger line per member, the done marker, no checkpoint left
    assert files.ledger_states() == {f"{unit['cell']}/t{t.number}": records[t.number][0]["tags"][Tag.STATE]
                                     for t in trials}
    assert files.read_done() == out and not files.checkpoint.exists()
    # nothing went to MLflow from the unit: the driver writes parked records and cell counts
    assert FakeTracker.batches == []

    # a finished unit returns its summary and trains nothing
    assert worker.run_unit(ctx, unit) == out and len(FakeTracker.parked) == 4


def test_confirm_unit_retrains_the_best_config_with_its_seeds(unit_ctx):
    ctx, plan = unit_ctx
    [unit] = search_units(ctx.study, plan)
    worker.run_unit(ctx, unit)
    FakeTracker.parked = []
    [cunit] = confirm_units(ctx.study, plan, storage(ctx.optuna_storage))

    out = worker.run_unit(ctx, cunit)

    assert sum(out[s] for s in MEMBER_STATES) == 2
    assert {r["tags"][Tag.PHASE] for r, _ in FakeTracker.parked} == {"confirm"}
    assert len({r["tags"][Tag.CONFIRM_OF] for r, _ in FakeTracker.parked}) == 1
    assert all(Tag.OPTUNA_TRIAL not in r["tags"] for r, _ in FakeTracker.parked)
    assert len(UnitFiles(ctx.study_dir, cunit["id"]).ledger_states()) == 2


def test_driver_records_cell_counts_once(unit_ctx, tmp_path):
    """After the search phase the driver logs each cell's counts on its cell run (real
    MLflow); a second call (a relaunch of the finished study) logs nothing again."""
    from dlor_scale.search import cell_counts
    from dlor_scale.tracking import Tracker
    from dlor_scale.tune import record_cell_counts
    ctx, plan = unit_ctx
    [unit] = search_units(ctx.study, plan)
    worker.run_unit(ctx, unit)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit", artifact_location=(tmp_path / "art").as_uri())
    run_id = tracker.get_or_create_run("unit/cell", name="cell", kind=Kind.CELL)
    ctx = replace(ctx, cell_runs={unit["cell"]: run_id})
    record_cell_counts(tracker, ctx, plan)
    record_cell_counts(tracker, ctx, plan)
    trials = optuna.load_study(study_name=unit["optuna_study"], storage=storage(ctx.optuna_storage)).get_trials()
    history = tracker.client.get_metric_history(run_id, "search.asked")
    assert [(m.value, m.step) for m in history] == [(4.0, 4)]
    assert tracker.client.get_run(run_id).data.metrics["search.completed"] == cell_counts(trials)["completed"]
