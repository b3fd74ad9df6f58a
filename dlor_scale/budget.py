"""Budget solver: which structures of a family have (almost) exactly P parameters.

Why a solver: scaling curves compare families at matched parameter counts, so each
(family, budget) cell must be realised by concrete shapes whose *exact* count is
within a tolerance of the budget. Counts are linear in depth and branches and
quadratic in width, so enumerating the allowed grid is cheap.

Selection policy (documented, deterministic):

* ``axis`` (default): the study's budgets of one family are solved *together*. Every
  family has one **growth axis** (`GROWTH_AXIS`: depth for dlor_deep, branches for
  dlor_wide, width otherwise); the other axes (`fixed_axes`) are held at one value
  across all budgets, chosen to minimise the worst relative count error over the
  budgets (ties: smaller mean error, more growth, then closest's tie-break).
  So a curve varies one thing only; ``closest`` would let e.g. dlor_wide step from
  w256/K17 at 1e4 to w64/K232 at 3e4 and confound the curve with a width change.
  When no single assignment reaches every budget, the sorted budgets are split into
  the fewest contiguous runs that each have one (ties: smaller worst error), and a
  warning names every budget where the fixed axes change (`FamilySolution.warnings`).
  For a single budget ``axis`` keeps the same first shape as ``closest``.
* ``closest``: per budget, the smallest relative count error; ties → the family's
  growth axis decides (dlor_deep prefers more depth, dlor_wide more branches, others
  more width), then smaller rank. Shapes may jump between budgets.
* ``deepest`` / ``widest``: among fitting shapes, the largest depth / width·branches.
* A cell can keep several shapes (``shapes_per_cell``): the first n by the policy
  order. Under ``axis`` the next shapes come from the runner-up assignments of the
  fixed axes, so shape 2 of every budget is consistent too where possible.

Every policy returns *all* fitting shapes, only their order differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import BudgetError
from .models import Shape, count_params

POLICIES = ("closest", "deepest", "widest", "axis")
DEFAULT_POLICY = "axis"
#: The one structural axis that grows with the budget under policy ``axis``.
GROWTH_AXIS = {"dense": "width", "lowrank": "width", "rank1": "width",
               "dlor_deep": "depth", "dlor_wide": "branches"}


#: Structural axes each family has (the others are always 1).
FAMILY_AXES = {"dense": ("width", "depth"), "lowrank": ("width", "depth", "rank"),
               "rank1": ("width", "depth"), "dlor_deep": ("width", "depth", "rank"),
               "dlor_wide": ("width", "depth", "rank", "branches")}


def fixed_axes(family: str) -> tuple[str, ...]:
    """Axes policy ``axis`` holds fixed across a family's budgets: its axes but the growth axis.

    dense/rank1: depth; lowrank: depth, rank; dlor_deep: width, rank; dlor_wide: width,
    depth, rank.
    """
    return tuple(a for a in FAMILY_AXES[family] if a != GROWTH_AXIS[family])


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    n_params: int

    def rel_error(self, budget: int) -> float:
        return abs(self.n_params - budget) / budget


class FamilySolution(dict):
    """``{budget: [Candidate, …]}`` (best first) from `solve_family`, plus how it was chosen.

    ``assignment[budget]``: the fixed-axis values of that budget's first shape (policy
    ``axis``; empty for the others). ``segments``: runs of budgets sharing one
    assignment (one run = fully consistent). ``warnings``: one line per budget where
    the fixed axes change (empty when consistent).
    """

    def __init__(self, *args, assignment=None, segments=(), warnings=(), **kw):
        super().__init__(*args, **kw)
        self.assignment: dict[int, dict[str, int]] = dict(assignment or {})
        self.segments: tuple[tuple[int, ...], ...] = tuple(segments)
        self.warnings: tuple[str, ...] = tuple(warnings)

    @property
    def consistent(self) -> bool:
        """True when one assignment of the fixed axes serves every budget."""
        return len(self.segments) <= 1


def _axis_key(shape: Shape) -> tuple:
    """Tie-break preference along the family's growth axis (bigger = preferred)."""
    if shape.family == "dlor_deep":
        return (shape.depth, -shape.rank, shape.width)
    if shape.family == "dlor_wide":
        return (shape.branches, -shape.rank, -shape.depth)
    return (shape.width, -shape.rank, -shape.depth)


def enumerate_shapes(
    family: str,
    *,
    d_in: int,
    d_out: int,
    widths: Sequence[int],
    depths: Sequence[int],
    ranks: Sequence[int] = (1,),
    branches: Sequence[int] = (1,),
    diag: str = "none",
    activation: str = "tanh",
    io: str = "auto",
) -> Iterable[Shape]:
    """All shapes of the product of allowed values (axes a family ignores collapse)."""
    if family in ("dense",):
        ranks, branches = (1,), (1,)
    if family in ("dense", "lowrank", "rank1", "dlor_deep"):
        branches = (1,)
    if family == "rank1":
        ranks = (1,)
    if family in ("dense", "lowrank", "rank1"):
        diag = "none"
    seen = set()
    for w in widths:
        for L in depths:
            for r in ranks:
                for k in branches:
                    key = (w, L, r, k)
                    if key in seen:
                        continue
                    seen.add(key)
                    yield Shape(family, d_in, d_out, w, L, r, k, diag, activation, io)


def _check(budgets: Iterable[int], policy: str) -> None:
    for b in budgets:
        if b <= 0:
            raise BudgetError(f"budget must be > 0, got {b}")
    if policy not in POLICIES:
        raise BudgetError(f"unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")


def _fits(family: str, budget: int, tolerance: float, pool: list[Candidate]) -> list[Candidate]:
    """The pool's candidates within tolerance; BudgetError with the nearest counts if none."""
    fits = [c for c in pool if abs(c.n_params - budget) <= tolerance * budget]
    if not fits:
        below = max((c.n_params for c in pool if c.n_params < budget), default=None)
        above = min((c.n_params for c in pool if c.n_params > budget), default=None)
        near = ", ".join(str(v) for v in (below, above) if v is not None) or "none"
        raise BudgetError(
            f"no {family} structure has {budget} parameters within ±{tolerance:.1%} "
            f"(nearest achievable counts: {near}); widen the family's width/depth/rank/branches ranges"
        )
    return fits


def _closest_key(budget: int):
    return lambda c: (round(c.rel_error(budget), 6), tuple(-v for v in _axis_key(c.shape)))


def _order(fits: list[Candidate], budget: int, policy: str) -> list[Candidate]:
    """Per-budget order of the policies other than ``axis``."""
    if policy == "closest":
        return sorted(fits, key=_closest_key(budget))
    if policy == "deepest":
        return sorted(fits, key=lambda c: (-c.shape.depth, c.rel_error(budget)))
    return sorted(fits, key=lambda c: (-(c.shape.width * c.shape.branches * c.shape.rank), c.rel_error(budget)))


def _pool(family: str, grid: dict) -> list[Candidate]:
    return [Candidate(s, count_params(s).total) for s in enumerate_shapes(family, **grid)]


def solve(
    family: str,
    budget: int,
    *,
    tolerance: float = 0.02,
    policy: str = DEFAULT_POLICY,
    limit: int | None = None,
    **grid,
) -> list[Candidate]:
    """Shapes whose exact count is within ``tolerance`` of ``budget``, best first.

    ``axis`` here is `solve_family` of this one budget: the same first shape as
    ``closest``, then the best shape of each other assignment of the fixed axes. Use
    `solve_family` to keep a family's fixed axes consistent across budgets.
    Raises BudgetError naming the family, budget and the nearest achievable counts
    when nothing fits, so the user knows which range to widen.
    """
    _check([budget], policy)
    if policy == "axis":
        return solve_family(family, [budget], tolerance=tolerance, policy=policy, limit=limit, **grid)[budget]
    fits = _order(_fits(family, budget, tolerance, _pool(family, grid)), budget, policy)
    return fits[:limit] if limit else fits


# --------------------------------------------------------------------------- study-level


@dataclass(frozen=True, order=True)
class _Score:
    """How well one fixed-axis assignment serves a run of budgets (smaller is better)."""

    worst: float
    mean: float
    growth: int  # minus the summed growth-axis values: leaning on the growth axis wins ties
    pref: tuple  # then closest's tie-break (smaller rank, …) at the run's first budget
    key: tuple  # then the assignment itself, so the order is total


def _runs(budgets: list[int], best: dict[int, dict[tuple, Candidate]], growth: str):
    """Best assignment (and its score) for every contiguous run budgets[i:j]."""
    n = len(budgets)
    table: dict[tuple[int, int], list[tuple[_Score, tuple]]] = {}
    for i in range(n):
        keys = set(best[budgets[i]])
        for j in range(i + 1, n + 1):
            if j > i + 1:
                keys &= set(best[budgets[j - 1]])
            if not keys:
                break
            scored = []
            for key in keys:
                errs = [round(best[b][key].rel_error(b), 6) for b in budgets[i:j]]
                g = sum(getattr(best[b][key].shape, growth) for b in budgets[i:j])
                pref = tuple(-v for v in _axis_key(best[budgets[i]][key].shape))
                scored.append((_Score(max(errs), round(sum(errs) / len(errs), 6), -g, pref, key), key))
            table[(i, j)] = sorted(scored)
    return table


def _segment(budgets: list[int], table) -> list[tuple[int, int]]:
    """Fewest contiguous runs each served by one assignment; ties → smaller worst error."""
    n = len(budgets)
    dp: list[tuple | None] = [None] * (n + 1)
    dp[0] = (0, 0.0, 0.0, ())
    for j in range(1, n + 1):
        for i in range(j):
            if dp[i] is None or (i, j) not in table:
                continue
            s = table[(i, j)][0][0]
            segs, worst, total, path = dp[i]
            cand = (segs + 1, max(worst, s.worst), total + s.mean * (j - i), path + ((i, j),))
            if dp[j] is None or cand[:3] < dp[j][:3]:
                dp[j] = cand
    return list(dp[n][3])


def _fmt(key: tuple, names: tuple[str, ...]) -> str:
    return ", ".join(f"{a} {v}" for a, v in zip(names, key))


def solve_family(
    family: str,
    budgets: Sequence[int],
    *,
    tolerance: float = 0.02,
    policy: str = DEFAULT_POLICY,
    limit: int | None = None,
    strict: bool = False,
    **grid,
) -> FamilySolution:
    """All budgets of one family at once: ``{budget: [Candidate, …]}``, best first.

    Under ``axis`` the first shape of every budget shares one assignment of the
    family's fixed axes where one exists (see the module doc); otherwise the budgets
    fall back to the fewest consistent runs and ``.warnings`` lists the changes, or,
    with ``strict``, BudgetError says which budgets the best single assignment misses.
    Other policies order each budget on its own (as `solve`). The grid is enumerated
    once. Raises BudgetError (like `solve`) when some budget has no fitting shape.
    """
    budgets = sorted(set(int(b) for b in budgets))
    if not budgets:
        raise BudgetError("no budgets to solve")
    _check(budgets, policy)
    pool = _pool(family, grid)
    fits = {b: _fits(family, b, tolerance, pool) for b in budgets}
    if policy != "axis":
        return FamilySolution({b: _order(f, b, policy)[:limit] if limit else _order(f, b, policy)
                               for b, f in fits.items()})

    names, growth = fixed_axes(family), GROWTH_AXIS[family]

    def key_of(c: Candidate) -> tuple:
        return tuple(getattr(c.shape, a) for a in names)

    best: dict[int, dict[tuple, Candidate]] = {}  # per budget: each assignment's best shape
    for b, f in fits.items():
        per: dict[tuple, Candidate] = {}
        for c in sorted(f, key=_closest_key(b)):
            per.setdefault(key_of(c), c)
        best[b] = per
    table = _runs(budgets, best, growth)
    runs = _segment(budgets, table)

    if strict and len(runs) > 1:
        every = sorted(set().union(*best.values()))
        reach = max(every, key=lambda k: sum(k in best[b] for b in budgets))
        missed = [b for b in budgets if reach not in best[b]]
        raise BudgetError(
            f"no single {'/'.join(names)} of {family} fits all budgets {budgets} within ±{tolerance:.1%}; "
            f"the one reaching most ({_fmt(reach, names)}) misses {missed}; widen the {growth} range "
            f"or split the budgets"
        )

    out, assignment, warnings = FamilySolution(), {}, []
    prev = None
    for i, j in runs:
        ranked = [key for _, key in table[(i, j)]]
        run = budgets[i:j]
        if prev is not None:
            held = f"budget {run[0]}" if len(run) == 1 else f"budgets {run[0]}–{run[-1]}"
            warnings.append(
                f"no single {'/'.join(names)} of {family} reaches every budget within ±{tolerance:.1%}: "
                f"{_fmt(prev, names)} → {_fmt(ranked[0], names)} from budget {run[0]} (held for {held})"
            )
        prev = ranked[0]
        for b in run:
            head = [best[b][k] for k in ranked]
            taken = {c.shape for c in head}
            rest = [c for c in sorted(fits[b], key=_closest_key(b)) if c.shape not in taken]
            out[b] = (head + rest)[:limit] if limit else head + rest
            assignment[b] = dict(zip(names, ranked[0]))
    out.assignment = assignment
    out.segments = tuple(tuple(budgets[i:j]) for i, j in runs)
    out.warnings = tuple(warnings)
    return out
