"""The body of one Ray Tune trial: train one cohort unit and record its members.

A *unit* is one (cell, shape) of the search phase, or one (cell, shape) group of
confirmation runs. It is resumable on its own: progress lives in the study's
storage (Optuna trials, a ledger of finished confirmation members, an atomic cohort
checkpoint file), never only in this process, so a retried or relaunched unit
continues where the last attempt stopped and trains nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .cohort import Cohort, MemberResult, MemberSpec, in_flight_best_vals
from .context import RunContext
from .models import Shape, count_params
from .run_schema import FINISHED_STATES, HPARAMS, Kind, Metric, Param, Tag, state_counts
from .studydir import StudyDir, UnitFiles, atomic_write_bytes
from .tracking import Tracker

log = logging.getLogger(__name__)

_DATA_CACHE: dict[str, object] = {}


class Heartbeat:
    """Writes `<study>/heartbeats/<unit>.json` every few seconds while a unit trains.

    Why: Ray notices a dead node in ~15 s (GCS health checks) and retries the unit,
    but people (and `dlor-scale status`) also need to see which units are alive; a
    heartbeat older than 30 s marks a unit as dead.
    """

    def __init__(self, path: Path, info: dict, every: float = 5.0):
        import threading
        self.path, self.info, self.every = path, info, every
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def _loop(self):
        while True:
            try:
                atomic_write_bytes(self.path, json.dumps({**self.info, "ts": time.time()}).encode())
            except OSError:
                pass
            if self.stop_event.wait(self.every):
                return

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        self.path.unlink(missing_ok=True)


def node_id() -> str:
    """Ray node id when running under Ray, else the host name."""
    try:
        import ray
        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    import socket
    return socket.gethostname()


def dataset_for(study, base_dir: Path):
    """Build the study's dataset once per worker process (actors are reused)."""
    from .targets import make_dataset
    key = study.spec_hash()
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = make_dataset(study.target, base_dir)
    return _DATA_CACHE[key]


def member_record(ctx: RunContext, unit: dict, shape: Shape, result: MemberResult, *,
                  optuna_trial: int | None, settings: dict) -> dict:
    """Everything MLflow keeps about one member, keyed for exactly-once writes."""
    spec: MemberSpec = result.spec
    study = ctx.study
    counts = count_params(shape)
    params = {
        **{k: getattr(spec, k) for k in HPARAMS}, **{f"{Param.HP_PREFIX}{k}": v for k, v in spec.extra.items()},
        Param.LABEL: unit["label"], Param.BUDGET: unit["budget"], Param.SEED: spec.seed,
        **shape.describe(), **counts.as_params(),
        Param.EPOCHS: study.epochs, Param.BATCH_SIZE: study.batch_size, Param.REPORT_EVERY: study.report_every,
        Param.METRIC: study.metric, Param.THRESHOLD: study.threshold,
        **{f"{Param.TRAIN_PREFIX}{k}": v for k, v in settings.items()},
    }
    tags = {
        Tag.STATE: result.state, Tag.STUDY: study.name, Tag.CELL: unit["cell"],
        Tag.FAMILY: shape.family, Tag.LABEL: unit["label"], Tag.BUDGET: unit["budget"],
        Tag.PHASE: unit["phase"], Tag.UNIT: unit["id"], Tag.COHORT_ID: unit["id"],
        Tag.SPEC_HASH: ctx.spec_hash, Tag.CODE_VERSION: ctx.code_version, Tag.SEED: spec.seed,
        Tag.OPTUNA_STUDY: unit["optuna_study"],
    }
    if optuna_trial is not None:
        tags[Tag.OPTUNA_TRIAL] = optuna_trial
    if "confirm_of" in spec.extra:
        tags[Tag.CONFIRM_OF] = spec.extra["confirm_of"]
    finals = {Metric.TEST_ERROR: result.test_error, Metric.BEST_VAL: result.best_val,
              Metric.WALL_TIME_S: result.wall_time_s, Metric.EPOCHS_TRAINED: result.epochs,
              Metric.BEST_EPOCH: result.best_epoch, Metric.STOPPED_EARLY: float(result.stopped_early),
              Metric.UNDERTRAINED: float(result.undertrained), Metric.BASELINE_VAL: result.baseline_val}
    edge = lr_edge(spec.lr, study.search_space.get("lr"))
    if edge:
        tags[Tag.LR_EDGE] = edge
    if result.stopped_early:
        tags[Tag.STOPPED_EARLY] = "1"
    if result.epochs_to_threshold is not None:
        finals[Metric.EPOCHS_TO_THRESHOLD] = result.epochs_to_threshold
    return {
        "key": f"{study.name}/{result.key}", "name": result.key.replace("/", " "), "kind": Kind.MEMBER,
        "parent_id": ctx.cell_runs[unit["cell"]], "params": params, "tags": tags,
        "curves": {Metric.TRAIN_LOSS: list(result.train_loss), Metric.VAL_ERROR: list(result.val_error)},
        "finals": finals, "status": "FINISHED" if result.state in FINISHED_STATES else "FAILED",
        "end_time": int(time.time() * 1000),   # written later by the driver: the run's times are these
    }


def lr_edge(lr: float, dist, frac: float = 0.05) -> str:
    """'low'/'high' when ``lr`` sits in the bottom/top ``frac`` of its search range (log
    scale if the range is), else ''. A best member there says the range cut the optimum off."""
    import math
    get = dist.get if isinstance(dist, dict) else (lambda k: getattr(dist, k, None))
    if get("low") is None or get("high") is None:
        return ""
    lo, hi = float(get("low")), float(get("high"))
    if get("log"):
        lo, hi, lr = math.log(lo), math.log(hi), math.log(lr)
    if hi <= lo:
        return ""
    t = (lr - lo) / (hi - lo)
    return "low" if t <= frac else "high" if t >= 1 - frac else ""


def run_unit(ctx: RunContext, unit: dict, report=None) -> dict:
    """Train one unit to completion (resuming if needed); returns its state counts.

    `report(dict)` receives progress after every finished member (Tune's report when
    run under Ray; None when called directly, e.g. in tests).
    """
    import optuna

    from .search import FixedSource, OptunaSource
    from .storages import db_retry, storage

    study, study_dir = ctx.study, ctx.study_dir
    files = UnitFiles(study_dir, unit["id"])
    done = files.read_done()
    if done is not None:
        return done
    files.clean_tmp()
    torch.set_num_threads(max(1, ctx.threads))
    data = dataset_for(study, ctx.base_dir)
    shape = Shape(**unit["shape"])
    # Member records are only parked here (durably); the driver's `OutboxDrainer` writes
    # them to MLflow, so no MLflow traffic competes with this trial's training.
    tracker = Tracker(ctx.tracking_uri, study.name, outbox=files.outbox)
    resume = files.load_checkpoint()
    in_flight_keys = {m["spec"]["key"] for m in resume["members"] if m is not None} if resume else set()
    settings: dict = {}
    t0 = time.time()
    progress = {"unit": unit["id"], "cell": unit["cell"], **state_counts()}
    # Member states over *all* attempts of the unit (the ledger), so a resumed unit
    # reports (and its done marker sums) every member, not only this attempt's.
    states = files.ledger_states()

    def publish(result: MemberResult):
        files.append_ledger(result.key, result.state)
        states[result.key] = result.state
        progress.update(state_counts(states.values()))
        if report is not None:
            report({**progress, "elapsed_s": time.time() - t0, "done": False})

    progress.update(state_counts(states.values()))

    if unit["phase"] == "search":
        ostudy = db_retry(lambda: optuna.load_study(
            study_name=unit["optuna_study"], storage=storage(ctx.optuna_storage),
            sampler=_sampler(study, unit), pruner=_pruner(study),
        ), "load the Optuna study")
        # running best val of members resumed mid-training (pruners judge best-so-far)
        resume_best = in_flight_best_vals(resume) if resume else None

        def on_result(result: MemberResult, number: int, fresh: bool):
            tracker.park(member_record(ctx, unit, shape, result, optuna_trial=number, settings=settings),
                         fresh=fresh)
            publish(result)

        in_flight = {int(k.rsplit("/t", 1)[1]) for k in in_flight_keys}
        source = OptunaSource(ostudy, unit=unit["id"], cell_key=unit["cell"], space=study.search_space,
                              quota=unit["quota"], base_seed=study.seed, in_flight=in_flight,
                              final_epoch=study.epochs, on_result=on_result, resume_best=resume_best,
                              scope=unit.get("scope"))
    else:
        members = [MemberSpec(**m) for m in unit["members"]]

        def on_result(result: MemberResult):
            tracker.park(member_record(ctx, unit, shape, result, optuna_trial=None, settings=settings))
            publish(result)

        source = FixedSource(members, skip=files.finished_keys() | in_flight_keys, on_result=on_result)

    slots = unit["slots"]
    if study.cohort_size == "auto":  # the plan's rule, with this worker's device and memory
        from .plan import study_slots
        slots = study_slots(study, shape, unit.get("quota") or len(unit.get("members", [])),
                            n_train=len(data.x_train))
    settings["slots"] = slots
    cohort = Cohort(shape, data, slots=slots, epochs=study.epochs, report_every=study.report_every,
                    batch_size=study.batch_size, metric=study.metric, threshold=study.threshold,
                    device=ctx.device, compile=study.compile, precision=study.precision,
                    schedule=study.schedule, lr_floor=study.lr_floor,
                    patience=study.early_stopping.patience if study.early_stopping else None,
                    min_delta=study.early_stopping.min_delta if study.early_stopping else 0.0,
                    **_finish_kwargs(study, unit["phase"]))
    settings.update(getattr(cohort, "settings", {}) or {})
    node = node_id()
    beat = Heartbeat(StudyDir(study_dir).heartbeat(unit["id"]),
                     {"unit": unit["id"], "node": node, "pid": os.getpid()})
    with beat:
        cohort.run(source, checkpoint_every=study.checkpoint_every, on_checkpoint=files.save_checkpoint,
                   resume=resume)
    if unit["phase"] == "search":
        progress.update(source.unit_counts())
        progress.update(state_counts(source.member_states(states).values()))
    out = {**progress, "elapsed_s": time.time() - t0, "node": node,
           "resumed": resume is not None,
           "train_s": cohort.stats.get("train_s", 0.0), "eval_s": cohort.stats.get("eval_s", 0.0),
           "model_steps": cohort.stats.get("model_steps", 0)}
    if files.notes:
        out["notes"] = list(files.notes)
    files.write_done(out)   # every member's record is parked: the driver writes it
    files.checkpoint.unlink(missing_ok=True)
    return out


def _finish_kwargs(study, phase: str) -> dict:
    """Cohort arguments of the L-BFGS finish for this phase (confirm always, search if asked)."""
    fin = study.finish
    if fin is None or (phase == "search" and not fin.search):
        return {}
    return {"finish_iterations": fin.iterations, "finish_history": fin.history,
            "finish_precision": fin.precision}


def _sampler(study, unit):
    from .samplers import ScopedSampler, make_sampler
    from .search import member_seed
    seed = None if study.sampler.seed is None else member_seed(study.sampler.seed, unit["id"], 0)
    sampler = make_sampler(study.sampler, seed, slots=unit.get("slots"))
    return ScopedSampler(sampler, unit["scope"]) if unit.get("scope") else sampler


def _pruner(study):
    from .pruners import make_pruner
    return make_pruner(study.pruner, epochs=study.epochs, report_every=study.report_every)


def unit_dict(**kw) -> dict:
    """Plain-dict unit description (Tune configs must be serialisable)."""
    if "shape" in kw and isinstance(kw["shape"], Shape):
        kw["shape"] = {k: v for k, v in asdict(kw["shape"]).items() if k != "extra"}
    return kw

