"""The findings store: what pgloupe found, kept beyond the process and shared by every replica.

``sql`` holds the logic, ``sqlite`` and ``postgres`` the two backends, ``replica`` this process's
thread that writes batches and reads the merged record back, ``view`` the merge shown to users.
Imports run one way: proxy.service uses the store; the store knows nothing of the relay or detectors.
"""

from __future__ import annotations

import os
from pathlib import Path

from proxy.store.postgres import PostgresStore
from proxy.store.replica import Replica
from proxy.store.sql import SqlStore, StoreError
from proxy.store.sqlite import FILE_NAME, SqliteStore

MEMORY = "memory"


def default_state_dir(env=None) -> str:
    """Where ``serve``, ``demo`` and ``run`` keep the SQLite store when nothing says otherwise."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return str(Path(base) / "pgloupe")


def backend_for(settings) -> SqlStore:
    """``store`` (a postgresql:// URL, a SQLite file path, or ``memory``), else the SQLite file in
    ``state_dir``, else an in-memory database (pgloupe embedded in tests or code)."""
    store = settings.store
    if store and store.startswith(("postgresql://", "postgres://")):
        return PostgresStore(store, settings.store_schema, connect_timeout=settings.connect_timeout)
    if store == MEMORY or (not store and not settings.state_dir):
        return SqliteStore(":memory:")
    if store:
        return SqliteStore(store.removeprefix("sqlite:"))
    return SqliteStore(str(Path(settings.state_dir) / FILE_NAME))


def replica_for(settings, log) -> Replica:
    return Replica(backend_for(settings), log=log, replica=settings.store_replica, flush_s=settings.store_flush_s,
                   fixed_after_s=settings.fixed_after_s, fixed_min_count=settings.fixed_min_count,
                   retention_s=settings.store_retention_days * 86400.0, max_findings=settings.store_max_findings)


__all__ = ["MEMORY", "Replica", "SqlStore", "StoreError", "backend_for", "default_state_dir", "replica_for"]
