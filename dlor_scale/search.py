"""Optuna side of a study: one Optuna study per cell, driving a cohort's members.

Why per cell: a pruner compares a member's learning curve with its peers; comparing
a 300-parameter net with a 30,000-parameter one, or dense with dlor, is meaningless.
So each (family, budget) cell has its own Optuna study (sampler + pruner) in the
study's storage, and a cohort asks, reports, prunes and tells against it directly.

`OptunaSource` implements the cohort's `Source` protocol:
ask → member hyperparameters; one report round → the members to prune; tell the
final state (COMPLETE / PRUNED / FAIL). Trials carry user attributes ``unit`` and
``key`` so an interrupted unit can find the trials it already started (exactly-once:
a retried member is the same Optuna trial, never a new one).

Search in a packed cohort (why it differs from a textbook Optuna loop): all members of
a wave reach every report step in the same round and none completes before the wave
ends. So pruning judges a member against its *peers at the same step* (`PeerPruner`:
lockstep median/percentile, synchronous successive halving / ASHA rungs, hyperband),
freed slots are refilled with new asks at once, and TPE samples with the constant
liar so the asks of one wave spread out; the first wave is TPE's random startup, and
every later ask sees every told result, pruned ones included.

The cell's sampler and pruner are built by `samplers.make_sampler` and
`pruners.make_pruner`, its storage opened by `storages.storage`; this module holds the
sources.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
from typing import TYPE_CHECKING, Callable

import optuna
from optuna.trial import TrialState

from .optuna_private import append_intermediate_values, create_trial, forget_cached_trials, pop_waiting_trial, trial_id
from .pruners import PeerPruner
from .samplers import SEQ_ATTR
from .run_schema import HPARAMS, state_counts
from .storages import db_retry

if TYPE_CHECKING:   # cohort imports torch: `validate`/`status` build pruners without it
    from .cohort import MemberResult, MemberSpec

log = logging.getLogger(__name__)

#: Optuna user attribute of a RUNNING trial no unit owns, failed by the driver (`tune.fail_orphan_trials`).
ORPHAN_ATTR = "dlor.orphan"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Sample the search space (a dict of spec distributions or constants)."""
    out = {}
    for name, dist in space.items():
        if isinstance(dist, (int, float)) and not isinstance(dist, bool):
            out[name] = dist
            continue
        t = dist.type
        if t == "float":
            out[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
        elif t == "int":
            out[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step or 1)
        else:
            out[name] = trial.suggest_categorical(name, list(dist.choices))
    return out


def member_seed(base_seed: int, cell_key: str, trial_number: int, repeat: int = 0) -> int:
    """Deterministic member seed from (study seed, cell, Optuna trial number, repeat)."""
    h = hashlib.sha256(f"{base_seed}|{cell_key}|{trial_number}|{repeat}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def member_spec(key: str, seed: int, params: dict) -> MemberSpec:
    from .cohort import MemberSpec
    hp = {k: float(v) for k, v in params.items() if k in HPARAMS}
    extra = {k: v for k, v in params.items() if k not in HPARAMS}
    return MemberSpec(key=key, seed=seed, **hp, extra=extra)


def state_of(result: MemberResult) -> TrialState:
    return {
        "completed": TrialState.COMPLETE,
        "pruned": TrialState.PRUNED,
    }.get(result.state, TrialState.FAIL)


class OptunaSource:
    """Feeds a cohort from the cell's Optuna study and records outcomes back to it.

    `quota` is this unit's share of the cell's trials. Trials already started by an
    earlier attempt of the unit (user attr ``unit``) count toward it; those that
    were RUNNING but are not resumed from a checkpoint are handed out again first.

    Pruning: with a `PeerPruner` (the default kinds), `on_report_round` reports every
    due member first, then judges each against the whole round and the cell's history
    (one ``get_trials`` per round). Only the steps the pruner reads are told to Optuna;
    MLflow keeps the full curves. Other pruners are asked member by member.

    Refill: a trial asked after this unit freed a slot (any member finished) carries
    user attr ``refill``; `cell_counts` reads it back for ``status`` and MLflow.
    ``resume_best`` (key → best val so far, from the cohort checkpoint) restores the
    running best of members resumed mid-training.

    Parts (``scope``: the unit ids of this unit's part of a split cell): the pruner judges
    against the part's trials only and the sampler sees only them (`samplers.ScopedSampler`);
    each trial records its place in its unit (``SEQ_ATTR``), and a member's seed and its
    pruner identity come from that, not from the cell-wide trial number, which parts
    running at once draw in timing order. So a part searches exactly as it would alone.
    """

    def __init__(self, study: optuna.Study, *, unit: str, cell_key: str, space: dict, quota: int,
                 base_seed: int, in_flight: set[int] = frozenset(), final_epoch: int | None = None,
                 on_result: Callable[[MemberResult, int, bool], None] | None = None,
                 resume_best: dict[str, float] | None = None, scope: list[str] | None = None):
        self.study = study
        self.scope = list(scope) if scope else None
        self.unit = unit
        self.cell_key = cell_key
        self.space = space
        self.quota = quota
        self.base_seed = base_seed
        self.on_result = on_result
        self.final_epoch = final_epoch
        self.pruner = study.pruner
        self.lockstep = isinstance(self.pruner, PeerPruner)
        self.fresh: set[str] = set()  # keys asked in this attempt: no MLflow run can exist yet
        self.trials: dict[str, optuna.Trial] = {}
        self.told_steps: dict[str, set[int]] = {}   # steps already in storage, per key
        self.best: dict[str, float] = {k: float(v) for k, v in (resume_best or {}).items()
                                       if v is not None and math.isfinite(v)}
        mine = self._mine()
        self.seen = {t.number for t in mine}   # trials of this unit this source knows of
        self.local: dict[str, int] = {}       # key → the trial's number as the pruner sees it
        self.started = len(mine)
        self.freed = any(t.state.is_finished() for t in mine)
        self.requeue = [t for t in mine if t.state == TrialState.RUNNING and t.number not in in_flight]
        # Members restored from a checkpoint: re-attach their trials. One that already
        # finished after the checkpoint is replayed to the same outcome (its tell and
        # MLflow record are idempotent), never asked again.
        self.replay: dict[str, optuna.trial.FrozenTrial] = {}
        for t in mine:
            if t.number in in_flight:
                key = self._key(t.number)
                self.local[key] = self._local(t)
                if t.state == TrialState.RUNNING:
                    self.trials[key] = db_retry(lambda t=t: optuna.Trial(study, trial_id(t)), "load a trial")
                    self.told_steps[key] = set(t.intermediate_values)
                else:
                    self.replay[key] = t
        self.counts = {**state_counts(), "asked": 0, "refilled": 0}

    def _key(self, number: int) -> str:
        return f"{self.cell_key}/t{number}"

    def _local(self, t) -> int:
        """A trial's number for the pruner: the Optuna number, or in a split cell its place
        in its part (unit index + seq × units), which no other part's timing changes."""
        if self.scope is None:
            return t.number
        return int(t.user_attrs[SEQ_ATTR]) * len(self.scope) + self.scope.index(t.user_attrs["unit"])

    def _seed(self, trial: optuna.Trial) -> int:
        """The member's seed: from the cell and trial number, or in a split cell from its
        unit and place in it."""
        if self.scope is None:
            return member_seed(self.base_seed, self.cell_key, trial.number)
        seq = db_retry(lambda: trial.user_attrs, "read trial attributes")[SEQ_ATTR]
        return member_seed(self.base_seed, self.unit, int(seq))

    def _peer_trials(self) -> list:
        """The trials the pruner compares with: the cell's, or in a split cell the part's."""
        trials = db_retry(lambda: self.study.get_trials(deepcopy=False), "read trials")
        if self.scope is None:
            return trials
        return [t for t in trials if t.user_attrs.get("unit") in self.scope and SEQ_ATTR in t.user_attrs]

    def _mine(self) -> list:
        trials = db_retry(lambda: self.study.get_trials(deepcopy=False), "read trials")
        return [t for t in trials if t.user_attrs.get("unit") == self.unit]

    def unit_counts(self) -> dict:
        """Trials this unit asked and refilled over *all* its attempts (read from storage,
        so a resumed unit is counted once, not once per attempt)."""
        mine = self._mine()
        return {"asked": len(mine), "refilled": sum(bool(t.user_attrs.get("refill")) for t in mine)}

    def member_states(self, ledger: dict[str, str] | None = None) -> dict[str, str]:
        """``{key: state}`` of this unit's finished members over all its attempts, from
        Optuna (the source of truth); ``ledger`` tells diverged from failed (both FAIL)."""
        ledger = ledger or {}
        out = {}
        for t in self._mine():
            key = self._key(t.number)
            if t.state == TrialState.COMPLETE:
                out[key] = "completed"
            elif t.state == TrialState.PRUNED:
                out[key] = "pruned"
            elif t.state == TrialState.FAIL:
                out[key] = ledger.get(key) if ledger.get(key) in ("diverged", "failed") else "failed"
        return out

    def _ask(self) -> optuna.Trial:
        """A new trial of this unit, created *with* its ``unit`` (and ``refill``) attributes
        in one storage commit: a connection dropped after the create can never leave a
        RUNNING trial that no unit owns. A create that failed transiently but landed is
        found (a RUNNING trial of this unit this source has not seen) and adopted, so a
        retry never makes two."""
        attrs = {"unit": self.unit, **({"refill": True} if self.freed else {}),
                 **({SEQ_ATTR: self.started} if self.scope is not None else {})}
        waiting = db_retry(lambda: pop_waiting_trial(self.study), "pop an enqueued trial")
        if waiting is not None:   # enqueued by hand (tests, warm starts): not atomic, retried
            forget_cached_trials(self.study)
            trial = db_retry(lambda: optuna.Trial(self.study, waiting), "load a trial")
            for k, v in attrs.items():
                db_retry(lambda k=k, v=v: trial.set_user_attr(k, v), "set a trial attribute")
        else:
            template = optuna.trial.FrozenTrial(
                number=-1, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
                distributions={}, user_attrs=attrs, system_attrs={}, intermediate_values={},
                trial_id=-1)

            def landed():
                new = [t for t in self._mine() if t.number not in self.seen and t.state == TrialState.RUNNING]
                return trial_id(min(new, key=lambda t: t.number)) if new else None

            tid = db_retry(lambda: create_trial(self.study, template), "create a trial", on_retry=landed)
            forget_cached_trials(self.study)
            trial = db_retry(lambda: optuna.Trial(self.study, tid), "load a trial")
        self.seen.add(trial.number)
        return trial

    def _suggest(self, trial: optuna.Trial) -> dict:
        """Sample (or read back) the trial's parameters. Safe to repeat: a parameter the
        trial already holds is returned as stored, a missing one is sampled, so a trial
        left RUNNING without (some of) its parameters is completed in place."""
        from .tracking import failpoint

        def attempt():
            failpoint("optuna.suggest")   # chaos tests: a terminated connection
            return suggest(optuna.Trial(self.study, trial_id(trial)), self.space)
        return db_retry(attempt, "sample parameters")

    def next_member(self) -> MemberSpec | None:
        if self.requeue:
            frozen = self.requeue.pop(0)
            trial = db_retry(lambda: optuna.Trial(self.study, trial_id(frozen)), "load a trial")
            missing = [k for k, v in self.space.items()
                       if not isinstance(v, (int, float)) and k not in frozen.params]
            if missing:
                log.warning("Optuna trial %d of %s was left RUNNING without %s (a connection dropped "
                            "between its ask and its sampling); sampling them now",
                            frozen.number, self.unit, ", ".join(missing))
            params = self._suggest(trial)
            self.told_steps[self._key(trial.number)] = set(frozen.intermediate_values)
        else:
            if self.started >= self.quota:
                return None
            if self.freed:
                self.counts["refilled"] += 1
            trial = self._ask()
            self.started += 1
            self.counts["asked"] += 1
            from .tracking import failpoint   # (lazy: tracking imports MLflow)
            failpoint("optuna.asked")   # chaos tests: lost between the ask and the sampling
            params = self._suggest(trial)
            self.fresh.add(self._key(trial.number))
            self.told_steps[self._key(trial.number)] = set()
        key = self._key(trial.number)
        seed = self._seed(trial)
        self.local[key] = self._local(trial)   # (a live Trial has the same number and attributes)
        self.trials[key] = trial
        return member_spec(key, seed, params)

    def _tell_step(self, key: str, value: float, step: int) -> None:
        steps = self.told_steps.setdefault(key, set())
        if step not in steps:  # a resumed member re-reports steps already stored
            trial = self.trials[key]
            db_retry(lambda: trial.report(float(value), int(step)), "report a step")
            steps.add(step)

    def _tell_steps(self, items: list[tuple[str, float, int]]) -> None:
        """Store one round's intermediate values (``(key, value, step)``) at once.

        Why: each ``trial.report`` is one journal append (file lock + write + fsync),
        once per member per read step. On a journal storage the round's values go in
        *one* append; other storages report trial by trial. Exactly-once holds as for
        `_tell_step`: steps already stored are skipped, and a retried append that had
        landed only rewrites the same values (the journal applies them idempotently).

        Optuna has no public batch report: `optuna_private.append_intermediate_values`
        writes the journal directly and declines other storages, which fall back to public
        ``trial.report`` calls (tests/test_overhead_search.py checks both paths give
        identical trials).
        """
        todo, seen = [], set()
        for key, value, step in items:
            if int(step) not in self.told_steps.setdefault(key, set()) and (key, int(step)) not in seen:
                seen.add((key, int(step)))
                todo.append((key, float(value), int(step)))
        rows = [(self.trials[key], step, value) for key, value, step in todo]
        if len(rows) > 1 and db_retry(lambda: append_intermediate_values(self.study, rows),
                                      "report a round's steps"):
            for key, _, step in todo:
                self.told_steps[key].add(step)
            return
        for key, value, step in todo:
            self._tell_step(key, value, step)

    def on_report_round(self, reports) -> set[str]:
        """Judge one report round (`cohort.Report`s); returns the keys to prune.

        Only the steps the pruner reads reach Optuna (lockstep pruners), all of a round
        in one storage write (`_tell_steps`); the final value comes with the tell."""
        prune: set[str] = set()
        judged: list[tuple[str, int, int, float]] = []   # key, number, step, value
        for r in reports:
            key, epoch = r.key, int(r.epoch)
            if key in self.replay:
                done = self.replay[key]
                if done.state == TrialState.PRUNED and epoch >= max(done.intermediate_values, default=-1):
                    prune.add(key)
                continue
            if key not in self.trials or not math.isfinite(r.val_error):
                continue  # the cohort finishes a non-finite member as diverged
            best = min(self.best.get(key, math.inf), float(r.val_error))
            self.best[key] = best
            if self.final_epoch is not None and epoch >= self.final_epoch:
                continue  # a member that trained every epoch is complete: never pruned at the line
            trial = self.trials[key]
            if self.lockstep:
                if self.pruner.reads(self.local[key], epoch):
                    judged.append((key, self.local[key], epoch, best))
            elif not isinstance(self.pruner, optuna.pruners.NopPruner):
                self._tell_step(key, r.val_error, epoch)
                if db_retry(trial.should_prune, "ask the pruner"):
                    prune.add(key)
        if judged:
            self._tell_steps([(key, value, step) for key, _, step, value in judged])
            trials = self._peer_trials()
            local = {t.number: self._local(t) for t in trials}
            tables: dict[int, dict[int, float]] = {}
            for key, number, step, value in judged:
                if step not in tables:
                    tables[step] = {local[n]: v for n, v in self.pruner.table(trials, step).items()}
                    # this round's values, even if the storage lags behind
                    tables[step].update({n: v for _, n, s, v in judged if s == step})
                peers = {n: v for n, v in tables[step].items() if n != number}
                if self.pruner.judge(number, step, value, peers):
                    prune.add(key)
        return prune

    def on_report(self, key: str, epoch: int, train_loss: float, val_error: float) -> bool:
        """One member at a time (cohorts without round reports): judged against what
        the cell's storage holds at that moment."""
        from .cohort import Report
        return key in self.on_report_round([Report(key, epoch, train_loss, val_error)])

    def on_finish(self, result: MemberResult) -> None:
        self.freed = True
        self.best.pop(result.key, None)
        self.told_steps.pop(result.key, None)
        if result.key in self.replay:
            frozen = self.replay.pop(result.key)
            if self.on_result is not None:
                self.on_result(result, frozen.number, False)
            return
        trial = self.trials.pop(result.key)
        state = state_of(result)
        value = result.best_val if state == TrialState.COMPLETE and math.isfinite(result.best_val) else None
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        # Record first (durably parked), then tell: a crash in between leaves a RUNNING
        # trial that is retrained to the same record, never a finished trial without one.
        if self.on_result is not None:
            self.on_result(result, trial.number, result.key in self.fresh)
        self.fresh.discard(result.key)
        # PRUNED takes its last intermediate value (best val at the pruning rung) as its
        # value: TPE ranks it among the bad results instead of ignoring it.
        db_retry(lambda: self.study.tell(trial, value, state=state, skip_if_finished=True), "tell a result")
        self.counts[result.state] = self.counts.get(result.state, 0) + 1


def cell_counts(trials) -> dict:
    """Search progress of one cell from its Optuna trials (the source of truth).

    asked / running / completed / pruned / failed / refilled, and ``pruned_at``:
    ``{epoch: n}`` — the step a pruned trial was judged at is its last reported step.
    Orphans (asks cut off before any unit owned them, failed by the driver) were never
    members and are not counted.
    """
    trials = [t for t in trials if not t.user_attrs.get(ORPHAN_ATTR)]
    by = {s: 0 for s in ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")}
    pruned_at: dict[int, int] = {}
    refilled = 0
    for t in trials:
        by[t.state.name] = by.get(t.state.name, 0) + 1
        if t.state == TrialState.PRUNED and t.last_step is not None:
            pruned_at[t.last_step] = pruned_at.get(t.last_step, 0) + 1
        refilled += bool(t.user_attrs.get("refill"))
    return {"asked": len(trials) - by["WAITING"], "running": by["RUNNING"], "completed": by["COMPLETE"],
            "pruned": by["PRUNED"], "failed": by["FAIL"], "refilled": refilled,
            "pruned_at": dict(sorted(pruned_at.items()))}


def format_pruned_at(pruned_at: dict) -> str:
    """``{20: 6, 60: 1}`` → ``"6@20 1@60"`` (how many were pruned at which epoch)."""
    return " ".join(f"{n}@{step}" for step, n in sorted(pruned_at.items())) or "—"


class FixedSource:
    """Feeds a fixed list of members (confirmation runs): no Optuna, no pruning."""

    def __init__(self, members: list[MemberSpec], *, skip: set[str] = frozenset(),
                 on_result: Callable[[MemberResult], None] | None = None):
        self.pending = [m for m in members if m.key not in skip]
        self.on_result = on_result
        self.counts = state_counts()

    def next_member(self) -> MemberSpec | None:
        return self.pending.pop(0) if self.pending else None

    def on_report(self, key, epoch, train_loss, val_error) -> bool:
        return False

    def on_finish(self, result: MemberResult) -> None:
        self.counts[result.state] = self.counts.get(result.state, 0) + 1
        if self.on_result is not None:
            self.on_result(result)
