"""Nothing a client sends stops the analysis: not for its own session past the next clean point, and
never for anyone else's. Sans-IO first (the trackers and the replay path, fuzzed), then through the
real proxy, in one process and with a worker capturing for the main process."""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.pipeline import MAX_DATABASES, Pipeline
from detectors.schema import Schema, Table
from proxy.events import ConnectionInfo, StatementEvent
from proxy.protocol import wire
from proxy.protocol.capture import REC, CaptureBuffer, SessionGauge
from proxy.protocol.hashing import ValueHasher
from proxy.protocol.replay import Captured, Replayer, replay
from proxy.protocol.tracker import SessionTracker
from tests.rawpg import raw_connect, read_until_ready
from tests.test_wire import (
    BIND_COMPLETE,
    PARSE_COMPLETE,
    SYNC,
    bind,
    complete,
    cstr,
    data_row,
    error,
    execute,
    parse,
    query,
    ready,
    row_description,
)

KEY = b"r" * 32


class _Errors(list):
    """A tracker's ``on_error``, keeping what it heard (``t.on_error``: the tracker takes no new attributes)."""

    def __call__(self, _tracker, exc: Exception) -> None:
        self.append(exc)


def tracker(**kw) -> SessionTracker:
    return SessionTracker(ConnectionInfo(3, "10.0.0.3", "bob", "crm", "web"), ValueHasher(KEY),
                          on_error=_Errors(), **kw)


def feed(t: SessionTracker, client: bytes, server: bytes, now: float = 1.0) -> list[StatementEvent]:
    t.client_data(client, now)
    return t.server_data(server, now + 0.001)


# ------------------------------------------------------------------ the tracker reads what the server reads


def test_a_parse_the_server_rejects_names_nothing_and_the_session_goes_on():
    t = tracker()
    events = feed(t, wire.message(b"P", b"bad\0SELECT 1\0") + SYNC,
                  wire.message(b"E", b"SERROR\0VERROR\0C08P01\0Minsufficient data left in message\0\0") + ready())
    assert events == [] and "bad" not in t._statements and not t.lost and not t.busy
    events = feed(t, query("SELECT 2"), row_description(23) + data_row(b"2") + complete("SELECT 1") + ready())
    assert [e.sql for e in events] == ["SELECT 2"] and t.on_error == []


def test_65535_parameter_types_are_a_valid_parse():
    oids = (23,) * 65535
    sql = "SELECT array_length(ARRAY[$1, $65535]::int[], 1)"
    t = tracker()
    events = feed(t, parse("many", sql, oids) + bind("", "many", [b"1"] * 65535) + execute() + SYNC,
                  PARSE_COMPLETE + BIND_COMPLETE + data_row(b"2") + complete("SELECT 1") + ready())
    assert [(e.sql, e.rows, e.sqlstate) for e in events] == [(sql, 1, None)]
    assert t._statements["many"].param_oids == oids and t.on_error == []
    assert len(events[0].param_hashes) == 1024  # hashed up to MAX_HASHED_PARAMS


@pytest.mark.parametrize("bad", [
    wire.message(b"B", b"\0\0\0\2\0\0\0\1\0\0\0\1x\0\0"),  # two format codes for one parameter
    wire.message(b"B", b"\0\0\0\0\0\1\xff\xff\xff\xfe\0\0"),  # a parameter length of -2
    wire.message(b"E", b"\0\0\0\0\0\0"),  # a byte after max_rows
    wire.message(b"D", b"X\0"),  # neither a statement nor a portal
])
def test_extended_messages_the_server_rejects_keep_their_place_until_sync(bad):
    t = tracker()
    client = parse("s", "SELECT 1") + bad + execute() + SYNC + query("SELECT 'after'")
    server = PARSE_COMPLETE + error("08P01") + ready()
    server += row_description(25) + data_row(b"after") + complete("SELECT 1") + ready()
    events = feed(t, client, server)
    assert events[-1].sql == "SELECT 'after'" and events[-1].sqlstate is None
    assert not t.lost and not t.busy and t.on_error == []


def test_a_failure_costs_the_session_until_its_next_clean_point_only():
    """An Execute longer than any the server reads is not analysable: the tracker follows frame headers
    (one ReadyForQuery per Query, Sync and FunctionCall) and starts over once nothing is in flight."""
    t = tracker(max_analysed=1024)
    huge_execute = wire.message(b"E", cstr("p" * 2000) + struct.pack("!i", 0))
    client = query("SELECT 1") + huge_execute + SYNC + query("SELECT 3")
    server = row_description(23) + data_row(b"1") + complete("SELECT 1") + ready()
    t.client_data(client, 1.0)
    assert t.lost and t.busy and len(t.on_error) == 1
    assert t.server_data(server, 1.1) == []  # the Query's answer: the Sync's and SELECT 3's still to come
    assert t.busy
    t.server_data(error("34000") + ready(), 1.2)
    t.server_data(row_description(23) + data_row(b"3") + complete("SELECT 1") + ready(), 1.3)
    assert not t.busy and t.lost  # clean, but it starts over only at the client's next message
    events = feed(t, query("SELECT 4"), row_description(23) + data_row(b"4") + complete("SELECT 1") + ready(), 1.4)
    assert [e.sql for e in events] == ["SELECT 4"] and not t.lost and t.resumed == 1


def test_statements_prepared_before_a_failure_are_kept():
    t = tracker(max_analysed=1024)
    feed(t, parse("s1", "SELECT name FROM t WHERE id = $1", (23,)) + SYNC, PARSE_COMPLETE + ready())
    t.client_data(wire.message(b"C", b"S" + b"x" * 2000 + b"\0") + SYNC, 2.0)  # too long to read
    assert t.lost
    t.server_data(wire.message(b"3", b"") + ready(), 2.1)
    events = feed(t, bind("", "s1", [b"5"]) + execute() + SYNC,
                  BIND_COMPLETE + data_row(b"x") + complete("SELECT 1") + ready(), 2.2)
    assert [e.sql for e in events] == ["SELECT name FROM t WHERE id = $1"]


# ------------------------------------------------------------------ the replay path, fuzzed

front_types = st.sampled_from(list(b"QPBEDCSHFXdcf\0"))
back_types = st.sampled_from(list(b"TDCZEIsn123dcGHANKRSVt\0"))
frames_of = lambda types: st.lists(st.tuples(types, st.binary(max_size=24)), max_size=12)  # noqa: E731
steps = st.lists(st.tuples(frames_of(front_types), frames_of(back_types), st.binary(max_size=16),
                           st.binary(max_size=16), st.integers(1, 50), st.booleans()), min_size=1, max_size=8)


def _frames(frames) -> bytes:
    return b"".join(wire.message(bytes([t]), body) for t, body in frames)


def _cut(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)] or [b""]


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(0, 3), st.sampled_from([64, 4096, 4 << 20]))
def test_the_replay_path_never_raises(script, rows, limit):
    """Gauge -> capture -> Replayer -> trackers, with well-framed nonsense, raw bytes from either side, any
    cut, and shipments dropped the way a lagging main process drops them: the analysis thread never raises."""
    info = ConnectionInfo(9, "10.0.0.9", "eve", "crm", "web")
    capture = CaptureBuffer(limit)
    gauge = SessionGauge(info, capture, rows, "I", max_analysed=2048)
    failures = []
    replayer = Replayer(lambda i, tx: SessionTracker(i, ValueHasher(KEY), rows, markers=True, tx=tx,
                                                     max_analysed=2048),
                        0.0, on_error=lambda conn, exc: failures.append(exc), on_lost=lambda: None)
    now = 1.0
    for front, back, raw, raw_back, cut, drop in script:
        try:
            for part in _cut(_frames(front) + raw, cut):
                now += 0.001
                gauge.client_data(part, now)
            for part in _cut(_frames(back) + raw_back, cut):
                now += 0.001
                gauge.server_data(part, now)
        except wire.InvalidLength:
            gauge.closed(now)  # the worker ends a session whose stream cannot be framed
            replay([Captured(replayer, capture.take(), [])], failures.append)
            break
        shipment = capture.take()
        if drop:  # the main process dropped it: the worker resynchronises the session
            replay([Captured(replayer, b"", [], "desync")], failures.append)
            gauge.gap = True
        else:
            replay([Captured(replayer, shipment, [])], failures.append)
    assert failures == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(range(8)), st.binary(max_size=40)), max_size=10),
       st.binary(max_size=30))
def test_any_shipment_bytes_replay_without_raising(records, tail):
    raw = b"".join(REC.pack(conn, kind, 1.0, len(body)) + body for conn, kind, body in records) + tail
    lost = []
    replayer = Replayer(lambda i, tx: SessionTracker(i, ValueHasher(KEY), markers=True, tx=tx), 0.0,
                        on_error=lambda conn, exc: None, on_lost=lambda: lost.append(1))
    replayer.feed(raw)
    assert bool(lost) == (len(tail) > 0 and not _whole_records(tail))


def _whole_records(tail: bytes) -> bool:
    pos = 0
    while pos < len(tail):
        if pos + REC.size > len(tail):
            return False
        pos += REC.size + REC.unpack_from(tail, pos)[3]
    return pos == len(tail)


def test_a_gauge_forgets_a_parse_the_server_rejects():
    capture = CaptureBuffer()
    gauge = SessionGauge(ConnectionInfo(4, "x"), capture, 16, "I")
    gauge.client_data(wire.message(b"P", b"bad\0SELECT 1\0") + parse("good", "SELECT 2") + SYNC, 1.0)
    assert list(gauge.prepared) == [b"good"]
    assert capture.prepared_bytes == len(parse("good", "SELECT 2"))
    gauge.closed(2.0)
    assert capture.prepared_bytes == 0


# ------------------------------------------------------------------ reads from other threads


def test_the_catalog_task_and_metrics_read_the_pipeline_while_the_analysis_thread_changes_it():
    """The catalog task (event loop) and /metrics (HTTP thread) read which databases want a refresh and
    how much the unseen table names take, while the analysis thread adds and forgets databases: with the
    GIL handed over as often as it can be, for a second, no read may raise."""
    pipeline = Pipeline(schema=Schema({"known": Table("known", columns={"id": "integer"})}, loaded=True))
    stop = threading.Event()

    def analyse():  # 100 databases in turn: past MAX_DATABASES the least recently seen is forgotten
        i = 0
        while not stop.is_set():
            i += 1
            pipeline.process([StatementEvent(1, "u", f"db{i % 100}", "app", "c", f"SELECT id FROM t{i % 7}",
                                             "simple", None, 0, (), (), float(i), 0.001, "SELECT", 0, 10, None,
                                             "I", "I", False)])

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=analyse)
    thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert len(pipeline.databases_wanting_refresh()) <= MAX_DATABASES + 1  # (one added, one to go)
            assert pipeline.memory()["unknown_tables"][0] >= 0
            reads += 1
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert reads > 100 and pipeline.events > 100 and pipeline.errors == 0


# ------------------------------------------------------------------ through the real proxy


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def raw_session(proxy):
    sock = raw_connect(proxy.port)
    sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
    assert read_until_ready(sock)[-1][0] == b"Z"
    return sock


def exchange(sock, data: bytes) -> list[tuple[bytes, bytes]]:
    sock.sendall(data)
    return read_until_ready(sock)


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


def test_a_rejected_parse_then_a_gap_does_not_stop_analysis_for_anyone(start_proxy):
    """The issue's reproduction, with a worker: a named Parse without its type count (08P01, the session
    stays), then a 6 MB query that overfills the capture shipment, so the session resynchronises and
    its named statements are re-sent to the main process."""
    proxy = start_proxy(workers=1)
    sock = raw_session(proxy)
    reply = exchange(sock, wire.message(b"P", b"bad\0SELECT 1\0") + SYNC)
    assert [m for m, _ in reply] == [b"E", b"Z"] and wire.decode_fields(reply[0][1])["C"] == "08P01"
    exchange(sock, parse("good", "SELECT $1::int AS kept_statement", (23,)) + SYNC)
    reply = exchange(sock, query("SELECT length('" + "x" * (6 << 20) + "') AS big"))
    assert wire.decode_data_row(reply[1][1]) == [str(6 << 20).encode()]
    exchange(sock, query("SELECT 'after the gap' AS after_gap"))
    exchange(sock, bind("", "good", [b"7"]) + execute() + SYNC)
    sock.close()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 'someone else' AS other_client").fetchall()
    proxy.wait_for(lambda e: "other_client" in e.sql, timeout=20, what="another client's statement")
    proxy.wait_for(lambda e: "after_gap" in e.sql, what="the session's statements after its gap")
    proxy.wait_for(lambda e: "kept_statement" in e.sql, what="a statement prepared before the gap")
    status, body = http_get(proxy.http_port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_parse_with_65535_parameter_types_is_analysed(start_proxy, workers):
    proxy = start_proxy(workers=workers)
    sock = raw_session(proxy)
    sql = "SELECT array_length(ARRAY[" + ", ".join(f"${i}" for i in range(1, 65536)) + "]::int[], 1) AS wide"
    reply = exchange(sock, parse("wide", sql, (23,) * 65535) + bind("", "wide", [b"1"] * 65535)
                     + execute() + SYNC)
    assert [m for m, _ in reply] == [b"1", b"2", b"D", b"C", b"Z"], reply
    assert wire.decode_data_row(reply[2][1]) == [b"65535"]
    exchange(sock, query("SELECT 'next' AS next_statement"))
    sock.close()
    wide, = proxy.wait_for(lambda e: e.sql == sql, what="the 65535-parameter statement")
    assert wide.rows == 1 and wide.sqlstate is None
    proxy.wait_for(lambda e: "next_statement" in e.sql)
    status, body = http_get(proxy.http_port, "/healthz")
    assert json.loads(body)["analysis_errors"] == 0


def test_a_session_whose_analysis_failed_is_analysed_again_from_its_next_clean_point(start_proxy):
    proxy = start_proxy(max_analysed_message_size=1024)
    with structlog.testing.capture_logs() as logs:
        sock = raw_session(proxy)
        reply = exchange(sock, wire.message(b"E", cstr("p" * 2000) + struct.pack("!i", 0)) + SYNC)
        assert wire.decode_fields(reply[0][1])["C"] == "34000"  # no such portal: the session goes on
        exchange(sock, query("SELECT 'resumed' AS resumed"))
        exchange(sock, wire.message(b"E", cstr("q" * 2000) + struct.pack("!i", 0)) + SYNC)
        exchange(sock, query("SELECT 'again' AS again"))
        sock.close()
        proxy.wait_for(lambda e: "resumed" in e.sql, what="the statement after the clean point")
        proxy.wait_for(lambda e: "again" in e.sql)
    assert proxy.app.proxy.stats.analysis_errors == 2
    interrupted = [line for line in logs if line["event"] == "analysis_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["error"] == "TooLarge"  # logged once per session


def test_healthz_fails_while_the_analysis_is_stalled_and_recovers(start_proxy, monkeypatch):
    import proxy.service.analysis

    monkeypatch.setattr(proxy.service.analysis, "STALL_S", 1.0)
    running = start_proxy()
    app = running.app
    release = threading.Event()
    app.analysis.executor.submit(release.wait, 60)  # the analysis thread is stuck in a long step
    try:
        with psycopg.connect(running.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 'waits' AS waits").fetchall()
        status, body = wait_until(lambda: (r := http_get(running.http_port, "/healthz"))[0] == 503 and r,
                                  what="/healthz failing")
        assert any("stalled" in reason for reason in json.loads(body)["reasons"])
        _, metrics = http_get(running.http_port, "/metrics")
        assert "pgloupe_analysis_up 0.0" in metrics
    finally:
        release.set()
    running.wait_for(lambda e: "waits" in e.sql)
    wait_until(lambda: http_get(running.http_port, "/healthz")[0] == 200, what="/healthz ok again")
    assert "pgloupe_analysis_up 1.0" in http_get(running.http_port, "/metrics")[1]


def test_healthz_names_an_analysis_task_that_stopped(start_proxy):
    running = start_proxy()
    app = running.app
    running.background.call(lambda: next(t for t in app.analysis.tasks if t.get_name() == "tick").cancel())
    status, body = wait_until(lambda: (r := http_get(running.http_port, "/healthz"))[0] == 503 and r,
                              what="/healthz failing")
    assert json.loads(body)["reasons"] == ["analysis task tick has stopped"]


def test_the_catalog_refresh_and_the_analysis_survive_their_own_failures(start_proxy, monkeypatch):
    running = start_proxy(sections={"detectors": {"schema_refresh_s": 1}})
    app = running.app
    wait_until(lambda: app.pipeline.schema.loaded, what="a first catalog snapshot")
    calls = {"n": 0}
    real = app.reviews.observed

    def broken(*args):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("a bug in the catalog step")
        return real(*args)

    monkeypatch.setattr(app.reviews, "observed", broken)
    before = app.reviews.errors
    wait_until(lambda: calls["n"] > 2 and app.reviews.errors >= before + 2, what="two failed refreshes and a third")
    loaded_at = app.reviews.upstream.catalog.read_at
    wait_until(lambda: app.reviews.upstream.catalog.read_at > loaded_at, what="a refresh after the failures")

    def fails(batch):
        raise RuntimeError("a bug in a handler")

    app.analysis.handlers.append(fails)
    original = app.pipeline.process
    monkeypatch.setattr(app.pipeline, "process", lambda batch: (_ for _ in ()).throw(ValueError("pipeline bug")))
    with psycopg.connect(running.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 'during the failures'").fetchall()
        wait_until(lambda: app.analysis.failures >= 2, what="contained failures")
        monkeypatch.setattr(app.pipeline, "process", original)
        conn.execute("SELECT 'after the failures' AS after_failures").fetchall()
    running.wait_for(lambda e: "after_failures" in e.sql)
    wait_until(lambda: any("after_failures" in r["query"] for r in running.background.call(
        lambda: running.app.analysis.call(app.pipeline.observed_rows))), what="the pipeline analysing again")
    status, body = http_get(running.http_port, "/healthz")
    assert status == 200, body


def test_a_failing_catalog_schedule_costs_one_round_not_the_catalog_task(start_proxy, monkeypatch):
    """The schedule itself (which databases are due) failing once: counted and logged, and the catalog
    task goes on refreshing; /healthz stays ok."""
    running = start_proxy(sections={"detectors": {"schema_refresh_s": 1}})
    app = running.app
    wait_until(lambda: app.reviews.upstream is not None, what="a first catalog snapshot")
    real = app.pipeline.databases_wanting_refresh
    calls = {"n": 0}

    def once(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("OrderedDict mutated during iteration")
        return real(*args)

    failures = app.analysis.failures
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(app.pipeline, "databases_wanting_refresh", once)
        wait_until(lambda: app.analysis.failures > failures, what="the failed round counted")
        loaded_at = app.reviews.upstream.catalog.read_at
        wait_until(lambda: app.reviews.upstream.catalog.read_at > loaded_at, what="a refresh after the failure")
    failed = [line for line in logs if line["event"] == "analysis_step_failed"]
    assert [(line["step"], line["error"]) for line in failed] == [("catalog_schedule", "RuntimeError")]
    catalog = next(t for t in app.analysis.tasks if t.get_name() == "catalog")
    assert not catalog.done()
    status, body = http_get(running.http_port, "/healthz")
    assert status == 200, body


def test_a_failing_advisor_is_reported_without_its_message_and_the_service_goes_on(start_proxy, monkeypatch):
    """The advisor (not the catalog read) raising, with a message that quotes a value: the catalog snapshot
    still reaches the detectors, the failure is counted in /metrics and logged by its class only, and the
    next review advises again."""
    import detectors.database.review

    running = start_proxy(sections={"detectors": {"schema_refresh_s": 1}})
    app = running.app
    wait_until(lambda: app.reviews.upstream is not None, what="a first catalog snapshot")
    real = detectors.database.review.advise
    canary = "advisor-canary-7d1e"

    def broken(*args, **kwargs):
        raise ValueError(f"invalid input syntax for type integer: \"{canary}\"")

    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(detectors.database.review, "advise", broken)
        loaded_at = app.reviews.upstream.catalog.read_at
        wait_until(lambda: app.reviews.advice_errors >= 1 and app.reviews.upstream.catalog.read_at > loaded_at,
                   what="a review whose advice failed")
        monkeypatch.setattr(detectors.database.review, "advise", real)
        errors = app.reviews.advice_errors
        loaded_at = app.reviews.upstream.catalog.read_at
        wait_until(lambda: app.reviews.upstream.catalog.read_at > loaded_at, what="a review after the failure")
    assert app.reviews.advice_errors == errors  # the advisor works again
    assert app.pipeline.schema.loaded
    incomplete = [line for line in logs if line["event"] == "advice_incomplete"]
    assert incomplete and incomplete[0]["error"] == "ValueError", incomplete
    assert canary not in repr(logs)
    _, metrics = http_get(running.http_port, "/metrics")
    assert f"pgloupe_advice_errors_total {float(errors)}" in metrics
    status, body = http_get(running.http_port, "/healthz")
    assert status == 200, body


def test_an_unreadable_catalog_is_logged_by_the_servers_words_or_the_systems_never_a_message(pg):
    """catalog_unavailable says why from PostgreSQL's own error on pgloupe's login or catalog queries
    (SQLSTATE set) or the system's (OSError); any other error is named by its class alone."""
    import asyncio

    import asyncpg

    from proxy.service.reviews import _reason

    async def refused():
        with pytest.raises(asyncpg.PostgresError) as raised:
            await asyncpg.connect(pg.dsn(database="no_such_database_here"), ssl=False)
        return raised.value

    fields = _reason(asyncio.run(refused()))
    assert fields["sqlstate"] == "3D000" and "no_such_database_here" in fields["reason"]
    assert _reason(ConnectionRefusedError(111, "Connection refused")) == {
        "error": "ConnectionRefusedError", "reason": "Connection refused"}
    assert _reason(ValueError("invalid DSN postgresql://u:canary-pw@h/db")) == {"error": "ValueError"}
