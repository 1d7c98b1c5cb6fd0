"""Statement events through the real proxy: what the detectors will get to see, and what they never see."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg
import psycopg

CANARY = "canary-5f1e0c"


def _all_but_sql(event) -> str:
    fields = dataclasses.asdict(event)
    fields.pop("sql")
    return repr(fields) + repr(event)


def test_prepared_statement_events_carry_its_text_and_keyed_parameter_hashes(proxy):
    async def work():
        conn = await asyncpg.connect(proxy.dsn())
        try:
            await conn.execute("CREATE TEMP TABLE ev_contacts (id int PRIMARY KEY, team_id int, email text)")
            await conn.executemany("INSERT INTO ev_contacts VALUES ($1, $2, $3)",
                                   [(i, i % 3, f"{CANARY}-{i}@example.com") for i in range(1, 31)])
            stmt = await conn.prepare("SELECT email FROM ev_contacts WHERE id = $1 AND team_id = $2")
            for i in (1, 2, 1):
                await stmt.fetchrow(i, i % 3)
        finally:
            await conn.close()

    asyncio.run(work())
    lookups = proxy.settle(lambda e: e.sql.startswith("SELECT email FROM ev_contacts"), 3)
    assert len(lookups) == 3
    assert {e.protocol for e in lookups} == {"extended"}
    assert all(e.param_count == 2 and e.rows == 1 and e.sqlstate is None for e in lookups)
    # same values -> same hashes, different values -> different hashes
    assert lookups[0].param_hashes == lookups[2].param_hashes != lookups[1].param_hashes
    inserts = proxy.settle(lambda e: e.sql.startswith("INSERT INTO ev_contacts"), 30)
    assert len(inserts) == 30 and all(e.rows == 1 for e in inserts)
    # parameter values and result values are never kept
    for e in lookups + inserts:
        assert CANARY not in _all_but_sql(e)
        assert "example.com" not in _all_but_sql(e)


def test_child_parameters_are_traced_to_the_parent_result_across_drivers(proxy):
    """asyncpg sends and receives int4 in binary, psycopg in text: the hashes line up either way."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ev_leads; CREATE TABLE ev_leads (id int PRIMARY KEY, owner_id int)")
        conn.execute("INSERT INTO ev_leads SELECT g, 1000 + g FROM generate_series(1, 12) g")
        ids = [r[0] for r in conn.execute("SELECT id FROM ev_leads ORDER BY id LIMIT %s", (5,))]
        for lead_id in ids:
            conn.execute("SELECT owner_id FROM ev_leads WHERE id = %s", (lead_id,))

    async def work():
        conn = await asyncpg.connect(proxy.dsn())
        try:
            rows = await conn.fetch("SELECT id FROM ev_leads WHERE id > $1 ORDER BY id", 6)
            for r in rows:
                await conn.fetchval("SELECT owner_id FROM ev_leads WHERE id = $1", r["id"])
        finally:
            await conn.close()

    asyncio.run(work())
    for parent_sql, child_sql, n in [
        ("SELECT id FROM ev_leads ORDER BY id LIMIT", "SELECT owner_id FROM ev_leads WHERE id = %s", 5),
        ("SELECT id FROM ev_leads WHERE id > $1", "SELECT owner_id FROM ev_leads WHERE id = $1", 6),
    ]:
        (parent,) = proxy.wait_for(lambda e, p=parent_sql: e.sql.startswith(p))
        children = proxy.settle(
            lambda e, c=child_sql, conn=parent.conn_id: e.conn_id == conn and e.sql == c.replace("%s", "$1"), n)
        assert len(children) == n
        parent_values = {row[0] for row in parent.result_hashes}
        assert len(parent_values) == n
        assert {c.param_hashes[0] for c in children} == parent_values


def test_transaction_status_rows_errors_and_timing(proxy):
    with psycopg.connect(proxy.dsn(), application_name="billing-worker") as conn:  # not autocommit
        conn.execute("CREATE TEMP TABLE ev_tx (id int)")
        conn.execute("INSERT INTO ev_tx SELECT generate_series(1, 7)")
        conn.commit()
        conn.autocommit = True
        conn.execute("UPDATE ev_tx SET id = id + 1")
        conn.execute("SELECT pg_sleep(0.25)")
        try:
            conn.execute("SELECT * FROM ev_missing_table")
        except psycopg.errors.UndefinedTable:
            pass
    insert, = proxy.wait_for(lambda e: e.sql.startswith("INSERT INTO ev_tx"))
    assert insert.rows == 7 and insert.in_transaction and insert.tx_before == "T" and insert.tx_after == "T"
    assert insert.application_name == "billing-worker" and insert.user == "postgres" and insert.database == "postgres"
    assert insert.client_addr == "127.0.0.1"
    commit, = proxy.wait_for(lambda e: e.command == "COMMIT")
    assert commit.tx_before == "T" and commit.tx_after == "I"
    update, = proxy.wait_for(lambda e: e.sql.startswith("UPDATE ev_tx"))
    assert update.rows == 7 and not update.in_transaction and update.tx_before == update.tx_after == "I"
    sleep, = proxy.wait_for(lambda e: "pg_sleep" in e.sql)
    assert 0.25 <= sleep.duration < 5
    assert abs(sleep.started_at + sleep.duration - insert.started_at) < 60
    failed, = proxy.wait_for(lambda e: "ev_missing_table" in e.sql)
    assert failed.sqlstate == "42P01" and failed.rows is None


def test_response_bytes_and_result_row_bound(start_proxy):
    proxy = start_proxy(result_rows=4)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        rows = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g").fetchall()
    assert len(rows) == 1000
    big, = proxy.wait_for(lambda e: "generate_series(1, 1000)" in e.sql)
    assert big.rows == 1000
    assert big.response_bytes > 1000 * 100
    assert len(big.result_hashes) == 4


def test_each_connection_has_its_own_id(proxy):
    for _ in range(2):
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 'ev-conn-id'")
    events = proxy.settle(lambda e: "ev-conn-id" in e.sql, 2)
    assert len({e.conn_id for e in events}) == 2


def test_the_tracker_fills_every_event_field_by_name():
    # the tracker builds events positionally on the forwarding path: a field added out of order
    # would shift values silently
    from dataclasses import fields

    from proxy.events import ConnectionInfo, StatementEvent
    from proxy.protocol import wire
    from proxy.protocol.hashing import ValueHasher
    from proxy.protocol.tracker import SessionTracker

    tracker = SessionTracker(ConnectionInfo(3, "10.0.0.9", "alice", "crm", "web"), ValueHasher(b"k" * 32),
                             wall_offset=time.time() - time.monotonic())
    tracker.client_data(wire.message(b"Q", b"SELECT 1\0"), 10.0)
    events = tracker.server_data(
        wire.message(b"T", b"\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0")
        + wire.message(b"D", b"\0\x01\0\0\0\x011") + wire.message(b"C", b"SELECT 1\0")
        + wire.message(b"Z", b"I"), 10.25)
    (event,) = events
    assert [f.name for f in fields(StatementEvent)][-6:] == ["pipelined", "proxy_lag", "ended", "extra",
                                                              "array_hashes", "result_sources"]
    assert (event.conn_id, event.user, event.database, event.application_name, event.client_addr) == (
        3, "alice", "crm", "web", "10.0.0.9")
    assert (event.sql, event.protocol, event.statement_name, event.param_count, event.param_hashes) == (
        "SELECT 1", "simple", None, 0, ())
    assert len(event.result_hashes) == 1 and event.duration == 0.25 and event.command == "SELECT"
    assert (event.rows, event.sqlstate, event.tx_before, event.tx_after, event.in_transaction) == (
        1, None, "I", "I", False)
    assert event.pipelined is False and event.proxy_lag == 0.0 and event.ended == 10.25 and event.extra == {}
    assert event.array_hashes == () and event.result_sources == ((0, 0),)  # a computed column: no source
    assert event.response_bytes > 0 and event.started_at > 1e9
