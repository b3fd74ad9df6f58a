"""WAL + synchronous=NORMAL for every SQLite database SQLAlchemy opens (MLflow's and Optuna's).

Why: with the default rollback journal every commit fsyncs (~10 ms on a busy disk) and a
study makes thousands of small commits; WAL keeps the same crash-safety for committed
transactions at a fraction of the cost and lets readers (the MLflow UI, `dlor-scale
status`) run alongside the writers.

Why a function, not an import side effect: only processes that open an SQL store need
SQLAlchemy. A unit that parks records and uses a journal Optuna storage never imports it
(or MLflow), which keeps Ray's trial start-up short; `Tracker.client` and
`storages.storage` call `install()` before they open a store.
"""

from __future__ import annotations

_installed = False


def install() -> None:
    """Register the pragma listener on SQLAlchemy's Engine class (once per process)."""
    global _installed
    if _installed:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _sqlite_wal(dbapi_conn, _record):
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    _installed = True
