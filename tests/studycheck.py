"""Invariants every finished study must satisfy (shared by the e2e, cluster, chaos and
fault-injection tests): one MLflow run per member, study → cell → member nesting,
Optuna trial states equal to MLflow state tags, no duplicate (run, key, step) metric
points, every run terminated with the right status, a fit run, a point per cell."""

from collections import Counter

def check_records(study, result, *, expect_pruned=True, expect_fit=True):
    """The invariants every finished study must satisfy."""
    import optuna
    from mlflow.tracking import MlflowClient

    from dlor_scale.plan import make_plan
    from dlor_scale.storages import storage

    plan = make_plan(study)
    client = MlflowClient(result.tracking_uri)
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    by_kind = Counter(r.data.tags.get("kind") for r in runs)
    assert by_kind["study"] == 1
    assert by_kind["cell"] == len(plan.cells)
    study_run = next(r for r in runs if r.data.tags["kind"] == "study")
    cells = {r.data.tags["dlor.cell"]: r for r in runs if r.data.tags["kind"] == "cell"}
    assert all(c.data.tags["mlflow.parentRunId"] == study_run.info.run_id for c in cells.values())
    members = [r for r in runs if r.data.tags["kind"] == "member"]
    keys = [r.data.tags["dlor.key"] for r in members]
    assert len(keys) == len(set(keys)), "duplicate member runs"
    for m in members:
        assert m.data.tags["mlflow.parentRunId"] == cells[m.data.tags["dlor.cell"]].info.run_id
    # every run terminated, with the status its outcome calls for
    assert study_run.info.status == "FINISHED", study_run.info.status
    for c in cells.values():
        assert c.info.status == "FINISHED", (c.data.tags["dlor.cell"], c.info.status)
    for m in members:
        assert m.data.tags.get("dlor.complete") == "1", m.data.tags["dlor.key"]
        want = "FINISHED" if m.data.tags["state"] in ("completed", "pruned") else "FAILED"
        assert m.info.status == want, (m.data.tags["dlor.key"], m.data.tags["state"], m.info.status)
        for key in ("train_loss", "val_error"):
            steps = [x.step for x in client.get_metric_history(m.info.run_id, key)]
            assert len(steps) == len(set(steps)), ("duplicate (run, key, step) points", m.data.tags["dlor.key"], key)
    if expect_fit:
        fits = [r for r in runs if r.data.tags.get("kind") == "fit"]
        assert fits, "no fit run"
        assert all(f.info.status == "FINISHED" and f.data.tags.get("dlor.complete") == "1" for f in fits)
    assert all(r.info.status != "RUNNING" for r in runs), [
        r.data.tags.get("dlor.key") for r in runs if r.info.status == "RUNNING"]
    search = [m for m in members if m.data.tags["dlor.phase"] == "search"]
    confirm = [m for m in members if m.data.tags["dlor.phase"] == "confirm"]
    assert len(search) == len(plan.cells) * study.trials_per_cell
    assert len(confirm) == len(plan.cells) * study.confirm.top_k * study.confirm.seeds

    ost = storage(result.optuna_storage)
    n_pruned = 0
    for cell in plan.cells:
        ostudy = optuna.load_study(study_name=cell.optuna_study_name(study.name), storage=ost)
        trials = {t.number: t for t in ostudy.get_trials()}
        assert len(trials) == study.trials_per_cell, "duplicate or missing Optuna trials"
        cell_runs = [m for m in search if m.data.tags["dlor.cell"] == cell.key]
        assert sorted(int(m.data.tags["optuna.trial"]) for m in cell_runs) == sorted(trials)
        for m in cell_runs:
            t = trials[int(m.data.tags["optuna.trial"])]
            state = m.data.tags["state"]
            expected = {"completed": "COMPLETE", "pruned": "PRUNED"}.get(state, "FAIL")
            assert t.state.name == expected, (m.data.tags["dlor.key"], state, t.state)
            steps = [x.step for x in client.get_metric_history(m.info.run_id, "val_error")]
            assert len(steps) == len(set(steps)), "duplicate metric steps"
            if state == "pruned":
                n_pruned += 1
                assert len(steps) < study.epochs // study.report_every
                assert max(steps) < study.epochs
            elif state == "completed":
                assert len(steps) == study.epochs // study.report_every
            assert m.data.params["n_params_total"] == str(cell.shapes[0].n_params)
            for k in ("test_error", "best_val", "wall_time_s"):
                assert k in m.data.metrics
    if expect_pruned:
        assert n_pruned > 0, "the median pruner never pruned: the test would not see pruning"

    from dlor_scale.scaling import points_from_runs
    from dlor_scale.records import member_runs
    from dlor_scale.tracking import Tracker
    table = member_runs(Tracker(result.tracking_uri, study.name))
    points = points_from_runs(table)
    assert points.num_rows == len(plan.cells)
    return runs
