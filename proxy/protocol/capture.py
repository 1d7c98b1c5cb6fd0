"""What a worker process keeps of each session for the analysis in the main process (sans-IO).

With ``--workers N`` the forwarding processes do not analyse. Per chunk relayed, a SessionGauge
scans the frame headers (enough to know where the session stands: busy, at a message boundary, in
a transaction, terminated) and appends the chunk to the worker's CaptureBuffer, shipped every
BATCH_S to the main process, where a Replayer (proxy.protocol.replay) runs the session trackers over it. The Python work
per statement left in the forwarding loop is a header scan and a buffer append, and the analysis
can run at a lower priority than the traffic it watches (``analysis_priority``).

Only what the trackers use is shipped: DataRows beyond ``result_rows`` in a row, CopyData and
messages longer than ``max_analysed_message_size`` are replaced by an OMITTED marker frame (type
byte 0, which neither PostgreSQL nor a client it accepts ever sends) that gives their type, count
and length. When the buffer is full (the main process is behind), a session's chunks are dropped
and counted, and the session has a gap: its capture resumes at its next clean point (nothing in
flight, both streams at a message boundary) with a RESYNC record, from which its tracker starts
over, keeping the statements prepared before the gap.

Record: conn_id (int64), kind (uint8), monotonic time (float64), length (uint32), then the bytes.
"""

from __future__ import annotations

import struct

from proxy.events import ConnectionInfo
from proxy.protocol.framing import message_types
from proxy.protocol.prepared import DEFAULT_PREPARED_BYTES
from proxy.protocol.wire import DEFAULT_MAX_MESSAGE, HEADER, InvalidLength

REC = struct.Struct("<qBdI")


CLIENT, SERVER, OPEN, RESYNC, CLOSE, STOP, PREPARED = range(7)


MAX_REMEMBERED = 1 << 20  # bytes of Parse messages a gauge keeps per session to re-send after a gap
OMITTED = 0  # marker frame type: body = original type, frame count, their total length fields
MARKER_BODY = struct.Struct("!BII")
_MARKER_HEAD = HEADER.pack(b"\0", 4 + MARKER_BODY.size)
DEFAULT_CAPTURE_LIMIT = 4 << 20  # bytes buffered between two shipments before chunks are dropped


_NO_EVENTS: list = []


Q, S, F, X, D, Z, E, P, C = (ord(c) for c in "QSFXDZEPC")


_SYNCS = frozenset(b"QSF")  # each is answered by one ReadyForQuery
STATEMENT_TYPES = frozenset(b"QEF")  # what a dropped chunk counts as lost statements


_CLIENT_WATCH = message_types(b"QSFXPBDECH\0")
_SERVER_WATCH = message_types(b"EZS")
_OMIT = message_types(b"d")  # CopyData, either way: the trackers only count it


# Watched messages whose content the gauge reads, put back together when a read splits them: the
# server's ErrorResponse (FATAL?) and ParameterStatus (application_name), the client's Parse and Close
# (the named statements re-sent after a gap). Longer ones are only counted, as before.
_SERVER_ASSEMBLE = message_types(b"ES")
_CLIENT_ASSEMBLE = message_types(b"PC")
MAX_ASSEMBLED = 64 << 10


def _marker(mtype: int, count: int, total: int) -> bytes:
    return _MARKER_HEAD + MARKER_BODY.pack(mtype, count, total)


class _Stream:
    """Frame headers of one direction: where messages start, which to ship, which to omit."""

    __slots__ = ("watch", "assemble", "rows_limit", "max_analysed", "max_message", "head", "left", "cur_type",
                 "cur_omit", "rows", "z_status", "partial", "completed")

    def __init__(self, watch: bytearray, assemble: bytearray, rows_limit: int | None, max_analysed: int,
                 max_message: int):
        self.watch = watch
        self.assemble = assemble
        self.rows_limit = rows_limit  # DataRows kept in a row (server side only: a client's D is Describe)
        self.max_analysed = max_analysed
        self.max_message = max_message
        self.head = b""  # a partial header held back from the previous chunk (not shipped yet)
        self.left = 0  # bytes of the current message still to come
        self.cur_type = 0
        self.cur_omit = False
        self.rows = 0
        self.z_status = 0x49  # 'I'
        self.partial: bytearray | None = None  # the frame so far of an assembled message split by a read
        self.completed: bytes | None = None  # that frame, whole, once its last byte came (for the caller)

    @property
    def at_boundary(self) -> bool:
        return not self.head and not self.left

    def feed(self, data: bytes) -> tuple[bytes, list | None, list]:
        """-> (data, kept, seen): ``data`` with any held-back header in front; ``kept`` None when all of it
        is to be shipped, else the parts to ship (omitted frames replaced by markers, a trailing partial
        header held back); ``seen`` the watched frames starting here as (type, body start, body end or -1).
        A message of an ``assemble`` type that continued into this chunk and ends in it is in ``completed``."""
        if self.head:
            data = self.head + data
            self.head = b""
        n = len(data)
        pos = 0
        kept: list | None = None
        seen: list = []
        if self.left:
            take = self.left if self.left < n else n
            self.left -= take
            pos = take
            if self.partial is not None:
                self.partial += data[:take]
                if not self.left:
                    self.completed = bytes(self.partial)
                    self.partial = None
            if self.cur_omit:
                kept = []
            elif self.cur_type == Z and not self.left:
                self.z_status = data[take - 1]
            if self.left:
                return data, kept, seen
        keep_from = pos  # start of the run of kept bytes (once kept is a list)
        mark_type = mark_count = mark_total = 0  # omitted frames not yet written as a marker
        watch = self.watch
        rows_limit = self.rows_limit
        max_analysed = self.max_analysed
        while pos < n:
            if n - pos < 5:
                self.head = data[pos:]
                if kept is None:
                    kept = [data[:pos]] if pos else []
                else:
                    if mark_count:
                        kept.append(_marker(mark_type, mark_count, mark_total))
                        mark_count = 0
                    kept.append(data[keep_from:pos])
                return data, kept, seen
            mtype = data[pos]
            # the header's big-endian length, by hand: C arithmetic once compiled, no struct call
            length = data[pos + 1]  # (shifted as a 64-bit integer once compiled: a C int would overflow)
            length = (length << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
            if length < 4 or length > self.max_message:
                raise InvalidLength(f"invalid message length {length} for message type {chr(mtype)!r}")
            end = pos + 1 + length
            if rows_limit is not None:
                if mtype == D:
                    self.rows += 1
                    omit = self.rows > rows_limit or length > max_analysed
                else:
                    self.rows = 0
                    omit = _OMIT[mtype] or length > max_analysed
            else:
                omit = _OMIT[mtype] or length > max_analysed
            if omit:
                if kept is None:
                    kept = [data[:pos]] if pos else []
                elif pos > keep_from:
                    if mark_count:
                        kept.append(_marker(mark_type, mark_count, mark_total))
                        mark_count = 0
                    kept.append(data[keep_from:pos])
                if mark_count and mtype == D and mark_type == D:
                    mark_count += 1  # a run of DataRows: one marker
                    mark_total += length
                else:
                    if mark_count:
                        kept.append(_marker(mark_type, mark_count, mark_total))
                    mark_type, mark_count, mark_total = mtype, 1, length
                keep_from = end if end < n else n
            if watch[mtype]:
                seen.append((mtype, pos + 5, end if end <= n else -1))
                if mtype == Z and end <= n:
                    self.z_status = data[end - 1]
            if end > n:
                self.left = end - n
                self.cur_type = mtype
                self.cur_omit = bool(omit)
                if self.assemble[mtype] and not omit and length <= MAX_ASSEMBLED:
                    self.partial = bytearray(data[pos:n])
            pos = end
        if kept is not None:
            if mark_count:
                kept.append(_marker(mark_type, mark_count, mark_total))
            if keep_from < n:
                kept.append(data[keep_from:n])
        return data, kept, seen


class CaptureBuffer:
    """The records a worker has captured since its last shipment, bounded: when full (or when the
    channel to the main process is backed up) chunks are dropped, and the statements in them counted.
    It also holds the worker's budget for the Parse messages its gauges remember."""

    __slots__ = ("buf", "limit", "blocked", "dropped", "prepared_limit", "prepared_bytes", "prepared_refused")

    def __init__(self, limit: int = DEFAULT_CAPTURE_LIMIT, prepared_limit: int = DEFAULT_PREPARED_BYTES):
        self.buf = bytearray()
        self.limit = limit
        self.blocked = False  # set by the shipper while the channel is backed up
        self.dropped = 0  # statements (Query, Execute, FunctionCall) in dropped client chunks
        self.prepared_limit = prepared_limit  # bytes of Parse messages all this worker's gauges keep
        self.prepared_bytes = 0
        self.prepared_refused = 0

    @property
    def room(self) -> bool:
        return not self.blocked and len(self.buf) < self.limit

    def add(self, conn_id: int, kind: int, now: float, data) -> None:
        buf = self.buf
        if type(data) is list:
            buf += REC.pack(conn_id, kind, now, sum(map(len, data)))
            for part in data:
                buf += part
        else:
            buf += REC.pack(conn_id, kind, now, len(data))
            buf += data

    def take(self) -> bytes:
        raw = bytes(self.buf)
        self.buf.clear()
        return raw


def _info_payload(info: ConnectionInfo, tx: str) -> bytes:
    # startup parameters are C strings: NUL never occurs in them
    return "\0".join((info.user, info.database, info.application_name, info.client_addr, tx)).encode()


class SessionGauge:
    """The forwarding loop's view of one session when the analysis runs elsewhere: the same state
    properties as a SessionTracker (busy, server_at_boundary, transaction_status, terminated,
    fatal) from frame headers alone, and the session's bytes captured for the main process."""

    __slots__ = ("info", "conn_id", "capture", "_front", "_back", "outstanding", "unsynced", "_tx", "terminated", "fatal",
                 "gap", "stopped", "_client_at", "_server_at", "prepared", "_prepared_bytes")

    def __init__(self, info: ConnectionInfo, capture: CaptureBuffer, result_rows: int, tx: str = "I",
                 max_message: int = DEFAULT_MAX_MESSAGE, max_analysed: int = 16 << 20, now: float = 0.0):
        self.info = info
        self.conn_id = info.conn_id  # (read per chunk shipped)
        self.capture = capture
        self._front = _Stream(_CLIENT_WATCH, _CLIENT_ASSEMBLE, None, max_analysed, max_message)
        self._back = _Stream(_SERVER_WATCH, _SERVER_ASSEMBLE, result_rows, max_analysed, max_message)
        self._back.z_status = ord(tx)
        self.outstanding = 0  # Query, Sync and FunctionCall messages not yet answered by ReadyForQuery
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        self._tx = tx
        self.terminated = False
        self.fatal = False
        self.gap = False
        self.stopped = False  # capture given up for this session (analysis only: relaying goes on)
        self._client_at = 0.0
        self._server_at = 0.0
        # Named statements' Parse messages: after a gap the main process's tracker gets them again, so
        # executions of statements prepared inside the gap still have their text.
        self.prepared: dict[bytes, bytes] = {}
        self._prepared_bytes = 0
        capture.add(info.conn_id, OPEN, now, _info_payload(info, tx))

    @property
    def busy(self) -> bool:
        """A request awaits its response. Extended-protocol messages sent without a Sync (Flush) count
        as busy until the server has answered something after them."""
        return self.outstanding > 0 or (self.unsynced and self._client_at >= self._server_at)

    @property
    def server_at_boundary(self) -> bool:
        return self._back.at_boundary

    @property
    def transaction_status(self) -> str:
        return self._tx

    def client_data(self, data: bytes, now: float) -> None:
        # (only a session with a gap asks whether it was at a clean point before this chunk)
        clean = self.gap and not self.busy and self._front.at_boundary and self._back.at_boundary
        front = self._front
        data, kept, seen = front.feed(data)
        if front.completed is not None:  # a Parse or Close that began in an earlier chunk
            frame, front.completed = front.completed, None
            self._remember(frame[0], frame, 5, len(frame))
        statements = 0
        for mtype, start, end in seen:
            if mtype == P or mtype == C:
                if end >= 0:
                    self._remember(mtype, data, start, end)
                self.unsynced = True
            elif mtype in _SYNCS:
                self.outstanding += 1
                if mtype == S:
                    self.unsynced = False
            elif mtype == X:
                self.terminated = True
            elif mtype == OMITTED:
                self.stop()  # not PostgreSQL's protocol (the server will say so): nothing to analyse
                return
            else:
                self.unsynced = True
            if mtype in STATEMENT_TYPES:
                statements += 1
        self._client_at = now
        if self.stopped:
            return
        self._ship(CLIENT, now, data if kept is None else kept, statements, clean)

    def _remember(self, mtype: int, data: bytes, start: int, end: int) -> None:
        nul = data.find(b"\0", start + (mtype == C), end)
        if nul <= start:
            return  # the unnamed statement (re-parsed before use), or a malformed message
        if mtype == C:
            if data[start] == 0x53:  # Close of a prepared statement
                self._forget(self.prepared.pop(data[start + 1:nul], None))
            return
        # Only a Parse the server can read names a statement (name, text, uint16 count, the types, nothing
        # after): one it rejects must not come back after a gap as if it had been prepared.
        text_end = data.find(b"\0", nul + 1, end)
        if text_end < 0 or text_end + 3 > end or text_end + 3 + 4 * int.from_bytes(
                data[text_end + 1:text_end + 3], "big") != end:
            return
        name = data[start:nul]
        frame = data[start - 5:end]
        self._forget(self.prepared.pop(name, None))
        capture = self.capture
        if (self._prepared_bytes + len(frame) > MAX_REMEMBERED
                or capture.prepared_bytes + len(frame) > capture.prepared_limit):
            capture.prepared_refused += 1
            return
        self.prepared[name] = frame
        self._prepared_bytes += len(frame)
        capture.prepared_bytes += len(frame)

    def _forget(self, frame: bytes | None) -> None:
        if frame is not None:
            self._prepared_bytes -= len(frame)
            self.capture.prepared_bytes -= len(frame)

    def server_data(self, data: bytes, now: float) -> list:
        back = self._back
        data, kept, seen = back.feed(data)
        if back.completed is not None:  # an ErrorResponse or ParameterStatus that began in an earlier chunk
            frame, back.completed = back.completed, None
            self._server_message(frame[0], frame, 5, len(frame))
        for mtype, start, end in seen:
            if mtype == Z:
                if self.outstanding:
                    self.outstanding -= 1
            elif end >= 0:  # else split over reads: read once whole (the completed frame above)
                self._server_message(mtype, data, start, end)
        self._tx = chr(back.z_status)
        self._server_at = now
        if not self.stopped and not self.gap:
            self._ship(SERVER, now, data if kept is None else kept, 0, False)
        return _NO_EVENTS

    def _server_message(self, mtype: int, data: bytes, start: int, end: int) -> None:
        if mtype == E:
            body = data[start:end]
            self.fatal = b"VFATAL\0" in body or b"VPANIC\0" in body
        elif data.startswith(b"application_name\0", start):  # S ParameterStatus
            self.info.application_name = data[start + 17:end - 1].decode("utf-8", "replace")

    def _ship(self, kind: int, now: float, payload, statements: int, clean: bool) -> None:
        capture = self.capture
        if self.gap:
            if not (clean and capture.room):
                capture.dropped += statements
                return
            self.gap = False
            capture.add(self.info.conn_id, RESYNC, now, _info_payload(self.info, self._tx))
            if self.prepared:
                capture.add(self.info.conn_id, PREPARED, now, list(self.prepared.values()))
        elif capture.blocked or len(capture.buf) >= capture.limit:  # capture.room, inline: once per chunk
            self.gap = True
            capture.dropped += statements
            return
        if payload:
            capture.add(self.conn_id, kind, now, payload)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.capture.add(self.info.conn_id, STOP, 0.0, b"")

    def closed(self, now: float) -> bool:
        """The CLOSE record tells the main process's Replayer (which queues the ConnectionClosed)."""
        self.capture.add(self.info.conn_id, CLOSE, now, b"")
        self.capture.prepared_bytes -= self._prepared_bytes
        self._prepared_bytes = 0
        self.prepared = {}
        return False
