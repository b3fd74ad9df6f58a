"""Sampler and pruner settings of a study: the schema only; `dlor_scale.samplers` and
`dlor_scale.pruners` build the Optuna objects from them (optuna is not imported here)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from .vocabulary import Float, Int, NonNegInt, NonNegIntOrAuto, PosInt, PosIntOrAuto, SpecModel, invalid


class _SamplerBase(SpecModel):
    seed: NonNegInt | None = Field(None, description="null → unseeded (not reproducible)")


class TPESamplerSpec(_SamplerBase):
    """Tree-structured Parzen estimator, random until ``n_startup_trials`` are told.

    In a cohort the first wave is always random (TPE counts only told trials, and none
    is told before the first rung), so the first wave *is* the startup; ``auto`` starts
    the model once half a wave (at most 10) is told, so refills learn from the first
    rung. ``constant_liar``: asks made while trials run treat them as bad results, so
    one wave's parallel asks spread out instead of repeating one guess.
    """

    kind: Literal["tpe"] = "tpe"
    n_startup_trials: NonNegIntOrAuto = "auto"
    multivariate: bool = True
    constant_liar: bool = True


class RandomSamplerSpec(_SamplerBase):
    kind: Literal["random"] = "random"


class QMCSamplerSpec(_SamplerBase):
    """Quasi-random low-discrepancy points: even coverage for small trial counts."""

    kind: Literal["qmc"] = "qmc"
    qmc_type: Literal["sobol", "halton"] = "sobol"


class CmaEsSamplerSpec(_SamplerBase):
    """CMA-ES (needs the ``cmaes`` package; categorical parameters fall back to random)."""

    kind: Literal["cmaes"] = "cmaes"


SamplerSpec = Annotated[
    Union[TPESamplerSpec, RandomSamplerSpec, QMCSamplerSpec, CmaEsSamplerSpec],
    Field(discriminator="kind"),
]

# Pruner field names equal Optuna's constructor arguments: `pruners.make_pruner` passes
# ``model_dump(exclude={"kind"})`` straight through, so never add other fields.
# A step is an epoch: members report their best validation error so far at step = epoch
# (every ``report_every`` epochs), so warm-up and resources are counted in epochs.
# Median, percentile, successive halving and hyperband run *in lockstep*
# (`pruners.PeerPruner`): a member is judged against every trial of its cell at the same
# step — running members of its cohort included — not only against completed trials,
# which a cohort whose members all report together never has.


class _StepwisePruner(SpecModel):
    n_startup_trials: NonNegInt = 5
    n_warmup_steps: NonNegInt = 0
    interval_steps: PosInt = 1
    n_min_trials: PosInt = 1


class MedianPrunerSpec(_StepwisePruner):
    """Prune a member whose best val so far is worse than the median of its cell's trials
    at the same step (running peers included; ``n_startup_trials`` / ``n_min_trials``
    count the *other* trials with a value at that step)."""

    kind: Literal["median"] = "median"


class PercentilePrunerSpec(_StepwisePruner):
    """Like median, at another percentile (25 keeps only the best quarter)."""

    kind: Literal["percentile"] = "percentile"
    percentile: Annotated[Float, Field(gt=0, lt=100)]


class SuccessiveHalvingPrunerSpec(SpecModel):
    """Successive halving in lockstep: at rungs ``min_resource·ηᵏ`` epochs (moved up to a
    report step, below the last epoch) keep the top 1/η (``reduction_factor``) of every
    trial of the cell that reached the rung. A cohort's first wave is a synchronous
    bracket; refills are judged against the rung's history (ASHA). ``auto``: first rung
    at a fifth of the epochs (η = 3: rungs at 1/5 and 3/5 of training)."""

    kind: Literal["successive_halving"] = "successive_halving"
    min_resource: PosIntOrAuto = "auto"
    reduction_factor: Annotated[Int, Field(ge=2)] = 3
    min_early_stopping_rate: NonNegInt = 0


class HyperbandPrunerSpec(SpecModel):
    """Several lockstep successive-halving brackets (trials dealt round-robin, the last
    bracket never prunes), hedging how early curves can be judged."""

    kind: Literal["hyperband"] = "hyperband"
    min_resource: PosInt = 1
    max_resource: PosIntOrAuto = "auto"
    reduction_factor: Annotated[Int, Field(ge=2)] = 3

    @model_validator(mode="after")
    def _ordered(self) -> HyperbandPrunerSpec:
        if self.max_resource != "auto" and self.max_resource < self.min_resource:
            raise invalid(f"max_resource ({self.max_resource}) must be ≥ min_resource ({self.min_resource})")
        return self


class WilcoxonPrunerSpec(SpecModel):
    """Paired test over per-instance scores; meant for CV folds, not learning curves."""

    kind: Literal["wilcoxon"] = "wilcoxon"
    p_threshold: Annotated[Float, Field(gt=0, lt=1)] = 0.1
    n_startup_steps: NonNegInt = 2


class NoPrunerSpec(SpecModel):
    kind: Literal["none"] = "none"


PrunerSpec = Annotated[
    Union[MedianPrunerSpec, PercentilePrunerSpec, SuccessiveHalvingPrunerSpec,
          HyperbandPrunerSpec, WilcoxonPrunerSpec, NoPrunerSpec],
    Field(discriminator="kind"),
]
