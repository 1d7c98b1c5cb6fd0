"""A saturated or stalled pgloupe must not make the server's statements look slow."""

from __future__ import annotations

import os
import socket
import threading
import time

import psycopg

from .conftest import statement_active, wait_until

SLOW_MS = 250  # the slow_query threshold
STALL_S = 0.6  # the stall of pgloupe's loop (the input): beyond the threshold, so it would be blamed if counted
LOCK_KEY = 7315


def answer_waiting(proxy) -> bool:
    """The server's whole answer, up to its ReadyForQuery, waits unread in pgloupe's socket from the
    server. Peeked at from this thread while pgloupe's loop is stalled (nothing reads or changes it meanwhile)."""
    (client,) = proxy.app.proxy.clients
    fd = client.upstream.transport.get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fd)) as sock:
        try:
            data = sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
    return data.endswith(b"Z\x00\x00\x00\x05I")


def test_a_stalled_forwarding_loop_is_not_blamed_on_the_server(pg, start_proxy):
    proxy = start_proxy(sections={"detectors": {"slow_query_ms": [SLOW_MS, 1000, 5000]}})
    began, answered = threading.Event(), threading.Event()

    def stall() -> None:  # on the proxy's loop: nothing else runs there until it returns
        began.set()
        time.sleep(STALL_S)  # the input: a stall this long ...
        answered.wait(10)  # ... and at least until the server's answer is waiting in the socket

    with psycopg.connect(pg.dsn(), autocommit=True) as admin, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # The statement waits on a lock the test holds: it is on the server before the stall starts and
        # answers only once the stall is on, whatever the machine's load (no race on a 50 ms sleep).
        admin.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        done = threading.Event()

        def query():
            conn.execute(f"SELECT pg_advisory_lock({LOCK_KEY}) AS stalled")
            done.set()

        worker = threading.Thread(target=query)
        worker.start()
        wait_until(lambda: statement_active(admin, pid, "stalled"), 10, "the server to run the statement")
        proxy.background.loop.call_soon_threadsafe(stall)
        assert began.wait(10), "the proxy's loop never ran the stall"
        admin.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))  # the server answers now, mid-stall
        wait_until(lambda: answer_waiting(proxy), 10, "the server's answer to wait in pgloupe's socket")
        answered.set()
        worker.join(10)
        assert done.is_set()
        conn.execute("SELECT pg_advisory_unlock_all()")
        conn.execute("SELECT pg_sleep(0.5) AS really_slow")  # the server's own time still counts
    stalled = proxy.wait_for(lambda e: "stalled" in e.sql, what="the stalled statement")[0]
    slow = proxy.wait_for(lambda e: "really_slow" in e.sql, what="the slow statement")[0]
    # The stall is the proxy's (it began within a lag tick of 25 ms after the statement was on the server,
    # and lasted STALL_S or more), and what is left is the server's own time, below the threshold.
    assert stalled.proxy_lag >= STALL_S - 0.1, stalled.proxy_lag
    assert stalled.duration < SLOW_MS / 1000, (stalled.duration, stalled.proxy_lag)
    # Most of the server's 500 ms stays its own; a loaded machine's loop may be a few ms late at the moment
    # the answer comes in, and that much is rightly the proxy's (a discount that took the server's time
    # away would leave the statement below the threshold).
    assert slow.duration >= 0.4, (slow.duration, slow.proxy_lag)

    def slow_findings():
        return {f["example"] for f in proxy.app.all_findings() if f["kind"] == "slow_query"}

    wait_until(lambda: any("really_slow" in e for e in slow_findings()), 10, "the slow_query finding")
    examples = slow_findings()
    assert any("really_slow" in e for e in examples) and not any("stalled" in e for e in examples), examples
