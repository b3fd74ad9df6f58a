"""Split cells (``parts_per_cell``), side by side: wall time, idle slots and the search's result.

A cell's trials run as one cohort unit by default: with 64 trials in a cohort of 16 slots
that is four waves, one after the other, on one CPU, while the other slots of the
machine have nothing to do once the study's cells are fewer than its slots (a cluster
with more CPUs than cells). ``parts_per_cell: n`` splits each cell into n independent
searches, each its own unit with the full cohort width.

This script runs the same study (``--cells`` cells of ``--trials`` trials) on an embedded
Ray with 2 CPUs, unsplit and with each ``--parts``, each in a fresh process and folder, and
prints per variant: the launch's wall time, the outside-training share 1 − Σ(train + eval)
/ (wall × 2), the units' time, and the cell's best val / test error (the search changes:
parts do not share their history, so the numbers are expected to differ a little).

    python benchmarks/cell_parts.py --parts 2,4         # 1 cell, 64 trials: parts 1, 2, 4
    python benchmarks/cell_parts.py --parts 2 --cells 2

Results: benchmarks/README.md ("Split cells"), raw output in results/cell_parts.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUM_CPUS = 2


def spec(a, parts: int, out: Path) -> dict:
    budgets = [300, 600, 1200, 150][: a.cells]
    return {
        "name": f"cell-parts-{parts}",
        "target": {"kind": "teacher", "d_in": 4, "widths": [16], "activation": "tanh",
                   "n_train": a.n_train, "n_val": 128, "n_test": 256, "seed": 0},
        "budgets": budgets, "tolerance": 0.05, "policy": "axis",
        "families": {"dense": {"width": {"min": 2, "max": 64}, "depth": 1}},
        "search_space": {"lr": {"type": "float", "low": 3.0e-3, "high": 1.0e-1, "log": True},
                         "init_scale": {"type": "float", "low": 0.5, "high": 1.5}},
        "sampler": {"kind": "tpe", "seed": 0},
        "pruner": {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": a.epochs // 5},
        "trials_per_cell": a.trials, "cohort_size": a.cohort_size, "parts_per_cell": parts,
        "epochs": a.epochs, "report_every": max(1, a.epochs // 20), "batch_size": None,
        "resources": {"cpu": 1, "gpu": 0}, "device": "cpu", "compile": False, "seed": 0,
        "output_dir": str(out),
    }


def run_variant(spec_path: str, ray_tmp: str) -> dict:
    """Child process: launch the study (no fit) on its own Ray; return timings and the result."""
    import mlflow.tracking  # noqa: F401  (imports outside the clock)
    import optuna
    import ray

    from dlor_scale.plan import make_plan
    from dlor_scale.spec import load_study
    from dlor_scale.storages import storage
    from dlor_scale.tune import launch

    study = load_study(spec_path)
    ray.init(num_cpus=NUM_CPUS, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False,
             configure_logging=False)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = launch(study, spec_path, fit=False, cpus=NUM_CPUS, progress=None)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    ray.shutdown()
    units = [json.loads(p.read_text()) for p in sorted((res.study_dir / "units").glob("*.done.json"))]
    cells = {}
    for cell in make_plan(study).cells:
        trials = optuna.load_study(study_name=cell.optuna_study_name(study.name),
                                   storage=storage(res.optuna_storage)).get_trials()
        done = [t for t in trials if t.state.name == "COMPLETE"]
        cells[cell.key] = {"best_val": min(t.value for t in done), "completed": len(done),
                           "pruned": sum(t.state.name == "PRUNED" for t in trials)}
    return {"wall_s": wall, "load": [load0, load1], "cells": cells,
            "units": [{k: u[k] for k in ("unit", "elapsed_s", "train_s", "eval_s", "model_steps")} for u in units]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="2", help="comma list of parts_per_cell to compare with 1")
    ap.add_argument("--cells", type=int, default=1)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--cohort-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1500)
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_variant(*a.child)))
        return

    import yaml
    work = Path(tempfile.mkdtemp(prefix="cell-parts-", dir="/tmp"))
    variants = [1] + [int(p) for p in a.parts.split(",")]
    print(f"# cell_parts  {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs, Ray num_cpus={NUM_CPUS}; "
          f"load at start {os.getloadavg()[0]:.2f}")
    print(f"# {a.cells} dense cell(s) × {a.trials} trials, cohort_size {a.cohort_size}, {a.epochs} full-batch "
          f"epochs, n_train {a.n_train}; TPE + median pruner; variants parts_per_cell {variants}")
    rows = {}
    for parts in variants:
        path = work / f"parts{parts}.yaml"
        path.write_text(yaml.safe_dump(spec(a, parts, work / "runs")))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
        out = subprocess.run([sys.executable, __file__, "--child", str(path), f"/tmp/cp-{parts}-{os.getpid()}"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"parts_per_cell {parts} failed:\n{out.stderr[-3000:]}")
        rows[parts] = r = json.loads(out.stdout.strip().splitlines()[-1])
        busy = sum(u["train_s"] + u["eval_s"] for u in r["units"])
        r["share"] = 1 - busy / (r["wall_s"] * NUM_CPUS)
        print(f"# parts_per_cell {parts}: load {r['load'][0]:.2f}→{r['load'][1]:.2f}; units: "
              + ", ".join(f"{u['unit']} {u['elapsed_s']:.1f} s ({u['model_steps']} member-epochs)" for u in r["units"]))
    print(f"{'parts_per_cell':>14} {'units':>5} {'wall s':>7} {'vs 1':>6} {'outside-train':>13} "
          f"{'Σ unit s':>8}  cell: best val (completed/pruned)")
    base = rows[1]["wall_s"]
    for parts, r in rows.items():
        cells = "; ".join(f"{k} {c['best_val']:.4g} ({c['completed']}/{c['pruned']})" for k, c in r["cells"].items())
        print(f"{parts:>14} {len(r['units']):>5} {r['wall_s']:>7.1f} {base / r['wall_s']:>5.2f}× "
              f"{r['share'] * 100:>12.1f}% {sum(u['elapsed_s'] for u in r['units']):>8.1f}  {cells}")


if __name__ == "__main__":
    main()
