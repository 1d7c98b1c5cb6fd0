"""Bad input in an established session: the bad client loses its own connection (with an ErrorResponse where
the protocol allows), and a well-behaved client on the same pgloupe goes on answering throughout."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg

from proxy.protocol import wire

from .conftest import backend_activity, wait_until
from .rawpg import NET_TIMEOUT, read_until_ready
from .test_lifecycle import parse_messages, raw_query, recv_until_closed


class Bystander:
    """A client running one query after another on its own connection for as long as the test runs."""

    def __init__(self, dsn: str):
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.answers = 0
        self.slowest = 0.0
        self.errors: list[Exception] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                assert self.conn.execute("SELECT 40 + 2").fetchone() == (42,)
            except Exception as exc:  # recorded and asserted on by the test
                self.errors.append(exc)
                return
            self.slowest = max(self.slowest, time.monotonic() - start)
            self.answers += 1
            time.sleep(0.005)

    def answered_since(self, before: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.answers <= before + 5 and time.monotonic() < deadline and not self.errors:
            time.sleep(0.01)
        return self.answers - before

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.conn.close()


def session(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT)
    sock.settimeout(NET_TIMEOUT)
    sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
    assert read_until_ready(sock)[-1][0] == b"Z"
    return sock


def test_bad_sessions_end_alone_while_another_client_carries_on(start_proxy):
    proxy = start_proxy()
    other = Bystander(proxy.dsn())
    try:
        before = other.answers
        # a 2 GB length field: the server refuses the message, the client hears why, the connection ends
        with session(proxy.port) as sock:
            sock.sendall(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT 1")
            messages = parse_messages(recv_until_closed(sock, 10))
        assert messages and messages[-1][0] == b"E", messages
        assert wire.decode_fields(messages[-1][1])["C"] == "08P01"
        # garbage bytes where a message should start
        with session(proxy.port) as sock:
            sock.sendall(b"\x00\x01\x02\x03 this is not the PostgreSQL protocol \xff\xfe" * 4)
            messages = parse_messages(recv_until_closed(sock, 10))
        assert messages and messages[-1][0] == b"E", messages
        # a truncated message, then the client vanishes
        with session(proxy.port) as sock:
            sock.sendall(b"Q" + struct.pack("!I", 100) + b"SELECT")
        # invalid UTF-8 and a statement no parser knows reach the server and analysis unharmed
        with session(proxy.port) as sock:
            sock.sendall(wire.message(b"Q", b"SELECT '\xff\xfe\xfa' AS broken, $$ (((  $$ ::text\0"))
            replies = read_until_ready(sock)
            assert replies[-1][0] == b"Z"
        assert other.answered_since(before) > 5
        assert not other.errors, other.errors
        assert proxy.app.proxy_counters()["connections_total"] >= 5
    finally:
        other.close()


def test_a_client_that_stops_reading_holds_only_bounded_buffers(pg, start_proxy):
    proxy = start_proxy()
    other = Bystander(proxy.dsn())
    try:
        sock = session(proxy.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        [[pid]] = raw_query(sock, "SELECT pg_backend_pid()")
        port = sock.getsockname()[1]
        # about 200 MB of result the client never reads
        sock.sendall(wire.message(b"Q", b"SELECT repeat('x', 1000) FROM generate_series(1, 200000)\0"))

        def state() -> tuple[int, bool]:
            """On the proxy's loop: the bytes waiting for this client, and whether pgloupe still reads
            from its server. The client is found by its address, never by the measurement itself, and
            it must be there: a missing client fails the test instead of measuring nothing."""
            found = [c for c in proxy.app.proxy.clients
                     if c.transport is not None and c.transport.get_extra_info("peername")[1] == port]
            assert len(found) == 1, f"the client that stopped reading is not among pgloupe's: {found}"
            (client,) = found
            assert client.upstream is not None and not client.upstream.closed, "its server connection is gone"
            return client.transport.get_write_buffer_size(), client.upstream.transport.is_reading()

        # Instead of a fixed pause: wait until the client's buffers are full and pgloupe has stopped
        # reading from the server (the rest of the result waits there). Never pausing fails here.
        wait_until(lambda: not proxy.background.call(state)[1], 30, "pgloupe to pause reading from the server")
        before = other.answers
        to_client, reading = proxy.background.call(state)
        assert not reading and 0 < to_client < 4 * 1024 * 1024, (to_client, reading)
        assert other.answered_since(before) > 5 and not other.errors
        # still paused and bounded while the other client went on
        to_client, reading = proxy.background.call(state)
        assert not reading and 0 < to_client < 4 * 1024 * 1024, (to_client, reading)
        sock.close()  # the server's work is cancelled with the connection
        assert other.answered_since(other.answers) > 5 and not other.errors
        with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as admin:
            wait_until(lambda: backend_activity(admin, int(pid)) is None, 30, "the server to end that session")
    finally:
        other.close()


def test_huge_statements_are_relayed_and_do_not_disturb_analysis(start_proxy):
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        one_mb = "SELECT length('" + "a" * (1 << 20) + "') AS one_mb"
        assert conn.execute(one_mb).fetchone() == (1 << 20,)
        twenty_mb = "SELECT length('" + "b" * (20 << 20) + "') AS twenty_mb"  # beyond max_analysed_message_size
        assert conn.execute(twenty_mb).fetchone() == (20 << 20,)
        assert conn.execute("SELECT 'after' AS after_them").fetchone() == ("after",)
    after = proxy.wait_for(lambda e: "after_them" in e.sql, what="the statement after them")[0]
    assert after.sqlstate is None and after.rows == 1
    sqls = [e.sql for e in proxy.events]
    assert any(s.endswith("AS one_mb") and len(s) > 1 << 20 for s in sqls)  # analysed in full
    assert any("larger than max_analysed_message_size" in s for s in sqls)  # relayed, not kept
    assert not any("b" * 1000 in s for s in sqls)
    assert proxy.app.pipeline.errors == 0
