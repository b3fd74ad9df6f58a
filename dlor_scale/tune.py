"""Ray Tune driver: one Tune trial per cohort unit, two phases, resumable.

Why this shape: Tune is good at placing work on a cluster (resources, fractional
GPUs, retries), bad at thousands of tiny trials. So a Tune trial is a whole cohort
(one (cell, shape) of the plan); Optuna sampling and pruning happen inside it,
per cell, against the shared Optuna storage (see `search`); members' MLflow records
are parked by the trials and written, batched and keyed, by the driver (see `tracking`).

Phases: **search** (Optuna-driven members, pruned) then, if the spec asks,
**confirm** (each cell's top-k configs retrained unpruned with several seeds).
Resume is by construction: finished units leave a marker, running ones a
checkpoint, and relaunching the same study simply runs what is not done.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .context import RunContext
from .errors import DataError, DlorError, SpecError
from .plan import Plan, make_plan, study_device
from .run_schema import FINISHED_STATES, Kind, Tag
from .tracking import OutboxDrainer, Tracker, code_version, describe_fit_runs
from .units import check_same_data, scale_params
from .studydir import StudyDir, UnitFiles, atomic_write_bytes, clean_stray_tmp
from .worker import unit_dict

log = logging.getLogger(__name__)


@dataclass
class LaunchResult:
    study_dir: Path
    tracking_uri: str
    optuna_storage: str
    units: int
    counts: dict = field(default_factory=dict)
    fit: object | None = None
    experiment_id: str | None = None


# ----------------------------------------------------------------------------- context

def build_context(study, source: str, *, threads: int, data: dict | None = None) -> RunContext:
    """Everything a worker needs, but the MLflow run ids (`prepare_stores` adds them)."""
    return RunContext(
        study=study, source=source, study_dir=study.study_dir(), base_dir=Path(study.base_dir).resolve(),
        spec_hash=study.spec_hash(), code_version=code_version(), tracking_uri=study.resolved_tracking_uri(),
        optuna_storage=study.resolved_optuna_storage(), device=study_device(study), threads=threads, data=data,
    )


def search_units(study, plan: Plan) -> list[dict]:
    """One unit per (cell, shape, part). A split cell's units carry ``scope``: the units of
    their part, the only trials their sampler and pruner may see (see `search.OptunaSource`)."""
    units = []
    for cell in plan.cells:
        for part in range(cell.parts):
            ids = [search_unit_id(cell, i, part) for i in range(len(cell.shapes))]
            for i, sp in enumerate(cell.shapes):
                quota = cell.part_trials(sp)[part]
                units.append(unit_dict(
                    id=ids[i], phase="search", cell=cell.key, label=cell.label,
                    family=cell.family, budget=cell.budget, shape=sp.shape, quota=quota,
                    slots=cell.part_slots(sp, part),
                    optuna_study=cell.optuna_study_name(study.name),
                    scope=ids if cell.parts > 1 else None, cost=sp.unit_cost(quota),
                ))
    return sorted(units, key=lambda u: -u["cost"])  # longest first: shorter tail


def search_unit_id(cell, shape_index: int, part: int) -> str:
    """``search/<cell>/<shape>``, with ``/p<part>`` when the cell is split."""
    return f"search/{cell.key}/{shape_index}" + (f"/p{part}" if cell.parts > 1 else "")


def unit_shape_index(unit_id: str, cell_key: str) -> int:
    """The shape index of a search unit id (see `search_unit_id`)."""
    return int(unit_id[len(f"search/{cell_key}/"):].split("/", 1)[0])


def confirm_units(study, plan: Plan, ostorage) -> list[dict]:
    """Top-k COMPLETE trials of each cell (by best val), retrained with `seeds` seeds.

    A split cell's confirmation members are shared out over as many units as it has parts.
    A member of a split cell is seeded from its unit and its place in it (`search.SEQ_ATTR`),
    as its search member was, never from its timing-dependent trial number."""
    import optuna
    from optuna.trial import TrialState

    from .plan import split_trials
    from .search import SEQ_ATTR, member_seed, member_spec
    from .storages import db_retry
    if study.confirm is None:
        return []
    units = []
    for cell in plan.cells:
        ost = db_retry(lambda: optuna.load_study(study_name=cell.optuna_study_name(study.name),
                                                 storage=ostorage), "load the Optuna study")
        trials = db_retry(lambda: ost.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), "read trials")
        done = [t for t in trials if t.value is not None and math.isfinite(t.value)]
        best = sorted(done, key=lambda t: t.value)[: study.confirm.top_k]
        by_shape: dict[int, list] = {}
        for t in best:
            shape_idx = unit_shape_index(t.user_attrs["unit"], cell.key)
            for s in range(study.confirm.seeds):
                params = dict(t.params)
                params.update({k: v for k, v in study.search_space.items() if isinstance(v, (int, float))})
                params["confirm_of"] = t.number
                seed = (member_seed(study.seed, t.user_attrs["unit"], t.user_attrs[SEQ_ATTR], s + 1)
                        if SEQ_ATTR in t.user_attrs else member_seed(study.seed, cell.key, t.number, s + 1))
                m = member_spec(f"{cell.key}/c{t.number}s{s}", seed, params)
                by_shape.setdefault(shape_idx, []).append(m.__dict__ | {"extra": dict(m.extra)})
        for shape_idx, members in sorted(by_shape.items()):
            sp = cell.shapes[shape_idx]
            n_units = min(cell.parts, len(members))
            start = 0
            for part, n in enumerate(split_trials(len(members), n_units)):
                chunk, start = members[start:start + n], start + n
                units.append(unit_dict(
                    id=f"confirm/{cell.key}/{shape_idx}" + (f"/p{part}" if n_units > 1 else ""), phase="confirm",
                    cell=cell.key, label=cell.label, family=cell.family, budget=cell.budget, shape=sp.shape,
                    members=chunk, slots=min(len(chunk), sp.cohort_size or len(chunk)),
                    optuna_study=cell.optuna_study_name(study.name), cost=sp.unit_cost(len(chunk)),
                ))
    return sorted(units, key=lambda u: -u["cost"])


# ----------------------------------------------------------------------------- stores

def prepare_stores(ctx: RunContext, plan: Plan) -> tuple[Tracker, RunContext]:
    """Create (or find) the experiment, the study/cell runs and the per-cell Optuna studies;
    returns the tracker and ``ctx`` with the run ids."""
    import optuna

    from .storages import db_retry, storage
    study, study_dir, spec = ctx.study, ctx.study_dir, ctx.study.model_dump(mode="json")
    marker = StudyDir(study_dir).marker
    if marker.exists():
        from .spec import read_study_marker
        old = read_study_marker(marker, study.name, DlorError)
        check_same_data(old, ctx.data, study.name, study_dir)
        if old.get("spec_hash") != ctx.spec_hash:
            raise SpecError(
                f"{ctx.source}: study {study.name!r} already exists in {study_dir} with a different "
                f"spec (hash {old.get('spec_hash')} ≠ {ctx.spec_hash}); rename the study or remove the folder"
            )
    from .spec import check_study_folder
    check_study_folder(study, study_dir)   # checked again right before the folder is written
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(marker, json.dumps(
        {"name": study.name, "spec_hash": ctx.spec_hash, "source": ctx.source,
         "tracking_uri": ctx.tracking_uri, "optuna_storage": ctx.optuna_storage,
         "spec": spec, "data": ctx.data}, indent=1).encode())
    # SQLite stores keep artifacts beside the database (MLflow would use the cwd).
    art = StudyDir(study_dir).artifacts.as_uri() if ctx.tracking_uri.startswith("sqlite") else None
    tracker = Tracker(ctx.tracking_uri, study.name, outbox=StudyDir(study_dir).outbox, artifact_location=art)
    tracker.describe_experiment(
        f"dlor-scale study `{study.name}` (spec hash {ctx.spec_hash}). "
        + (f"{study.description.strip()} " if study.description.strip() else "")
        + "Runs: the study run → one run per cell (family@budget) → one run per member (`t<trial>`: search, "
          "`c<trial>s<seed>`: confirmation; pruned members say so in their name and tag `dlor.pruned`); "
          "`kind=fit` runs hold the scaling-law fits.")
    parent = tracker.get_or_create_run(study.name, name=study.name, kind=Kind.STUDY,
                                       tags={Tag.STUDY: study.name, Tag.SPEC_HASH: ctx.spec_hash,
                                             Tag.CODE_VERSION: ctx.code_version})
    existing = tracker.find_run(study.name)
    if not existing.data.params:
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in spec.items()}
        tracker.log_batch(parent, params={**flat, **scale_params(ctx.data)})
    cell_runs = {}
    ost = storage(ctx.optuna_storage)
    for cell in plan.cells:
        cell_runs[cell.key] = tracker.get_or_create_run(
            f"{study.name}/{cell.key}", name=cell.key, kind=Kind.CELL, parent_id=parent,
            tags={Tag.STUDY: study.name, Tag.CELL: cell.key, Tag.FAMILY: cell.family,
                  Tag.LABEL: cell.label, Tag.BUDGET: cell.budget})
        ostudy = db_retry(lambda: optuna.create_study(study_name=cell.optuna_study_name(study.name), storage=ost,
                                                      direction="minimize", load_if_exists=True),
                          "create the Optuna study")
        fail_orphan_trials(ostudy)
    return tracker, replace(ctx, study_run=parent, cell_runs=cell_runs)


def fail_orphan_trials(ostudy) -> int:
    """Fail RUNNING trials that no unit owns (no ``unit`` attribute: asked by a version
    that set it in a separate commit, and the connection dropped in between). No unit
    would ever resume them, so they would stay RUNNING for good. Called by the driver
    before any unit runs. Returns how many were failed."""
    import optuna
    from optuna.trial import TrialState

    from .optuna_private import trial_id
    from .search import ORPHAN_ATTR
    from .storages import db_retry
    trials = db_retry(lambda: ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), "read trials")
    orphans = [t for t in trials if "unit" not in t.user_attrs]
    for t in orphans:
        db_retry(lambda t=t: optuna.Trial(ostudy, trial_id(t)).set_user_attr(ORPHAN_ATTR, True), "tag a trial")
        db_retry(lambda t=t: ostudy.tell(t.number, state=TrialState.FAIL, skip_if_finished=True), "fail a trial")
        log.warning("Optuna trial %d of %s was RUNNING without a unit (an ask cut off by a dropped "
                    "connection); marked FAIL", t.number, ostudy.study_name)
    return len(orphans)


# ----------------------------------------------------------------------------- ray

def _init_ray(address: str | None, study_dir: Path, cpus: float | None):
    import ray
    if ray.is_initialized():
        return False
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # Unix socket paths are limited to ~107 bytes: keep Ray's temp dir short.
        tmp = Path(tempfile.gettempdir()) / f"dlor-ray-{os.getpid()}"
        ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False,
                 configure_logging=False)
    return True


def _run_phase(units: list[dict], ctx: RunContext, study, phase: str, progress) -> list[str]:
    """Run units as Tune trials; returns the ids of units that failed for good."""
    import ray
    from ray import tune

    from .worker import run_unit

    if not units:
        return []
    ctx_ref = ray.put(ctx)
    by_id = {u["id"]: u for u in units}

    def trainable(config):
        c = ray.get(ctx_ref) if isinstance(ctx_ref, ray.ObjectRef) else ctx_ref
        try:
            out = run_unit(c, by_id[config["unit"]], report=tune.report)
        except (DataError, SpecError) as exc:   # deterministic: a retry cannot help
            tune.report({"done": True, "fatal": f"{type(exc).__name__}: {exc}",
                         "fatal_exit_code": exc.exit_code})
            return
        tune.report({**out, "done": True})

    res = {"cpu": study.resources.cpu, "gpu": study.resources.gpu or 0}
    storage_path = StudyDir(ctx.study_dir).tune
    tuner = tune.Tuner(
        tune.with_resources(trainable, res),
        param_space={"unit": tune.grid_search([u["id"] for u in units])},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=None),
        run_config=tune.RunConfig(
            name=f"{phase}-{int(time.time())}", storage_path=str(storage_path), verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
            callbacks=[progress.tune_callback()] if progress else [],
        ),
    )
    # Tune prints its own tables; our progress display replaces them. Its per-trial
    # metric files are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS), so silence the
    # resulting "could not fetch metrics" warning too: results live in MLflow.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        results = tuner.fit()
    failed, fatal = [], []
    for r in results:
        for note in (r.metrics or {}).get("notes") or []:   # files a worker set aside: say so here
            log.warning("unit %s: %s", r.config["unit"], note)
        if (r.metrics or {}).get("fatal"):
            fatal.append((r.config["unit"], r.metrics["fatal"]))
        elif r.error is not None:
            failed.append(f"{r.config['unit']} ({_cause(r.error)})")
            log.error("unit %s failed: %s", r.config["unit"], r.error)
    if fatal:
        unit, msg = fatal[0]
        more = f" (and {len(fatal) - 1} more unit(s))" if len(fatal) > 1 else ""
        raise DataError(f"unit {unit} stopped on a deterministic error{more}, not retried: {msg}")
    return failed


def _cause(err) -> str:
    """The last line of a failed Tune trial's error (the exception itself, not Ray's
    wrapping traceback): what the final error line of a launch names."""
    lines = [x.strip() for x in str(err).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


# ----------------------------------------------------------------------------- launch

def launch(study, source: str, *, address: str | None = None, progress=None, fit: bool = True,
           cpus: float | None = None) -> LaunchResult:
    """Run (or continue) a study end to end. Relaunching continues where it stopped."""
    from .storages import storage

    from .spec import check_locations
    check_locations(study)   # never a system folder, a foreign folder or another kind of store
    plan = make_plan(study)
    # The data first: a deterministic data error is a DataError (exit 2) here, before any
    # folder, store or Ray exists, and is never retried by Tune. The file's sha256 is
    # pinned into the spec, so workers check they read the very bytes checked here.
    from .targets import check_study_data
    data = check_study_data(study)
    study = study.with_data_pinned(data.get("sha256"))
    address = address or study.ray_address or os.environ.get("RAY_ADDRESS") or None
    threads = max(1, int(study.resources.cpu))
    ctx = build_context(study, source, threads=threads, data=data)   # data: the file checked above
    tracker, ctx = prepare_stores(ctx, plan)
    study_dir = ctx.study_dir
    clean_stray_tmp(study_dir)   # writers killed mid-write in an earlier launch; none runs now
    units = search_units(study, plan)
    todo = [u for u in units if not UnitFiles(study_dir, u["id"]).is_done()]
    for u in units:
        if u not in todo:   # killed between its done marker and removing its checkpoint
            UnitFiles(study_dir, u["id"]).checkpoint.unlink(missing_ok=True)
    finished = not todo and (study.confirm is None or _confirm_done(study_dir))
    started_ray = False if finished else _init_ray(address, study_dir, cpus)  # nothing to run: no Ray
    # Units park their members' records; this drains them to MLflow while the phases run,
    # and completely when they end (records earlier launches left parked included).
    drainer = OutboxDrainer(Tracker(ctx.tracking_uri, study.name), StudyDir(study_dir).outbox)
    try:
        with drainer:
            if progress:
                progress.start(plan, units, study)
                progress.mark_done([u for u in units if u not in todo], study_dir)
            failed = _run_phase(todo, ctx, study, "search", progress)
            if failed:
                raise DlorError(f"{len(failed)} search unit(s) failed: {'; '.join(failed)}; "
                                f"fix the cause and relaunch to continue")
            record_cell_counts(tracker, ctx, plan)
            cunits = confirm_units(study, plan, storage(ctx.optuna_storage))
            if progress and cunits:
                progress.add_phase(cunits)
            ctodo = [u for u in cunits if not UnitFiles(study_dir, u["id"]).is_done()]
            failed = _run_phase(ctodo, ctx, study, "confirm", progress)
            if failed:
                raise DlorError(f"{len(failed)} confirmation unit(s) failed: {'; '.join(failed)}; "
                                f"fix the cause and relaunch to continue")
            StudyDir(study_dir).mark_confirm_complete()
        left = drainer.left
        if left:
            raise DlorError(f"{left} MLflow record(s) still parked in {StudyDir(study_dir).outbox}; relaunch to retry")
        close_member_runs(tracker)
    finally:
        if progress:
            progress.stop()
        if started_ray:
            import ray
            ray.shutdown()
    result = LaunchResult(study_dir, ctx.tracking_uri, ctx.optuna_storage, len(units) + len(cunits))
    result.counts = unit_totals(study_dir, units + cunits)
    result.experiment_id = tracker.experiment_id
    if fit:
        result.fit = _fit_study(study, tracker)
        close_member_runs(tracker, kind=Kind.FIT)
        describe_fit_runs(tracker)   # unidentified exponents say so in the run (tags, description, name)
    close_cell_runs(ctx, tracker, result.fit)
    tracker.finish(ctx.study_run)
    return result


def record_cell_counts(tracker: Tracker, ctx: RunContext, plan: Plan) -> None:
    """Log each cell's search counts (asked, running, completed, pruned and at which
    epochs, refilled; from Optuna, the source of truth) on its MLflow cell run, once the
    search phase is over. The driver does it, not the units: units never open MLflow.

    Step = the cell's finished trials, so the latest value is the most complete one; values
    the run already holds are not logged again (relaunching a finished study adds nothing).
    Best effort: a tracking outage must not fail a study whose members' records are safe.
    """
    import optuna

    from .run_schema import count_metrics
    from .search import cell_counts
    from .storages import db_retry, storage
    ostorage = storage(ctx.optuna_storage)
    for cell in plan.cells:
        run_id = ctx.cell_runs.get(cell.key)
        if run_id is None:
            continue
        try:
            trials = db_retry(lambda cell=cell: optuna.load_study(
                study_name=cell.optuna_study_name(ctx.study.name), storage=ostorage).get_trials(deepcopy=False),
                "read trials")
            counts = cell_counts(trials)
            step = counts["completed"] + counts["pruned"] + counts["failed"]
            have = tracker.client.get_run(run_id).data.metrics   # a relaunch logs nothing twice
            new = [(k, v, step) for k, v in count_metrics(counts).items() if have.get(k) != v]
            if new:
                tracker.log_batch(run_id, metrics=new)
        except Exception as e:  # noqa: BLE001
            log.warning("cell counts of %s not recorded: %s", cell.key, e)


def close_cell_runs(ctx: RunContext, tracker: Tracker, curves) -> None:
    """End every cell run FINISHED, tagged with its scaling point and diagnostics.

    Why tags: a cell's verdict (its point, and flags such as ``undertrained``,
    ``lr_edge:low``, ``not_trained`` that keep it out of the fit) must be visible where
    people browse — the MLflow cell run — and tags are idempotent, so a relaunch that
    closes the cells again writes nothing twice.
    """
    points: dict[str, dict] = {}
    for fc in (curves or []):
        for row in fc.points.to_pylist():
            points[f"{row.get('family', fc.family)}@{row['budget']}"] = row
    for key, run_id in ctx.cell_runs.items():
        row = points.get(key)
        tags = {Tag.FLAGS: "no point" if row is None else (row.get("flags") or "none")}
        if row is not None:
            err = row.get("error")
            tags[Tag.POINT_ERROR] = "nan" if err is None or err != err else f"{err:.6g}"
            tags[Tag.POINT_N_PARAMS] = row.get("n_params")
            if row.get("source"):
                tags[Tag.POINT_SOURCE] = str(row["source"])[:250]
        tracker.log_batch(run_id, tags=tags)
        tracker.finish(run_id)


def close_member_runs(tracker: Tracker, kind: str = Kind.MEMBER) -> int:
    """Terminate runs of ``kind`` whose record is complete but that were left RUNNING (a
    writer killed between its last batch and ``set_terminated``, in a version whose
    replay did not repair that; a fit whose rerun returns on the complete tag). Returns
    how many were closed."""
    runs = tracker.runs(kind=kind, extra_filter="attributes.status = 'RUNNING'")
    n = 0
    for r in runs:
        if r.data.tags.get(Tag.COMPLETE) == "1":
            ok = r.data.tags.get(Tag.STATE, "completed") in FINISHED_STATES
            tracker.finish(r.info.run_id, "FINISHED" if ok else "FAILED")
            n += 1
    if n:
        log.warning("terminated %d complete %s run(s) left RUNNING", n, kind)
    return n


def _confirm_done(study_dir: Path) -> bool:
    """True once a previous launch finished the confirmation phase (marker file)."""
    return StudyDir(study_dir).confirm_complete.exists()


def unit_totals(study_dir: Path, units: list[dict]) -> dict:
    """Sum of the finished units' summaries (member states, train/eval seconds)."""
    tot: dict = {}
    for u in units:
        done = UnitFiles(study_dir, u["id"]).read_done()
        if done is not None:
            for k, v in done.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tot[k] = tot.get(k, 0) + v
    return tot


def flush_all_outboxes(ctx: RunContext) -> int:
    """Write every record the study's units parked (no unit may be running); returns how
    many remain parked (MLflow down)."""
    return OutboxDrainer(Tracker(ctx.tracking_uri, ctx.name), StudyDir(ctx.study_dir).outbox).drain()


def _fit_study(study, tracker):
    """Fit scaling laws at the end of a launch (skipped quietly if too few points)."""
    try:
        from .analysis import fit_and_record
    except ImportError:
        return None
    return fit_and_record(study.name, tracker, form=study.fit_form)
