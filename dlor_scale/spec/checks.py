"""Cross-field rules (after field validation): settings that contradict each other, search
settings that can never prune or learn, and budget feasibility of every cell."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from pydantic_core import PydanticCustomError

from .. import budget as budget_solver
from ..errors import BudgetError
from ..sizing import CPU_SLOTS
from .distributions import Distribution, domain_text, in_domain
from .families import FamilySpec
from .locations import expand_user
from .problems import Problem
from .study import Study
from .vocabulary import AXIS_USERS, MAX_GRID, MAX_TOTAL_GRID, as_integral


def _budget_index(raw: Any, value: int) -> int | None:
    """Where the user wrote a budget (the model sorts them; the message should not)."""
    if isinstance(raw, list):
        for i, v in enumerate(raw):
            if as_integral(v) == value:
                return i
    return None


def search_problems(s: Study) -> list[Problem]:
    """Sampler / pruner / slots combinations that can never prune or never learn.

    Warnings, not errors (an unpruned or random search can be deliberate); a study with
    ``strict: true`` refuses them. Each names the fields and the fix. The counts follow
    the planner: a cell's trials are split over its shapes, and each shape is one cohort
    whose first ``slots`` asks form one wave before anything is told.
    """
    from ..pruners import make_pruner, pruner_steps
    out: list[Problem] = []

    def warn(path, what):
        out.append(Problem(path, what))

    n = s.trials_per_cell
    quota = -(-n // max(1, min(s.shapes_per_cell * s.parts_per_cell, n)))   # trials of the largest cohort
    slots = max(1, min(CPU_SLOTS if s.cohort_size == "auto" else s.cohort_size, quota))  # the CPU bound of sizing.cohort_slots
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
                 f"{math.ceil(1.5 * slots) * max(1, min(s.shapes_per_cell * s.parts_per_cell, n))} with cohort_size: {slots} "
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


def cross_check(s: Study, raw: dict) -> list[Problem]:
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
    if s.parts_per_cell != 1:   # parts are independent searches: nothing may couple them by timing
        if s.sampler.kind in ("qmc", "cmaes"):
            bad("parts_per_cell", f"sampler {s.sampler.kind} keeps one sequence per Optuna study, which parts "
                "running at once would share in timing order; use sampler tpe or random, or parts_per_cell: 1",
                s.parts_per_cell)
        if s.pruner.kind == "wilcoxon":
            bad("parts_per_cell", "pruner wilcoxon compares with the cell's best trial, which parts running at "
                "once would see in timing order; use a lockstep pruner, or parts_per_cell: 1", s.parts_per_cell)
        if s.parts_per_cell * min(s.shapes_per_cell, s.trials_per_cell) > s.trials_per_cell:
            bad("parts_per_cell", f"× shapes_per_cell must be ≤ trials_per_cell ({s.trials_per_cell}): every "
                "part of every shape needs a trial", s.parts_per_cell)
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
                expand_user(tp)
            except PydanticCustomError as e:
                bad("target.path", e.message(), tp)
    n_train = getattr(s.target, "n_train", None)
    if s.batch_size is not None and n_train is not None and s.batch_size > n_train:
        bad("batch_size", f"exceeds target.n_train ({n_train}); use null for full batch", s.batch_size)

    for name, param in s.search_space.items():
        lo, hi = param.bounds() if isinstance(param, Distribution) else (param, param)
        if not in_domain(name, lo, hi):
            bad(f"search_space.{name}", f"{name} must lie in {domain_text(name)}",
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
