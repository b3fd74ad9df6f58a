"""Optuna storages of a study: opening them, and retrying transient storage errors.

Why a module of its own (Optuna's own layout: samplers/, pruners/, storages/): the
driver (`tune`), the workers (`worker`, `search`) and `dlor-scale status` all open the
study's storage, and every call to it may meet a dropped PostgreSQL connection or a
locked SQLite file; one place decides which storage a URL means and which errors are
worth a retry.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import optuna

log = logging.getLogger(__name__)


def storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL.

    ``journal:///abs/path`` is an Optuna journal file (append-only log with file
    locks: the embedded default, fast and multi-process safe on one machine); any
    other URL is an SQLAlchemy URL for RDB storage (SQLite, PostgreSQL), set up to
    survive concurrent writers and dropped connections.
    """
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        path = url[len("journal://"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    from . import sqlite_wal
    sqlite_wal.install()
    if url.startswith("sqlite"):
        kw = {"connect_args": {"timeout": 60}}
    else:
        kw = {"pool_pre_ping": True}
    return db_retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kw), "connect to the Optuna storage")


def transient_db_error(exc: BaseException) -> bool:
    """A dropped/terminated connection, a timeout or a lock: worth retrying (a bad URL,
    a file that is not a database, or a constraint violation is not). Optuna wraps
    SQLAlchemy errors raised in a commit as ``StorageInternalError`` (judged by cause)."""
    import sqlalchemy.exc as sa
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        return exc.__cause__ is None or transient_db_error(exc.__cause__)
    return isinstance(exc, (ConnectionError, TimeoutError, sa.OperationalError, sa.InterfaceError,
                            sa.DisconnectionError, sa.TimeoutError, sa.PendingRollbackError))


#: Backoff of `db_retry`: 0.5, 1, 2, 4, 8, 8, ... s; ~60 s in all before giving up.
DB_ATTEMPTS, DB_BASE_DELAY, DB_MAX_DELAY = 10, 0.5, 8.0


def db_retry(fn: Callable, what: str, *, attempts: int | None = None, on_retry: Callable | None = None):
    """``fn()``, retried with exponential backoff on transient storage errors (a
    PostgreSQL backend terminated, a restart, a lock). ``fn`` must be safe to repeat;
    ``on_retry()``, if given, runs before each retry (to check whether the failed call
    landed after all). Other errors propagate at once."""
    n = attempts or DB_ATTEMPTS
    for i in range(n):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            if i == n - 1 or not transient_db_error(exc):
                raise
            delay = min(DB_BASE_DELAY * 2 ** i, DB_MAX_DELAY)
            log.warning("Optuna storage: %s failed (%s: %s); retrying in %.1fs", what,
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", delay)
            time.sleep(delay)
            if on_retry is not None:
                out = on_retry()
                if out is not None:
                    return out
