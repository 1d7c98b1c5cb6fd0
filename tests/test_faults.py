"""Faults around pgloupe: the server restarts or hangs, a webhook hangs, the analysis queue overflows, a
scrape lands in a burst. Clients get ErrorResponses they can read, service resumes, nothing leaks, and
forwarding speed is measured against its own baseline rather than assumed."""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from proxy.embedded import EmbeddedPostgres


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_server_restart_mid_session(start_proxy):
    server = EmbeddedPostgres().start()
    try:
        proxy = start_proxy(upstream=server.dsn())
        sessions = [psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) for _ in range(3)]
        for conn in sessions:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        server._run("pg_ctl", "-D", str(server.datadir), "-m", "fast", "-w", "stop")
        for conn in sessions:  # each hears that its server went away
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError) as down:  # while it is down: pgloupe says so
            psycopg.connect(proxy.dsn(), connect_timeout=5)
        assert "pgloupe: cannot connect to upstream server" in str(down.value)
        server._run("pg_ctl", "-D", str(server.datadir), "-l", str(server.base / "postgres.log"), "-w", "start")
        with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as again:
            assert again.execute("SELECT 2").fetchone() == (2,)
        for conn in sessions:
            conn.close()
        _wait(lambda: proxy.app.proxy_counters()["client_connections"] == 0, 5, "sessions to close")
        counters = proxy.app.proxy_counters()
        assert counters["upstream_connections"] == 0 and counters["upstream_errors"] >= 1
    finally:
        server.stop()


@pytest.fixture
def silent_server():
    """A TCP listener that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for sock in accepted:
        sock.close()
    listener.close()


def test_a_server_that_never_answers(start_proxy, silent_server):
    # the TLS negotiation with it times out after connect_timeout ...
    proxy = start_proxy(upstream=f"postgresql://postgres@127.0.0.1:{silent_server}/postgres",
                        upstream_sslmode="require", connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn(), connect_timeout=10)
    assert "timed out" in str(refused.value) and time.monotonic() - start < 5
    # ... and without TLS, a startup that never completes ends after startup_timeout
    proxy = start_proxy(upstream=f"postgresql://postgres@127.0.0.1:{silent_server}/postgres",
                        upstream_sslmode="disable", startup_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn(), connect_timeout=10)
    assert "did not complete in time" in str(refused.value) and time.monotonic() - start < 5
    _wait(lambda: proxy.app.proxy_counters()["client_connections"] == 0, 5, "the session to close")
    assert proxy.app.proxy_counters()["upstream_connections"] == 0


def _latencies(dsn: str, n: int) -> list[float]:
    out = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        for i in range(n):
            start = time.perf_counter()
            # a new slow statement each time: every one is a finding, an alert and an event
            conn.execute(f"SELECT pg_sleep(0.0005), {i}").fetchone()
            out.append(time.perf_counter() - start)
    return out


def test_a_hung_webhook_a_full_queue_and_scrapes_do_not_slow_forwarding(start_proxy):
    release = threading.Event()
    posted = []

    class Hung(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            posted.append(self.path)
            release.wait(30)

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hung)
    hook.daemon_threads = True
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        proxy = start_proxy(queue_size=5, sections={
            "detectors": {"slow_query_ms": [0.1, 1000, 2000]},
            "alerts": {"webhooks": [f"http://127.0.0.1:{hook.server_address[1]}/"], "min_severity": "info",
                       "cooldown_s": 0, "timeout_s": 30, "queue_size": 5}})
        baseline = _latencies(proxy.dsn(), 300)
        stop = threading.Event()
        scrapes = []

        def scrape():
            while not stop.is_set():
                with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10) as r:
                    r.read()
                scrapes.append(1)

        scraper = threading.Thread(target=scrape)
        scraper.start()
        try:
            faulted = _latencies(proxy.dsn(), 300)
        finally:
            stop.set()
            scraper.join(15)
        assert scrapes and max(faulted) < 2.0
        # measured, with a wide margin for a shared 2-core machine: no queueing behind the faults
        assert statistics.median(faulted) < 5 * statistics.median(baseline) + 0.02, (
            statistics.median(baseline), statistics.median(faulted))
        # the faults were real: the webhook took an alert and hung on it, the tiny queue overflowed
        assert posted and proxy.app.alerts.sent == 0
        assert proxy.app.queue.dropped > 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).read().decode()
        assert "pgloupe_events_dropped_total 0.0" not in metrics
    finally:
        release.set()
        hook.shutdown()
        hook.server_close()
