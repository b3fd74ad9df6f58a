"""Exact parameter counts, stacked forward shapes and the budget solver.

Why property tests: scaling curves are plotted against the closed-form count, so a
count that is off by one bias vector for some (family, diagonal, io) combination
silently shifts a whole curve. Every combination is checked against the tensors that
are actually allocated.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlor_scale import models
from dlor_scale.budget import (
    DEFAULT_POLICY,
    GROWTH_AXIS,
    POLICIES,
    Candidate,
    enumerate_shapes,
    fixed_axes,
    solve,
    solve_family,
)
from dlor_scale.errors import BudgetError
from dlor_scale.models import FAMILIES, IO_KINDS, Member, Shape, count_params, forward, init_member
from dlor_scale.spec import load_study

DIAGS = ("scalar", "full", "none", "sparse:3")
COMBOS = list(itertools.product(FAMILIES, DIAGS, IO_KINDS))


def random_shape(rng: random.Random, family: str, diag: str, io: str) -> Shape:
    return Shape(
        family, d_in=rng.randint(1, 6), d_out=rng.randint(1, 4), width=rng.randint(1, 12),
        depth=rng.randint(0, 4), rank=rng.randint(1, 4), branches=rng.randint(1, 4), diag=diag,
        activation=rng.choice(models.ACTIVATIONS), io=io,
    )


def numel_by_kind(params: dict[str, torch.Tensor]) -> dict[str, int]:
    """Allocated parameters grouped like `Counts` (W dense, U/V low-rank, d diagonal, b bias)."""
    kinds = {"W": "dense", "U": "lowrank", "V": "lowrank", "d": "diag", "b": "bias"}
    out = {"dense": 0, "lowrank": 0, "diag": 0, "bias": 0}
    for name, t in params.items():
        out[kinds[name.rsplit(".", 1)[1]]] += t.numel()
    return out


def assert_counts_exact(shape: Shape) -> None:
    c = count_params(shape)
    params = init_member(shape, seed=0)
    assert c.total == sum(t.numel() for t in params.values()), shape
    assert c.total == c.dense + c.lowrank + c.diag + c.bias
    assert numel_by_kind(params) == {"dense": c.dense, "lowrank": c.lowrank, "diag": c.diag, "bias": c.bias}
    assert {k: tuple(v.shape) for k, v in params.items()} == shape.tensor_shapes()


def stacked(shape: Shape, k: int) -> dict[str, torch.Tensor]:
    members = [init_member(shape, seed=s) for s in range(k)]
    return {name: torch.stack([m[name] for m in members]) for name in members[0]}


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("family, diag, io", COMBOS)
def test_counts_and_forward_for_every_combination(family, diag, io):
    rng = random.Random(f"{family}|{diag}|{io}")
    for _ in range(2):  # two random shapes per combination; hypothesis covers the rest
        shape = random_shape(rng, family, diag, io)
        assert_counts_exact(shape)

        params = stacked(shape, 3)
        x = torch.randn(5, shape.d_in)
        assert forward(shape, params, x).shape == (3, 5, shape.d_out)
        xk = torch.randn(3, 5, shape.d_in)
        y = forward(shape, params, xk)
        assert y.shape == (3, 5, shape.d_out)
        # members never mix: member k alone gives row k of the stacked result
        for k in range(3):
            alone = forward(shape, {n: p[k:k + 1] for n, p in params.items()}, xk[k])
            torch.testing.assert_close(alone[0], y[k])

        single = {n: p[:1] for n, p in params.items()}
        member = Member(shape, {n: p[0] for n, p in params.items()})
        with torch.no_grad():
            torch.testing.assert_close(member(x), forward(shape, single, x)[0], rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    diag=st.one_of(st.sampled_from(("scalar", "full", "none")), st.integers(1, 20).map(lambda s: f"sparse:{s}")),
    io=st.sampled_from(IO_KINDS),
    d_in=st.integers(1, 8), d_out=st.integers(1, 5), width=st.integers(1, 24),
    depth=st.integers(0, 5), rank=st.integers(1, 6), branches=st.integers(1, 6),
)
def test_count_equals_allocated_numel(family, diag, io, d_in, d_out, width, depth, rank, branches):
    assert_counts_exact(Shape(family, d_in, d_out, width, depth, rank, branches, diag, "tanh", io))


def test_known_counts():
    """Hand-computed anchors, so a consistent-but-wrong formula cannot pass."""
    # dense d_in 4, w 8, L 1, d_out 1: 4*8+8 + 8*8+8 + 8+1
    assert count_params(Shape("dense", 4, 1, 8, 1)).total == 40 + 72 + 9
    # dlor_deep w 8, r 1, L 2, scalar: io dense (40 + 9) + 2 * (2*8 + 1 + 8)
    assert count_params(Shape("dlor_deep", 4, 1, 8, 2, 1, 1, "scalar")).total == 49 + 2 * 25
    # dlor_wide w 8, r 1, K 3, L 1, full: io 49 + (3*(8+8) + 8 + 8)
    assert count_params(Shape("dlor_wide", 4, 1, 8, 1, 1, 3, "full")).total == 49 + 48 + 16
    # lowrank w 8, r 2, L 1: in 2*(4+8)+8, hidden 2*16+8, out 2*(8+1)+1
    assert count_params(Shape("lowrank", 4, 1, 8, 1, 2)).total == 32 + 40 + 19
    # sparse:s learns min(s, n) diagonal entries
    assert count_params(Shape("dlor_deep", 4, 1, 8, 1, 1, 1, "sparse:20")).diag == 8


# --------------------------------------------------------------------------- solver

GRIDS = {
    "dense": dict(widths=range(2, 40), depths=(1, 2, 3)),
    "lowrank": dict(widths=range(4, 40, 2), depths=(1, 2, 4), ranks=(1, 2, 4)),
    "rank1": dict(widths=range(4, 120, 2), depths=range(1, 8)),
    "dlor_deep": dict(widths=(8, 16, 32), depths=range(1, 60), ranks=(1, 2), diag="scalar"),
    "dlor_wide": dict(widths=(8, 16, 32), depths=(1, 2), ranks=(1, 2), branches=range(1, 40), diag="full"),
}


def grid(family, **over):
    return {"d_in": 3, "d_out": 2, **GRIDS[family], **over}


@settings(max_examples=40, deadline=None)
@given(family=st.sampled_from(FAMILIES), budget=st.integers(150, 4000),
       tolerance=st.sampled_from((0.005, 0.02, 0.05)), policy=st.sampled_from(POLICIES))
def test_solver_returns_exactly_the_shapes_within_tolerance(family, budget, tolerance, policy):
    g = grid(family)
    every = [Candidate(s, count_params(s).total) for s in enumerate_shapes(family, **g)]
    fitting = {c.shape for c in every if abs(c.n_params - budget) <= tolerance * budget}
    try:
        got = solve(family, budget, tolerance=tolerance, policy=policy, **g)
    except BudgetError:
        assert not fitting
        return
    assert {c.shape for c in got} == fitting and len(got) == len(fitting)
    for c in got:
        assert c.n_params == count_params(c.shape).total
        assert c.rel_error(budget) <= tolerance
    assert solve(family, budget, tolerance=tolerance, policy=policy, limit=2, **g) == got[:2]


def _in_order(keys):
    return all(a <= b for a, b in zip(keys, keys[1:]))


@pytest.mark.parametrize("family", FAMILIES)
def test_policy_orderings(family):
    b, g = 1500, grid(family)
    closest = solve(family, b, tolerance=0.05, policy="closest", **g)
    assert _in_order([round(c.rel_error(b), 6) for c in closest])
    deepest = solve(family, b, tolerance=0.05, policy="deepest", **g)
    assert _in_order([(-c.shape.depth, c.rel_error(b)) for c in deepest])
    widest = solve(family, b, tolerance=0.05, policy="widest", **g)
    assert _in_order([(-(c.shape.width * c.shape.branches * c.shape.rank), c.rel_error(b)) for c in widest])


def test_closest_breaks_exact_ties_along_the_growth_axis():
    """dlor_wide with (rank 2, 1 branch) and (rank 1, 2 branches) have equal counts;
    the wide family prefers more branches."""
    cands = solve("dlor_wide", count_params(Shape("dlor_wide", 3, 2, 8, 1, 1, 2, "full")).total,
                  tolerance=0.001, d_in=3, d_out=2, widths=(8,), depths=(1,), ranks=(1, 2),
                  branches=(1, 2), diag="full")
    assert [(c.shape.rank, c.shape.branches) for c in cands] == [(1, 2), (2, 1)]


def test_nothing_fits_names_family_budget_and_nearest_counts():
    g = dict(d_in=4, d_out=1, widths=(8,), depths=(1, 2))
    counts = sorted(count_params(s).total for s in enumerate_shapes("dense", **g))  # 121, 193
    with pytest.raises(BudgetError) as info:
        solve("dense", 160, tolerance=0.02, **g)
    msg = str(info.value)
    assert "dense" in msg and "160" in msg and f"{counts[0]}, {counts[1]}" in msg
    assert info.value.exit_code == 2


@pytest.mark.parametrize("budget", [0, -10])
def test_non_positive_budget_is_rejected(budget):
    with pytest.raises(BudgetError, match="budget must be > 0"):
        solve("dense", budget, **grid("dense"))


def test_unknown_policy_is_rejected():
    with pytest.raises(BudgetError, match="allowed: closest, deepest, widest, axis"):
        solve("dense", 500, policy="biggest", **grid("dense"))
    with pytest.raises(BudgetError, match="allowed: closest, deepest, widest, axis"):
        solve_family("dense", [500], policy="biggest", **grid("dense"))


# --------------------------------------------------------------------------- policy axis

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def fixed(c: Candidate) -> tuple:
    return tuple(getattr(c.shape, a) for a in fixed_axes(c.shape.family))


def every_fit(family, budget, tolerance, g) -> dict[tuple, list[Candidate]]:
    """Brute force: each fixed-axis assignment's fitting shapes at one budget."""
    out: dict[tuple, list[Candidate]] = {}
    for s in enumerate_shapes(family, **g):
        c = Candidate(s, count_params(s).total)
        if c.rel_error(budget) <= tolerance:
            out.setdefault(fixed(c), []).append(c)
    return out


def test_axis_is_the_default_and_fixed_axes_are_the_non_growth_ones():
    assert DEFAULT_POLICY == "axis"
    assert {f: (GROWTH_AXIS[f], fixed_axes(f)) for f in FAMILIES} == {
        "dense": ("width", ("depth",)), "rank1": ("width", ("depth",)),
        "lowrank": ("width", ("depth", "rank")), "dlor_deep": ("depth", ("width", "rank")),
        "dlor_wide": ("branches", ("width", "depth", "rank")),
    }


@pytest.mark.parametrize("name", ["quickstart", "budget"])
def test_shipped_studies_hold_fixed_axes_within_each_run(name):
    """Every shipped family: one assignment per run of budgets, every shape within
    tolerance, the growth axis increasing, and one warning per change. The quickstart
    is one run per family; the budget study's 300x span needs runs for three families."""
    study = load_study(STUDIES / f"{name}.yaml")
    runs = {}
    for label, fam in study.families.items():
        sol = solve_family(fam.family, study.budgets, **study.solve_kwargs(label))
        assert sorted(sol) == study.budgets
        for b in study.budgets:
            assert sol[b][0].rel_error(b) <= study.tolerance
            assert dict(zip(fixed_axes(fam.family), fixed(sol[b][0]))) == sol.assignment[b]
        for run in sol.segments:
            assert len({fixed(sol[b][0]) for b in run}) == 1, (label, run)
            growth = [getattr(sol[b][0].shape, GROWTH_AXIS[fam.family]) for b in run]
            assert growth == sorted(growth)
        assert len(sol.warnings) == len(sol.segments) - 1
        assert sol.consistent == (len(sol.segments) == 1)
        runs[label] = [len(r) for r in sol.segments]
    if name == "quickstart":
        assert runs == {label: [5] for label in study.families}
    else:
        assert runs == {"dense": [6], "lowrank": [2, 2, 2], "dlor_deep": [3, 1, 2], "dlor_wide": [3, 3]}


def test_axis_keeps_dlor_wide_width_where_closest_jumps():
    """The reported problem: closest took w256/K17 at 1e4, then w64/K232 at 3e4."""
    study = load_study(STUDIES / "budget.yaml")
    kw = {**study.solve_kwargs("dlor_wide"), "policy": "closest"}
    jumpy = [solve("dlor_wide", b, **kw)[0].shape.width for b in (10_000, 30_000)]
    assert jumpy == [256, 64]
    sol = solve_family("dlor_wide", [1000, 3000, 10_000], **{**kw, "policy": "axis"})
    assert sol.consistent and {sol[b][0].shape.width for b in sol} == {32}
    assert [sol[b][0].shape.branches for b in sorted(sol)] == [13, 44, 154]


@settings(max_examples=25, deadline=None)
@given(family=st.sampled_from(FAMILIES),
       budgets=st.lists(st.integers(150, 3000), min_size=1, max_size=4, unique=True),
       tolerance=st.sampled_from((0.01, 0.03, 0.06)))
def test_axis_is_minimal_and_exact_against_brute_force(family, budgets, tolerance):
    g = grid(family)
    budgets = sorted(budgets)
    fits = {b: every_fit(family, b, tolerance, g) for b in budgets}
    if not all(fits.values()):
        with pytest.raises(BudgetError, match=f"no {family} structure has"):
            solve_family(family, budgets, tolerance=tolerance, **g)
        return
    sol = solve_family(family, budgets, tolerance=tolerance, **g)
    for b in budgets:  # same fitting set as per-budget solve, in another order
        assert {c.shape for c in sol[b]} == {c.shape for cs in fits[b].values() for c in cs}
        assert len(sol[b]) == sum(map(len, fits[b].values()))
    # fewest runs: extending each run greedily is optimal for contiguous runs
    greedy, i = 0, 0
    while i < len(budgets):
        j, keys = i + 1, set(fits[budgets[i]])
        while j < len(budgets) and keys & set(fits[budgets[j]]):
            keys &= set(fits[budgets[j]])
            j += 1
        greedy, i = greedy + 1, j
    assert len(sol.segments) == greedy
    assert [b for run in sol.segments for b in run] == budgets
    for run in sol.segments:
        key = fixed(sol[run[0]][0])
        assert all(fixed(sol[b][0]) == key for b in run)
        # each budget gets the chosen assignment's closest shape
        for b in run:
            assert sol[b][0].rel_error(b) == pytest.approx(min(c.rel_error(b) for c in fits[b][key]))
    if len(sol.segments) == 1:  # the single assignment minimises the worst error
        common = set.intersection(*(set(fits[b]) for b in budgets))

        def worst(k):
            return max(min(round(c.rel_error(b), 6) for c in fits[b][k]) for b in budgets)

        assert worst(fixed(sol[budgets[0]][0])) == min(worst(k) for k in common)
    assert sol.warnings == () if len(sol.segments) == 1 else len(sol.warnings) == len(sol.segments) - 1


def test_one_budget_axis_starts_like_closest():
    """Alone, a budget's best shape is the closest one; the rest are the other assignments' best."""
    for family in FAMILIES:
        g = grid(family)
        axis = solve(family, 1500, tolerance=0.05, policy="axis", **g)
        closest = solve(family, 1500, tolerance=0.05, policy="closest", **g)
        assert axis == solve_family(family, [1500], tolerance=0.05, **g)[1500]
        assert axis[0] == closest[0] and set(axis) == set(closest)
        keys = [fixed(c) for c in axis]
        n = len(set(keys))
        assert len(set(keys[:n])) == n  # one shape per assignment first


def test_other_policies_solve_each_budget_alone():
    g = grid("dlor_wide")
    for policy in ("closest", "deepest", "widest"):
        sol = solve_family("dlor_wide", [900, 400], tolerance=0.03, policy=policy, limit=3, **g)
        assert list(sol) == [400, 900] and sol.segments == () and sol.warnings == ()
        for b in (400, 900):
            assert sol[b] == solve("dlor_wide", b, tolerance=0.03, policy=policy, limit=3, **g)


DEEP = dict(d_in=3, d_out=2, widths=(8, 16), depths=range(1, 31), ranks=(1,), diag="scalar")


def test_fallback_splits_budgets_into_consistent_runs_and_warns():
    """Counts are 50 + 25L at w8 (L ≤ 30, so ≤ 800) and 98 + 49L at w16 (…, 245, 294, …,
    588, 637, …): w8 reaches 275 and 600 only, w16 1225 and 1519 only, so no single
    width serves all four budgets and the fallback holds each width over a run."""
    budgets = [275, 600, 1225, 1519]
    sol = solve_family("dlor_deep", budgets, tolerance=0.015, **DEEP)
    assert not sol.consistent and sol.segments == ((275, 600), (1225, 1519))
    assert [sol.assignment[b] for b in budgets] == [{"width": 8, "rank": 1}] * 2 + [{"width": 16, "rank": 1}] * 2
    assert [(sol[b][0].shape.width, sol[b][0].shape.depth) for b in budgets] == [(8, 9), (8, 22), (16, 23), (16, 29)]
    assert all(sol[b][0].n_params == b for b in budgets)
    assert sol.warnings == ("no single width/rank of dlor_deep reaches every budget within ±1.5%: "
                            "width 8, rank 1 → width 16, rank 1 from budget 1225 (held for budgets 1225–1519)",)
    with pytest.raises(BudgetError) as info:
        solve_family("dlor_deep", budgets, tolerance=0.015, strict=True, **DEEP)
    msg = str(info.value)
    assert "no single width/rank of dlor_deep fits all budgets [275, 600, 1225, 1519] within ±1.5%" in msg
    assert "(width 8, rank 1) misses [1225, 1519]" in msg and "widen the depth range" in msg
    assert info.value.exit_code == 2
    # strict is fine when one width does fit
    assert solve_family("dlor_deep", [275, 600], tolerance=0.015, strict=True, **DEEP).consistent


def test_runner_up_shapes_are_consistent_too():
    """shapes_per_cell > 1: the k-th shape of every budget comes from the k-th best
    assignment reaching all of them (here depths 1, 6, 2), then the other fitting shapes."""
    g = dict(d_in=4, d_out=1, widths=range(2, 65), depths=range(1, 7))
    budgets = [200, 300, 600]
    sol = solve_family("dense", budgets, tolerance=0.08, limit=3, **g)
    assert sol.consistent
    assert [[c.shape.depth for c in sol[b]] for b in budgets] == [[1, 6, 2]] * 3
    full = solve_family("dense", budgets, tolerance=0.08, **g)
    assert {b: full[b][:3] for b in budgets} == sol and len(full[600]) > 3
    assert [c.shape.depth for c in full[600][:3]] == [1, 6, 2]


def test_nothing_fits_in_a_study_names_the_budget():
    g = dict(d_in=4, d_out=1, widths=(8,), depths=(1, 2))
    with pytest.raises(BudgetError, match=r"no dense structure has 160 parameters within ±2.0% "
                                          r"\(nearest achievable counts: 121, 193\)"):
        solve_family("dense", [121, 160, 193], tolerance=0.02, **g)
    with pytest.raises(BudgetError, match="no budgets"):
        solve_family("dense", [], **g)
    with pytest.raises(BudgetError, match="budget must be > 0"):
        solve_family("dense", [121, 0], **g)
