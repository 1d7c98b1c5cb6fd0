"""The contract between proxy/ and detectors/: what the relay tells the analysis, as plain data."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields


@dataclass(slots=True)
class ConnectionInfo:
    conn_id: int
    client_addr: str
    user: str = ""
    database: str = ""
    application_name: str = ""


@dataclass(slots=True)
class StatementEvent:
    """One statement as the wire showed it. Holds keyed hashes of values, never the values."""

    conn_id: int
    user: str
    database: str
    application_name: str
    client_addr: str
    sql: str
    protocol: str  # "simple" | "extended" | "function"
    statement_name: str | None  # prepared statement name for extended protocol ("" = unnamed)
    param_count: int
    param_hashes: tuple[str | None, ...]
    result_hashes: tuple[tuple[str | None, ...], ...]
    started_at: float  # wall clock, seconds since the epoch
    # seconds, to CommandComplete / ErrorResponse / PortalSuspended, less proxy_lag
    duration: float
    command: str  # command tag verb: SELECT, INSERT, COPY, BEGIN ...
    rows: int | None
    response_bytes: int
    sqlstate: str | None
    tx_before: str  # ReadyForQuery status letters: I idle, T in transaction, E failed transaction
    tx_after: str
    in_transaction: bool  # ran inside an explicit BEGIN ... COMMIT/ROLLBACK
    pipelined: bool = False  # sent before the previous statement's response ended: no round trip of its own
    # The part of the measured time the forwarding loop was stalled (a saturated proxy): the response
    # may have waited that long in the socket, so it is taken off duration, not blamed on the server.
    proxy_lag: float = 0.0
    ended: float = 0.0  # monotonic clock when the response ended (matches the proxy's stall records)
    extra: dict = field(default_factory=dict)
    # keyed hashes of the elements of array parameters compared with = ANY($n): ((n - 1, hashes), ...)
    array_hashes: tuple = ()
    # per column of result_hashes: (table OID, column number) it was read from, (0, 0) when computed
    result_sources: tuple = ()

    def __reduce__(self):  # positional: a third of the default pickle's cost (events cross from workers)
        return StatementEvent, _event_fields(self)

    def __repr__(self) -> str:  # never print hashes in bulk; sql is already what the client sent
        return (
            f"StatementEvent(conn={self.conn_id}, {self.command or '?'} rows={self.rows} "
            f"{self.duration * 1000:.2f}ms sqlstate={self.sqlstate} sql={self.sql[:80]!r})"
        )


_event_fields = operator.attrgetter(*(f.name for f in fields(StatementEvent)))


@dataclass(slots=True)
class ConnectionClosed:
    """A client session ended: its open unit of work can be judged now."""

    conn_id: int
    at: float  # wall clock
