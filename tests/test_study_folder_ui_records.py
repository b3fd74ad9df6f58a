"""What a study's MLflow records say to a person browsing them (issue 14), checked fast
on an SQLite store without Ray or a browser (tests/test_mlflow_ui.py checks the rendered
UI): the experiment is tagged as model training, member runs have short distinct names,
pruned members are marked, durations are training time, unidentified fits say so.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from dlor_scale.tracking import Tracker, describe_fit_runs, member_run_name, ui_url


def _tracker(tmp_path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "s", outbox=tmp_path / "outbox")


def _record(key, state, wall=12.5, **extra_tags):
    tags = {"state": state, "dlor.cell": "dlor_deep@120", "dlor.phase": "search", "dlor.seed": 3,
            "optuna.trial": int(key.rsplit("/t", 1)[-1]) if "/t" in key else 0, **extra_tags}
    return {"key": key, "name": key.replace("/", " "), "kind": "member", "parent_id": None, "params": {"lr": 0.01},
            "tags": tags, "curves": {"val_error": [(10, 0.5), (20, 0.4)]},
            "finals": {"test_error": 0.4, "wall_time_s": wall, "epochs_trained": 20},
            "status": "FINISHED"}


def test_member_names_lead_with_their_own_key():
    assert member_run_name("s/dlor_deep@120/t3", {"state": "completed", "dlor.cell": "dlor_deep@120"}) \
        == "t3 · dlor_deep@120"
    assert member_run_name("s/dlor_deep@120/t3", {"state": "pruned", "dlor.cell": "dlor_deep@120"}) \
        == "t3 pruned · dlor_deep@120"
    assert member_run_name("s/dlor_wide@800/c5s0", {"state": "diverged", "dlor.cell": "dlor_wide@800"}) \
        == "c5s0 diverged · dlor_wide@800"


def test_member_runs_are_readable(tmp_path):
    tr = _tracker(tmp_path)
    done = tr.record_run(**_record("s/dlor_deep@120/t0", "completed"))
    pruned = tr.record_run(**_record("s/dlor_deep@120/t1", "pruned", wall=3.0))
    c = MlflowClient(tr.uri)
    exp = c.get_experiment(tr.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    d, p = c.get_run(done), c.get_run(pruned)
    assert d.info.run_name == "t0 · dlor_deep@120" and p.info.run_name == "t1 pruned · dlor_deep@120"
    assert p.data.tags["dlor.pruned"] == "1" and "dlor.pruned" not in d.data.tags
    assert "PRUNED" in p.data.tags["mlflow.note.content"] and "PRUNED" not in d.data.tags["mlflow.note.content"]
    assert "Optuna trial 1" in p.data.tags["mlflow.note.content"]
    for run, wall in ((d, 12.5), (p, 3.0)):   # the duration shown is the training, not the write
        dur = (run.info.end_time - run.info.start_time) / 1000
        assert wall <= dur < wall + 5, (dur, wall)
    # a replay writes nothing new and keeps the name
    assert tr.record_run(**_record("s/dlor_deep@120/t1", "pruned", wall=3.0)) == pruned
    assert len(c.search_runs([tr.experiment_id])) == 2


def test_describe_experiment_is_idempotent_and_upgrades_old_experiments(tmp_path):
    tr = _tracker(tmp_path)
    c = MlflowClient(tr.uri)
    exp_id = c.create_experiment("s")   # made by an older version: no tags
    tr.describe_experiment("study s")
    tr.describe_experiment("study s")
    tags = c.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "study s"
    assert ui_url("http://h:5000/", exp_id) == f"http://h:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def test_unidentified_fits_say_so(tmp_path):
    tr = _tracker(tmp_path)
    rid = tr.get_or_create_run("s/fit", name="fit saturating", kind="fit", tags={"dlor.study": "s",
                                                                                  "fit.form": "saturating"})
    tr.log_batch(rid, metrics=[("dlor_deep.alpha", 0.0, 0), ("dlor_deep.alpha_lo", 0.0, 0),
                               ("dlor_deep.alpha_hi", 5.0, 0), ("dlor_deep.alpha_identified", 0.0, 0),
                               ("dlor_wide.alpha", 0.45, 0), ("dlor_wide.alpha_lo", 0.38, 0),
                               ("dlor_wide.alpha_hi", 0.52, 0), ("dlor_wide.alpha_identified", 1.0, 0),
                               ("dlor_deep_vs_dlor_wide.identified", 0.0, 0)])
    assert describe_fit_runs(tr) == 1
    assert describe_fit_runs(tr) == 0   # idempotent
    r = MlflowClient(tr.uri).get_run(rid)
    t = r.data.tags
    assert t["dlor.identified"] == "partial" and t["dlor.not_identified"] == "dlor_deep"
    assert "dlor_deep: α NOT IDENTIFIED" in t["mlflow.note.content"]
    assert "dlor_wide: α = 0.45 [0.38, 0.52]" in t["mlflow.note.content"]
    assert "Δα dlor_deep vs dlor_wide: **not identified**" in t["mlflow.note.content"]
    assert r.info.run_name == "fit saturating · not identified: dlor_deep"
