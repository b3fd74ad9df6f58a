"""Scaling-law fitting: planted laws are recovered, CIs are honest, bad input is explained."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dlor_scale.errors import FitError
from dlor_scale.fit import LawFit, compare, extrapolation_check, fit_law

E0, A0, ALPHA0 = 1e-3, 2.0, 0.5
P8 = np.geomspace(1e2, 1e6, 8)


def law(P, E=E0, A=A0, alpha=ALPHA0):
    return E + A * np.asarray(P, dtype=float) ** -alpha


def noisy(P, sigma, seed, **kw):
    rng = np.random.default_rng(seed)
    return law(P, **kw) * np.exp(sigma * rng.standard_normal(np.size(P)))


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("seed", range(5))
def test_planted_law_alpha_within_2_percent(seed):
    f = fit_law(P8, noisy(P8, 0.01, seed), family="dense", n_boot=300, seed=seed)
    assert abs(f.alpha - ALPHA0) / ALPHA0 < 0.02
    assert f.converged and f.at_bounds == [] and f.flags == []
    assert f.grad_norm < 1e-6
    ci = f.ci()
    assert ci["alpha"][0] < f.alpha < ci["alpha"][1]
    assert f.boot.shape == (300, 3)
    assert f.boot_method == "parametric(residual)"


def test_noise_free_law_is_exact():
    f = fit_law(P8, law(P8), n_boot=50)
    assert f.alpha == pytest.approx(ALPHA0, rel=1e-5)
    assert f.E == pytest.approx(E0, rel=1e-4)
    assert f.A == pytest.approx(A0, rel=1e-4)
    assert f.converged
    np.testing.assert_allclose(f.predict(P8), law(P8), rtol=1e-6)


def test_loss_is_summed_huber_on_log_residuals():
    """Guard against Hoffmann's averaged objective (Epoch AI): loss = Σ huber, not mean."""
    L = noisy(P8, 0.02, 3)
    f = fit_law(P8, L, n_boot=0, delta=1e-3)
    r = np.log(f.predict(P8)) - np.log(L)
    d = 1e-3
    hub = np.where(np.abs(r) <= d, 0.5 * r**2, d * (np.abs(r) - 0.5 * d))
    assert f.loss == pytest.approx(hub.sum(), rel=1e-9)
    assert f.loss > 2 * hub.mean()


def test_power_form_and_E_fixed_at_zero():
    L = noisy(P8, 0.01, 0, E=0.0)
    f = fit_law(P8, L, form="power", n_boot=200)
    assert f.E == 0.0 and abs(f.alpha - ALPHA0) < 0.01
    assert f.boot.shape == (200, 2)
    ci = f.ci()
    assert ci["E"] == (0.0, 0.0) and ci["alpha"][0] < ALPHA0 < ci["alpha"][1]


def test_saturating_on_pure_power_data_reports_E_at_bound():
    f = fit_law(P8, law(P8, E=0.0), n_boot=0)
    assert "E" in f.at_bounds
    assert any("E at its lower bound" in s for s in f.flags)
    assert f.alpha == pytest.approx(ALPHA0, rel=1e-4)


def test_broken_power_law_recovers_both_slopes_and_break():
    P = np.geomspace(1e2, 1e6, 10)
    f_s = 0.5  # the module's fixed smoothness
    L = (1e-3 + 2 * P**-0.3 * (1 + (P / 1e4) ** (1 / f_s)) ** (-(0.7 - 0.3) * f_s))
    L = L * np.exp(0.005 * np.random.default_rng(0).standard_normal(P.size))
    f = fit_law(P, L, form="broken", family="dlor_deep", n_boot=100)
    assert f.alpha == pytest.approx(0.3, abs=0.01)
    assert f.alpha2 == pytest.approx(0.7, abs=0.02)
    assert f.P_break == pytest.approx(1e4, rel=0.1)
    assert f.alpha_large == f.alpha2 and f.converged
    target = float(f.predict(3e6))
    assert f.params_for(target) == pytest.approx(3e6, rel=1e-6)
    assert f.boot.shape == (100, 5)


def test_huber_resists_one_outlier():
    L = noisy(P8, 0.005, 1)
    L[3] *= 1.25  # one under-searched cell
    f = fit_law(P8, L, n_boot=0)
    assert abs(f.alpha - ALPHA0) / ALPHA0 < 0.03


def test_weight_by_stderr():
    L = noisy(P8, 0.01, 2)
    se = 0.01 * L
    f = fit_law(P8, L, stderr=se, weight_by_stderr=True, n_boot=100)
    assert abs(f.alpha - ALPHA0) < 0.01
    assert f.boot_method == "parametric(stderr+residual)"
    f2 = fit_law(P8, L, stderr=np.r_[se[:-1], np.nan], weight_by_stderr=True, n_boot=0)
    assert any("weight_by_stderr ignored" in s for s in f2.flags)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded():
    L = noisy(P8, 0.01, 0)
    a = fit_law(P8, L, n_boot=100, seed=7)
    b = fit_law(P8, L, n_boot=100, seed=7)
    c = fit_law(P8, L, n_boot=100, seed=8)
    np.testing.assert_array_equal(a.boot, b.boot)
    assert not np.array_equal(a.boot, c.boot)


def test_prediction_intervals():
    f = fit_law(P8, noisy(P8, 0.01, 4), n_boot=400)
    P = np.array([1e3, 1e5, 4e6])
    lo, hi = f.predict_interval(P)
    olo, ohi = f.predict_interval(P, observation=True)
    pred = f.predict(P)
    assert np.all(lo < pred) and np.all(pred < hi)
    # a new point carries its own noise: wider in range, where curve uncertainty is small
    assert np.all(olo[:2] < lo[:2]) and np.all(ohi[:2] > hi[:2])
    # the band widens when extrapolating
    rel_w = (hi - lo) / pred
    assert rel_w[2] > rel_w[1]
    assert f.predict_boot(P).shape == (400, 3)


def test_stderr_only_bootstrap_when_no_residual_dof():
    P = np.array([1e2, 1e4, 1e6])
    L = law(P)
    f = fit_law(P, L, stderr=0.01 * L, n_boot=200)
    assert f.boot_method == "parametric(stderr)"
    assert any("no residual degrees of freedom" in s for s in f.flags)
    g = fit_law(P, L, n_boot=200)  # exact fit, no noise information at all
    assert g.boot.shape == (0, 3)
    assert math.isnan(g.ci()["alpha"][0])
    assert any("CIs unavailable" in s for s in g.flags)


# --------------------------------------------------------------------------- inversion


def test_params_for():
    f = fit_law(P8, law(P8), n_boot=200)
    assert f.params_for(float(law(1e7))) == pytest.approx(1e7, rel=1e-4)
    assert f.params_for(E0 * 0.9) is None  # below the irreducible error
    assert f.params_for(f.E) is None  # exactly E: reached only at P = ∞
    pb = f.params_for_boot(float(law(1e7)))
    assert pb.shape == (200,) and np.isfinite(pb).all()
    assert np.isinf(f.params_for_boot(E0 * 0.5)).all()
    p = fit_law(P8, law(P8, E=0.0), form="power", n_boot=0)
    assert p.params_for(1e-6) == pytest.approx(4e12, rel=1e-3)  # (2/1e-6)^2


def test_to_dict_is_strict_json():
    f = fit_law(P8, noisy(P8, 0.01, 0), family="dense", n_boot=50)
    d = f.to_dict()
    s = json.dumps(d, allow_nan=False)
    assert json.loads(s)["family"] == "dense"
    assert d["ci"]["alpha"][0] < d["alpha"] < d["ci"]["alpha"][1]
    assert d["alpha2"] is None and d["n_boot"] == 50
    g = fit_law([1e2, 1e4, 1e6], law([1e2, 1e4, 1e6]), n_boot=10)
    json.dumps(g.to_dict(), allow_nan=False)  # NaN CIs become null


# --------------------------------------------------------------------------- degenerate


@pytest.mark.parametrize(
    "P, L, match",
    [
        ([1e4, 1e4, 1e4], [0.1, 0.11, 0.09], "only one budget"),
        ([1e3], [0.1], "only one budget"),
        ([1e2, 1e3, 1e4], [np.nan] * 3, "all 3 errors are NaN"),
        ([1e2, 1e3], [0.2, 0.1], "2 distinct budgets but form 'saturating' has 3 param"),
        ([1e2, 1e2, 1e3, 1e3], [0.2, 0.21, 0.1, 0.1], "2 distinct budgets"),
        ([1e2, 1e3, 1e4], [0.0, -0.1, 0.05], "only one budget"),
        ([1e2, 1e3, 1e4], [0.1, 0.2], "equal length"),
        ([], [], "no points"),
        (["a", "b"], [0.1, 0.2], "numeric"),
    ],
)
def test_degenerate_input_raises_fit_error_naming_family(P, L, match):
    with pytest.raises(FitError, match=match) as ei:
        fit_law(P, L, family="dlor_wide", n_boot=10)
    assert "dlor_wide" in str(ei.value)


@pytest.mark.filterwarnings("error")
def test_garbage_input_never_crashes_with_a_numpy_error():
    """Random short inputs with NaN/inf/0/negatives: FitError or a usable LawFit, no
    numpy exception and not even a RuntimeWarning."""
    rng = np.random.default_rng(0)
    for i in range(40):
        n = int(rng.integers(1, 10))
        P, L = 10 ** rng.uniform(0, 12, n), 10 ** rng.uniform(-6, 1, n)
        for arr in (P, L):
            m = rng.random(n) < 0.15
            arr[m] = rng.choice([np.nan, np.inf, 0.0, -1.0], m.sum())
        form = str(rng.choice(["saturating", "power", "broken"]))
        se = None if i % 2 else L * rng.uniform(0, 0.1, n)
        try:
            f = fit_law(P, L, form=form, stderr=se, n_boot=10, seed=i, family="fz")
        except FitError as exc:
            assert "fz" in str(exc)
            continue
        json.dumps(f.to_dict(), allow_nan=False)
        f.predict_interval([1e3, 1e9], observation=True)
        f.params_for(0.01)
        extrapolation_check(P, L, form=form, n_boot=10, family="fz")
        compare(f, f, target_error=0.01)


def test_unknown_form():
    with pytest.raises(FitError, match="unknown form 'cubic'"):
        fit_law(P8, law(P8), form="cubic", family="x")


def test_nan_and_nonpositive_points_are_dropped_and_flagged():
    L = noisy(P8, 0.005, 0)
    L[2], L[5] = np.nan, 0.0
    P = P8.copy()
    P[6] = -1.0
    f = fit_law(P, L, family="rank1", n_boot=50)
    assert f.n_points == 5
    assert any("non-finite error" in s for s in f.flags)
    assert any("non-positive error" in s for s in f.flags)
    assert any("non-positive or non-finite parameter count" in s for s in f.flags)
    assert abs(f.alpha - ALPHA0) < 0.02
    assert np.isfinite(f.boot).all()


def test_power_form_needs_only_two_budgets():
    f = fit_law([1e2, 1e4], [0.2, 0.02], form="power", n_boot=10)
    assert f.alpha == pytest.approx(0.5, rel=1e-6)
    assert f.boot.shape == (0, 2)  # zero residual dof, no stderr → no CI, and it says so
    assert any("CIs unavailable" in s for s in f.flags)


# --------------------------------------------------------------------------- extrapolation


def test_extrapolation_4x_beyond_fit_range_within_2_percent():
    P = np.r_[np.geomspace(1e2, 1e5, 6), 2e5, 4e5]  # held-out: 2× and 4× past the fit
    for seed in range(4):
        L = noisy(P, 0.002, seed)
        ex = extrapolation_check(P, L, family="dense", n_boot=300, seed=seed)
        assert ex["holdout"] == 2 and ex["n_fit"] == 6
        assert ex["extrapolation_factor"] == pytest.approx(4.0)
        assert ex["max_rel_err"] <= 0.02, ex
        assert ex["ok"] is True and all(h["inside"] for h in ex["held_out"])
        json.dumps(ex, allow_nan=False)


def test_extrapolation_failure_is_flagged_not_hidden():
    P = P8
    L = noisy(P, 0.003, 0)
    L[-2:] *= np.array([1.3, 1.8])  # the law breaks at scale (e.g. a rank bottleneck)
    ex = extrapolation_check(P, L, family="lowrank", n_boot=300)
    assert ex["ok"] is False
    assert not ex["held_out"][-1]["inside"]
    assert ex["max_rel_err"] > 0.2


def test_extrapolation_not_checkable_says_why():
    P = np.array([1e2, 1e3, 1e4])
    ex = extrapolation_check(P, law(P), family="x", n_boot=10)
    assert ex["ok"] is None and "too few budgets" in ex["reason"]
    ex = extrapolation_check(P8, law(P8), holdout=1, rel_tol=0.02, family="x", n_boot=100,
                             stderr=0.01 * law(P8))
    assert ex["ok"] is True and ex["holdout"] == 1


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_extrapolation_40_percent_miss_is_not_ok_even_inside_a_wide_band(seed):
    """The held-out point sits 40% above the law. With 12% noise the reduced fit's
    observation interval is wide enough to contain it, so an interval-only check would say
    "ok" (the issue's 91% miss passed that way); the tolerance makes it FAILED."""
    P = np.geomspace(1e2, 1e5, 7)
    L = noisy(P, 0.12, seed)
    L[-1] = law(P[-1]) * 1.4
    ex = extrapolation_check(P, L, holdout=1, family="w", n_boot=300)
    h = ex["held_out"][-1]
    assert h["inside"] is True  # the band alone would have passed it
    assert h["rel_err"] > 0.2 and h["within_tol"] is False
    assert ex["rel_tol"] == 0.10
    assert ex["ok"] is False and ex["verdict"] == "FAILED"
    # the same data with the point on the law passes (the check can say "ok" at all)
    L[-1] = law(P[-1])
    ok = extrapolation_check(P, L, holdout=1, family="w", n_boot=300)
    assert ok["held_out"][-1]["rel_err"] <= 0.10, ok
    assert ok["ok"] is (ok["held_out"][-1]["inside"] is True)


def flat_errors(seed, n=8):
    """No scaling at all: error constant up to 5% noise (a family stuck on a floor)."""
    return 0.02 * np.exp(0.05 * np.random.default_rng(seed).standard_normal(n))


@pytest.mark.parametrize("seed", [0, 2])
def test_unidentified_exponent_gives_na_and_compare_says_not_identified(seed):
    flat = fit_law(P8, flat_errors(seed), family="dense", n_boot=300)
    assert flat.alpha_identified is False
    assert "bound" in flat.identification
    assert any("not identified" in f for f in flat.flags)
    ex = extrapolation_check(P8, flat_errors(seed), family="dense", n_boot=300)
    assert ex["ok"] is None and ex["verdict"] == "n/a"
    assert "not identified" in ex["reason"]
    good = fit_law(P8, noisy(P8, 0.01, seed), family="dlor_deep", n_boot=300)
    assert good.alpha_identified and good.identification == "identified"
    for c in (compare(good, flat), compare(flat, good)):
        assert c["identified"] is False and c["verdict"] == "not identified"
        assert c["delta_alpha_ci"] is None and c["p_a_steeper"] is None
        assert "dense" in c["why"] and "dlor_deep" not in c["why"]
        json.dumps(c, allow_nan=False)
    d = flat.to_dict()
    assert d["alpha_identified"] is False and d["identification"] == flat.identification


def test_no_bootstrap_means_not_identified():
    f = fit_law(P8, noisy(P8, 0.01, 0), n_boot=0)
    assert not f.alpha_identified and "no confidence interval" in f.identification


def test_bootstrap_seed_derives_from_the_family():
    """Two fits made with the same seed (the report's fallback: fit_law(..., seed=0) per
    family) must not share bootstrap noise, or compare pairs correlated replicates."""
    La, Lb = noisy(P8, 0.03, 1), noisy(P8, 0.03, 2, alpha=0.45)
    fa = fit_law(P8, La, family="dlor_deep", seed=0, n_boot=1000)
    fb = fit_law(P8, Lb, family="dlor_wide", seed=0, n_boot=1000)
    assert fa.boot_seed != fb.boot_seed
    r = np.corrcoef(fa.boot[:, 2], fb.boot[:, 2])[0, 1]
    assert abs(r) < 0.1, r
    # the same family and seed: identical noise (what compare must detect) ...
    fb2 = fit_law(P8, Lb, family="dlor_deep", seed=0, n_boot=1000)
    assert fb2.boot_seed == fa.boot_seed
    assert np.corrcoef(fa.boot[:, 2], fb2.boot[:, 2])[0, 1] > 0.5
    c_same = compare(fa, fb2)
    assert any("share a bootstrap seed" in n for n in c_same["notes"])
    assert compare(fa, fb)["notes"] == []
    # ... and de-paired, its Δα CI is as wide as the independent one (not ~2× narrower)
    w_same = np.diff(c_same["delta_alpha_ci"])[0]
    w_ind = np.diff(compare(fa, fb)["delta_alpha_ci"])[0]
    assert 0.75 < w_same / w_ind < 1.33, (w_same, w_ind)


def test_ci_is_widened_for_the_estimated_noise_scale():
    """Few residual dof: each replicate's own noise estimate s* says how uncertain σ is,
    and the CI is widened accordingly (t-like), beyond the plain percentile interval."""
    P = np.geomspace(1e2, 1e5, 5)  # 2 residual dof
    f = fit_law(P, noisy(P, 0.03, 3), n_boot=1000)
    assert f.boot_ratio.shape == (1000,) and np.all(f.boot_ratio > 0)
    assert 1.5 < f.t_factor() < 4.0  # t_2/z = 2.2 in a linear model
    lo, hi = f.ci()["alpha"]
    plo, phi = f.ci(method="percentile")["alpha"]
    assert (hi - lo) > 1.3 * (phi - plo)
    assert lo < f.alpha < hi


def test_t_factor_is_t_over_z_in_the_linear_case():
    from scipy import stats

    from dlor_scale.fit import _t_factor

    rng = np.random.default_rng(0)
    for nu in (2, 3, 5, 20):
        r = 1 / np.sqrt(rng.chisquare(nu, 20000) / nu)
        want = stats.t.ppf(0.975, nu) / stats.norm.ppf(0.975)
        assert _t_factor(r, 0.95) == pytest.approx(want, rel=0.03), nu
    assert _t_factor(np.ones(100), 0.95) == 1.0  # σ known (stderr): no widening


# --------------------------------------------------------------------------- compare


def test_compare_two_families():
    P = np.geomspace(1e2, 1e6, 8)
    fa = fit_law(P, noisy(P, 0.005, 1), family="dlor_deep", n_boot=500, seed=1)
    Lb = noisy(P, 0.005, 2, E=5e-3, A=1.0, alpha=0.4)
    fb = fit_law(P, Lb, family="dense", n_boot=500, seed=2)
    c = compare(fa, fb, target_error=0.006)
    assert c["a"] == "dlor_deep" and c["b"] == "dense"
    assert c["delta_alpha"] == pytest.approx(0.1, abs=0.01)
    lo, hi = c["delta_alpha_ci"]
    assert lo < 0.1 < hi and lo > 0
    assert c["p_a_steeper"] > 0.99
    # true crossover: 1e-3 + 2 P^-.5 = 5e-3 + P^-.4
    grid = np.geomspace(1e2, 1e4, 100000)
    true_x = grid[np.argmin(np.abs(law(grid) - law(grid, E=5e-3, A=1.0, alpha=0.4)))]
    assert c["crossover"] == pytest.approx(true_x, rel=0.1)
    assert c["crossover_ci"][0] < true_x < c["crossover_ci"][1]
    assert c["p_crossover"] > 0.95
    pf = c["params_for"]
    assert pf["dlor_deep"]["P"] == pytest.approx(fa.params_for(0.006))
    assert pf["dlor_deep"]["p_reachable"] == 1.0
    assert pf["dense"]["p_reachable"] < 1.0 or pf["dense"]["P"] > 1e7  # near E_b=5e-3
    unreachable = compare(fa, fb, target_error=4e-3)["params_for"]["dense"]
    assert unreachable["P"] is None and unreachable["p_reachable"] < 0.05
    json.dumps(c, allow_nan=False)


def test_compare_without_crossing_and_same_names():
    fa = fit_law(P8, noisy(P8, 0.005, 3), family="x", n_boot=100)
    fb = fit_law(P8, noisy(P8, 0.005, 4, A=4.0), family="x", n_boot=100)
    c = compare(fa, fb)
    assert c["crossover"] is None and c["crossovers"] == []
    assert c["a"] != c["b"]
    assert abs(c["delta_alpha"]) < 0.02
    assert 0.0 < c["p_a_steeper"] < 1.0


# --------------------------------------------------------------------------- coverage


def test_compare_calibration_fast():
    """Planted laws at the issue's setting (6 budgets over 2 decades, 10% noise), 50
    replicates, through fit.compare with the same user seed for every fit:

    * equal exponents (b vs c, both α = 0.3): the 95% Δα CI excludes 0 in ≤ 10%,
    * Δα = 0.2 (a: α = 0.5 vs b and c): the CI covers 0.2 in 90–98% (not 100%: the old
      σ*-simulating bootstrap covered 100% with 2.5× the needed width),
    * single-family α: coverage within 88–99% with misses on both sides possible.

    Deterministic (seeded), so it cannot flake; benchmarks/fit_compare.py runs the full
    version through every public path with 1000-replicate bootstraps.
    """
    P = np.geomspace(1e2, 1e4, 6)
    R, n_boot = 50, 200
    fp = cov = n_cov = 0
    a_hits, a_n = 0, 0
    for r in range(R):
        rng = np.random.default_rng([r, 11])
        fits = {}
        for fam, (alpha, A) in {"a": (0.5, 2.0), "b": (0.3, 2.0), "c": (0.3, 3.0)}.items():
            L = (1e-3 + A * P**-alpha) * np.exp(0.10 * rng.standard_normal(P.size))
            fits[fam] = fit_law(P, L, family=fam, seed=0, n_boot=n_boot)
            lo, hi = fits[fam].ci()["alpha"]
            a_hits += lo <= alpha <= hi
            a_n += 1
        c = compare(fits["b"], fits["c"])
        lo, hi = c["delta_alpha_ci"] or (np.nan, np.nan)
        fp += bool(lo > 0 or hi < 0)
        for other in ("b", "c"):
            c = compare(fits["a"], fits[other])
            lo, hi = c["delta_alpha_ci"] or (np.nan, np.nan)
            cov += bool(lo <= 0.2 <= hi)
            n_cov += 1
    assert fp / R <= 0.10, fp / R
    assert 0.90 <= cov / n_cov <= 0.98, cov / n_cov
    assert 0.88 <= a_hits / a_n <= 0.99, a_hits / a_n


@pytest.mark.slow
def test_bootstrap_ci_coverage_at_least_90_percent_over_200_replicates():
    """Honest intervals: the 95% CI must cover the planted truth in ≥ 90% of replicates.

    n_boot = 300 here instead of 1000: the tail quantiles of 300 draws carry a Monte Carlo
    error of ~±1 percentile point at the 2.5% tail, small next to the binomial error of a
    200-replicate coverage estimate (±1.5% at 95%), and it keeps this test ~4× cheaper.
    (Measured on this design: α 92.5%, E 95%, A 92.5% at 8 budgets, 1% noise; the
    five-budget test below: α 95%.)
    """
    hits = np.zeros(3)
    R = 200
    for s in range(R):
        L = noisy(P8, 0.01, 10_000 + s)
        f = fit_law(P8, L, n_boot=300, seed=s)
        ci = f.ci()
        hits += [ci["alpha"][0] <= ALPHA0 <= ci["alpha"][1], ci["E"][0] <= E0 <= ci["E"][1],
                 ci["A"][0] <= A0 <= ci["A"][1]]
    cov = hits / R
    assert (cov >= 0.90).all(), cov
    assert (cov <= 0.995).all(), cov  # and not uselessly wide


@pytest.mark.slow
def test_bootstrap_coverage_with_five_budgets():
    """Few budgets (5 → 2 residual dof) is where a plug-in noise scale under-covers."""
    P = np.geomspace(1e2, 1e6, 5)
    R, hits = 200, 0
    for s in range(R):
        f = fit_law(P, noisy(P, 0.02, 20_000 + s), n_boot=300, seed=s)
        lo, hi = f.ci()["alpha"]
        hits += lo <= ALPHA0 <= hi
    assert hits / R >= 0.90, hits / R


def test_lawfit_type():
    f = fit_law(P8, law(P8), n_boot=0)
    assert isinstance(f, LawFit) and f.param_names == ("E", "A", "alpha")
