"""Exact parameter counts, stacked forward shapes and the budget solver.

Why property tests: scaling curves are plotted against the closed-form count, so a
count that is off by one bias vector for some (family, diagonal, io) combination
silently shifts a whole curve. Every combination is checked against the tensors that
are actually allocated.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlor_scale import models
from dlor_scale.budget import POLICIES, Candidate, enumerate_shapes, solve
from dlor_scale.errors import BudgetError
from dlor_scale.models import FAMILIES, IO_KINDS, Member, Shape, count_params, forward, init_member

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
    with pytest.raises(BudgetError, match="allowed: closest, deepest, widest"):
        solve("dense", 500, policy="biggest", **grid("dense"))
