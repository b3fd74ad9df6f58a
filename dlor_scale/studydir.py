"""The study folder's layout: the one module that knows the names of the files in it.

Why one owner: the driver writes the folder, workers write their unit files, and
`validate`, `status`, `fit` and `export` read it back; a file name built by string in
each of them would drift. Every other module asks here for a path, a marker or an
atomic write. Torch-free and MLflow-free (``spec`` imports it while validating).

Layout of ``runs/<name>/`` (or ``output_dir``)::

    study.json           what the folder belongs to (name, spec, spec hash, stores, data)
    mlflow.db            the default MLflow store (SQLite), artifacts/ beside it
    optuna.journal       the default Optuna storage (journal file)
    units/               <unit>.done.json per finished unit; confirm.complete after phase 2
    ledger/              <unit>.jsonl: the finished members of a unit
    checkpoints/         <unit>.pt: a running unit's cohort checkpoint
    outbox/<unit>/       <member key>.json: records parked until the driver wrote them
    heartbeats/          <unit>.json while a unit trains
    tune/                Ray Tune's own
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

STUDY_MARKER = "study.json"
MLFLOW_DB = "mlflow.db"
OPTUNA_JOURNAL = "optuna.journal"
ARTIFACTS = "artifacts"
TUNE = "tune"
_UNITS, _LEDGER, _CHECKPOINTS, _OUTBOX, _HEARTBEATS = "units", "ledger", "checkpoints", "outbox", "heartbeats"
_CONFIRM_COMPLETE = "confirm.complete"
_DONE_SUFFIX = ".done.json"

#: Names of the temporary files `atomic_write_bytes` writes before a rename.
TMP_NAME = re.compile(r".*\.tmp\d+$")


def safe_name(key: str) -> str:
    """A unit id or member key as a file name (``search/dense@100/0`` → ``search_dense@100_0``)."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in key)


def default_output_dir() -> Path:
    """Where studies land unless a spec says otherwise (``$DLOR_OUTPUT_DIR``, else ``./runs``)."""
    return Path(os.environ.get("DLOR_OUTPUT_DIR", "runs"))


def is_marker_tmp(name: str) -> bool:
    """A ``study.json`` a launch was killed while writing (only its tmp file exists)."""
    return TMP_NAME.fullmatch(name) is not None and name.startswith(STUDY_MARKER + ".tmp")


def marker_candidates(study: str) -> list[Path]:
    """The ``study.json`` files that may describe ``study`` (a spec file, a study folder or a
    name under the output dir), in the order they are tried."""
    p = Path(study)
    out = []
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from .spec import load_study
        out.append(load_study(p).study_dir() / STUDY_MARKER)
    return out + [p / STUDY_MARKER, default_output_dir() / study / STUDY_MARKER]


class StudyDir:
    """Paths inside one study folder."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def marker(self) -> Path:
        return self.root / STUDY_MARKER

    @property
    def mlflow_db(self) -> Path:
        return self.root / MLFLOW_DB

    @property
    def optuna_journal(self) -> Path:
        return self.root / OPTUNA_JOURNAL

    @property
    def artifacts(self) -> Path:
        return self.root / ARTIFACTS

    @property
    def tune(self) -> Path:
        return self.root / TUNE

    @property
    def outbox(self) -> Path:
        """Root of the units' outboxes (the driver's `OutboxDrainer` reads them all)."""
        return self.root / _OUTBOX

    @property
    def confirm_complete(self) -> Path:
        """Marker: a launch finished the confirmation phase."""
        return self.root / _UNITS / _CONFIRM_COMPLETE

    def unit(self, unit_id: str) -> "UnitFiles":
        return UnitFiles(self.root, unit_id)

    def heartbeat(self, unit_id: str) -> Path:
        return self.root / _HEARTBEATS / f"{safe_name(unit_id)}.json"

    def heartbeats(self) -> list[Path]:
        return sorted((self.root / _HEARTBEATS).glob("*.json"))

    def done_markers(self) -> list[Path]:
        return sorted((self.root / _UNITS).glob("*" + _DONE_SUFFIX))

    def mark_confirm_complete(self) -> None:
        self.confirm_complete.parent.mkdir(parents=True, exist_ok=True)
        self.confirm_complete.touch()


def parked_records(outbox_root: Path) -> list[Path]:
    """Every record parked in the units' outboxes under ``outbox_root``."""
    return sorted(outbox_root.glob("*/*.json")) if outbox_root.exists() else []


def parked_record(outbox: Path, key: str) -> Path:
    """Where a unit's outbox keeps the record of member ``key``."""
    return outbox / (safe_name(key) + ".json")


def atomic_write_bytes(path: Path, data: bytes, *, fail_at: str | None = None) -> None:
    """Write ``path`` all or nothing: a tmp file, fsynced, renamed over it. A process
    killed in between leaves a stray ``*.tmp<pid>`` (removed by `clean_stray_tmp`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        if fail_at:
            from .tracking import failpoint
            f.flush()
            failpoint(fail_at)   # chaos tests: killed in the middle of the write
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean_stray_tmp(folder: Path) -> list[Path]:
    """Remove the ``*.tmp<pid>`` files writers killed mid-write left under ``folder``
    (Ray's own ``tune/`` folder excluded). Call only while nothing of the study runs."""
    gone = []
    if not folder.exists():
        return gone
    for p in folder.rglob("*.tmp*"):
        if TUNE in p.relative_to(folder).parts[:1] or not TMP_NAME.fullmatch(p.name) or not p.is_file():
            continue
        try:
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    if gone:
        log.info("removed %d stray tmp file(s) under %s", len(gone), folder)
    return gone


def set_aside(path: Path, why: str, notes: list | None = None) -> None:
    """Move an unreadable state file to ``<path>.corrupt`` (kept for inspection, never
    read again: the warning is logged once) and say so, naming the file; the message
    is also appended to ``notes`` (a unit's summary carries them to the driver)."""
    bad = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, bad)
    except FileNotFoundError:
        return   # another reader set it aside first
    msg = f"{path} is unreadable ({why}); moved to {bad} and ignored"
    log.warning("%s", msg)
    if notes is not None:
        notes.append(msg)


class UnitFiles:
    """Where a unit keeps its resumable state inside the study directory."""

    def __init__(self, study_dir: Path, unit_id: str):
        name = safe_name(unit_id)
        self.done = study_dir / _UNITS / f"{name}{_DONE_SUFFIX}"
        self.checkpoint = study_dir / _CHECKPOINTS / f"{name}.pt"
        self.ledger = study_dir / _LEDGER / f"{name}.jsonl"
        self.outbox = study_dir / _OUTBOX / name   # per unit: no two writers share one
        self.notes: list[str] = []                 # files set aside (see `set_aside`)

    # ----------------------------------------------------------- done marker
    def read_done(self) -> dict | None:
        """The unit's summary if it finished, else None. An empty or corrupt marker
        (written by hand, or by a tool that is not atomic) does not count as done: it is
        set aside, logged once with its path, and the unit runs again (a finished unit
        re-runs in seconds: Optuna and the ledger say every member is done)."""
        try:
            raw = self.done.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            set_aside(self.done, str(e), self.notes)
            return None
        try:
            out = json.loads(raw)
            if not isinstance(out, dict):
                raise ValueError(f"a JSON {type(out).__name__}, not an object")
        except ValueError as e:
            set_aside(self.done, "empty" if not raw.strip() else f"not a unit summary: {e}", self.notes)
            return None
        return out

    def is_done(self) -> bool:
        return self.read_done() is not None

    def write_done(self, summary: dict) -> None:
        atomic_write_bytes(self.done, json.dumps(summary).encode())

    # ----------------------------------------------------------- ledger
    def ledger_states(self) -> dict[str, str]:
        """``{member key: state}`` of the finished members. Read tolerantly: one entry per
        key (the last wins), lines that do not parse (a pre-atomic ledger cut by a kill)
        skipped with a warning."""
        try:
            text = self.ledger.read_text()
        except FileNotFoundError:
            return {}
        out, bad = {}, 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                out[str(e["key"])] = str(e["state"])
            except (ValueError, KeyError, TypeError):
                bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) skipped", self.ledger, bad)
        return out

    def finished_keys(self) -> set[str]:
        return set(self.ledger_states())

    def append_ledger(self, key: str, state: str) -> None:
        """Record a finished member exactly once: the ledger is rewritten whole and
        atomically (a kill leaves the old or the new one, never a cut or doubled line),
        and a key already there with the same state writes nothing."""
        entries = self.ledger_states()
        if entries.get(key) == state:
            return
        entries[key] = state
        atomic_write_bytes(self.ledger, "".join(json.dumps({"key": k, "state": v}) + "\n"
                                                for k, v in entries.items()).encode())

    # ----------------------------------------------------------- checkpoint
    def save_checkpoint(self, state: dict) -> None:
        import io

        import torch

        from .tracking import failpoint
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint, buf.getvalue(), fail_at="checkpoint.write")
        failpoint("checkpoint.saved")

    def load_checkpoint(self) -> dict | None:
        """The unit's cohort checkpoint, or None. A truncated or corrupt one is set aside
        (logged once with its path) and the unit continues without it: members in flight
        are retrained from their Optuna trials (search) or the ledger (confirm)."""
        if not self.checkpoint.exists():
            return None
        import torch
        try:
            state = torch.load(self.checkpoint, weights_only=False, map_location="cpu")
            members = state["members"] if isinstance(state, dict) else None
            if not isinstance(members, list) or not all(
                    m is None or (isinstance(m, dict) and isinstance(m.get("spec"), dict) and "key" in m["spec"])
                    for m in members):
                raise ValueError("not a cohort checkpoint")
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - torch raises OSError/RuntimeError/EOFError/pickle errors
            set_aside(self.checkpoint, f"{type(e).__name__}: {e}; members in flight are retrained",
                      self.notes)
            return None
        return state

    def clean_tmp(self) -> None:
        """Stray tmp files of this unit (its checkpoint, its outbox): it is not running
        anywhere else while it starts."""
        for p in [*self.checkpoint.parent.glob(self.checkpoint.name + ".tmp*"),
                  *(self.outbox.glob("*.tmp*") if self.outbox.exists() else [])]:
            if TMP_NAME.fullmatch(p.name):
                p.unlink(missing_ok=True)
