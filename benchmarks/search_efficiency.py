"""Search efficiency: the same cells searched without pruning vs with lockstep search.

Why: pruning only pays if it saves compute without losing the members a scaling fit
needs (each cell's best). This runs each cell of a study twice per seed, side by side:

* **(a) no pruning** — every member trains to the last epoch (no pruner, no early
  stopping), all of a cell's trials in one wave: what the shipped specs did before
  (``trials_per_cell`` = cohort slots, so the median pruner never fired).
* **(b) lockstep search** — the study as shipped: its sampler and pruner (lockstep
  successive halving, TPE with the constant liar), more trials than slots so slots
  freed at a rung are refilled by asks that see every told result, and its training
  protocol (early stopping included). ``--scheme-b JSON`` instead applies one search
  scheme to every study with ``trials_factor``·T trials through T slots — e.g. the spec
  defaults' `SCHEME_B` — to map the savings/quality frontier.

Same shapes, data, seeds and member seeds in (a) and (b) (a member's numbers do not
depend on its cohort), in-process (no Ray, no MLflow: this measures the search, not
the service). Reported per cell: member-epochs and the best val (of the completed
members, as the scaling points select them); per family: the fitted α with its 95 % CI
from all seeds' points. Goal (issue 12): ≥ 40 % fewer member-epochs with best val
within 2 % of (a) and α inside (a)'s CI.

    OMP_NUM_THREADS=1 python benchmarks/search_efficiency.py                 # ~15 min, 2 shared cores
    python benchmarks/search_efficiency.py --quick                           # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from dlor_scale.cohort import Cohort  # noqa: E402
from dlor_scale.plan import make_plan  # noqa: E402
from dlor_scale.pruners import make_pruner  # noqa: E402
from dlor_scale.samplers import make_sampler  # noqa: E402
from dlor_scale.search import OptunaSource, member_seed  # noqa: E402
from dlor_scale.spec import Study, parse_study  # noqa: E402
from dlor_scale.targets import make_dataset  # noqa: E402

#: The search scheme (b) applies to every study (the spec defaults of dlor_scale.spec).
SCHEME_B = {"sampler": {"kind": "tpe", "n_startup_trials": "auto"},
            "pruner": {"kind": "successive_halving", "min_resource": "auto", "reduction_factor": 3},
            "trials_factor": 1.5}
GOAL_SAVING, GOAL_VAL = 0.40, 0.02


def c7_cell(epochs: int | None) -> tuple[dict, list[str]]:
    """One cell of the CPU C7 study (studies/paper/scaling_cpu_sawtooth.yaml), which searches lr:
    deep DLoR at 560 parameters (width 16 × 10 layers), mid-range of its budgets. The
    whole spec is planned (policy axis picks shapes over all budgets), one cell run."""
    raw = yaml.safe_load((ROOT / "studies/paper/scaling_cpu_sawtooth.yaml").read_text())
    if epochs is not None:
        raw.update(epochs=epochs, report_every=max(1, epochs // 20))
    return raw, ["dlor_deep@560"]


def variant(raw: dict, scheme: str, seed: int, scheme_b: dict | str = "spec") -> dict:
    """The spec as searched by scheme ``a`` or ``b`` (seeded), validated like a user's.

    (a) keeps the spec's T trials, all in one wave of T slots, unpruned, no early stopping.
    (b) is the spec as shipped (``scheme_b == "spec"``: its sampler, pruner, trials and
    slots), or ``scheme_b``'s sampler and pruner with ``trials_factor``·T trials through T
    slots (to map the savings/quality frontier)."""
    out = {**raw, "seed": seed, "confirm": None}
    trials = int(raw.get("trials_per_cell", 16))
    sampler = {**(raw.get("sampler") or {"kind": "tpe"}), "seed": seed}
    if scheme == "a":
        out.update(pruner={"kind": "none"}, cohort_size=trials, sampler=sampler)
        if "early_stopping" in Study.model_fields:   # every member to its last epoch
            out["early_stopping"] = None
    elif scheme_b == "spec":
        out["sampler"] = sampler
    else:
        out.update(pruner=scheme_b["pruner"], cohort_size=trials,
                   trials_per_cell=int(scheme_b.get("trials_factor", 2) * trials),
                   sampler={**scheme_b["sampler"], "seed": seed})
    return out


def run_cell(study, cell, base_dir: Path, seed: int) -> dict:
    """Search one cell exactly as a worker would, in memory; returns what it spent/found."""
    sp = cell.shapes[0]
    data = make_dataset(study.target, base_dir)
    ostudy = optuna.create_study(
        direction="minimize", sampler=make_sampler(study.sampler, member_seed(seed, cell.key, 0), slots=sp.slots),
        pruner=make_pruner(study.pruner, epochs=study.epochs, report_every=study.report_every))
    results = []
    src = OptunaSource(ostudy, unit=f"search/{cell.key}/0", cell_key=cell.key, space=dict(study.search_space),
                       quota=sp.trials, base_seed=seed, final_epoch=study.epochs,
                       on_result=lambda r, n, fresh: results.append(r))
    es = getattr(study, "early_stopping", None)
    kw = {}
    if hasattr(study, "schedule"):   # the training protocol, as worker.run_unit passes it
        kw.update(schedule=study.schedule, lr_floor=study.lr_floor,
                  patience=es.patience if es else None, min_delta=es.min_delta if es else 0.0)
    from dlor_scale import worker
    if hasattr(worker, "_finish_kwargs"):
        kw.update(worker._finish_kwargs(study, "search"))
    cohort = Cohort(sp.shape, data, slots=sp.slots, epochs=study.epochs, report_every=study.report_every,
                    batch_size=study.batch_size, metric=study.metric, threshold=study.threshold,
                    device="cpu", compile=study.compile, precision=study.precision, **kw)
    t0 = time.perf_counter()
    cohort.run(src)
    done = [r for r in results if r.state == "completed" and math.isfinite(r.best_val)]
    best = min(done, key=lambda r: r.best_val) if done else None
    saved_es = sum(study.epochs - r.epochs for r in results if getattr(r, "stopped_early", False))
    saved_pr = sum(study.epochs - r.epochs for r in results if r.state == "pruned")
    return {"cell": cell.key, "family": cell.family, "budget": cell.budget, "n_params": sp.n_params,
            "member_epochs": sum(r.epochs for r in results), "members": len(results),
            "pruned": sum(r.state == "pruned" for r in results),
            "stopped_early": sum(bool(getattr(r, "stopped_early", False)) for r in results),
            "refilled": src.counts["refilled"], "saved_by_pruning": saved_pr, "saved_by_early_stop": saved_es,
            "best_val": best.best_val if best else math.nan, "test_error": best.test_error if best else math.nan,
            "best_lr": best.spec.lr if best else math.nan, "wall_s": time.perf_counter() - t0}


def fit_alpha(rows: list[dict]) -> dict:
    """α with its 95 % CI per family, from every seed's points (the study's ``fit_form``)."""
    from dlor_scale.fit import fit_law
    out = {}
    form = rows[0].get("fit_form", "saturating") if rows else "saturating"
    for fam in sorted({r["family"] for r in rows}):
        pts = [(r["n_params"], r["test_error"]) for r in rows if r["family"] == fam and math.isfinite(r["test_error"])]
        if len({p for p, _ in pts}) < 4:
            continue
        try:
            f = fit_law([p for p, _ in pts], [e for _, e in pts], family=fam, form=form, n_boot=300, seed=0)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out[fam] = {"error": str(e)}
            continue
        lo, hi = f.ci().get("alpha", (math.nan, math.nan))
        out[fam] = {"alpha": f.alpha, "lo": lo, "hi": hi, "flags": f.flags}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--c7-seeds", type=int, default=8,
                    help="seeds of the C7 cell (one cell, cheap; its best val is noisy across seeds)")
    ap.add_argument("--studies", default="quickstart,c7", help="comma list of: quickstart, c7")
    ap.add_argument("--quick", action="store_true", help="2 cells, 1 seed, short C7 cell (smoke run)")
    ap.add_argument("--c7-epochs", type=int, default=None, help="override the C7 cell's epochs")
    ap.add_argument("--scheme-b", type=lambda v: v if v == "spec" else json.loads(v), default="spec",
                    help="'spec' (default: each study as shipped) or JSON {sampler, pruner, trials_factor}, "
                         f"e.g. the spec defaults' scheme {json.dumps(SCHEME_B)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/search_efficiency.md")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/search_efficiency.json")
    ap.add_argument("--report-only", action="store_true", help="re-render --out from the saved --json rows")
    args = ap.parse_args(argv)
    if args.report_only:
        rows = json.loads(args.json.read_text())
        text = report(rows, math.nan, args.scheme_b)
        args.out.write_text(text)
        print(text)
        return 0
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    qs_path = ROOT / "studies/quickstart.yaml"
    n_seeds = 1 if args.quick else args.seeds
    studies = []
    if "quickstart" in args.studies:
        studies.append(("quickstart", yaml.safe_load(qs_path.read_text()), None, qs_path.parent, n_seeds))
    if "c7" in args.studies:
        c7_raw, c7_cells = c7_cell(200 if args.quick else args.c7_epochs)
        studies.append(("C7 cell (scaling_cpu)", c7_raw, c7_cells, ROOT / "studies/paper",
                        1 if args.quick else args.c7_seeds))
    rows = []
    t_start = time.time()
    for label, raw, only, base, n in studies:
        for seed in range(n):
            for scheme in ("a", "b"):
                study = parse_study(variant(raw, scheme, seed, args.scheme_b), f"{label}:{scheme}", base_dir=base)
                cells = [c for c in make_plan(study).cells if only is None or c.key in only]
                if args.quick:
                    cells = cells[:2]
                for cell in cells:
                    r = run_cell(study, cell, base, seed)
                    rows.append({"study": label, "scheme": scheme, "seed": seed,
                                 "fit_form": getattr(study, "fit_form", "saturating"), **r})
                    print(f"[{time.time() - t_start:6.0f}s] {label} {scheme} seed {seed} {cell.key}: "
                          f"{r['member_epochs']} member-epochs, best val {r['best_val']:.4g}, "
                          f"pruned {r['pruned']}, refilled {r['refilled']}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    text = report(rows, time.time() - t_start, args.scheme_b)
    args.out.write_text(text)
    print(text)
    return 0


def report(rows: list[dict], wall: float, scheme_b: dict | str) -> str:
    """Markdown: per cell (a) vs (b), totals, goal verdicts, the seed-noise floor, α."""
    lines = ["# Search efficiency: (a) no pruning vs (b) lockstep search", "",
             f"Generated by `benchmarks/search_efficiency.py` ("
             f"{'' if math.isnan(wall) else f'{wall / 60:.1f} min '}on "
             f"{os.cpu_count()} shared CPUs, torch {torch.__version__}, optuna {optuna.__version__}).",
             "(a) = the spec's T trials in one wave of T slots, no pruner, no early stopping; (b) = "
             + ("each spec as shipped (its sampler, pruner, trials and slots; training protocol)."
                if scheme_b == "spec" else f"`{json.dumps(scheme_b)}`: trials_factor·T trials through the "
                "same T slots, the spec's training protocol."), "",
             "Best val = the lowest val error of a cell's *completed* members (what its scaling point "
             "selects), median over seeds. Noise floor = how far apart (a)'s own seeds land "
             "(max/min of best val over seeds, median over cells): a per-cell difference below it is "
             "sampling luck, not pruning.", ""]
    verdicts = []
    for study in dict.fromkeys(r["study"] for r in rows):
        sr = [r for r in rows if r["study"] == study]
        cells = list(dict.fromkeys(r["cell"] for r in sr))
        seeds = sorted({r["seed"] for r in sr})
        lines += [f"## {study} ({len(seeds)} seeds)", "",
                  "| cell | member-epochs (a) | (b) | saved | best val (a) | (b) | (b)/(a) − 1 | "
                  "pruned / refilled / stopped early (b) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        tot = {"a": 0, "b": 0}
        within, ratios, spread = 0, [], []
        for c in cells:
            a = [r for r in sr if r["cell"] == c and r["scheme"] == "a"]
            b = [r for r in sr if r["cell"] == c and r["scheme"] == "b"]
            ea, eb = sum(r["member_epochs"] for r in a), sum(r["member_epochs"] for r in b)
            tot["a"] += ea
            tot["b"] += eb
            va = float(np.median([r["best_val"] for r in a]))
            vb = float(np.median([r["best_val"] for r in b]))
            ratios.append(vb / va)
            spread.append(max(r["best_val"] for r in a) / min(r["best_val"] for r in a))
            within += vb / va - 1 <= GOAL_VAL
            lines.append(f"| {c} | {ea / len(a):.0f} | {eb / len(b):.0f} | {1 - eb / ea:.0%} | {va:.4g} | {vb:.4g} | "
                         f"{vb / va - 1:+.1%} | {np.mean([r['pruned'] for r in b]):.1f} / "
                         f"{np.mean([r['refilled'] for r in b]):.1f} / {np.mean([r['stopped_early'] for r in b]):.1f} |")
        saving = 1 - tot["b"] / tot["a"]
        gmean = math.exp(float(np.mean(np.log(ratios))))
        ok_e, ok_v = saving >= GOAL_SAVING, within == len(cells)
        verdicts.append((study, saving, ok_e, within, len(cells), gmean))
        lines += ["", f"* Member-epochs per seed: (a) {tot['a'] / len(seeds):.0f}, (b) {tot['b'] / len(seeds):.0f}: "
                  f"**{saving:.0%} fewer** (goal ≥ {GOAL_SAVING:.0%}: **{'met' if ok_e else 'missed'}**).",
                  f"* Best val within {GOAL_VAL:.0%} of (a) or better: **{within}/{len(cells)} cells** "
                  f"(goal: all, **{'met' if ok_v else 'missed'}**); geometric mean of (b)/(a) over cells "
                  f"**{gmean:.3f}**; noise floor of (a) across seeds: ×{float(np.median(spread)):.2f}.", ""]
        fits = {s_: fit_alpha([r for r in sr if r["scheme"] == s_]) for s_ in ("a", "b")}
        if any(fits.values()):
            lines += [f"Fitted α per family ({sr[0].get('fit_form', 'saturating')} law, all seeds' points):", "",
                      "| family | α (a) [95 % CI] | α (b) [95 % CI] | (b) inside (a)'s CI |", "|---|---|---|---|"]
            for fam in sorted(set(fits["a"]) | set(fits["b"])):
                fa, fb = fits["a"].get(fam, {}), fits["b"].get(fam, {})
                inside = "alpha" in fa and "alpha" in fb and fa["lo"] <= fb["alpha"] <= fa["hi"]
                lines.append(f"| {fam} | {_show_fit(fa)} | {_show_fit(fb)} | {'yes' if inside else 'no'} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _show_fit(f: dict) -> str:
    if "alpha" not in f:
        return f.get("error", "—")
    unidentified = any("not identified" in fl for fl in f.get("flags", ()))
    return f"{f['alpha']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}]" + (" (not identified)" if unidentified else "")


if __name__ == "__main__":
    raise SystemExit(main())
