"""Budget solver: which structures of a family have (almost) exactly P parameters.

Why a solver: scaling curves compare families at matched parameter counts, so each
(family, budget) cell must be realised by concrete shapes whose *exact* count is
within a tolerance of the budget. Counts are linear in depth and branches and
quadratic in width, so enumerating the allowed grid is cheap.

Selection policy (documented, deterministic):

* ``closest`` (default): smallest relative count error; ties → the family's growth
  axis decides (dlor_deep prefers more depth, dlor_wide more branches, others more
  width), then smaller rank.
* ``deepest`` / ``widest``: among fitting shapes, the largest depth / width·branches.
* A cell can keep several shapes (``shapes_per_cell``): the first n by the policy order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import BudgetError
from .models import Shape, count_params

POLICIES = ("closest", "deepest", "widest")


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    n_params: int

    def rel_error(self, budget: int) -> float:
        return abs(self.n_params - budget) / budget


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


def solve(
    family: str,
    budget: int,
    *,
    tolerance: float = 0.02,
    policy: str = "closest",
    limit: int | None = None,
    **grid,
) -> list[Candidate]:
    """Shapes whose exact count is within ``tolerance`` of ``budget``, best first.

    Raises BudgetError naming the family, budget and the nearest achievable counts
    when nothing fits, so the user knows which range to widen.
    """
    if budget <= 0:
        raise BudgetError(f"budget must be > 0, got {budget}")
    if policy not in POLICIES:
        raise BudgetError(f"unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")
    fits: list[Candidate] = []
    below = above = None
    for shape in enumerate_shapes(family, **grid):
        n = count_params(shape).total
        if abs(n - budget) <= tolerance * budget:
            fits.append(Candidate(shape, n))
        elif n < budget:
            below = n if below is None else max(below, n)
        else:
            above = n if above is None else min(above, n)
    if not fits:
        near = ", ".join(str(v) for v in (below, above) if v is not None) or "none"
        raise BudgetError(
            f"no {family} structure has {budget} parameters within ±{tolerance:.1%} "
            f"(nearest achievable counts: {near}); widen the family's width/depth/rank/branches ranges"
        )
    if policy == "closest":
        fits.sort(key=lambda c: (round(c.rel_error(budget), 6), tuple(-v for v in _axis_key(c.shape))))
    elif policy == "deepest":
        fits.sort(key=lambda c: (-c.shape.depth, c.rel_error(budget)))
    else:
        fits.sort(key=lambda c: (-(c.shape.width * c.shape.branches * c.shape.rank), c.rel_error(budget)))
    return fits[:limit] if limit else fits
