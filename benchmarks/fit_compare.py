"""Calibration of scaling-law fits on planted laws: Δα through every public path, single α.

Part ``calibration`` (the acceptance numbers of issue 11, item 3). Two families per
replicate, L = E + A·P^-α with multiplicative log-normal noise, 6 budgets, 10% noise:

* **equal exponents** (α_a = α_b = 0.4, A differs): the share of replicates whose 95% Δα CI
  excludes 0 (false-positive rate; goal ≤ 10%),
* **Δα = 0.2** (α_a = 0.5, α_b = 0.3): the share whose 95% CI covers 0.2 (goal 90–98%), the
  share that excludes 0 (power), the sd of Δα̂ across replicates and the median CI width,

through each public path a user or the report can take:

* ``fit.compare, same seed``: ``compare(fit_law(.., family="a", seed=0), fit_law(..,
  family="b", seed=0))`` — the report's fallback (each fit's bootstrap seed derives from
  its family, so this path is independent by construction),
* ``fit.compare, same family+seed``: both fits with ``family=""`` and ``seed=0`` — their
  bootstraps share noise draws; ``compare`` must notice and de-pair them,
* ``Curves.compare``: ``Curves.from_points(points).compare("a", "b")`` (the CLI, MLflow
  fit run and the report's main path).

Single-family α: coverage of the 95% CI, misses below/above, bias of α̂ (mean and median),
RMSE and median CI width, over the fits of the first path (all four planted exponents).
Replicates whose fit is "not identified" count as CI misses only if the CI misses; the
share of unidentified fits is reported.

Part ``single``: fit_law vs a naive scipy curve_fit (log-space least squares, covariance
CI) on one planted law (E=1e-3, A=2, α=0.5, budgets 1e2..1e6) in four noise scenarios.

Run:  python benchmarks/fit_compare.py [--part calibration|single|all] [--reps 60]
      [--n-boot 1000] [--scenarios S1,S2,S3] [--paths 1,2,3] [--before COMMIT] [--out PATH]
(single-family rows come from path 1; each part/path is < 5 min on 2 shared cores)
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from dlor_scale.scaling import POINT_SCHEMA, Curves
from dlor_scale.errors import FitError
from dlor_scale.fit import compare, fit_law

# --------------------------------------------------------------------------- calibration


@dataclass
class Planted:
    name: str
    P: np.ndarray
    E: float
    A: float
    sigma: float = 0.10


PLANTED = {
    "S1": Planted("S1: 6 budgets 1e2–1e4, E=1e-3, 10% noise", np.geomspace(1e2, 1e4, 6), 1e-3, 2.0),
    "S2": Planted("S2: 6 budgets 1e2–1e5, E=1e-3, 10% noise", np.geomspace(1e2, 1e5, 6), 1e-3, 2.0),
    "S3": Planted("S3: 6 budgets 1e2–1e4, E=1e-2, 10% noise", np.geomspace(1e2, 1e4, 6), 1e-2, 2.0),
}
CASES = {"equal": (0.4, 0.4), "delta0.2": (0.5, 0.3)}
PATHS = ("fit.compare, same seed", "fit.compare, same family+seed", "Curves.compare")


def planted_pair(sc: Planted, alphas, rep: int) -> list[np.ndarray]:
    """Two families' error vectors; family b has 1.5× the amplitude (curves do not overlap)."""
    rng = np.random.default_rng([rep, int(alphas[0] * 100), int(alphas[1] * 100)])
    out = []
    for j, al in enumerate(alphas):
        A = sc.A * (1.5 if j else 1.0)
        law = sc.E + A * sc.P ** -al
        out.append(law * np.exp(sc.sigma * rng.standard_normal(sc.P.size)))
    return out


def _points(P, La, Lb) -> pa.Table:
    rows = [{"family": fam, "budget": int(round(p)), "n_params": int(round(p)), "error": float(e),
             "stderr": math.nan, "n_seeds": 1, "best_trial": 0, "source": "search", "flags": ""}
            for fam, L in (("a", La), ("b", Lb)) for p, e in zip(P, L)]
    return pa.Table.from_pylist(rows, schema=POINT_SCHEMA)


def run_path(path: str, sc: Planted, La, Lb, n_boot: int, seed: int = 0):
    """(compare dict, fit_a, fit_b) through one public path."""
    if path == "Curves.compare":
        P = np.round(sc.P)
        c = Curves.from_points(_points(P, La, Lb), n_boot=n_boot, seed=seed)
        return c.compare("a", "b"), c["a"].fit, c["b"].fit
    fam = ("a", "b") if path == "fit.compare, same seed" else ("", "")
    fa = fit_law(sc.P, La, family=fam[0], seed=seed, n_boot=n_boot)
    fb = fit_law(sc.P, Lb, family=fam[1], seed=seed, n_boot=n_boot)
    return compare(fa, fb), fa, fb


def load_fit_module(commit: str):
    """``dlor_scale/fit.py`` as it was at ``commit`` (git show), as a module: the "before"
    rows run the old estimator on exactly the same planted data."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{commit}:dlor_scale/fit.py"], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    mod = types.ModuleType(f"fit_{commit}")
    mod.__file__ = f"{commit}:dlor_scale/fit.py"
    import sys

    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def run_path_before(old, path: str, sc: Planted, La, Lb, n_boot: int, seed: int = 0):
    """The old module through the old equivalents of the paths: fit.compare on two
    fit_law(seed=0) calls (shared seed), and the Curves path (per-family seeds)."""
    from dlor_scale.fit import _family_seed

    if path == "Curves.compare":
        seeds = (_family_seed(seed, "a"), _family_seed(seed, "b"))  # what `scaling.Curves` does
    else:
        seeds = (seed, seed)
    fa = old.fit_law(sc.P, La, family="a", seed=seeds[0], n_boot=n_boot)
    fb = old.fit_law(sc.P, Lb, family="b", seed=seeds[1], n_boot=n_boot)
    c = old.compare(fa, fb)
    c.setdefault("identified", True)
    return c, fa, fb


def calibration(reps: int, n_boot: int, scenarios: list[str],
                paths=PATHS, before=None, seed: int = 0) -> tuple[list[dict], list[dict]]:
    cmp_rows, alpha_rows = [], []
    for key in scenarios:
        sc = PLANTED[key]
        for case, alphas in CASES.items():
            truth = alphas[0] - alphas[1]
            for path in paths:
                t0 = time.perf_counter()
                est, lo, hi, ident, al = [], [], [], [], []
                for r in range(reps):
                    La, Lb = planted_pair(sc, alphas, r)
                    c, fa, fb = (run_path(path, sc, La, Lb, n_boot, seed) if before is None
                                 else run_path_before(before, path, sc, La, Lb, n_boot, seed))
                    est.append(c["delta_alpha"])
                    ident.append(bool(c["identified"]))
                    ci = c["delta_alpha_ci"] or (math.nan, math.nan)
                    lo.append(ci[0])
                    hi.append(ci[1])
                    if path == paths[0]:
                        for f, a0 in ((fa, alphas[0]), (fb, alphas[1])):
                            a_lo, a_hi = f.ci()["alpha"]
                            bias_b = float(np.median(f.boot[:, 2]) - f.alpha)
                            idf = getattr(f, "alpha_identified", a_lo > 1e-9 and a_hi < 5 - 1e-6)
                            al.append((f.alpha, a_lo, a_hi, bias_b, a0, idf))
                est, lo, hi = map(np.asarray, (est, lo, hi))
                has = np.isfinite(lo)
                excl0 = has & ((lo > 0) | (hi < 0))
                cover = has & (lo <= truth) & (truth <= hi)
                cmp_rows.append({
                    "scenario": key, "case": case, "reps": reps, "seed": seed,
                    "path": path if before is None else f"{path} [before: {before.__file__}]",
                    "identified": float(np.mean(ident)),
                    "excl0": float(excl0.mean()), "cover": float(cover.mean()),
                    "n_ci": int(has.sum()),
                    "cover_given": float(cover[has].mean()) if has.any() else math.nan,
                    "sd": float(np.std(est)), "bias": float(np.mean(est) - truth),
                    "width": float(np.median(hi[has] - lo[has])) if has.any() else math.nan,
                    "sec": (time.perf_counter() - t0) / reps,
                })
                print(_fmt_cmp(cmp_rows[-1]), flush=True)
                for a0 in sorted({row[4] for row in al}):
                    x = np.array([row[:4] for row in al if row[4] == a0], dtype=float)
                    idf = np.array([row[5] for row in al if row[4] == a0])
                    alpha_rows.append({
                        "scenario": key, "alpha": a0, "n": len(x),
                        "cover": float(np.mean((x[:, 1] <= a0) & (a0 <= x[:, 2]))),
                        "below": float(np.mean(x[:, 2] < a0)), "above": float(np.mean(x[:, 1] > a0)),
                        "bias": float(np.mean(x[:, 0]) - a0), "med_bias": float(np.median(x[:, 0]) - a0),
                        "boot_bias": float(np.median(x[:, 3])),
                        "rmse": float(np.sqrt(np.mean((x[:, 0] - a0) ** 2))),
                        "width": float(np.median(x[:, 2] - x[:, 1])),
                        "identified": float(np.mean(idf)),
                    })
    return cmp_rows, alpha_rows


CMP_HEADER = ("| scenario | planted | path | seed | reps | CI given (both α identified) "
              "| 95% CI excludes 0 | CI covers Δα (of CIs given) | CI covers Δα (no CI = miss) "
              "| sd Δα̂ | median CI width | s/pair |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ALPHA_HEADER = ("| scenario | α | fits | 95% CI coverage | CI below α | CI above α | bias (mean) "
                "| bias (median) | bootstrap's median bias | RMSE | median CI width | identified |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def _fmt_cmp(r: dict) -> str:
    planted = "α 0.4 = 0.4" if r["case"] == "equal" else "Δα = 0.2"
    return (f"| {r['scenario']} | {planted} | {r['path']} | {r['seed']} | {r['reps']} | "
            f"{r['n_ci']} | {r['excl0']:.1%} | {r['cover_given']:.1%} | {r['cover']:.1%} | "
            f"{r['sd']:.3f} | {r['width']:.3f} | "
            f"{r['sec']:.2f} |")


def _fmt_alpha(r: dict) -> str:
    return (f"| {r['scenario']} | {r['alpha']} | {r['n']} | {r['cover']:.1%} | {r['below']:.1%} | "
            f"{r['above']:.1%} | {r['bias']:+.3f} | {r['med_bias']:+.3f} | {r['boot_bias']:+.3f} | "
            f"{r['rmse']:.3f} | "
            f"{r['width']:.3f} | {r['identified']:.0%} |")


def goals(cmp_rows: list[dict]) -> list[str]:
    """Met/missed against issue 11's targets, per scenario and path."""
    out = []
    for r in cmp_rows:
        if r["case"] == "equal":
            ok = r["excl0"] <= 0.10
            out.append(f"- {r['scenario']} {r['path']} (seed {r['seed']}): false-positive rate "
                       f"{r['excl0']:.1%} "
                       f"(goal ≤ 10%): {'met' if ok else 'MISSED'}")
        else:
            ok = 0.90 <= r["cover_given"] <= 0.98
            out.append(f"- {r['scenario']} {r['path']} (seed {r['seed']}): Δα = 0.2 coverage "
                       f"{r['cover_given']:.1%} of {r['n_ci']} CIs given ({r['cover']:.1%} "
                       f"counting 'not identified' as a miss) (goal 90–98%): "
                       f"{'met' if ok else 'MISSED'}")
    return out


# --------------------------------------------------------------------------- single family

TRUE = {"E": 1e-3, "A": 2.0, "alpha": 0.5}


@dataclass
class Scenario:
    name: str
    n_budgets: int
    sigma: float
    outlier: float = 0.0  # multiplicative bump on one random interior point


SCENARIOS = [
    Scenario("8 budgets, 1% noise", 8, 0.01),
    Scenario("5 budgets, 2% noise", 5, 0.02),
    Scenario("8 budgets, 3% noise", 8, 0.03),
    Scenario("8 budgets, 1% noise + one 15% outlier", 8, 0.01, outlier=0.15),
]


def make_data(sc: Scenario, rep: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([sc.n_budgets, int(sc.sigma * 1e4), rep])
    P = np.geomspace(1e2, 1e6, sc.n_budgets)
    L = TRUE["E"] + TRUE["A"] * P ** -TRUE["alpha"]
    L = L * np.exp(sc.sigma * rng.standard_normal(P.size))
    if sc.outlier:
        L[rng.integers(1, P.size - 1)] *= 1 + sc.outlier
    return P, L


def naive_curve_fit(P, L):
    """Returns (alpha, (lo, hi), (E_lo, E_hi)) or None on failure."""
    from scipy.optimize import OptimizeWarning, curve_fit

    def f(logP, E, A, a):
        return np.log(E + A * np.exp(-a * logP))

    p0 = [L.min() / 2, L[0] * P[0] ** 0.3, 0.3]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (OptimizeWarning, RuntimeWarning))
            popt, pcov = curve_fit(f, np.log(P), np.log(L), p0=p0, maxfev=10000)
    except (RuntimeError, ValueError):
        return None
    se = np.sqrt(np.diag(pcov))
    if not np.isfinite(se).all() or popt[0] <= 0:
        return None
    z = 1.959964
    return popt[2], (popt[2] - z * se[2], popt[2] + z * se[2]), (popt[0] - z * se[0],
                                                                  popt[0] + z * se[0])


def ours(P, L, n_boot, seed, delta=1e-3):
    try:
        f = fit_law(P, L, n_boot=n_boot, seed=seed, delta=delta)
    except FitError:
        return None
    ci = f.ci()
    return f.alpha, ci["alpha"], ci["E"]


def single(reps: int, n_boot: int) -> list[dict]:
    rows = []
    for sc in SCENARIOS:
        for name, fn in (("dlor_scale fit_law (default)", lambda P, L, r: ours(P, L, n_boot, r)),
                         ("naive curve_fit (log-space LS, covariance CI)",
                          lambda P, L, r: naive_curve_fit(P, L))):
            est, cov_a, cov_e, width, fails = [], 0, 0, [], 0
            t0 = time.perf_counter()
            for r in range(reps):
                out = fn(*make_data(sc, r), r)
                if out is None:
                    fails += 1
                    continue
                a, (lo, hi), (elo, ehi) = out
                est.append(a)
                cov_a += lo <= TRUE["alpha"] <= hi
                cov_e += elo <= TRUE["E"] <= ehi
                width.append(hi - lo)
            dt = (time.perf_counter() - t0) / reps
            est = np.asarray(est)
            rows.append({
                "scenario": sc.name, "method": name, "fails": fails,
                "bias": float(est.mean() - TRUE["alpha"]) if est.size else float("nan"),
                "rmse": float(np.sqrt(np.mean((est - TRUE["alpha"]) ** 2))) if est.size
                else float("nan"),
                "cov_alpha": cov_a / reps, "cov_E": cov_e / reps,
                "width": float(np.median(width)) if width else float("nan"), "sec": dt,
            })
            print(_fmt_single(rows[-1]), flush=True)
    return rows


SINGLE_HEADER = ("| scenario | method | fails | bias α | RMSE α | 95% CI coverage α | "
                 "coverage E | median CI width α | s/fit |\n|---|---|---|---|---|---|---|---|---|")


def _fmt_single(r: dict) -> str:
    return (f"| {r['scenario']} | {r['method']} | {r['fails']} | {r['bias']:+.4f} | "
            f"{r['rmse']:.4f} | {r['cov_alpha']:.1%} | {r['cov_E']:.1%} | {r['width']:.4f} | "
            f"{r['sec']:.3f} |")


def timing(n_boot: int = 1000) -> float:
    """Seconds for one default fit (6 budgets, 1000 replicates), best of 3."""
    sc = PLANTED["S1"]
    La, _ = planted_pair(sc, (0.5, 0.3), 0)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        fit_law(sc.P, La, family="t", n_boot=n_boot)
        best = min(best, time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("calibration", "single", "all"), default="calibration")
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--scenarios", default="S1")
    ap.add_argument("--before", default=None, metavar="COMMIT",
                    help="run the calibration with dlor_scale/fit.py from this commit instead "
                         "(paths 1 and 3 only: the old equivalents)")
    ap.add_argument("--seed", type=int, default=0,
                    help="the user seed every fit is made with (fixed across replicates, as a "
                         "user's is: its Monte Carlo error is common to all of them)")
    ap.add_argument("--paths", default="all",
                    help="comma-separated subset of 1,2,3 (the public paths, in the order above)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the tables (markdown) here as well as to stdout")
    args = ap.parse_args()
    t0 = time.perf_counter()
    parts = []
    if args.part in ("calibration", "all"):
        print(CMP_HEADER)
        paths = PATHS if args.paths == "all" else tuple(PATHS[int(i) - 1]
                                                        for i in args.paths.split(","))
        before = load_fit_module(args.before) if args.before else None
        if before is not None and args.paths == "all":
            paths = (PATHS[0], PATHS[2])
        cmp_rows, alpha_rows = calibration(args.reps, args.n_boot, args.scenarios.split(","),
                                           paths, before, args.seed)
        print("\n" + ALPHA_HEADER)
        for r in alpha_rows:
            print(_fmt_alpha(r))
        g = goals(cmp_rows)
        print("\n" + "\n".join(g))
        sec = timing()
        print(f"\none fit_law, 6 budgets, n_boot=1000: {sec:.2f} s (goal < 2 s)")
        parts.append("## Δα through every public path\n\n" + "\n".join(
            [CMP_HEADER] + [_fmt_cmp(r) for r in cmp_rows]) + "\n\n## Single-family α\n\n"
            + "\n".join([ALPHA_HEADER] + [_fmt_alpha(r) for r in alpha_rows])
            + "\n\n## Goals\n\n" + "\n".join(g)
            + f"\n\nOne `fit_law` (6 budgets, n_boot=1000): {sec:.2f} s (goal < 2 s).")
    if args.part in ("single", "all"):
        print(SINGLE_HEADER)
        rows = single(args.reps, args.n_boot)
        parts.append("## fit_law vs naive curve_fit (E=1e-3, A=2, α=0.5, budgets 1e2..1e6)\n\n"
                     + "\n".join([SINGLE_HEADER] + [_fmt_single(r) for r in rows]))
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"<!-- python benchmarks/fit_compare.py --part {args.part} --reps {args.reps} "
            f"--n-boot {args.n_boot} --scenarios {args.scenarios} --paths {args.paths} "
            f"--seed {args.seed}{' --before ' + args.before if args.before else ''}; "
            f"wall {wall:.0f} s -->\n\n"
            + "\n\n".join(parts) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
