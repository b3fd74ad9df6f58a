"""Samplers of a cell's Optuna study, built from the spec's ``sampler`` settings.

Why not Optuna's as they are: TPE needs its startup sized to a cohort's first wave
(`tpe_startup`), and a seeded random search must draw the same configurations when a
unit is retried after a crash (`TrialSeededRandomSampler`).
"""

from __future__ import annotations

import hashlib
import warnings

import optuna

#: Optuna user attribute of a trial of a split cell (``parts_per_cell``): its place among its
#: unit's trials (0, 1, …). Parts run at once, so their trials' numbers interleave in timing
#: order; seeds, pruner identities and seeded draws use this instead.
SEQ_ATTR = "seq"


class ScopedSampler(optuna.samplers.BaseSampler):
    """A sampler that sees only the trials of some units of the study: one part of a split
    cell. Why: a sampler fitted to the whole cell would read the other parts' trials in the
    order Ray happened to run them, and the same spec would sample differently each time."""

    def __init__(self, base: optuna.samplers.BaseSampler, units: list[str]):
        self.base = base
        self.units = frozenset(units)

    def _view(self, study):
        from .optuna_private import scoped_study
        return scoped_study(study, lambda t: t.user_attrs.get("unit") in self.units)

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(self._view(study), trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self):
        self.base.reseed_rng()


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
        n = trial.user_attrs.get(SEQ_ATTR, trial.number)   # split cells: the place in the unit
        h = hashlib.sha256(f"{self._seed}|{n}|{param_name}".encode()).digest()
        draw = optuna.samplers.RandomSampler(seed=int.from_bytes(h[:4], "little"))
        return draw.sample_independent(study, trial, param_name, param_distribution)


#: ``n_startup_trials: auto`` of TPE: half the first wave, at most this many.
AUTO_STARTUP_MAX = 10


def tpe_startup(n_startup_trials: int | str, slots: int | None) -> int:
    """Resolve TPE's ``n_startup_trials``.

    Why 'auto' is half a wave: TPE counts only *told* (complete or pruned) trials, so
    every ask of the first wave is random whatever this is: the first wave *is* the
    startup. What it decides is when refills start to use the model: once half the
    first wave is told (the first rung prunes at least that many), capped at Optuna's
    default of 10 so big cohorts do not stay random for a whole wave.
    """
    if n_startup_trials != "auto":
        return int(n_startup_trials)
    return max(1, min(AUTO_STARTUP_MAX, (slots or 2 * AUTO_STARTUP_MAX) // 2))


def make_sampler(cfg, seed: int | None, *, slots: int | None = None) -> optuna.samplers.BaseSampler:
    """Optuna sampler of a cell. TPE uses the constant liar: asks made while trials run
    treat those as bad results, so a wave of parallel asks spreads out instead of being
    K copies of one guess."""
    kind = cfg.kind
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tpe_startup(getattr(cfg, "n_startup_trials", "auto"), slots),
            multivariate=getattr(cfg, "multivariate", True),
            constant_liar=getattr(cfg, "constant_liar", True),
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
