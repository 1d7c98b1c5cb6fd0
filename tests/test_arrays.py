"""= ANY($1) arrays, the idiomatic IN list of psycopg 3, asyncpg and node-postgres: their elements are
hashed one by one, so a second query whose array is the first one's ids is a join candidate."""

from __future__ import annotations

import asyncio
import struct

import asyncpg
import psycopg
import pytest

from proxy.protocol.hashing import array_elements


@pytest.mark.parametrize("value, oid, fmt, elements", [
    (b"{1,2,3}", 0, 0, [b"1", b"2", b"3"]),
    (b'{"a b",NULL,c,"x\\"y"}', 1009, 0, [b"a b", b"c", b'x"y']),
    (b"{}", 1007, 0, []),
    (b"{{1,2},{3,4}}", 1007, 0, None),  # two dimensions: not a list of keys
    (b"not an array", 0, 0, None),
    (struct.pack("!iiIii", 1, 1, 23, 3, 1) + struct.pack("!ii", 4, 5) + struct.pack("!i", -1)
     + struct.pack("!ii", 4, 7), 1007, 1, [struct.pack("!i", 5), struct.pack("!i", 7)]),
    (struct.pack("!iiI", 2, 0, 23), 1007, 1, None),
])
def test_array_elements(value, oid, fmt, elements):
    got = array_elements(value, oid, fmt)
    assert (None if got is None else [v for v, _, _ in got]) == elements


def _setup(pg) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS arr_users, arr_activities")
        conn.execute("CREATE TABLE arr_users (id int PRIMARY KEY, team_id int, name text)")
        conn.execute("CREATE TABLE arr_activities (id serial PRIMARY KEY, team_id int, user_id int)")
        conn.execute("INSERT INTO arr_users SELECT g, 1, 'u' || g FROM generate_series(1, 30) g")
        conn.execute("INSERT INTO arr_activities (team_id, user_id) SELECT 1, 1 + g % 12 FROM generate_series(1, 300) g")


TOP = ("SELECT user_id, count(*) AS n FROM arr_activities WHERE team_id = {p} GROUP BY user_id "
       "ORDER BY n DESC LIMIT 10")


def _join_candidates(proxy, application: str) -> list[dict]:
    proxy.wait_for(lambda e: e.application_name == application and "arr_users" in e.sql)
    proxy.drain()
    return [f for f in proxy.app.all_findings() if f["kind"] == "join_candidate" and application in f["applications"]]


def test_a_second_query_on_the_first_ones_ids_as_an_array_is_a_join_candidate(pg, proxy):
    _setup(pg)
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name="arr-psycopg") as conn:
        ids = [r[0] for r in conn.execute(TOP.format(p="%s"), (1,))]
        conn.execute("SELECT id, name FROM arr_users WHERE team_id = %s AND id = ANY(%s)", (1, ids)).fetchall()

    async def with_asyncpg():
        conn = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "arr-asyncpg"})
        try:
            ids = [r["user_id"] for r in await conn.fetch(TOP.format(p="$1"), 1)]
            await conn.fetch("SELECT id, name FROM arr_users WHERE team_id = $1 AND id = ANY($2::int[])", 1, ids)
        finally:
            await conn.close()

    asyncio.run(with_asyncpg())
    for application in ("arr-psycopg", "arr-asyncpg"):
        (finding,) = _join_candidates(proxy, application)
        assert finding["tables"] == ["arr_activities", "arr_users"]
    # the same statement on ids that did not come from the first query is not one
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name="arr-unrelated") as conn:
        conn.execute(TOP.format(p="%s"), (1,)).fetchall()
        conn.execute("SELECT id, name FROM arr_users WHERE team_id = %s AND id = ANY(%s)", (1, [21, 22, 23])).fetchall()
    assert _join_candidates(proxy, "arr-unrelated") == []
