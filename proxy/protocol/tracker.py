"""Turn the two byte streams of one session into statement events (sans-IO).

The proxy feeds this everything it relays after authentication: client bytes to ``client_data``,
server bytes to ``server_data``, each with the monotonic time it arrived. Requests that expect a
response (Query, Parse, Bind, Describe, Execute, Close, Sync, FunctionCall) are queued in the order
sent; server messages answer them in that same order, which is how pipelined executions are
matched to their results. After an error the server skips everything up to the next Sync, and so
does the queue.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from proxy.events import ConnectionInfo, StatementEvent
from proxy.protocol import wire
from proxy.protocol.capture import MARKER_BODY, OMITTED
from proxy.protocol.framing import Framer, message_types
from proxy.protocol.hashing import ValueHasher, array_elements
from proxy.protocol.prepared import SESSION_PREPARED_BYTES, PreparedTexts
from proxy.protocol.sqlsplit import skip_comments, split_statements

# Request kinds in the pending queue. REJECTED: a request the server cannot read either; it answers
# it with an ErrorResponse (and skips to the next Sync), so it holds its place without a statement.
PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY, FUNCTION, REJECTED = range(9)
_NO_EVENTS: list[StatementEvent] = []
DEFAULT_MAX_ANALYSED = 16 << 20  # bytes of one message kept for analysis (the whole message is relayed)
# Per session: what a client's named portals and very wide Binds can make a tracker hold stays bounded.
MAX_PORTALS = 64
MAX_HASHED_PARAMS = 1024  # parameters hashed per execution (the detectors compare values, not counts)

_FRONT_WANTED = message_types(b"QPBDECSFX")
_BACK_BASE = message_types(b"TtCEZSs")
D = ord("D")
# ParseComplete, BindComplete, CloseComplete, NoData, FunctionCallResponse: each answers one request.
_SIMPLE_COMPLETIONS = message_types(b"123nV")
_BATCH_END = (SYNC, QUERY, FUNCTION)
# The first message of each statement's response within a simple Query.
_STATEMENT_START = message_types(b"TCGHI")
NOT_KEPT = "/* pgloupe: the text of this prepared statement was not kept (analysis_memory_mb) */"
_SHARED_TEXTS = PreparedTexts()  # for trackers built without one (tests, benchmarks)


class _Prepared:
    """A named statement's text, charged to the process's PreparedTexts for as long as it lives.

    The charge is returned in ``__del__``: a statement is dropped on many paths (Close, a Parse over it,
    an error, a resync, the session's end), and CPython frees it the moment the last one lets go."""

    __slots__ = ("sql", "param_oids", "row_desc", "any_params", "_texts", "_session")

    def __init__(self, sql: str, param_oids: tuple[int, ...], texts: PreparedTexts, session: list):
        cost = texts.cost(sql)
        kept = texts.keep(sql) if session[0] + cost <= SESSION_PREPARED_BYTES else None
        if kept is None:
            if session[0] + cost > SESSION_PREPARED_BYTES:
                texts.evicted += 1
            self.sql = NOT_KEPT
            self._texts = None
        else:
            self.sql = kept
            self._texts = texts
            session[0] += cost
        self._session = session
        self.param_oids = param_oids
        self.row_desc: wire.RowDescription | None = None
        # parameters the statement reads as arrays of keys (= ANY($n)): their elements are hashed one by one
        self.any_params = _any_params(sql) if ("ANY" in sql or "any" in sql) else ()

    def __del__(self):
        texts = self._texts
        if texts is not None:
            self._texts = None
            self._session[0] -= texts.cost(self.sql)
            texts.release(self.sql)


# The three below are plain classes, not dataclasses: compiled, tracker.pxd makes them C structs.
class _Portal:
    __slots__ = ("sql", "statement", "param_hashes", "result_formats", "row_desc", "arrays")

    def __init__(self, sql: str, statement: str, param_hashes: tuple, result_formats: tuple,
                 row_desc: tuple | None, arrays: tuple = ()):
        self.sql = sql
        self.statement = statement  # the prepared statement's name ("" unnamed)
        self.param_hashes = param_hashes
        self.result_formats = result_formats
        self.row_desc = row_desc
        self.arrays = arrays  # (parameter index, its elements' hashes) for = ANY($n) arrays


class _Exec:
    """One statement in flight: an Execute, or one statement of a simple Query."""

    __slots__ = ("sql", "protocol", "statement_name", "param_hashes", "sent", "row_desc", "result_formats",
                 "arrays", "result_hashes", "rows_seen", "nbytes")

    def __init__(self, sql: str, protocol: str, statement_name: str | None, param_hashes: tuple, sent: float,
                 row_desc: tuple | None, result_formats: tuple, arrays: tuple = ()):
        self.sql = sql
        self.protocol = protocol
        self.statement_name = statement_name
        self.param_hashes = param_hashes
        self.sent = sent
        self.row_desc = row_desc
        self.result_formats = result_formats
        self.arrays = arrays
        self.result_hashes: list[tuple[str | None, ...]] = []
        self.rows_seen = 0
        self.nbytes = 0


class _Query:
    __slots__ = ("statements", "sent", "index", "current")

    def __init__(self, statements: list[str], sent: float):
        self.statements = statements
        self.sent = sent
        self.index = 0
        self.current: _Exec | None = None


def _formats(codes: tuple[int, ...], n: int) -> tuple[int, ...]:
    if not codes:
        return (0,) * n
    if len(codes) == 1:
        return codes * n
    return codes


@dataclass(slots=True)
class _Lost:
    """Where a session whose analysis failed stands, from frame headers only, until its next clean point:
    nothing awaiting an answer and both streams between messages. Each Query, Sync and FunctionCall is
    answered by exactly one ReadyForQuery, so counting them needs no other state."""

    outstanding: int
    tx: str
    unsynced: bool = True  # extended-protocol messages may be waiting for a Flush's answers
    client_at: float = 0.0
    server_at: float = 0.0

    @property
    def busy(self) -> bool:
        return self.outstanding > 0 or (self.unsynced and self.client_at >= self.server_at)


_SYNCS = frozenset(b"QSF")
_EXTENDED = frozenset(b"PBDECH")


class SessionTracker:
    """Statement facts of one client session, from the bytes relayed in both directions.

    Nothing a client sends stops it: a message the server cannot read either is rejected here as
    there (it keeps its place in the queue, as the server answers it with an error), and any other
    failure costs this session's analysis only until its next clean point, where the tracker starts
    over (``on_error`` hears of each failure; only ``InvalidLength``, a stream that cannot be framed,
    reaches the caller, which ends the session as the server would)."""

    def __init__(
        self,
        info: ConnectionInfo,
        hasher: ValueHasher,
        result_rows: int = 16,
        result_cells: int = 32,
        max_message: int = wire.DEFAULT_MAX_MESSAGE,
        max_analysed: int = DEFAULT_MAX_ANALYSED,
        markers: bool = False,
        tx: str = "I",
        texts: PreparedTexts | None = None,
        on_error=None,
        wall_offset: float = 0.0,
    ):
        self.info = info
        self.hasher = hasher
        self.result_rows = result_rows
        self.result_cells = result_cells
        self.max_analysed = max_analysed
        self.max_message = max_message
        # Fed by a Replayer (workers): the OMITTED frames a SessionGauge put in place of what it did not ship
        self._front_wanted = bytearray(_FRONT_WANTED)
        self._front_wanted[OMITTED] = 1 if markers else 0
        self._back_wanted = bytearray(_BACK_BASE)
        self._back_wanted[OMITTED] = 1 if markers else 0
        self._back_wanted[D] = 1 if result_rows else 0
        self._front = Framer(self._front_wanted, max_message, max_analysed)
        self._back = Framer(self._back_wanted, max_message, max_analysed)
        self._pending: deque = deque()
        self._statements: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        self._tx = tx
        self._prev_done = 0.0
        # wall clock minus the monotonic clock the caller's ``now`` is read from (events carry wall time)
        self._wall_offset = wall_offset
        self.terminated = False
        self.fatal = False  # the server sent a FATAL error: it is closing the session itself
        self._texts = texts if texts is not None else _SHARED_TEXTS
        self._session_bytes = [0]  # what this session's statements are charged, for its share
        self._lost: _Lost | None = None  # set while the analysis waits for a clean point to start over
        self.on_error = on_error  # (tracker, exception) -> None: counted and logged by the owner
        self.errors = 0
        self.resumed = 0  # times the analysis started over after a failure

    # ------------------------------------------------------------------ state for the server

    def stop(self) -> None:
        """Nothing to release: the owner drops the tracker."""

    def closed(self, now: float) -> bool:
        return True  # the events this tracker produced are the analysis's; the owner queues the end

    def resync(self, tx: str) -> None:
        """Capture resumes after a gap, at a point where nothing was in flight: start both streams over.
        Statements prepared before the gap are kept (those prepared or closed inside it are not known)."""
        self._front = Framer(self._front_wanted, self.max_message, self.max_analysed)
        self._back_wanted[D] = 1 if self.result_rows else 0
        self._back = Framer(self._back_wanted, self.max_message, self.max_analysed)
        self._pending.clear()
        self._portals.clear()
        self._tx = tx
        self._prev_done = 0.0

    def restore_prepared(self, frames: bytes) -> None:
        """After a resync: the session's named statements, as the Parse messages that made them. One the
        server could not read either (it answered with an error) never named a statement: skipped."""
        for mtype, body, _length in Framer(_FRONT_WANTED, self.max_message).feed(frames):
            if mtype != 0x50 or body is None:
                continue
            try:
                parse = wire.decode_parse(body)
            except wire.ProtocolError:
                continue
            known = self._statements.get(parse.name)
            if known is None or known.sql != parse.sql:  # keep what a Describe taught about a known one
                self._statements[parse.name] = self._prepared(parse.sql, parse.param_oids)

    def _prepared(self, sql: str, param_oids: tuple[int, ...]) -> _Prepared:
        return _Prepared(sql, param_oids, self._texts, self._session_bytes)

    @property
    def busy(self) -> bool:
        """A request is awaiting its response (used to cancel work of a vanished client)."""
        lost = self._lost
        return lost.busy if lost is not None else bool(self._pending)

    @property
    def server_at_boundary(self) -> bool:
        return self._back.at_boundary

    @property
    def transaction_status(self) -> str:
        lost = self._lost
        return lost.tx if lost is not None else self._tx

    @property
    def lost(self) -> bool:
        """The analysis failed and waits for the session's next clean point."""
        return self._lost is not None

    # ------------------------------------------------------------------ client -> server

    def client_data(self, data: bytes, now: float) -> None:
        lost = self._lost
        if lost is not None:
            if lost.busy or not self._front.at_boundary or not self._back.at_boundary:
                self._front.start(data)
                self._follow_client(self._front, now)
                return
            self._lost = None  # a clean point: start over from here
            self.resumed += 1
            self.resync(lost.tx)
        frames = self._front
        frames.start(data)
        while frames.next():
            mtype = frames.mtype
            body = frames.body
            length = frames.length
            try:
                if mtype == OMITTED and body is not None:
                    mtype, _count, length = MARKER_BODY.unpack(body)
                    body = None
                if body is None:
                    if length > self.max_analysed and _FRONT_WANTED[mtype]:
                        self._too_large(mtype, length, now)
                    continue  # CopyData, CopyDone, CopyFail, Flush: no response of their own
                if mtype == 0x42:  # B Bind
                    self._bind(body)
                elif mtype == 0x45:  # E Execute
                    portal_name, _max_rows = wire.decode_execute(body)
                    portal = self._portals.get(portal_name)
                    if portal is None:
                        ex = _Exec("", "extended", None, (), now, None, ())
                    else:
                        ex = _Exec(portal.sql, "extended", portal.statement, portal.param_hashes, now,
                                   portal.row_desc, portal.result_formats, portal.arrays)
                    self._pending.append((EXECUTE, ex))
                elif mtype == 0x50:  # P Parse
                    parse = wire.decode_parse(body)
                    previous = self._statements.get(parse.name)
                    self._statements[parse.name] = self._prepared(parse.sql, parse.param_oids)
                    self._pending.append((PARSE, (parse.name, previous)))
                elif mtype == 0x53:  # S Sync
                    self._pending.append((SYNC, None))
                elif mtype == 0x51:  # Q Query
                    self._pending.append((QUERY, _Query(split_statements(wire.decode_query(body)), now)))
                elif mtype == 0x44:  # D Describe
                    self._pending.append((DESCRIBE, wire.decode_target(body)))
                elif mtype == 0x43:  # C Close
                    kind, name = wire.decode_target(body)
                    (self._statements if kind == "S" else self._portals).pop(name, None)
                    self._pending.append((CLOSE, None))
                elif mtype == 0x46:  # F FunctionCall
                    self._pending.append((FUNCTION, now))
                elif mtype == 0x58:  # X Terminate
                    self.terminated = True
            except wire.ProtocolError:
                self._reject(mtype, now)
            except Exception as exc:
                # Each branch queues its request last: the one that raised was not queued.
                self._lose(exc, 1 if mtype in (0x51, 0x46) else 0)
                self._follow_client(frames, now)
                return

    def _reject(self, mtype: int, now: float) -> None:
        """A request the server cannot read either: it answers it with an ErrorResponse, as a
        statement that failed (a Query's comes with ReadyForQuery; the others' make it skip to Sync)."""
        if mtype == 0x51:
            self._pending.append((QUERY, _Query([], now)))
        else:
            if mtype == 0x42:
                self._portals.pop("", None)  # an Execute after it must not run the previous statement
            self._pending.append((REJECTED, None))

    def _lose(self, exc: Exception, unqueued: int) -> None:
        """Stop analysing this session until its next clean point (``unqueued``: a Query or FunctionCall
        that failed before it was queued, whose ReadyForQuery is still to come)."""
        self.errors += 1
        outstanding = unqueued + sum(1 for kind, _ in self._pending if kind in _BATCH_END)
        self._lost = _Lost(outstanding, self._tx)
        self._pending.clear()
        self._portals.clear()
        if self.on_error is not None:
            self.on_error(self, exc)

    def _follow_client(self, frames: Framer, now: float) -> None:
        """The rest of the chunk ``frames`` was started on, followed while the session is lost."""
        lost = self._lost
        assert lost is not None  # only called while the session is lost
        while frames.next():
            mtype = frames.mtype
            body = frames.body
            count = 1
            if mtype == OMITTED and body is not None and len(body) == MARKER_BODY.size:
                mtype, count, _ = MARKER_BODY.unpack(body)
            if mtype in _SYNCS:
                lost.outstanding += count
                if mtype == 0x53:
                    lost.unsynced = False
            elif mtype in _EXTENDED:
                lost.unsynced = True
            elif mtype == 0x58:
                self.terminated = True
        lost.client_at = now

    def _follow_server(self, frames: Framer, now: float) -> None:
        lost = self._lost
        assert lost is not None  # only called while the session is lost
        while frames.next():
            mtype = frames.mtype
            body = frames.body
            if body is None:
                continue
            if mtype == 0x5A:  # ReadyForQuery answers one Query, Sync or FunctionCall
                if lost.outstanding:
                    lost.outstanding -= 1
                if body:
                    lost.tx = chr(body[0])
            elif mtype == 0x45:
                self.fatal = b"VFATAL\0" in body or b"VPANIC\0" in body
            elif mtype == 0x53 and body.startswith(b"application_name\0"):
                self.info.application_name = body[17:-1].decode("utf-8", "replace")
        lost.server_at = now

    def _too_large(self, mtype: int, length: int, now: float) -> None:
        """A request too large to keep for analysis: it still expects its response, so it still takes
        its place in the queue, with a stand-in for the text nobody read."""
        sql = f"/* pgloupe: a message of {length} bytes, larger than max_analysed_message_size */"
        if mtype == 0x51:  # Q
            self._pending.append((QUERY, _Query([sql], now)))
        elif mtype == 0x50:  # P: its name is in the unread body, so no statement is remembered
            self._pending.append((PARSE, ("\0unknown", None)))
        elif mtype == 0x42:  # B
            self._pending.append((BIND, None))
        elif mtype == 0x46:  # F
            self._pending.append((FUNCTION, now))
        else:  # Describe, Execute, Close, Sync of this size: the server ends the session (FATAL)
            raise TooLarge(f"a {chr(mtype)!r} message of {length} bytes")

    def _bind(self, body: bytes) -> None:
        bind = wire.decode_bind(body)
        stmt = self._statements.get(bind.statement)
        params = bind.params
        if len(params) > MAX_HASHED_PARAMS:
            params = params[:MAX_HASHED_PARAMS]
        if not bind.param_formats or bind.param_formats == (0,):  # all text: no per-value type lookups
            text = self.hasher.text
            hashes = tuple([None if v is None else text(v) for v in params])
        else:
            oids = stmt.param_oids if stmt else ()
            fmts = _formats(bind.param_formats, len(params))
            digest = self.hasher.digest
            hashes = tuple([
                digest(v, oids[i] if i < len(oids) else 0, fmts[i] if i < len(fmts) else 0)
                for i, v in enumerate(params)
            ])
        if stmt is None:
            portal = _Portal("", bind.statement, hashes, bind.result_formats, None)
        else:
            arrays = self._arrays(stmt, bind, params) if stmt.any_params else ()
            portal = _Portal(stmt.sql, bind.statement, hashes, bind.result_formats, stmt.row_desc, arrays)
        portals = self._portals
        if len(portals) >= MAX_PORTALS and bind.portal not in portals:
            del portals[next(iter(portals))]  # the oldest: named portals live until their transaction ends
        portals[bind.portal] = portal
        self._pending.append((BIND, None))

    def _arrays(self, stmt: _Prepared, bind: wire.Bind, params) -> tuple:
        oids = stmt.param_oids
        fmts = _formats(bind.param_formats, len(params))
        digest = self.hasher.digest
        out = []
        for i in stmt.any_params:
            if i >= len(params) or params[i] is None:
                continue
            elements = array_elements(params[i], oids[i] if i < len(oids) else 0, fmts[i] if i < len(fmts) else 0)
            if elements:
                out.append((i, tuple(digest(v, oid, fmt) for v, oid, fmt in elements)))
        return tuple(out)

    # ------------------------------------------------------------------ server -> client

    def server_data(self, data: bytes, now: float) -> list[StatementEvent]:
        frames = self._back
        frames.start(data)
        if self._lost is not None:
            self._follow_server(frames, now)
            return _NO_EVENTS
        try:
            return self._responses(frames, now)
        except Exception as exc:  # the events of this chunk up to the failure are lost with it
            self._lose(exc, 0)
            self._follow_server(frames, now)
            return _NO_EVENTS

    def _responses(self, frames: Framer, now: float) -> list[StatementEvent]:
        events = _NO_EVENTS
        pending = self._pending
        while frames.next():
            mtype = frames.mtype
            body = frames.body
            length = frames.length
            count = 1
            if mtype == OMITTED and body is not None:
                mtype, count, length = MARKER_BODY.unpack(body)
                body = None
            if not pending:
                if mtype == 0x5A:  # ReadyForQuery with nothing pending (after startup)
                    self._tx = chr(body[0]) if body else "I"
                elif mtype == 0x53 and body is not None:
                    self._parameter_status(body)
                elif mtype == 0x45 and body is not None:
                    self.fatal = wire.decode_fields(body).get("V") in ("FATAL", "PANIC")
                continue
            kind, op = pending[0]
            if kind == QUERY:
                q = op
                ex = q.current
                if ex is None and _STATEMENT_START[mtype] and q.statements:
                    ex = self._start_statement(q, now)
            elif kind == EXECUTE:
                ex = op
            else:
                ex = None
            if mtype == D:
                if ex is not None:
                    ex.rows_seen += count
                    ex.nbytes += length + count
                    if body is not None:
                        self._hash_row(ex, body)
                continue
            if ex is not None:
                ex.nbytes += length + 1
            if body is None:
                if _SIMPLE_COMPLETIONS[mtype]:
                    self._done(now)
                elif mtype == 0x49 and kind == EXECUTE:  # I EmptyQueryResponse
                    self._done(now)
                continue  # CopyData, notices, notifications
            if mtype == 0x43:  # C CommandComplete
                command, rows = wire.decode_command_tag(body)
                if kind == QUERY:
                    if ex is None:
                        ex = self._start_statement(q, now)
                    event = self._finish(ex, now, command, rows, None)
                    q.index += 1
                    q.current = None
                elif kind == EXECUTE:
                    event = self._finish(ex, now, command, rows, None)
                    pending.popleft()
                else:
                    continue
                if events is _NO_EVENTS:
                    events = []
                events.append(event)
            elif mtype == 0x54:  # T RowDescription
                desc = wire.decode_row_description(body)
                if kind == QUERY:
                    if ex is not None:
                        ex.row_desc = desc
                elif kind == DESCRIBE:
                    target = (self._statements if op[0] == "S" else self._portals).get(op[1])
                    if target is not None:
                        target.row_desc = desc
                        if op[0] == "P":  # Bind, Describe portal, Execute in one batch: the Execute is queued
                            for k, later in pending:
                                if k == EXECUTE and later.row_desc is None and later.sql is target.sql:
                                    later.row_desc = desc
                                    break
                    self._done(now)
                elif kind == EXECUTE:
                    ex.row_desc = desc
            elif mtype == 0x5A:  # Z ReadyForQuery
                self._tx = chr(body[0]) if body else "I"
                while pending:
                    k, _ = pending.popleft()
                    if k in _BATCH_END:
                        break
                self._prev_done = now
            elif mtype == 0x45:  # E ErrorResponse
                failed = self._error(kind, op, body, now)
                if failed is not None:
                    if events is _NO_EVENTS:
                        events = []
                    events.append(failed)
            elif mtype == 0x74:  # t ParameterDescription
                if kind == DESCRIBE and op[0] == "S":
                    stmt = self._statements.get(op[1])
                    if stmt is not None:
                        stmt.param_oids = wire.decode_parameter_description(body)
            elif mtype == 0x73:  # s PortalSuspended
                if kind == EXECUTE:
                    if events is _NO_EVENTS:
                        events = []
                    events.append(self._finish(ex, now, "SELECT", ex.rows_seen, None))
                    pending.popleft()
            elif mtype == 0x53:
                self._parameter_status(body)
        return events

    def _done(self, now: float) -> None:
        """A request answered by one message. Parse/Bind/Describe/Close answers arrive in the same
        buffer as the results that follow them, so they do not move the start of the next statement."""
        kind, _ = self._pending.popleft()
        if kind == FUNCTION:
            self._prev_done = now

    def _start_statement(self, q: _Query, now: float) -> _Exec:
        sql = q.statements[q.index] if q.index < len(q.statements) else "; ".join(q.statements)
        q.current = _Exec(sql, "simple", None, (), q.sent, None, ())
        return q.current

    def _hash_row(self, ex: _Exec, body: bytes) -> None:
        cells = wire.decode_data_row(body)
        if len(cells) > self.result_cells:
            del cells[self.result_cells:]
        limit = self.hasher.max_bytes
        formats = ex.result_formats
        hashes = []
        if not formats or formats == (0,):  # all text (the usual case): no per-cell type lookups
            text = self.hasher.text
            for c in cells:
                hashes.append(None if c is None or len(c) > limit else text(c))
        else:
            oids = ex.row_desc[0] if ex.row_desc else ()
            fmts = _formats(formats, len(cells))
            digest = self.hasher.digest
            for i, c in enumerate(cells):
                hashes.append(None if c is None or len(c) > limit
                              else digest(c, oids[i] if i < len(oids) else 0, fmts[i] if i < len(fmts) else 0))
        ex.result_hashes.append(tuple(hashes))
        if len(ex.result_hashes) >= self.result_rows:
            self._back_wanted[D] = 0

    def _finish(self, ex: _Exec, now: float, command: str, rows: int | None, sqlstate: str | None) -> StatementEvent:
        before = self._tx
        if sqlstate is not None:
            if before == "T":
                self._tx = "E"
        elif command in ("BEGIN", "START"):
            self._tx = "T"
        elif command in ("COMMIT", "ROLLBACK") and not _is_rollback_to(ex.sql):
            self._tx = "I"
        pipelined = ex.sent < self._prev_done
        start = max(ex.sent, self._prev_done)
        self._prev_done = now
        self._back_wanted[D] = 1 if self.result_rows else 0
        info = self.info
        # positional, in StatementEvent's field order: once per statement, on the forwarding path
        return StatementEvent(
            info.conn_id, info.user, info.database, info.application_name, info.client_addr,
            ex.sql, ex.protocol, ex.statement_name, len(ex.param_hashes), ex.param_hashes,
            tuple(ex.result_hashes), start + self._wall_offset, max(0.0, now - start), command,
            rows if rows is not None else (ex.rows_seen or None), ex.nbytes, sqlstate, before, self._tx,
            before != "I" or self._tx != "I", pipelined, 0.0, now, {}, ex.arrays,
            ex.row_desc[1] if ex.row_desc and ex.result_hashes else (),
        )

    def _error(self, kind: int, op, body: bytes, now: float) -> StatementEvent | None:
        fields = wire.decode_fields(body)
        sqlstate = fields.get("C", "XX000")
        self.fatal = fields.get("V") in ("FATAL", "PANIC")
        event = None
        if kind == QUERY:
            ex = op.current or (self._start_statement(op, now) if op.statements else None)
            if ex is not None:
                event = self._finish(ex, now, _verb(ex.sql), None, sqlstate)
            op.index = len(op.statements)  # the rest of the Query string is not run
            op.current = None
            return event
        if kind == PARSE:
            name, previous = op
            if previous is None:
                self._statements.pop(name, None)
            else:
                self._statements[name] = previous
        # Extended protocol: the server now discards everything up to the next Sync. A statement
        # rejected at Parse or Bind (syntax, bad parameter, constant folding) is reported on the
        # Execute that would have run it.
        pending = self._pending
        while pending and pending[0][0] not in _BATCH_END:
            k, queued = pending.popleft()
            if k == EXECUTE and event is None:
                event = self._finish(queued, now, _verb(queued.sql), None, sqlstate)
        self._prev_done = now
        return event

    def _parameter_status(self, body: bytes) -> None:
        name, value = wire.decode_parameter_status(body)
        if name == "application_name":
            self.info.application_name = value


class TooLarge(Exception):
    """A request PostgreSQL itself refuses to read at that size (it ends the session)."""


_ANY_PARAM = re.compile(r"\bany\s*\(\s*\$(\d+)", re.I)


def _any_params(sql: str) -> tuple[int, ...]:
    """0-based indexes of the parameters a statement compares with = ANY(...)."""
    return tuple(sorted({int(n) - 1 for n in _ANY_PARAM.findall(sql) if 0 < int(n) <= 65535}))


def _is_rollback_to(sql: str) -> bool:
    head = sql.lstrip()[:40].lower().split()
    return len(head) >= 2 and head[0] == "rollback" and head[1] in ("to", "transaction", "work") and (
        "to" in head[1:3]
    )


_WORD = re.compile(r"[A-Za-z]+")
_VERBS = frozenset("""SELECT INSERT UPDATE DELETE MERGE WITH VALUES TABLE COPY BEGIN START COMMIT END ROLLBACK ABORT
SAVEPOINT RELEASE PREPARE EXECUTE DEALLOCATE CREATE ALTER DROP TRUNCATE GRANT REVOKE SET SHOW RESET LISTEN
NOTIFY UNLISTEN LOCK VACUUM ANALYZE EXPLAIN DO CALL FETCH MOVE CLOSE DECLARE DISCARD CLUSTER REINDEX
REFRESH COMMENT SECURITY CHECKPOINT LOAD IMPORT""".split())


def _verb(sql: str) -> str:
    """The command of a statement that failed (no CommandComplete tag): a bounded set, for metric labels."""
    head = sql[:2000]
    start = skip_comments(head)
    m = _WORD.match(head, start) if start >= 0 else None
    word = m.group(0).upper() if m else ""
    return word if word in _VERBS else "OTHER"
