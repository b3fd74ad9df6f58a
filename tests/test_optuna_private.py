"""The private Optuna APIs of `dlor_scale.optuna_private` still do what it relies on.

An Optuna upgrade that renames or changes one fails here, by name, instead of inside a
running study.
"""

from __future__ import annotations

import datetime

import optuna
from optuna.trial import TrialState

from dlor_scale.optuna_private import (
    append_intermediate_values,
    create_trial,
    forget_cached_trials,
    pop_waiting_trial,
    scoped_study,
    trial_id,
)
from dlor_scale.storages import storage


def _study(url=None):
    return optuna.create_study(storage=storage(url) if url else None, direction="minimize")


def test_trial_id_reattaches_a_trial():
    study = _study()
    study.ask()
    asked = study.ask()
    frozen = study.get_trials()[1]
    assert trial_id(asked) == trial_id(frozen)
    assert optuna.Trial(study, trial_id(frozen)).number == frozen.number == 1


def test_pop_waiting_trial_runs_an_enqueued_trial_once():
    study = _study()
    assert pop_waiting_trial(study) is None
    study.enqueue_trial({"lr": 0.1})
    tid = pop_waiting_trial(study)
    assert tid is not None and pop_waiting_trial(study) is None
    [t] = study.get_trials()
    assert trial_id(t) == tid and t.state == TrialState.RUNNING


def test_create_trial_stores_user_attrs_with_the_trial():
    study = _study()
    study.get_trials()
    template = optuna.trial.FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now(), datetime_complete=None, params={}, distributions={},
        user_attrs={"unit": "u1", "refill": True}, system_attrs={}, intermediate_values={}, trial_id=-1)
    tid = create_trial(study, template)
    forget_cached_trials(study)
    [t] = study.get_trials()
    assert trial_id(t) == tid and t.number == 0 and t.state == TrialState.RUNNING
    assert t.user_attrs == {"unit": "u1", "refill": True}


def test_append_intermediate_values_is_one_journal_write(tmp_path):
    study = _study(f"journal:///{tmp_path / 'o.journal'}")
    a, b = study.ask(), study.ask()
    assert append_intermediate_values(study, [(a, 10, 0.5), (b, 10, 0.7), (a, 20, 0.4)])
    assert [t.intermediate_values for t in study.get_trials()] == [{10: 0.5, 20: 0.4}, {10: 0.7}]
    assert a._cached_frozen_trial.intermediate_values == {10: 0.5, 20: 0.4}   # as trial.report leaves it
    again = optuna.load_study(study_name=study.study_name, storage=storage(f"journal:///{tmp_path / 'o.journal'}"))
    assert [t.intermediate_values for t in again.get_trials()] == [{10: 0.5, 20: 0.4}, {10: 0.7}]


def test_append_intermediate_values_declines_other_storages(tmp_path):
    for study in (_study(), _study(f"sqlite:///{tmp_path / 'o.db'}")):
        t = study.ask()
        assert append_intermediate_values(study, [(t, 10, 0.5)]) is False
        assert study.get_trials()[0].intermediate_values == {}


def test_samplers_read_trials_through_the_method_scoped_study_narrows():
    """TPE reads the study's trials through ``Study._get_trials``: a view that narrows it
    must change what TPE sees (a sampler that read them any other way would see all)."""
    study = _study()
    for unit, lr in (("a", 1e-3), ("b", 0.5)):
        for _ in range(12):
            t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
            t.set_user_attr("unit", unit)
            study.tell(t, abs(t.params["lr"] - lr))
    view = scoped_study(study, lambda t: t.user_attrs.get("unit") == "a")
    assert {t.user_attrs["unit"] for t in view._get_trials(deepcopy=False)} == {"a"}
    assert len(view.get_trials()) == len(view.trials) == 12 and len(study.trials) == 24
    assert view._study_id == study._study_id and view.directions == study.directions
