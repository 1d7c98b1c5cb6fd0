"""Session life cycle through pgloupe: cancels, vanished clients, vanished servers, bad first packets,
and the bounded events queue that must drop rather than slow a client down.

Every network wait is bounded; nothing here may hang the suite.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors

from proxy.demo.embedded import free_port
from proxy.protocol import wire

from .conftest import backend_activity, statement_active, wait_until
from .rawpg import NET_TIMEOUT, read_until_ready

pytestmark = pytest.mark.timeout(90)



# ---------------------------------------------------------------------------- helpers


def raw_session(port: int) -> socket.socket:
    """A raw, authenticated (trust) session through the proxy, ready for queries."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT)
    sock.settimeout(NET_TIMEOUT)
    sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
    messages = read_until_ready(sock)
    assert messages[0][0] == b"R" and messages[-1][0] == b"Z", messages
    return sock


def raw_query(sock: socket.socket, sql: str) -> list[list[bytes | None]]:
    sock.sendall(wire.message(b"Q", sql.encode() + b"\0"))
    reply = read_until_ready(sock)
    errors_seen = [wire.decode_fields(b) for m, b in reply if m == b"E"]
    assert not errors_seen, errors_seen
    return [wire.decode_data_row(b) for m, b in reply if m == b"D"]


def recv_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails if it does not close within ``timeout``."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
        assert time.monotonic() < deadline, "peer did not close"


def parse_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        mtype, length = struct.unpack_from("!cI", data, pos)
        out.append((mtype, data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def direct(pg) -> psycopg.Connection:
    return psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10)


def cancel_once_running(pg, pid: int, cancel) -> threading.Thread:
    """On a thread: wait until the server runs the statement on backend ``pid``, then call ``cancel``.
    (Not after a fixed delay: a cancel that reaches the server before the statement is ignored.)"""
    def run():
        with direct(pg) as admin:
            if wait_until(lambda: statement_active(admin, pid), 10):
                cancel()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(dsn, **kwargs)


# ---------------------------------------------------------------------------- CancelRequest


def test_psycopg_cancel_safe_is_forwarded(pg, start_proxy):
    proxy = start_proxy()
    with connect(proxy.dsn()) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        canceller = cancel_once_running(pg, pid, lambda: conn.cancel_safe(timeout=5))
        try:
            # Cut, not finished: the statement would run for 30 s, and the error is the server's own
            # answer to a forwarded cancel (no wall-clock window: the error says what happened).
            with pytest.raises(errors.QueryCanceled) as info:
                conn.execute("select pg_sleep(30)")
        finally:
            canceller.join(NET_TIMEOUT + 10)
        assert info.value.sqlstate == "57014"
        # The session goes on.
        assert conn.execute("select 1").fetchone()[0] == 1
    assert proxy.app.proxy.stats.cancels_forwarded >= 1


# libpq's legacy PQcancel blocks until the server (here: pgloupe) closes the cancel connection, and
# psycopg's binary build calls it without releasing the GIL. With pgloupe on a thread of this same
# process that is a deadlock of the test itself, so the legacy cancel() runs in a child process.
# The cancel is sent once the server runs the statement (argv[2]: a direct connection to it shows that).
LEGACY_CANCEL_CLIENT = """
import sys, threading, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=10) as conn:
    pid = conn.execute("select pg_backend_pid()").fetchone()[0]

    def cancel_once_running():
        with psycopg.connect(sys.argv[2], autocommit=True, connect_timeout=10) as admin:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = admin.execute("select state, query from pg_stat_activity where pid = %s", (pid,)).fetchone()
                if row is not None and row[0] == "active" and "pg_sleep" in row[1]:
                    conn.cancel()
                    return
                time.sleep(0.02)

    threading.Thread(target=cancel_once_running).start()
    try:
        conn.execute("select pg_sleep(30)")
        print("not-cancelled")
    except psycopg.Error as exc:
        print(exc.sqlstate)
    print(conn.execute("select 1").fetchone()[0])
"""


def test_psycopg_legacy_cancel_is_forwarded(pg, start_proxy):
    proxy = start_proxy()
    # Not cancelled, the statement would still run when the 30 s timeout ends the child.
    out = subprocess.run([sys.executable, "-c", LEGACY_CANCEL_CLIENT, proxy.dsn(), pg.dsn()],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    assert first == "57014"  # the server's answer to the forwarded cancel
    assert second == "1"
    assert proxy.app.proxy.stats.cancels_forwarded >= 1


def test_asyncpg_timeout_cancels_and_connection_stays_usable(start_proxy):
    proxy = start_proxy()

    async def go():
        conn = await asyncpg.connect(proxy.dsn(), timeout=NET_TIMEOUT)
        try:
            with pytest.raises(TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=0.5)
            # usable at once: had the cancel not reached the server, this would wait for the 30 s
            # statement and time out (a wall-clock window around both would add nothing but noise)
            assert await conn.fetchval("select 41 + 1", timeout=5) == 42
        finally:
            await conn.close(timeout=5)

    run(go())
    assert proxy.app.proxy.stats.cancels_forwarded >= 1


def test_cancel_with_unknown_key_is_harmless(pg, start_proxy):
    """A CancelRequest for no backend: forwarded, the server ignores it, the proxy closes the socket."""
    proxy = start_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=NET_TIMEOUT) as sock:
        sock.sendall(struct.pack("!iiii", 16, wire.CANCEL_REQUEST, 1, 2))
        assert recv_until_closed(sock, 5) == b""
    with connect(proxy.dsn()) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


# ---------------------------------------------------------------------------- a client vanishes mid-query


def test_client_disconnect_mid_query_stops_backend_raw(pg, start_proxy):
    proxy = start_proxy()
    with direct(pg) as admin:
        sock = raw_session(proxy.port)
        [[pid]] = raw_query(sock, "select pg_backend_pid()")
        pid = int(pid)
        sock.sendall(wire.message(b"Q", b"select pg_sleep(60)\0"))
        assert wait_until(lambda: statement_active(admin, pid), 10), backend_activity(admin, pid)
        # Abrupt: RST instead of FIN, no Terminate.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        stopped = wait_until(lambda: not statement_active(admin, pid), 10)
        assert stopped, f"backend {pid} still running the abandoned query: {backend_activity(admin, pid)}"
        assert wait_until(lambda: backend_activity(admin, pid) is None, 10), backend_activity(admin, pid)
    assert proxy.app.proxy.stats.cancels_forwarded >= 1


def test_client_disconnect_mid_query_stops_backend_asyncpg(pg, start_proxy):
    proxy = start_proxy()

    async def go(admin: psycopg.Connection) -> int:
        conn = await asyncpg.connect(proxy.dsn(), timeout=NET_TIMEOUT)
        pid = await conn.fetchval("select pg_backend_pid()")
        task = asyncio.ensure_future(conn.execute("select pg_sleep(60)"))
        # Once the server runs it: dropped earlier, the statement never starts and the check below
        # that the server stopped it would pass without testing anything.
        await asyncio.to_thread(wait_until, lambda: statement_active(admin, pid), 10, "the server to run the statement")
        # Abrupt: drop the socket. (conn.terminate() would first write a Terminate message, a clean
        # goodbye after which pgloupe, like the server, leaves the running statement alone.)
        conn._transport.abort()
        try:
            await asyncio.wait_for(task, 5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        return pid

    with direct(pg) as admin:
        pid = run(go(admin))
        stopped = wait_until(lambda: not statement_active(admin, pid), 10)
        assert stopped, f"backend {pid} still running the abandoned query: {backend_activity(admin, pid)}"
    assert proxy.app.proxy.stats.cancels_forwarded >= 1


def test_client_disconnect_while_idle_closes_backend(pg, start_proxy):
    proxy = start_proxy()
    with direct(pg) as admin:
        sock = raw_session(proxy.port)
        [[pid]] = raw_query(sock, "select pg_backend_pid()")
        sock.close()
        assert wait_until(lambda: backend_activity(admin, int(pid)) is None, 10)
    assert proxy.app.proxy.stats.cancels_forwarded == 0  # nothing was running: nothing to cancel


# ---------------------------------------------------------------------------- the upstream is down or goes away


@pytest.fixture
def closed_port() -> int:
    return free_port()  # bound, then released: nothing listens there


def test_upstream_down_psycopg(start_proxy, closed_port):
    proxy = start_proxy(upstream=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    # No wall-clock window: a pgloupe that did not answer would leave the client to its own 5 s
    # connect_timeout, whose error is psycopg's and does not name pgloupe or the upstream.
    with pytest.raises(psycopg.OperationalError) as info:
        connect(proxy.dsn(), connect_timeout=5)
    message = str(info.value)
    assert "pgloupe" in message and "cannot connect to upstream" in message
    assert f"127.0.0.1:{closed_port}" in message
    assert proxy.app.proxy.stats.upstream_errors >= 1


def test_upstream_down_asyncpg(start_proxy, closed_port):
    proxy = start_proxy(upstream=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    # (a pgloupe that did not answer would end in asyncpg's own TimeoutError after 5 s, not 08006)
    with pytest.raises(asyncpg.PostgresError) as info:
        run(asyncpg.connect(proxy.dsn(), timeout=5), timeout=10)
    assert info.value.sqlstate == "08006"
    assert "pgloupe" in info.value.args[0] and "cannot connect to upstream" in info.value.args[0]


def test_upstream_down_raw(start_proxy, closed_port):
    proxy = start_proxy(upstream=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=NET_TIMEOUT) as sock:
        sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        messages = parse_messages(recv_until_closed(sock, 5))
    assert [m for m, _ in messages] == [b"E"]
    fields = wire.decode_fields(messages[0][1])
    assert fields["C"] == "08006" and fields["S"] == "FATAL"


def test_upstream_terminated_mid_session_psycopg(pg, start_proxy):
    proxy = start_proxy()
    with direct(pg) as admin, connect(proxy.dsn()) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        assert wait_until(lambda: backend_activity(admin, pid) is None, 10)
        # The server's own FATAL is relayed: the same error as without pgloupe. (A pgloupe that kept
        # the dead session open would hang here until the file's timeout.)
        with pytest.raises(errors.AdminShutdown) as info:
            conn.execute("select 1")
        assert info.value.sqlstate == "57P01"
        assert conn.closed or conn.broken
    with connect(proxy.dsn()) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    assert wait_until(lambda: len(proxy.app.proxy.clients) == 0, 5)


def test_upstream_terminated_mid_session_raw_gets_the_servers_fatal(pg, start_proxy):
    proxy = start_proxy()
    with direct(pg) as admin:
        sock = raw_session(proxy.port)
        [[pid]] = raw_query(sock, "select pg_backend_pid()")
        admin.execute("select pg_terminate_backend(%s)", (int(pid),))
        messages = parse_messages(recv_until_closed(sock, 5))
        sock.close()
    assert [m for m, _ in messages] == [b"E"], messages  # the server's, and no second one from pgloupe
    fields = wire.decode_fields(messages[0][1])
    assert fields["C"] == "57P01" and fields["S"] == "FATAL"


def test_upstream_terminated_during_query_asyncpg(pg, start_proxy):
    proxy = start_proxy()

    async def go():
        conn = await asyncpg.connect(proxy.dsn(), timeout=NET_TIMEOUT)
        try:
            pid = await conn.fetchval("select pg_backend_pid()")
            admin = await asyncpg.connect(pg.dsn(), timeout=NET_TIMEOUT)
            try:
                task = asyncio.ensure_future(conn.fetchval("select pg_sleep(30)"))
                # terminated while the server runs the statement, as the test's name says
                deadline = time.monotonic() + 10
                while not await admin.fetchval(
                        "select state = 'active' and query like '%pg_sleep%' from pg_stat_activity where pid = $1", pid):
                    assert time.monotonic() < deadline, "the server never ran the statement"
                    await asyncio.sleep(0.02)
                await admin.fetchval("select pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
                await asyncio.wait_for(task, 5)
        finally:
            conn.terminate()
        conn2 = await asyncpg.connect(proxy.dsn(), timeout=NET_TIMEOUT)
        try:
            assert await conn2.fetchval("select 1") == 1
        finally:
            await conn2.close()

    run(go())


# ---------------------------------------------------------------------------- bounded events queue


def _settle_queue(proxy, timeout: float = 10.0) -> None:
    """Wait until the consumer has handed every accepted event to the handlers."""
    queue = proxy.app.queue
    assert wait_until(lambda: len(proxy.events) >= queue.accepted and len(queue) == 0, timeout), (
        len(proxy.events), queue.accepted, len(queue))


def test_full_events_queue_drops_and_never_blocks_pipeline(start_proxy):
    proxy = start_proxy(queue_size=1)
    n = 2000
    with connect(proxy.dsn()) as conn:
        started = time.monotonic()
        with conn.pipeline():
            cursors = [conn.execute("select %s::int", (i,)) for i in range(n)]
        values = [cur.fetchone()[0] for cur in cursors]
        elapsed = time.monotonic() - started
    assert values == list(range(n))
    assert elapsed < 30
    _settle_queue(proxy)
    queue = proxy.app.queue
    assert queue.accepted + queue.dropped == n
    assert len(proxy.events) + queue.dropped == n
    assert all(e.sql == "select $1::int" for e in proxy.events), proxy.events[:5]
    assert sum(proxy.app.analysis.statements.values()) == len(proxy.events)
    assert queue.dropped > 0, "no drops with a queue of 1: the pipeline's results arrived one per read"


def test_full_events_queue_drops_deterministically_multi_statement_query(start_proxy):
    """One simple Query of 2000 statements: the server flushes results in 8 kB buffers, so every read the
    proxy makes from the server holds many results, and a queue of 1 must drop all but one of each."""
    proxy = start_proxy(queue_size=1)
    n = 2000
    sql = ";".join(f"select {i}" for i in range(n))
    with connect(proxy.dsn()) as conn:
        cur = conn.execute(sql)
        last = cur.fetchone()[0]
        results = 1
        while cur.nextset():
            results += 1
            last = cur.fetchone()[0]
        assert conn.execute("select 'still fine'").fetchone()[0] == "still fine"
    assert results == n and last == n - 1
    _settle_queue(proxy)
    queue = proxy.app.queue
    assert queue.accepted + queue.dropped == n + 1
    assert len(proxy.events) + queue.dropped == n + 1
    assert queue.dropped >= n // 2
    assert proxy.app.proxy.stats.analysis_errors == 0


def test_default_queue_records_every_statement(start_proxy):
    """Control: with room in the queue nothing is dropped and every statement is an event."""
    proxy = start_proxy()
    n = 2000
    with connect(proxy.dsn()) as conn:
        with conn.pipeline():
            cursors = [conn.execute("select %s::int", (i,)) for i in range(n)]
        assert [cur.fetchone()[0] for cur in cursors] == list(range(n))
    _settle_queue(proxy)
    assert proxy.app.queue.dropped == 0
    assert len(proxy.events) == n


# ---------------------------------------------------------------------------- bad first packets


def _startup_answer(port: int, packet: bytes) -> list[tuple[bytes, str | None]]:
    with socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT) as sock:
        sock.sendall(packet)
        messages = parse_messages(recv_until_closed(sock, 5))
    return [(m, wire.decode_fields(body).get("C") if m == b"E" else None) for m, body in messages]


@pytest.mark.parametrize("packet", [
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http"),
    pytest.param(struct.pack("!ii", 4, 0), id="length-too-small"),
    pytest.param(struct.pack("!ii", 8, 0x00020000), id="protocol-2"),
    pytest.param(struct.pack("!ii", 12, 196608) + b"user", id="not-nul-terminated"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-client-hello-without-sslrequest"),
])
def test_invalid_startup_packets_are_answered_as_postgresql_answers_them(pg, start_proxy, packet):
    """An impossible length is closed without a word (PostgreSQL only logs it); a packet that is one but
    says something the server refuses gets its FATAL error, with the server's SQLSTATE. Other clients
    never notice."""
    proxy = start_proxy()
    with connect(proxy.dsn()) as other:
        assert other.execute("select 1").fetchone()[0] == 1
        ours, theirs = _startup_answer(proxy.port, packet), _startup_answer(pg.port, packet)
        if packet[4:6] == b"\x00\x02":  # the server answers a protocol-2 client in protocol 2 (no fields)
            assert ours == [(b"E", "0A000")] and [m for m, _ in theirs] == [b"E"]
        else:
            assert ours == theirs
        assert other.execute("select 2").fetchone()[0] == 2
    assert proxy.app.proxy.stats.protocol_errors == 1
    with connect(proxy.dsn()) as conn:
        assert conn.execute("select 3").fetchone()[0] == 3


def test_silent_client_is_closed_after_startup_timeout(start_proxy):
    proxy = start_proxy(startup_timeout=1)
    with connect(proxy.dsn()) as other:
        started = time.monotonic()  # before connecting: pgloupe's timer cannot have started earlier
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=NET_TIMEOUT) as sock:
            data = recv_until_closed(sock, 5)  # the generous bound: closed within 5 s, or it hangs
            elapsed = time.monotonic() - started
        # A session that did start is not subject to the startup timeout. No pause is needed: it
        # connected before the silent client, so a timer of its own would have fired before the one
        # just seen (same loop, timers in deadline order).
        assert other.execute("select 1").fetchone()[0] == 1
    # Closed by the timeout, not at once (a lower bound: load only makes it later); that it was the
    # timeout and not something else closing early is what the message says.
    assert elapsed >= 0.9, elapsed
    messages = parse_messages(data)
    assert [m for m, _ in messages] == [b"E"], messages
    fields = wire.decode_fields(messages[0][1])
    assert fields["C"] == "08P01" and "timed out" in fields["M"]


def test_partial_startup_packet_is_closed_after_startup_timeout(start_proxy):
    proxy = start_proxy(startup_timeout=1)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=NET_TIMEOUT) as sock:
        sock.sendall(wire.startup_message({"user": "postgres"})[:6])
        messages = parse_messages(recv_until_closed(sock, 5))  # closed within 5 s, or it hangs
    assert [m for m, _ in messages] == [b"E"], messages
    fields = wire.decode_fields(messages[0][1])
    assert fields["C"] == "08P01" and "timed out" in fields["M"], fields  # by the startup timeout


def test_established_session_outlives_startup_timeout(start_proxy):
    proxy = start_proxy(startup_timeout=1)
    with connect(proxy.dsn()) as conn:
        time.sleep(1.5)  # the input, not a wait: the session outlives the 1 s startup timeout
        assert conn.execute("select 1").fetchone()[0] == 1


# ---------------------------------------------------------------------------- Terminate


def test_terminate_ends_session_and_backend(pg, start_proxy):
    proxy = start_proxy()
    with direct(pg) as admin:
        sock = raw_session(proxy.port)
        [[pid]] = raw_query(sock, "select pg_backend_pid()")
        pid = int(pid)
        assert backend_activity(admin, pid) is not None
        sock.sendall(b"X\x00\x00\x00\x04")
        assert recv_until_closed(sock, 5) == b""  # closed, and no error message for a clean goodbye
        sock.close()
        assert wait_until(lambda: backend_activity(admin, pid) is None, 10), backend_activity(admin, pid)
    assert wait_until(lambda: len(proxy.app.proxy.clients) == 0, 5)
    assert proxy.app.proxy.stats.cancels_forwarded == 0
