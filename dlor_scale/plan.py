"""Execution plan: which shapes each cell trains, and how its trials are shared out.

Why a separate, pure step: ``dlor-scale launch --dry-run`` must show a researcher exactly what a
study will run (shapes, exact parameter counts, how far each is from its budget,
members and slots per trial) before a single Ray worker starts, and the launcher must
schedule precisely that. Nothing here touches Ray, Optuna or the disk.

Vocabulary: a *cell* is one (family label, budget); it owns one Optuna study. A cell is
realised by one or more *shapes* (``shapes_per_cell``); each (cell, shape) pair is one
Ray Tune trial that trains a packed cohort of members. A *member* is one Optuna trial.
A cell may be split into *parts* (``parts_per_cell``): independent searches over shares of
its trials, each (cell, shape, part) its own Tune trial with the full cohort width, so a
cell of many cohort waves trains on several slots at once (a cluster with more slots than
cells has nothing else to give them).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import budget as budget_solver
from .shapes import Counts, Shape, count_params
from .sizing import cohort_slots
from .spec import Study

#: CPU cost of one layer of a member's training step, in parameter-equivalents. Measured on
#: the quickstart's units (benchmarks/README.md, "Unit order"): a member-step costs about
#: 0.2 µs per parameter but about 70 µs per layer (elementwise work on every layer's
#: activations and one kernel call per op), so a 24-layer DLoR net of 400 parameters
#: trains ~5× slower than a one-hidden-layer net of 800.
LAYER_COST = 330


def member_step_cost(shape: Shape, n_params: int) -> float:
    """Relative CPU time of one member's training step (matmuls ∝ parameters, plus a fixed
    cost per layer). Only ratios matter: it orders units longest-first, so that the long
    ones do not start last and leave slots idle at the end of a phase."""
    return n_params + LAYER_COST * len(shape.layers())


@dataclass(frozen=True)
class ShapePlan:
    """One shape of a cell and its share of the cell's members."""

    shape: Shape
    n_params: int
    counts: Counts
    trials: int  # members Optuna searches on this shape
    cohort_size: int | None  # slots: members trained side by side (None: sized on the worker's GPU)

    @property
    def slots(self) -> int:
        return self.cohort_size

    def unit_cost(self, members: int) -> float:
        """Relative CPU time of a unit training `members` members of this shape."""
        return member_step_cost(self.shape, self.n_params) * members


@dataclass(frozen=True)
class Cell:
    """One (family label, budget) point of the scaling curve."""

    label: str
    family: str
    budget: int
    shapes: tuple[ShapePlan, ...]
    #: Independent searches the cell's trials are split into (1: one search, the usual).
    #: Parts never see each other's trials, so each part samples, prunes and seeds its
    #: members from its own history alone, whatever order Ray runs the parts in.
    parts: int = 1

    def part_trials(self, sp: ShapePlan) -> list[int]:
        """Trials of shape ``sp`` in each part."""
        return split_trials(sp.trials, self.parts)

    def part_slots(self, sp: ShapePlan, part: int = 0) -> int | None:
        """Cohort slots of part ``part`` of shape ``sp`` (part 0 is the largest): the shape's
        own, not shared out. Why: a step of a deep net costs nearly the same for 8 members
        as for 16 (per-layer overhead), so halving a cohort's width doubles its cost per
        member; a part of full width instead runs fewer waves (benchmarks/README.md,
        "Split cells")."""
        if sp.cohort_size is None or self.parts == 1:
            return sp.cohort_size
        return min(sp.cohort_size, self.part_trials(sp)[part])

    @property
    def key(self) -> str:
        return f"{self.label}@{self.budget}"

    @property
    def trials(self) -> int:
        return sum(s.trials for s in self.shapes)

    def optuna_study_name(self, study_name: str) -> str:
        """Per-cell Optuna study: pruners must compare like with like (same family, budget)."""
        return f"{study_name}/{self.key}"


@dataclass(frozen=True)
class Plan:
    study: Study
    cells: tuple[Cell, ...]
    d_in: int
    d_out: int
    #: Budget-solver warnings for the dry run, one line each: cells whose shape breaks a
    #: trainability rule (``cell <label>@<budget> (…): reason; fix: …``, see
    #: `budget.ShapeRules`), then where a family's fixed axes had to change between
    #: budgets (policy ``axis``, prefixed ``families.<label>:``). ``strict`` studies
    #: refuse to load instead.
    warnings: tuple[str, ...] = ()
    #: Designed, not a problem: where a DLoR family's growth axis ran out (depth cap,
    #: branches = width) and width grows instead, prefixed ``families.<label>:``.
    notes: tuple[str, ...] = ()

    @property
    def total_members(self) -> int:
        """Members searched by Optuna (confirmation re-runs not included)."""
        return sum(c.trials for c in self.cells)

    @property
    def confirm_members(self) -> int:
        """Extra members trained to confirm each cell's best (``top_k × seeds`` per cell)."""
        conf = self.study.confirm
        if conf is None:
            return 0
        return sum(min(conf.top_k, c.trials) * conf.seeds for c in self.cells)

    @property
    def total_trials(self) -> int:
        """Ray Tune trials of the search phase: one per (cell, shape, part)."""
        return sum(len(c.shapes) * c.parts for c in self.cells)

    def cell(self, key: str) -> Cell:
        for c in self.cells:
            if c.key == key:
                return c
        raise KeyError(f"no cell {key!r}; cells: {', '.join(c.key for c in self.cells)}")

    def table(self) -> list[dict]:
        """One row per (cell, shape), for the dry-run table and the study's records."""
        res = self.study.resources
        rows = []
        for c in self.cells:
            for sp in c.shapes:
                s = sp.shape
                rows.append({
                    "cell": c.key, "family": c.family, "budget": c.budget, "shape": s.label(),
                    "width": s.width, "depth": s.depth, "rank": s.rank, "branches": s.branches,
                    "diag": s.diag, "n_params": sp.n_params,
                    "rel_err": round((sp.n_params - c.budget) / c.budget, 6),
                    "trials": sp.trials, "parts": c.parts,
                    "slots": c.part_slots(sp) if sp.cohort_size is not None else "auto (GPU)", "cpu": res.cpu, "gpu": res.gpu,
                })
        return rows


def split_trials(total: int, parts: int) -> list[int]:
    """``total`` as evenly as possible over ``parts``; the first parts take the remainder."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def study_device(study: Study) -> str:
    """The device a study's cohorts train on: ``auto`` means CUDA when trials get a GPU."""
    if study.device != "auto":
        return study.device
    return "cuda" if (study.resources.gpu or 0) > 0 else "cpu"


def study_slots(study: Study, shape: Shape, trials: int, *, n_train: int | None = None) -> int | None:
    """A cohort's slots in this study: `sizing.cohort_slots` (the one owner) with the
    study's device, data size and GPU share; the worker calls it too."""
    from .targets import train_rows
    gpu = study.resources.gpu or 0
    rows = n_train if n_train is not None else (
        train_rows(study.target, study.base_dir) if study.cohort_size == "auto" else 1)
    return cohort_slots(study.cohort_size, shape, trials=max(1, trials), n_train=rows,
                        batch_size=study.batch_size, device=study_device(study), share=gpu if 0 < gpu < 1 else 1.0)


def make_plan(study: Study) -> Plan:
    """Solve every family's budgets together, share out each cell's trials (deterministic).

    The solver keeps each family's trainability rules (`Study.solve_kwargs`), so a
    breaking shape is planned only where the spec's ranges leave nothing else, and
    then it is in ``Plan.warnings``.
    """
    cells, warnings, notes = [], [], []
    n_shapes = min(study.shapes_per_cell, study.trials_per_cell)
    rows = None
    if study.cohort_size == "auto":   # read once (a Parquet footer), not once per shape
        from .targets import train_rows
        rows = train_rows(study.target, study.base_dir)
    for label, fam in study.families.items():
        sol = budget_solver.solve_family(fam.family, study.budgets, limit=n_shapes, **study.solve_kwargs(label))
        warnings += budget_solver.plan_warnings(label, fam.family, sol)
        notes += [f"families.{label}: {n}" for n in sol.notes]
        for b in study.budgets:
            cands = sol[b]
            shares = split_trials(study.trials_per_cell, len(cands))
            shapes = tuple(
                ShapePlan(c.shape, c.n_params, count_params(c.shape), n, study_slots(study, c.shape, n, n_train=rows))
                for c, n in zip(cands, shares)
            )
            cells.append(Cell(label, fam.family, b, shapes, parts=study.parts_per_cell))
    return Plan(study, tuple(cells), study.d_in, study.d_out, tuple(warnings), tuple(notes))
