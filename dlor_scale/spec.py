"""Study specification: the YAML a researcher writes, validated before anything runs.

Why so strict: a scaling study is hours of cluster time. A typo (``widht``), an
impossible budget or a pruner that can never prune must fail in the first second,
with a message that says *where* in the file and *what* is allowed, not as a stack
trace an hour later. So every model forbids unknown keys, every error is rewritten as

    <file>: <yaml.path>: <what is wrong> (got <value>); allowed: <values>

and after field validation the cross-field rules run, ending with the budget solver:
every (family, budget) cell must be realisable by at least one concrete shape.

Entry points: `load_study` (a file), `parse_study` (an already-parsed mapping),
`study_json_schema` (for ``dlor-scale schema``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import stat
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Strict,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import budget as budget_solver
from .errors import BudgetError, SpecError
from .shapes import ACTIVATIONS, FAMILIES, IO_KINDS, parse_diag
from .targets import TargetSpec

#: Hyperparameters the trainer consumes; anything else in ``search_space`` is a typo.
HPARAMS = ("lr", "weight_decay", "init_scale", "beta1", "beta2")
#: Valid range of each hyperparameter: (low, high, low_inclusive, high_inclusive).
HPARAM_DOMAINS = {
    "lr": (0.0, math.inf, False, False),
    "weight_decay": (0.0, math.inf, True, False),
    "init_scale": (0.0, math.inf, False, False),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
}
METRICS = ("mse", "rmse", "max_abs", "rel_l2")
#: Structural axes and the families that use them (others must leave them at the default).
AXIS_USERS = {
    "width": FAMILIES,
    "depth": FAMILIES,
    "rank": ("lowrank", "dlor_deep", "dlor_wide"),
    "branches": ("dlor_wide",),
    "diag": ("dlor_deep", "dlor_wide"),
}
#: Fields that say where a study runs/records, not what it computes (not hashed).
LOCATION_FIELDS = ("tracking_uri", "optuna_storage", "ray_address", "output_dir")
#: Shapes a family's grid may enumerate: the solver counts them vectorised (~20 ns a
#: shape) and builds only the fitting ones, so a wide width range × depth range is fine.
MAX_GRID = 500_000
#: All families' grids together (30 families of 99,999 shapes took minutes to plan).
MAX_TOTAL_GRID = 2_000_000
#: Plan-size bounds checked before anything is enumerated: a cell per (family, budget),
#: and axis values no machine could hold (``depth: 1e9`` would allocate gigabytes).
MAX_BUDGETS = 64
AXIS_MAX = {"width": 1_000_000, "depth": 10_000, "rank": 1_000_000, "branches": 10_000}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _fail(msg: str, allowed: list[str] | None = None) -> PydanticCustomError:
    """A validation error whose text we control (pydantic's defaults are too generic)."""
    ctx: dict[str, Any] = {"msg": msg}
    if allowed:
        ctx["allowed"] = allowed
    return PydanticCustomError("dlor", "{msg}", ctx)


# --------------------------------------------------------------------------- scalar types


def _integral(v: Any) -> Any:
    """Accept ``1e3``, ``1000.0`` or ``"1e3"`` where an integer is expected.

    YAML 1.1 (PyYAML) reads ``1e3`` as a *string*, and budgets are naturally written
    that way; integral values convert, anything else is left for strict int to reject.
    """
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _no_bool(v: Any) -> Any:
    """``true`` is not a number (pydantic's lax float would read it as 1.0)."""
    if isinstance(v, bool):
        raise _fail("must be a number, not a boolean")
    return v


Int = Annotated[int, BeforeValidator(_integral), Strict()]
PosInt = Annotated[Int, Field(ge=1)]
NonNegInt = Annotated[Int, Field(ge=0)]
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]


def _int_or_auto(ge: int):
    """An integer ≥ ``ge`` or the string ``auto``, with one clear error for anything else."""

    def check(v: Any) -> Any:
        if v == "auto":
            return v
        n = _integral(v)
        if isinstance(n, int) and not isinstance(n, bool):
            if n < ge:
                raise _fail(f"must be ≥ {ge} or 'auto'")
            return n
        raise _fail(f"must be an integer ≥ {ge} or 'auto'")

    return Annotated[Union[Annotated[int, Field(ge=ge)], Literal["auto"]], BeforeValidator(check)]


PosIntOrAuto = _int_or_auto(1)
NonNegIntOrAuto = _int_or_auto(0)


def _check_name(v: str) -> str:
    """Names become folder names and Optuna/MLflow keys: no separators, no ``..``."""
    if not _NAME_RE.fullmatch(v) or ".." in v:  # fullmatch: "$" would allow a trailing newline
        raise _fail(
            "must be 1-64 letters, digits, '_', '.' or '-', start with a letter or digit "
            "and contain no '..' (it names a folder)"
        )
    return v


Name = Annotated[str, Strict(), AfterValidator(_check_name)]


class _Model(BaseModel):
    """Base of every spec model: unknown keys are errors, values immutable once valid."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- families


class IntRange(_Model):
    """``{min, max, step}``: the inclusive integer range ``min, min+step, …, ≤ max``."""

    min: Int
    max: Int
    step: PosInt = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise _fail(f"min ({self.min}) must be ≤ max ({self.max})")
        return self

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))


def _axis_tag(v: Any) -> str:
    if isinstance(v, (dict, IntRange)):
        return "range"
    if isinstance(v, (list, tuple)):
        return "list"
    return "int"


#: A structural axis: one value, a list of values, or an inclusive range.
Axis = Annotated[
    Union[
        Annotated[Int, Tag("int")],
        Annotated[list[Int], Field(min_length=1), Tag("list")],
        Annotated[IntRange, Tag("range")],
    ],
    Discriminator(_axis_tag),
]


def axis_values(axis: int | list[int] | IntRange) -> tuple[int, ...]:
    """The sorted distinct values an axis allows."""
    if isinstance(axis, IntRange):
        return tuple(axis.values())
    if isinstance(axis, int):
        return (axis,)
    return tuple(sorted(set(axis)))


def _axis_min(axis) -> int:
    """Smallest value, without materialising a (possibly huge) range."""
    return axis.min if isinstance(axis, IntRange) else min(axis_values(axis))


def _axis_len(axis) -> int:
    if isinstance(axis, IntRange):
        return len(range(axis.min, axis.max + 1, axis.step))
    return len(axis_values(axis))


def _check_diag(v: str) -> str:
    try:
        parse_diag(v)
    except (ValueError, AttributeError):
        raise _fail("unknown diagonal variant", ["scalar", "full", "none", "sparse:<s≥1>"]) from None
    return v


class FamilySpec(_Model):
    """Structural ranges of one family label; the budget solver picks shapes inside them.

    ``family`` defaults to the label (so ``dense: {...}`` needs no ``family:``); a
    label like ``deep_full`` names a variant and must say which family it is.
    ``diag`` and ``rank``/``branches`` only apply to the families that have them
    (changing them elsewhere is an error rather than silently ignored).
    """

    family: Literal[FAMILIES]  # type: ignore[valid-type]
    width: Axis
    depth: Axis
    rank: Axis = 1
    branches: Axis = 1
    diag: Annotated[str, Strict(), AfterValidator(_check_diag)] = "scalar"
    io: Literal[IO_KINDS] = "auto"  # type: ignore[valid-type]
    max_depth: Union[NonNegInt, Literal["auto"], None] = Field(
        "auto", description="deepest hidden stack the planner may use; auto → the measured "
        "default for DLoR families (budget.DEFAULT_MAX_DEPTH), none for others; null → no cap")

    @field_validator("width", "rank", "branches")
    @classmethod
    def _at_least_one(cls, v):
        if _axis_min(v) < 1:
            raise _fail(f"values must be ≥ 1 (smallest is {_axis_min(v)})")
        return v

    @field_validator("depth")
    @classmethod
    def _non_negative(cls, v):
        if _axis_min(v) < 0:
            raise _fail(f"values must be ≥ 0 (smallest is {_axis_min(v)})")
        return v

    @field_validator("width", "depth", "rank", "branches")
    @classmethod
    def _at_most(cls, v, info):
        """Bounded before any grid is built (`AXIS_MAX`)."""
        top = v.max if isinstance(v, IntRange) else max(axis_values(v))
        if top > AXIS_MAX[info.field_name]:
            raise _fail(f"values must be ≤ {AXIS_MAX[info.field_name]:,} (limit AXIS_MAX; largest is {top:,})")
        return v

    def resolved_max_depth(self) -> int | None:
        """The depth cap in force: ``auto`` resolves per family (`budget.default_max_depth`)."""
        if self.max_depth == "auto":
            return budget_solver.default_max_depth(self.family)
        return self.max_depth

    def rules(self) -> budget_solver.ShapeRules:
        """Trainability rules the planner keeps for this family (see `budget.ShapeRules`)."""
        return budget_solver.ShapeRules(max_depth=self.resolved_max_depth())

    def grid(self) -> dict:
        """The structural keyword arguments of `budget.solve` for this family."""
        return {
            "widths": axis_values(self.width),
            "depths": axis_values(self.depth),
            "ranks": axis_values(self.rank),
            "branches": axis_values(self.branches),
            "diag": self.diag if self.family in AXIS_USERS["diag"] else "none",
            "io": self.io,
        }

    def grid_size(self) -> int:
        """Shapes the solver would enumerate (computed without enumerating them)."""
        n = _axis_len(self.width) * _axis_len(self.depth)
        if self.family in AXIS_USERS["rank"]:
            n *= _axis_len(self.rank)
        if self.family in AXIS_USERS["branches"]:
            n *= _axis_len(self.branches)
        return n


def _check_label(v: str) -> str:
    _check_name(v)
    if "@" in v or "/" in v:
        raise _fail("must not contain '@' or '/' (they separate cell keys)")
    return v


Label = Annotated[str, AfterValidator(_check_label)]


# --------------------------------------------------------------------------- search space


class Distribution(_Model):
    """One Optuna distribution. Field names follow ``trial.suggest_*`` on purpose."""

    type: Literal["float", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    log: bool = False
    step: Float | None = None
    choices: list[Float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise _fail("categorical needs a non-empty 'choices' list")
            if len(set(self.choices)) != len(self.choices):
                raise _fail(f"choices contain duplicates: {self.choices}")
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None]
            if extra or self.log:
                raise _fail(f"categorical takes only 'choices' (drop {', '.join(extra) or 'log'})")
            return self
        if self.choices is not None:
            raise _fail(f"'choices' is only for type categorical (this is {self.type})")
        if self.low is None or self.high is None:
            raise _fail(f"type {self.type} needs both 'low' and 'high'")
        if not self.low < self.high:
            raise _fail(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise _fail(f"log scale needs low > 0 (low is {self.low})")
        if self.step is not None:
            if self.step <= 0:
                raise _fail(f"step must be > 0 (step is {self.step})")
            if self.log:
                raise _fail("Optuna cannot combine log with step; drop one of them")
        if self.type == "int":
            bad = [k for k in ("low", "high", "step") if getattr(self, k) is not None
                   and float(getattr(self, k)) != int(getattr(self, k))]
            if bad:
                raise _fail(f"type int needs integer {', '.join(bad)}")
            for k in ("low", "high", "step"):
                if getattr(self, k) is not None:
                    object.__setattr__(self, k, int(getattr(self, k)))
        return self

    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value it can produce (for domain checks)."""
        if self.type == "categorical":
            return min(self.choices), max(self.choices)
        return float(self.low), float(self.high)


def _param_tag(v: Any) -> str:
    return "distribution" if isinstance(v, (dict, Distribution)) else "constant"


#: A search-space entry: a distribution to sample, or a plain number held fixed.
SearchParam = Annotated[
    Union[Annotated[Distribution, Tag("distribution")], Annotated[Float, Tag("constant")]],
    Discriminator(_param_tag),
]
HParam = Literal[HPARAMS]  # type: ignore[valid-type]


# --------------------------------------------------------------------------- sampler / pruner


class _SamplerBase(_Model):
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

# Pruner field names equal Optuna's constructor arguments: the searcher passes
# ``model_dump(exclude={"kind"})`` straight through, so never add other fields.
# A step is an epoch: members report their best validation error so far at step = epoch
# (every ``report_every`` epochs), so warm-up and resources are counted in epochs.
# Median, percentile, successive halving and hyperband run *in lockstep*
# (`search.PeerPruner`): a member is judged against every trial of its cell at the same
# step — running members of its cohort included — not only against completed trials,
# which a cohort whose members all report together never has.


class _StepwisePruner(_Model):
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


class SuccessiveHalvingPrunerSpec(_Model):
    """Successive halving in lockstep: at rungs ``min_resource·ηᵏ`` epochs (moved up to a
    report step, below the last epoch) keep the top 1/η (``reduction_factor``) of every
    trial of the cell that reached the rung. A cohort's first wave is a synchronous
    bracket; refills are judged against the rung's history (ASHA). ``auto``: first rung
    at a fifth of the epochs (η = 3: rungs at 1/5 and 3/5 of training)."""

    kind: Literal["successive_halving"] = "successive_halving"
    min_resource: PosIntOrAuto = "auto"
    reduction_factor: Annotated[Int, Field(ge=2)] = 3
    min_early_stopping_rate: NonNegInt = 0


class HyperbandPrunerSpec(_Model):
    """Several lockstep successive-halving brackets (trials dealt round-robin, the last
    bracket never prunes), hedging how early curves can be judged."""

    kind: Literal["hyperband"] = "hyperband"
    min_resource: PosInt = 1
    max_resource: PosIntOrAuto = "auto"
    reduction_factor: Annotated[Int, Field(ge=2)] = 3

    @model_validator(mode="after")
    def _ordered(self) -> HyperbandPrunerSpec:
        if self.max_resource != "auto" and self.max_resource < self.min_resource:
            raise _fail(f"max_resource ({self.max_resource}) must be ≥ min_resource ({self.min_resource})")
        return self


class WilcoxonPrunerSpec(_Model):
    """Paired test over per-instance scores; meant for CV folds, not learning curves."""

    kind: Literal["wilcoxon"] = "wilcoxon"
    p_threshold: Annotated[Float, Field(gt=0, lt=1)] = 0.1
    n_startup_steps: NonNegInt = 2


class NoPrunerSpec(_Model):
    kind: Literal["none"] = "none"


PrunerSpec = Annotated[
    Union[MedianPrunerSpec, PercentilePrunerSpec, SuccessiveHalvingPrunerSpec,
          HyperbandPrunerSpec, WilcoxonPrunerSpec, NoPrunerSpec],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- the study


class Confirm(_Model):
    """Re-train the best ``top_k`` members of each cell with ``seeds`` fresh seeds."""

    top_k: PosInt = 1
    seeds: PosInt = 3


class EarlyStopping(_Model):
    """Stop a member whose best val has not improved by ``min_delta`` (relative) for
    ``patience`` reports: it has plateaued, and its slot can train someone else."""

    patience: PosInt = Field(10, description="reports without improvement before a member stops")
    min_delta: Annotated[Float, Field(ge=0, lt=1)] = Field(1e-3, description="relative improvement that counts")


class QuasiNewtonFinish(_Model):
    """Finish members with batched float64 L-BFGS after their Adam epochs: Adam stalls at a
    size-independent floor that flattens scaling curves; a quasi-Newton finish reaches the
    capacity floor of small nets (Michaud et al. 2023). Costly, so by default only the
    confirmation runs (the ones a scaling point is read from) are finished."""

    iterations: Annotated[Int, Field(ge=1, le=100_000)] = Field(500, description="L-BFGS iterations")
    history: Annotated[Int, Field(ge=1, le=200)] = Field(20, description="(s, y) pairs kept")
    search: bool = Field(False, description="also finish search-phase members")


class Resources(_Model):
    """Ray resources of one trial (one cohort). Fractional GPUs share a device."""

    cpu: Annotated[Float, Field(gt=0)] = 1.0
    gpu: Annotated[Float, Field(ge=0)] = 0.0

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise _fail("Ray accepts fractional GPUs only below 1 (use e.g. 0.25, 1 or 2)")
        return v


def target_io(target) -> tuple[int, int]:
    """(d_in, d_out) of a target from its config alone (no data is loaded)."""
    if getattr(target, "kind", None) == "parquet":
        return len(target.features), len(target.targets)
    return int(target.d_in), int(getattr(target, "d_out", 1))


class Study(_Model):
    """A validated study file. Build it with `load_study` / `parse_study`."""

    name: Name
    description: str = ""
    target: TargetSpec
    activation: Literal[ACTIVATIONS] = "tanh"  # type: ignore[valid-type]
    budgets: Annotated[list[PosInt], Field(min_length=1, max_length=MAX_BUDGETS)]
    tolerance: Annotated[Float, Field(gt=0, le=0.5)] = 0.02
    policy: Literal[budget_solver.POLICIES] = budget_solver.DEFAULT_POLICY  # type: ignore[valid-type]
    shapes_per_cell: PosInt = Field(1, description="best shapes kept per cell; its trials are split over them")
    families: Annotated[dict[Label, FamilySpec], Field(min_length=1)]
    search_space: dict[HParam, SearchParam]
    sampler: SamplerSpec = TPESamplerSpec()
    pruner: PrunerSpec = SuccessiveHalvingPrunerSpec()
    trials_per_cell: PosInt = Field(24, description="members (Optuna trials) per (family, budget) cell")
    cohort_size: PosIntOrAuto = Field(16, description="members trained side by side in one Ray trial; below "
                                       "trials_per_cell, so slots freed by pruning are refilled by asks that "
                                       "see told results")
    epochs: PosInt = 200
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="lr decay over each member's epochs (constant Adam plateaus at an optimiser floor)")
    lr_floor: Annotated[Float, Field(ge=0, le=1)] = Field(0.01, description="cosine ends at lr × lr_floor")
    early_stopping: EarlyStopping | None = Field(EarlyStopping(), description="null → every member runs all epochs")
    finish: QuasiNewtonFinish | None = Field(None, description="L-BFGS finish after Adam; null → none")
    fit_form: Literal["saturating", "power", "broken"] = Field(
        "saturating", description="law fitted per family: saturating E + A·P^-α (default), power A·P^-α "
                                  "(E = 0: a noise-free target trained to capacity), broken (two exponents)")
    batch_size: PosInt | None = Field(None, description="minibatch size; null = full batch")
    report_every: PosInt = Field(10, description="epochs between validation reports (pruning checks)")
    threshold: Annotated[Float, Field(gt=0)] | None = Field(None, description="error level whose first-reach epoch is recorded")
    metric: Literal[METRICS] = "rmse"  # type: ignore[valid-type]
    confirm: Confirm | None = None
    resources: Resources = Resources()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    compile: Literal["auto", True, False] = "auto"
    checkpoint_every: PosInt = Field(5, description="reports between cohort checkpoints")
    seed: NonNegInt = Field(0, description="base seed of member seeds")
    strict: bool = Field(False, description="plan warnings (untrainable shapes, fixed axes "
                         "changing between budgets) are errors instead")
    tracking_uri: str | None = Field(None, description="MLflow URI; null → $MLFLOW_TRACKING_URI, else SQLite in the study dir")
    optuna_storage: str | None = Field(None, description="Optuna storage URL; null → $DLOR_OPTUNA_STORAGE, else SQLite in the study dir")
    ray_address: str | None = Field(None, description="Ray cluster address; null → embedded local Ray")
    output_dir: str | None = Field(None, description="null → $DLOR_OUTPUT_DIR, else ./runs")

    _source: str = PrivateAttr("<memory>")
    _base_dir: Path | None = PrivateAttr(None)

    @field_validator(*LOCATION_FIELDS)
    @classmethod
    def _location_text(cls, v: str | None, info) -> str | None:
        """Locations are paths/URLs: no NUL (the OS would refuse them deep in a launch),
        no empty string, and an ``output_dir`` ``~user`` must name a user that exists."""
        if v is None:
            return v
        if "\x00" in v:
            raise _fail("must not contain a NUL character")
        if not v.strip():
            raise _fail("must not be empty (use null for the default)")
        if info.field_name == "output_dir":
            _expand_user(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _family_defaults_to_label(cls, data: Any) -> Any:
        """``dense: {...}`` means family dense; done before validation so it is hashed."""
        if isinstance(data, dict) and isinstance(data.get("families"), dict):
            fams = {}
            for label, fam in data["families"].items():
                if isinstance(fam, dict) and "family" not in fam and label in FAMILIES:
                    fam = {**fam, "family": label}
                fams[label] = fam
            data = {**data, "families": fams}
        return data

    @field_validator("budgets")
    @classmethod
    def _unique_sorted(cls, v: list[int]) -> list[int]:
        dupes = sorted({b for b in v if v.count(b) > 1})
        if dupes:
            raise _fail(f"duplicate budgets {dupes}")
        return sorted(v)

    @field_validator("search_space")
    @classmethod
    def _lr_required(cls, v: dict) -> dict:
        if "lr" not in v:
            raise _fail("'lr' is required (a distribution or a fixed number)", list(HPARAMS))
        return v

    # ---- derived values

    @property
    def source(self) -> str:
        """The file this study was loaded from (``<memory>`` for parsed dicts)."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Folder relative target paths (Parquet) resolve against: the study file's."""
        return self._base_dir if self._base_dir is not None else Path(".")

    @property
    def d_in(self) -> int:
        return target_io(self.target)[0]

    @property
    def d_out(self) -> int:
        return target_io(self.target)[1]

    @property
    def n_reports(self) -> int:
        """Validation reports per member: one every ``report_every`` epochs."""
        return self.epochs // self.report_every

    def solve_kwargs(self, label: str) -> dict:
        """Everything `budget.solve` / `budget.solve_family` need for one family label, except the budget(s)."""
        fam = self.families[label]
        return {
            "tolerance": self.tolerance, "policy": self.policy,
            "d_in": self.d_in, "d_out": self.d_out, "activation": self.activation,
            "rules": fam.rules(), **fam.grid(),
        }

    def spec_hash(self) -> str:
        """First 12 hex of sha256 over canonical JSON: same computation → same hash.

        Canonical = validated values with defaults filled, keys sorted, budgets sorted,
        so formatting, key order, comments and ``1e3`` vs ``1000`` do not matter.
        Where the study runs and records (`LOCATION_FIELDS`) and its description are
        left out: resuming an interrupted study on a cluster, or against another
        tracking server, must not count as a different study.

        A Parquet target's *content* is part of the computation: its sha256 (``target.sha256``
        when pinned, else the file's, see `data_sha256`) is hashed in, so a changed file is a
        different study, never silently mixed into an existing one.
        """
        data = self.model_dump(mode="json", exclude=set(LOCATION_FIELDS) | {"description"})
        sha = self.data_sha256()
        if sha is not None:
            data["target"]["sha256"] = sha
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def data_sha256(self) -> str | None:
        """sha256 of a Parquet target's file (its pin if set; cached by size+mtime); None
        for synthetic targets. DataError (naming the file) if the file cannot be read."""
        from .targets import ParquetTarget, file_sha256, parquet_path
        if not isinstance(self.target, ParquetTarget):
            return None
        return self.target.sha256 or file_sha256(parquet_path(self.target, self.base_dir))

    def with_data_pinned(self, sha256: str | None) -> Study:
        """A copy whose Parquet target carries ``sha256``: workers re-parse the spec, so the
        pin travels with it and they check they read the same bytes (and need not hash the
        file to compute the study hash). Unchanged for synthetic targets."""
        if sha256 is None or getattr(self.target, "kind", None) != "parquet":
            return self
        pinned = self.model_copy(update={"target": self.target.model_copy(update={"sha256": sha256})})
        pinned._source, pinned._base_dir = self._source, self._base_dir
        return pinned

    def resolved_output_dir(self) -> Path:
        """``output_dir``, else env ``DLOR_OUTPUT_DIR``, else ``runs``; relative to the cwd."""
        raw = self.output_dir or os.environ.get("DLOR_OUTPUT_DIR") or "runs"
        where = "output_dir" if self.output_dir else "$DLOR_OUTPUT_DIR"
        if "\x00" in raw:
            raise SpecError(f"{self.source}: {where}: must not contain a NUL character (got {raw!r})")
        try:
            return _expand_user(raw).resolve()
        except PydanticCustomError as e:
            raise SpecError(f"{self.source}: {where}: {e.message()} (got {raw!r})") from None

    def study_dir(self) -> Path:
        """``<output_dir>/<name>``; refuses any name that would escape ``output_dir``."""
        root = self.resolved_output_dir()
        path = (root / self.name).resolve()
        if path == root or not path.is_relative_to(root):
            raise SpecError(f"{self.source}: name: {self.name!r} would place the study outside {root}")
        return path

    def resolved_tracking_uri(self) -> str:
        """``tracking_uri``, else env ``MLFLOW_TRACKING_URI``, else SQLite in the study dir."""
        return (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{self.study_dir() / 'mlflow.db'}")

    def resolved_optuna_storage(self) -> str:
        """``optuna_storage``, else env ``DLOR_OPTUNA_STORAGE``, else an Optuna journal
        file in the study dir (``journal:///…``: ~6× cheaper per report than SQLite and
        safe for several local worker processes; use PostgreSQL for clusters)."""
        return (self.optuna_storage or os.environ.get("DLOR_OPTUNA_STORAGE")
                or f"journal:///{self.study_dir() / 'optuna.journal'}")


# --------------------------------------------------------------------------- where a study lands

#: Folders no study folder or store may be (or lie under): the tool runs as whoever
#: launches it, and ``output_dir: /`` + ``name: etc`` would otherwise write into /etc.
#: `ALLOWED_UNDER_SYSTEM` are the exceptions.
SYSTEM_DIRS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc",
               "/sys", "/var")
ALLOWED_UNDER_SYSTEM = ("/var/tmp",)


def _expand_user(raw: str) -> Path:
    """``Path(raw).expanduser()``; a ``~user`` that does not exist is an error (Path
    would raise a bare RuntimeError, os.path would leave a literal ``~nosuchuser``)."""
    if raw.startswith("~"):
        head = raw.split("/", 1)[0]
        expanded = os.path.expanduser(head)
        if expanded == head:
            raise _fail(f"{head!r}: no such user (cannot expand {head})")
    return Path(os.path.expanduser(raw))


def system_folder(path: Path) -> str | None:
    """Which protected folder ``path`` is (or lies under), else None. Both the path as
    given (absolute) and its fully resolved form are checked (``/lib`` may link to
    ``/usr/lib``, a symlinked folder may point into ``/etc``). ``/`` and the user's
    home folder itself are protected too (folders under the home are fine)."""
    home = {Path(os.path.expanduser("~")).absolute(), Path(os.path.expanduser("~")).resolve()}
    given = os.path.abspath(path)
    given = "/" + given.lstrip("/") if given.startswith("//") else given   # POSIX keeps a leading //
    for p in dict.fromkeys([Path(given), Path(given).resolve()]):
        if p == Path(p.anchor):
            return "/ (the root folder)"
        if p in home:
            return f"{p} (the home folder itself)"
        if any(p == Path(a) or p.is_relative_to(a) for a in ALLOWED_UNDER_SYSTEM):
            continue
        top = "/" + p.parts[1] if len(p.parts) > 1 else ""
        if top in SYSTEM_DIRS:
            return top
    return None


def _local_store_path(url: str) -> tuple[str, Path] | None:
    """(kind, file or folder) of a local store URL, None for a server (or in-memory) store.
    Kinds: ``sqlite`` (an SQLite file), ``journal`` (an Optuna journal file), ``file``
    (an MLflow file-store folder: ``file://…`` or a bare path)."""
    from urllib.parse import unquote, urlsplit
    if url.startswith("sqlite"):
        rest = url.split("://", 1)[1] if "://" in url else ""
        rest = rest[1:] if rest.startswith("/") else rest     # sqlite:///rel, sqlite:////abs
        rest = rest.split("?", 1)[0]
        if not rest or rest == ":memory:" or rest.startswith("file:"):
            return None
        return "sqlite", Path(unquote(rest)).expanduser()
    if url.startswith("journal://"):
        return "journal", Path(url[len("journal://"):]).expanduser()
    if url.startswith("file:"):
        parts = urlsplit(url)
        return "file", Path(unquote(parts.path or "/"))
    if "://" not in url and not url.startswith(("databricks", "uc:")):
        return "file", Path(url).expanduser()
    return None


def _store_problem(kind: str, path: Path) -> str | None:
    """Why an existing ``path`` cannot be a store of ``kind`` (None if it can)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be checked ({e.strerror})"
    if kind == "file":
        return None if stat.S_ISDIR(st.st_mode) else "exists and is not a folder (an MLflow file store is one)"
    if not stat.S_ISREG(st.st_mode):
        return f"exists and is not a regular file (an {'SQLite database' if kind == 'sqlite' else 'Optuna journal'} is one)"
    if st.st_size == 0:
        return None   # an empty file: both stores start from one
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if kind == "sqlite":
        return None if head == b"SQLite format 3\x00" else "exists and is not an SQLite database"
    return None if head.lstrip()[:1] == b"{" else "exists and is not an Optuna journal (JSON lines)"


def check_locations(study: "Study", *, folder: bool = True) -> None:
    """Refuse a study that would land where it must not: a study folder or a local store
    (SQLite/journal file, MLflow file store) that is, or lies under, a system folder
    (`system_folder`); a store URL pointing at an existing file of another kind
    (``sqlite:////etc/passwd``); and (``folder=True``) an existing study folder that is
    not this study's: a non-folder, or a non-empty folder without a ``study.json`` naming
    this study. A study folder is only ever created fresh or reused. Reads only; raises
    SpecError (exit 2) naming the field and the path."""
    src = study.source
    sdir = study.study_dir()
    where = "output_dir" if study.output_dir else ("$DLOR_OUTPUT_DIR" if os.environ.get("DLOR_OUTPUT_DIR")
                                                    else "output_dir (default ./runs)")
    bad = system_folder(sdir)
    if bad:
        raise SpecError(f"{src}: {where} + name: the study folder would be {sdir}, which is or lies under "
                        f"the system folder {bad}; set output_dir to a folder of your own")
    if folder:
        check_study_folder(study, sdir)
    for field_name, env, url in (("tracking_uri", "MLFLOW_TRACKING_URI", study.resolved_tracking_uri()),
                                 ("optuna_storage", "DLOR_OPTUNA_STORAGE", study.resolved_optuna_storage())):
        label = (field_name if getattr(study, field_name) else f"${env}" if os.environ.get(env)
                 else f"{field_name} (default: in the study folder)")
        if "\x00" in url:
            raise SpecError(f"{src}: {label}: must not contain a NUL character (got {url!r})")
        loc = _local_store_path(url)
        if loc is None:
            continue
        kind, path = loc
        path = os.path.abspath(path)
        path = Path("/" + path.lstrip("/") if path.startswith("//") else path)
        bad = system_folder(path)
        if bad:
            raise SpecError(f"{src}: {label}: {url} puts the store at {path}, which is or lies under the "
                            f"system folder {bad}; point it at a folder of your own")
        why = _store_problem(kind, path)
        if why:
            raise SpecError(f"{src}: {label}: {url}: {path} {why}")


def read_study_marker(marker: Path, study_name: str, error=SpecError, prefix: str = "") -> dict:
    """A study folder's ``study.json`` as a dict; an unreadable one raises ``error`` naming the
    file (nothing may be written into a folder whose owner cannot be told)."""
    try:
        if marker.stat().st_size > 64 * 1024 * 1024:
            raise ValueError("larger than 64 MiB")
        old = json.loads(marker.read_text())
        if not isinstance(old, dict):
            raise ValueError(f"a JSON {type(old).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise error(f"{prefix}{marker} is unreadable ({e}): cannot tell whether {marker.parent} holds "
                    f"study {study_name!r}; restore the file or remove the folder") from None
    return old


def check_study_folder(study: "Study", sdir: Path) -> None:
    """An existing ``sdir`` must be this study's folder (or an empty folder)."""
    src = study.source
    try:
        st = sdir.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise SpecError(f"{src}: study folder {sdir}: cannot be checked ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(f"{src}: study folder {sdir} exists and is not a folder; "
                        f"choose another output_dir or name")
    marker = sdir / "study.json"
    if not marker.exists():
        try:   # a launch killed while writing its first study.json leaves only its tmp file
            empty = all(re.fullmatch(r"study\.json\.tmp\d+", e.name) for e in os.scandir(sdir))
        except OSError as e:
            raise SpecError(f"{src}: study folder {sdir}: cannot be listed ({e.strerror})") from None
        if empty:
            return
        raise SpecError(f"{src}: study folder {sdir} exists, is not empty and holds no study.json: it is not a "
                        f"dlor-scale study, so nothing is written there; choose another output_dir or name")
    old = read_study_marker(marker, study.name, SpecError, prefix=f"{src}: ")
    if old.get("name") != study.name:
        raise SpecError(f"{src}: study folder {sdir} holds another study ({old.get('name')!r} in its "
                        f"study.json), not {study.name!r}; choose another output_dir or name")


def study_json_schema() -> dict:
    """JSON schema of the study file (editor completion, ``dlor-scale schema``)."""
    return Study.model_json_schema()


# --------------------------------------------------------------------------- errors


@dataclass
class Problem:
    """One thing wrong with a spec, located by its YAML path."""

    path: str
    what: str
    got: Any = field(default=None)
    has_got: bool = False
    allowed: list[str] | None = None

    def format(self, source: str) -> str:
        line = f"{source}: {self.path or '<top level>'}: {self.what}"
        if self.has_got:
            line += f" (got {_show(self.got)})"
        if self.allowed:
            line += f"; allowed: {', '.join(self.allowed)}"
        return line


def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else json.dumps(v, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _fmt_path(parts: list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _yaml_path(loc: tuple, data: Any, error_type: str) -> list:
    """Turn pydantic's loc into the path the user wrote.

    pydantic inserts union tags (``range``, ``teacher``) and ``[key]`` markers that are
    not in the file; walking the input alongside keeps only real keys and indices.
    """
    parts, node = [], data
    for i, item in enumerate(loc):
        if isinstance(node, dict) and item in node:
            parts.append(item if isinstance(item, str) else str(item))  # a key, even if numeric
            node = node[item]
        elif isinstance(node, (list, tuple)) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(item)
            node = node[item]
        elif i == len(loc) - 1 and error_type == "missing":
            parts.append(item)
    return parts


def _concrete(tp: Any, node: Any) -> Any:
    """Strip Annotated/Optional and pick the union member the input node is meant for."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [_concrete(a, node) for a in get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if isinstance(node, dict) and models:
                for m in models:
                    for disc in ("kind", "type"):
                        f = m.model_fields.get(disc)
                        if f is not None and node.get(disc) in get_args(f.annotation):
                            return m
                return models[0]
            lists = [m for m in members if get_origin(m) is list]
            if isinstance(node, list) and lists:
                return lists[0]
            return members[0] if members else None
        else:
            return tp


def _type_at(parts: list, data: Any, resolve: bool = True) -> Any:
    """The declared type at a YAML path (to list allowed keys or literal values)."""
    tp, node = Study, data
    for item in parts:
        tp = _concrete(tp, node)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(item)
            if f is None:
                return None
            tp = f.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return _concrete(tp, node) if resolve else tp


def _union_tags(tp: Any, disc: str) -> list[str]:
    """Values of the discriminator field across a (possibly Annotated) union's models."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    tags = []
    for member in get_args(tp):
        f = getattr(member, "model_fields", {}).get(disc)
        if f is not None:
            tags += [str(a) for a in get_args(f.annotation)]
    return tags


def _yaml_literal(v: Any) -> str:
    return {True: "true", False: "false"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _quoted(expected: str) -> list[str]:
    """Values out of pydantic's "'a', 'b' or True" strings."""
    return [a or _yaml_literal(b == "True") for a, b in re.findall(r"'([^']*)'|\b(True|False)\b", expected)]


def _problem(err: dict, data: Any) -> Problem:
    kind, ctx = err["type"], err.get("ctx") or {}
    parts = _yaml_path(err["loc"], data, kind)
    p = Problem(_fmt_path(parts), err["msg"], err.get("input"), True)
    if kind == "missing":
        p.what, p.has_got = "required key is missing", False
        tp = _type_at(parts, data)
        if get_origin(tp) is Literal:
            p.allowed = [_yaml_literal(a) for a in get_args(tp)]
    elif kind == "extra_forbidden":
        p.what = "unknown key"
        parent = _concrete(_type_at(parts[:-1], data), None) if parts[:-1] else Study
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            p.allowed = list(parent.model_fields)
    elif kind in ("literal_error", "enum"):
        p.what = "invalid value"
        p.allowed = _quoted(str(ctx.get("expected", "")))
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = str(ctx.get("discriminator", "")).strip("'")
        p.path = _fmt_path([*parts, disc])
        p.allowed = _quoted(str(ctx.get("expected_tags", ""))) or _union_tags(_type_at(parts, data, False), disc)
        if kind == "union_tag_invalid":
            p.what, p.got = f"unknown {disc}", ctx.get("tag")
        else:
            p.what, p.has_got = "required key is missing", False
    elif kind == "dlor":
        p.what, p.allowed = ctx["msg"], ctx.get("allowed")
    elif kind == "value_error":
        p.what = err["msg"].removeprefix("Value error, ")
    return p


def _spec_error(source: str, problems: list[Problem]) -> SpecError:
    lines = list(dict.fromkeys(p.format(source) for p in problems))
    header = f"{source}: {len(lines)} problem{'s' if len(lines) != 1 else ''} in study spec"
    err = SpecError("\n".join([header, *lines]))
    err.problems = problems  # structured, for the CLI and tests
    return err


# --------------------------------------------------------------------------- cross-field rules


def _in_domain(name: str, lo: float, hi: float) -> bool:
    d_lo, d_hi, lo_inc, hi_inc = HPARAM_DOMAINS[name]
    ok_lo = lo >= d_lo if lo_inc else lo > d_lo
    ok_hi = hi <= d_hi if hi_inc else hi < d_hi
    return ok_lo and ok_hi


def _domain_text(name: str) -> str:
    lo, hi, lo_inc, hi_inc = HPARAM_DOMAINS[name]
    return f"{'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"


def _budget_index(raw: Any, value: int) -> int | None:
    """Where the user wrote a budget (the model sorts them; the message should not)."""
    if isinstance(raw, list):
        for i, v in enumerate(raw):
            if _integral(v) == value:
                return i
    return None


def search_problems(s: Study) -> list[Problem]:
    """Sampler / pruner / slots combinations that can never prune or never learn.

    Warnings, not errors (an unpruned or random search can be deliberate); a study with
    ``strict: true`` refuses them. Each names the fields and the fix. The counts follow
    the planner: a cell's trials are split over its shapes, and each shape is one cohort
    whose first ``slots`` asks form one wave before anything is told.
    """
    from .search import make_pruner, pruner_steps
    out: list[Problem] = []

    def warn(path, what):
        out.append(Problem(path, what))

    n = s.trials_per_cell
    quota = -(-n // max(1, min(s.shapes_per_cell, n)))            # trials of the largest cohort
    slots = max(1, min(64 if s.cohort_size == "auto" else s.cohort_size, quota))  # plan.cohort_slots
    pr, sa = s.pruner, s.sampler
    if pr.kind in ("median", "percentile"):
        need = max(pr.n_startup_trials, pr.n_min_trials)
        if need > n - 1:
            field = "n_startup_trials" if pr.n_startup_trials >= pr.n_min_trials else "n_min_trials"
            warn(f"pruner.{field}", f"the pruner waits for {need} other trials at a step, but a cell has "
                 f"only {n} trials (trials_per_cell), so nothing is ever pruned; "
                 f"fix: pruner.{field} ≤ {max(1, n // 2)}")
    if pr.kind in ("median", "percentile", "successive_halving", "hyperband"):
        try:
            steps = pruner_steps(make_pruner(pr, epochs=s.epochs, report_every=s.report_every))
        except (ValueError, ZeroDivisionError):
            steps = None
        if steps == []:
            where = "n_warmup_steps" if pr.kind in ("median", "percentile") else "min_resource"
            warn(f"pruner.{where}", f"no report step (every report_every={s.report_every} epochs) lies between "
                 f"it and the last epoch ({s.epochs}), where nobody is pruned, so nothing is ever pruned; "
                 f"fix: lower pruner.{where}" + (" (or auto)" if where == "min_resource" else ""))
    if pr.kind == "wilcoxon" and quota <= slots:
        warn("pruner.kind", f"wilcoxon compares against the best completed trial, and a cohort of {slots} slots "
             f"with {quota} trials completes none before its last epoch, so nothing is ever pruned; "
             "fix: pruner.kind successive_halving or median")
    if sa.kind in ("tpe", "cmaes"):
        if quota <= slots:
            warn("trials_per_cell", f"all {quota} trials of a cohort are asked in one wave (cohort_size gives "
                 f"{slots} slots), before any result is told, so sampler {sa.kind} never learns (it is "
                 f"random search); fix: more trials than slots, e.g. trials_per_cell: "
                 f"{math.ceil(1.5 * slots) * max(1, min(s.shapes_per_cell, n))} with cohort_size: {slots} "
                 "(slots freed by pruning are refilled by asks that see told results; benchmarks/README.md: "
                 "about half the member-epochs), or sampler.kind: random / qmc")
        elif sa.kind == "tpe" and sa.n_startup_trials != "auto" and sa.n_startup_trials > quota - slots:
            warn("sampler.n_startup_trials", f"{sa.n_startup_trials} exceeds the {quota - slots} trials a cohort "
                 f"asks after its first wave, so TPE may never leave its random startup; "
                 "fix: sampler.n_startup_trials: auto")
    return out


def search_warnings(s: Study) -> list[str]:
    """`search_problems` as one line each (``<yaml path>: <what and fix>``) for plans."""
    return [f"{p.path}: {p.what}" for p in search_problems(s)]


def _cross_check(s: Study, raw: dict) -> list[Problem]:
    """Rules spanning several fields, then budget feasibility of every cell."""
    probs: list[Problem] = []

    def bad(path, what, got=None, has_got=True, allowed=None):
        probs.append(Problem(path, what, got, has_got, allowed))

    if s.report_every > s.epochs:
        bad("report_every", f"must be ≤ epochs ({s.epochs}): no member would ever report", s.report_every)
    pr = s.pruner  # its steps are epochs (see the pruner models)
    if pr.kind in ("median", "percentile") and pr.n_warmup_steps >= s.epochs:
        bad("pruner.n_warmup_steps", f"must be < epochs ({s.epochs}); pruner steps are epochs, "
            "so nothing would ever be pruned", pr.n_warmup_steps)
    for key in ("min_resource", "max_resource"):
        v = getattr(pr, key, "auto")
        if v != "auto" and v > s.epochs:
            bad(f"pruner.{key}", f"must be ≤ epochs ({s.epochs}); pruner steps are epochs", v)
    if getattr(s, "strict", False):  # what validate and the plan would only warn about
        for p in search_problems(s):
            bad(p.path, f"strict: {p.what}", has_got=False)
    if s.sampler.kind == "cmaes" and importlib.util.find_spec("cmaes") is None:
        bad("sampler.kind", "cmaes needs the 'cmaes' package (pip install cmaes)", "cmaes")
    if s.device == "cuda" and s.resources.gpu == 0:
        bad("device", "cuda needs resources.gpu > 0 (Ray hides GPUs from trials that ask for none)", "cuda")
    if s.confirm is not None and s.confirm.top_k > s.trials_per_cell:
        bad("confirm.top_k", f"must be ≤ trials_per_cell ({s.trials_per_cell})", s.confirm.top_k)
    if s.shapes_per_cell > s.trials_per_cell:
        bad("shapes_per_cell", f"must be ≤ trials_per_cell ({s.trials_per_cell}): every shape needs a trial",
            s.shapes_per_cell)
    if getattr(s.target, "kind", None) == "parquet":   # read by the OS: checked before any open
        tp = s.target.path
        if not tp.strip():
            bad("target.path", "must name a Parquet file (the path is empty)", tp)
        elif "\x00" in tp:
            bad("target.path", "must not contain a NUL character", tp)
        elif tp.startswith("~"):
            try:
                _expand_user(tp)
            except PydanticCustomError as e:
                bad("target.path", e.message(), tp)
    n_train = getattr(s.target, "n_train", None)
    if s.batch_size is not None and n_train is not None and s.batch_size > n_train:
        bad("batch_size", f"exceeds target.n_train ({n_train}); use null for full batch", s.batch_size)

    for name, param in s.search_space.items():
        lo, hi = param.bounds() if isinstance(param, Distribution) else (param, param)
        if not _in_domain(name, lo, hi):
            bad(f"search_space.{name}", f"{name} must lie in {_domain_text(name)}",
                raw["search_space"][name])

    feasible: list[str] = []
    for label, fam in s.families.items():
        users_ok = True
        for axis in sorted(fam.model_fields_set & set(AXIS_USERS)):
            default = FamilySpec.model_fields[axis].default
            if fam.family not in AXIS_USERS[axis] and getattr(fam, axis) != default:
                users_ok = False
                used = [a for a, fs in AXIS_USERS.items() if fam.family in fs]
                bad(f"families.{label}.{axis}", f"family {fam.family} has no {axis}",
                    raw["families"][label][axis], allowed=used + ["family", "io", "max_depth"])
        if fam.grid_size() > MAX_GRID:
            users_ok = False
            bad(f"families.{label}", f"the ranges span {fam.grid_size():,} shapes (limit {MAX_GRID:,}); "
                "narrow them or use a range step", has_got=False)
        if users_ok:
            feasible.append(label)
    total = sum(f.grid_size() for f in s.families.values())
    if total > MAX_TOTAL_GRID:
        bad("families", f"the families' ranges span {total:,} shapes together (limit MAX_TOTAL_GRID = "
            f"{MAX_TOTAL_GRID:,}); narrow them or use range steps", has_got=False)
        feasible = []

    for label in feasible:
        try:  # one enumeration of the family's grid for all budgets
            sol = budget_solver.solve_family(s.families[label].family, s.budgets, limit=1, **s.solve_kwargs(label))
            if s.strict:  # what the plan would only warn about
                for line in budget_solver.plan_warnings(label, s.families[label].family, sol):
                    bad(f"families.{label}", f"strict: {line}", has_got=False)
            continue
        except BudgetError:
            pass
        for b in s.budgets:  # locate every unreachable budget, not just the first
            try:
                budget_solver.solve(s.families[label].family, b, limit=1, **s.solve_kwargs(label))
            except BudgetError as e:
                i = _budget_index(raw.get("budgets"), b)
                bad(f"budgets[{i}]" if i is not None else "budgets", f"families.{label}: {e}", b)
    return probs


# --------------------------------------------------------------------------- loading


#: Limits on a spec file, checked before it can cost memory or time (a study spec is a
#: few KB; anything near these is an accident or an attack, e.g. "billion laughs").
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 50
_KEY_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "merge")}


class _YamlLimit(yaml.MarkedYAMLError):
    """A spec YAML that is too big, too deep, self-referential or has odd keys."""


def _check_yaml_graph(root: yaml.Node) -> None:
    """Walk the composed node graph as construction would *expand* it (aliases count
    every time they are used), refusing past `MAX_YAML_NODES` nodes, deeper than
    `MAX_YAML_DEPTH`, a node that contains itself, or a key that is not a plain scalar.

    PyYAML shares aliased nodes, so a bomb composes cheaply but explodes later in
    validation and hashing; counting the expanded tree stops it here, in microseconds.
    """
    count = 0

    def walk(node, depth, ancestors):
        nonlocal count
        count += 1
        if count > MAX_YAML_NODES:
            raise _YamlLimit(problem=f"more than {MAX_YAML_NODES:,} YAML nodes after alias expansion "
                             "(limit MAX_YAML_NODES; an alias bomb?)", problem_mark=node.start_mark)
        if depth > MAX_YAML_DEPTH:
            raise _YamlLimit(problem=f"nested deeper than {MAX_YAML_DEPTH} levels (limit MAX_YAML_DEPTH)",
                             problem_mark=node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return
        if id(node) in ancestors:
            raise _YamlLimit(problem="self-referential YAML (an anchor used inside itself)",
                             problem_mark=node.start_mark)
        ancestors.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag not in _KEY_TAGS:
                    raise _YamlLimit(problem=f"mapping keys must be plain names (got a {k.tag.rsplit(':', 1)[-1]} key)",
                                     problem_mark=k.start_mark)
                walk(k, depth + 1, ancestors)
                walk(v, depth + 1, ancestors)
        else:
            for v in node.value:
                walk(v, depth + 1, ancestors)
        ancestors.discard(id(node))

    walk(root, 0, set())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one,
    so a second ``dense:`` family would quietly replace the first)."""

    _depth = 0

    def compose_node(self, parent, index):
        """Bounded nesting while composing (PyYAML recurses: 20,000 ``[`` → RecursionError)."""
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimit(problem=f"nested deeper than {MAX_YAML_DEPTH} levels (limit MAX_YAML_DEPTH)",
                                 problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _check_yaml_graph(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable key: the base constructor reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r} (first defined on line {first + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_study(data: dict, source: str = "<memory>", base_dir: str | Path | None = None) -> Study:
    """Validate an already-parsed mapping; raises SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: <top level>: a study must be a mapping of settings "
                        f"(got {type(data).__name__})")
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise _spec_error(source, [_problem(err, data) for err in e.errors(include_url=False)]) from None
    problems = _cross_check(study, data)
    if problems:
        raise _spec_error(source, problems)
    study._source = source
    study._base_dir = Path(base_dir) if base_dir is not None else Path(source).parent
    return study


def _read_spec_text(p: Path) -> str:
    """The file's text, refusing anything but a regular file of at most `MAX_SPEC_BYTES`
    (stat first, then read at most limit+1 bytes: a FIFO, ``/dev/zero`` or a 50 MB file
    must fail at once, not hang or fill memory)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise SpecError(f"{p}: study file not found") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{p}: cannot read study file: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SpecError(f"{p}: a study file must be a regular file ({what})")
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{p}: study file is {st.st_size:,} bytes (limit MAX_SPEC_BYTES = {MAX_SPEC_BYTES:,})")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped since the stat
                raise SpecError(f"{p}: a study file must be a regular file")
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{p}: cannot read study file: {e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{p}: study file exceeds {MAX_SPEC_BYTES:,} bytes (limit MAX_SPEC_BYTES)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: cannot read study file: not UTF-8 text ({e})") from None


def load_study(path: str | Path) -> Study:
    """Read, parse and validate a study YAML file."""
    p = Path(path)
    text = _read_spec_text(p)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SpecError(f"{p}{where}: invalid YAML (line {mark.line + 1 if mark else '?'}): "
                        f"{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(f"{p}: <top level>: a study must be a mapping of settings (got {got})")
    return parse_study(data, str(p), base_dir=p.parent)
