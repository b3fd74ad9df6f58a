"""Where does a deep DLoR stack stop training, and does a near-identity init move that?

Why: the planner grows ``dlor_deep`` along depth, and a cell whose net cannot train
(best val ≈ the mean predictor) is a point on the scaling curve that measures the
optimiser, not the family. The planner's depth cap (`budget.DEFAULT_MAX_DEPTH`) and
the default init scheme (`models.DEFAULT_INIT`) come from this script's numbers,
recorded in ``benchmarks/results/depth_trainability.md``.

Setup (the quickstart's target and regime): tanh teacher 4→32→32→1, 1024 train /
256 val points, full-batch AdamW (no weight decay, init_scale 1), ``dlor_deep``
width 8/16, rank 1, scalar diagonal, dense io, several lrs × seeds per depth. Each
(scheme, width, depth) is one packed `Cohort` of lrs × seeds members.

Reported: best val RMSE / mean-predictor RMSE (val error of predicting the train
mean; ≥ 0.9 means the net did not train), mean over seeds: at the best lr of the grid,
and at the reference lr ``REF_LR``. The depth cap is the deepest depth up to which
every depth reaches ≤ ``WITHIN``× the best shallow (depth ≤ 8) error at ``REF_LR``
(`cap_of`).

    OMP_NUM_THREADS=1 python benchmarks/depth_trainability.py --json out.json   # the recorded grid
    OMP_NUM_THREADS=1 python benchmarks/depth_trainability.py --quick           # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dlor_scale import cohort as cohort_mod  # noqa: E402
from dlor_scale.cohort import Cohort, MemberSpec  # noqa: E402
from dlor_scale.models import Shape, count_params, init_member  # noqa: E402
from dlor_scale.targets import TeacherTarget, make_dataset  # noqa: E402

NOT_TRAINED = 0.9   # the line: ≥ 0.9 of the mean predictor's error did not train
SHALLOW = 8         # depths ≤ this are the reference a deeper stack is judged against
WITHIN = 3.0        # "trains": val RMSE ≤ WITHIN × the best shallow error of its width/init …
REF_LR = 1e-2       # … at this lr (the shipped paper studies' fixed lr, mid-range of the searched ones)


def cap_of(rows: list[dict]) -> int | None:
    """Deepest depth up to which every measured depth trains at REF_LR (None: no shallow
    reference). Why one lr: a study shares its lr range across a family's budgets, and the
    stable lr falls roughly as 1/depth, so "trains at some lr" alone would hide that a
    deep cell needs a different lr than its shallow neighbours."""
    shallow = [r["best_ratio"] for r in rows if r["depth"] <= SHALLOW]
    if not shallow:
        return None
    ref, cap = min(shallow), 0
    for r in sorted(rows, key=lambda r: r["depth"]):
        at = {float(k): v for k, v in r["ratio_by_lr"].items()}.get(REF_LR)
        if at is None or not at <= WITHIN * ref:
            break
        cap = r["depth"]
    return cap


class Members:
    """In-memory Source: hands out a fixed list, never prunes, keeps results."""

    def __init__(self, specs):
        self.todo, self.results = list(specs), {}

    def next_member(self):
        return self.todo.pop(0) if self.todo else None

    def on_report(self, key, epoch, train_loss, val_error):
        return False

    def on_finish(self, result):
        self.results[result.key] = result


def run_cell(data, scheme: str, width: int, depth: int, lrs, seeds: int, epochs: int) -> dict:
    shape = Shape("dlor_deep", d_in=data.d_in, d_out=data.d_out, width=width, depth=depth,
                  rank=1, diag="scalar", activation="tanh")
    specs = [MemberSpec(f"lr{lr:g}-s{s}", seed=1000 + s, lr=lr) for lr in lrs for s in range(seeds)]
    src = Members(specs)
    # The cohort draws every member's init through this name: point it at the scheme.
    cohort_mod.init_member = functools.partial(init_member, scheme=scheme)
    try:
        Cohort(shape, data, slots=len(specs), epochs=epochs, report_every=10,
               compile=False).run(src)
    finally:
        cohort_mod.init_member = init_member
    per_lr = {}
    for lr in lrs:
        vals = [src.results[f"lr{lr:g}-s{s}"].best_val for s in range(seeds)]
        vals = [v if math.isfinite(v) else math.inf for v in vals]
        per_lr[lr] = vals
    return {"n_params": count_params(shape).total, "per_lr": per_lr}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer depths/lrs/epochs (smoke run)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 24, 32, 48, 64, 96])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--schemes", nargs="+", default=["standard", "identity"])
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    a = ap.parse_args(argv)
    if a.quick:
        a.depths, a.lrs, a.epochs, a.widths = [4, 16, 48], [3e-3, 1e-2], 150, [8]
    torch.set_num_threads(1)

    data = make_dataset(TeacherTarget(kind="teacher", d_in=4, widths=[32, 32], activation="tanh",
                                      n_train=1024, n_val=256, n_test=256, seed=0))
    mean_rmse = float((data.y_val - data.y_train.mean(0)).square().mean().sqrt())
    print(f"# mean-predictor val RMSE {mean_rmse:.4f}; epochs {a.epochs} full batch; "
          f"lrs {a.lrs}; seeds {a.seeds}; torch {torch.__version__}, 1 thread")
    t_all, c_all, raw = time.perf_counter(), time.process_time(), []
    for width in a.widths:
        print(f"\n## width {width}\n")
        head = "| depth | params | " + " | ".join(f"{s}: best (lr) | {s}: at {REF_LR:g}" for s in a.schemes) + " |"
        print(head)
        print("|" + "---:|" * (2 + 2 * len(a.schemes)))
        for depth in a.depths:
            cols, n_params = [], 0
            for scheme in a.schemes:
                t0 = time.perf_counter()
                r = run_cell(data, scheme, width, depth, a.lrs, a.seeds, a.epochs)
                n_params = r["n_params"]
                ratios = {lr: statistics.fmean(v) / mean_rmse for lr, v in r["per_lr"].items()}
                lr_best = min(ratios, key=ratios.get)
                best = ratios[lr_best]
                flag = " ✗" if not best < NOT_TRAINED else ""
                at = ratios.get(REF_LR, math.nan)
                cols.append(f"{best:.3f} ({lr_best:g}){flag} | {at:.3f}")
                raw.append({"scheme": scheme, "width": width, "depth": depth, "n_params": n_params,
                            "ratio_by_lr": {str(k): v for k, v in ratios.items()},
                            "best_ratio": best, "best_lr": lr_best,
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"| {depth} | {n_params} | " + " | ".join(cols) + " |", flush=True)
    print(f"\n## depth cap (every depth up to it reaches ≤ {WITHIN:g}× the best depth-≤{SHALLOW} "
          f"error at lr {REF_LR:g})\n")
    for scheme in a.schemes:
        caps = {w: cap_of([r for r in raw if r["scheme"] == scheme and r["width"] == w]) for w in a.widths}
        text = ", ".join(f"width {w}: {c}{' (deepest measured)' if c == max(a.depths) else ''}"
                         for w, c in caps.items())
        failed = sorted({r["depth"] for r in raw if r["scheme"] == scheme and not r["best_ratio"] < NOT_TRAINED})
        print(f"- {scheme}: {text}; did not train at any lr (≥ {NOT_TRAINED}): "
              f"{', '.join(map(str, failed)) or 'none'}")
    print(f"\n# total {time.perf_counter() - t_all:.0f} s wall, {time.process_time() - c_all:.0f} s CPU")
    if a.json:
        a.json.write_text(json.dumps({"mean_rmse": mean_rmse, "epochs": a.epochs, "rows": raw}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
