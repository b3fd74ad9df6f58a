"""Study overhead: dlor-scale vs a hand-wired Ray Tune + OptunaSearch + MLflowLoggerCallback study.

Both systems train the SAME members — same cells (family × budget → shape from the
budget solver), same teacher data, same search space, same epochs, full batch, same
validation-report cadence — on the same embedded Ray (``num_cpus=2``, 1 CPU per trial):

* **dlor-scale** — ``dlor_scale.tune.launch(study, source, fit=False)``: one Tune trial per
  (cell, shape) unit training a packed cohort; Optuna TPE + median pruner per cell in the
  default Optuna journal; MLflow in SQLite (the study's defaults), member records parked by the units and written by the driver.
* **baseline** — the stock hand-wired recipe: one Tune function trial per member, training
  ONE `dlor_scale.models.Member` with plain ``torch.optim.AdamW``;
  ``ray.tune.search.optuna.OptunaSearch`` (TPE, in-memory study; the cell is assigned
  round-robin by Optuna trial number, lr / init_scale sampled by TPE);
  ``MedianStoppingRule`` (Tune's analogue of the median pruner); ``MLflowLoggerCallback``
  to a SQLite store; ``reuse_actors=True``, ``max_concurrent_trials=2``.

Each system runs in its own subprocess (own driver, own Ray, own stores) so neither sees
the other's process state (e.g. dlor-scale's SQLite WAL hook never reaches the
baseline's MLflow engine). All members of the dlor-scale study run; the baseline runs a
representative subset (round-robin over the same cells) and is compared per member-hour.
A second dlor-scale study ("dlor_large", ``--large``) runs members that train ≥ 1 s each:
the same eight cells with 8× the data and 13× the epochs (half the members), so the
outside-training share is reported for both member sizes of one study layout. (A study of
fewer units than about twice the slots adds an idle tail that no bookkeeping causes: the
earlier default, 2 cells on 2 slots, spent 22 % of its slot-time waiting for the longer
unit; benchmarks/README.md.) A last, small part ("anatomy") runs one dlor-scale unit in-process
without Ray, with timers around what the cohort calls (``next_member``,
``on_report_round``, ``on_finish``) and the Optuna journal and MLflow writes: once with
MLflow writes stubbed out, once for real, and once with the previous Optuna write
pattern (one journal append per member per read step) side by side.

Definitions (printed with the results):
* wall — seconds of the system's driver call (``launch()`` / ``tuner.fit()``), Ray start
  and stop excluded for both (reported separately);
* slots — concurrent Tune trials the run could use: min(num_cpus / cpu per trial, trials);
* outside-training share = 1 − (Σ train_s + Σ eval_s) / (wall × slots), where train_s is
  the seconds inside training epochs and eval_s the seconds computing validation/test
  metrics, summed over all trials (units or members).

Usage (from the repository root):
    python benchmarks/study_overhead.py                       # ~8 min on an idle 2-core box
    python benchmarks/study_overhead.py --members 128 --baseline-members 16 --epochs 60 \
        --large members=16,epochs=200,n_train=1024,budgets=300,families=dense,report_every=20,warmup_epochs=40  # quick
Writes benchmarks/results/study_overhead.txt (this output) and study_overhead.md (summary);
``--no-write`` prints only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NUM_CPUS = 2

# ----------------------------------------------------------------------------- the study


def study_spec(a, output_dir: Path) -> dict:
    fams = {
        "dense": {"width": {"min": 2, "max": 64}, "depth": 1},
        "dlor_deep": {"width": 8, "rank": 1, "depth": {"min": 1, "max": 64}, "diag": "scalar"},
    }
    fams = {k: v for k, v in fams.items() if k in a.families.split(",")}
    budgets = [int(b) for b in a.budgets.split(",")]
    n_cells = len(fams) * len(budgets)
    return {
        "name": "study-overhead",
        "target": {"kind": "teacher", "d_in": 4, "widths": [16], "activation": "tanh",
                   "n_train": a.n_train, "n_val": 128, "n_test": 256, "seed": 0},
        "budgets": budgets,
        "tolerance": 0.05,
        "policy": "axis",
        "families": fams,
        "search_space": {"lr": {"type": "float", "low": 3.0e-3, "high": 1.0e-1, "log": True},
                         "init_scale": {"type": "float", "low": 0.5, "high": 1.5},
                         "weight_decay": 0.0},
        "sampler": {"kind": "tpe", "seed": 0, "n_startup_trials": 10},
        "pruner": {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": a.warmup_epochs},
        "trials_per_cell": math.ceil(a.members / n_cells),
        "cohort_size": a.cohort_size,
        "epochs": a.epochs,
        "batch_size": None,
        "report_every": a.report_every,
        "metric": "rmse",
        "resources": {"cpu": 1, "gpu": 0},
        "device": "cpu",
        "compile": False,
        "checkpoint_every": 5,
        "seed": 0,
        "output_dir": str(output_dir),
    }


def _ray_init(tmp: str):
    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=NUM_CPUS, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             configure_logging=False)
    return time.perf_counter() - t0


def _ray_shutdown():
    import ray
    t0 = time.perf_counter()
    ray.shutdown()
    return time.perf_counter() - t0


def _timeline_callback(events: list):
    """A Tune callback recording trial start/end on the driver (perf_counter seconds)."""
    from ray.tune import Callback

    class Timeline(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            events.append(("start", time.perf_counter(), trial.trial_id))

        def on_trial_complete(self, iteration, trials, trial, **info):
            events.append(("end", time.perf_counter(), trial.trial_id))

        def on_trial_error(self, iteration, trials, trial, **info):
            events.append(("end", time.perf_counter(), trial.trial_id))

    return Timeline()


def _timeline(events: list, t0: float, t_end: float) -> dict:
    """Seconds before the first trial started, after the last ended, trial-span sum, peak concurrency."""
    starts: dict = {}
    ends: dict = {}
    for k, t, tid in events:
        if k == "start":
            starts.setdefault(tid, t)           # first start of each trial
        else:
            ends[tid] = t                       # last end of each trial
    if not starts:
        return {}
    edges = sorted([(t, 1) for t in starts.values()] + [(ends.get(i, t_end), -1) for i in starts])
    run = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        run += step
        peak = max(peak, run)
    return {"before_first_trial_s": min(starts.values()) - t0,
            "after_last_trial_s": t_end - max(ends.values(), default=t_end),
            "trial_span_s": sum(ends.get(i, t_end) - s for i, s in starts.items()),
            "peak_concurrency": peak, "start_events": sum(k == "start" for k, _, _ in events),
            "end_events": sum(k != "start" for k, _, _ in events), "trials_seen": len(starts)}


class ProgressProbe:
    """The `progress` hooks `launch` calls, used only to timestamp its phases."""

    def __init__(self):
        self.events: list = []
        self.stores_ready = None

    def start(self, plan, units, study):
        self.stores_ready = time.perf_counter()

    def mark_done(self, *a):
        pass

    def add_phase(self, *a):
        pass

    def stop(self):
        pass

    def tune_callback(self):
        return _timeline_callback(self.events)


# ----------------------------------------------------------------------------- part: dlor-scale


def part_dlor(cfg: dict) -> dict:
    import mlflow.tracking  # noqa: F401  (import cost outside the timed region, as for the baseline:
    import ray  # noqa: F401   the driver's `tune` no longer imports MLflow itself, its Tracker does)

    from dlor_scale.spec import load_study
    from dlor_scale.tune import launch

    study = load_study(cfg["spec_path"])
    init_s = _ray_init(cfg["ray_tmp"])
    load0 = os.getloadavg()
    probe = ProgressProbe()
    t0 = time.perf_counter()
    res = launch(study, cfg["spec_path"], fit=False, cpus=NUM_CPUS, progress=probe)
    t_end = time.perf_counter()
    wall = t_end - t0
    timeline = {"stores_s": probe.stores_ready - t0, **_timeline(probe.events, t0, t_end)}
    load1 = os.getloadavg()
    shutdown_s = _ray_shutdown()

    units = [json.loads(p.read_text()) for p in sorted((res.study_dir / "units").glob("*.done.json"))]
    # --- verification (outside the timed region): every member recorded once, states agree
    from mlflow.tracking import MlflowClient

    from dlor_scale.plan import make_plan
    from dlor_scale.storages import storage
    import optuna
    client = MlflowClient(res.tracking_uri)
    exp = client.get_experiment_by_name(study.name)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.kind = 'member'", max_results=1000,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    complete = sum(r.data.tags.get("dlor.complete") == "1" for r in runs)
    keys = {r.data.tags.get("dlor.key") for r in runs}
    ost = storage(res.optuna_storage)
    states: dict[str, int] = {}
    for cell in make_plan(study).cells:
        for t in optuna.load_study(study_name=cell.optuna_study_name(study.name), storage=ost).get_trials():
            states[t.state.name] = states.get(t.state.name, 0) + 1
    c = res.counts
    members = sum(int(c.get(k, 0)) for k in ("completed", "pruned", "diverged", "failed"))
    return {
        "system": "dlor-scale", "wall_s": wall, "ray_init_s": init_s, "ray_shutdown_s": shutdown_s,
        "timeline": timeline,
        "load_during": [load0, load1],
        "trials": len(units), "members": members,
        "states": {k: int(c.get(k, 0)) for k in ("completed", "pruned", "diverged", "failed")},
        "member_epochs": int(c.get("model_steps", 0)),
        "train_s": float(c.get("train_s", 0.0)), "eval_s": float(c.get("eval_s", 0.0)),
        "in_trial_s": float(c.get("elapsed_s", 0.0)),
        "parked": len(list((res.study_dir / "outbox").rglob("*.json"))),   # left unwritten after launch
        "per_trial": [{k: u.get(k) for k in ("unit", "elapsed_s", "train_s", "eval_s", "model_steps",
                                              "completed", "pruned", "diverged", "failed")} for u in units],
        "mlflow_member_runs": len(runs), "mlflow_complete": complete, "mlflow_unique_keys": len(keys),
        "optuna_states": states,
    }


# ----------------------------------------------------------------------------- part: baseline


class RoundRobinSpace:
    """Define-by-run space for OptunaSearch: TPE samples the hyperparameters; the cell is
    assigned round-robin by Optuna trial number (stock OptunaSearch has no grid)."""

    def __init__(self, cells: list[str], space: dict):
        self.cells, self.space = cells, space

    def __call__(self, trial):
        out = {}
        for name, d in self.space.items():
            if isinstance(d, dict):
                out[name] = trial.suggest_float(name, d["low"], d["high"], log=d.get("log", False))
        n = trial.number
        return {"cell": self.cells[n % len(self.cells)], "seed": 1_000_003 * (n + 1) % (2**31),
                **{k: v for k, v in self.space.items() if not isinstance(v, dict)}}


def train_member(config, ctx):
    """One member, plain torch: Member + AdamW, full batch, report every `report_every` epochs."""
    t_start = time.perf_counter()
    import torch
    from ray import tune

    from dlor_scale.models import Member, Shape, init_member

    torch.set_num_threads(1)
    shape = Shape(**ctx["shapes"][config["cell"]])
    d = ctx["data"]
    model = Member(shape, init_member(shape, config["seed"], config["init_scale"]))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"],
                            betas=(0.9, 0.999))
    epochs, every = ctx["epochs"], ctx["report_every"]
    timing = Path(ctx["timing_dir"]) / f"{tune.get_context().get_trial_id()}.json"
    train_s = eval_s = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = (model(d["x_train"]) - d["y_train"]).square().mean()
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        train_s += t1 - t0
        if epoch % every == 0 or epoch == epochs:
            with torch.no_grad():
                val = float((model(d["x_val"]) - d["y_val"]).square().mean().sqrt())
                metrics = {"val_error": val, "train_loss": float(loss.detach()), "epoch": epoch}
                if epoch == epochs:
                    metrics["test_error"] = float((model(d["x_test"]) - d["y_test"]).square().mean().sqrt())
            eval_s += time.perf_counter() - t1
            timing.write_text(json.dumps({"train_s": train_s, "eval_s": eval_s, "epochs": epoch,
                                          "elapsed_s": time.perf_counter() - t_start}))
            tune.report(metrics)


def part_baseline(cfg: dict) -> dict:
    import optuna
    import ray  # noqa: F401
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    from dlor_scale.plan import make_plan
    from dlor_scale.spec import load_study
    from dlor_scale.targets import make_dataset

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(cfg["spec_path"])
    plan = make_plan(study)
    cells = [c.key for c in plan.cells]
    shapes = {c.key: {k: v for k, v in c.shapes[0].shape.__dict__.items() if k != "extra"} for c in plan.cells}
    data = make_dataset(study.target)
    work = Path(cfg["work"]) / "baseline"
    timing_dir = work / "timing"
    timing_dir.mkdir(parents=True, exist_ok=True)
    space = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in study.search_space.items()}
    ctx = {"shapes": shapes, "epochs": study.epochs, "report_every": study.report_every,
           "timing_dir": str(timing_dir),
           "data": {k: getattr(data, k) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}}
    pr = study.pruner
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    assert "dlor_scale.tracking" not in sys.modules, "baseline driver must not load dlor-scale's SQLite hook"

    init_s = _ray_init(cfg["ray_tmp"])
    load0 = os.getloadavg()
    events: list = []
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_member, ctx=ctx), {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="val_error", mode="min",
            search_alg=OptunaSearch(space=RoundRobinSpace(cells, space), metric="val_error", mode="min",
                                    sampler=optuna.samplers.TPESampler(
                                        seed=0, n_startup_trials=study.sampler.n_startup_trials,
                                        multivariate=True)),
            scheduler=MedianStoppingRule(time_attr="training_iteration",
                                         grace_period=max(1, pr.n_warmup_steps // study.report_every),
                                         min_samples_required=pr.n_startup_trials),
            num_samples=cfg["baseline_members"], max_concurrent_trials=NUM_CPUS, reuse_actors=True),
        run_config=tune.RunConfig(
            name="baseline", storage_path=str(work / "ray_results"), verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name="baseline",
                                            save_artifact=False), _timeline_callback(events)]),
    )
    results = tuner.fit()
    t_end = time.perf_counter()
    wall = t_end - t0
    timeline = _timeline(events, t0, t_end)
    load1 = os.getloadavg()
    shutdown_s = _ray_shutdown()

    errors = sum(r.error is not None for r in results)
    per = [json.loads(p.read_text()) for p in sorted(timing_dir.glob("*.json"))]
    epochs = [p["epochs"] for p in per]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("baseline")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    sample = runs[0] if runs else None
    import sqlite3
    jm = sqlite3.connect(str(work / "mlflow.db")).execute("PRAGMA journal_mode").fetchone()[0]
    return {
        "system": "baseline", "wall_s": wall, "ray_init_s": init_s, "ray_shutdown_s": shutdown_s,
        "timeline": timeline,
        "load_during": [load0, load1], "trials": len(results), "members": len(results), "errors": errors,
        "states": {"completed": sum(e >= study.epochs for e in epochs),
                   "stopped": sum(e < study.epochs for e in epochs),
                   "no_report": len(results) - len(per)},
        "member_epochs": int(sum(epochs)),
        "train_s": sum(p["train_s"] for p in per), "eval_s": sum(p["eval_s"] for p in per),
        "in_trial_s": sum(p["elapsed_s"] for p in per),
        "mlflow_runs": len(runs), "mlflow_metric_keys": len(sample.data.metrics) if sample else 0,
        "mlflow_journal_mode": jm,
        "cells": {c: sum(1 for r in results if r.config.get("cell") == c) for c in cells},
    }


# ----------------------------------------------------------------------------- part: anatomy


def part_anatomy(cfg: dict) -> dict:
    """One dlor-scale unit in-process (no Ray), with timers around its bookkeeping.

    Same code path as a Tune trial (`worker.run_unit`), fresh stores of its own; times are
    wall seconds. The unit only parks its members' records; the driver's drain (here run
    after the unit, as the final pass of a launch is) writes them to MLflow. A first pass
    runs the same unit with `Tracker.park` stubbed out, to show what parking still costs
    the trial.
    """
    import optuna
    import yaml
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    import dlor_scale.search as search
    import dlor_scale.tracking as tracking
    import dlor_scale.storages as storages
    import dlor_scale.studydir as studydir
    import dlor_scale.worker as worker
    from dlor_scale.plan import make_plan
    from dlor_scale.spec import load_study
    from dlor_scale.tune import build_context, prepare_stores, search_units

    def setup(tag):
        spec = yaml.safe_load(Path(cfg["spec_path"]).read_text())
        spec["output_dir"] = str(Path(cfg["work"]) / f"anatomy-{tag}")
        path = Path(cfg["work"]) / f"anatomy-{tag}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        study = load_study(path)
        plan = make_plan(study)
        _, ctx = prepare_stores(build_context(study, str(path), threads=1), plan)
        return study, ctx, next(u for u in search_units(study, plan) if u["cell"] == cfg["anatomy_cell"])

    t: dict[str, list] = {}
    originals = []

    def timed(owner, name, key):
        f = getattr(owner, name)
        originals.append((owner, name, f))

        def w(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                t.setdefault(key, []).append(time.perf_counter() - t0)
        setattr(owner, name, w)

    # pass 1 (also warms imports, data cache and allocator): member records not even parked
    _, ctx2, unit2 = setup("no-mlflow")
    park = tracking.Tracker.park
    tracking.Tracker.park = lambda self, *a, **k: None
    t0 = time.perf_counter()
    out2 = worker.run_unit(ctx2, unit2)
    wall2 = time.perf_counter() - t0
    tracking.Tracker.park = park

    # pass 2: the real thing, with timers
    study, ctx, unit = setup("timed")
    timed(JournalFileBackend, "append_logs", "optuna journal append (lock+write+fsync)")
    timed(search.OptunaSource, "next_member", "optuna ask + TPE sample (next_member)")
    timed(search.OptunaSource, "on_report_round", "optuna report round + peer judging (on_report_round)")
    timed(search.OptunaSource, "on_finish", "optuna tell + record submit (on_finish)")
    timed(tracking.Tracker, "park", "MLflow record parked in outbox (fsync)")
    timed(tracking.Tracker, "record_run", "MLflow record_run (driver drain, after the unit)")
    timed(studydir.UnitFiles, "save_checkpoint", "cohort checkpoint (torch.save+fsync)")
    t0 = time.perf_counter()
    out = worker.run_unit(ctx, unit)
    wall = time.perf_counter() - t0
    from dlor_scale.tune import flush_all_outboxes
    t0 = time.perf_counter()
    left = flush_all_outboxes(ctx)
    drain_s = time.perf_counter() - t0
    assert left == 0, f"{left} records still parked"
    for owner, name, f in originals:
        setattr(owner, name, f)
    originals.clear()
    timers_batched = dict(t)
    t.clear()

    # pass 3, side by side: the previous write pattern (one journal append per member per
    # read step instead of one per round), MLflow on, only the journal timed
    _, ctx3, unit3 = setup("per-member")
    batched = search.OptunaSource._tell_steps

    def per_member(self, items):
        for key, value, step in items:
            self._tell_step(key, value, step)
    search.OptunaSource._tell_steps = per_member
    timed(JournalFileBackend, "append_logs", "optuna journal append (lock+write+fsync)")
    timed(search.OptunaSource, "on_report_round", "optuna report round + peer judging (on_report_round)")
    t0 = time.perf_counter()
    out3 = worker.run_unit(ctx3, unit3)
    wall3 = time.perf_counter() - t0
    search.OptunaSource._tell_steps = batched
    for owner, name, f in originals:
        setattr(owner, name, f)
    per_member_timers = {k: [len(v), sum(v)] for k, v in t.items()}
    t.clear()
    t.update(timers_batched)
    ost = optuna.load_study(study_name=unit["optuna_study"], storage=storages.storage(ctx.optuna_storage))
    pruned = [tr for tr in ost.get_trials(deepcopy=False) if tr.state == TrialState.PRUNED]
    pruned_last = sum(max(tr.intermediate_values, default=0) >= study.epochs for tr in pruned)

    return {"unit": unit["id"], "wall_s": wall, "summary": out, "drain_s": drain_s,
            "timers": {k: [len(v), sum(v)] for k, v in t.items()},
            "pruned": len(pruned), "pruned_at_final_epoch": int(pruned_last),
            "no_mlflow": {"wall_s": wall2, "train_s": out2["train_s"], "eval_s": out2["eval_s"],
                          "model_steps": out2["model_steps"]},
            "per_member_reports": {"wall_s": wall3, "train_s": out3["train_s"], "eval_s": out3["eval_s"],
                                   "model_steps": out3["model_steps"], "timers": per_member_timers}}


# ----------------------------------------------------------------------------- orchestration


class Tee:
    def __init__(self, path: Path | None):
        self.f = open(path, "w") if path else None

    def __call__(self, *parts, end="\n"):
        s = " ".join(str(p) for p in parts) + end
        sys.stdout.write(s)
        sys.stdout.flush()
        if self.f:
            self.f.write(s)
            self.f.flush()


def run_part(name: str, cfg: dict, work: Path, out: Tee) -> dict | None:
    cfg_path, res_path = work / f"{name}.cfg.json", work / f"{name}.result.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = work / f"{name}.log"
    la = os.getloadavg()
    out(f"# [{time.strftime('%H:%M:%S')}] {name}: starting (load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}) "
        f"— subprocess log {log}")
    t0 = time.perf_counter()
    with open(log, "w") as lf:
        rc = subprocess.call([sys.executable, __file__, "--part", name, "--cfg", str(cfg_path),
                              "--result", str(res_path)], cwd=str(work), env=env, stdout=lf, stderr=lf)
    la = os.getloadavg()
    out(f"# [{time.strftime('%H:%M:%S')}] {name}: exit {rc} after {time.perf_counter() - t0:.1f} s "
        f"(load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f})")
    if rc != 0 or not res_path.exists():
        tail = log.read_text().splitlines()[-40:]
        out("# " + name + " FAILED; log tail:\n" + "\n".join("#   " + t for t in tail))
        return None
    return json.loads(res_path.read_text())


def summarize(r: dict) -> dict:
    slots = min(NUM_CPUS, r["trials"])
    busy = r["train_s"] + r["eval_s"]
    cap = r["wall_s"] * slots
    return {
        "slots": slots,
        "mph": r["members"] / r["wall_s"] * 3600,
        "meph": r["member_epochs"] / r["wall_s"] * 3600,
        "share": 1 - busy / cap,
        "overhead_s": r["wall_s"] - busy / slots,
        "per_member_ms": (cap - busy) / max(1, r["members"]) * 1000,
        "in_trial_other": r["in_trial_s"] - busy,
        "outside_trials": cap - r["in_trial_s"],
        "concurrency": r["in_trial_s"] / r["wall_s"],
        "epochs_per_member": r["member_epochs"] / max(1, r["members"]),
        "train_per_member_s": busy / max(1, r["members"]),
        "in_unit_share": 1 - busy / max(1e-9, r["in_trial_s"]),
        "bound_share": schedule_bound(r, slots),
    }


def schedule_bound(r: dict, slots: int) -> float:
    """The smallest outside-training share any schedule of these units could reach: no
    start-up, no drain, perfect packing, so the units' phase lasts max(longest unit,
    Σ units / slots). A study whose one unit is over 1/slots of the work cannot do better
    than this, whatever runs it (`per_trial` elapsed times as measured)."""
    times = [u["elapsed_s"] for u in r.get("per_trial") or []]
    if not times:
        return float("nan")
    makespan = max(max(times), sum(times) / slots)
    return 1 - (r["train_s"] + r["eval_s"]) / (slots * makespan)


def large_args(a) -> argparse.Namespace | None:
    """The options of the large-member study: ``--large`` overrides on top of the others."""
    if not a.large:
        return None
    out = argparse.Namespace(**vars(a))
    for item in a.large.split(","):
        k, v = item.split("=", 1)
        setattr(out, k, v.replace(":", ",") if k in ("budgets", "families") else int(v))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=512, help="dlor-scale members (rounded up to whole cells)")
    ap.add_argument("--baseline-members", type=int, default=48, help="baseline subset (round-robin over cells)")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--warmup-epochs", type=int, default=30, help="median pruner n_warmup_steps (epochs)")
    ap.add_argument("--cohort-size", type=int, default=16)
    ap.add_argument("--families", default="dense,dlor_deep")
    ap.add_argument("--budgets", default="150,300,600,1200")
    ap.add_argument("--n-train", type=int, default=256, help="teacher training points (full batch)")
    ap.add_argument("--large", default="members=256,epochs=2000,n_train=2048,report_every=50,warmup_epochs=400",
                    help="the second dlor-scale study, of members that train ≥ 1 s each: overrides of the "
                         "options above (k=v, budgets/families ':'-separated); '' skips it")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: dlor,dlor_large,baseline,anatomy")
    ap.add_argument("--anatomy-cell", default="dense@300", help="cell whose unit the anatomy part profiles")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (stores, logs)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/*")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.part:  # child process: run one system, write its result JSON
        cfg = json.loads(Path(a.cfg).read_text())
        fn = {"dlor": part_dlor, "dlor_large": part_dlor, "baseline": part_baseline,
              "anatomy": part_anatomy}[a.part]
        Path(a.result).write_text(json.dumps(fn(cfg), indent=1))
        return

    import yaml

    from dlor_scale.plan import make_plan
    from dlor_scale.spec import load_study

    results_dir = ROOT / "benchmarks" / "results"
    out = Tee(None if a.no_write else results_dir / "study_overhead.txt")
    work = Path(tempfile.mkdtemp(prefix="study-overhead-", dir="/tmp"))
    spec = study_spec(a, work / "runs")
    spec_path = work / "study.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(spec_path)
    plan = make_plan(study)
    large = large_args(a)
    if large is not None:
        spec_l = study_spec(large, work / "runs-large")
        spec_l["name"] = "study-overhead-large"
        spec_path_l = work / "study-large.yaml"
        spec_path_l.write_text(yaml.safe_dump(spec_l, sort_keys=False))
        plan_l = make_plan(load_study(spec_path_l))

    import mlflow
    import optuna
    import ray
    import torch
    t_all = time.perf_counter()
    la = os.getloadavg()
    out(f"# study_overhead  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
        f"{os.cpu_count()} CPUs  python {platform.python_version()}")
    out(f"# torch {torch.__version__}  ray {ray.__version__}  optuna {optuna.__version__}  "
        f"mlflow {mlflow.__version__}")
    out(f"# load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}  (shared box: other users' jobs "
        f"compete for the {os.cpu_count()} cores; both systems see the same kind of noise)")
    out(f"# args: {' '.join(sys.argv[1:]) or '(defaults)'}")
    out(f"# work dir: {work}" + ("" if a.keep else " (removed at the end; --keep keeps it)"))
    out("#")
    out(f"# study: {len(plan.cells)} cells × {study.trials_per_cell} trials = {plan.total_members} members; "
        f"teacher 4→[16]→1 (n_train {a.n_train}, full batch), {study.epochs} epochs, report every "
        f"{study.report_every}, TPE(n_startup 10) + MedianPruner(n_startup 4, warmup {a.warmup_epochs} epochs)")
    out(f"# {'cell':<16} {'shape':<30} {'params':>6}")
    for c in plan.cells:
        sp = c.shapes[0]
        out(f"# {c.key:<16} {sp.shape.label():<30} {sp.n_params:>6}")
    if large is not None:
        out(f"# large-member study (dlor_large): {len(plan_l.cells)} cells × {plan_l.cells[0].trials} trials = "
            f"{plan_l.total_members} members; n_train {large.n_train}, {large.epochs} epochs, report every "
            f"{large.report_every}, MedianPruner warmup {large.warmup_epochs} epochs; "
            + ", ".join(f"{c.key} {c.shapes[0].shape.label()}" for c in plan_l.cells))
    out("#")
    out("# what each side had (same Ray: ray.init(num_cpus=2, include_dashboard=False, own _temp_dir,")
    out("#   log_to_driver=False), RAY_AUTH_MODE=disabled, 1 CPU per trial, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1")
    out("#   for BOTH — it only drops Tune's CSV/JSON/TBX loggers (ray/tune/utils/callback.py) and leaves")
    out("#   MLflowLoggerCallback untouched, so giving it to the baseline too is the fair choice):")
    out(f"#  dlor-scale: launch(fit=False), cohort_size {study.cohort_size}, {len(plan.cells)} Tune trials; "
        f"MLflow sqlite + Optuna journal (defaults),")
    out("#    checkpoint every 5 report rounds, one MLflow run per member + study/cell parents.")
    out(f"#  baseline: one Tune trial per member (Member + torch.optim.AdamW, 1 torch thread), "
        f"OptunaSearch(TPE, in-memory),")
    out(f"#    MedianStoppingRule(training_iteration, grace {max(1, a.warmup_epochs // a.report_every)} reports, "
        f"min_samples 4), MLflowLoggerCallback(sqlite, MLflow's default journal), reuse_actors=True,")
    out("#    max_concurrent_trials=2, no checkpoints; cells round-robin by Optuna trial number "
        "(one TPE study for all cells).")
    out("#")

    cfg = {"spec_path": str(spec_path), "work": str(work), "baseline_members": a.baseline_members,
           "anatomy_cell": a.anatomy_cell}
    res, anatomy = {}, None
    skip = set(filter(None, a.skip.split(",")))
    for name in ("dlor", "dlor_large", "baseline", "anatomy"):
        if name in skip or (name == "dlor_large" and large is None):
            continue
        cfg["ray_tmp"] = f"/tmp/so-{name[:2]}-{uuid.uuid4().hex[:6]}"
        try:
            r = run_part(name, {**cfg, "spec_path": str(spec_path_l)} if name == "dlor_large" else cfg,
                         work, out)
        finally:
            shutil.rmtree(cfg["ray_tmp"], ignore_errors=True)
        if r is not None and name == "anatomy":
            anatomy = r
            out(f"# anatomy raw: " + json.dumps(r))
        elif r is not None:
            res[name] = r
            out(f"# {name} raw: " + json.dumps({k: v for k, v in r.items() if k != "per_trial"}))

    out("#")
    for dk in ("dlor", "dlor_large"):
        if dk not in res:
            continue
        r = res[dk]
        out(f"# {dk} per unit (seconds): unit, elapsed, train, eval, member-epochs, completed/pruned/diverged")
        for u in sorted(r["per_trial"], key=lambda u: -u["elapsed_s"]):
            out(f"#   {u['unit']:<28} {u['elapsed_s']:7.1f} {u['train_s']:7.1f} {u['eval_s']:6.1f} "
                f"{u['model_steps']:7d}  {u['completed']}/{u['pruned']}/{u['diverged']}")
        ok = (r["mlflow_member_runs"] == r["members"] == r["mlflow_complete"] == r["mlflow_unique_keys"]
              and r["parked"] == 0)
        out(f"# {dk} check: {r['mlflow_member_runs']} MLflow member runs ({r['mlflow_complete']} complete, "
            f"{r['mlflow_unique_keys']} unique keys) for {r['members']} members; Optuna {r['optuna_states']}; "
            f"parked {r['parked']} -> {'OK' if ok else 'MISMATCH'}")
    if "baseline" in res:
        r = res["baseline"]
        out(f"# baseline check: {r['trials']} trials, {r['errors']} errors, {r['mlflow_runs']} MLflow runs, "
            f"{r['mlflow_metric_keys']} metric keys per run, MLflow sqlite journal_mode={r['mlflow_journal_mode']}; "
            f"members per cell {r['cells']}")
    out("#")

    names = {"dlor": "dlor-scale, tiny members", "dlor_large": "dlor-scale, large members",
             "baseline": "hand-wired Tune+OptunaSearch+MLflowLoggerCallback"}
    sm = {k: summarize(v) for k, v in res.items()}
    both = "dlor" in sm and "baseline" in sm
    ratio = sm["dlor"]["mph"] / sm["baseline"]["mph"] if both else None
    eratio = sm["dlor"]["meph"] / sm["baseline"]["meph"] if both else None
    hdr = (f"{'system':<52} {'members':>7} {'wall s':>8} {'members/h':>10} {'ratio':>6} "
           f"{'outside-train':>13} {'epochs/mbr':>10} {'mbr-epochs/h':>12} {'ratio':>6} {'train s/mbr':>11}")
    out(hdr)
    out("-" * len(hdr))
    for k, r in res.items():
        s = sm[k]
        rt = "1.0" if k == "baseline" else (f"{ratio:.1f}" if ratio and k == "dlor" else "-")
        ert = "1.0" if k == "baseline" else (f"{eratio:.1f}" if eratio and k == "dlor" else "-")
        out(f"{names[k]:<52} {r['members']:>7} {r['wall_s']:>8.1f} {s['mph']:>10.0f} {rt:>6} "
            f"{s['share'] * 100:>12.1f}% {s['epochs_per_member']:>10.1f} {s['meph']:>12.0f} {ert:>6} "
            f"{s['train_per_member_s']:>11.2f}")
    steady = {}
    for k, r in res.items():
        tl = r.get("timeline") or {}
        if tl:
            steady[k] = (r["members"] / (r["wall_s"] - tl["before_first_trial_s"]) * 3600, tl["before_first_trial_s"])
    if "dlor" in steady and "baseline" in steady:
        out(f"after the first trial starts (start-up before it: dlor-scale {steady['dlor'][1]:.1f} s, baseline "
            f"{steady['baseline'][1]:.1f} s): dlor-scale {steady['dlor'][0]:.0f} members/h, baseline "
            f"{steady['baseline'][0]:.0f} members/h, ratio {steady['dlor'][0] / steady['baseline'][0]:.1f}x")
    out("")
    out("Definitions:")
    out("  wall s         seconds of the driver call (launch() / tuner.fit()); Ray start/stop excluded, listed below")
    out("  members/h      members finished (completed + pruned/stopped) per hour of wall; ratio = dlor-scale / baseline")
    out("  outside-train  1 − (Σ train_s + Σ eval_s) / (wall × slots); slots = min(2 CPUs / 1 CPU per trial, trials) = 2;")
    out("                 train_s = seconds inside training epochs, eval_s = computing val/test metrics, summed over trials")
    out("  mbr-epochs/h   member-epochs trained per hour (normalises for the two pruners stopping members at different epochs)")
    out("")
    for k, r in res.items():
        s = sm[k]
        slots, cap, busy = s["slots"], r["wall_s"] * s["slots"], r["train_s"] + r["eval_s"]
        tl = r.get("timeline") or {}
        out(f"{names[k]}:")
        out(f"  driver wall minus training: {r['wall_s']:.1f} s − Σ(train+eval)/slots {busy / slots:.1f} s "
            f"= {s['overhead_s']:.1f} s ({s['overhead_s'] / r['wall_s'] * 100:.1f}% of wall); "
            f"{s['per_member_ms']:.0f} ms of slot time per member outside training")
        if tl:
            window = r["wall_s"] - tl["before_first_trial_s"] - tl["after_last_trial_s"]
            parts = [
                ("train (inside training epochs)", r["train_s"]),
                ("eval (val/test metrics)", r["eval_s"]),
                ("in-trial other (search, tracking, reports, setup after t0)", r["in_trial_s"] - busy),
                ("trial start-up (actor, imports, data, store clients)", tl["trial_span_s"] - r["in_trial_s"]),
                ("idle slots while trials run (tail, scheduling gaps)", slots * window - tl["trial_span_s"]),
                ("before the first trial starts" + (f" (stores {tl['stores_s']:.1f} s + Tune start)"
                                                     if "stores_s" in tl else " (Tune start)"),
                 slots * tl["before_first_trial_s"]),
                ("after the last trial ends", slots * tl["after_last_trial_s"]),
            ]
            out(f"  slot-seconds = wall × {slots} = {cap:.1f}:")
            for label, v in parts:
                out(f"    {label:<66} {v:8.1f} s  {v / cap * 100:5.1f}%  {v / max(1, r['members']) * 1000:7.0f} ms/member")
            out(f"  trials in flight at most {tl['peak_concurrency']} (driver view); mean concurrency inside "
                f"trials {s['concurrency']:.2f}")
        out(f"  Ray init {r['ray_init_s']:.1f} s, shutdown {r['ray_shutdown_s']:.1f} s (not in wall); "
            f"load average at start/end of the call {r['load_during'][0][0]:.2f} / {r['load_during'][1][0]:.2f}")
        st = r["states"]
        if k != "baseline":
            out(f"  states: {st['completed']} completed, {st['pruned']} pruned, {st['diverged']} diverged, "
                f"{st['failed']} failed")
        else:
            out(f"  states: {st['completed']} ran all epochs, {st['stopped']} stopped by MedianStoppingRule, "
                f"{st['no_report']} without a report")
    if anatomy:
        sm_ = anatomy["summary"]
        n = sum(int(sm_.get(x, 0)) for x in ("completed", "pruned", "diverged", "failed"))
        out("")
        out(f"anatomy of one dlor-scale unit, in-process without Ray ({anatomy['unit']}, {n} members, "
            f"{sm_.get('model_steps', 0)} member-epochs): wall {anatomy['wall_s']:.1f} s, train {sm_['train_s']:.1f} s, "
            f"eval {sm_['eval_s']:.1f} s")
        out(f"    {'component':<58} {'calls':>6} {'seconds':>8} {'ms/call':>8} {'ms/member':>9}")
        for label, (calls, secs) in anatomy["timers"].items():
            out(f"    {label:<58} {calls:>6} {secs:>8.2f} {secs / max(1, calls) * 1000:>8.1f} "
                f"{secs / max(1, n) * 1000:>9.1f}")
        out(f"    (nested: journal appends happen inside ask/report/tell; record_run is the driver's drain after the "
            f"unit: {anatomy.get('drain_s', 0.0):.2f} s, not part of the unit's wall)")
        nm = anatomy["no_mlflow"]
        per_live = sm_["train_s"] / max(1, sm_["model_steps"])
        per_stub = nm["train_s"] / max(1, nm["model_steps"])
        out(f"  same unit with member records not parked (fresh stores, run first): wall {nm['wall_s']:.1f} s, "
            f"train {nm['train_s']:.1f} s, eval {nm['eval_s']:.1f} s ({nm['model_steps']} member-epochs) -> parking "
            f"adds {anatomy['wall_s'] - nm['wall_s']:.1f} s to the unit and changes train_s "
            f"{per_live / max(1e-12, per_stub):.2f}x per member-epoch ({per_live * 1e3:.3f} vs {per_stub * 1e3:.3f} ms)")
        pm = anatomy.get("per_member_reports")
        if pm:
            out(f"  side by side, the previous Optuna write pattern (one journal append per member per read step; "
                f"fresh stores, MLflow on): wall {pm['wall_s']:.1f} s vs {anatomy['wall_s']:.1f} s batched per round")
            for label, (calls, secs) in pm["timers"].items():
                c2, s2 = anatomy["timers"].get(label, [0, 0.0])
                out(f"    {label:<58} {calls:>6} calls {secs:>7.2f} s  ->  batched {c2:>6} calls {s2:>7.2f} s")
        out(f"  pruned members: {anatomy['pruned']}, of which {anatomy['pruned_at_final_epoch']} were pruned at the "
            f"final report, after training all epochs")
    la = os.getloadavg()
    out("")
    out(f"# load average at end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; benchmark total {time.perf_counter() - t_all:.0f} s")

    goals = []
    if both:
        goals.append(f"members/h ratio ≥ 10× -> {ratio:.1f}× {'MET' if ratio >= 10 else 'MISSED'}")
    if "dlor" in sm:
        v = sm["dlor"]["share"]
        goals.append(f"tiny members ({sm['dlor']['train_per_member_s']:.2f} s training each) outside-training "
                     f"≤ 25% -> {v * 100:.1f}% {'MET' if v <= 0.25 else 'MISSED'}")
    if "dlor_large" in sm:
        v, tpm = sm["dlor_large"]["share"], sm["dlor_large"]["train_per_member_s"]
        goals.append(f"large members ({tpm:.2f} s training each{'' if tpm >= 1 else ', UNDER the 1 s the goal asks'}) "
                     f"outside-training ≤ 5% -> {v * 100:.1f}% {'MET' if v <= 0.05 else 'MISSED'} "
                     f"(the best any schedule of its units could do on {sm['dlor_large']['slots']} slots: "
                     f"{sm['dlor_large']['bound_share'] * 100:.1f}%)")
    for k in ("dlor", "dlor_large"):
        if k in sm:
            goals.append(f"{names[k]}: outside training inside units (after start-up) "
                         f"{sm[k]['in_unit_share'] * 100:.1f}% (not a goal; shows what start-up adds)")
    if goals:
        out("")
        out("targets: " + "; ".join(goals))

    if both and not a.no_write:
        d, b = res["dlor"], res["baseline"]
        loads = [x[0] for r in res.values() for x in r["load_during"]]
        md = [
            "### Study overhead: dlor-scale vs hand-wired Ray Tune + OptunaSearch + MLflowLoggerCallback",
            "",
            ("`python benchmarks/study_overhead.py " + " ".join(sys.argv[1:])).rstrip() + "` "
            f"({time.strftime('%Y-%m-%d')}; shared 2-core CPU box, 1-min load average {min(loads):.1f}–{max(loads):.1f} "
            f"during the runs; embedded Ray `num_cpus=2`, 1 CPU per trial). Same cells, data, search space, "
            f"{study.epochs} full-batch epochs, val report every {study.report_every}. "
            "Raw output: [results/study_overhead.txt](results/study_overhead.txt).",
            "",
            "| system | members | wall s | members/h | ratio | outside-training share | epochs/member | "
            "member-epochs/h | ratio | training s/member |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k in ("dlor", "dlor_large", "baseline"):
            if k not in res:
                continue
            r, sk = res[k], sm[k]
            rt = f"**{ratio:.1f}×**" if k == "dlor" else "1×" if k == "baseline" else "—"
            ert = f"{eratio:.1f}×" if k == "dlor" else "1×" if k == "baseline" else "—"
            if k == "dlor":
                label = (f"dlor-scale, tiny members ({len(plan.cells)} cells × {study.trials_per_cell}, cohorts of "
                         f"{study.cohort_size}, {r['trials']} Tune trials)")
            elif k == "dlor_large":
                label = (f"dlor-scale, large members ({len(plan_l.cells)} cells × {plan_l.cells[0].trials}, "
                         f"n_train {large.n_train}, {large.epochs} epochs; {r['trials']} Tune trials)")
            else:
                label = (f"baseline (1 Tune trial per member; subset of {r['members']}, "
                         f"{r['members'] // len(plan.cells)} per cell)")
            md.append(f"| {label} | {r['members']} | {r['wall_s']:.0f} | {sk['mph']:.0f} | {rt} | "
                      f"{sk['share'] * 100:.1f}% | {sk['epochs_per_member']:.0f} | {sk['meph']:.0f} | {ert} | "
                      f"{sk['train_per_member_s']:.2f} |")
        md += [
            "",
            "- Goals: " + "; ".join(goals) + ".",
            (f"- Excluding the start-up before the first trial starts (dlor-scale {steady['dlor'][1]:.0f} s, baseline "
             f"{steady['baseline'][1]:.0f} s): {steady['dlor'][0]:.0f} vs {steady['baseline'][0]:.0f} members/h, "
             f"{steady['dlor'][0] / steady['baseline'][0]:.1f}×.") if "dlor" in steady and "baseline" in steady else "",
            "- wall = the driver call (`launch(fit=False)` / `tuner.fit()`), Ray start/stop excluded for both; "
            "outside-training share = 1 − (Σ train_s + Σ eval_s) / (wall × 2 slots); training s/member = "
            "(Σ train_s + Σ eval_s) / members (slot-seconds: cohort members share a unit's training time).",
            "- Both: same Ray settings, `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1` (it does not touch "
            "`MLflowLoggerCallback`), MLflow in SQLite. Baseline: `OptunaSearch` (TPE, in-memory), "
            "`MedianStoppingRule`, `MLflowLoggerCallback`, `reuse_actors=True`, no checkpoints. dlor-scale: "
            "per-cell TPE + median pruner in the Optuna journal, member records parked by units and written to MLflow by the driver, checkpoints.",
        ]
        for k, what in (("dlor", "tiny"), ("dlor_large", "large")):
            r = res.get(k)
            t = (r or {}).get("timeline") or {}
            if not t:
                continue
            c, bz = r["wall_s"] * sm[k]["slots"], r["train_s"] + r["eval_s"]
            pct = lambda x: f"{x / c * 100:.1f}%"  # noqa: E731
            idle = sm[k]["slots"] * (r["wall_s"] - t["before_first_trial_s"] - t["after_last_trial_s"]) - t["trial_span_s"]
            md.append(
                f"- Where the {what}-member study's {(c - bz) / c * 100:.1f}% goes (of wall × {sm[k]['slots']}): "
                f"{pct(r['in_trial_s'] - bz)} bookkeeping inside units (Optuna journal + TPE, parking member records, "
                f"waiting for a core), {pct(sm[k]['slots'] * t['before_first_trial_s'])} before the first unit starts "
                f"(stores {t['stores_s']:.1f} s + Ray Tune start {t['before_first_trial_s'] - t['stores_s']:.1f} s), "
                f"{pct(t['trial_span_s'] - r['in_trial_s'])} unit start-up, {pct(idle)} slots idle while units run "
                f"(the tail: the longest unit {max(u['elapsed_s'] for u in r['per_trial']):.0f} s of "
                f"{sum(u['elapsed_s'] for u in r['per_trial']):.0f} s in all; no schedule of these units "
                f"on {sm[k]['slots']} slots gets below {sm[k]['bound_share'] * 100:.1f}%), "
                f"{pct(sm[k]['slots'] * t['after_last_trial_s'])} after the last unit ends (the driver's final MLflow drain).")
        if anatomy:
            nm = anatomy["no_mlflow"]
            sa = anatomy["summary"]
            pl = sa["train_s"] / max(1, sa["model_steps"])
            ps = nm["train_s"] / max(1, nm["model_steps"])
            n_an = sum(int(sa.get(x, 0)) for x in ("completed", "pruned", "diverged", "failed"))
            md.append(
                f"- Member records leave the trial (units only park them; the driver writes them): one {n_an}-member "
                f"unit in-process took {pl / ps:.2f}× the train time per member-epoch with its records parked vs not "
                f"parked at all (unit wall {anatomy['wall_s']:.1f} s vs {nm['wall_s']:.1f} s); the driver's MLflow "
                f"writes of its records took {anatomy.get('drain_s', 0.0):.1f} s outside the unit.")
            pm = anatomy.get("per_member_reports")
            if pm:
                key = "optuna journal append (lock+write+fsync)"
                c1, s1 = pm["timers"].get(key, [0, 0.0])
                c2, s2 = anatomy["timers"].get(key, [0, 0.0])
                md.append(
                    f"- Optuna writes, side by side on that unit (fresh stores, MLflow on): the previous pattern (one "
                    f"journal append per member per read step) {c1} appends, {s1:.1f} s, unit wall {pm['wall_s']:.1f} s; "
                    f"one append per report round {c2} appends, {s2:.1f} s, unit wall {anatomy['wall_s']:.1f} s.")
        md.append("")
        (results_dir / "study_overhead.md").write_text("\n".join(md) + "\n")

    if a.keep:
        out(f"# kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
