"""Real drivers through pgloupe: every protocol feature a client uses must work exactly as direct.

Nothing is mocked. Each test drives asyncpg or psycopg 3 through the proxy and, where the result is
data, does the same thing directly against the server and compares what the user would see: rows,
row counts, errors' SQLSTATE. Where the proxy's own output matters (one event per statement, the
statement's text, application_name), the events are checked too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid

import asyncpg
import psycopg
import pytest
from psycopg import errors as pg_errors

BIG_QUERY = "select g, md5(g::text) from generate_series(1, 150000) g"


# ------------------------------------------------------------------------------------- helpers


def uniq(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def direct(pg, *statements: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def digest(rows) -> tuple[int, str]:
    """Row count and a hash over every value of every row, in order."""
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update(repr(tuple(row)).encode())
        h.update(b"\n")
        n += 1
    return n, h.hexdigest()


def run(coro):
    return asyncio.run(coro)


def events_for(proxy, sql: str, **attrs):
    def pred(e):
        return e.sql == sql and all(getattr(e, k) == v for k, v in attrs.items())

    return pred


# ------------------------------------------------------------------------------ simple protocol


def test_simple_query_several_statements_in_one_message(proxy, pg):
    query = "select 1 as a, 'one' as b; select 'x;y' as c, 2::int8 as d; select g from generate_series(1, 3) g"

    def fetch(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(query)  # no parameters: psycopg sends one simple Query message
            results = [(tuple(c.name for c in cur.description), cur.fetchall())]
            while cur.nextset():
                results.append((tuple(c.name for c in cur.description), cur.fetchall()))
            return results

    via_proxy = fetch(proxy.dsn())
    assert via_proxy == fetch(pg.dsn())
    assert via_proxy == [
        (("a", "b"), [(1, "one")]),
        (("c", "d"), [("x;y", 2)]),
        (("g",), [(1,), (2,), (3,)]),
    ]

    expected = ["select 1 as a, 'one' as b", "select 'x;y' as c, 2::int8 as d",
                "select g from generate_series(1, 3) g"]
    got = proxy.settle(lambda e: e.sql in expected, len(expected))
    assert [e.sql for e in got] == expected  # one event per statement, in order
    assert all(e.protocol == "simple" and e.command == "SELECT" and e.sqlstate is None for e in got)
    assert [e.rows for e in got] == [1, 1, 3]
    assert len({e.conn_id for e in got}) == 1


def test_simple_query_client_cursor_with_parameters(proxy, pg):
    query = "select %s::int as n, %s::text as s; select %s::text || ';' as t"
    params = (41, "it's; a string", "semi")

    def fetch(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)  # binds client side: simple protocol, literals in the SQL
            cur.execute(query, params)
            first = cur.fetchall()
            assert cur.nextset()
            return first, cur.fetchall()

    via_proxy = fetch(proxy.dsn())
    assert via_proxy == fetch(pg.dsn())
    assert via_proxy == ([(41, "it's; a string")], [("semi;",)])

    expected = ["select 41::int as n, 'it''s; a string'::text as s", "select 'semi'::text || ';' as t"]
    got = proxy.settle(lambda e: e.sql in expected, 2)
    assert [e.sql for e in got] == expected
    assert all(e.protocol == "simple" and e.rows == 1 for e in got)


def test_simple_query_error_stops_the_rest_of_the_message(proxy, pg):
    t = uniq("simple_err")
    direct(pg, f"create table {t} (id int)")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(pg_errors.DivisionByZero) as exc:
            conn.execute(f"insert into {t} values (1); select 1/0; insert into {t} values (3)")
        assert exc.value.sqlstate == "22012"
        assert conn.execute(f"select coalesce(array_agg(id order by id), '{{}}') from {t}").fetchone()[0] == []
        assert conn.execute("select 'still alive'").fetchone() == ("still alive",)
    got = proxy.wait_for(lambda e: e.sql == "select 'still alive'")
    err = [e for e in proxy.events if e.sqlstate is not None]
    assert [(e.sql, e.sqlstate) for e in err] == [("select 1/0", "22012")]
    assert not [e for e in proxy.events if e.sql == f"insert into {t} values (3)"]
    assert got[0].sqlstate is None
    direct(pg, f"drop table {t}")


# ---------------------------------------------------------------------------- extended protocol


def test_asyncpg_named_prepared_statement_reused(proxy, pg):
    query = "select $1::int * 2 as doubled, md5($1::text) as h, $2::text || '!' as s"

    async def go(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            stmt = await conn.prepare(query)
            rows = [tuple(await stmt.fetchrow(i, f"v{i}")) for i in range(50)]
            attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
            params = [p.name for p in stmt.get_parameters()]
            return rows, attrs, params, stmt.get_name()
        finally:
            await conn.close()

    rows, attrs, params, name = run(go(proxy.dsn()))
    d_rows, d_attrs, d_params, _ = run(go(pg.dsn()))
    assert (rows, attrs, params) == (d_rows, d_attrs, d_params)
    assert rows[7] == (14, hashlib.md5(b"7").hexdigest(), "v7!")
    assert attrs == [("doubled", "int4"), ("h", "text"), ("s", "text")]
    assert params == ["int4", "text"]

    assert name  # a named statement, parsed once and executed 50 times
    got = proxy.settle(events_for(proxy, query), 50)
    assert len(got) == 50
    assert all(e.protocol == "extended" and e.statement_name == name and e.rows == 1 for e in got)
    assert all(e.param_count == 2 for e in got)
    assert len({e.param_hashes for e in got}) == 50  # each execution's own parameters


def test_psycopg_prepared_statement(proxy, pg):
    query = "select %s::int + 1 as n, %s::text as s"

    def go(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = [conn.execute(query, (i, f"s{i}"), prepare=True).fetchone() for i in range(30)]
            prepared = conn.execute(
                "select name, statement from pg_prepared_statements where statement like 'select $1::int%'"
            ).fetchall()
            return rows, prepared

    rows, prepared = go(proxy.dsn())
    d_rows, _ = go(pg.dsn())
    assert rows == d_rows == [(i + 1, f"s{i}") for i in range(30)]
    assert len(prepared) == 1  # prepared once on the server, executed 30 times
    name, server_sql = prepared[0]
    assert server_sql == "select $1::int + 1 as n, $2::text as s"

    got = proxy.settle(events_for(proxy, server_sql), 30)
    assert len(got) == 30
    assert {e.statement_name for e in got} == {name}
    assert all(e.protocol == "extended" and e.param_count == 2 for e in got)


def test_unnamed_statements(proxy, pg):
    query = "select %s::int * 3 as n"

    def go(dsn):
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            rows = [conn.execute(query, (i,)).fetchone()[0] for i in range(20)]
            count = conn.execute("select count(*) from pg_prepared_statements").fetchone()[0]
            return rows, count

    assert go(proxy.dsn()) == go(pg.dsn()) == ([i * 3 for i in range(20)], 0)

    async def go_asyncpg(dsn):
        conn = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            return [await conn.fetchval("select $1::text || 'x'", str(i)) for i in range(10)]
        finally:
            await conn.close()

    assert run(go_asyncpg(proxy.dsn())) == run(go_asyncpg(pg.dsn())) == [f"{i}x" for i in range(10)]

    got = proxy.settle(events_for(proxy, "select $1::int * 3 as n"), 20)
    assert len(got) == 20
    assert all(e.statement_name == "" and e.protocol == "extended" for e in got)
    got = proxy.settle(events_for(proxy, "select $1::text || 'x'"), 10)
    assert len(got) == 10
    assert all(e.protocol == "extended" and e.rows == 1 for e in got)


def test_portals_with_row_limit_asyncpg_cursor(proxy, pg):
    query = "select g, md5(g::text) from generate_series(1, $1::int) g"

    async def go(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                # prefetch=7: Execute with max_rows 7, answered by PortalSuspended until the end.
                iterated = [tuple(r) async for r in conn.cursor(query, 1000, prefetch=7)]
                cur = await conn.cursor(query, 100)
                first = [tuple(r) for r in await cur.fetch(10)]
                moved = await cur.forward(5)
                one = tuple(await cur.fetchrow())
                rest = [tuple(r) for r in await cur.fetch(1000)]
            after = await conn.fetchval("select 'after cursors'")
            return iterated, first, moved, one, rest, after
        finally:
            await conn.close()

    via_proxy = run(go(proxy.dsn()))
    assert via_proxy == run(go(pg.dsn()))
    iterated, first, moved, one, rest, after = via_proxy
    assert iterated == [(g, hashlib.md5(str(g).encode()).hexdigest()) for g in range(1, 1001)]
    assert [r[0] for r in first] == list(range(1, 11))
    assert moved == 5
    assert one[0] == 16
    assert [r[0] for r in rest] == list(range(17, 101))
    assert after == "after cursors"

    # 1000 rows in Executes of at most 7: 142 suspended portions, then the last 6 rows.
    got = proxy.settle(lambda e: e.sql == query and e.rows == 7, 142)
    assert len(got) >= 142
    assert all(e.protocol == "extended" and e.sqlstate is None for e in got)


def test_describe_statement_and_portal(proxy, pg):
    t = uniq("describe")
    direct(pg, f"create table {t} (id bigint primary key, name text, price numeric(10, 2), tags text[])")

    async def go(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            sel = await conn.prepare(f"select id, name, price, tags from {t} where id > $1 and name <> $2")
            ins = await conn.prepare(f"insert into {t} (id, name) values ($1, $2)")  # Describe -> NoData
            return (
                [(a.name, a.type.name) for a in sel.get_attributes()],
                [p.name for p in sel.get_parameters()],
                [(a.name, a.type.name) for a in ins.get_attributes()],
                [p.name for p in ins.get_parameters()],
            )
        finally:
            await conn.close()

    via_proxy = run(go(proxy.dsn()))
    assert via_proxy == run(go(pg.dsn()))
    assert via_proxy == (
        [("id", "int8"), ("name", "text"), ("price", "numeric"), ("tags", "text[]")],
        ["int8", "text"],
        [],
        ["int8", "text"],
    )

    def describe_portal(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(f"select id, name, price, tags from {t} where id > %s", (0,))
            return [(c.name, c.type_code) for c in cur.description], cur.fetchall()

    assert describe_portal(proxy.dsn()) == describe_portal(pg.dsn())
    direct(pg, f"drop table {t}")


def test_close_statements_asyncpg_cache_eviction(proxy, pg):
    queries = [f"select $1::int + {k} as v{k}" for k in range(20)]

    async def go(dsn):
        conn = await asyncpg.connect(dsn, statement_cache_size=2)
        try:
            out = []
            for _round in range(2):
                for k, q in enumerate(queries):
                    out.append(await conn.fetchval(q, k * 10))
            left = await conn.fetchval("select count(*) from pg_prepared_statements")
            return out, left
        finally:
            await conn.close()

    out, left = run(go(proxy.dsn()))
    d_out, d_left = run(go(pg.dsn()))
    assert out == d_out == [k * 10 + k for k in range(20)] * 2
    # Evicted statements were closed (protocol Close) on the server: only the cache's few remain.
    assert left == d_left
    assert left <= 3, left

    got = proxy.settle(lambda e: e.sql in queries, 40)
    assert len(got) == 40
    assert [e.sql for e in got] == queries * 2  # the right text for each, while evicted ones are closed


def test_close_statements_psycopg_deallocation(proxy, pg):
    def go(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.prepared_max = 3
            out = [conn.execute(f"select %s::int * {k}", (k,), prepare=True).fetchone()[0] for k in range(25)]
            names = conn.execute("select count(*) from pg_prepared_statements").fetchone()[0]
            out.append(conn.execute("select %s::text", ("after",), prepare=True).fetchone()[0])
            return out, names

    out, names = go(proxy.dsn())
    assert (out, names) == go(pg.dsn())
    assert out == [k * k for k in range(25)] + ["after"]
    assert 0 < names <= 3, names  # psycopg closed the statements it evicted

    got = proxy.settle(lambda e: e.sql.startswith("select $1::int * "), 25)
    assert [e.sql for e in got] == [f"select $1::int * {k}" for k in range(25)]
    assert all(e.statement_name for e in got)


@pytest.mark.timeout(60)
def test_flush_without_sync(proxy, pg):
    """psycopg fetching inside a pipeline sends Flush, not Sync; asyncpg's Parse/Describe does too.

    If the proxy held back the Flush or the server's answer to it, these would hang.
    """
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            cur = conn.execute("select %s::int + 1 as flushed", (1,))
            assert cur.fetchone() == (2,)  # answered before any Sync
            # The proxy saw the statement complete even though no Sync/ReadyForQuery came yet.
            ev = proxy.wait_for(lambda e: e.sql == "select $1::int + 1 as flushed")
            assert ev[0].rows == 1
            cur2 = conn.execute("select %s::text as second", ("b",))
            assert cur2.fetchone() == ("b",)
        assert conn.execute("select 'synced'").fetchone() == ("synced",)

    async def go(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            # Parse + Describe + Flush: the error comes back without a Sync; asyncpg then syncs.
            with pytest.raises(asyncpg.PostgresSyntaxError) as exc:
                await conn.prepare("selec 1")
            assert exc.value.sqlstate == "42601"
            with pytest.raises(asyncpg.UndefinedTableError) as exc2:
                await conn.fetch("select * from no_such_table_pgloupe")
            assert exc2.value.sqlstate == "42P01"
            return await conn.fetchval("select $1::int * 7", 6)
        finally:
            await conn.close()

    assert run(go(proxy.dsn())) == run(go(pg.dsn())) == 42


# --------------------------------------------------------------------------------- pipelining


def test_psycopg_pipeline(proxy, pg):
    t_proxy, t_direct = uniq("pipe"), uniq("pipe")
    direct(pg, *(f"create table {t} (id int primary key, v text)" for t in (t_proxy, t_direct)))

    def go(dsn, t):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.pipeline() as p:
                c1 = conn.cursor()
                c1.executemany(f"insert into {t} (id, v) values (%s, %s)", [(i, f"v{i}") for i in range(200)])
                c2 = conn.execute(f"update {t} set v = v || '!' where mod(id, 3) = 0")
                c3 = conn.execute(f"delete from {t} where mod(id, 10) = %s returning id", (0,))
                c4 = conn.execute(f"select id, v from {t} order by id")
                c5 = conn.execute("select %s::int + %s::int", (40, 2))
                p.sync()
                return c1.rowcount, c2.rowcount, c3.fetchall(), c4.fetchall(), c5.fetchone()

    via_proxy = go(proxy.dsn(), t_proxy)
    assert via_proxy == go(pg.dsn(), t_direct)
    inserted, updated, deleted, rows, answer = via_proxy
    assert (inserted, updated, len(deleted), len(rows), answer) == (200, 67, 20, 180, (42,))

    insert_sql = f"insert into {t_proxy} (id, v) values ($1, $2)"
    got = proxy.settle(events_for(proxy, insert_sql), 200)
    assert len(got) == 200
    assert all(e.command == "INSERT" and e.rows == 1 for e in got)
    direct(pg, f"drop table {t_proxy}", f"drop table {t_direct}")


def test_asyncpg_executemany(proxy, pg):
    t_proxy, t_direct = uniq("many"), uniq("many")
    direct(pg, *(f"create table {t} (id int primary key, v text, n numeric)" for t in (t_proxy, t_direct)))
    rows = [(i, f"value {i}", i / 7 if i % 5 else None) for i in range(1000)]

    async def go(dsn, t):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(f"insert into {t} (id, v, n) values ($1, $2, $3)", rows)
            await conn.executemany(f"update {t} set v = upper(v) where id = $1", [(i,) for i in range(0, 1000, 4)])
            return [tuple(r) for r in await conn.fetch(f"select id, v, n from {t} order by id")]
        finally:
            await conn.close()

    via_proxy = run(go(proxy.dsn(), t_proxy))
    assert via_proxy == run(go(pg.dsn(), t_direct))
    assert len(via_proxy) == 1000
    assert via_proxy[4][1] == "VALUE 4" and via_proxy[5][1] == "value 5"

    insert_sql = f"insert into {t_proxy} (id, v, n) values ($1, $2, $3)"
    got = proxy.settle(events_for(proxy, insert_sql), 1000)
    assert len(got) == 1000
    assert all(e.command == "INSERT" and e.rows == 1 and e.sqlstate is None for e in got)
    assert len({e.param_hashes for e in got}) == 1000
    direct(pg, f"drop table {t_proxy}", f"drop table {t_direct}")


# -------------------------------------------------------------------- errors inside a pipeline


def test_psycopg_pipeline_error_in_the_middle(proxy, pg):
    t_proxy, t_direct = uniq("pipe_err"), uniq("pipe_err")
    direct(pg, *(f"create table {t} (id int)" for t in (t_proxy, t_direct)))

    def go(dsn, t):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(pg_errors.DivisionByZero) as exc:
                with conn.pipeline():
                    conn.execute(f"insert into {t} values (%s)", (1,))
                    # random() keeps the planner from folding the division: it fails in Execute.
                    conn.execute("select 10 / (random() * %s)::int", (0,))
                    conn.execute(f"insert into {t} values (%s)", (3,))
            sqlstate = exc.value.sqlstate
            ok = conn.execute("select %s::text", ("next query works",)).fetchone()[0]
            again = conn.execute(f"insert into {t} values (4) returning id").fetchone()[0]
            return sqlstate, ok, again, conn.execute(f"select id from {t} order by id").fetchall()

    via_proxy = go(proxy.dsn(), t_proxy)
    assert via_proxy == go(pg.dsn(), t_direct)
    sqlstate, ok, again, table = via_proxy
    assert sqlstate == "22012"
    assert ok == "next query works" and again == 4
    assert (3,) not in table  # the statement after the error never ran

    proxy.wait_for(lambda e: e.sql == f"insert into {t_proxy} values (4) returning id")
    errors = [e for e in proxy.events if e.sqlstate is not None]
    assert [(e.sql, e.sqlstate) for e in errors] == [("select 10 / (random() * $1)::int", "22012")]
    assert not [e for e in proxy.events if e.sql == f"insert into {t_proxy} values ($1)" and e.tx_before == "E"]
    inserts = [e for e in proxy.events if e.sql == f"insert into {t_proxy} values ($1)"]
    assert len(inserts) == 1 and inserts[0].sqlstate is None  # only the first insert was executed
    direct(pg, f"drop table {t_proxy}", f"drop table {t_direct}")


def test_extended_protocol_errors_before_execute_are_reported(proxy, pg):
    """A statement that fails at Parse or Bind is still a failed statement the user ran.

    The client gets the error either way; the same statements sent with the simple protocol each
    produce an event with their SQLSTATE, so the extended protocol should too.
    """
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        # Fails at Bind: the unnamed statement is planned with the parameter's value, and constant
        # folding divides by zero.
        with pytest.raises(pg_errors.DivisionByZero):
            with conn.pipeline():
                conn.execute("select 1 as first_in_pipeline")
                conn.execute("select 10 / %s::int as folded", (0,))
                conn.execute("select 3 as third_in_pipeline")
        # Fails at Bind: the parameter's text is not a valid integer.
        with pytest.raises(pg_errors.InvalidTextRepresentation) as bad_input:
            conn.execute("select %s::int as bad_input", ("not a number",))
        assert bad_input.value.sqlstate == "22P02"
        # Fails at Parse: a syntax error.
        with pytest.raises(pg_errors.SyntaxError) as syntax:
            conn.execute("selec %s as bad_syntax", (1,))
        assert syntax.value.sqlstate == "42601"
        assert conn.execute("select 'alive' as last").fetchone() == ("alive",)

        # The same failures through the simple protocol, for comparison: each is an event.
        for sql in ("select 10 / 0 as folded_simple", "select 'x'::int as bad_input_simple",
                    "selec 1 as bad_syntax_simple"):
            with pytest.raises(psycopg.Error):
                conn.execute(sql)
        conn.execute("select 'alive again' as last_simple")

    proxy.wait_for(lambda e: "last_simple" in e.sql)
    simple = {e.sql: e.sqlstate for e in proxy.events if e.protocol == "simple" and e.sqlstate}
    assert simple == {"select 10 / 0 as folded_simple": "22012", "select 'x'::int as bad_input_simple": "22P02",
                      "selec 1 as bad_syntax_simple": "42601"}
    assert not [e for e in proxy.events if "third_in_pipeline" in e.sql]
    extended = {e.sql: e.sqlstate for e in proxy.events if e.protocol != "simple" and e.sqlstate}
    assert extended == {"select 10 / $1::int as folded": "22012", "select $1::int as bad_input": "22P02",
                        "selec $1 as bad_syntax": "42601"}


def test_asyncpg_executemany_failing_row_in_transaction(proxy, pg):
    t_proxy, t_direct = uniq("many_err"), uniq("many_err")
    direct(pg, *(f"create table {t} (id int primary key, v text)" for t in (t_proxy, t_direct)))
    rows = [(i, f"v{i}") for i in range(10)] + [(3, "duplicate")] + [(i, f"v{i}") for i in range(10, 20)]

    async def go(dsn, t):
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.UniqueViolationError) as exc:
                async with conn.transaction():
                    await conn.execute(f"insert into {t} values (-1, 'before')")
                    await conn.executemany(f"insert into {t} (id, v) values ($1, $2)", rows)
            count = await conn.fetchval(f"select count(*) from {t}")  # all rolled back
            await conn.executemany(f"insert into {t} (id, v) values ($1, $2)", rows[:5])
            after = [tuple(r) for r in await conn.fetch(f"select id, v from {t} order by id")]
            return exc.value.sqlstate, count, after
        finally:
            await conn.close()

    via_proxy = run(go(proxy.dsn(), t_proxy))
    assert via_proxy == run(go(pg.dsn(), t_direct))
    sqlstate, count, after = via_proxy
    assert sqlstate == "23505"
    assert count == 0
    assert after == rows[:5]

    insert_sql = f"insert into {t_proxy} (id, v) values ($1, $2)"
    proxy.wait_for(lambda e: e.sql == f"select id, v from {t_proxy} order by id")
    in_tx = [e for e in proxy.events if e.sql == insert_sql and e.in_transaction]
    # 10 rows inserted, the 11th failed, the 10 after it were never executed.
    assert [e.sqlstate for e in in_tx] == [None] * 10 + ["23505"]
    assert in_tx[-1].tx_after == "E"
    later = [e for e in proxy.events if e.sql == insert_sql and not e.in_transaction]
    assert len(later) == 5 and all(e.sqlstate is None for e in later)
    direct(pg, f"drop table {t_proxy}", f"drop table {t_direct}")


# ------------------------------------------------------------------------------------------ COPY


def test_copy_psycopg(proxy, pg):
    t_proxy, t_direct = uniq("copy"), uniq("copy")
    direct(pg, *(f"create table {t} (id int, name text, score float8, note text)" for t in (t_proxy, t_direct)))
    rows = [(i, f"name {i}\twith tab", i * 1.5 if i % 7 else None, "x" * (i % 50)) for i in range(10000)]

    def go(dsn, t):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.cursor() as cur:
                with cur.copy(f"copy {t} (id, name, score, note) from stdin") as copy:
                    for row in rows:
                        copy.write_row(row)
                loaded = cur.rowcount
                raw = bytearray()
                with cur.copy(f"copy (select * from {t} order by id) to stdout") as copy:
                    for chunk in copy:
                        raw += chunk
                with cur.copy(f"copy (select id, score from {t} order by id) to stdout (format binary)") as copy:
                    copy.set_types(["int4", "float8"])
                    binary_rows = list(copy.rows())
                # A client-side failure mid-COPY sends CopyFail: nothing is loaded, the session goes on.
                with pytest.raises(ZeroDivisionError):
                    with cur.copy(f"copy {t} (id) from stdin") as copy:
                        copy.write_row((-1,))
                        1 / 0  # noqa: B018
                count = conn.execute(f"select count(*) from {t}").fetchone()[0]
            return loaded, bytes(raw), binary_rows, count

    loaded, raw, binary_rows, count = go(proxy.dsn(), t_proxy)
    d_loaded, d_raw, d_binary_rows, d_count = go(pg.dsn(), t_direct)
    assert (loaded, count) == (d_loaded, d_count) == (10000, 10000)
    assert raw == d_raw
    assert binary_rows == d_binary_rows == [(r[0], r[2]) for r in rows]
    lines = raw.decode().splitlines()
    assert len(lines) == 10000
    assert lines[1] == "1\tname 1\\twith tab\t1.5\tx"

    got = proxy.wait_for(lambda e: e.command == "COPY" and e.sql.startswith(f"copy {t_proxy} (id, name"))
    assert got[0].rows == 10000
    direct(pg, f"drop table {t_proxy}", f"drop table {t_direct}")


def test_copy_asyncpg(proxy, pg):
    t_proxy, t_direct = uniq("acopy"), uniq("acopy")
    direct(pg, *(f"create table {t} (id int, name text, amount numeric, flag bool)" for t in (t_proxy, t_direct)))
    records = [(i, f"n{i}", i * 3 + 0.25 if i % 3 else None, i % 2 == 0) for i in range(10000)]

    async def go(dsn, t):
        conn = await asyncpg.connect(dsn)
        try:
            status = await conn.copy_records_to_table(t, records=records, columns=["id", "name", "amount", "flag"])
            csv_out, bin_out = io.BytesIO(), io.BytesIO()
            await conn.copy_from_table(t, output=csv_out, format="csv")
            await conn.copy_from_query(f"select * from {t} where id % $1 = 0 order by id", 2, output=bin_out,
                                       format="binary")
            fetched = [tuple(r) for r in await conn.fetch(f"select id, name, amount, flag from {t} order by id")]
            return status, csv_out.getvalue(), bin_out.getvalue(), fetched
        finally:
            await conn.close()

    via_proxy = run(go(proxy.dsn(), t_proxy))
    status, csv_out, bin_out, fetched = via_proxy
    assert via_proxy == run(go(pg.dsn(), t_direct))
    assert status == "COPY 10000"
    assert len(csv_out.splitlines()) == 10000
    assert bin_out.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert [(r[0], r[1], r[3]) for r in fetched] == [(r[0], r[1], r[3]) for r in records]
    assert [None if r[2] is None else float(r[2]) for r in fetched] == [r[2] for r in records]

    got = proxy.wait_for(lambda e: e.command == "COPY" and t_proxy in e.sql and "from stdin" in e.sql.lower())
    assert got[0].rows == 10000
    direct(pg, f"drop table {t_proxy}", f"drop table {t_direct}")


# ------------------------------------------------------------------------------- LISTEN / NOTIFY


def test_listen_notify_asyncpg(proxy, pg):
    channel = uniq("chan")

    async def go():
        listener = await asyncpg.connect(proxy.dsn())
        via_direct = await asyncpg.connect(pg.dsn())
        via_proxy = await asyncpg.connect(proxy.dsn())
        received: asyncio.Queue = asyncio.Queue()
        try:
            await listener.add_listener(channel, lambda _c, pid, ch, payload: received.put_nowait((pid, ch, payload)))
            # The listener is idle: the notification arrives with no request in flight.
            await via_direct.execute(f"notify {channel}, 'from direct'")
            first = await asyncio.wait_for(received.get(), 5)
            await via_proxy.execute("select pg_notify($1, $2)", channel, "from proxy é")
            second = await asyncio.wait_for(received.get(), 5)
            # One arriving while the listener is busy with its own query.
            busy = asyncio.create_task(listener.fetchval("select pg_sleep(0.3)::text || 'done'"))
            await asyncio.sleep(0.05)
            await via_direct.execute(f"notify {channel}, 'during query'")
            third = await asyncio.wait_for(received.get(), 5)
            assert await busy == "done"
            return (first, second, third, via_direct.get_server_pid(), via_proxy.get_server_pid(),
                    await listener.fetchval("select 'listener works'"))
        finally:
            for c in (listener, via_direct, via_proxy):
                await c.close()

    first, second, third, direct_pid, proxy_pid, works = run(go())
    assert first == (direct_pid, channel, "from direct")
    assert second == (proxy_pid, channel, "from proxy é")
    assert third == (direct_pid, channel, "during query")
    assert works == "listener works"


def test_listen_notify_psycopg(proxy, pg):
    channel = uniq("pchan")
    with psycopg.connect(proxy.dsn(), autocommit=True) as listener:
        listener.execute(f"listen {channel}")
        with psycopg.connect(pg.dsn(), autocommit=True) as sender:
            sender.execute("select pg_notify(%s, %s)", (channel, "payload-1"))
            sender.execute("select pg_notify(%s, %s)", (channel, "payload-2"))
            sender_pid = sender.info.backend_pid
        got = []
        for n in listener.notifies(timeout=5, stop_after=2):
            got.append((n.channel, n.payload, n.pid))
            if len(got) == 2:
                break
        assert got == [(channel, "payload-1", sender_pid), (channel, "payload-2", sender_pid)]
        assert listener.execute("select 1").fetchone() == (1,)


# -------------------------------------------------------------------------------- large results


def test_large_result_asyncpg(proxy, pg):
    async def go(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            return digest(await conn.fetch(BIG_QUERY))
        finally:
            await conn.close()

    via_proxy = run(go(proxy.dsn()))
    assert via_proxy == run(go(pg.dsn()))
    assert via_proxy[0] == 150000
    got = proxy.wait_for(lambda e: e.sql == BIG_QUERY)
    assert got[0].rows == 150000


def test_large_result_psycopg(proxy, pg):
    def go(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            text_rows = digest(conn.execute(BIG_QUERY).fetchall())
            binary_rows = digest(conn.cursor(binary=True).execute(BIG_QUERY + " where g %% %s = 0", (3,)).fetchall())
            return text_rows, binary_rows

    via_proxy = go(proxy.dsn())
    assert via_proxy == go(pg.dsn())
    assert via_proxy[0][0] == 150000 and via_proxy[1][0] == 50000
    got = proxy.wait_for(lambda e: e.sql == BIG_QUERY)
    assert got[0].rows == 150000 and got[0].protocol == "simple"


# ------------------------------------------------------------------------------------ Terminate


def backends(pg, pids) -> list[int]:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("select pid from pg_stat_activity where pid = any(%s)", (list(pids),))]


def wait_gone(pg, pids, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = backends(pg, pids)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_terminate_ends_the_backend(proxy, pg):
    conn = psycopg.connect(proxy.dsn(application_name="pgloupe-terminate"), autocommit=True)
    pid = conn.info.backend_pid
    assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid  # the real backend's pid
    assert backends(pg, [pid]) == [pid]
    conn.close()  # sends Terminate
    assert wait_gone(pg, [pid]) == []

    async def go():
        c = await asyncpg.connect(proxy.dsn())
        p = c.get_server_pid()
        assert await c.fetchval("select pg_backend_pid()") == p
        await c.close()
        return p

    apid = run(go())
    assert wait_gone(pg, [apid]) == []
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:  # the proxy still serves new clients
        assert c.execute("select 'ok'").fetchone() == ("ok",)


# ----------------------------------------------------------------------------- application_name


def test_application_name(proxy, pg):
    with psycopg.connect(proxy.dsn(application_name="billing-worker"), autocommit=True) as conn:
        assert conn.execute("select current_setting('application_name') as first_app").fetchone() == (
            "billing-worker",)
        conn.execute("SET application_name = 'report-job'")
        assert conn.execute("select current_setting('application_name') as second_app").fetchone() == (
            "report-job",)
        pid = conn.info.backend_pid
        with psycopg.connect(pg.dsn(), autocommit=True) as d:
            assert d.execute("select application_name from pg_stat_activity where pid = %s",
                             (pid,)).fetchone() == ("report-job",)

    first = proxy.wait_for(lambda e: "first_app" in e.sql)[0]
    second = proxy.wait_for(lambda e: "second_app" in e.sql)[0]
    assert first.application_name == "billing-worker"
    assert second.application_name == "report-job"

    async def go():
        c = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "async-app"})
        try:
            return await c.fetchval("select current_setting('application_name') as third_app")
        finally:
            await c.close()

    assert run(go()) == "async-app"
    assert proxy.wait_for(lambda e: "third_app" in e.sql)[0].application_name == "async-app"
