"""Analytic constructions of arXiv 2605.05659 (no training): exact DLoR reconstructions,
the h → 0 deep/wide constructions (Theorems 5/6, Figs 2/3) and the rank-1 paradox (Fig. 5)."""

import math

import numpy as np
import pytest
import torch

from dlor_scale.paper import construct as C
from dlor_scale.models import count_params, forward

# short tail of the h grid: keeps the file fast; the fitted slope uses h ≤ 1e-2 anyway
HS = tuple(float(h) for h in np.logspace(-2, -4, 5))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, n)) / math.sqrt(n)


# ---------------------------------------------------------------- 1. exact reconstruction

@pytest.mark.parametrize("n", [4, 16, 64])
def test_multiplicative_exact_any_full_rank(n):
    W = _rand(n, seed=n)
    fs = C.multiplicative_factors(W)
    assert len(fs) == 2 * n - 1
    assert all(f.rank <= 1 for f in fs)
    assert sum(f.rank == 0 for f in fs) == 1  # the single diag(d) factor
    assert C.relative_error(W, C.reconstruct_multiplicative(fs)) <= 1e-10
    # every factor really is diag + rank ≤ 1
    for f in fs[:3]:
        assert np.linalg.matrix_rank(f.matrix() - np.diag(f.d)) <= 1
    # all-αI+uvᵀ variant (Σ split into n rank-1 updates)
    fs_s = C.multiplicative_factors(W, diag="scalar")
    assert len(fs_s) == 3 * n - 2
    assert all(f.diag == "scalar" and np.ptp(f.d) == 0 and f.rank == 1 for f in fs_s)
    assert C.relative_error(W, C.reconstruct_multiplicative(fs_s)) <= 1e-10


@pytest.mark.parametrize("n", [4, 16, 64])
def test_additive_exact_no_diagonal(n):
    W = _rand(n, seed=100 + n)
    for r in (1, 3):
        terms = C.additive_terms(W, rank=r)
        assert len(terms) == math.ceil(n / r)
        assert all(U.shape == (n, r) and V.shape == (n, r) for U, V in terms)
        assert C.relative_error(W, C.reconstruct_additive(terms)) <= 1e-10
        assert C.additive_params(terms) == math.ceil(n / r) * 2 * n * r


def test_spectral_route_and_its_precondition():
    W = _rand(16, 3)
    S = W + W.T
    fs = C.multiplicative_factors(S, method="spectral")
    assert len(fs) == 16 and all(f.rank == 1 and np.all(f.d == 1) for f in fs)
    assert C.relative_error(S, C.reconstruct_multiplicative(fs)) <= 1e-10
    with pytest.raises(ValueError, match="symmetric"):
        C.multiplicative_factors(W, method="spectral")
    with pytest.raises(ValueError, match="square"):
        C.multiplicative_factors(np.ones((3, 4)))


def test_product_of_pure_lowrank_factors_cannot_be_full_rank():
    """Why the deep route needs the diagonal (Fig. 1b): drop d and the product is rank ≤ 1."""
    fs = C.multiplicative_factors(_rand(8, 1))
    P = np.eye(8)
    for f in fs:
        if f.rank:
            P = P @ (f.U @ f.V.T)
    assert np.linalg.matrix_rank(P, tol=1e-10) <= 1


@pytest.mark.parametrize("n", [4, 16, 64])
def test_reconstruction_report(n):
    r = C.reconstruction_report(n, seed=0)
    assert r["dense_params"] == n * n
    for key in ("multiplicative", "multiplicative_scalar", "spectral", "additive"):
        assert r[key]["rel_error"] <= 1e-10, key
    assert r["additive"]["terms"] == n and r["additive"]["params"] == 2 * n * n
    assert r["multiplicative"]["factors"] == 2 * n - 1
    assert r["multiplicative"]["params"] == (2 * n - 2) * (2 * n + 1) + n
    assert r["spectral"]["params"] == n * (2 * n + 1)


# ---------------------------------------------------------------- 2. h → 0 constructions

def test_sawtooth_teacher_is_telgarsky():
    T = C.sawtooth_teacher(3)
    x = torch.linspace(0, 1, 257, dtype=torch.float64)[:, None]
    ref = x[:, 0].clone()
    for _ in range(3):
        ref = 2 * torch.minimum(ref, 1 - ref)
    assert torch.allclose(T(x)[:, 0], ref, atol=1e-14)


def test_deep_network_is_a_models_shape():
    T = C.mlp_teacher(activation="tanh", seed=0)
    net = C.build_deep(T, h=1e-2)
    shape, p = net.to_shape()
    assert shape.family == "dlor_deep" and shape.depth == net.depth == 3 * 31
    assert {k: tuple(v.shape[1:]) for k, v in p.items()} == shape.tensor_shapes()
    assert count_params(shape).total == sum(v.numel() for v in p.values())
    x = T.samples(64, 1)
    assert torch.allclose(forward(shape, p, x)[0], net(x), atol=1e-12, rtol=0)
    # with a ReLU sawtooth teacher and smooth σ the activations differ per layer
    with pytest.raises(ValueError, match="activation"):
        C.build_deep(C.sawtooth_teacher(2), "tanh", 1e-2).to_shape()


@pytest.mark.parametrize("route", ["deep", "wide"])
@pytest.mark.parametrize("act", ["tanh", "softplus", "silu"])
def test_mlp_teacher_error_is_order_h(route, act):
    r = C.h_sweep("mlp", route, act, hs=HS, n_samples=256)
    assert 0.8 <= r["slope"] <= 1.2, r
    assert all(a > b for a, b in zip(r["errors"], r["errors"][1:]))
    assert r["errors"][-1] < 1e-2
    assert r["params"] > r["params_dense"]  # Θ(n²) per matrix either way (notes §1.6)
    if route == "deep":
        assert r["evaluator"] == "models.forward"


@pytest.mark.parametrize("route", ["deep", "wide"])
@pytest.mark.parametrize("teacher", ["mlp", "sawtooth"])
def test_relu_construction_is_exact(route, teacher):
    r = C.h_sweep(teacher, route, "relu", hs=HS, n_samples=256)
    assert r["exact"] and max(r["errors"]) <= 1e-8, r["errors"]  # rounding only (grows like 1/h)
    assert math.isnan(r["slope"])


@pytest.mark.parametrize("route", ["deep", "wide"])
def test_sawtooth_smooth_sigma_converges(route):
    r = C.h_sweep("sawtooth", route, "softplus", hs=HS, n_samples=513)
    assert 0.8 <= r["slope"] <= 1.2 and r["errors"][-1] < 1e-3, r


def test_wide_rank_r_branches():
    T = C.mlp_teacher(seed=2)
    net = C.build_wide(T, h=1e-3, rank=4)
    assert net.counts["branches_per_matrix"] == [1, 4, 1]  # ⌈rank(W)/4⌉: ranks 4, 16, 1
    x = T.samples(128, 3)
    assert float((net(x) - T(x)).abs().max()) < 1e-2


def test_taylor_point_validation():
    with pytest.raises(ValueError, match="σ'"):
        C.build_deep(C.mlp_teacher(activation="relu"), h=1e-2, x0=-1.0)


# ---------------------------------------------------------------- 3. rank-1 paradox

def test_rank1_interpolates_any_scalar_data_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 3, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randn(60, generator=g, dtype=torch.float64)
    r = C.rank1_interpolant(x, y)
    assert r["max_error"] <= 1e-8
    shape, p = r["shape"], r["params"]
    assert shape.family == "rank1" and shape.width == 59
    assert all(layer.rank == 1 for layer in shape.layers())
    pred = forward(shape, p, x)[0, :, 0]
    assert float((pred - y).abs().max()) <= 1e-8
    assert C.rank1_interpolant(x[:1], y[:1])["max_error"] <= 1e-12
    with pytest.raises(ValueError, match="distinct"):
        C.rank1_interpolant(torch.zeros(3, 2), torch.arange(3.0))


@pytest.fixture(scope="module")
def floor():
    return C.ridge_floor()


def test_ridge_floor_of_x1x2(floor):
    assert abs(C.ridge_error(0.0)["err"] - 1 / 3) < 1e-12  # axis direction: no better than 0
    assert abs(floor["floor_rms"] - math.sqrt(4 / 135)) < 1e-9  # closed form at θ = π/4
    assert abs(floor["theta"] - math.pi / 4) < 1e-4
    assert floor["floor_rel"] > 0.5


def test_rank1_error_does_not_fall_below_floor_with_parameters(floor):
    r = C.rank1_param_sweep((1, 4, 16, 64), floor=floor)
    errs = r["errors"]
    assert all(a >= b - 1e-12 for a, b in zip(errs, errs[1:]))
    assert min(errs) >= floor["floor_rms"] - 1e-12
    assert errs[-1] <= 1.001 * floor["floor_rms"]


def test_rank2_network_beats_the_floor(floor):
    a, b = C.product_via_squares(1e-1), C.product_via_squares(1e-2)
    assert b["sup"] < 1e-3 < floor["floor_rms"] / 100
    assert 50 < a["sup"] / b["sup"] < 200  # O(h²) second-order Taylor remainder
    assert b["params"] < 30
