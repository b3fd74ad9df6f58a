"""Search inside lockstep cohorts: peer pruning, refill, waves, guard rails, counts.

The fast tests drive `OptunaSource` with a fake lockstep cohort (`run_lockstep`:
members advance one epoch per tick, report together, freed slots refill at once) and
an in-memory Optuna study, so pruning decisions are checked exactly; one test trains a
real `Cohort`. The MLflow side (refilled members get their own runs, cell counts on
the cell run) is the slow end-to-end test at the bottom.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from dlor_scale import run_schema, samplers, search
from dlor_scale.cohort import MemberResult, Report
from dlor_scale.pruners import LockstepHalvingPruner, LockstepHyperbandPruner, LockstepMedianPruner, halving_rungs
from dlor_scale.search import OptunaSource, cell_counts
from lockstep import curve, run_lockstep

SPACE = {"lr": type("D", (), {"type": "float", "low": 1e-6, "high": 1.0, "log": True, "step": None})()}


def make_study(pruner, sampler=None, enqueue=()):
    study = optuna.create_study(direction="minimize", pruner=pruner,
                                sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    for params in enqueue:
        study.enqueue_trial(params)
    return study


def planted(n_good=4, n_bad=4):
    """Good lr around 1e-2, bad lr far too large (and far from the optimum)."""
    good = [{"lr": v} for v in (0.008, 0.01, 0.012, 0.015)[:n_good]]
    bad = [{"lr": v} for v in (0.6, 0.7, 0.8, 0.9)[:n_bad]]
    return [x for pair in zip(bad, good) for x in pair]   # interleaved: order must not matter


def source_for(study, quota, final_epoch, **kw):
    return OptunaSource(study, unit="u/0", cell_key="dense@100", space=SPACE, quota=quota,
                        base_seed=0, final_epoch=final_epoch, **kw)


# ----------------------------------------------------------------------------- rungs


def test_halving_rungs_land_on_report_steps():
    assert halving_rungs(150, 10, "auto", 3) == [30, 90]      # a fifth of training, then ×η
    assert halving_rungs(1500, 30, "auto", 3) == [300, 900]
    assert halving_rungs(150, 10, 10, 2) == [10, 20, 40, 80]
    assert halving_rungs(100, 10, 25, 2) == [30, 50]       # 25 → next report step 30; 100 is the end
    assert halving_rungs(30, 10, 40, 2) == []               # first rung past the end: never prunes
    assert halving_rungs(160, 10, 10, 2, rate=1) == [20, 40, 80]


# ----------------------------------------------------------------------------- lockstep pruning


def test_planted_bad_half_is_pruned_at_the_first_rung_and_refilled():
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=60, report_every=10)
    study = make_study(pr, enqueue=planted())
    src = source_for(study, quota=12, final_epoch=60)
    results, rounds = run_lockstep(src, slots=8, epochs=60, report_every=10)
    trials = {t.number: t for t in study.get_trials()}
    bad = {n for n in range(8) if trials[n].params["lr"] > 0.5}
    assert len(bad) == 4
    # every bad member is pruned at the first rung (epoch 10), no good one is
    first_epochs, first_pruned = rounds[0]
    assert first_epochs == [10] * 8
    assert {int(k.rsplit("t", 1)[1]) for k in first_pruned} == bad
    for n in bad:
        assert trials[n].state == TrialState.PRUNED
        assert dict(trials[n].intermediate_values) == {10: pytest.approx(curve(trials[n].params["lr"], 10))}
        assert trials[n].value == pytest.approx(curve(trials[n].params["lr"], 10))  # TPE sees it
    # the freed slots were refilled straight away, as new Optuna trials
    assert len(trials) == 12
    assert all(trials[n].user_attrs.get("refill") for n in range(8, 12))
    assert not any(trials[n].user_attrs.get("refill") for n in range(8))
    assert src.counts["refilled"] == 4
    assert cell_counts(study.get_trials())["refilled"] == 4
    # only the rungs are told (no intermediate value at non-rung steps)
    for t in trials.values():
        assert set(t.intermediate_values) <= {10, 20, 40}
    # the first wave halves at every rung: 8 → 4 → 2 → 1 of the originals complete
    originals = [t for n, t in trials.items() if n < 8]
    assert sum(t.state == TrialState.COMPLETE for t in originals) == 1


def test_stock_median_pruner_never_fires_in_lockstep_but_lockstep_median_does():
    """The bug this module fixes: nothing completes before the wave ends, so Optuna's
    MedianPruner has no reference; the lockstep one compares running peers."""
    for pruner, expect in ((optuna.pruners.MedianPruner(n_startup_trials=3), 0),
                           (LockstepMedianPruner(n_startup_trials=3, epochs=50, report_every=10), 4)):
        study = make_study(pruner, enqueue=planted())
        run_lockstep(source_for(study, quota=8, final_epoch=50), slots=8, epochs=50, report_every=10)
        pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
        assert len(pruned) == expect, type(pruner).__name__
        assert all(t.params["lr"] > 0.5 for t in pruned)


def test_median_does_not_cascade_over_survivors():
    """Pruned members keep counting (with their last value) at later steps, so the
    survivors of one round are not halved again at every report."""
    pr = LockstepMedianPruner(n_startup_trials=3, epochs=50, report_every=10)
    study = make_study(pr, enqueue=planted())
    _, rounds = run_lockstep(source_for(study, quota=8, final_epoch=50), slots=8, epochs=50, report_every=10)
    assert [len(p) for _, p in rounds] == [4, 0, 0, 0, 0]


def test_startup_count_is_peers_at_the_step():
    """n_startup_trials counts other trials at the same step: with 8 members, 7 peers."""
    for n_startup, expect in ((7, 4), (8, 0)):
        pr = LockstepMedianPruner(n_startup_trials=n_startup, epochs=30, report_every=10)
        study = make_study(pr, enqueue=planted())
        run_lockstep(source_for(study, quota=8, final_epoch=30), slots=8, epochs=30, report_every=10)
        assert sum(t.state == TrialState.PRUNED for t in study.get_trials()) == expect


def test_never_pruned_at_the_last_epoch():
    pr = LockstepMedianPruner(n_startup_trials=1, epochs=10, report_every=10)
    study = make_study(pr, enqueue=planted())
    run_lockstep(source_for(study, quota=8, final_epoch=10), slots=8, epochs=10, report_every=10)
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())


def test_refills_are_judged_against_the_rung_history():
    """A refilled member reaches the rung alone; it is judged against every trial that
    reached it before (ASHA), not waved through for lack of company."""
    pr = LockstepHalvingPruner(min_resource=20, reduction_factor=2, epochs=60, report_every=10)
    lrs = [{"lr": v} for v in (0.01, 0.011, 0.012, 0.013, 0.5, 0.6, 0.7, 0.8)] + [{"lr": 0.9}, {"lr": 0.0101}]
    study = make_study(pr, enqueue=lrs)
    run_lockstep(source_for(study, quota=10, final_epoch=60), slots=8, epochs=60, report_every=10)
    t = {x.number: x for x in study.get_trials()}
    assert t[8].state == TrialState.PRUNED and t[8].last_step == 20     # bad refill: pruned alone
    assert t[9].state == TrialState.COMPLETE                            # good refill: kept


def test_early_stopped_members_count_at_later_rungs():
    """A member that stopped early on a plateau finished with its best value; later
    rungs still compare against it."""
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=80, report_every=10)
    study = make_study(pr)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)},
        value=0.05, intermediate_values={10: 0.2}, state=TrialState.COMPLETE))
    table = pr.table(study.get_trials(), 40)
    assert table == {0: 0.05}
    assert pr.judge(1, 40, 0.3, table)      # worse than the early-stopped member: pruned
    assert not pr.judge(1, 40, 0.04, table)


def test_hyperband_judges_within_brackets():
    pr = LockstepHyperbandPruner(min_resource=10, reduction_factor=3, epochs=90, report_every=10)
    assert len(pr.brackets) == 3 and pr.brackets[-1] == []        # the last bracket never prunes
    peers = {1: 0.1, 2: 0.1, 4: 0.1}                               # trial 1, 4 share bracket 1 with 7
    assert pr.bracket(7) == 1
    assert pr.judge(7, 10, 0.5, peers)                            # behind both bracket-mates
    assert not pr.judge(7, 10, 0.05, peers)


# ----------------------------------------------------------------------------- sampling in waves


def test_tpe_startup_is_the_first_wave_and_refills_learn():
    assert samplers.tpe_startup("auto", 8) == 4
    assert samplers.tpe_startup("auto", 64) == 10
    assert samplers.tpe_startup(3, 64) == 3
    cfg = type("C", (), {"kind": "tpe", "n_startup_trials": "auto", "multivariate": True,
                         "constant_liar": True})()
    sampler = samplers.make_sampler(cfg, seed=1, slots=8)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)
    study = make_study(pr, sampler=sampler)
    src = source_for(study, quota=24, final_epoch=40)
    run_lockstep(src, slots=8, epochs=40, report_every=10)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    first = [abs(math.log10(t.params["lr"]) + 2) for t in trials[:8]]
    late = [abs(math.log10(t.params["lr"]) + 2) for t in trials[-8:]]
    # later waves, sampled by TPE from told (incl. pruned) results, sit nearer the optimum
    assert sum(late) / len(late) < 0.6 * sum(first) / len(first)
    # and a wave of parallel asks is not one guess repeated (constant liar)
    assert len({round(t.params["lr"], 6) for t in trials[8:12]}) == 4


# ----------------------------------------------------------------------------- exactly once


def test_resumed_unit_neither_reasks_nor_double_counts():
    """Kill a unit mid-run (after a rung), resume from its checkpointed members: the
    resumed source re-attaches running trials, replays finished ones, asks only what
    was never asked, and the cell ends with exactly `quota` trials."""
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)
    study = make_study(pr, enqueue=planted())
    src = source_for(study, quota=12, final_epoch=40)

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash_after_two_rounds(lr, epoch):
        if epoch == 20:
            calls["n"] += 1
            if calls["n"] > 3:
                raise Crash
        return curve(lr, epoch)

    with pytest.raises(Crash):
        run_lockstep(src, slots=8, epochs=40, report_every=10, val=crash_after_two_rounds)
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert running
    # no checkpoint: every running trial is handed out again before anything new is asked
    src2 = source_for(study, quota=12, final_epoch=40)
    assert src2.started == 12 and len(src2.requeue) == len(running)
    assert src2.freed                    # slots were freed earlier: asks would be refills
    run_lockstep(src2, slots=8, epochs=40, report_every=10)
    assert len(study.get_trials()) == 12
    assert all(t.state.is_finished() for t in study.get_trials())
    assert src2.counts["asked"] == 0
    assert src2.unit_counts() == {"asked": 12, "refilled": 4}   # counted once over both attempts


def test_replayed_pruned_member_is_pruned_again_at_the_same_step():
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)
    study = make_study(pr, enqueue=planted())
    run_lockstep(source_for(study, quota=8, final_epoch=40), slots=8, epochs=40, report_every=10)
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    # a checkpoint taken before they were pruned lists them as in flight
    src = source_for(study, quota=8, final_epoch=40, in_flight={t.number for t in pruned})
    keys = {f"dense@100/t{t.number}": t.last_step for t in pruned}
    assert set(src.replay) == set(keys) and set(keys.values()) == {10, 20}
    # before its pruning step a replayed member trains on; at it, it is pruned again
    assert src.on_report_round([Report(k, s - 10, 1.0, 1.0) for k, s in keys.items() if s > 10]) == set()
    assert src.on_report_round([Report(k, s, 1.0, 1.0) for k, s in keys.items()]) == set(keys)
    assert src.started == 8 and src.next_member() is None


def test_resume_best_restores_running_best():
    pr = LockstepMedianPruner(n_startup_trials=1, epochs=40, report_every=10)
    study = make_study(pr)
    src = source_for(study, quota=2, final_epoch=40)
    a, b = src.next_member(), src.next_member()
    src.on_report_round([Report(a.key, 10, 0, 0.5), Report(b.key, 10, 0, 0.4)])
    # resumed: a had reached 0.1 before the checkpoint; its report at 20 (0.3) must not hide it
    src2 = source_for(study, quota=2, final_epoch=40, in_flight={0, 1}, resume_best={a.key: 0.1})
    pruned = src2.on_report_round([Report(a.key, 20, 0, 0.3), Report(b.key, 20, 0, 0.35)])
    assert pruned == {b.key}
    assert study.get_trials()[0].intermediate_values[20] == pytest.approx(0.1)


# ----------------------------------------------------------------------------- a real cohort


def test_real_cohort_prunes_planted_bad_half_at_first_rung(one_torch_thread):
    from dlor_scale.cohort import Cohort
    from dlor_scale.models import Shape
    from dlor_scale.targets import Dataset

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 1, generator=g)

    def split(n):
        x = torch.rand(n, 3, generator=g) * 2 - 1
        return x, torch.tanh(2 * x @ w)

    (xt, yt), (xv, yv), (xs, ys) = split(128), split(64), split(64)
    data = Dataset("t", xt, yt, xv, yv, xs, ys)
    shape = Shape(family="dense", d_in=3, d_out=1, width=8, depth=1)
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)
    good = [{"lr": v} for v in (0.02, 0.03, 0.04, 0.05)]
    bad = [{"lr": v} for v in (1e-5, 2e-5, 3e-5, 4e-5)]      # far too small: no progress
    study = make_study(pr, enqueue=[x for p in zip(bad, good) for x in p])
    src = source_for(study, quota=12, final_epoch=40)
    Cohort(shape, data, slots=8, epochs=40, report_every=10, compile=False).run(src)
    trials = {t.number: t for t in study.get_trials()}
    assert len(trials) == 12
    for n in range(8):
        if trials[n].params["lr"] < 1e-4:
            assert trials[n].state == TrialState.PRUNED and trials[n].last_step == 10, n
    assert sum(t.state == TrialState.PRUNED and t.last_step == 10 for n, t in trials.items() if n < 8) == 4
    assert all(trials[n].user_attrs.get("refill") for n in range(8, 12))
    assert src.counts["pruned"] >= 4 and src.counts["refilled"] == 4


# ----------------------------------------------------------------------------- guard rails


def _spec(**over):
    base = {
        "name": "g", "target": {"kind": "teacher", "d_in": 2, "widths": [4], "n_train": 64, "n_val": 32,
                                 "n_test": 32, "seed": 0},
        "budgets": [100], "tolerance": 0.2, "families": {"dense": {"width": {"min": 2, "max": 32}, "depth": 1}},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        "trials_per_cell": 16, "cohort_size": 8, "epochs": 100, "report_every": 10,
    }
    return {**base, **over}


def _paths(**over):
    from dlor_scale.spec import parse_study, search_problems
    return [p.path for p in search_problems(parse_study(_spec(**over)))]


def test_defaults_have_no_search_warnings():
    from dlor_scale.spec import parse_study, search_warnings
    raw = _spec()
    for k in ("trials_per_cell", "cohort_size"):
        raw.pop(k)
    assert search_warnings(parse_study(raw)) == []
    assert _paths() == []


@pytest.mark.parametrize("over, path", [
    ({"pruner": {"kind": "median", "n_startup_trials": 16}}, "pruner.n_startup_trials"),
    ({"pruner": {"kind": "percentile", "percentile": 25, "n_min_trials": 20}}, "pruner.n_min_trials"),
    ({"pruner": {"kind": "median", "n_warmup_steps": 95}}, "pruner.n_warmup_steps"),
    ({"pruner": {"kind": "successive_halving", "min_resource": 100}}, "pruner.min_resource"),
    ({"cohort_size": 16}, "trials_per_cell"),
    ({"cohort_size": "auto"}, "trials_per_cell"),
    ({"sampler": {"kind": "tpe", "n_startup_trials": 12}}, "sampler.n_startup_trials"),
    ({"pruner": {"kind": "wilcoxon"}, "cohort_size": 16, "sampler": {"kind": "random"}}, "pruner.kind"),
])
def test_search_that_cannot_prune_or_learn_is_warned(over, path):
    assert _paths(**over) == [path]


def test_warnings_name_the_fix_and_strict_refuses():
    from dlor_scale.errors import SpecError
    from dlor_scale.spec import parse_study, search_warnings
    [line] = search_warnings(parse_study(_spec(pruner={"kind": "median", "n_startup_trials": 16})))
    assert line.startswith("pruner.n_startup_trials: ")
    assert "16 trials (trials_per_cell)" in line and "fix: pruner.n_startup_trials ≤ 8" in line
    # random search in one wave is deliberate: no learning warning
    assert _paths(cohort_size=16, sampler={"kind": "random"}) == []
    with pytest.raises(SpecError, match=r"trials_per_cell: strict: all 16 trials"):
        parse_study(_spec(cohort_size=16, strict=True))


# ----------------------------------------------------------------------------- status + MLflow counts


def test_status_shows_asked_running_completed_pruned_at_rungs_refilled(tmp_path):
    import json

    from typer.testing import CliRunner

    from dlor_scale.cli import app
    from dlor_scale.storages import storage

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    (tmp_path / "study.json").write_text(json.dumps({"name": "st", "optuna_storage": url,
                                                     "tracking_uri": "sqlite:///x.db"}))
    pr = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=60, report_every=10)
    study = optuna.create_study(study_name="st/dense@100", storage=storage(url), direction="minimize",
                                pruner=pr, sampler=optuna.samplers.RandomSampler(seed=0))
    for p in planted():
        study.enqueue_trial(p)
    src = source_for(study, quota=12, final_epoch=60)
    run_lockstep(src, slots=8, epochs=60, report_every=10)
    study.ask()                                     # one trial still running
    c = cell_counts(study.get_trials())
    assert c == {"asked": 13, "running": 1, "completed": c["completed"], "pruned": c["pruned"], "failed": 0,
                 "refilled": 4, "pruned_at": c["pruned_at"]}
    assert c["pruned_at"][10] == 4 + 2 and c["completed"] + c["pruned"] == 12
    r = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if "dense@100" in line)
    cells = [x.strip() for x in row.strip("│ ").split("│")]
    assert cells[:4] == ["dense@100", "13", "1", str(c["completed"])]
    assert cells[4] == str(c["pruned"]) and cells[5].startswith("6@10") and cells[6] == "4"
    assert run_schema.count_metrics(c)["search.pruned_at_10"] == 6.0
    # finished units: only markers holding a summary count (an empty one is re-run by launch)
    units = tmp_path / "units"
    units.mkdir()
    (units / "search_dense@100_0.done.json").write_text(json.dumps({"completed": 6}))
    (units / "search_dense@200_0.done.json").write_text("")
    r = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert r.exit_code == 0 and "1 cohort units finished" in " ".join(r.output.split()), r.output
    assert (units / "search_dense@200_0.done.json").exists()   # status moves nothing


@pytest.mark.slow
def test_study_refills_get_their_own_runs_and_the_cell_run_carries_the_counts(tmp_path):
    """End to end (Ray, MLflow, journal Optuna): a cell whose trials exceed its slots is
    pruned in lockstep and refilled; every refilled member is its own Optuna trial with
    its own MLflow run, and the cell run carries the same counts as `cell_counts`."""
    import yaml
    from mlflow.tracking import MlflowClient
    from studycheck import check_records
    from test_study_e2e import TINY

    from dlor_scale.plan import make_plan
    from dlor_scale.storages import storage
    from dlor_scale.spec import load_study
    from dlor_scale.tune import launch

    spec = {**TINY, "name": "refill", "output_dir": str(tmp_path / "runs"), "trials_per_cell": 8, "cohort_size": 4,
            "sampler": {"kind": "tpe", "seed": 0},
            "pruner": {"kind": "successive_halving", "min_resource": 10, "reduction_factor": 2},
            "confirm": {"top_k": 1, "seeds": 1}}
    path = tmp_path / "refill.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = load_study(path)
    result = launch(study, str(path), cpus=2)
    runs = check_records(study, result)
    members = {(r.data.tags["dlor.cell"], int(r.data.tags["optuna.trial"])): r for r in runs
               if r.data.tags.get("kind") == "member" and r.data.tags["dlor.phase"] == "search"}
    cells = {r.data.tags["dlor.cell"]: r for r in runs if r.data.tags.get("kind") == "cell"}
    client = MlflowClient(result.tracking_uri)
    for cell in make_plan(study).cells:
        trials = optuna.load_study(study_name=cell.optuna_study_name(study.name),
                                   storage=storage(result.optuna_storage)).get_trials()
        refills = [t for t in trials if t.user_attrs.get("refill")]
        assert len(refills) == 4, cell.key                  # 8 trials through 4 slots
        for t in refills:
            assert (cell.key, t.number) in members           # its own MLflow run
        c = cell_counts(trials)
        metrics = client.get_run(cells[cell.key].info.run_id).data.metrics
        for k, v in run_schema.count_metrics(c).items():
            assert metrics[k] == v, (cell.key, k)
        assert c["pruned"] > 0 and c["pruned_at"]
