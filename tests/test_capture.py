"""Workers capture, the main process replays: the events must be the ones the in-process tracker builds.

A SessionGauge ships each session's bytes (less the DataRows, CopyData and huge messages nobody
analyses) and a Replayer runs a SessionTracker over them. Fed the same streams, cut anywhere, the
two paths must agree on every event field; the gauge must agree with the tracker on where the
session stands; and a full buffer must cost a counted gap, never a wrong event.
"""

from __future__ import annotations

import dataclasses
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.events import ConnectionClosed, ConnectionInfo
from proxy.protocol import wire
from proxy.protocol.capture import MAX_ASSEMBLED, CaptureBuffer, SessionGauge
from proxy.protocol.hashing import ValueHasher
from proxy.protocol.replay import Replayer
from proxy.protocol.tracker import SessionTracker
from tests.test_wire import (
    BIND_COMPLETE,
    PARSE_COMPLETE,
    SYNC,
    bind,
    complete,
    data_row,
    error,
    execute,
    parse,
    query,
    ready,
    row_description,
    splits,
)

KEY = b"k" * 32
PARAMETER_STATUS = wire.message(b"S", b"application_name\0jobs\0")
FATAL = wire.message(b"E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0")


def _tracker(info: ConnectionInfo, tx: str, markers: bool, **kw) -> SessionTracker:
    return SessionTracker(info, ValueHasher(KEY), markers=markers, tx=tx, **kw)


def _comparable(events) -> list[dict]:
    out = []
    for e in events:
        if isinstance(e, ConnectionClosed):
            continue
        fields = dataclasses.asdict(e)
        fields.pop("started_at")  # wall clock = monotonic + an offset each side takes for itself
        out.append(fields)
    return out


def both(exchanges, cut=lambda d: [d], result_rows=16, max_analysed=16 << 20, limit=4 << 20, check_state=True):
    """Feed (client bytes, server bytes) exchanges to a tracker, and to a gauge whose capture a
    Replayer runs: -> (tracker events, replayed events, gauge, capture)."""
    info = ConnectionInfo(7, "10.0.0.1", "alice", "crm", "web")
    direct = _tracker(dataclasses.replace(info), "I", False, result_rows=result_rows, max_analysed=max_analysed)
    capture = CaptureBuffer(limit)
    gauge = SessionGauge(dataclasses.replace(info), capture, result_rows, "I", max_analysed=max_analysed)
    replayer = Replayer(lambda i, tx: _tracker(i, tx, True, result_rows=result_rows, max_analysed=max_analysed),
                        0.0)
    expected, replayed = [], []
    t = 1.0
    for client, server in exchanges:
        for part in cut(client):
            t += 0.001
            direct.client_data(part, t)
            gauge.client_data(part, t)
        for part in cut(server):
            t += 0.001
            expected += direct.server_data(part, t)
            gauge.server_data(part, t)
            assert gauge.server_at_boundary == direct.server_at_boundary or not check_state
        assert (gauge.transaction_status, gauge.busy) == (direct.transaction_status, direct.busy) or not check_state
        assert (gauge.fatal, gauge.info.application_name) == (direct.fatal, direct.info.application_name) \
            or not check_state
        replayed += replayer.feed(capture.take())
    return expected, replayed, gauge, capture


def pieces(n):
    return lambda d: [d[i:i + n] for i in range(0, len(d), n)] or [b""]


CUTS = (lambda d: [d], pieces(1), pieces(3), pieces(7), pieces(64))

SCRIPT = [
    (query("BEGIN"), complete("BEGIN") + ready("T")),
    (query("SELECT id FROM t WHERE team_id = 1"),
     row_description(23) + b"".join(data_row(str(i).encode()) for i in range(40)) + complete("SELECT 40") + ready("T")),
    (parse("s1", "SELECT name FROM t WHERE id = $1", (23,)) + bind("", "s1", [b"5"]) + execute() + SYNC,
     PARSE_COMPLETE + BIND_COMPLETE + data_row(b"five") + complete("SELECT 1") + ready("T")),
    (bind("", "s1", [b"6"]) + execute() + bind("", "s1", [b"7"]) + execute() + SYNC,
     BIND_COMPLETE + data_row(b"six") + complete("SELECT 1") + BIND_COMPLETE + complete("SELECT 0") + ready("T")),
    (query("SELEKT 1"), error("42601") + ready("E")),
    (query("ROLLBACK"), complete("ROLLBACK") + ready("I")),
    (query("COPY t TO STDOUT"),
     wire.message(b"H", struct.pack("!bh", 0, 0)) + b"".join(wire.message(b"d", b"row %d\n" % i) for i in range(5))
     + wire.message(b"c", b"") + complete("COPY 5") + ready()),
    (query("SELECT 1; SELECT 2"),
     row_description(23) + data_row(b"1") + complete("SELECT 1") + row_description(23) + data_row(b"2")
     + complete("SELECT 1") + ready()),
    (parse("", "SELECT g FROM generate_series(1, 100) g") + bind("c", "", []) + execute("c", 30) + SYNC,
     PARSE_COMPLETE + BIND_COMPLETE + b"".join(data_row(str(i).encode()) for i in range(30))
     + wire.message(b"s", b"") + ready()),
    (query("SET application_name = 'jobs'"), complete("SET") + PARAMETER_STATUS + ready()),
    (query("SELECT pg_terminate_backend(pg_backend_pid())"), FATAL),
]


def test_replayed_events_match_the_in_process_tracker_however_the_streams_are_cut():
    for cut in CUTS:
        for rows in (0, 1, 16):
            expected, replayed, _gauge, _ = both(SCRIPT, cut, result_rows=rows)
            assert len(expected) == 13
            assert _comparable(replayed) == _comparable(expected)


def test_rows_beyond_result_rows_are_not_shipped_but_still_counted():
    wide = b"x" * 200
    exchange = (query("SELECT body FROM notes"),
                row_description(25) + b"".join(data_row(wide) for _ in range(1000)) + complete("SELECT 1000") + ready())
    for cut, bound in ((lambda d: [d], 2000), (pieces(4096), 5000), (pieces(5), 70000)):
        info = ConnectionInfo(1, "x")
        capture = CaptureBuffer()
        gauge = SessionGauge(info, capture, 4, "I")
        gauge.client_data(exchange[0], 1.0)
        for part in cut(exchange[1]):
            gauge.server_data(part, 2.0)
        shipped = len(capture.buf)
        assert shipped < bound, shipped  # four rows and markers (one per read at most): not the 200 kB result
        events = Replayer(lambda i, tx: _tracker(i, tx, True, result_rows=4), 0.0).feed(capture.take())
        assert events[0].rows == 1000 and len(events[0].result_hashes) == 4
        assert events[0].response_bytes == len(exchange[1]) - 6  # everything before ReadyForQuery


def test_messages_too_large_to_analyse_are_replaced_by_a_marker():
    big_sql = "SELECT '" + "x" * 3000 + "'"
    script = [(query(big_sql), row_description(25) + data_row(b"x") + complete("SELECT 1") + ready()),
              (query("SELECT 2"), row_description(23) + data_row(b"2") + complete("SELECT 1") + ready())]
    for cut in (lambda d: [d], pieces(7)):
        expected, replayed, _, _ = both(script, cut, max_analysed=1024)
        assert _comparable(replayed) == _comparable(expected)
        assert replayed[0].sql.startswith("/* pgloupe: a message of 3014 bytes")


def test_the_gauge_tracks_where_the_session_stands():
    info = ConnectionInfo(1, "x")
    gauge = SessionGauge(info, CaptureBuffer(), 16, "I")
    gauge.client_data(query("SELECT pg_sleep(1)")[:3], 1.0)  # mid-message: nothing asked yet
    assert not gauge.busy
    gauge.client_data(query("SELECT pg_sleep(1)")[3:], 1.0)
    assert gauge.busy
    response = row_description(23) + data_row(b"1") + complete("SELECT 1") + ready("T")
    gauge.server_data(response[:9], 2.0)
    assert gauge.busy and not gauge.server_at_boundary
    gauge.server_data(response[9:], 2.0)
    assert not gauge.busy and gauge.server_at_boundary and gauge.transaction_status == "T"
    # Flush instead of Sync: busy until the server answered after it
    gauge.client_data(parse("p", "SELECT 1") + wire.message(b"H", b""), 3.0)
    assert gauge.busy
    gauge.server_data(PARSE_COMPLETE, 4.0)
    assert not gauge.busy
    gauge.server_data(wire.message(b"E", b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0"), 5.0)
    assert gauge.fatal
    gauge.client_data(wire.message(b"X", b""), 6.0)
    assert gauge.terminated


def test_what_the_gauge_reads_in_a_message_survives_any_split():
    """The gauge reads a few messages' contents (FATAL, application_name, named Parse and Close):
    wherever a read cuts them, it sees them whole."""
    named = parse("by_id", "SELECT name FROM t WHERE id = $1", (23,))
    close = wire.message(b"C", b"Sold\0")
    for cut in splits(close + named + SYNC):
        gauge = SessionGauge(ConnectionInfo(1, "x", application_name="web"), CaptureBuffer(), 16, "I")
        gauge.prepared[b"old"] = parse("old", "SELECT 1")
        for part in cut:
            gauge.client_data(part, 1.0)
        assert list(gauge.prepared) == [b"by_id"] and gauge.prepared[b"by_id"] == named, cut
        assert gauge.busy
    for cut in splits(PARSE_COMPLETE + PARAMETER_STATUS + ready() + FATAL):
        gauge = SessionGauge(ConnectionInfo(1, "x", application_name="web"), CaptureBuffer(), 16, "I")
        gauge.client_data(named + SYNC, 1.0)
        for part in cut:
            gauge.server_data(part, 2.0)
        assert gauge.fatal and gauge.info.application_name == "jobs" and not gauge.busy, cut
    # past MAX_ASSEMBLED a split message is counted, not read
    huge = wire.message(b"S", b"application_name\0" + b"x" * MAX_ASSEMBLED + b"\0")
    gauge = SessionGauge(ConnectionInfo(1, "x", application_name="web"), CaptureBuffer(), 16, "I")
    gauge.server_data(huge[:100], 1.0)
    gauge.server_data(huge[100:], 1.0)
    assert gauge.info.application_name == "web" and gauge.server_at_boundary


def test_a_full_buffer_costs_a_counted_gap_and_capture_resumes_at_a_clean_point():
    capture = CaptureBuffer()
    gauge = SessionGauge(ConnectionInfo(3, "x", "u", "db"), capture, 16, "I")
    replayer = Replayer(lambda i, tx: _tracker(i, tx, True), 0.0)
    answer = row_description(23) + data_row(b"1") + complete("SELECT 1") + ready()
    gauge.client_data(parse("s", "SELECT $1::int") + bind("", "s", [b"1"]) + execute() + SYNC, 1.0)
    gauge.server_data(PARSE_COMPLETE + BIND_COMPLETE + data_row(b"1") + complete("SELECT 1") + ready(), 1.1)
    assert len(replayer.feed(capture.take())) == 1
    capture.blocked = True  # the channel to the main process is backed up
    # prepared inside the gap: the main process never sees this Parse go by
    gauge.client_data(parse("s2", "SELECT $1::text") + bind("", "s2", [b"x"]) + execute() + SYNC, 2.0)
    gauge.server_data(PARSE_COMPLETE + BIND_COMPLETE + data_row(b"x") + complete("SELECT 1") + ready(), 2.01)
    assert gauge.gap and capture.dropped == 1 and not capture.buf
    gauge.client_data(query("SELECT 1"), 2.02)
    assert capture.dropped == 2 and not capture.buf
    capture.blocked = False
    gauge.client_data(query("SELECT 2"), 2.1)  # pipelined while the first is unanswered: not a clean point
    gauge.server_data(answer, 2.2)
    gauge.server_data(answer, 2.3)
    assert gauge.gap and capture.dropped == 3 and not capture.buf
    gauge.client_data(bind("", "s", [b"2"]) + execute() + SYNC, 3.0)  # clean: capture resumes here
    gauge.server_data(BIND_COMPLETE + data_row(b"2") + complete("SELECT 1") + ready(), 3.1)
    assert not gauge.gap
    gauge.client_data(bind("", "s2", [b"y"]) + execute() + SYNC, 3.2)
    gauge.server_data(BIND_COMPLETE + data_row(b"y") + complete("SELECT 1") + ready(), 3.3)
    gauge.client_data(wire.message(b"C", b"Ss2\0") + SYNC, 3.4)
    gauge.server_data(wire.message(b"3", b"") + ready(), 3.5)
    assert list(gauge.prepared) == [b"s"]
    gauge.closed(4.0)
    events = replayer.feed(capture.take())
    assert [type(e).__name__ for e in events] == ["StatementEvent", "StatementEvent", "ConnectionClosed"]
    assert events[0].sql == "SELECT $1::int" and events[0].param_count == 1  # prepared before the gap
    assert abs(events[0].duration - 0.1) < 1e-9
    assert events[1].sql == "SELECT $1::text"  # prepared inside it: the gauge sent its Parse again
    assert replayer.trackers == {}


def test_a_client_sending_the_marker_type_stops_its_capture_only():
    capture = CaptureBuffer()
    gauge = SessionGauge(ConnectionInfo(5, "x"), capture, 16, "I")
    gauge.client_data(wire.message(b"\0", b"\0\0\0\1\0\0\0\1\0"), 1.0)
    assert gauge.stopped
    gauge.client_data(query("SELECT 1"), 1.0)
    replayer = Replayer(lambda i, tx: _tracker(i, tx, True), 0.0)
    assert replayer.feed(capture.take()) == [] and replayer.trackers == {}


message_types = st.sampled_from(list(b"TDCZEIsn123dcGHAN"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(message_types, st.binary(max_size=30)), max_size=30), st.integers(1, 40),
       st.integers(0, 3))
def test_any_server_stream_replays_like_the_tracker_sees_it(frames, cut, rows):
    """Nonsense in well-formed frames after a pipeline of requests: same events or the same failure."""
    client = query("SELECT 1") + parse("", "SELECT 2") + bind("", "", []) + execute() + SYNC
    server = b"".join(wire.message(bytes([t]), body) for t, body in frames)
    try:
        expected, replayed, _, _ = both([(client, server)], pieces(cut), result_rows=rows, check_state=False)
    except wire.InvalidLength:
        return  # frames the server never sends: not PostgreSQL's protocol any more
    assert _comparable(replayed) == _comparable(expected)
