"""Pieces of work: the statements of one connection that belong to one piece of application work.

A piece of work (a ``Unit`` of kind "run") is what a connection sends with no idle gap longer than the
configured gap, across its transactions: a loop of small transactions (an ORM that saves each row in
its own) is one piece of work, as a loop in autocommit is. It ends earlier where the wire says so:

- a pool hands the connection back (asyncpg's reset, ``DISCARD ALL``, ``RESET ALL``, psycopg_pool's
  and PgBouncer's reset queries): the next request starts afresh;
- a savepoint is rolled back (``ROLLBACK TO SAVEPOINT``): what ran since it is undone and is its own
  piece of work, which is how test suites isolate each test inside one transaction (Django's TestCase,
  pytest fixtures rolling back to a savepoint);
- a transaction is rolled back (``ROLLBACK``, or a failed transaction's ``COMMIT``): the same, for
  suites whose fixtures begin a transaction per test and roll it back (``BEGIN ... ROLLBACK``, and
  SQLAlchemy's recipe of a test inside an outer transaction);
- tables are truncated (``TRUNCATE``): how test suites that commit reset the database between tests
  (Django's TransactionTestCase, pytest fixtures truncating), never part of a request's work;
- a sqlcommenter trace id, route, controller or action, or the application_name, changes.

Explicit transactions are also followed as units of kind "transaction", for the long_transaction check.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from detectors.fingerprint import Fingerprint
from proxy.events import StatementEvent

_BEGIN = frozenset({"BEGIN", "START"})
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
# What a Statement costs in memory beyond its text (measured with tracemalloc, tests/test_memory_bounds.py):
# the event and Statement objects, and per value hash (a 16-character str in a tuple) and tag dict.
STATEMENT_BYTES = 800
HASH_BYTES = 90
TAGS_BYTES = 600
SOURCE_BYTES = 120  # per result column's (table oid, attnum) pair: a tuple of two ints in a tuple
DEFAULT_OPEN_UNITS_BYTES = 64 << 20
# A transaction with no statement for this long is treated as gone (its connection likely closed).
ABANDONED_TRANSACTION_S = 3600.0
RUN, TRANSACTION = "run", "transaction"
TRANSACTION_KEPT = 50

# What connection pools send when a connection goes back to them (asyncpg's reset is a Query of four
# statements starting with pg_advisory_unlock_all; PgBouncer and psycopg_pool users configure DISCARD ALL
# or RESET ALL).
_POOL_RESET = re.compile(
    r"\s*(?:discard\s+all|reset\s+all|select\s+pg_advisory_unlock_all\s*\(\s*\)|unlisten\s+\*|close\s+all"
    r"|deallocate\s+all|set\s+session\s+authorization\s+default)\s*;?\s*$", re.I)
_SAVEPOINT = re.compile(r"\s*(savepoint|release(?:\s+savepoint)?|rollback\s+to(?:\s+savepoint)?)\s+(\"[^\"]+\"|\S+)",
                        re.I)


def pool_reset(sql: str) -> bool:
    return len(sql) < 80 and _POOL_RESET.match(sql) is not None


# The commands a pool's reset statement reports (its tag, or the verb of one that failed): only their
# statements are matched against _POOL_RESET (pg_advisory_unlock_all() is a SELECT of no table).
_RESET_COMMANDS = frozenset({"DISCARD", "RESET", "UNLISTEN", "CLOSE", "DEALLOCATE", "SET", "OTHER", ""})


def _may_reset(stmt: Statement) -> bool:
    command = stmt.event.command
    return command in _RESET_COMMANDS or (command == "SELECT" and not stmt.fp.tables)


@dataclass(slots=True)
class Statement:
    event: StatementEvent
    fp: Fingerprint
    tags: dict[str, str]
    # Keyed hashes of the values the statement carries: its bound parameters, then the literals a client
    # interpolated into the text. Empty when it carries none.
    values: tuple[str | None, ...] = ()
    in_list_values: tuple[str, ...] = ()  # hashes of IN (...) list literals and = ANY($n) array elements
    tx: int = 0  # the connection's transaction it ran in (numbered from 1), 0 in autocommit
    shared: bool = False  # its shape ran on another connection of the application just before: pooled work
    traced: bool = False  # one of its keys came from an earlier result the tracer follows (detectors.tracing)
    run: int = 0  # the piece of work (Unit.seq of its run) it belongs to
    loop: int = 0  # the parent result the tracer tied it to (its sequence number), 0 for none
    tenants: frozenset = frozenset()  # keyed hashes of the tenant values it pinned, wrote or returned
    # its cost, once asked (by then its values are all in: the pipeline fills them before the units see it)
    counted: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def end(self) -> float:
        return self.event.started_at + self.event.duration

    @property
    def cost(self) -> int:
        """Bytes this statement holds while its unit is open: the event, its text and value hashes."""
        if self.counted:
            return self.counted
        ev = self.event
        hashes = len(ev.param_hashes) + len(self.values) + len(self.in_list_values)
        for row in ev.result_hashes:
            hashes += len(row) + 1
        self.counted = (STATEMENT_BYTES + sys.getsizeof(ev.sql) + HASH_BYTES * hashes
                        + (TAGS_BYTES if self.tags else 0) + SOURCE_BYTES * len(ev.result_sources))
        return self.counted

    @property
    def labels(self) -> tuple:
        """The sqlcommenter tags that name a piece of application work."""
        t = self.tags
        return (self.trace_id, t.get("route"), t.get("controller"), t.get("action")) if t else (None,) * 4

    @property
    def trace_id(self) -> str | None:
        tp = self.tags.get("traceparent")
        if tp:
            parts = tp.split("-")
            return parts[1] if len(parts) >= 2 else tp
        return None


@dataclass(slots=True)
class Unit:
    conn_id: int
    statements: list[Statement] = field(default_factory=list)
    explicit: bool = False  # a transaction (kind "transaction"), or a run that is all one transaction
    trace_id: str | None = None
    labels: tuple = (None, None, None, None)  # trace id, route, controller, action
    application: str = ""
    reported: str | None = None  # severity of the long_transaction finding raised while it was open
    bytes: int = 0  # what its statements hold (Statement.cost); transactions share their run's
    kind: str = RUN
    rolled_back: bool = False  # undone: a savepoint or transaction rolled back, or tables truncated after it
    seq: int = 0  # runs are numbered per tracker

    @property
    def start(self) -> float:
        return self.statements[0].event.started_at

    @property
    def end(self) -> float:
        return self.statements[-1].end

    def tags(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for s in self.statements:
            merged.update(s.tags)
        return merged


@dataclass(slots=True)
class _Connection:
    run: Unit | None = None
    transaction: Unit | None = None
    transactions: int = 0  # transactions begun so far (Statement.tx)
    savepoints: list = field(default_factory=list)  # (name, index into run.statements)
    began: tuple | None = None  # (the run, index into its statements) where the open transaction began


class UnitTracker:
    """Per-connection grouping. ``add`` returns the units it closed; ``expire`` closes idle ones.

    The statements of open runs are bounded in bytes: past ``limit``, the largest open run is judged
    at once (counted in ``evicted``), as it would be at its end, rather than kept growing."""

    def __init__(self, gap_s: float, max_statements: int, limit: int = DEFAULT_OPEN_UNITS_BYTES):
        self.gap = gap_s
        self.max_statements = max_statements
        self.connections: dict[int, _Connection] = {}
        self.limit = limit
        self.used = 0
        self.evicted = 0
        self.runs = 0

    @property
    def open(self) -> dict[int, Unit]:
        """conn_id -> its open run."""
        return {cid: c.run for cid, c in self.connections.items() if c.run is not None}

    def add(self, stmt: Statement) -> list[Unit]:
        closed: list[Unit] = []
        ev = stmt.event
        conn = self.connections.get(ev.conn_id)
        if conn is None:
            conn = self.connections[ev.conn_id] = _Connection()
        self._transaction(conn, stmt, closed)
        command = ev.command
        if command in ("SAVEPOINT", "RELEASE", "ROLLBACK") and ev.sqlstate is None and self._savepoint(conn, stmt, closed):
            return closed
        if command == "ROLLBACK" and ev.sqlstate is None and ev.tx_after == "I" and conn.began is not None:
            began, conn.began = conn.began, None
            # (a run cut since, at its size cap or a label, keeps what it had; a read-only transaction
            # rolled back is how an ORM session ends, not undone work)
            if began[0] is conn.run and any(s.fp.kind in _WRITES for s in conn.run.statements[began[1]:]):
                conn.savepoints.clear()
                self._undone(conn, began[1], closed)
                return closed
        run = conn.run
        # the connection went back to a pool, or a test's tables were emptied: whatever comes next is new work
        truncate = command.startswith("TRUNCATE") and ev.sqlstate is None
        if truncate or (_may_reset(stmt) and pool_reset(ev.sql)):
            if run is not None:
                run.rolled_back = run.rolled_back or truncate  # what it wrote is gone with the tables
                closed.append(self._end_run(conn))
            return closed
        if run is not None and self._splits(run, stmt):
            closed.append(self._end_run(conn))
            run = None
        if run is None:
            self.runs += 1
            run = conn.run = Unit(ev.conn_id, application=ev.application_name, seq=self.runs)
            run.explicit = stmt.tx != 0
            conn.savepoints.clear()
        if ev.command in _BEGIN and ev.sqlstate is None:
            conn.began = (run, len(run.statements))
        elif ev.tx_after == "I":
            conn.began = None
        run.statements.append(stmt)
        stmt.run = run.seq
        if run.explicit and stmt.tx != run.statements[0].tx:
            run.explicit = False
        cost = stmt.cost
        run.bytes += cost
        self.used += cost
        if stmt.tags:
            run.labels = tuple(b if b is not None else a for a, b in zip(run.labels, stmt.labels, strict=True))
            run.trace_id = run.labels[0]
        while self.used > self.limit:
            runs = [c for c in self.connections.values() if c.run is not None]
            if not runs:
                break
            largest = max(runs, key=lambda c: c.run.bytes)
            closed.append(self._end_run(largest))
            self.evicted += 1
        return closed

    def previous_work(self, stmt: Statement) -> Statement | None:
        """The statement on tables its connection ran before ``stmt`` (just added) in the same piece of work."""
        conn = self.connections.get(stmt.event.conn_id)
        if conn is None or conn.run is None:
            return None
        statements = conn.run.statements
        for i in range(len(statements) - 1, max(-1, len(statements) - 64), -1):
            s = statements[i]
            if s is not stmt and s.fp.tables and s.fp.is_dml:
                return s
        return None

    def _splits(self, run: Unit, stmt: Statement) -> bool:
        ev = stmt.event
        inside = stmt.tx != 0 and stmt.tx == run.statements[-1].tx  # a transaction is never cut by its own pauses
        return (
            (not inside and ev.started_at - run.end > self.gap)
            or (stmt.tags and any(a is not None and b is not None and a != b
                                  for a, b in zip(stmt.labels, run.labels, strict=True)))
            or ev.application_name != run.application
            or len(run.statements) >= self.max_statements
        )

    def _transaction(self, conn: _Connection, stmt: Statement, closed: list[Unit]) -> None:
        """Numbers the statement's transaction, and follows explicit transactions for long_transaction."""
        ev = stmt.event
        begins = ev.command in _BEGIN and ev.sqlstate is None
        inside = ev.tx_before in ("T", "E")
        tx = conn.transaction
        if begins or (inside and tx is None):
            if tx is not None:
                closed.append(tx)
            conn.transactions += 1
            tx = conn.transaction = Unit(ev.conn_id, explicit=True, application=ev.application_name,
                                         kind=TRANSACTION)
        if tx is not None:
            stmt.tx = conn.transactions
            # what long_transaction needs: the first statements and the latest (a test suite's transaction
            # can hold thousands, already charged to their runs)
            if len(tx.statements) < TRANSACTION_KEPT:
                tx.statements.append(stmt)
            else:
                tx.statements[-1] = stmt
            if ev.tx_after == "I" and not begins:
                conn.transaction = None
                closed.append(tx)

    def _savepoint(self, conn: _Connection, stmt: Statement, closed: list[Unit]) -> bool:
        """SAVEPOINT, RELEASE and ROLLBACK TO: True when the statement is one (and is not part of any run)."""
        m = _SAVEPOINT.match(stmt.event.sql)
        if m is None:
            return False
        verb, name = m.group(1).split()[0].lower(), m.group(2).strip('"')
        run = conn.run
        if verb == "savepoint":
            if run is not None:
                conn.savepoints.append((name, len(run.statements)))
            else:
                conn.savepoints.append((name, 0))
            return True
        index = next((i for i in range(len(conn.savepoints) - 1, -1, -1) if conn.savepoints[i][0] == name), None)
        if index is None:
            return True
        at = conn.savepoints[index][1]
        if verb == "release":
            del conn.savepoints[index:]
            return True
        # rolled back: what ran since the savepoint was undone, a piece of work of its own
        del conn.savepoints[index + 1:]
        self._undone(conn, at, closed)
        return True

    def _undone(self, conn: _Connection, at: int, closed: list[Unit]) -> None:
        """The run's statements from ``at`` on were rolled back: they close as a piece of work of their own."""
        run = conn.run
        if run is None or len(run.statements) <= at:
            return
        part = run.statements[at:]
        del run.statements[at:]
        moved = sum(s.cost for s in part)
        run.bytes -= moved
        self.used -= moved
        segment = Unit(run.conn_id, part, explicit=len({s.tx for s in part}) == 1 and part[0].tx != 0,
                       application=run.application, rolled_back=True, seq=run.seq)
        closed.append(segment)
        if not run.statements:
            conn.run = None
        else:
            # What follows is other work (the next test): it must not read as the same piece of work
            # as the undone part, whose results (a loop's parent, a tenant) stay with that part.
            self.runs += 1
            run.seq = self.runs

    def _end_run(self, conn: _Connection) -> Unit:
        run = conn.run
        conn.run = None
        conn.savepoints.clear()
        conn.began = None  # (a ROLLBACK after it cannot undo part of a run that is gone)
        self.used -= run.bytes
        return run

    def expire(self, now: float) -> list[Unit]:
        """Close runs idle for longer than the gap (those inside a transaction stay open until it ends, or
        is abandoned)."""
        closed = []
        for cid, conn in list(self.connections.items()):
            run = conn.run
            if run is not None:
                limit = ABANDONED_TRANSACTION_S if conn.transaction is not None else self.gap
                if now - run.end > limit:
                    closed.append(self._end_run(conn))
            tx = conn.transaction
            if tx is not None and now - tx.end > ABANDONED_TRANSACTION_S:
                conn.transaction = None
                closed.append(tx)
            if conn.run is None and conn.transaction is None:
                del self.connections[cid]
        return closed

    def close(self, conn_id: int) -> list[Unit]:
        """The connection ended: its run and transaction are complete (the server rolled an open one back)."""
        conn = self.connections.pop(conn_id, None)
        if conn is None:
            return []
        closed = []
        if conn.run is not None:
            closed.append(self._end_run(conn))
        if conn.transaction is not None:
            closed.append(conn.transaction)
        return closed

    def open_transactions(self) -> list[Unit]:
        return [c.transaction for c in self.connections.values() if c.transaction is not None]
