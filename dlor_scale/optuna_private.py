"""Every private Optuna API dlor-scale relies on, in one place (checked against optuna 5.0).

Why any: `search.OptunaSource` needs three things public Optuna does not offer, and each
use below says which. An Optuna upgrade that breaks one fails here and in
tests/test_optuna_private.py, not deep inside a running study.

* a trial's storage id (`trial_id`): ``optuna.Trial(study, trial_id)`` is the public way
  to re-attach a trial, but neither `FrozenTrial` nor `Trial` exposes the id it takes;
* an ask that stores its user attributes in the same commit that creates the trial
  (`create_trial`, `pop_waiting_trial`): ``study.ask()`` creates first and sets
  attributes after, so a connection dropped in between leaves a RUNNING trial no unit
  owns (exactly-once asks need the single commit);
* one journal append for a whole report round (`append_intermediate_values`): each
  ``trial.report`` is its own append (file lock + write + fsync);
* a study that shows a sampler only some of its trials (`scoped_study`): Optuna's samplers
  read trials through the private ``Study._get_trials``, and a part of a split cell must
  sample from its own trials alone (`samplers.ScopedSampler`).
"""

from __future__ import annotations

import optuna

#: `JournalStorage` internals `append_intermediate_values` needs.
_JOURNAL_PARTS = ("_backend", "_replay_result", "_thread_lock", "_sync_with_backend")


def trial_id(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The storage id of a trial (what ``optuna.Trial(study, trial_id)`` takes)."""
    return trial._trial_id


def pop_waiting_trial(study: optuna.Study) -> int | None:
    """Id of an enqueued (WAITING) trial, now RUNNING, or None: what ``study.ask()`` does
    first, without its create-if-none."""
    return study._pop_waiting_trial_id()


def create_trial(study: optuna.Study, template: optuna.trial.FrozenTrial) -> int:
    """Create a trial from ``template`` (user attributes included) in one storage commit;
    then `forget_cached_trials`, as ``study.ask()`` does."""
    return study._storage.create_new_trial(study._study_id, template)


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's per-thread trial cache after a trial was added behind its back
    (the cache is what ``study.ask()``/``tell()`` read)."""
    study._thread_local.cached_all_trials = None


def append_intermediate_values(study: optuna.Study, rows: list[tuple[optuna.Trial, int, float]]) -> bool:
    """Store ``(trial, step, value)`` rows in one journal append; False (nothing written)
    when the study's storage is not a journal this knows how to batch, so the caller
    reports trial by trial. Safe to repeat: the journal applies a rewrite of the same
    values idempotently. The trials' cached copies are updated like ``trial.report``."""
    st = study._storage
    if not all(hasattr(st, a) for a in _JOURNAL_PARTS):
        return False
    from optuna.storages.journal._storage import JournalOperation

    with st._thread_lock:
        wid = st._replay_result.worker_id
        st._backend.append_logs([
            {"op_code": JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE, "worker_id": wid,
             "trial_id": trial_id(trial), "step": int(step), "intermediate_value": float(value)}
            for trial, step, value in rows])
        st._sync_with_backend()
    for trial, step, value in rows:
        cached = getattr(trial, "_cached_frozen_trial", None)
        if cached is not None:
            cached.intermediate_values[int(step)] = float(value)
    return True


class _ScopedStudy:
    """The study as a sampler sees it, with only the trials ``keep`` accepts."""

    def __init__(self, study: optuna.Study, keep):
        self._study, self._keep = study, keep

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        return [t for t in self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
                if self._keep(t)]

    def get_trials(self, deepcopy: bool = True, states=None):
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if self._keep(t)]

    @property
    def trials(self):
        return self.get_trials()


def scoped_study(study: optuna.Study, keep) -> optuna.Study:
    """``study`` with ``get_trials``/``_get_trials``/``trials`` narrowed to the trials for
    which ``keep(frozen_trial)`` is true; everything else (storage, directions, ids) is the
    study's own, so what a sampler writes (system attributes) lands on the real trials."""
    return _ScopedStudy(study, keep)   # type: ignore[return-value]
