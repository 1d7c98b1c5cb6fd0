"""Main-process side of a worker's capture: its records in, statement events out, through the
session trackers (sans-IO: the caller passes the clock)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.events import ConnectionClosed, ConnectionInfo
from proxy.protocol.capture import CLIENT, CLOSE, OPEN, PREPARED, REC, RESYNC, SERVER, STATEMENT_TYPES, STOP
from proxy.protocol.stalls import discount_stalls
from proxy.protocol.wire import HEADER


@dataclass(slots=True)
class Captured:
    """A queue item: one shipment of a worker's capture for its Replayer, or (raw empty) a control:
    "desync" after a shipment was dropped, "gone" when the worker died."""

    replayer: Replayer
    raw: bytes
    stalls: list
    action: str = ""


def count_statements(raw: bytes) -> int:
    """Statements (Query, Execute, FunctionCall) in the client records of a dropped shipment."""
    count = 0
    pos = 0
    n = len(raw)
    unpack = REC.unpack_from
    while pos < n:
        _conn, kind, _now, length = unpack(raw, pos)
        pos += REC.size
        if kind == CLIENT:  # chunks start at a message (a partial header is held back), bar continuations
            end = pos + length
            at = pos
            while at + 5 <= end:
                if raw[at] in STATEMENT_TYPES:
                    count += 1
                at += 1 + HEADER.unpack_from(raw, at)[1]
        pos += length
    return count


class Replayer:
    """Main-process side: the records of one worker in, statement events out (via the trackers).

    Whatever a shipment holds, feeding it never raises: a tracker contains its own failures (the
    session starts over at its next clean point), a session whose stream cannot be framed any more is
    dropped (its worker ended it too), and a shipment whose records cannot be read is lost like a
    dropped one (``on_lost`` asks the worker to resynchronise its sessions)."""

    def __init__(self, make_tracker, wall_offset: float, on_error=None, on_lost=None):
        self.make_tracker = make_tracker  # (ConnectionInfo, transaction status) -> SessionTracker
        self.wall_offset = wall_offset  # time.time() - time.monotonic()
        self.on_error = on_error  # (conn_id, exception): a session's analysis ended
        self.on_lost = on_lost  # (): a shipment could not be read
        self.trackers: dict = {}
        self.desynced: set = set()  # sessions whose records were dropped: ignored until their RESYNC
        self.errors = 0
        self.records = 0  # records fed so far: the analysis's progress, for its stall watch
        self.last = 0.0  # the worker's clock at its latest record

    def feed(self, raw: bytes) -> list:
        out: list = []
        unpack = REC.unpack_from
        size = REC.size
        pos = 0
        n = len(raw)
        while pos < n:
            if pos + size > n:
                self._lost_shipment()
                break
            conn_id, kind, now, length = unpack(raw, pos)
            pos += size
            if pos + length > n:
                self._lost_shipment()
                break
            body = raw[pos:pos + length]
            pos += length
            self.records += 1
            self.last = now
            try:
                self._record(conn_id, kind, now, body, out)
            except Exception as exc:  # this session only; the shipment's other records go on
                self.errors += 1
                self.trackers.pop(conn_id, None)
                if self.on_error is not None:
                    self.on_error(conn_id, exc)
        return out

    def _record(self, conn_id: int, kind: int, now: float, body: bytes, out: list) -> None:
        trackers = self.trackers
        if kind <= SERVER:
            tracker = trackers.get(conn_id)
            if tracker is None or conn_id in self.desynced:
                return
            if kind == SERVER:
                events = tracker.server_data(body, now)
                if events:
                    out.extend(events)
            else:
                tracker.client_data(body, now)
        elif kind == OPEN or kind == RESYNC:
            self.desynced.discard(conn_id)
            user, database, app, addr, tx = (body.decode("utf-8", "replace").split("\0") + [""] * 5)[:5]
            tracker = trackers.get(conn_id) if kind == RESYNC else None
            if tracker is None:
                info = ConnectionInfo(conn_id, addr, user, database, app)
                trackers[conn_id] = self.make_tracker(info, tx if tx in ("I", "T", "E") else "I")
            else:
                tracker.resync(tx if tx in ("I", "T", "E") else "I")
        elif kind == CLOSE:
            trackers.pop(conn_id, None)
            self.desynced.discard(conn_id)
            out.append(ConnectionClosed(conn_id, now + self.wall_offset))
        elif kind == STOP:
            trackers.pop(conn_id, None)
        elif kind == PREPARED:
            tracker = trackers.get(conn_id)
            if tracker is not None:
                tracker.restore_prepared(body)

    def _lost_shipment(self) -> None:
        self.errors += 1
        self.desync()
        if self.on_lost is not None:
            self.on_lost()

    def desync(self) -> None:
        """A shipment was lost: every session's stream has a hole until the worker resynchronises it."""
        self.desynced.update(self.trackers)

    def close_all(self, wall: float) -> list:
        """The worker is gone and its sessions with it."""
        closed = [ConnectionClosed(conn_id, wall) for conn_id in self.trackers]
        self.trackers.clear()
        self.desynced.clear()
        return closed


def replay(batch: list, on_error=None) -> list:
    """A batch from the main process's queue with every Captured item replaced by its events (on the
    analysis thread: the replayers are only ever touched from there). An item that fails costs its own
    events only (``on_error(exception)``), never the batch's others."""
    if not any(type(item) is Captured for item in batch):
        return batch
    out: list = []
    for item in batch:
        try:
            if type(item) is not Captured:
                out.append(item)
            elif item.action == "desync":
                item.replayer.desync()
            elif item.action == "gone":
                out += item.replayer.close_all(item.replayer.last + item.replayer.wall_offset)
            else:
                events = item.replayer.feed(item.raw)
                if events:
                    discount_stalls(item.stalls, events)
                    out += events
        except Exception as exc:
            if on_error is not None:
                on_error(exc)
    return out
