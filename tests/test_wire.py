"""The sans-IO layer without a server: framing, startup, statement splitting, hashing, tracking.

Streams are built from the protocol's own message layouts, then fed whole, byte by byte and at
every split point: the events must not depend on how TCP cut the bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.events import ConnectionInfo
from proxy.protocol import wire
from proxy.protocol.framing import Framer
from proxy.protocol.hashing import ValueHasher, canonical
from proxy.protocol.sqlsplit import split_lexed, split_statements
from proxy.protocol.startup import (
    CancelRequest,
    GSSEncRequest,
    ServerStartup,
    SSLRequest,
    StartupMessage,
    parse_startup,
)
from proxy.protocol.tracker import SessionTracker

# ------------------------------------------------------------------ builders for test streams


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def query(sql: str) -> bytes:
    return wire.message(b"Q", cstr(sql))


def parse(name: str, sql: str, oids=()) -> bytes:
    return wire.message(b"P", cstr(name) + cstr(sql) + struct.pack(f"!H{len(oids)}I", len(oids), *oids))


def bind(portal: str, stmt: str, params, fmt: int = 0) -> bytes:
    body = cstr(portal) + cstr(stmt) + struct.pack("!Hh", 1, fmt) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return wire.message(b"B", body + struct.pack("!hh", 1, fmt))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return wire.message(b"E", cstr(portal) + struct.pack("!i", max_rows))


SYNC = wire.message(b"S", b"")
PARSE_COMPLETE = wire.message(b"1", b"")
BIND_COMPLETE = wire.message(b"2", b"")


def row_description(*oids: int) -> bytes:
    body = struct.pack("!h", len(oids))
    for i, oid in enumerate(oids):
        body += cstr(f"c{i}") + struct.pack("!IhIhih", 0, 0, oid, 4, -1, 0)
    return wire.message(b"T", body)


def data_row(*cells) -> bytes:
    body = struct.pack("!h", len(cells))
    for c in cells:
        body += struct.pack("!i", -1) if c is None else struct.pack("!i", len(c)) + c
    return wire.message(b"D", body)


def complete(tag: str) -> bytes:
    return wire.message(b"C", cstr(tag))


def ready(status: str = "I") -> bytes:
    return wire.message(b"Z", status.encode())


def error(code: str) -> bytes:
    return wire.message(b"E", b"SERROR\0VERROR\0C" + code.encode() + b"\0Mboom\0\0")


def splits(data: bytes):
    """The stream whole, byte by byte, and cut at every point into two pieces."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def run(client: bytes, server: bytes, chunks=lambda d: [d], **kw):
    tracker = SessionTracker(ConnectionInfo(7, "10.0.0.1", "alice", "crm", "web"), ValueHasher(b"k" * 32), **kw)
    for part in chunks(client):
        tracker.client_data(part, 1.0)
    events = []
    for part in chunks(server):
        events += tracker.server_data(part, 2.0)
    return tracker, events


# ------------------------------------------------------------------ framing


def test_framer_same_frames_however_the_stream_is_cut():
    stream = row_description(23) + data_row(b"1") + data_row(None) + complete("SELECT 2") + ready()
    wanted = bytearray(256)
    for t in b"TCZ":
        wanted[t] = 1
    expected = list(Framer(wanted).feed(stream))
    assert [chr(t) for t, _, _ in expected] == list("TDDCZ")
    assert expected[1][1] is None and expected[3][1] == b"SELECT 2\0"
    for chunks in splits(stream):
        framer = Framer(wanted)
        got = [f for c in chunks for f in framer.feed(c)]
        assert got == expected
        assert framer.at_boundary


def test_framer_rejects_impossible_lengths():
    with pytest.raises(wire.ProtocolError):
        list(Framer(bytearray(256)).feed(b"Q\x00\x00\x00\x02"))
    with pytest.raises(wire.ProtocolError):
        list(Framer(bytearray(256), max_message=1024).feed(b"Q\x7f\xff\xff\xff"))


# ------------------------------------------------------------------ startup


def test_parse_startup_requests():
    assert parse_startup(wire.request_code(wire.SSL_REQUEST)) == (SSLRequest(), 8)
    assert parse_startup(wire.request_code(wire.GSSENC_REQUEST)) == (GSSEncRequest(), 8)
    cancel = struct.pack("!iiii", 16, wire.CANCEL_REQUEST, 42, 99)
    assert parse_startup(cancel) == (CancelRequest(cancel), 16)
    packet = wire.startup_message({"user": "bob", "database": "crm", "application_name": "api"})
    request, size = parse_startup(packet + b"extra")
    assert isinstance(request, StartupMessage) and size == len(packet)
    assert request.params == {"user": "bob", "database": "crm", "application_name": "api"}
    assert request.encode() == packet
    assert parse_startup(packet[:-1]) is None


@pytest.mark.parametrize("packet", [
    struct.pack("!ii", 4, 0),  # length below the minimum
    struct.pack("!i", 1 << 30) + b"x" * 4,  # 1 GB startup packet
    struct.pack("!ii", 8, 2 << 16),  # protocol 2.0
    struct.pack("!ii", 12, wire.PROTOCOL_3_0) + b"user",  # not NUL-terminated
])
def test_parse_startup_rejects_garbage(packet):
    with pytest.raises(wire.ProtocolError):
        parse_startup(packet)


def test_server_startup_withdraws_scram_plus_and_keeps_the_cancel_key():
    sasl = wire.message(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
    key = wire.message(b"K", struct.pack("!ii", 1234, 5678))
    status = wire.message(b"S", b"application_name\0psql\0")
    startup = ServerStartup()
    out, rest = startup.feed(sasl[:7])
    assert out == b"" and rest == b""
    out, rest = startup.feed(sasl[7:])
    assert wire.sasl_mechanisms(out[5:]) == ["SCRAM-SHA-256"]
    assert not startup.ready
    tail = wire.message(b"A", b"x")
    out, rest = startup.feed(key + status + ready("I") + tail)
    assert out == key + status + ready("I") + tail and rest == tail
    assert startup.ready and startup.backend_key == struct.pack("!ii", 1234, 5678)
    assert startup.parameters == {"application_name": "psql"}


# ------------------------------------------------------------------ statement splitting


@pytest.mark.parametrize("sql,expected", [
    ("select 1", ["select 1"]),
    ("select 1; select 2;", ["select 1", "select 2"]),
    ("select ';' ; select 'it''s;'", ["select ';'", "select 'it''s;'"]),
    ("select E'a\\';b'; select 2", ["select E'a\\';b'", "select 2"]),
    ('select 1 as "a;b"; select 2', ['select 1 as "a;b"', "select 2"]),
    ("select $$a;b$$; select $x$ $$; $x$", ["select $$a;b$$", "select $x$ $$; $x$"]),
    ("select $1; select 2", ["select $1", "select 2"]),
    ("select 1 -- c;\n; /* a /* ; */ b */ select 2", ["select 1 -- c;", "/* a /* ; */ b */ select 2"]),
    (";; ;", []),
    ("select 1; -- trailing", ["select 1"]),
])
def test_split_statements(sql, expected):
    assert split_statements(sql) == expected
    assert split_lexed(sql) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab1 ;\n\t-/*'\"$eE\\", max_size=40))
def test_split_fast_path_agrees_with_the_lexer(sql):
    # split_statements skips the lexer when nothing can hide a semicolon; it must not change a result
    if ";" in sql:
        assert split_statements(sql) == split_lexed(sql)


# ------------------------------------------------------------------ hashing


def test_binary_and_text_forms_hash_alike_and_keys_matter():
    h = ValueHasher(b"a" * 32)
    assert h.digest(struct.pack("!i", 42), 23, 1) == h.digest(b"42", 23, 0) == h.digest(b"42")
    assert h.digest(struct.pack("!q", -7), 20, 1) == h.digest(b"-7")
    u = bytes(range(16))
    assert canonical(u, 2950, 1) == b"00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert h.digest(struct.pack("!i", 42), 23, 1) != h.digest(b"43")
    assert ValueHasher(b"b" * 32).digest(b"42") != h.digest(b"42")
    assert h.digest(None) is None
    assert b"42" not in h.digest(b"42").encode()


# ------------------------------------------------------------------ statement tracking


def test_pipeline_results_match_executions_in_order():
    client = (
        parse("s1", "SELECT id FROM contacts WHERE team_id = $1", (23,))
        + bind("", "s1", [b"5"]) + execute()
        + parse("", "UPDATE contacts SET seen = true WHERE id = $1") + bind("", "", [b"9"]) + execute()
        + bind("", "s1", [b"6"]) + execute()
        + SYNC
    )
    server = (
        PARSE_COMPLETE + BIND_COMPLETE + data_row(b"100") + data_row(b"101") + complete("SELECT 2")
        + PARSE_COMPLETE + BIND_COMPLETE + complete("UPDATE 1")
        + BIND_COMPLETE + data_row(b"102") + complete("SELECT 1")
        + ready("I")
    )
    expected = None
    for chunks in [lambda d: [d], lambda d: [d[i : i + 1] for i in range(len(d))]]:
        tracker, events = run(client, server, chunks)
        summary = [(e.command, e.rows, e.sql, e.param_count, e.statement_name) for e in events]
        assert summary == [
            ("SELECT", 2, "SELECT id FROM contacts WHERE team_id = $1", 1, "s1"),
            ("UPDATE", 1, "UPDATE contacts SET seen = true WHERE id = $1", 1, ""),
            ("SELECT", 1, "SELECT id FROM contacts WHERE team_id = $1", 1, "s1"),
        ]
        assert not tracker.busy
        assert [e.pipelined for e in events] == [False, True, True]  # one round trip for all three
        hashes = [(e.param_hashes, e.result_hashes) for e in events]
        assert expected is None or hashes == expected
        expected = hashes
    first, update, _ = events
    # the UPDATE's parameter came from the first SELECT's rows: the hash proves it without the value
    assert first.result_hashes == ((ValueHasher(b"k" * 32).digest(b"100"),), (ValueHasher(b"k" * 32).digest(b"101"),))
    assert update.param_hashes[0] not in {h for row in first.result_hashes for h in row}
    assert first.user == "alice" and first.database == "crm" and first.application_name == "web"


def test_error_mid_pipeline_skips_to_sync():
    client = (
        parse("", "INSERT INTO t VALUES ($1)") + bind("", "", [b"1"]) + execute()
        + parse("", "SELECT 1/0") + bind("", "", []) + execute()
        + parse("", "INSERT INTO t VALUES ($1)") + bind("", "", [b"3"]) + execute()
        + SYNC
        + parse("", "SELECT 2") + bind("", "", []) + execute() + SYNC
    )
    server = (
        PARSE_COMPLETE + BIND_COMPLETE + complete("INSERT 0 1")
        + PARSE_COMPLETE + BIND_COMPLETE + error("22012")
        + ready("I")
        + PARSE_COMPLETE + BIND_COMPLETE + data_row(b"2") + complete("SELECT 1") + ready("I")
    )
    for chunks in splits(server):
        tracker = SessionTracker(ConnectionInfo(1, "x"), ValueHasher(b"k"))
        tracker.client_data(client, 1.0)
        events = [e for c in chunks for e in tracker.server_data(c, 2.0)]
        assert [(e.sql, e.sqlstate, e.rows) for e in events] == [
            ("INSERT INTO t VALUES ($1)", None, 1),
            ("SELECT 1/0", "22012", None),
            ("SELECT 2", None, 1),
        ]
        assert not tracker.busy


def test_simple_query_with_several_statements_and_transaction_status():
    client = query("BEGIN; INSERT INTO t VALUES (1); SELECT * FROM t; COMMIT") + query("SELECT 1; SELECT bad; SELECT 3")
    server = (
        complete("BEGIN") + complete("INSERT 0 1")
        + row_description(23) + data_row(b"1") + complete("SELECT 1")
        + complete("COMMIT") + ready("I")
        + row_description(23) + data_row(b"1") + complete("SELECT 1") + error("42703") + ready("I")
    )
    _, events = run(client, server)
    assert [(e.command, e.sql, e.tx_before, e.tx_after, e.in_transaction, e.sqlstate) for e in events] == [
        ("BEGIN", "BEGIN", "I", "T", True, None),
        ("INSERT", "INSERT INTO t VALUES (1)", "T", "T", True, None),
        ("SELECT", "SELECT * FROM t", "T", "T", True, None),
        ("COMMIT", "COMMIT", "T", "I", True, None),
        ("SELECT", "SELECT 1", "I", "I", False, None),
        ("SELECT", "SELECT bad", "I", "I", False, "42703"),
    ]
    assert all(e.protocol == "simple" for e in events)
    assert events[2].response_bytes == len(row_description(23) + data_row(b"1") + complete("SELECT 1"))


def test_portal_suspended_and_row_hash_bound():
    client = parse("", "SELECT g FROM generate_series(1, 100) g") + bind("c", "", []) + execute("c", 40) + SYNC
    server = PARSE_COMPLETE + BIND_COMPLETE + b"".join(data_row(str(i).encode()) for i in range(40))
    server += wire.message(b"s", b"") + ready("T")
    _, events = run(client, server, result_rows=3)
    assert len(events) == 1
    assert events[0].rows == 40 and len(events[0].result_hashes) == 3


def test_notifications_and_notices_do_not_disturb_matching():
    notify = wire.message(b"A", struct.pack("!i", 1) + b"chan\0payload\0")
    notice = wire.message(b"N", b"SNOTICE\0Mhello\0\0")
    client = query("SELECT 1") + query("SELECT 2")
    server = notify + row_description(23) + notice + data_row(b"1") + complete("SELECT 1") + ready() + notify
    server += row_description(23) + data_row(b"2") + complete("SELECT 1") + ready()
    _, events = run(client, server)
    assert [e.sql for e in events] == ["SELECT 1", "SELECT 2"]


# ------------------------------------------------------------------ fuzzing: any bytes end in a clean error


def _feed_garbage(feed, data: bytes) -> None:
    """Only a stream that cannot be framed any more reaches the caller (who ends the session, as the
    server would); anything else a client or server sends is contained by the tracker."""
    try:
        feed(data, 1.0)
    except wire.InvalidLength:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_tracker_survives_arbitrary_bytes(client_bytes, server_bytes):
    tracker = SessionTracker(ConnectionInfo(1, "x"), ValueHasher(b"k"), max_message=1 << 16)
    _feed_garbage(tracker.client_data, client_bytes)
    _feed_garbage(tracker.server_data, server_bytes)


message_types = st.sampled_from(list(b"QPBEDCSHFXdcTtDZIsn123KRSGAVN"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(message_types, st.binary(max_size=40)), max_size=20))
def test_tracker_survives_well_framed_nonsense(frames):
    stream = b"".join(wire.message(bytes([t]), body) for t, body in frames)
    tracker = SessionTracker(ConnectionInfo(1, "x"), ValueHasher(b"k"))
    _feed_garbage(tracker.client_data, stream)
    _feed_garbage(tracker.server_data, stream)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_startup_parsers_survive_arbitrary_bytes(data):
    try:
        parse_startup(data)
    except wire.ProtocolError:
        pass
    try:
        ServerStartup().feed(data)
    except wire.ProtocolError:
        pass


def test_statement_rejected_at_parse_is_reported_on_its_execute():
    client = parse("", "SELEC 1") + bind("", "", []) + execute() + SYNC + query("SELECT 2")
    server = error("42601") + ready("I") + row_description(23) + data_row(b"2") + complete("SELECT 1") + ready("I")
    tracker, events = run(client, server)
    assert [(e.sql, e.sqlstate, e.protocol) for e in events] == [
        ("SELEC 1", "42601", "extended"), ("SELECT 2", None, "simple")]
    assert not tracker.busy


@pytest.mark.slow
def test_atheris_fuzzing_finds_no_crash(tmp_path):
    """Coverage-guided: 300,000 inputs through tests/fuzz/fuzz_protocol.py (pip install -e '.[fuzz]')."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install -e '.[fuzz]')")
    harness = Path(__file__).parent / "fuzz" / "fuzz_protocol.py"
    proc = subprocess.run([sys.executable, str(harness), "-runs=300000", "-max_total_time=300"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and not list(tmp_path.glob("crash-*")), proc.stderr[-3000:]


def test_messages_too_large_to_analyse_keep_their_place():
    """Above max_analysed a request is relayed but not kept: the statements around it still match."""
    big_sql = "SELECT '" + "x" * 3000 + "'"
    client = query(big_sql) + query("SELECT 2")
    client += parse("", "SELECT $1::text") + bind("", "", [b"y" * 3000]) + execute() + SYNC + query("SELECT 3")
    server = row_description(25) + data_row(b"x") + complete("SELECT 1") + ready()
    server += row_description(23) + data_row(b"2") + complete("SELECT 1") + ready()
    server += PARSE_COMPLETE + BIND_COMPLETE + data_row(b"y") + complete("SELECT 1") + ready()
    server += row_description(23) + data_row(b"3") + complete("SELECT 1") + ready()
    for chunks in (lambda d: [d], lambda d: [d[i:i + 7] for i in range(0, len(d), 7)]):
        _, events = run(client, server, chunks=chunks, max_analysed=1024)
        assert [e.sql for e in events] == [
            f"/* pgloupe: a message of {len(big_sql) + 5} bytes, larger than max_analysed_message_size */",
            "SELECT 2", "", "SELECT 3"]  # the Bind's portal and statement names were in what was not read
        assert events[2].param_hashes == () and events[2].rows == 1 and events[3].rows == 1
