"""Fan-outs: one lookup per key sent over a pool's connections at once, with no parent result to trace.

``Promise.all(ids.map(id => db.query(...)))`` or ``asyncio.gather`` over the ids a request carried: the
iterations of the loop run concurrently on several connections, and their keys come from the request,
not from an earlier result the tracer could follow (``detectors.tracing``). What marks it on the wire is
its shape in time: a burst of one statement shape with different keys, over several connections at
once, with nothing else from the application while it lasts, and quiet before and after. A load test
of a one-query endpoint looks alike only while it is short; one that goes on is no burst.

Pure bookkeeping over statements, like the tracer: the pipeline feeds statements and asks for the bursts
that have ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectors.tracing import LoopMemory
from detectors.units import Statement

GAP_S = 0.1  # consecutive statements of a burst start at most this far apart
QUIET_S = 1.0  # the shape did not run for this long before the burst, nor does it after
MAX_SPAN_S = 1.0  # a burst lasts at most this long ...
MAX_STATEMENTS = 200  # ... and holds at most this many statements: beyond, it is steady traffic
MIN_CONNECTIONS = 2


@dataclass(slots=True)
class Burst:
    statements: list[Statement] = field(default_factory=list)
    keys: set = field(default_factory=set)
    connections: set = field(default_factory=set)
    broken: bool = False  # the application ran something else meanwhile, or it grew past a burst
    cost: int = 0  # bytes its statements hold (LoopMemory)

    last: float = 0.0  # the latest start among its statements

    @property
    def first(self) -> float:
        return self.statements[0].event.started_at if self.statements else self.last


@dataclass(slots=True)
class _Application:
    burst: Burst | None = None
    shape: str | None = None  # the burst's statement shape
    last_seen: dict = field(default_factory=dict)  # shape -> when it last ran (a few recent shapes)


class Bursts:
    def __init__(self, memory: LoopMemory | None = None) -> None:
        self.memory = memory or LoopMemory(16 << 20)
        self._apps: dict[tuple[str, str], _Application] = {}
        self._ended: list[tuple[Burst, _Application, str]] = []  # waiting for quiet after them

    def observe(self, stmt: Statement, keys: tuple[str, ...]) -> None:
        """An application statement on tables (``keys``: what it looks up or writes by)."""
        ev = stmt.event
        where = (ev.database, ev.application_name)
        app = self._apps.get(where)
        if app is None:
            if len(self._apps) >= 4096:
                return
            app = self._apps[where] = _Application()
        now = ev.started_at
        fp_id = stmt.fp.id
        burst = app.burst
        if burst is not None and now - burst.last > GAP_S:
            self._end(app)
            burst = None
        if burst is not None and app.shape == fp_id:
            if not burst.broken:
                if len(burst.statements) >= MAX_STATEMENTS or now - burst.first > MAX_SPAN_S:
                    self._break(burst)  # steady traffic: only its timing is followed from now on
                elif self._keep(burst, stmt):
                    burst.keys.add(keys)
                    burst.connections.add(ev.conn_id)
            burst.last = max(burst.last, now)
        elif burst is not None:
            self._break(burst)  # something else of the application's ran meanwhile
        elif keys and now - app.last_seen.get(fp_id, -1e18) > QUIET_S and self.memory.take(stmt.fp.size):
            burst = app.burst = Burst(last=now, cost=stmt.fp.size)  # (its shape, which the caches may drop)
            app.shape = fp_id
            if self._keep(burst, stmt):
                burst.keys.add(keys)
                burst.connections.add(ev.conn_id)
        seen = app.last_seen
        seen[fp_id] = now
        if len(seen) > 64:
            del seen[next(iter(seen))]

    def _break(self, burst: Burst) -> None:
        if not burst.broken:
            burst.broken = True
            self.memory.give(burst.cost)
            burst.cost = 0
            burst.last = max(burst.last, burst.first)
            burst.statements = []

    def _keep(self, burst: Burst, stmt: Statement) -> bool:
        cost = stmt.cost
        if not self.memory.take(cost):
            self._break(burst)
            return False
        burst.statements.append(stmt)
        burst.cost += cost
        return True

    def _end(self, app: _Application) -> None:
        burst = app.burst
        app.burst = None
        if burst is None:
            return
        if not burst.broken and len(burst.connections) >= MIN_CONNECTIONS:
            self._ended.append((burst, app, app.shape))
        else:
            self.memory.give(burst.cost)

    def due(self, now: float, final: bool = False) -> list[Burst]:
        """Bursts that have ended, with quiet after them (at the end, all that ended)."""
        for app in self._apps.values():
            if app.burst is not None and (final or now - app.burst.last > GAP_S):
                self._end(app)
        out, waiting = [], []
        for burst, app, shape in self._ended:
            if app.last_seen.get(shape, 0.0) > burst.last or final or now - burst.last > QUIET_S:
                self.memory.give(burst.cost)
                # (a shape that ran again soon after is steady traffic, not one burst)
                if app.last_seen.get(shape, 0.0) <= burst.last:
                    out.append(burst)
            else:
                waiting.append((burst, app, shape))
        self._ended = waiting
        return out
