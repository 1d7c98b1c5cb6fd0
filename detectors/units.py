"""Units of work: the statements of one connection that belong to one piece of application work.

A unit is an explicit transaction; outside one, a run of statements with no idle gap longer than
the configured gap. A change of sqlcommenter trace id or of application_name starts a new unit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from proxy.events import StatementEvent

from .fingerprint import Fingerprint

_BEGIN = frozenset({"BEGIN", "START"})
# What a Statement costs in memory beyond its text (measured with tracemalloc, tests/test_memory_bounds.py):
# the event and Statement objects, and per value hash (a 16-character str in a tuple) and tag dict.
STATEMENT_BYTES = 800
HASH_BYTES = 90
TAGS_BYTES = 600
DEFAULT_OPEN_UNITS_BYTES = 64 << 20
# A transaction with no statement for this long is treated as gone (its connection likely closed).
ABANDONED_TRANSACTION_S = 3600.0


@dataclass(slots=True)
class Statement:
    event: StatementEvent
    fp: Fingerprint
    tags: dict[str, str]
    # Keyed hashes of the values the statement carries: its bound parameters, or the literals a
    # client interpolated into the text. Empty when it carries none.
    values: tuple[str | None, ...] = ()
    in_list_values: tuple[str, ...] = ()  # hashes of interpolated IN (...) list literals

    @property
    def end(self) -> float:
        return self.event.started_at + self.event.duration

    @property
    def cost(self) -> int:
        """Bytes this statement holds while its unit is open: the event, its text and value hashes."""
        ev = self.event
        hashes = len(ev.param_hashes) + len(self.values) + len(self.in_list_values)
        for row in ev.result_hashes:
            hashes += len(row) + 1
        return STATEMENT_BYTES + sys.getsizeof(ev.sql) + HASH_BYTES * hashes + (TAGS_BYTES if self.tags else 0)

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
    explicit: bool = False  # an explicit transaction (BEGIN ... COMMIT/ROLLBACK)
    trace_id: str | None = None
    labels: tuple = (None, None, None, None)  # trace id, route, controller, action
    application: str = ""
    reported: str | None = None  # severity of the long_transaction finding raised while it was open
    bytes: int = 0  # what its statements hold (Statement.cost)

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


class UnitTracker:
    """Per-connection grouping. ``add`` returns the units it closed; ``expire`` closes idle ones.

    The statements of open units are bounded in bytes: past ``limit``, the largest open unit is judged
    at once (counted in ``evicted``), as it would be at its end, rather than kept growing."""

    def __init__(self, gap_s: float, max_statements: int, limit: int = DEFAULT_OPEN_UNITS_BYTES):
        self.gap = gap_s
        self.max_statements = max_statements
        self.open: dict[int, Unit] = {}
        self.limit = limit
        self.used = 0
        self.evicted = 0

    def add(self, stmt: Statement) -> list[Unit]:
        closed: list[Unit] = []
        ev = stmt.event
        unit = self.open.get(ev.conn_id)
        begins = ev.command in _BEGIN and ev.sqlstate is None
        in_tx = ev.tx_before in ("T", "E")
        if unit is not None:
            split = (
                begins
                or (unit.explicit and not in_tx)
                or (not unit.explicit and in_tx)
                or (not unit.explicit and ev.started_at - unit.end > self.gap)
                or (stmt.tags and any(a is not None and b is not None and a != b
                                      for a, b in zip(stmt.labels, unit.labels, strict=True)))
                or ev.application_name != unit.application
                or len(unit.statements) >= self.max_statements
            )
            if split:
                closed.append(self._pop(ev.conn_id))
                unit = None
        if unit is None:
            unit = Unit(ev.conn_id, explicit=begins or in_tx, application=ev.application_name)
            self.open[ev.conn_id] = unit
        unit.statements.append(stmt)
        cost = stmt.cost
        unit.bytes += cost
        self.used += cost
        if stmt.tags:
            unit.labels = tuple(b if b is not None else a for a, b in zip(unit.labels, stmt.labels, strict=True))
            unit.trace_id = unit.labels[0]
        if unit.explicit and ev.tx_after == "I" and not begins:
            closed.append(self._pop(ev.conn_id))
        while self.used > self.limit and self.open:
            largest = max(self.open.values(), key=lambda u: u.bytes)
            closed.append(self._pop(largest.conn_id))
            self.evicted += 1
        return closed

    def _pop(self, conn_id: int) -> Unit:
        unit = self.open.pop(conn_id)
        self.used -= unit.bytes
        return unit

    def expire(self, now: float) -> list[Unit]:
        """Close units idle for longer than the gap (transactions stay open until they end)."""
        idle = [cid for cid, u in self.open.items()
                if now - u.end > (ABANDONED_TRANSACTION_S if u.explicit else self.gap)]
        return [self._pop(cid) for cid in idle]

    def close(self, conn_id: int) -> Unit | None:
        """The connection ended: its unit is complete (an open transaction was rolled back by the server)."""
        return self._pop(conn_id) if conn_id in self.open else None

    def open_transactions(self) -> list[Unit]:
        return [u for u in self.open.values() if u.explicit]
