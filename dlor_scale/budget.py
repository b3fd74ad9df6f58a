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

Every policy returns *all* fitting shapes, only their order differs, unless ``rules``
(`ShapeRules`, what a study passes) drop untrainable ones.

Trainability rules (``rules=ShapeRules(...)``; a study always passes them, the bare
solver only when asked). Why: a cell whose shape cannot train measures the optimiser,
not the family, and a scaling curve through it is meaningless.

* **depth ≤ max_depth** — a DLoR stack deeper than `DEFAULT_MAX_DEPTH` did not train
  at the default init and lr (benchmarks/depth_trainability.py; a spec's
  ``max_depth`` overrides it per family, null lifts it).
* **rank·branches ≤ width** — past full rank, more branches (or rank) add parameters
  but no rank: the budget is spent on a re-parameterisation.
* **width > d_in for families that grow by depth** — networks of width ≤ d_in are not
  universal approximators at any depth (Johnson 2019, "Deep, skinny neural networks are
  not universal approximators", for injective activations such as tanh), so a depth
  curve at such a width saturates by construction: it measures the bottleneck, not depth.

Shapes breaking a rule are dropped wherever a budget has a compliant shape; a budget
with none keeps its breaking shapes and ``FamilySolution.violations`` says why
(`plan_warnings` turns that into ``cell label@budget: reason; fix: …`` lines, which
``strict`` studies make errors). Under ``axis`` with rules, a DLoR family whose growth
axis runs out (depth at its cap, or branches at K·r = width) **widens instead**: the
budgets its first assignment cannot reach are served by holding the growth axis at its
largest reachable value (deepest / most branches) and growing width
(`FamilySolution.notes` describes the switch; it is designed, not a warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import BudgetError
from .shapes import Shape, parse_diag

POLICIES = ("closest", "deepest", "widest", "axis")
DEFAULT_POLICY = "axis"
#: The one structural axis that grows with the budget under policy ``axis``.
GROWTH_AXIS = {"dense": "width", "lowrank": "width", "rank1": "width",
               "dlor_deep": "depth", "dlor_wide": "branches"}


#: Structural axes each family has (the others are always 1).
FAMILY_AXES = {"dense": ("width", "depth"), "lowrank": ("width", "depth", "rank"),
               "rank1": ("width", "depth"), "dlor_deep": ("width", "depth", "rank"),
               "dlor_wide": ("width", "depth", "rank", "branches")}


#: Deepest DLoR stack (hidden layers) the planner uses by default: the deepest depth
#: that trained at the default init and lr in benchmarks/depth_trainability.py
#: (results/depth_trainability.md). Families without a measurement have no cap.
DEFAULT_MAX_DEPTH = 48
#: Families the default depth cap applies to (the ones measured: DLoR stacks).
DEPTH_CAPPED = ("dlor_deep", "dlor_wide")
#: Families whose hidden layers are low rank: rank·branches ≤ width applies.
LOW_RANK = ("lowrank", "rank1", "dlor_deep", "dlor_wide")


def default_max_depth(family: str) -> int | None:
    """The depth cap a family gets when its spec says ``max_depth: auto``."""
    return DEFAULT_MAX_DEPTH if family in DEPTH_CAPPED else None


@dataclass(frozen=True)
class ShapeRules:
    """What makes a shape trainable and non-degenerate (see the module doc)."""

    max_depth: int | None = None  # None: no depth cap
    rank_le_width: bool = True    # rank·branches ≤ width for the low-rank families
    width_gt_d_in: bool = True    # width > d_in for families whose growth axis is depth

    def problems(self, shape: Shape) -> list[tuple[str, str]]:
        """``(rule, reason)`` for every rule the shape breaks; empty when it is fine."""
        out = []
        if self.max_depth is not None and shape.depth > self.max_depth:
            out.append(("max_depth", f"depth {shape.depth} > max_depth {self.max_depth}: deeper "
                                     "stacks did not train at the default init and lr"))
        if self.rank_le_width and shape.family in LOW_RANK and shape.rank * shape.branches > shape.width:
            kr = (f"branches·rank {shape.branches}·{shape.rank} = {shape.branches * shape.rank}"
                  if shape.family == "dlor_wide" else f"rank {shape.rank}")
            out.append(("rank", f"{kr} > width {shape.width}: past full rank, extra "
                                "branches/rank add parameters but no rank"))
        if (self.width_gt_d_in and GROWTH_AXIS.get(shape.family) == "depth"
                and shape.width <= shape.d_in):
            out.append(("narrow", f"width {shape.width} ≤ d_in {shape.d_in}: stacks this narrow "
                                  "are not universal at any depth (Johnson 2019), so depth "
                                  "adds little"))
        return out

    def ok(self, shape: Shape) -> bool:
        return not self.problems(shape)


def rule_fix(rule: str, label: str) -> str:
    """How to fix a broken rule in the spec (for warnings and strict errors)."""
    if rule == "max_depth":
        return (f"allow wider widths (families.{label}.width) so depth ≤ max_depth reaches this "
                f"budget, drop the budget, or raise families.{label}.max_depth if you measured "
                "deeper stacks train")
    if rule == "narrow":
        return (f"let families.{label}.width start above the target's d_in, or drop the "
                "budgets only such narrow stacks reach")
    return (f"allow wider widths (families.{label}.width) so branches·rank ≤ width reaches this "
            f"budget, or lower families.{label}.rank")


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
    ``axis``; empty for the others; after a widening switch the held axes, growth axis
    included). ``segments``: runs of budgets sharing one assignment (one run = fully
    consistent). ``warnings``: one line per unplanned change of the fixed axes.
    ``notes``: the designed depth/branches → width switch (rules only). ``violations``:
    per budget whose first shape breaks a rule, ``(rule, reason)`` pairs (no compliant
    shape reaches it).
    """

    def __init__(self, *args, assignment=None, segments=(), warnings=(), notes=(),
                 violations=None, **kw):
        super().__init__(*args, **kw)
        self.assignment: dict[int, dict[str, int]] = dict(assignment or {})
        self.segments: tuple[tuple[int, ...], ...] = tuple(segments)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.notes: tuple[str, ...] = tuple(notes)
        self.violations: dict[int, tuple[tuple[str, str], ...]] = dict(violations or {})

    @property
    def consistent(self) -> bool:
        """True when one assignment of the fixed axes serves every budget."""
        return len(self.segments) <= 1


def plan_warnings(label: str, family: str, sol: FamilySolution) -> list[str]:
    """Every warning line of one family label: rule violations (one per cell, naming
    the cell, the reason and the fix), then unplanned fixed-axis changes."""
    out = []
    for b in sorted(sol.violations):
        shape = sol[b][0].shape
        for rule, reason in sol.violations[b]:
            out.append(f"cell {label}@{b} ({shape.label()}): {reason}; fix: {rule_fix(rule, label)}")
    out += [f"families.{label}: {w}" for w in sol.warnings]
    return out


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


def _fits(family: str, budget: int, tolerance: float, pool: "_Pool") -> list[Candidate]:
    """The pool's candidates within tolerance; BudgetError with the nearest counts if none."""
    fits = pool.within(budget, tolerance)
    if not fits:
        below, above = pool.nearest(budget)
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


class _Pool:
    """Every shape of a grid (in `enumerate_shapes` order) as its exact count; a `Shape`
    is built only for the counts that fit a budget.

    Why: a wide width range × depth range is 10⁵–10⁶ shapes, and building each one
    (~30 µs) made a solve take seconds. A count is ``io(w, r) + L·hidden(w, r, K)``
    (the layer formulas of `models.count_params`, vectorised here; a property test
    checks both agree for every family × diagonal × io).
    """

    def __init__(self, family: str, grid: dict):
        widths = list(dict.fromkeys(grid.get("widths", ())))
        depths = list(dict.fromkeys(grid.get("depths", ())))
        ranks = list(dict.fromkeys(grid.get("ranks", (1,))))
        ks = list(dict.fromkeys(grid.get("branches", (1,))))
        diag = grid.get("diag", "none")
        if family in ("dense", "rank1"):  # the axes a family ignores collapse (as enumerate_shapes)
            ranks = [1]
        if family != "dlor_wide":
            ks = [1]
        if family in ("dense", "lowrank", "rank1"):
            diag = "none"
        d_in, d_out = grid["d_in"], grid["d_out"]
        self._proto = Shape(family, d_in, d_out, 1, 0, 1, 1, diag, grid.get("activation", "tanh"),
                            grid.get("io", "auto"))
        self.axes = (widths, depths, ranks, ks)
        w = np.array(widths, dtype=np.int64).reshape(-1, 1, 1, 1)
        L = np.array(depths, dtype=np.int64).reshape(1, -1, 1, 1)
        r = np.array(ranks, dtype=np.int64).reshape(1, 1, -1, 1)
        k = np.array(ks, dtype=np.int64).reshape(1, 1, 1, -1)
        if self._proto.io_kind == "dense":
            io = d_in * w + w + w * d_out + d_out
        else:
            io = r * (d_in + w) + w + r * (w + d_out) + d_out
        if family == "dense":
            hidden = w * w + w
        elif family in ("lowrank", "rank1"):
            hidden = 2 * w * r + w
        else:
            kind, sp = parse_diag(diag)
            delta = {"scalar": 1 + 0 * w, "full": w, "none": 0 * w, "sparse": np.minimum(sp, w)}[kind]
            hidden = 2 * w * (r * k) + w + delta
        shape = (len(widths), len(depths), len(ranks), len(ks))
        self._shape = shape
        self.counts = np.broadcast_to(io + L * hidden, shape).reshape(-1)

    def shape_at(self, i: int) -> Shape:
        wi, li, ri, ki = np.unravel_index(i, self._shape)
        widths, depths, ranks, ks = self.axes
        return self._proto.with_(width=widths[wi], depth=depths[li], rank=ranks[ri], branches=ks[ki])

    def within(self, budget: int, tolerance: float) -> list[Candidate]:
        idx = np.nonzero(np.abs(self.counts - budget) <= tolerance * budget)[0]
        return [Candidate(self.shape_at(int(i)), int(self.counts[i])) for i in idx]

    def nearest(self, budget: int) -> tuple[int | None, int | None]:
        below, above = self.counts[self.counts < budget], self.counts[self.counts > budget]
        return (int(below.max()) if below.size else None, int(above.min()) if above.size else None)


def _pool(family: str, grid: dict) -> _Pool:
    return _Pool(family, grid)


def solve(
    family: str,
    budget: int,
    *,
    tolerance: float = 0.02,
    policy: str = DEFAULT_POLICY,
    limit: int | None = None,
    rules: ShapeRules | None = None,
    **grid,
) -> list[Candidate]:
    """Shapes whose exact count is within ``tolerance`` of ``budget``, best first.

    ``axis`` here is `solve_family` of this one budget: the same first shape as
    ``closest``, then the best shape of each other assignment of the fixed axes. Use
    `solve_family` to keep a family's fixed axes consistent across budgets.
    Raises BudgetError naming the family, budget and the nearest achievable counts
    when nothing fits, so the user knows which range to widen. With ``rules``, shapes
    breaking them are dropped unless nothing else fits.
    """
    _check([budget], policy)
    if policy == "axis":
        return solve_family(family, [budget], tolerance=tolerance, policy=policy, limit=limit,
                            rules=rules, **grid)[budget]
    fits = _order(_comply(_fits(family, budget, tolerance, _pool(family, grid)), rules), budget, policy)
    return fits[:limit] if limit else fits


def _comply(fits: list[Candidate], rules: ShapeRules | None) -> list[Candidate]:
    """The fits that keep the rules; all of them when none does (the caller warns)."""
    if rules is None:
        return fits
    ok = [c for c in fits if rules.ok(c.shape)]
    return ok or fits


# --------------------------------------------------------------------------- study-level


@dataclass(frozen=True, order=True)
class _Score:
    """How well one fixed-axis assignment serves a run of budgets (smaller is better)."""

    worst: float
    mean: float
    growth: int  # minus the summed growth-axis values: leaning on the growth axis wins ties
    pref: tuple  # then closest's tie-break (smaller rank, …) at the run's first budget
    key: tuple  # then the assignment itself, so the order is total


@dataclass(frozen=True, order=True)
class _HeldScore:
    """Score of a held assignment after a widening switch (smaller is better): keep the
    first run's other fixed axes, hold the growth axis as high as possible, then as
    `_Score` (``worst``/``mean`` are what `_segment` reads)."""

    changed: int  # how many of the first run's other fixed axes (rank, depth) differ
    held: int  # minus the held growth-axis value: deepest / most branches first
    worst: float
    mean: float
    growth: int
    pref: tuple
    key: tuple


def _standard_score(budgets, best, growth):
    def score(key, run):
        errs = [round(best[b][key].rel_error(b), 6) for b in run]
        g = sum(getattr(best[b][key].shape, growth) for b in run)
        pref = tuple(-v for v in _axis_key(best[run[0]][key].shape))
        return _Score(max(errs), round(sum(errs) / len(errs), 6), -g, pref, key)
    return score


def _runs(budgets: list[int], best: dict[int, dict[tuple, Candidate]], score):
    """Assignments (best first, with scores) for every contiguous run budgets[i:j]."""
    n = len(budgets)
    table: dict[tuple[int, int], list[tuple]] = {}
    for i in range(n):
        keys = set(best[budgets[i]])
        for j in range(i + 1, n + 1):
            if j > i + 1:
                keys &= set(best[budgets[j - 1]])
            if not keys:
                break
            table[(i, j)] = sorted((score(key, budgets[i:j]), key) for key in keys)
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


#: Families that widen once their growth axis runs out (policy ``axis`` with rules).
WIDENING = ("dlor_deep", "dlor_wide")


def held_axes(family: str) -> tuple[str, ...]:
    """Axes held after a widening switch: every axis but width (growth axis included)."""
    return tuple(a for a in FAMILY_AXES[family] if a != "width")


def _best_by(fits: dict[int, list[Candidate]], names: tuple[str, ...]) -> dict[int, dict[tuple, Candidate]]:
    """Per budget: the closest shape of each assignment of ``names``."""
    best = {}
    for b, f in fits.items():
        per: dict[tuple, Candidate] = {}
        for c in sorted(f, key=_closest_key(b)):
            per.setdefault(tuple(getattr(c.shape, a) for a in names), c)
        best[b] = per
    return best


def solve_family(
    family: str,
    budgets: Sequence[int],
    *,
    tolerance: float = 0.02,
    policy: str = DEFAULT_POLICY,
    limit: int | None = None,
    strict: bool = False,
    rules: ShapeRules | None = None,
    **grid,
) -> FamilySolution:
    """All budgets of one family at once: ``{budget: [Candidate, …]}``, best first.

    Under ``axis`` the first shape of every budget shares one assignment of the
    family's fixed axes where one exists (see the module doc); otherwise the budgets
    fall back to the fewest consistent runs and ``.warnings`` lists the changes, or,
    with ``strict``, BudgetError says which budgets the best single assignment misses.
    With ``rules``, breaking shapes are dropped where a budget has others
    (``.violations`` lists the budgets that have none), and dlor_deep/dlor_wide widen
    once their growth axis runs out (``.notes``; see the module doc).
    Other policies order each budget on its own (as `solve`). The grid is enumerated
    once. Raises BudgetError (like `solve`) when some budget has no fitting shape.
    """
    budgets = sorted(set(int(b) for b in budgets))
    if not budgets:
        raise BudgetError("no budgets to solve")
    _check(budgets, policy)
    pool = _pool(family, grid)
    fits = {b: _comply(_fits(family, b, tolerance, pool), rules) for b in budgets}
    if policy != "axis":
        out = FamilySolution({b: _order(f, b, policy)[:limit] if limit else _order(f, b, policy)
                              for b, f in fits.items()})
        out.violations = _violations(out, rules)
        return out

    names, growth = fixed_axes(family), GROWTH_AXIS[family]
    best = _best_by(fits, names)
    table = _runs(budgets, best, _standard_score(budgets, best, growth))
    n = len(budgets)
    # runs: (i, j, ranked assignments, names they assign, best shapes per budget)
    head = max(j for j in range(1, n + 1) if (0, j) in table)
    if rules is not None and family in WIDENING and head < n:
        first = [k for _, k in table[(0, head)]]
        runs = [(0, head, first, names, best)]
        runs += _widened(family, budgets[head:], fits, dict(zip(names, first[0])), head)
    else:
        runs = [(i, j, [k for _, k in table[(i, j)]], names, best) for i, j in _segment(budgets, table)]

    warnings, notes = [], []
    for (i0, _, k0, n0, _), (i, j, ranked, nm, _) in zip(runs, runs[1:]):
        run = budgets[i:j]
        held = f"budget {run[0]}" if len(run) == 1 else f"budgets {run[0]}–{run[-1]}"
        if nm != n0:
            last = best[budgets[i - 1]][k0[0]].shape
            notes.append(
                f"{_fmt(k0[0], n0)} of {family} grows {growth} up to {getattr(last, growth)} (budget "
                f"{budgets[i - 1]}) and cannot reach budget {run[0]} within the rules and ranges, so width "
                f"grows instead at {_fmt(ranked[0], nm)} (held for {held})")
        else:
            widened = "" if nm == names else " with growing width"
            warnings.append(
                f"no single {'/'.join(nm)} of {family}{widened} reaches every budget within ±{tolerance:.1%}: "
                f"{_fmt(k0[0], nm)} → {_fmt(ranked[0], nm)} from budget {run[0]} (held for {held})")

    if strict and warnings:
        grow = [r for r in runs if r[3] == names]
        every = sorted(set().union(*(best[b] for b in budgets)))
        reach = max(every, key=lambda k: sum(k in best[b] for b in budgets))
        missed = [b for b in budgets if reach not in best[b]]
        if len(grow) < len(runs):  # widened: the held runs are what failed to line up
            nm = runs[-1][3]
            raise BudgetError(
                f"no single {'/'.join(nm)} of {family} with growing width serves budgets "
                f"{budgets[runs[1][0]:]} within ±{tolerance:.1%} ({warnings[0]}); allow a finer "
                f"width range or split the budgets")
        raise BudgetError(
            f"no single {'/'.join(names)} of {family} fits all budgets {budgets} within ±{tolerance:.1%}; "
            f"the one reaching most ({_fmt(reach, names)}) misses {missed}; widen the {growth} range "
            f"or split the budgets"
        )

    out, assignment = FamilySolution(), {}
    for i, j, ranked, nm, bst in runs:
        for b in budgets[i:j]:
            top = [bst[b][k] for k in ranked]
            taken = {c.shape for c in top}
            rest = [c for c in sorted(fits[b], key=_closest_key(b)) if c.shape not in taken]
            out[b] = (top + rest)[:limit] if limit else top + rest
            assignment[b] = dict(zip(nm, ranked[0]))
    out.assignment = assignment
    out.segments = tuple(tuple(budgets[i:j]) for i, j, *_ in runs)
    out.warnings = tuple(warnings)
    out.notes = tuple(notes)
    out.violations = _violations(out, rules)
    return out


def _widened(family: str, rest: list[int], fits, first: dict[str, int], offset: int) -> list[tuple]:
    """Runs for the budgets past the growth axis's reach: growth axis held, width grows.

    Among held assignments (every axis but width) prefer the first run's other fixed
    values (rank; depth for dlor_wide), then the largest held growth value, then the
    smallest errors; split into the fewest runs if no one assignment serves them all.
    """
    nm, growth = held_axes(family), GROWTH_AXIS[family]
    best = _best_by({b: fits[b] for b in rest}, nm)
    keep = [(k, a) for k, a in enumerate(nm) if a in first and a != growth]
    g = nm.index(growth)
    std = _standard_score(rest, best, "width")

    def score(key, run):
        s = std(key, run)
        changed = sum(key[k] != first[a] for k, a in keep)
        return _HeldScore(changed, -key[g], s.worst, s.mean, s.growth, s.pref, s.key)

    table = _runs(rest, best, score)
    return [(offset + i, offset + j, [k for _, k in table[(i, j)]], nm, best)
            for i, j in _segment(rest, table)]


def _violations(sol: FamilySolution, rules: ShapeRules | None) -> dict:
    """Budgets whose first shape breaks a rule (only where nothing compliant fits)."""
    if rules is None:
        return {}
    return {b: tuple(p) for b, cands in sol.items() if (p := rules.problems(cands[0].shape))}
