"""Scaling-law fits L(P) for one architecture family, with bootstrap uncertainty.

Forms (``P`` = parameter count, ``L`` = test error):

* ``saturating`` (default)  ``L = E + A·P^-α``
* ``power``                 ``L = A·P^-α``  (E fixed at 0)
* ``broken``                ``L = E + A·P^-α·(1 + (P/P_b)^(1/f))^(-(α2-α)·f)``, a smoothly
  broken power law (BNSL, Caballero et al. 2023) with one break and fixed smoothness ``f``:
  slope α below ``P_b``, α2 above it.

How a fit is made, and why (Epoch AI's replication of Chinchilla, notes/anchors.md §B):

* **Log-space parameters** ``e = log E``, ``a = log A`` so E, A > 0 without constraints and
  ``log L̂ = logaddexp(e, a - α·x)`` is evaluated stably. ``x = log(P / P_ref)`` with
  ``P_ref`` the geometric mean of the budgets: this decorrelates ``a`` from ``α`` (otherwise
  A spans 10^5 when α moves by 1 over 5 decades) and keeps the problem well conditioned.
* **Huber loss (δ = 1e-3) on log residuals, SUMMED over points.** Log residuals make a 1%
  miss at 0.3 error and at 0.003 error count the same; Huber keeps one bad point (a cell
  whose HPO under-searched) from dragging the exponent. Summed, not averaged: Hoffmann et
  al. averaged, which made the loss ~n× smaller; with δ = 1e-3 the gradients then sit
  under L-BFGS's absolute tolerances and the optimizer stops early at the wrong answer.
  Our refinement is scale-free (Levenberg-Marquardt on IRLS weights) and the final L-BFGS-B
  polish runs with a 1e-12 gradient tolerance, so the summed objective is honoured.
* **Many starts.** A grid over α × E-fraction (a is solved from the data for each pair),
  every start refined in one vectorized batch, best kept, then polished with L-BFGS-B.
  ``grad_norm`` (projected gradient) and ``at_bounds`` are reported: a fit that sits on a
  bound (E → 0, α → 0) is a statement about the data, not a number to publish bare.

Uncertainty: a **parametric bootstrap in log space** (default 1000 replicates, seeded per
family), read as **bias-corrected percentile intervals widened by a t-factor**.
With 4–8 budgets a nonparametric resample of points is degenerate: a resample that draws
the same budget 3 times cannot identify 3 parameters, and a residual bootstrap has only
``n - p`` informative residuals (a Huber fit with δ = 1e-3 is nearly L1, so ~p residuals are
exactly 0). Instead every replicate simulates ``log L* = log L̂ + N(0, s²)`` at the fitted
noise scale and refits with the same estimator (so the Huber fit's own variance is measured).

* Noise scale without stderr: ``s² = Σr²/(n-p)`` from a least-squares refit (see
  ``_ls_scale2`` for why not the Huber residuals). With stderr on *every* point: per-point
  ``(stderr/L)²`` plus the excess scatter ``τ² = max(0, s² − mean (stderr/L)²)``.
* Interval = **BC percentile** of the replicates (Efron's bias correction: the levels move
  by ``z0 = Φ⁻¹(P(θ* < θ̂))``), so a bootstrap that is median-biased like the estimator
  corrects the bias instead of doubling it.
* σ is itself uncertain (``n - p`` is 3 with 6 budgets): each replicate re-estimates it
  (``s*``, the same least-squares statistic), and the BC offsets are widened by the factor
  ``_t_factor`` derives from the ratios s/s* — exactly t_(n-p)/z in a linear model. In
  ``compare`` each replicate difference is studentized Welch-style instead (its docstring).

Why not what was here before (measured on identical planted data, fit_compare.py --before
e19975b; benchmarks/results/fit_compare.md): each replicate drew ``σ*² = s²·(n-p)/χ²_(n-p)``
and *simulated* at σ*. With 3 dof some replicates ran at 3–10× the real noise, where the
saturating form's weakly identified E and α trade off freely, so the percentile tails were
far wider than t-scaling gives: two such tails added in ``compare`` made the Δα CI 1.6× the
needed width (coverage 100%, 6 budgets, 10% noise). And the plain percentile interval put
the E–α skew on the wrong side: α̂ is biased upward (the fit trades E > 0 for a steeper α)
and the replicates are biased upward again around α̂, so CI misses were all on one side
("CI above the truth"). Two things tried and dropped: studentizing each replicate
(``(θ* − θ̂)·s/s*``) compounds a large α deviation with the small s* of a replicate that
used E to absorb noise, and BC levels on such heavy tails are unstable (83% coverage at
E = 1e-2); re-centring by the median deviation instead of BC was safe but ~40% wider
(98% coverage) — calibrated is the goal, not merely safe.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from dlor_scale.errors import FitError

FORMS = ("saturating", "power", "broken")
PARAM_NAMES = {
    "saturating": ("E", "A", "alpha"),
    "power": ("A", "alpha"),
    "broken": ("E", "A", "alpha", "alpha2", "P_break"),
}
BREAK_SMOOTHNESS = 0.5  # f in the broken form, in units of ln P; fixed so 8 points suffice
ALPHA_MAX = 5.0  # an exponent above 5 over a few decades of P is a fitting artefact
DEFAULT_DELTA = 1e-3
DEFAULT_REL_TOL = 0.10  # extrapolation check: a held-out point must be predicted within 10%
MAX_RATIO = 1e3  # cap on s/s* (a replicate with s* ≈ 0 would otherwise be infinite)
MAX_REFINED_STARTS = 256  # grid starts refined by LM (all of them for saturating/power)


_N01 = NormalDist()


def _family_seed(seed: int, family: str) -> int:
    """Bootstrap seed of one family's fit, derived from the user seed and the family name.

    Why: ``compare`` pairs replicate i of one fit with replicate i of the other as a draw
    from their joint distribution; that is only valid if the two bootstraps are independent.
    Two fits made with the same seed share their noise draws (replicate correlation 0.87
    measured), which made the Δα CI far too narrow. Deriving the seed from the family here,
    in ``fit_law`` itself, makes every public path independent by construction (and adding
    or removing a family leaves the others' replicates unchanged).
    """
    ss = np.random.SeedSequence([int(seed) & (2**63 - 1), zlib.crc32(str(family).encode())])
    return int(ss.generate_state(1)[0])


# --------------------------------------------------------------------------- models
# Internal parameter vectors θ (x = log(P / P_ref)):
#   saturating (e, a, α)   power (a, α)   broken (e, a, α, α2, xb)
# Each model returns log L̂ [M, n] and its Jacobian [M, n, k] for a batch of M vectors.


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _model(form: str, theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    th = theta[:, :, None]  # [M, k, 1]; x broadcasts as [n]
    if form == "power":
        a, al = th[:, 0], th[:, 1]
        lp = a - al * x
        J = np.stack([np.ones_like(lp), np.broadcast_to(-x, lp.shape)], axis=-1)
        return lp, J
    e, a, al = th[:, 0], th[:, 1], th[:, 2]
    if form == "saturating":
        u = a - al * x
        du = [np.ones_like(u), np.broadcast_to(-x, u.shape)]
    else:  # broken
        al2, xb = th[:, 3], th[:, 4]
        f = BREAK_SMOOTHNESS
        z = (x - xb) / f
        sp = f * _softplus(z)
        u = a - al * x - (al2 - al) * sp
        du = [np.ones_like(u), -x + sp, -sp, (al2 - al) * _sigmoid(z)]
    lp = np.logaddexp(e, u)
    s = np.exp(u - lp)  # share of the power term in L̂; d lp / d u
    J = np.stack([1.0 - s] + [s * d for d in du], axis=-1)
    return lp, J


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _lm_batch(form, theta0, x, y, w, lo, hi, delta, max_iter=300):
    """Minimize Σ huber(w·(log L̂ − y)) for M independent problems at once.

    Levenberg-Marquardt on the IRLS majorizer of Huber (weights min(1, δ/|r|)), with steps
    clipped into the box. Vectorized over problems because the bootstrap needs thousands of
    small (n ≤ ~20, k ≤ 5) fits and a Python loop of scipy calls is 100× slower.
    Returns (θ [M, k], loss [M], converged [M]).
    """
    theta = np.clip(np.array(theta0, dtype=float), lo, hi)
    M, k = theta.shape
    y = np.broadcast_to(y, (M, y.shape[-1]))
    w = np.broadcast_to(w, y.shape)
    lp, J = _model(form, theta, x)
    r = w * (lp - y)
    loss = _huber(r, delta).sum(-1)
    lam = np.full(M, 1e-3)
    active = np.ones(M, dtype=bool)
    converged = np.zeros(M, dtype=bool)
    eye = np.eye(k)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        Jw = w[idx][:, :, None] * J[idx]
        ri = r[idx]
        psi = np.clip(ri, -delta, delta)
        W = np.where(np.abs(ri) <= delta, 1.0, delta / np.maximum(np.abs(ri), 1e-300))
        JwT = Jw.transpose(0, 2, 1)
        g = np.matmul(JwT, psi[:, :, None])[:, :, 0]
        H = np.matmul(JwT * W[:, None, :], Jw)
        d = np.diagonal(H, axis1=1, axis2=2)
        d = d + 1e-9 * d.max(axis=1, keepdims=True) + 1e-300
        Aug = H + lam[idx, None, None] * d[:, :, None] * eye
        try:
            step = np.linalg.solve(Aug, -g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # only if a matrix is exactly singular; fall back
            step = -g / d / (1.0 + lam[idx, None])
        new = np.clip(theta[idx] + step, lo, hi)
        lp_n, J_n = _model(form, new, x)
        r_n = w[idx] * (lp_n - y[idx])
        loss_n = _huber(r_n, delta).sum(-1)
        better = np.isfinite(loss_n) & (loss_n < loss[idx])
        rel = (loss[idx] - loss_n) / np.maximum(loss[idx], 1e-300)
        b = idx[better]
        theta[b], J[b], r[b], loss[b] = new[better], J_n[better], r_n[better], loss_n[better]
        lam[idx] = np.where(better, np.maximum(lam[idx] / 3.0, 1e-12), lam[idx] * 4.0)
        small_step = np.abs(new - theta[idx]).max(axis=1) < 1e-12
        done_ok = (better & (rel < 1e-13)) | (~better & small_step) | (loss[idx] == 0.0)
        done_stuck = lam[idx] > 1e12  # no descent direction left: a (local) optimum
        converged[idx[done_ok | done_stuck]] = True
        active[idx[done_ok | done_stuck]] = False
    return theta, loss, converged


# --------------------------------------------------------------------------- setup


@dataclass
class _Problem:
    """Cleaned data and the transforms shared by the fit and its bootstrap."""

    form: str
    P: np.ndarray
    L: np.ndarray
    rel_se: np.ndarray  # stderr / L (≈ sd of log L); NaN where unknown
    w: np.ndarray  # residual weights (1 unless weight_by_stderr)
    log_pref: float
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _bounds(form: str, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ymin, ymax = float(y.min()), float(y.max())
    e_b = (ymin - 23.0, ymax + 1.0)  # E from ~1e-10·min L (i.e. 0) to above max L
    a_b = (ymin - 25.0, ymax + 25.0)  # normalized amplitude: very loose
    al_b = (0.0, ALPHA_MAX)
    rows = {
        "saturating": [e_b, a_b, al_b],
        "power": [a_b, al_b],
        "broken": [e_b, a_b, al_b, al_b, (float(x.min()), float(x.max()))],
    }[form]
    lo, hi = np.array(rows, dtype=float).T
    return lo, hi


def _starts(form: str, x: np.ndarray, y: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Grid of initial θ: α × E-fraction (× break params); a solved from the data.

    For fixed (α, E) the best log-amplitude is roughly median(log(L − E) + α·x), so the grid
    needs no a-axis: the start is already on the valley floor along a.
    """
    L = np.exp(y)
    alphas = np.linspace(0.02, 2.5, 32)
    if form == "power":
        a0 = np.median(y[None, :] + alphas[:, None] * x[None, :], axis=1)
        return np.stack([a0, alphas], axis=1)
    fracs = np.array([0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.92, 0.98])
    E = fracs * L.min()
    e0 = np.where(fracs > 0, np.log(np.maximum(E, 1e-300)), lo[0] + 1.0)
    rest = np.log(np.maximum(L[None, :] - E[:, None], 1e-3 * L[None, :]))  # [F, n]
    if form == "saturating":
        a0 = np.median(rest[None, :, :] + alphas[:, None, None] * x[None, None, :], axis=2)
        al, ee = np.meshgrid(alphas, e0, indexing="ij")
        return np.stack([ee.ravel(), a0.ravel(), al.ravel()], axis=1)
    # broken: coarser α grids, breaks at interior quantiles of x
    al1 = np.linspace(0.05, 2.0, 8)
    al2 = np.linspace(0.05, 2.0, 8)
    xbs = np.quantile(x, [0.25, 0.5, 0.75])
    fr_idx = np.array([0, 2, 4, 6])
    A1, A2, XB, FI = np.meshgrid(al1, al2, xbs, fr_idx, indexing="ij")
    A1, A2, XB, FI = A1.ravel(), A2.ravel(), XB.ravel(), FI.ravel()
    f = BREAK_SMOOTHNESS
    sp = f * _softplus((x[None, :] - XB[:, None]) / f)
    a0 = np.median(rest[FI] + A1[:, None] * x[None, :] + (A2 - A1)[:, None] * sp, axis=1)
    return np.stack([e0[FI], a0, A1, A2, XB], axis=1)


def _prepare(P, L, stderr, form, family, weight_by_stderr) -> tuple[_Problem, list[str]]:
    name = f"family {family!r}" if family else "fit"
    if form not in FORMS:
        raise FitError(f"{name}: unknown form {form!r}; expected one of {', '.join(FORMS)}")
    try:
        P = np.asarray(P, dtype=float).ravel()
        L = np.asarray(L, dtype=float).ravel()
        se = (np.full(P.shape, np.nan) if stderr is None
              else np.asarray(stderr, dtype=float).ravel())
    except (TypeError, ValueError) as exc:
        raise FitError(f"{name}: budgets/errors/stderr must be numeric ({exc})") from None
    if P.shape != L.shape or se.shape != P.shape:
        raise FitError(f"{name}: P ({P.size}), L ({L.size}) and stderr ({se.size}) "
                       "must have equal length")
    if P.size == 0:
        raise FitError(f"{name}: no points to fit")
    flags: list[str] = []
    nan_l = ~np.isfinite(L)
    bad_p = ~np.isfinite(P) | (P <= 0)
    nonpos = np.isfinite(L) & (L <= 0)
    if nan_l.all():
        raise FitError(f"{name}: all {L.size} errors are NaN/inf (every run at every "
                       "budget diverged or failed?); nothing to fit")
    for mask, why in ((nan_l, "non-finite error (diverged/failed cell)"),
                      (bad_p & ~nan_l, "non-positive or non-finite parameter count"),
                      (nonpos & ~bad_p, "non-positive error (log undefined)")):
        if mask.any():
            flags.append(f"dropped {int(mask.sum())} point(s): {why} at P="
                         f"{[_num(p) for p in P[mask]]}")
    keep = ~(nan_l | bad_p | nonpos)
    P, L, se = P[keep], L[keep], se[keep]
    k = len(PARAM_NAMES[form])
    n_budgets = np.unique(P).size
    if P.size == 0:
        raise FitError(f"{name}: no usable points left ({'; '.join(flags)})")
    if n_budgets < 2:
        raise FitError(f"{name}: only one budget (P={_num(P[0])}) has a usable error; "
                       "a scaling law needs at least 2 budgets (3 for form "
                       f"{form!r})")
    if n_budgets < k:
        raise FitError(f"{name}: {n_budgets} distinct budgets but form {form!r} has {k} "
                       f"parameters ({', '.join(PARAM_NAMES[form])}); add budgets or use "
                       "form='power'")
    rel_se = np.where(np.isfinite(se) & (se > 0), se / L, np.nan)
    w = np.ones_like(L)
    if weight_by_stderr:
        if np.isfinite(rel_se).all():
            w = np.clip(np.median(rel_se) / rel_se, 0.1, 10.0)  # keeps δ's scale meaningful
        else:
            flags.append("weight_by_stderr ignored: some points have no stderr")
    order = np.argsort(P, kind="stable")
    P, L, rel_se, w = P[order], L[order], rel_se[order], w[order]
    log_pref = float(np.mean(np.log(P)))
    x, y = np.log(P) - log_pref, np.log(L)
    lo, hi = _bounds(form, y, x)
    return _Problem(form, P, L, rel_se, w, log_pref, x, y, lo, hi), flags


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)


# --------------------------------------------------------------------------- result


@dataclass
class LawFit:
    """One fitted scaling law plus its bootstrap. Parameters are in natural units.

    ``boot`` holds one row per bootstrap replicate, columns ``param_names``; ``boot_ratio``
    the replicate's noise-scale ratio s/s* (module docstring). ``flags`` says in words
    everything a reader should know before trusting the numbers; ``alpha_identified`` says
    whether the exponent is bounded by the data at all.
    """

    family: str
    form: str
    E: float
    A: float
    alpha: float
    n_points: int
    loss: float
    converged: bool
    grad_norm: float
    at_bounds: list[str]
    boot: np.ndarray
    flags: list[str]
    alpha2: float | None = None  # broken form only: slope above the break
    P_break: float | None = None  # broken form only
    P_min: float = math.nan
    P_max: float = math.nan
    sigma: float = math.nan  # residual sd of log L, least-squares (noise + lack of fit)
    delta: float = DEFAULT_DELTA
    n_starts: int = 0
    boot_method: str = "none"
    boot_converged: float = math.nan  # fraction of bootstrap refits that converged
    boot_sigma: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    boot_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    boot_seed: int | None = None  # the bootstrap's actual seed (derived from seed + family)
    level: float = 0.95  # the level identification is judged at
    _log_pref: float = field(default=0.0, repr=False)
    _theta: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _theta_boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _lo: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # θ box
    _hi: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def param_names(self) -> tuple[str, ...]:
        return PARAM_NAMES[self.form]

    @property
    def alpha_large(self) -> float:
        """Exponent that governs extrapolation: α2 for the broken form, else α."""
        return self.alpha2 if self.form == "broken" else self.alpha

    def _alpha_large_boot(self) -> np.ndarray:
        return self.boot[:, self.param_names.index("alpha2" if self.form == "broken" else "alpha")]

    def _ratio(self) -> np.ndarray:
        """Per-replicate noise-scale ratio s/s* (ones if none was recorded)."""
        B = self.boot.shape[0]
        r = np.asarray(self.boot_ratio, dtype=float)
        return r if r.shape == (B,) else np.ones(B)

    def t_factor(self, level: float = 0.95) -> float:
        """Widening of the BC offsets for the estimated noise scale (``_t_factor``)."""
        cache = self.__dict__.setdefault("_tf_cache", {})
        if level not in cache:
            cache[level] = _t_factor(self._ratio(), level)
        return cache[level]

    @property
    def alpha_se(self) -> float:
        """Robust bootstrap standard error of the large-P exponent (IQR / 1.349), at the
        fitted noise scale; ``compare`` weighs the two families' t-scalings with it."""
        b = self._alpha_large_boot() if self.boot.shape[0] else np.zeros(0)
        b = b[np.isfinite(b)]
        if b.size < 2:
            return math.nan
        q1, q3 = np.quantile(b, [0.25, 0.75])
        return float((q3 - q1) / 1.349)

    # -- identification -----------------------------------------------------------------
    @property
    def identification(self) -> str:
        """"identified", or why the large-P exponent is not (the reason in words).

        Not identified: no finite fit, the optimizer did not converge, the exponent sits on
        a bound, there is no confidence interval (no bootstrap), or its CI at ``level``
        reaches the fit's bounds [0, ALPHA_MAX] — then the data do not bound α and any Δα or
        extrapolation built on it is an artefact of the bounds.
        """
        name = "alpha2" if self.form == "broken" else "alpha"
        a = self.alpha_large
        if a is None or not np.isfinite(a):
            return "no finite fit"
        if not self.converged:
            return "the optimizer did not converge"
        if name in self.at_bounds:
            return f"{name} = {a:.3g} sits on its bound"
        lo, hi = self.ci(self.level)[name]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return f"{name} has no confidence interval (no bootstrap)"
        if lo <= 1e-9 or hi >= ALPHA_MAX - 1e-6:
            return (f"{name}'s {self.level:.0%} CI [{lo:.3g}, {hi:.3g}] reaches the fit's "
                    f"bounds [0, {ALPHA_MAX:g}]")
        return "identified"

    @property
    def alpha_identified(self) -> bool:
        return self.identification == "identified"

    # -- predictions -------------------------------------------------------------------
    def _logpred(self, theta: np.ndarray, P) -> np.ndarray:
        x = np.log(np.asarray(P, dtype=float)).ravel() - self._log_pref
        return _model(self.form, np.atleast_2d(theta), x)[0]

    def predict(self, P) -> np.ndarray:
        """Predicted error at parameter count(s) P (same shape as P)."""
        shape = np.shape(P)
        if self._theta.size == 0:
            return np.full(shape, np.nan)
        return np.exp(self._logpred(self._theta, P)[0]).reshape(shape)

    def predict_boot(self, P) -> np.ndarray:
        """Bootstrap predictions, shape [n_boot, len(P)]."""
        if self._theta_boot.size == 0:
            return np.zeros((0, np.size(P)))
        return np.exp(self._logpred(self._theta_boot, P))

    def predict_interval(self, P, level: float = 0.95, *, observation: bool = False,
                         stderr=None) -> tuple[np.ndarray, np.ndarray]:
        """BC percentile bootstrap interval for the curve at P (log space), t-widened.

        ``observation=False`` (default): interval for the law itself (the CI band).
        ``observation=True``: interval for a *new measured point* at P, adding the noise
        the bootstrap assumed (plus the point's own stderr if given).
        This is the right interval for checking held-out points, which carry their own noise.
        """
        shape = np.shape(P)
        if self._theta_boot.size == 0 or self._theta.size == 0:
            nan = np.full(shape, np.nan)
            return nan, nan.copy()
        lp = self._logpred(self._theta_boot, P)
        est = self._logpred(self._theta, P)[0]
        dev = lp - est[None, :]
        if observation:
            rng = np.random.default_rng(12345)
            sd = np.broadcast_to(np.asarray(self.boot_sigma, dtype=float)[:, None], lp.shape)
            if stderr is not None:
                rel = np.asarray(stderr, dtype=float).ravel() / np.exp(est)
                rel = np.where(np.isfinite(rel), rel, 0.0)
                sd = np.sqrt(sd**2 + rel[None, :] ** 2)
            dev = dev + sd * rng.standard_normal(lp.shape)  # a new point around replicate i
        lo, hi = _bc_interval_cols(dev, level)
        tf = self.t_factor(level)
        return np.exp(est + tf * lo).reshape(shape), np.exp(est + tf * hi).reshape(shape)

    def ci(self, level: float = 0.95, method: str = "bc-t") -> dict[str, tuple[float, float]]:
        """Bootstrap CIs per parameter (E is exactly (0, 0) for form='power').

        ``method="bc-t"`` (default): bias-corrected percentile offsets widened by the
        t-factor, on log scale for E, A and P_break, clipped to the fit's box (module
        docstring).
        ``method="percentile"``: the plain percentile of the replicates (for comparison).
        """
        names = self.param_names
        out: dict[str, tuple[float, float]] = {}
        q = (1 - level) / 2
        est = {"E": self.E, "A": self.A, "alpha": self.alpha, "alpha2": self.alpha2,
               "P_break": self.P_break}
        for j, nm in enumerate(names):
            col = self.boot[:, j] if self.boot.size else np.zeros(0)
            if method == "percentile":
                c = col[np.isfinite(col)]
                out[nm] = ((float(np.quantile(c, q)), float(np.quantile(c, 1 - q)))
                           if c.size else (math.nan, math.nan))
                continue
            logs = nm in ("E", "A", "P_break")
            e = est[nm]
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = np.log(col) if logs else col
                te = math.log(e) if (logs and e is not None and e > 0) else (
                    math.nan if logs else (math.nan if e is None else float(e)))
            ok = np.isfinite(tc)
            if not ok.any() or not np.isfinite(te):
                out[nm] = (math.nan, math.nan)
                continue
            lo, hi = _bc_interval_cols((tc - te)[ok][:, None], level)
            tf = self.t_factor(level)
            lo, hi = te + tf * float(lo[0]), te + tf * float(hi[0])
            blo, bhi = self._natural_bounds(nm)
            lo, hi = (math.exp(lo), math.exp(hi)) if logs else (lo, hi)
            out[nm] = (float(min(max(lo, blo), bhi)), float(max(min(hi, bhi), blo)))
        if self.form == "power":
            out = {"E": (0.0, 0.0), **out}
        return out

    def _natural_bounds(self, name: str) -> tuple[float, float]:
        """Box of a natural parameter, for clipping CIs (A has none: it moves with α)."""
        if name in ("alpha", "alpha2"):
            return 0.0, ALPHA_MAX
        if name == "E" and self._lo.size:
            return float(np.exp(self._lo[0])), float(np.exp(self._hi[0]))
        if name == "P_break" and self._lo.size:
            return (float(np.exp(self._lo[4] + self._log_pref)),
                    float(np.exp(self._hi[4] + self._log_pref)))
        return 0.0, math.inf

    # -- inversion ---------------------------------------------------------------------
    def params_for(self, error: float) -> float | None:
        """Parameter count at which the fitted law reaches ``error``; None if unreachable.

        Unreachable means ``error <= E`` (the law saturates above it) or no finite fit.
        """
        if not np.isfinite(self.alpha):
            return None
        p = float(_invert(self.form, self._theta[None, :], self._log_pref, float(error))[0])
        return p if np.isfinite(p) else None

    def params_for_boot(self, error: float) -> np.ndarray:
        """Bootstrap distribution of params_for(error); inf where unreachable."""
        if self._theta_boot.size == 0:
            return np.zeros(0)
        return _invert(self.form, self._theta_boot, self._log_pref, float(error))

    # -- export --------------------------------------------------------------------------
    def to_dict(self, level: float = 0.95) -> dict[str, Any]:
        """JSON-safe summary (NaN/inf → None; bootstrap summarised by its CIs)."""
        ab = self._alpha_large_boot() if self.boot.shape[0] else np.zeros(0)
        d = {
            "family": self.family, "form": self.form, "E": self.E, "A": self.A,
            "alpha": self.alpha, "alpha2": self.alpha2, "P_break": self.P_break,
            "n_points": self.n_points, "P_min": self.P_min, "P_max": self.P_max,
            "loss": self.loss, "delta": self.delta, "converged": self.converged,
            "grad_norm": self.grad_norm, "at_bounds": list(self.at_bounds),
            "n_starts": self.n_starts, "sigma": self.sigma,
            "n_boot": int(self.boot.shape[0]), "boot_method": self.boot_method,
            "boot_converged": self.boot_converged, "boot_seed": self.boot_seed,
            "ci_level": level, "ci_method": "bc-t",
            "ci": {k: list(v) for k, v in self.ci(level).items()},
            "alpha_identified": self.alpha_identified, "identification": self.identification,
            # median(α*) − α̂: the bootstrap's estimate of α̂'s median bias (the CI corrects it)
            "alpha_boot_bias": (float(np.median(ab) - self.alpha_large) if ab.size else None),
            "flags": list(self.flags),
        }
        return _jsonable(d)


def _bc_interval_cols(dev: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected percentile interval of deviations ``dev`` [B, m], per column.

    Returns (lo, hi) offsets to add to the estimate. BC (Efron 1981): with
    ``z0 = Φ⁻¹(P(dev < 0))`` the levels are ``Φ(2·z0 ± z_(1-q))`` instead of q, 1−q, so a
    bootstrap that is median-biased like the estimator is not read as extra spread on
    that side. ±inf deviations (replicates that left the box) are allowed; NaN are dropped.
    """
    dev = np.asarray(dev, dtype=float)
    if dev.ndim == 1:
        dev = dev[:, None]
    B, m = dev.shape
    lo, hi = np.full(m, np.nan), np.full(m, np.nan)
    q = (1 - level) / 2
    zq = _N01.inv_cdf(1 - q)
    for c in range(m):
        d = dev[:, c]
        d = d[~np.isnan(d)]
        if d.size == 0:
            continue
        z0 = _N01.inv_cdf(_below(d, 0.0))
        ql, qh = _N01.cdf(2 * z0 - zq), _N01.cdf(2 * z0 + zq)
        how = "inverted_cdf" if np.isinf(d).any() else "linear"
        lo[c], hi[c] = np.quantile(d, [ql, qh], method=how)
    return lo, hi


def _below(d: np.ndarray, x: float) -> float:
    """Share of d below x (ties count half), kept inside (0, 1) for Φ⁻¹."""
    p = (np.count_nonzero(d < x) + 0.5 * np.count_nonzero(d == x)) / d.size
    return min(max(p, 0.5 / d.size), 1 - 0.5 / d.size)


def _t_factor(ratio: np.ndarray, level: float) -> float:
    """How much wider than a known-σ interval the unknown σ makes it: x/z_(1-q) where
    ``mean Φ(x / r_i) = 1 − q`` over the replicates' ratios r_i = s/s*.

    In a linear model r = 1/√(χ²_ν/ν) and this is exactly t_ν(1−q)/z(1−q) (1.62 at ν = 3);
    here the replicates' own noise estimates say what ν effectively is (with stderr-known
    noise the ratios are ≈ 1 and so is the factor). Applied as a scale on the BC offsets, not
    by studentizing each replicate: in the saturating form replicates whose fit uses E to
    absorb noise have both a large α deviation and a small s*, and multiplying the two made
    tails far heavier than t (measured: 17% of CIs missed on one side at E = 1e-2).
    """
    r = np.asarray(ratio, dtype=float)
    r = r[np.isfinite(r) & (r > 0)]
    if r.size == 0 or np.allclose(r, 1.0):
        return 1.0
    from scipy.special import ndtr  # lazy: `import dlor_scale` stays light

    q = (1 - level) / 2
    zq = _N01.inv_cdf(1 - q)
    lo, hi = 0.0, zq * float(r.max())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(ndtr(mid / r).mean()) < 1 - q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi) / zq


def _invert(form: str, theta: np.ndarray, log_pref: float, error: float) -> np.ndarray:
    """P with L̂(P) = error for each θ row; inf where error ≤ E (or not reachable)."""
    M = theta.shape[0]
    if not (np.isfinite(error) and error > 0):
        return np.full(M, np.inf)
    if form in ("power", "saturating"):
        if form == "power":
            a, al, excess = theta[:, 0], theta[:, 1], np.full(M, error)
        else:
            a, al = theta[:, 1], theta[:, 2]
            excess = error - np.exp(theta[:, 0])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = (a - np.log(np.where(excess > 0, excess, np.nan))) / al
            P = np.exp(x + log_pref)
        return np.where((excess > 0) & (al > 0) & np.isfinite(P), P, np.inf)
    # broken: log L̂ is decreasing in x when α, α2 ≥ 0 → bisection, vectorized
    excess = error - np.exp(theta[:, 0])
    lo = np.full(M, -60.0)
    hi = np.full(M, 60.0)
    target = math.log(error)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lp = _model(form, theta, mid[:, None])[0][:, 0]  # row i evaluated at mid[i]
        above = lp > target
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    P = np.exp(0.5 * (lo + hi) + log_pref)
    reach = (excess > 0) & (hi < 59.0)
    return np.where(reach, P, np.inf)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


# --------------------------------------------------------------------------- fitting


def _natural(form: str, theta: np.ndarray, log_pref: float) -> np.ndarray:
    """Internal θ rows → natural parameters (columns PARAM_NAMES[form])."""
    theta = np.atleast_2d(theta)
    if form == "power":
        return np.stack([np.exp(theta[:, 0] + theta[:, 1] * log_pref), theta[:, 1]], axis=1)
    cols = [np.exp(theta[:, 0]), np.exp(theta[:, 1] + theta[:, 2] * log_pref), theta[:, 2]]
    if form == "broken":
        cols += [theta[:, 3], np.exp(theta[:, 4] + log_pref)]
    return np.stack(cols, axis=1)


def _best_of(form, starts, x, y, w, lo, hi, delta, n_problems):
    """Refine [n_problems × S] starts in one batch; keep each problem's best."""
    S = starts.shape[0] // n_problems
    th, loss, conv = _lm_batch(form, starts, x, y, w, lo, hi, delta)
    loss = np.where(np.isfinite(loss), loss, np.inf).reshape(n_problems, S)
    j = np.argmin(loss, axis=1)
    rows = np.arange(n_problems) * S + j
    return th[rows], loss[np.arange(n_problems), j], conv[rows]


def _grad_batch(form, theta, x, y, w, lo, hi, delta):
    """Projected-gradient norm of the summed Huber loss for each θ row (y rows match)."""
    lp, J = _model(form, theta, x)
    psi = np.clip(w * (lp - y), -delta, delta)
    g = np.matmul((w[..., None] * J).transpose(0, 2, 1), psi[:, :, None])[:, :, 0]
    gp, _, _ = _projected_grad(g, theta, lo, hi)
    return np.linalg.norm(gp, axis=1)


def _gtol(delta: float, n: int, rel: float = 1e-4) -> float:
    """Converged-gradient threshold. Away from an optimum the summed Huber gradient is
    O(δ·n) (each residual pulls with up to δ·|J|), so 1e-4 of that is zero for the point
    estimate. Bootstrap replicates use rel = 1e-2: a pull of 1% of one point's weight moves
    θ by far less than the CI width, and chasing more costs the LM loop hundreds of
    iterations on the few near-L1 replicates that converge slowly."""
    return rel * delta * max(n, 1)


def _loss_grad(form, theta, x, y, w, delta):
    lp, J = _model(form, theta[None, :], x)
    r = w * (lp[0] - y)
    g = (w[:, None] * J[0]).T @ np.clip(r, -delta, delta)
    return float(_huber(r, delta).sum()), g


def _projected_grad(g, theta, lo, hi, tol=1e-9):
    span = np.maximum(hi - lo, 1.0)
    at_lo = theta <= lo + tol * span
    at_hi = theta >= hi - tol * span
    gp = np.where((at_lo & (g > 0)) | (at_hi & (g < 0)), 0.0, g)
    return gp, at_lo, at_hi


def fit_law(P, L, *, family: str = "", form: str = "saturating", stderr=None,
            delta: float = DEFAULT_DELTA, n_boot: int = 1000, seed: int = 0,
            weight_by_stderr: bool = False, level: float = 0.95) -> LawFit:
    """Fit one family's scaling law and bootstrap it.

    The bootstrap's seed is ``_family_seed(seed, family)``: fits of different families made
    with the same ``seed`` have independent bootstraps, so ``compare`` may pair them.

    Raises FitError (message names the family) when no law can be identified: no usable
    points, one budget, fewer distinct budgets than parameters, unknown form. Softer
    problems (dropped NaN points, E on its bound, zero residual dof, non-convergence) come
    back as ``flags`` on the result.
    """
    prob, flags = _prepare(P, L, stderr, form, family, weight_by_stderr)
    x, y, w, lo, hi = prob.x, prob.y, prob.w, prob.lo, prob.hi
    names = PARAM_NAMES[form]
    k, n = len(names), y.size

    # 1. many starts, refined together; 2. L-BFGS-B polish of the winner.
    starts = _starts(form, x, y, lo)
    if starts.shape[0] > MAX_REFINED_STARTS:  # broken form: refine the best quarter or so
        init = _huber(w * (_model(form, starts, x)[0] - y), delta).sum(-1)
        starts = starts[np.argsort(init, kind="stable")[:MAX_REFINED_STARTS]]
    th, loss, conv = _best_of(form, starts, x, y, w, lo, hi, delta, 1)
    theta = th[0]
    from scipy import optimize  # imported here: `import dlor_scale` stays light for Ray workers

    res = optimize.minimize(lambda t: _loss_grad(form, t, x, y, w, delta), theta, jac=True,
                            method="L-BFGS-B", bounds=list(zip(lo, hi)),
                            options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 2000})
    if res.fun < loss[0]:
        theta = np.clip(res.x, lo, hi)
    fval, g = _loss_grad(form, theta, x, y, w, delta)
    gp, at_lo, at_hi = _projected_grad(g, theta, lo, hi)
    grad_norm = float(np.linalg.norm(gp))
    converged = grad_norm <= _gtol(delta, n)
    at_bounds = [names[i] for i in range(k) if at_lo[i] or at_hi[i]]
    if not converged:
        flags.append(f"optimizer did not converge (projected grad norm {grad_norm:.2e})")
    for i in range(k):
        if not (at_lo[i] or at_hi[i]):
            continue
        if names[i] == "E" and at_lo[i]:
            flags.append("E at its lower bound (≈0): data are consistent with a pure power "
                         "law over this range")
        elif names[i] in ("alpha", "alpha2"):
            flags.append(f"{names[i]} at its {'lower' if at_lo[i] else 'upper'} bound "
                         f"({theta[i]:g}): exponent not identified by these points")
        else:
            flags.append(f"{names[i]} at its {'lower' if at_lo[i] else 'upper'} bound")

    lp_hat = _model(form, theta[None, :], x)[0][0]
    dof = n - k
    s2 = _ls_scale2(prob, theta, dof) if dof > 0 else math.nan
    boot_seed = _family_seed(seed, family)
    boot_theta, boot_sigma, boot_ratio, method, boot_conv = _bootstrap(
        prob, theta, lp_hat, s2, dof, delta, n_boot, boot_seed, starts, flags)

    nat = _natural(form, theta, prob.log_pref)[0]
    vals = dict(zip(names, nat))
    fit = LawFit(
        family=family, form=form, E=float(vals.get("E", 0.0)), A=float(vals["A"]),
        alpha=float(vals["alpha"]), n_points=n, loss=float(fval), converged=bool(converged),
        grad_norm=grad_norm, at_bounds=at_bounds,
        boot=_natural(form, boot_theta, prob.log_pref) if boot_theta.size else np.zeros((0, k)),
        flags=flags, P_min=float(prob.P.min()), P_max=float(prob.P.max()),
        sigma=math.sqrt(s2) if dof > 0 else math.nan,
        delta=delta, n_starts=int(starts.shape[0]), boot_method=method,
        boot_converged=boot_conv, boot_sigma=boot_sigma, boot_ratio=boot_ratio,
        boot_seed=boot_seed if boot_theta.size else None, level=level,
        _log_pref=prob.log_pref, _theta=theta, _theta_boot=boot_theta, _lo=lo, _hi=hi,
    )
    if form == "broken":
        fit.alpha2, fit.P_break = float(vals["alpha2"]), float(vals["P_break"])
    if fit.boot.shape[0]:
        for nm, (a, b) in fit.ci(level).items():
            if nm in ("alpha", "alpha2") and nm not in at_bounds and (
                    a <= 1e-9 or b >= ALPHA_MAX - 1e-6):
                flags.append(f"exponent not identified: {nm}'s {level:.0%} CI [{a:.3g}, "
                             f"{b:.3g}] reaches the fit's bounds [0, {ALPHA_MAX:g}] (too few or "
                             "too noisy points to bound it)")
    if not fit.alpha_identified and not any("not identified" in f for f in flags):
        flags.append(f"exponent not identified: {fit.identification}")
    return fit


def _ls_scale2(prob: _Problem, theta: np.ndarray, dof: int) -> float:
    """Residual variance of log L after a least-squares refit started at the Huber optimum.

    Why not the Huber fit's own residuals: with δ = 1e-3 the fit is nearly L1, which zeroes
    ~p residuals and inflates the rest, so Σr²/(n-p) overstates σ² (measured: 98.5% coverage
    for a nominal 95% CI at 8 budgets). The least-squares residual variance is the unbiased,
    efficient choice under the Gaussian noise the bootstrap simulates; an outlier inflates it,
    which widens the CI (the safe direction).
    """
    return float(_ls_scale2_batch(prob, theta[None, :], prob.y[None, :], dof)[0])


def _ls_scale2_batch(prob: _Problem, theta: np.ndarray, y: np.ndarray, dof: int) -> np.ndarray:
    """``_ls_scale2`` for many (θ start, data row) pairs at once: the bootstrap's s*²."""
    th, _, _ = _lm_batch(prob.form, theta, prob.x, y, prob.w, prob.lo, prob.hi, math.inf)
    r = y - _model(prob.form, th, prob.x)[0]
    return (r**2).sum(-1) / dof


def _bootstrap(prob, theta, lp_hat, s2, dof, delta, n_boot, seed, starts, flags):
    """Parametric bootstrap in log space; see the module docstring for why.

    Returns (θ* [B, k], noise sd each replicate simulated [B], noise-scale ratio s/s* [B],
    method, converged fraction).
    """
    k, n = theta.size, lp_hat.size
    empty = (np.zeros((0, k)), np.zeros(0), np.zeros(0), "none", math.nan)
    if n_boot <= 0:
        return empty
    rng = np.random.default_rng(seed)
    has_se = np.isfinite(prob.rel_se).all()
    v = prob.rel_se**2 if has_se else np.zeros(n)
    if dof > 0:
        if has_se:
            tau2 = max(0.0, s2 - float(v.mean()))  # scatter the stderrs do not explain
            method = "parametric(stderr+residual)"
        else:
            tau2 = s2
            method = "parametric(residual)"
    elif has_se:
        tau2 = 0.0
        method = "parametric(stderr)"
        flags.append("no residual degrees of freedom: CIs rely on the points' stderr alone")
    else:
        flags.append(f"no residual degrees of freedom ({n} points, {k} parameters) and no "
                     "stderr: no bootstrap, CIs unavailable")
        return empty
    sd = np.sqrt(v + tau2)  # [n]: simulated at the fitted noise scale (no σ* draw, see top)
    y_star = lp_hat[None, :] + sd[None, :] * rng.standard_normal((n_boot, n))
    form = prob.form
    # starts per replicate: the point estimate (the truth of the bootstrap world, so the
    # usual basin) + the best grid start on that replicate (guards against a second basin)
    lp_grid, _ = _model(form, starts, prob.x)  # [G, n]
    gl = np.stack([_huber(prob.w * (lp_grid - yb), delta).sum(-1) for yb in y_star])
    top = np.argmin(gl, axis=1)[:, None]
    S = 1 + top.shape[1]
    st = np.concatenate([np.broadcast_to(theta, (n_boot, 1, k)), starts[top]], axis=1)
    y_rep = np.repeat(y_star, S, axis=0)
    th_b, _, conv = _best_of(form, st.reshape(-1, k), prob.x, y_rep, prob.w, prob.lo,
                             prob.hi, delta, n_boot)
    gn = _grad_batch(form, th_b, prob.x, y_star, prob.w, prob.lo, prob.hi, delta)
    boot_conv = float(np.mean(conv | (gn <= _gtol(delta, n, 1e-2))))
    if boot_conv < 0.99:
        flags.append(f"only {boot_conv:.1%} of bootstrap refits converged")
    ratio = np.ones(n_boot)
    if dof > 0:
        # each replicate's own noise estimate: the same statistic as s²; with stderr the
        # noise is known to be at least mean (stderr/L)², so that floors both
        floor = float(v.mean()) if has_se else 0.0
        s2_b = np.maximum(_ls_scale2_batch(prob, th_b, y_star, dof), floor)
        s2_0 = max(s2, floor)
        if s2_0 > 0:
            with np.errstate(divide="ignore"):
                ratio = np.minimum(np.sqrt(s2_0 / s2_b), MAX_RATIO)
    return th_b, np.full(n_boot, math.sqrt(tau2)), ratio, method, boot_conv


# --------------------------------------------------------------------------- checks


def extrapolation_check(P, L, *, holdout: int | None = None, level: float = 0.95,
                        rel_tol: float | None = DEFAULT_REL_TOL, **fit_kw) -> dict[str, Any]:
    """Refit without the largest budget(s) and score the prediction there.

    ``holdout`` = number of largest distinct budgets held out (default: the largest 1/4,
    at least 1). ``ok`` (and ``verdict``):

    * True ("ok") only if **every** held-out point's relative error ``|pred − L|/L`` is
      ≤ ``rel_tol`` (default 10%; None means the default) **and** the point lies inside the
      reduced fit's *observation* interval (curve uncertainty plus point noise). The
      tolerance is what makes it a check: an interval alone passes anything once the band
      is wide (a 91% miss passed the interval-only check when α was unidentified).
    * False ("FAILED"): some held-out point misses the tolerance or the interval.
    * None ("n/a", reason in ``reason``): the check could not be run, or the reduced fit's
      exponent is not identified (its CI reaches the bounds), so agreement would be luck.
    """
    rel_tol = DEFAULT_REL_TOL if rel_tol is None else float(rel_tol)
    stderr = fit_kw.pop("stderr", None)
    P = np.asarray(P, dtype=float).ravel()
    L = np.asarray(L, dtype=float).ravel()
    se = np.full(P.shape, np.nan) if stderr is None else np.asarray(stderr, float).ravel()
    out: dict[str, Any] = {"ok": None, "verdict": "n/a", "held_out": [], "max_rel_err": None,
                           "level": level, "rel_tol": rel_tol, "n_fit": 0, "holdout": 0,
                           "reason": None}
    if se.shape != P.shape or L.shape != P.shape:
        out["reason"] = "P, L and stderr lengths differ"
        return out
    good = np.isfinite(P) & (P > 0) & np.isfinite(L) & (L > 0)
    budgets = np.unique(P[good])
    k = len(PARAM_NAMES.get(fit_kw.get("form", "saturating"), ()))
    if holdout is None:
        holdout = max(1, budgets.size // 4)
    holdout = int(holdout)
    if holdout < 1 or budgets.size - holdout < max(k, 2):
        out["reason"] = (f"too few budgets ({budgets.size}) to hold out {holdout} and still "
                         f"fit {k} parameters")
        return out
    cut = budgets[-holdout]
    fit_mask, held = good & (P < cut), good & (P >= cut)
    try:
        fit = fit_law(P[fit_mask], L[fit_mask], stderr=se[fit_mask], level=level, **fit_kw)
    except FitError as exc:
        out["reason"] = f"reduced fit failed: {exc}"
        return out
    Ph, Lh, seh = P[held], L[held], se[held]
    pred = fit.predict(Ph)
    lo, hi = fit.predict_interval(Ph, level, observation=True,
                                  stderr=np.where(np.isfinite(seh), seh, 0.0))
    rel = np.abs(pred - Lh) / Lh
    has_pi = bool(np.isfinite(lo).all())
    inside = (lo <= Lh) & (Lh <= hi)
    out.update(n_fit=int(fit_mask.sum()), holdout=holdout, P_fit_max=float(P[fit_mask].max()),
               extrapolation_factor=float(Ph.max() / P[fit_mask].max()),
               max_rel_err=float(rel.max()), fit_flags=list(fit.flags),
               fit_alpha_identified=fit.alpha_identified)
    out["held_out"] = [
        {"P": float(p), "L": float(l_), "pred": float(pr), "rel_err": float(r),
         "within_tol": bool(r <= rel_tol), "lo": float(a), "hi": float(b),
         "inside": bool(i) if has_pi else None}
        for p, l_, pr, r, a, b, i in zip(Ph, Lh, pred, rel, lo, hi, inside)]
    if not fit.alpha_identified:
        out["reason"] = f"α not identified by the reduced fit ({fit.identification})"
        return _jsonable(out)
    ok = bool(inside.all()) and bool(rel.max() <= rel_tol)
    out["ok"], out["verdict"] = ok, ("ok" if ok else "FAILED")
    return _jsonable(out)


def compare(fa: LawFit, fb: LawFit, *, target_error: float | None = None,
            level: float = 0.95, window: float = 4.0) -> dict[str, Any]:
    """Compare two families' fits.

    * ``identified``: both large-P exponents are identified (``LawFit.alpha_identified``).
      If not, ``verdict`` is "not identified", ``why`` says which and why, and no Δα CI or
      P(steeper) is given: a CI built from exponents pinned by the fit's bounds is the bound
      box, not evidence.
    * ``delta_alpha`` = α_a − α_b (large-P exponent) and its CI: replicate i of a is
      paired with replicate i of b (independent bootstraps: each fit's seed derives from
      its family, see ``_family_seed``; fits that still share a seed are paired with an
      offset and ``notes`` says so); each difference is studentized Welch-style,
      ``(Δ* − Δ̂)·se/se*`` with se² = se_a² + se_b² and se*² the same at the two
      replicates' own noise estimates, and the BC percentile of those is the CI
      (``delta_alpha_t_factor`` records the t-widening this amounts to). Why not a scalar
      t-factor as in ``LawFit.ci``: measured, that over-covered Δα (98%+); why not
      per-replicate studentizing for a single α: see the module docstring.
      ``p_a_steeper`` is the confidence that α_a > α_b on that same scale (the CI excludes
      0 iff it is outside [q, 1 − q]). ``verdict``: "<a> steeper", "<b> steeper" or
      "no significant difference" at ``level``.
    * ``crossover``: the budget where the curves cross, searched within the union of the two
      fitted ranges widened by ``window``× on each side; the crossing at the largest P (it
      decides which family wins at scale). ``crossover_ci`` is the percentile interval over
      replicates that cross in the window, ``p_crossover`` the share of those replicates.
    * ``params_for``: per family, P needed to reach ``target_error`` with (percentile) CI
      and ``p_reachable`` (share of replicates with E < target).
    """
    na, nb = fa.family or "a", fb.family or "b"
    if na == nb:
        na, nb = na + "[a]", nb + "[b]"
    q = (1 - level) / 2
    ident = fa.alpha_identified and fb.alpha_identified
    why = [f"{n}: {f.identification}" for n, f in ((na, fa), (nb, fb)) if not f.alpha_identified]
    out: dict[str, Any] = {"a": na, "b": nb, "level": level,
                           "delta_alpha": fa.alpha_large - fb.alpha_large,
                           "identified": ident, "verdict": "not identified" if not ident else None,
                           "why": "; ".join(why) or None,
                           "delta_alpha_ci": None, "p_a_steeper": None,
                           "crossover": None, "crossover_ci": None, "p_crossover": None,
                           "crossovers": [], "params_for": {}, "notes": []}
    m = min(fa.boot.shape[0], fb.boot.shape[0])
    ib = np.arange(m)
    if m and fa.boot_seed is not None and fa.boot_seed == fb.boot_seed:
        ib = (ib + m // 2) % m  # same noise draws at equal i: pair i with i + m/2 instead
        out["notes"].append("the two fits share a bootstrap seed; replicates were paired with "
                            "an offset so the pairs are independent")
    if m and ident:
        da = fa._alpha_large_boot()[:m] - fa.alpha_large
        db = fb._alpha_large_boot()[ib] - fb.alpha_large
        va, vb = fa.alpha_se**2, fb.alpha_se**2
        ka, kb = fa._ratio()[:m], fb._ratio()[ib]
        se = math.sqrt(va + vb) if np.isfinite(va + vb) else math.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            se_b = np.sqrt(va / ka**2 + vb / kb**2)
            scale = np.where((se_b > 0) & np.isfinite(se_b) & (se > 0), se / se_b, 1.0)
        # Welch-studentized differences: each family's replicate noise estimate, weighted by
        # its se, rescales replicate i (a t-like mixture with Welch's effective dof)
        dev = (da - db) * scale
        lo, hi = _bc_interval_cols(dev, level)
        d0 = out["delta_alpha"]
        out["delta_alpha_ci"] = (float(d0 + lo[0]), float(d0 + hi[0]))
        # P(α_a > α_b) on the same BC scale as the CI: the CI excludes 0 iff this is outside
        # [q, 1 − q]
        z0 = _N01.inv_cdf(_below(dev, 0.0))
        g0 = _below(d0 + dev, 0.0)
        out["p_a_steeper"] = float(1.0 - _N01.cdf(_N01.inv_cdf(g0) - 2 * z0))
        out["delta_alpha_t_factor"] = float(_t_factor(scale, level))  # for the record
        out["verdict"] = (f"{na} steeper" if d0 + lo[0] > 0 else
                          f"{nb} steeper" if d0 + hi[0] < 0 else "no significant difference")
    lo_p = min(fa.P_min, fb.P_min) / window
    hi_p = max(fa.P_max, fb.P_max) * window
    if np.isfinite(lo_p) and np.isfinite(hi_p) and hi_p > lo_p > 0:
        grid = np.geomspace(lo_p, hi_p, 400)
        diff = np.log(fa.predict(grid)) - np.log(fb.predict(grid))
        xs = _crossings(np.log(grid), diff[None, :])[0]
        out["crossovers"] = [float(np.exp(v)) for v in xs]
        if xs:
            out["crossover"] = float(np.exp(xs[-1]))
        if m:
            db_ = np.log(fa.predict_boot(grid)[:m]) - np.log(fb.predict_boot(grid)[ib])
            per = _crossings(np.log(grid), db_)
            ref = xs[-1] if xs else None
            pick = [(min(c, key=lambda v: abs(v - ref)) if ref is not None else c[-1])
                    for c in per if c]
            out["p_crossover"] = len(pick) / m
            if pick:
                qs = np.quantile(pick, [q, 1 - q])
                out["crossover_ci"] = tuple(float(np.exp(v)) for v in qs)
    if target_error is not None:
        for name, f in ((na, fa), (nb, fb)):
            pb = f.params_for_boot(target_error)
            entry = {"target_error": float(target_error), "P": f.params_for(target_error),
                     "ci": None, "p_reachable": None}
            if pb.size:
                entry["p_reachable"] = float(np.isfinite(pb).mean())
                entry["ci"] = tuple(float(v) for v in
                                    np.quantile(pb, [q, 1 - q], method="inverted_cdf"))
            out["params_for"][name] = entry
    return _jsonable(out)


def _crossings(logx: np.ndarray, diff: np.ndarray) -> list[list[float]]:
    """Sign changes of each row of diff over logx, linearly interpolated (log P)."""
    out = []
    for row in diff:
        ok = np.isfinite(row)
        s = np.sign(row)
        idx = np.flatnonzero(ok[:-1] & ok[1:] & (s[:-1] * s[1:] < 0))
        xs = [float(logx[i] - row[i] * (logx[i + 1] - logx[i]) / (row[i + 1] - row[i]))
              for i in idx]
        out.append(xs)
    return out
