"""MLflow records for a study: batched, idempotent, buffered.

Why not Ray's ``MLflowLoggerCallback``: it commits one row per metric and keeps its
trial→run map in memory, so studies of thousands of small members are slow and
restores duplicate runs. Here every run has a deterministic key (tag ``dlor.key``):

* runs are **get-or-create** by key, so a retried create finds the first one;
* a member's whole record (params, tags, curves, finals) goes out in a few
  ``log_batch`` calls; on a retry only the (key, step) points MLflow lacks are sent;
* a unit never writes member records itself: it parks each in its on-disk outbox
  (fsynced), and the driver's `OutboxDrainer` writes them, retrying with backoff; a
  record stays parked until its run is complete, so nothing is lost.

Layout: one experiment per study; a ``kind=study`` parent run, a ``kind=cell`` child
per (family, budget), a ``kind=member`` grandchild per member, ``kind=fit`` runs for fits.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import __version__
from .run_schema import FitMetric, Kind, Metric, Tag, fit_metric
from .studydir import atomic_write_bytes, parked_record, parked_records, set_aside

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100

#: Field of a parked record saying its member was first started by the process that parked it.
FRESH = "_fresh"

#: Experiment tags that make the MLflow UI a model-training view, not GenAI's traces.
#: ``mlflow.experimentKind`` is what MLflow 3 (and Databricks) read for an experiment's
#: kind; the 3.17 OSS UI ignores it and follows a workflow type: the URL's ``workflowType``,
#: else the browser's saved GenAI / Model training switch, else GenAI (no server knob), so
#: `ui_url`'s link carries ``workflowType=machine_learning``.
EXPERIMENT_KIND = {Tag.EXPERIMENT_KIND: "custom_model_development"}
UI_RUNS_QUERY = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str) -> str:
    """The MLflow UI link that opens a study's experiment on its runs table."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_RUNS_QUERY}"


def member_run_name(key: str, tags: dict) -> str:
    """A member run's display name: its own key (``t3``, ``c5s0``) first, so names stay
    distinct where the UI cuts them, then its state unless completed (``t3 pruned``) and
    its cell (``t3 pruned · dlor_deep@120``), so the name is unique in the whole study."""
    short = key.rsplit("/", 1)[-1]
    state = str(tags.get(Tag.STATE) or "")
    mark = "" if state in ("", "completed") else f" {state}"
    cell = tags.get(Tag.CELL)
    return f"{short}{mark} · {cell}" if cell else f"{short}{mark}"


def member_note(key: str, tags: dict, finals: dict) -> str:
    """A member run's description (markdown): what it is and how it ended, in words."""
    state = str(tags.get(Tag.STATE) or "?")
    short = key.rsplit("/", 1)[-1]
    phase = tags.get(Tag.PHASE, "?")
    trial = tags.get(Tag.OPTUNA_TRIAL)
    epochs = finals.get(Metric.EPOCHS_TRAINED)
    wall = finals.get(Metric.WALL_TIME_S)
    lines = [f"**{short}** — {phase} member of cell `{tags.get(Tag.CELL, '?')}`"
             + (f", Optuna trial {trial}" if trial is not None else "")
             + (f", confirmation of trial {tags[Tag.CONFIRM_OF]}" if Tag.CONFIRM_OF in tags else "")
             + f", seed {tags.get(Tag.SEED, '?')}."]
    if state == "pruned":
        lines.append(f"**PRUNED** by the Optuna pruner after {_num(epochs)} epochs: its curves stop there "
                     f"and its scores are not a trained result.")
    elif state == "completed":
        lines.append(f"Completed: {_num(epochs)} epochs.")
    else:
        lines.append(f"**{state.upper()}** after {_num(epochs)} epochs.")
    if wall is not None and _finite(wall):
        lines.append(f"Training wall time: {float(wall):.1f} s (metric `wall_time_s`; the run's start and end "
                     f"times span the training).")
    lines.append(f"Key: `{key}`")
    return "\n\n".join(lines)


def _num(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


_FAILPOINT_HITS: dict[str, int] = {}


class FailpointError(ConnectionError):
    """Raised by a ``raise`` failpoint: looks like a dropped connection (a transient error)."""


def failpoint(name: str) -> None:
    """Fault injection for the chaos tests; a no-op unless ``DLOR_FAILPOINTS`` is set.

    ``DLOR_FAILPOINTS="name:action[:times[:skip]],..."`` makes the process reaching
    ``name`` ``kill`` itself (SIGKILL: a worker lost mid-write) or ``raise`` a
    `FailpointError` (a dropped DB connection), ``times`` times in all (default once),
    counted across processes and retries by marker files in ``DLOR_FAILPOINT_DIR``;
    the first ``skip`` hits in each process pass.
    """
    spec = os.environ.get("DLOR_FAILPOINTS")
    if not spec:
        return
    for item in spec.split(","):
        fname, _, rest = item.strip().partition(":")
        if fname != name:
            continue
        action, times, skip = (rest.split(":") + ["", "", ""])[:3]
        _FAILPOINT_HITS[name] = _FAILPOINT_HITS.get(name, 0) + 1
        if _FAILPOINT_HITS[name] <= int(skip or 0):
            return
        folder = Path(os.environ.get("DLOR_FAILPOINT_DIR") or tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(int(times or 1)):
            try:
                os.close(os.open(folder / f"{name}.{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            log.warning("failpoint %s: %s", name, action or "kill")
            if action in ("", "kill"):
                os.kill(os.getpid(), signal.SIGKILL)
            raise FailpointError(f"failpoint {name}: connection dropped")
        return


def code_version() -> str:
    """Package version plus git commit when run from a checkout (for the run tag)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except Exception:
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _retry(fn: Callable, *, attempts: int = 6, base_delay: float = 0.5, what: str = "mlflow call"):
    """Call fn, retrying transient failures with exponential backoff (server restarts)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any transport/server error is retryable here
            if i == attempts - 1:
                raise
            delay = base_delay * 2**i
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)


class Tracker:
    """All MLflow writes and reads of one study go through here."""

    def __init__(self, tracking_uri: str, experiment: str, *, outbox: Path | None = None,
                 attempts: int = 6, artifact_location: str | None = None):
        self.uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment_name = experiment
        self.outbox = Path(outbox) if outbox else None
        self.attempts = attempts
        self._exp_id: str | None = None

    @functools.cached_property
    def client(self) -> MlflowClient:
        """Made on first use: a unit only parks records, so it never opens the store (a
        SQL store's client imports ~1 s of MLflow and checks the database schema; this module
        imports MLflow only here and in `log_batch`, so a unit's start-up skips it)."""
        from mlflow.tracking import MlflowClient

        from . import sqlite_wal
        sqlite_wal.install()
        return MlflowClient(tracking_uri=self.uri)

    # ------------------------------------------------------------------ runs
    @property
    def experiment_id(self) -> str:
        if self._exp_id is None:
            def get_or_create():
                exp = self.client.get_experiment_by_name(self.experiment_name)
                if exp is not None:
                    return exp.experiment_id
                try:
                    return self.client.create_experiment(self.experiment_name,
                                                         artifact_location=self.artifact_location,
                                                         tags=dict(EXPERIMENT_KIND))
                except Exception:
                    exp = self.client.get_experiment_by_name(self.experiment_name)
                    if exp is None:
                        raise
                    return exp.experiment_id
            self._exp_id = _retry(get_or_create, attempts=self.attempts, what="get/create experiment")
        return self._exp_id

    def describe_experiment(self, text: str | None = None) -> None:
        """Tag the experiment as model training (`EXPERIMENT_KIND`) and set its description
        (idempotent: an experiment made by an older version gets them on the next launch)."""
        exp = _retry(lambda: self.client.get_experiment(self.experiment_id), attempts=self.attempts,
                     what="get experiment")
        want = dict(EXPERIMENT_KIND)
        if text:
            want[Tag.NOTE] = text
        for k, v in want.items():
            if exp.tags.get(k) != v:
                _retry(lambda k=k, v=v: self.client.set_experiment_tag(self.experiment_id, k, v),
                       attempts=self.attempts, what="set experiment tag")

    def find_run(self, key: str):
        runs = _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{Tag.KEY}` = '{key}'", max_results=2,
        ), attempts=self.attempts, what="search run")
        if len(runs) > 1:
            log.warning("more than one run has key %s; using the oldest", key)
            runs = sorted(runs, key=lambda r: r.info.start_time)
        return runs[0] if runs else None

    def get_or_create_run(self, key: str, *, name: str, kind: str, parent_id: str | None = None,
                          tags: dict | None = None) -> str:
        """Run id for `key`, creating the run only if no run carries that key."""
        existing = self.find_run(key)
        if existing is not None:
            return existing.info.run_id
        all_tags = {Tag.KEY: key, Tag.KIND: kind, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_id:
            all_tags[Tag.PARENT_RUN_ID] = parent_id
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=all_tags),
                     attempts=self.attempts, what="create run")
        return run.info.run_id

    # ------------------------------------------------------------------ writes
    def log_batch(self, run_id: str, *, params: dict | None = None, tags: dict | None = None,
                  metrics: Iterable[tuple[str, float, int]] = (), final_tags: dict | None = None,
                  timestamp: int | None = None) -> None:
        """Chunked log_batch: params/tags once, metrics as (key, value, step) stamped
        `timestamp` (ms, default now); `final_tags` go in the last chunk (a commit marker)."""
        from mlflow.entities import Metric as MlflowMetric, Param, RunTag
        ts = int(timestamp or time.time() * 1000)
        p = [Param(k, _param_str(v)) for k, v in (params or {}).items()]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        m = [MlflowMetric(k, float(v), ts, int(s)) for k, v, s in metrics if _finite(v)]
        ft = [RunTag(k, str(v)) for k, v in (final_tags or {}).items()]
        while p or t or m or ft:
            cp, p = p[:MAX_PARAMS], p[MAX_PARAMS:]
            ct, t = t[:MAX_TAGS], t[MAX_TAGS:]
            room = MAX_METRICS - len(cp) - len(ct) - len(ft)
            cm, m = m[:room], m[room:]
            if not (p or t or m) and len(ct) + len(ft) <= MAX_TAGS:
                ct, ft = ct + ft, []
            _retry(lambda: self.client.log_batch(run_id, metrics=cm, params=cp, tags=ct),
                   attempts=self.attempts, what="log_batch")

    def finish(self, run_id: str, status: str = "FINISHED", end_time: int | None = None) -> None:
        _retry(lambda: self.client.set_terminated(run_id, status, end_time), attempts=self.attempts,
               what="set_terminated")

    def missing_points(self, run_id: str, key: str, points: list[tuple[int, float]]):
        """Drop points whose step MLflow already holds (idempotent re-send)."""
        have = {m.step for m in _retry(lambda: self.client.get_metric_history(run_id, key),
                                       attempts=self.attempts, what="metric history")}
        return [(s, v) for s, v in points if s not in have]

    def record_run(self, key: str, *, name: str, kind: str, parent_id: str | None,
                   params: dict, tags: dict, curves: dict[str, list[tuple[int, float]]],
                   finals: dict[str, float], status: str = "FINISHED", fresh: bool = False,
                   end_time: int | None = None) -> str:
        """Write one complete run exactly once (safe to call again after a crash).

        `fresh=True` promises that no run with this key can exist yet (no writer has seen
        the record before), which saves the lookup; replays never pass it. `end_time` (ms)
        is when the member finished: the record may be written long after (by the driver),
        and the run's start, end and metric times must be the training's, not the write's.
        """
        if kind == Kind.MEMBER:   # readable in the UI: short distinct name, state marker, description
            name = member_run_name(key, tags)
            tags = {**tags, Tag.NOTE: member_note(key, tags, finals)}
            if tags.get(Tag.STATE) == "pruned":
                tags[Tag.PRUNED] = "1"
        existing = None if fresh else self.find_run(key)
        if existing is not None and existing.data.tags.get(Tag.COMPLETE) == "1":
            # Everything is in, but a writer killed between the last batch and
            # set_terminated leaves the run RUNNING: the replay terminates it.
            if existing.info.status != status:
                self.finish(existing.info.run_id, status, end_time)
            return existing.info.run_id
        if existing is None:
            all_tags = {Tag.KEY: key, Tag.KIND: kind, **{k: str(v) for k, v in tags.items()}}
            if parent_id:
                all_tags[Tag.PARENT_RUN_ID] = parent_id
            # Started when its training started: the run's duration in the UI is the member's
            # training, not the few milliseconds of this write.
            wall = finals.get(Metric.WALL_TIME_S)
            start = (int((end_time or time.time() * 1000) - float(wall) * 1000)
                     if wall is not None and _finite(wall) and float(wall) >= 0 else None)
            run_id = _retry(lambda: self.client.create_run(self.experiment_id, start_time=start, run_name=name,
                                                           tags=all_tags),
                            attempts=self.attempts, what="create run").info.run_id
            failpoint("mlflow.created")   # chaos tests: a writer lost between the create and the batch
            fresh = True
        else:
            run_id, fresh = existing.info.run_id, False
        metrics = []
        for mkey, pts in curves.items():
            if not fresh:
                pts = self.missing_points(run_id, mkey, pts)
            metrics += [(mkey, v, s) for s, v in pts]
        for mkey, v in finals.items():
            if fresh or mkey not in existing.data.metrics:
                metrics.append((mkey, v, 0))
        # `dlor.complete` rides in the last batch: it is set only once everything is in.
        self.log_batch(run_id, params=params if fresh else _new_params(existing, params),
                       tags={} if fresh else tags, metrics=metrics, final_tags={Tag.COMPLETE: "1"},
                       timestamp=end_time)
        failpoint("mlflow.complete")
        self.finish(run_id, status, end_time)
        return run_id

    # ------------------------------------------------------------------ outbox
    def park(self, record: dict, fresh: bool = False) -> Path:
        """Write a record to the outbox atomically and durably. `fresh` (the member was
        first started by the process parking it) is kept beside the record for the first
        writer to read (`read_parked`); replays never trust it."""
        path = parked_record(self.outbox, record["key"])
        atomic_write_bytes(path, json.dumps({**record, FRESH: True} if fresh else record).encode())
        return path

    def send_parked(self, path: Path, fresh_ok: bool = False) -> bool:
        """Write one parked record and unpark it; False if it stays parked (MLflow down).
        `fresh_ok`: the caller knows no writer has seen this file before, so the record's
        own `fresh` mark may be trusted."""
        read = read_parked(path)
        if read is None:
            return True
        record, fresh = read
        try:
            self.record_run(**record, fresh=fresh and fresh_ok)
            path.unlink(missing_ok=True)
            return True
        except Exception as exc:  # noqa: BLE001 - stays parked for the next pass
            log.warning("still cannot write %s: %s", path.name, exc)
            return False

    # ------------------------------------------------------------------ reads
    def runs(self, kind: str | None = None, extra_filter: str = "") -> list:
        """All runs of the study (paged), optionally of one kind."""
        filt = []
        if kind:
            filt.append(f"tags.{Tag.KIND} = '{kind}'")
        if extra_filter:
            filt.append(extra_filter)
        out, token = [], None
        while True:
            page = _retry(lambda: self.client.search_runs(
                [self.experiment_id], filter_string=" and ".join(filt), max_results=1000, page_token=token,
            ), attempts=self.attempts, what="search runs")
            out.extend(page)
            token = page.token
            if not token:
                return out


def describe_fit_runs(tracker: Tracker) -> int:
    """Say in each ``kind=fit`` run whether its exponents are identified: tags
    ``dlor.identified`` (all / partial / none) and ``dlor.not_identified`` (the families),
    a description listing every family's α with its CI or "NOT IDENTIFIED" (its bootstrap
    CI spans the fit's bounds, so the recorded α and CI are not an estimate), and, when a
    family is not identified, a run name that says so. Read from the run's own metrics
    (``<family>.alpha_identified`` ...), so it is idempotent and works for any fit run.
    Returns how many runs were changed."""
    F = FitMetric
    alpha_ok, ok = "." + F.ALPHA_IDENTIFIED, "." + F.IDENTIFIED
    changed = 0
    for r in tracker.runs(kind=Kind.FIT):
        m, t = r.data.metrics, r.data.tags
        fams = sorted(k[: -len(alpha_ok)] for k in m if k.endswith(alpha_ok))
        if not fams:
            continue
        bad = [f for f in fams if not m[fit_metric(f, F.ALPHA_IDENTIFIED)]]
        lines = [f"Scaling-law fit ({t.get(Tag.FIT_FORM, r.data.params.get('form', '?'))}) of study "
                 f"`{t.get(Tag.STUDY, tracker.experiment_name)}`."]
        for f in fams:
            lo, hi = fit_metric(f, F.ALPHA_LO), fit_metric(f, F.ALPHA_HI)
            if f in bad:
                lines.append(f"- **{f}: α NOT IDENTIFIED** — its bootstrap CI spans the fit's bounds, so the "
                             f"recorded `{fit_metric(f, F.ALPHA)}` and its CI are not an estimate.")
            else:
                ci = f" [{m[lo]:.3g}, {m[hi]:.3g}]" if lo in m and hi in m else ""
                lines.append(f"- {f}: α = {m.get(fit_metric(f, F.ALPHA), math.nan):.3g}{ci}")
        for k in sorted(m):
            if k.endswith(ok) and not k.endswith(alpha_ok):
                pair = k[: -len(ok)]
                if not m[k]:
                    lines.append(f"- Δα {pair.replace('_vs_', ' vs ')}: **not identified** (an exponent is not)")
                elif fit_metric(pair, F.DELTA_ALPHA) in m:
                    lines.append(f"- Δα {pair.replace('_vs_', ' vs ')}: {m[fit_metric(pair, F.DELTA_ALPHA)]:.3g}")
        tags = {Tag.IDENTIFIED: "all" if not bad else ("none" if len(bad) == len(fams) else "partial"),
                Tag.NOT_IDENTIFIED: ",".join(bad) or "none",
                Tag.NOTE: "\n".join(lines)}
        base = t.get(Tag.RUN_NAME, "fit").split(" · ")[0]
        tags[Tag.RUN_NAME] = f"{base} · not identified: {', '.join(bad)}" if bad else base
        new = {k: v for k, v in tags.items() if t.get(k) != v}
        if new:
            tracker.log_batch(r.info.run_id, tags=new)
            changed += 1
    return changed


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return s[:6000]


def _new_params(existing, params: dict) -> dict:
    """MLflow params are immutable: only send the ones the run lacks."""
    return {k: v for k, v in params.items() if k not in existing.data.params}


def read_parked(path: Path) -> tuple[dict, bool] | None:
    """A parked record and its `fresh` mark; None if it is gone (written by another pass)
    or unreadable. `park` writes atomically, so only outside damage makes a file
    unreadable: it is moved aside for inspection instead of failing every replay on it."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        set_aside(path, f"outbox record: {exc}")
        return None
    return record, bool(record.pop(FRESH, False))


class OutboxDrainer:
    """Writes the member records that units park in the study's outboxes to MLflow, from
    the driver, in passes every `every` seconds while the study runs.

    Why: a member's MLflow record costs a few round trips (~30 ms of CPU); written by a
    thread inside the trial, it took the GIL and the trial's CPU from training (2.5× the
    train time per member-epoch on tiny members). A trial now only parks the record
    (fsynced: the outbox is the durable queue); this one thread, at low CPU priority,
    sends and unparks them. Exactly once: a record stays parked until its run is
    complete and terminated, and a replay (``record_run`` keyed by ``dlor.key``) sends
    only what MLflow lacks; a file parked before this drainer started may have been half
    written by a killed earlier driver, so its `fresh` mark is not trusted.
    """

    def __init__(self, tracker: Tracker, root: Path, every: float = 2.0):
        self.tracker, self.root, self.every = tracker, Path(root), every
        self.stale = set(self._parked())   # parked before this driver: an earlier one may have sent part
        self.tried: set[Path] = set()      # files this drainer has tried to send
        self.left: int | None = None       # records still parked after the final pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-drainer", daemon=True)

    def _parked(self) -> list[Path]:
        return parked_records(self.root)

    def drain(self) -> int:
        """One pass over every unit's outbox; returns how many records stay parked. A
        record that cannot be written (after `record_run`'s retries) ends the pass: MLflow
        is down, and each further record would only wait out the same retries."""
        parked = self._parked()
        for i, path in enumerate(parked):
            fresh_ok = path not in self.stale and path not in self.tried
            self.tried.add(path)
            if not self.tracker.send_parked(path, fresh_ok=fresh_ok):
                return len(parked) - i
        return 0

    def _loop(self):
        try:   # Linux: a thread's nice value is its own; training gets the CPU first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.every):
            try:
                self.drain()
            except Exception as exc:  # noqa: BLE001 - the next pass (or the final one) retries
                log.warning("outbox drain pass failed: %s", exc)

    def __enter__(self) -> "OutboxDrainer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop the passes, then drain everything (also when a phase failed: the records
        of members that did finish belong in MLflow); sets `left`."""
        self._stop.set()
        self._thread.join()
        self.left = self.drain()
