"""Fewer, cheaper Optuna writes (issue 13 item 2).

A report round reaches Optuna only at the steps the lockstep pruner reads, and on a
journal storage the whole round is one append (one lock + fsync) instead of one per
member. Decisions, stored values and resume must be exactly those of the per-trial path.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from dlor_scale.pruners import LockstepHalvingPruner, LockstepMedianPruner
from dlor_scale.storages import storage
from test_search import curve, planted, run_lockstep, source_for


def journal_study(tmp_path, pruner, name="cell"):
    study = optuna.create_study(study_name=name, storage=storage(f"journal:///{tmp_path / 'o.journal'}"),
                                direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for p in planted():
        study.enqueue_trial(p)
    return study


def memory_study(pruner):
    study = optuna.create_study(direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for p in planted():
        study.enqueue_trial(p)
    return study


def halving():
    return LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)


def outcome(study):
    return [(t.number, t.state, t.value, dict(t.intermediate_values), t.params) for t in study.get_trials()]


@pytest.fixture
def appends(monkeypatch):
    """Every journal append, as the list of op codes it carried."""
    calls = []
    real = JournalFileBackend.append_logs

    def spy(self, logs):
        calls.append([int(log["op_code"]) for log in logs])
        return real(self, logs)
    monkeypatch.setattr(JournalFileBackend, "append_logs", spy)
    return calls


def test_a_round_is_one_append_and_matches_the_per_trial_path(tmp_path, appends):
    from optuna.storages.journal._storage import JournalOperation as Op
    ref = memory_study(halving())
    run_lockstep(source_for(ref, quota=12, final_epoch=40), slots=8, epochs=40, report_every=10)
    study = journal_study(tmp_path, halving())
    appends.clear()
    _, rounds = run_lockstep(source_for(study, quota=12, final_epoch=40), slots=8, epochs=40, report_every=10)
    assert outcome(study) == outcome(ref)        # same decisions, values, curves at the rungs
    value_appends = [c for c in appends if Op.SET_TRIAL_INTERMEDIATE_VALUE in c]
    assert all(set(c) == {Op.SET_TRIAL_INTERMEDIATE_VALUE} for c in value_appends)   # never mixed
    assert len(value_appends) <= len(rounds)      # at most one append per round ...
    assert max(len(c) for c in value_appends) > 1  # ... carrying several members
    rungs = set(halving().rungs)
    for t in study.get_trials():                  # only the rungs the pruner reads are stored
        assert set(t.intermediate_values) <= rungs
        if t.state == TrialState.PRUNED:          # pruned: told with its rung value (TPE sees it)
            assert t.intermediate_values and t.value == t.intermediate_values[t.last_step]


def test_median_interval_stores_only_the_read_steps(tmp_path):
    pr = LockstepMedianPruner(n_startup_trials=2, n_warmup_steps=20, interval_steps=30, epochs=100,
                              report_every=10)
    study = journal_study(tmp_path, pr)
    run_lockstep(source_for(study, quota=8, final_epoch=100), slots=8, epochs=100, report_every=10)
    assert pr.read == {20, 50, 80}
    assert all(set(t.intermediate_values) <= pr.read for t in study.get_trials())
    assert any(t.intermediate_values for t in study.get_trials())


def test_resume_after_a_crash_is_exact_on_the_journal(tmp_path):
    """A unit killed mid-run resumes on the journal: no trial asked twice, every trial
    finished once, stored steps unchanged by the re-reported rounds."""
    study = journal_study(tmp_path, halving())

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash(lr, epoch):
        if epoch == 20:
            calls["n"] += 1
            if calls["n"] > 3:
                raise Crash
        return curve(lr, epoch)

    with pytest.raises(Crash):
        run_lockstep(source_for(study, quota=12, final_epoch=40), slots=8, epochs=40, report_every=10,
                     val=crash)
    before = {t.number: dict(t.intermediate_values) for t in study.get_trials()}
    # a fresh process view of the same journal
    again = optuna.load_study(study_name="cell", storage=storage(f"journal:///{tmp_path / 'o.journal'}"),
                              pruner=halving(), sampler=optuna.samplers.RandomSampler(seed=0))
    src = source_for(again, quota=12, final_epoch=40)
    run_lockstep(src, slots=8, epochs=40, report_every=10)
    trials = again.get_trials()
    assert len(trials) == 12 and all(t.state.is_finished() for t in trials) and src.counts["asked"] == 0
    for n, iv in before.items():                  # what was stored stays, at the same values
        assert {s: v for s, v in trials[n].intermediate_values.items() if s in iv} == iv
