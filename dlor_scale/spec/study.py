"""The study model: every setting of a study file, its defaults and derived values."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .. import budget as budget_solver
from ..errors import SpecError
from ..run_schema import HPARAMS
from ..shapes import ACTIVATIONS, FAMILIES
from ..studydir import StudyDir
from ..targets import TargetSpec
from .distributions import HParam, SearchParam
from .families import FamilySpec, Label
from .locations import expand_user
from .sampler_pruner import PrunerSpec, SamplerSpec, SuccessiveHalvingPrunerSpec, TPESamplerSpec
from .vocabulary import (LOCATION_FIELDS, MAX_BUDGETS, METRICS, Float, Int, Name, NonNegInt, PosInt,
                         PosIntOrAuto, SpecModel, invalid)


class Confirm(SpecModel):
    """Re-train the best ``top_k`` members of each cell with ``seeds`` fresh seeds."""

    top_k: PosInt = 1
    seeds: PosInt = 3


class EarlyStopping(SpecModel):
    """Stop a member whose best val has not improved by ``min_delta`` (relative) for
    ``patience`` reports: it has plateaued, and its slot can train someone else."""

    patience: PosInt = Field(10, description="reports without improvement before a member stops")
    min_delta: Annotated[Float, Field(ge=0, lt=1)] = Field(1e-3, description="relative improvement that counts")


#: Fields added after studies were run, hashed only when set away from their default: at
#: the default they mean what the spec meant before they existed, so an existing study
#: folder keeps its hash (and relaunching it keeps resuming instead of refusing).
HASHED_ONLY_IF_SET: dict[tuple[str, ...], object] = {("finish", "precision"): "fp64", ("parts_per_cell",): 1}


class QuasiNewtonFinish(SpecModel):
    """Finish members with batched L-BFGS after their Adam epochs: Adam stalls at a
    size-independent floor that flattens scaling curves; a quasi-Newton finish reaches the
    capacity floor of small nets (Michaud et al. 2023). Costly, so by default only the
    confirmation runs (the ones a scaling point is read from) are finished.

    ``precision``: float64 (default) is what errors far below float32's resolution need;
    float32 costs ~1.6× less on CPU and, where errors are ≥ 1e-2, reaches the same points
    (benchmarks/results/finish_precision.md measured it on the quickstart)."""

    iterations: Annotated[Int, Field(ge=1, le=100_000)] = Field(500, description="L-BFGS iterations")
    history: Annotated[Int, Field(ge=1, le=200)] = Field(20, description="(s, y) pairs kept")
    search: bool = Field(False, description="also finish search-phase members")
    precision: Literal["fp64", "fp32"] = Field("fp64", description="float precision of the finish")


class Resources(SpecModel):
    """Ray resources of one trial (one cohort). Fractional GPUs share a device."""

    cpu: Annotated[Float, Field(gt=0)] = 1.0
    gpu: Annotated[Float, Field(ge=0)] = 0.0

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise invalid("Ray accepts fractional GPUs only below 1 (use e.g. 0.25, 1 or 2)")
        return v


def target_io(target) -> tuple[int, int]:
    """(d_in, d_out) of a target from its config alone (no data is loaded)."""
    if getattr(target, "kind", None) == "parquet":
        return len(target.features), len(target.targets)
    return int(target.d_in), int(getattr(target, "d_out", 1))


class Study(SpecModel):
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
    parts_per_cell: Annotated[Int, Field(ge=1, le=256)] = Field(
        1, description="independent searches each cell's trials are split into, each its own Ray trial with "
                       "the full cohort_size: a cell of many waves trains on several slots at once (for "
                       "clusters with more slots than cells); each part samples and prunes from its own trials")
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
            raise invalid("must not contain a NUL character")
        if not v.strip():
            raise invalid("must not be empty (use null for the default)")
        if info.field_name == "output_dir":
            expand_user(v)
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
            raise invalid(f"duplicate budgets {dupes}")
        return sorted(v)

    @field_validator("search_space")
    @classmethod
    def _lr_required(cls, v: dict) -> dict:
        if "lr" not in v:
            raise invalid("'lr' is required (a distribution or a fixed number)", list(HPARAMS))
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
        for path, default in HASHED_ONLY_IF_SET.items():   # studies older than the field
            *parents, leaf = path
            node = data
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(leaf) == default:
                del node[leaf]
        sha = self.data_sha256()
        if sha is not None:
            data["target"]["sha256"] = sha
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def data_sha256(self) -> str | None:
        """sha256 of a Parquet target's file (its pin if set; cached by size+mtime); None
        for synthetic targets. DataError (naming the file) if the file cannot be read."""
        from ..targets import ParquetTarget, file_sha256, parquet_path
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
            return expand_user(raw).resolve()
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
                or f"sqlite:///{StudyDir(self.study_dir()).mlflow_db}")

    def resolved_optuna_storage(self) -> str:
        """``optuna_storage``, else env ``DLOR_OPTUNA_STORAGE``, else an Optuna journal
        file in the study dir (``journal:///…``: ~6× cheaper per report than SQLite and
        safe for several local worker processes; use PostgreSQL for clusters)."""
        return (self.optuna_storage or os.environ.get("DLOR_OPTUNA_STORAGE")
                or f"journal:///{StudyDir(self.study_dir()).optuna_journal}")


def study_json_schema() -> dict:
    """JSON schema of the study file (editor completion, ``dlor-scale schema``)."""
    return Study.model_json_schema()
