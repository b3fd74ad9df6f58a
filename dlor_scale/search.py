"""Optuna side of a study: one Optuna study per cell, driving a cohort's members.

Why per cell: a pruner compares a member's learning curve with its peers; comparing
a 300-parameter net with a 30,000-parameter one, or dense with dlor, is meaningless.
So each (family, budget) cell has its own Optuna study (sampler + pruner) in the
study's storage, and a cohort asks, reports, prunes and tells against it directly.

`OptunaSource` implements the cohort's `Source` protocol:
ask → member hyperparameters; report each val error → ``should_prune``; tell the
final state (COMPLETE / PRUNED / FAIL). Trials carry user attributes ``unit`` and
``key`` so an interrupted unit can find the trials it already started (exactly-once:
a retried member is the same Optuna trial, never a new one).
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from .cohort import MemberResult, MemberSpec

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

HPARAMS = ("lr", "weight_decay", "init_scale", "beta1", "beta2")


def storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL.

    ``journal:///abs/path`` is an Optuna journal file (append-only log with file
    locks: the embedded default, fast and multi-process safe on one machine); any
    other URL is an SQLAlchemy URL for RDB storage (SQLite, PostgreSQL), set up to
    survive concurrent writers and dropped connections.
    """
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        path = url[len("journal://"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite"):
        kw = {"connect_args": {"timeout": 60}}
    else:
        kw = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kw)


class TrialSeededRandomSampler(optuna.samplers.RandomSampler):
    """Random search whose draws are a pure function of (seed, trial number, name).

    Why: Optuna's RandomSampler advances one RNG per process, so a unit that is
    retried after a crash would re-draw the *first* configurations again. Seeding
    each draw by trial number makes a resumed study sample exactly what an
    undisturbed one would (the chaos test relies on it).
    """

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self._seed = int(seed)

    def sample_independent(self, study, trial, param_name, param_distribution):
        from optuna._transform import _SearchSpaceTransform
        h = hashlib.sha256(f"{self._seed}|{trial.number}|{param_name}".encode()).digest()
        rng = np.random.RandomState(int.from_bytes(h[:4], "little"))
        trans = _SearchSpaceTransform({param_name: param_distribution})
        return trans.untransform(rng.uniform(trans.bounds[:, 0], trans.bounds[:, 1]))[param_name]


def make_sampler(cfg, seed: int | None) -> optuna.samplers.BaseSampler:
    kind = cfg.kind
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=getattr(cfg, "n_startup_trials", 10),
            multivariate=getattr(cfg, "multivariate", True),
        )
    if kind == "random":
        return TrialSeededRandomSampler(seed=seed) if seed is not None else optuna.samplers.RandomSampler()
    if kind == "qmc":
        return optuna.samplers.QMCSampler(qmc_type=getattr(cfg, "qmc_type", "sobol"), seed=seed,
                                          warn_independent_sampling=False)
    if kind == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {kind!r}")


def make_pruner(cfg) -> optuna.pruners.BasePruner:
    kind = cfg.kind
    p = cfg.model_dump(exclude={"kind"})
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**p)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(**p)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**p)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**p)
    if kind == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**p)
    raise ValueError(f"unknown pruner {kind!r}")


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
    """

    def __init__(self, study: optuna.Study, *, unit: str, cell_key: str, space: dict, quota: int,
                 base_seed: int, in_flight: set[int] = frozenset(), final_epoch: int | None = None,
                 on_result: Callable[[MemberResult, int, bool], None] | None = None):
        self.study = study
        self.unit = unit
        self.cell_key = cell_key
        self.space = space
        self.quota = quota
        self.base_seed = base_seed
        self.on_result = on_result
        self.final_epoch = final_epoch
        self.fresh: set[str] = set()  # keys asked in this attempt: no MLflow run can exist yet
        self.trials: dict[str, optuna.Trial] = {}
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("unit") == unit]
        self.started = len(mine)
        self.requeue = [t for t in mine if t.state == TrialState.RUNNING and t.number not in in_flight]
        # Members restored from a checkpoint: re-attach their trials. One that already
        # finished after the checkpoint is replayed to the same outcome (its tell and
        # MLflow record are idempotent), never asked again.
        self.replay: dict[str, optuna.trial.FrozenTrial] = {}
        for t in mine:
            if t.number in in_flight:
                if t.state == TrialState.RUNNING:
                    self.trials[self._key(t.number)] = optuna.Trial(study, t._trial_id)
                else:
                    self.replay[self._key(t.number)] = t
        self.counts = {"completed": 0, "pruned": 0, "diverged": 0, "failed": 0}

    def _key(self, number: int) -> str:
        return f"{self.cell_key}/t{number}"

    def next_member(self) -> MemberSpec | None:
        if self.requeue:
            frozen = self.requeue.pop(0)
            trial = optuna.Trial(self.study, frozen._trial_id)
            params = dict(frozen.params)
            params.update({k: v for k, v in self.space.items() if isinstance(v, (int, float))})
        else:
            if self.started >= self.quota:
                return None
            trial = self.study.ask()
            self.started += 1
            trial.set_user_attr("unit", self.unit)  # key and seed derive from the number
            params = suggest(trial, self.space)
            self.fresh.add(self._key(trial.number))
        key = self._key(trial.number)
        seed = member_seed(self.base_seed, self.cell_key, trial.number)
        self.trials[key] = trial
        return member_spec(key, seed, params)

    def on_report(self, key: str, epoch: int, train_loss: float, val_error: float) -> bool:
        if self.final_epoch is not None and epoch >= self.final_epoch:
            # A member that trained every epoch is complete: never pruned at the line.
            if key in self.trials and math.isfinite(val_error):
                self.trials[key].report(float(val_error), int(epoch))
            return False
        if key in self.replay:
            done = self.replay[key]
            last = max(done.intermediate_values, default=-1)
            return done.state == TrialState.PRUNED and epoch >= last
        trial = self.trials[key]
        if not math.isfinite(val_error):
            return False  # the cohort marks it diverged
        trial.report(float(val_error), int(epoch))
        return trial.should_prune()

    def on_finish(self, result: MemberResult) -> None:
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
        self.study.tell(trial, value, state=state, skip_if_finished=True)
        self.counts[result.state] = self.counts.get(result.state, 0) + 1


class FixedSource:
    """Feeds a fixed list of members (confirmation runs): no Optuna, no pruning."""

    def __init__(self, members: list[MemberSpec], *, skip: set[str] = frozenset(),
                 on_result: Callable[[MemberResult], None] | None = None):
        self.pending = [m for m in members if m.key not in skip]
        self.on_result = on_result
        self.counts = {"completed": 0, "pruned": 0, "diverged": 0, "failed": 0}

    def next_member(self) -> MemberSpec | None:
        return self.pending.pop(0) if self.pending else None

    def on_report(self, key, epoch, train_loss, val_error) -> bool:
        return False

    def on_finish(self, result: MemberResult) -> None:
        self.counts[result.state] = self.counts.get(result.state, 0) + 1
        if self.on_result is not None:
            self.on_result(result)
