"""The shared store: a schema of its own (``pgloupe`` by default) in a PostgreSQL database that every
replica reaches directly (a session-mode connection, not through a transaction-mode pooler).

asyncpg on a private event loop of the store's thread: the proxy's loop never runs a store query.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote, urlsplit

import asyncpg

from proxy.store.sql import SqlStore, StoreError

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PLACEHOLDER = re.compile(r"\?")
_ROWS = re.compile(r"(\d+)$")
# SQLSTATE classes waiting cannot fix: permissions, a missing database, a bad schema, bad credentials
_FATAL_CLASSES = ("28", "3D", "42")


def describe_url(url: str, schema: str = "pgloupe") -> str:
    """Host, port, database and schema of a store URL: never its user or password, whatever the URL."""
    try:
        parts = urlsplit(url)
        where = parts.netloc.rpartition("@")[2] or "localhost"
        return f"postgresql://{where}/{unquote(parts.path.lstrip('/'))} (schema {schema})"
    except ValueError:
        return f"a postgresql:// URL pgloupe cannot read (schema {schema})"


def check_schema(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"store_schema must be a lower-case SQL name (letters, digits, _), got {name!r}")
    return name


class PostgresStore(SqlStore):
    backend = "postgresql"
    lock_rows = " FOR UPDATE"
    greatest, least = "GREATEST", "LEAST"

    def __init__(self, url: str, schema: str = "pgloupe", connect_timeout: float = 10.0,
                 command_timeout: float = 30.0):
        self.url = url
        self.schema = check_schema(schema)
        self.prefix = f"{self.schema}."
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.conn: asyncpg.Connection | None = None
        self._loop = asyncio.new_event_loop()
        self._sql: dict[str, str] = {}

    def describe(self) -> str:
        """Where, without credentials; never raises (a URL it cannot read is described as such)."""
        return describe_url(self.url, self.schema)

    def _run(self, coro):
        try:
            return self._loop.run_until_complete(coro)
        except StoreError:
            raise
        except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError) as exc:
            self._drop()
            raise StoreError(f"the store {self.describe()} is unreachable: {type(exc).__name__}") from exc
        except (ValueError, TypeError) as exc:  # the URL itself: its text may hold the password
            self._drop()
            raise StoreError(f"the store URL cannot be used ({type(exc).__name__}): check its host, port "
                             "and options", fatal=True) from None
        except asyncpg.PostgresError as exc:
            state = getattr(exc, "sqlstate", "") or ""
            fatal = state[:2] in _FATAL_CLASSES
            if state[:2] in ("08", "57"):  # connection failure, server shutting down
                self._drop()
            # the server's message names pgloupe's own tables and roles, never a client's statement
            first = (str(exc).splitlines() or [""])[0][:200]
            raise StoreError(f"the store {self.describe()} refused: {state} {first}", fatal=fatal) from exc

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    def connect(self) -> None:
        async def open_():
            return await asyncpg.connect(self.url, timeout=self.connect_timeout, statement_cache_size=0,
                                         command_timeout=self.command_timeout,
                                         server_settings={"application_name": "pgloupe-store"})
        self._drop()
        self.conn = self._run(open_())

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                self._loop.run_until_complete(asyncio.wait_for(conn.close(), 5))
            except Exception:
                conn.terminate()
        self._loop.close()

    def _text(self, sql: str) -> str:
        text = self._sql.get(sql)
        if text is None:
            numbers = iter(range(1, 1000))
            text = self._sql[sql] = _PLACEHOLDER.sub(lambda _m: f"${next(numbers)}", sql)
        return text

    def execute(self, sql: str, *args) -> int:
        if self.conn is None:
            self.connect()
        status = self._run(self.conn.execute(self._text(sql), *args))
        match = _ROWS.search(status or "")
        return int(match.group(1)) if match else 0

    def fetch(self, sql: str, *args) -> list[tuple]:
        if self.conn is None:
            self.connect()
        return [tuple(r) for r in self._run(self.conn.fetch(self._text(sql), *args))]

    def begin(self) -> None:
        self.execute("BEGIN")

    def rollback(self) -> None:
        if self.conn is not None:  # a broken connection's transaction died with it
            self.execute("ROLLBACK")

    def lock_migrations(self) -> None:
        self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", f"pgloupe.store.{self.schema}")
        # CREATE SCHEMA needs the CREATE privilege even when the schema exists: a DBA may have made it
        if not self.fetch("SELECT 1 FROM pg_namespace WHERE nspname = ?", self.schema):
            self.execute(f"CREATE SCHEMA {self.schema}")
