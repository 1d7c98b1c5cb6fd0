"""The workers' capture on real traffic: the same events as the in-process tracker, and a lagging
analysis that drops shipments without losing the sessions (tests/test_capture.py has the sans-IO side)."""

from __future__ import annotations

import time


def _workload(dsn: str, tag: str) -> None:
    """Big results, COPY both ways, a pipeline, an error inside a transaction, prepared statements."""
    import asyncio

    import asyncpg
    import psycopg

    with psycopg.connect(dsn, autocommit=True, application_name=f"cap-{tag}") as conn:
        conn.execute(f"DROP TABLE IF EXISTS cap_{tag}; CREATE TABLE cap_{tag} (id int PRIMARY KEY, body text)")
        with conn.cursor().copy(f"COPY cap_{tag} FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, "x" * 100))
        assert len(conn.execute(f"SELECT * FROM cap_{tag}").fetchall()) == 2000
        with conn.cursor().copy(f"COPY cap_{tag} TO STDOUT") as copy:
            assert sum(1 for _ in copy.rows()) == 2000
        with conn.pipeline():
            for i in range(5):
                conn.execute(f"SELECT body FROM cap_{tag} WHERE id = %s", (i,))
        with conn.transaction():
            try:
                with conn.transaction():
                    conn.execute("SELECT 1/0")
            except psycopg.errors.DivisionByZero:
                pass
            conn.execute(f"UPDATE cap_{tag} SET body = 'y' WHERE id = %s", (1,))

    async def prepared():
        conn = await asyncpg.connect(dsn)
        try:
            stmt = await conn.prepare(f"SELECT body FROM cap_{tag} WHERE id = $1")
            for i in range(10):
                await stmt.fetchval(i)
            await conn.execute("DEALLOCATE ALL")
        finally:
            await conn.close()

    asyncio.run(prepared())


def _facts(events, tag: str) -> list[tuple]:
    return [(e.sql, e.protocol, e.command, e.rows, e.param_count, e.sqlstate, e.tx_before, e.tx_after,
             len(e.result_hashes), e.application_name)
            for e in events if f"cap_{tag}" in e.sql or e.sqlstate]


def test_workers_capture_gives_the_events_of_the_in_process_tracker(pg, start_proxy):
    results = {}
    for workers in (0, 1):
        proxy = start_proxy(workers=workers, result_rows=4)
        tag = f"w{workers}"
        _workload(proxy.dsn(), tag)
        proxy.wait_for(lambda e: e.sql == "DEALLOCATE ALL", what="the workload's last statement")
        results[workers] = [tuple(str(v).replace("w1", "w0") for v in f) for f in _facts(proxy.events, tag)]
    assert len(results[0]) > 20
    assert results[1] == results[0]
    big = [f for f in results[1] if f[0] == "SELECT * FROM cap_w0"]
    assert big and big[0][3] == "2000" and big[0][8] == "4"  # every row counted, four hashed


def test_a_lagging_analysis_drops_counted_and_sessions_pick_up_again(pg, start_proxy):
    import asyncio

    import asyncpg

    proxy = start_proxy(workers=1)
    app = proxy.app

    def limit(n: int) -> None:
        proxy.background.call(lambda: setattr(app.queue, "capture_limit", n))

    async def session():
        conn = await asyncpg.connect(proxy.dsn())
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS cap_lag (id int PRIMARY KEY, owner int)")
            await conn.execute("INSERT INTO cap_lag SELECT g, g FROM generate_series(1, 40) g ON CONFLICT DO NOTHING")
            lookup = await conn.prepare("SELECT owner FROM cap_lag WHERE id = $1")
            await asyncio.sleep(0.2)
            limit(0)  # from here every shipment is "too much" for the analysis
            for i in range(1, 21):
                assert await lookup.fetchval(i) == i
            other = await conn.prepare("SELECT owner + 1 FROM cap_lag WHERE id = $1")  # prepared inside the gap
            deadline = time.monotonic() + 10
            while app.queue_counters()["dropped"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                await asyncio.to_thread(proxy.background.call, app.refresh_workers)
            limit(64 << 20)
            await asyncio.sleep(0.3)  # the worker hears "resync" and waits for a clean point
            async with conn.transaction():  # one unit of work, whatever made it through before
                ids = [r["id"] for r in await conn.fetch("SELECT id FROM cap_lag ORDER BY id LIMIT 20")]
                for i in ids:  # an N+1 over a parent's result: the analysis must see it whole
                    assert await lookup.fetchval(i) == i
            assert await other.fetchval(1) == 2
        finally:
            await conn.close()

    asyncio.run(session())
    assert app.queue_counters()["dropped"] > 0
    proxy.wait_for(lambda e: e.sql == "SELECT owner + 1 FROM cap_lag WHERE id = $1", what="the statement prepared in the gap")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not [f for f in app.all_findings() if f["kind"] == "n_plus_one_select"]:
        time.sleep(0.1)
    found = [f for f in app.all_findings() if f["kind"] == "n_plus_one_select"]
    assert found and found[0]["statements"] >= 20


def test_a_shipment_counts_as_queued_until_it_is_analysed(pg, start_proxy):
    """/healthz's events_queued is what callers wait on (the benchmark, deployments' drain checks):
    a batch taken off the queue but still waiting for the analysis thread must count."""
    import json
    import threading
    import urllib.request

    import psycopg

    proxy = start_proxy(workers=1)
    app = proxy.app

    def health() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/healthz", timeout=10) as resp:
            return json.load(resp)

    before = health()["statements"]
    release = threading.Event()
    app.analysis.executor.submit(release.wait, 30)  # the analysis thread is busy elsewhere
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(20):
                conn.execute("SELECT %s::int", (i,))
        time.sleep(0.3)  # well past a batch interval: the consumer has taken the shipment off the queue
        h = health()
        assert h["events_queued"] > 0 and h["statements"] == before, h
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while (h := health())["events_queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h["events_queued"] == 0 and h["statements"] - before >= 20, h
