"""A saturated or stalled pgloupe must not make the server's statements look slow."""

from __future__ import annotations

import threading
import time

import psycopg


def test_a_stalled_forwarding_loop_is_not_blamed_on_the_server(pg, start_proxy):
    proxy = start_proxy(sections={"detectors": {"slow_query_ms": [150, 1000, 5000]}})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        done = threading.Event()

        def query():
            conn.execute("SELECT pg_sleep(0.05) AS stalled")
            done.set()

        worker = threading.Thread(target=query)
        worker.start()
        time.sleep(0.015)  # the query is on its way to the server: now the proxy's loop stops for 400 ms
        proxy.background.loop.call_soon_threadsafe(time.sleep, 0.4)
        worker.join(10)
        assert done.is_set()
        conn.execute("SELECT pg_sleep(0.3) AS really_slow")  # the server's own time still counts
    stalled = proxy.wait_for(lambda e: "stalled" in e.sql, what="the stalled statement")[0]
    slow = proxy.wait_for(lambda e: "really_slow" in e.sql, what="the slow statement")[0]
    assert stalled.proxy_lag >= 0.2, stalled.proxy_lag
    assert stalled.duration < 0.15, (stalled.duration, stalled.proxy_lag)
    assert slow.duration >= 0.29 and slow.proxy_lag < 0.05

    def slow_findings():
        return {f["example"] for f in proxy.app.all_findings() if f["kind"] == "slow_query"}

    deadline = time.monotonic() + 10
    while not slow_findings() and time.monotonic() < deadline:
        time.sleep(0.05)
    examples = slow_findings()
    assert any("really_slow" in e for e in examples) and not any("stalled" in e for e in examples), examples
