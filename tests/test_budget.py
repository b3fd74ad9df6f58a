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
    DEFAULT_MAX_DEPTH,
    DEFAULT_POLICY,
    GROWTH_AXIS,
    POLICIES,
    Candidate,
    ShapeRules,
    _pool,
    default_max_depth,
    enumerate_shapes,
    fixed_axes,
    held_axes,
    plan_warnings,
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


def test_budget_study_holds_one_structure_per_run_and_keeps_the_rules():
    """The headline study: dense and lowrank one run each; the DLoR families grow their
    own axis at one width, then (cap reached / K = width) hold it and grow width. Every
    shape within tolerance and the rules, no warning, a note per switch."""
    study = load_study(STUDIES / "budget.yaml")
    runs = {}
    for label, fam in study.families.items():
        sol = solve_family(fam.family, study.budgets, **study.solve_kwargs(label))
        rules = study.solve_kwargs(label)["rules"]
        assert sorted(sol) == study.budgets and sol.warnings == () and not sol.violations
        for b in study.budgets:
            c = sol[b][0]
            assert c.rel_error(b) <= study.tolerance and rules.ok(c.shape), (label, b, c.shape)
            assert {a: getattr(c.shape, a) for a in sol.assignment[b]} == sol.assignment[b]
        for run in sol.segments:
            assert len({tuple(sorted(sol.assignment[b].items())) for b in run}) == 1, (label, run)
        runs[label] = [len(r) for r in sol.segments]
        assert len(sol.notes) == len(sol.segments) - 1
    assert runs == {"dense": [6], "lowrank": [6], "dlor_deep": [3, 3], "dlor_wide": [3, 3]}
    deep = solve_family("dlor_deep", study.budgets, **study.solve_kwargs("dlor_deep"))
    shapes = [deep[b][0].shape for b in study.budgets]
    assert [s.depth for s in shapes] == sorted(s.depth for s in shapes)      # depth never resets
    assert max(s.depth for s in shapes) == DEFAULT_MAX_DEPTH
    assert [s.width for s in shapes] == sorted(s.width for s in shapes)


def test_quickstart_solves_every_cell_within_the_rules():
    """Every quickstart cell has a shape within tolerance that keeps every rule."""
    study = load_study(STUDIES / "quickstart.yaml")
    for label, fam in study.families.items():
        sol = solve_family(fam.family, study.budgets, **study.solve_kwargs(label))
        assert all(sol[b][0].rel_error(b) <= study.tolerance for b in study.budgets)
        assert not sol.violations, (label, sol.violations)


def test_axis_keeps_dlor_wide_width_where_closest_jumps():
    """The reported problem: closest took w256/K17 at 1e4, then w64/K232 at 3e4 (the
    old budget.yaml ranges, without the rules); axis held width 32 over three budgets."""
    kw = dict(tolerance=0.02, d_in=2, d_out=1, activation="tanh", widths=(32, 64, 128, 256, 512, 1024),
              depths=(1,), ranks=(1,), branches=range(1, 257), diag="scalar", io="auto")
    jumpy = [solve("dlor_wide", b, policy="closest", **kw)[0].shape.width for b in (10_000, 30_000)]
    assert jumpy == [256, 64]
    sol = solve_family("dlor_wide", [1000, 3000, 10_000], policy="axis", **kw)
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


# --------------------------------------------------------------------------- trainability rules

@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(FAMILIES), io=st.sampled_from(IO_KINDS),
       diag=st.one_of(st.sampled_from(("scalar", "full", "none")), st.integers(1, 20).map(lambda s: f"sparse:{s}")),
       d_in=st.integers(1, 6), d_out=st.integers(1, 4),
       widths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       depths=st.lists(st.integers(0, 6), min_size=1, max_size=4),
       ranks=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       branches=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_pool_counts_are_count_params_in_enumeration_order(family, io, diag, d_in, d_out, widths, depths,
                                                           ranks, branches):
    """The solver's pool computes counts in closed form, vectorised; they must equal
    count_params for every shape, in enumerate_shapes order (exact ties keep that order)."""
    g = dict(d_in=d_in, d_out=d_out, widths=widths, depths=depths, ranks=ranks, branches=branches,
             diag=diag, io=io)
    shapes = list(enumerate_shapes(family, **g))
    pool = _pool(family, g)
    assert pool.counts.tolist() == [count_params(s).total for s in shapes]
    assert [c.shape for c in pool.within(1, 1e9)] == shapes


def test_rules_name_depth_past_the_cap_and_rank_past_width():
    rules = ShapeRules(max_depth=16)
    assert rules.ok(Shape("dlor_deep", 2, 1, 8, 16, 1))
    (rule, why), = rules.problems(Shape("dlor_deep", 2, 1, 8, 17, 1))
    assert rule == "max_depth" and "depth 17 > max_depth 16" in why
    (rule, why), = rules.problems(Shape("dlor_wide", 2, 1, 8, 1, 1, 9))
    assert rule == "rank" and "branches·rank 9·1 = 9 > width 8" in why
    assert rules.ok(Shape("dlor_wide", 2, 1, 8, 1, 2, 4))          # K·r = 8 = width: full rank is fine
    assert [r for r, _ in rules.problems(Shape("lowrank", 2, 1, 4, 1, 8))] == ["rank"]
    assert not rules.ok(Shape("dense", 2, 1, 4, 40))               # the cap applies to what it is given …
    assert ShapeRules(max_depth=None).ok(Shape("dense", 2, 1, 4, 40))  # … a spec gives dense none
    assert ShapeRules().ok(Shape("dlor_deep", 2, 1, 8, 500, 1))    # no cap
    assert default_max_depth("dlor_deep") == default_max_depth("dlor_wide") == DEFAULT_MAX_DEPTH
    assert default_max_depth("dense") is None


def test_rules_name_depth_growth_at_a_width_no_deeper_than_the_input():
    """Width ≤ d_in: no depth makes the stack universal (Johnson 2019), so the depth
    family keeps width > d_in; families that grow width are not held to it."""
    rules = ShapeRules()
    (rule, why), = rules.problems(Shape("dlor_deep", 4, 1, 4, 12, 1, 1, "scalar"))
    assert rule == "narrow" and "width 4 ≤ d_in 4" in why
    assert rules.ok(Shape("dlor_deep", 4, 1, 5, 12, 1, 1, "scalar"))
    assert rules.ok(Shape("dense", 4, 1, 4, 1))          # dense grows width: a small width is just small
    assert ShapeRules(width_gt_d_in=False).ok(Shape("dlor_deep", 4, 1, 4, 12, 1, 1, "scalar"))


def deep_counts(w, L, d_in=2):
    return count_params(Shape("dlor_deep", d_in, 1, w, L, 1, 1, "scalar")).total


DEEP_RANGE = dict(d_in=2, d_out=1, widths=range(8, 201), depths=range(1, 129), ranks=(1,), diag="scalar")


def test_rules_drop_breaking_shapes_where_others_fit():
    rules = ShapeRules(max_depth=12)
    b = deep_counts(8, 30)  # w8 needs depth 30; wider widths reach it within the cap
    free = solve("dlor_deep", b, policy="closest", **DEEP_RANGE)
    kept = solve("dlor_deep", b, policy="closest", rules=rules, **DEEP_RANGE)
    assert any(c.shape.depth > 12 for c in free)
    assert kept and all(c.shape.depth <= 12 for c in kept)
    assert {c.shape for c in kept} == {c.shape for c in free if c.shape.depth <= 12}


def test_deep_grows_depth_to_the_cap_then_width():
    """Past the cap the planner holds depth (at the cap) and grows width: every shape
    keeps the rules, the switch is a note (designed), not a warning."""
    cap = 12
    budgets = [deep_counts(8, 4), deep_counts(8, 10), 2000, 4000, 8000]
    sol = solve_family("dlor_deep", budgets, rules=ShapeRules(max_depth=cap), **DEEP_RANGE)
    shapes = [sol[b][0].shape for b in budgets]
    assert all(s.depth <= cap for s in shapes) and not sol.violations and sol.warnings == ()
    assert [(s.width, s.depth) for s in shapes[:2]] == [(8, 4), (8, 10)]   # depth grows at width 8
    assert {s.depth for s in shapes[2:]} == {cap}                          # then held at the cap …
    widths = [s.width for s in shapes[2:]]
    assert widths == sorted(widths) and len(set(widths)) == 3              # … while width grows
    assert sol.segments == (tuple(budgets[:2]), tuple(budgets[2:]))
    assert sol.assignment[budgets[-1]] == {"depth": cap, "rank": 1}
    assert held_axes("dlor_deep") == ("depth", "rank")
    (note,) = sol.notes
    assert "width 8, rank 1 of dlor_deep grows depth up to 10" in note
    assert "width grows instead at depth 12, rank 1 (held for budgets 2000–8000)" in note
    for b in budgets:
        assert sol[b][0].rel_error(b) <= 0.02
    # without rules the old behaviour: deeper than the cap
    assert max(c[0].shape.depth for c in solve_family("dlor_deep", budgets, **DEEP_RANGE).values()) > cap


def test_wide_keeps_branches_within_width_then_grows_width():
    g = dict(d_in=2, d_out=1, widths=range(8, 301), depths=(1,), ranks=(1,), branches=range(1, 65),
             diag="scalar")
    budgets = [400, 1000, 3000, 10000, 30000]
    free = solve_family("dlor_wide", budgets, **g)
    assert any(c[0].shape.branches > c[0].shape.width for c in free.values())
    sol = solve_family("dlor_wide", budgets, rules=ShapeRules(), **g)
    shapes = [sol[b][0].shape for b in budgets]
    assert all(s.branches * s.rank <= s.width for s in shapes) and not sol.violations
    assert sol.warnings == () and len(sol.notes) == 1
    last = sol.segments[-1]
    held = {sol[b][0].shape.branches for b in last}
    assert len(held) == 1 and len(last) >= 2
    widths = [sol[b][0].shape.width for b in last]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)


def test_budget_no_compliant_shape_reaches_keeps_the_breaking_one_and_says_why():
    g = dict(d_in=2, d_out=1, widths=(8,), depths=range(1, 129), ranks=(1,), diag="scalar")
    budgets = [deep_counts(8, 6), deep_counts(8, 40)]
    sol = solve_family("dlor_deep", budgets, rules=ShapeRules(max_depth=16), **g)
    assert sol[budgets[1]][0].shape.depth == 40
    assert list(sol.violations) == [budgets[1]]
    lines = plan_warnings("deep", "dlor_deep", sol)
    assert len(lines) == 1
    assert lines[0].startswith(f"cell deep@{budgets[1]} (dlor_deep-w8-L40-r1-K1-scalar): depth 40 > max_depth 16")
    assert "fix: allow wider widths (families.deep.width)" in lines[0] and "families.deep.max_depth" in lines[0]
    wide = solve_family("dlor_wide", [200], rules=ShapeRules(), d_in=4, d_out=1, widths=(8,), depths=(1,),
                        branches=range(1, 40), diag="scalar")
    (line,) = plan_warnings("dlor_wide", "dlor_wide", wide)
    assert line.startswith("cell dlor_wide@200 (") and "branches·rank 9·1 = 9 > width 8" in line
    assert "fix: allow wider widths (families.dlor_wide.width)" in line


def test_init_identity_scales_only_the_dlor_hidden_u_by_inv_sqrt_depth():
    shape = Shape("dlor_deep", 3, 2, 8, 9, 2, diag="scalar")
    std = init_member(shape, 5, 1.5, scheme="standard")
    ident = init_member(shape, 5, 1.5, scheme="identity")
    assert std.keys() == ident.keys()
    hidden_u = {f"l{i}.U" for i in range(1, 10)}
    for k in std:
        want = std[k] / 3 if k in hidden_u else std[k]
        torch.testing.assert_close(ident[k], want)
    assert all(float(ident[f"l{i}.d"]) == 1.0 for i in range(1, 10))
    with pytest.raises(ValueError, match="unknown init scheme"):
        init_member(shape, 0, scheme="zero")
    assert models.DEFAULT_INIT in models.INIT_SCHEMES
