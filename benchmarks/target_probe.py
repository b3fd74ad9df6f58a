"""Target probe: which quickstart target lets every cell train to its capacity?

    python benchmarks/target_probe.py studies/quickstart.yaml \
        --variants '{"base": {}, "din4": {"target": {"d_in": 4}, "tolerance": 0.2}}'

For every cell of the study and every variant (overrides of the spec's top-level keys or
of its target, plus ``_iters`` for the L-BFGS finish), trains a fixed lr grid × seeds
with the study's own protocol (Adam + schedule + early stopping + float64 L-BFGS finish)
in one cohort, and prints the cell's best member (by val): its test error and whether it
was still improving when training ended (`MemberResult.undertrained`). A target suits a
scaling study only if the best members are not undertrained — an optimisation floor is
not a capacity floor. Cells run in parallel processes (``--procs``), 1 thread each.

The run that chose the quickstart's target: results/quickstart_target_probe.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dlor_scale.cohort import Cohort, MemberSpec  # noqa: E402
from dlor_scale.plan import make_plan  # noqa: E402
from dlor_scale.spec import parse_study  # noqa: E402
from dlor_scale.targets import make_dataset  # noqa: E402


class GridSource:
    """Feeds a fixed list of members and keeps their results (no pruning)."""

    def __init__(self, members: list[MemberSpec]):
        self.queue, self.results = list(members), []

    def next_member(self):
        return self.queue.pop(0) if self.queue else None

    def on_report(self, *_):
        return False

    def on_finish(self, result):
        self.results.append(result)


def apply_variant(raw: dict, overrides: dict) -> tuple[dict, int | None]:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        if key == "target":
            raw["target"].update(value)
        elif key != "_iters":
            raw[key] = value
    return raw, overrides.get("_iters")


def probe_cell(job: tuple) -> dict:
    tag, raw, key, lrs, seeds, iterations = job
    torch.set_num_threads(1)
    study = parse_study(copy.deepcopy(raw))
    cell = make_plan(study).cell(key)
    shape = cell.shapes[0].shape
    members = [MemberSpec(key=f"{lr:.4g}/{seed}", seed=seed, lr=lr) for lr in lrs for seed in seeds]
    stop = study.early_stopping
    cohort = Cohort(shape, make_dataset(study.target), slots=len(members), epochs=study.epochs,
                    report_every=study.report_every, batch_size=study.batch_size,
                    metric=study.metric, compile=False, schedule=study.schedule,
                    lr_floor=study.lr_floor, patience=stop.patience if stop else None,
                    min_delta=stop.min_delta if stop else 0.0,
                    finish_iterations=iterations if iterations is not None else
                    (study.finish.iterations if study.finish else 0))
    source = GridSource(members)
    t0 = time.perf_counter()
    cohort.run(source)
    return {"tag": tag, "cell": key, "shape": shape.label(), "n_params": cell.shapes[0].n_params,
            "wall_s": time.perf_counter() - t0,
            "members": [{"lr": r.spec.lr, "seed": r.spec.seed, "state": r.state,
                         "best_val": r.best_val, "test": r.test_error,
                         "undertrained": r.undertrained, "best_epoch": r.best_epoch}
                        for r in source.results]}


def best_member(cell: dict) -> dict:
    finite = [m for m in cell["members"] if math.isfinite(m["best_val"])]
    return min(finite, key=lambda m: m["best_val"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--variants", default='{"base": {}}', help="JSON: name → overrides")
    ap.add_argument("--lrs", default="0.003,0.01,0.03,0.1,0.3")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="target_probe.json")
    a = ap.parse_args()
    base = yaml.safe_load(Path(a.spec).read_text())
    lrs = [float(x) for x in a.lrs.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    jobs = []
    for tag, overrides in json.loads(a.variants).items():
        raw, iterations = apply_variant(base, overrides)
        for cell in make_plan(parse_study(copy.deepcopy(raw))).cells:
            jobs.append((tag, raw, cell.key, lrs, seeds, iterations))
    jobs.sort(key=lambda j: -int(j[2].split("@")[1]) * (j[5] or 1))   # long cells first
    results = []
    with Pool(a.procs) as pool:
        for cell in pool.imap_unordered(probe_cell, jobs):
            results.append(cell)
            b = best_member(cell)
            n_under = sum(m["undertrained"] for m in cell["members"])
            print(f"{cell['tag']:10s} {cell['cell']:16s} {cell['shape']:30s} P={cell['n_params']:5d} "
                  f"best lr={b['lr']:.3g} val={b['best_val']:.4g} test={b['test']:.4g} "
                  f"undertrained={b['undertrained']} ({n_under}/{len(cell['members'])} members) "
                  f"{cell['wall_s']:.0f}s", flush=True)
            Path(a.out).write_text(json.dumps(results))
    print("\nvariant: cells whose best member was still improving")
    for tag in json.loads(a.variants):
        cells = [c for c in results if c["tag"] == tag]
        print(f"  {tag}: {sum(best_member(c)['undertrained'] for c in cells)}/{len(cells)}")


if __name__ == "__main__":
    main()
