"""The embedded store: one SQLite file under ``state_dir`` (or an in-memory database when pgloupe is
embedded without one). WAL mode, so the page's reads never wait on a batch being written."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from proxy.store.sql import SqlStore, StoreError

FILE_NAME = "findings.sqlite3"
BUSY_TIMEOUT_S = 5.0


def _explain(path: str, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreError(f"the findings store {path} is not a readable SQLite database (corrupt, or another "
                          "file): move it away and pgloupe starts a new one, or set state_dir", fatal=True)
    if "readonly" in text or "read-only" in text:
        return StoreError(f"the findings store {path} is read-only: pgloupe must write it (check the file's and "
                          "its directory's permissions, or set state_dir)", fatal=True)
    if "unable to open" in text:
        return StoreError(f"cannot open the findings store {path}: check state_dir exists and is writable",
                          fatal=True)
    if "locked" in text or "busy" in text:
        return StoreError(f"the findings store {path} is locked by another process")
    return StoreError(f"the findings store {path} failed: {type(exc).__name__}: {text}")


class SqliteStore(SqlStore):
    backend = "sqlite"

    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        self.read_only = read_only  # pgloupe run --store FILE without --record: a read-only file will do
        self.conn: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def connect(self) -> None:
        if self.conn is not None:  # still open (an in-memory store reopened would be an empty one)
            return
        if self.read_only:
            if not os.path.exists(self.path):
                raise StoreError(f"the findings store {self.path} does not exist", fatal=True)
            try:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                            isolation_level=None, check_same_thread=False)
                self.conn.execute("PRAGMA quick_check(1)").fetchall()
            except sqlite3.Error as exc:
                self.close()
                raise _explain(self.path, exc) from exc
            return
        if self.path != ":memory:":
            directory = Path(self.path).parent
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise StoreError(f"cannot create state_dir {directory}: {exc.strerror}", fatal=True) from exc
            if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
                raise StoreError(f"the findings store {self.path} is read-only: pgloupe must write it (check the "
                                 "file's permissions, or set state_dir)", fatal=True)
        try:
            # the store's thread is the only one that uses the connection, but not the one that opened it
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                        check_same_thread=False)
            if self.path != ":memory:":
                self.conn.execute("PRAGMA journal_mode=WAL")
                os.chmod(self.path, 0o600)  # findings hold SQL text and table names
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.Error as exc:
            self.close()
            raise _explain(self.path, exc) from exc
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot open the findings store {self.path}: {exc.strerror}", fatal=True) from exc

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def execute(self, sql: str, *args) -> int:
        try:
            return self.conn.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from exc

    def fetch(self, sql: str, *args) -> list[tuple]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from exc

    def begin(self) -> None:
        # IMMEDIATE: the write lock from the start, so a read-modify-write never meets a concurrent writer
        self.execute("BEGIN IMMEDIATE")
