"""The advisor's side connection on a real PostgreSQL with HypoPG: under the least-privilege role the
docs/findings.md documents, and with nothing but single reads ever reaching the planner."""

from __future__ import annotations

import asyncio
import logging
import re

import asyncpg
import psycopg
import pytest

from detectors.advisor import IndexCandidate
from detectors.config import DetectorConfig
from detectors.database.catalog import connect
from detectors.database.hypo import (
    NO_SELECT,
    NOT_A_READ,
    UNPARSED,
    NotPlanned,
    missing_indexes,
    plan_cost,
    read_to_plan,
)
from detectors.database.review import review
from detectors.fingerprint import Fingerprint, Fingerprinter
from detectors.pipeline import ShapeStats

ROLE, PASSWORD, DB = "pgloupe_catalog", "catalog-pw-5e1d", "advisor_role"

SCHEMA = f"""
CREATE EXTENSION IF NOT EXISTS hypopg;
CREATE TABLE projects (id serial PRIMARY KEY, name text);
CREATE TABLE tickets (id serial PRIMARY KEY, team_id int NOT NULL, project_id int REFERENCES projects (id),
    status text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE canary (id int PRIMARY KEY, team_id int NOT NULL);
INSERT INTO projects (name) SELECT 'p' || g FROM generate_series(1, 100) g;
INSERT INTO tickets (team_id, project_id, status, created_at)
    SELECT g % 50, 1 + g % 100, CASE WHEN g % 10 = 0 THEN 'open' ELSE 'done' END, now() - g * interval '1 minute'
    FROM generate_series(1, 20000) g;
INSERT INTO canary SELECT g, g % 10 FROM generate_series(1, 1000) g;
ANALYZE;
CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';
REVOKE CONNECT ON DATABASE {DB} FROM PUBLIC;
GRANT CONNECT ON DATABASE {DB} TO {ROLE};
GRANT pg_read_all_stats TO {ROLE};
"""

OBSERVED = [  # slow statements on tickets, none of which an index serves
    "SELECT id, status FROM tickets WHERE team_id = $1 AND status = $2 ORDER BY created_at DESC LIMIT 20",
    "UPDATE tickets SET status = $1 WHERE project_id = $2 AND created_at < $3",
    "SELECT id FROM tickets WHERE created_at > $1 ORDER BY created_at LIMIT 10 FOR UPDATE SKIP LOCKED",
]


@pytest.fixture(scope="module")
def role_db(pg):
    pg.require_embedded()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(pg.dsn(database=DB), autocommit=True) as conn:
        conn.execute(SCHEMA)
    yield pg.dsn(database=DB)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {DB}")
        conn.execute(f"DROP ROLE {ROLE}")


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def _missing_index(result) -> dict[str, object]:
    return {a.suggestion: a for a in result.advice if a.kind == "missing_index"}


def test_advisor_under_least_privilege_role(role_db, pg, caplog):
    fp = Fingerprinter()
    observed = [ShapeStats(fp(sql), calls=150, total_s=1.5, max_s=0.6) for sql in OBSERVED]
    role_dsn = pg.dsn(user=ROLE, password=PASSWORD, database=DB)
    caplog.set_level(logging.INFO, logger="pgloupe.advisor")

    # pg_read_all_stats alone: the catalog, the statistics (every session's, not only its own) and the schema
    # advice, but no plan of a table it may not read
    with psycopg.connect(role_db):
        result = asyncio.run(review(role_dsn, DetectorConfig(), observed))
    assert result.error is None and result.catalog.hypopg == "public"
    assert {"tickets", "projects", "canary"} <= set(result.catalog.schema.tables)
    assert result.catalog.stats["tickets"].n_live == 20000 and result.catalog.connections >= 2
    assert result.ratios["dead_tuple_ratio"] is not None and result.ratios["connection_ratio"] > 0
    tenant = [a for a in result.advice if a.kind == "missing_tenant_index"]
    assert {a.tables: a.severity for a in tenant} == {("tickets",): "critical", ("canary",): "warning"}
    fk = [a for a in result.advice if a.kind == "missing_fk_index"]
    assert [a.suggestion for a in fk] == ["CREATE INDEX CONCURRENTLY idx_tickets_project_id ON tickets (project_id);"]
    unverified = _missing_index(result)
    assert len(unverified) == 3
    assert all(NO_SELECT in a.message and a.confidence == 0.6 for a in unverified.values())

    # SELECT on the tables read (per table, or pg_read_all_data) is all HypoPG verification needs: the UPDATE and
    # the FOR UPDATE are planned as reads, which is why they can be verified without UPDATE privilege
    with psycopg.connect(role_db, autocommit=True) as admin:
        for grant, revoke in ((f"GRANT SELECT ON tickets TO {ROLE}", f"REVOKE SELECT ON tickets FROM {ROLE}"),
                              (f"GRANT pg_read_all_data TO {ROLE}", f"REVOKE pg_read_all_data FROM {ROLE}")):
            admin.execute(grant)
            try:
                verified = _missing_index(asyncio.run(review(role_dsn, DetectorConfig(), observed)))
                writable = admin.execute(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = "
                    "'public' AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')",
                    (ROLE,)).fetchone()[0]
            finally:
                admin.execute(revoke)
            assert writable == 0, grant
            assert set(verified) == {
                "CREATE INDEX CONCURRENTLY idx_tickets_team_id_status_created_at ON tickets (team_id, status, created_at);",
                "CREATE INDEX CONCURRENTLY idx_tickets_project_id_created_at ON tickets (project_id, created_at);",
                "CREATE INDEX CONCURRENTLY idx_tickets_created_at ON tickets (created_at);",
            }, grant
            for advice in verified.values():
                assert advice.details["cost_after"] < advice.details["cost_before"] and advice.confidence == 0.95, grant
            update = verified["CREATE INDEX CONCURRENTLY idx_tickets_project_id_created_at ON tickets "
                              "(project_id, created_at);"]
            assert "planned as the SELECT of the rows it changes" in update.message
    assert _count(role_db, "SELECT count(*) FROM tickets WHERE status = 'open'") == 2000  # the UPDATE never ran
    messages = [r.getMessage() for r in caplog.records if r.name == "pgloupe.advisor"]
    assert messages and not [m for m in messages if "tickets" in m or "$" in m or "permission" in m]


def _candidate(text: str, kind: str = "SELECT") -> IndexCandidate:
    """A candidate straight from a fingerprint's text (%s placeholders), as the advisor would plan it."""
    fp = Fingerprint(id="0" * 16, text=text, kind=kind, tables=("canary",))
    return IndexCandidate("canary", ["team_id"], None, ShapeStats(fp, calls=150, total_s=1.0, max_s=0.6),
                          "slow", "CREATE INDEX CONCURRENTLY idx_canary_team_id ON canary (team_id);")


def test_only_one_read_reaches_the_planner(role_db):
    """As the superuser, the worst case: the guards, not the role, keep client text from running."""

    async def run():
        conn = await connect(role_db)
        try:
            # a generic plan (a custom one for NULL would be a one-time false filter, cost 0), and nothing executed
            assert await plan_cost(conn, "SELECT id FROM canary WHERE team_id = $1") > 5
            await plan_cost(conn, "SELECT set_config('application_name', 'executed', false) FROM canary WHERE id = $1")
            # the extended protocol: the server refuses a second statement
            for text in ("SELECT id FROM canary WHERE team_id = $1; SET default_transaction_read_only = off",
                         "SELECT 1; DROP TABLE canary"):
                with pytest.raises(asyncpg.PostgresSyntaxError):
                    await plan_cost(conn, text)
            with pytest.raises(NotPlanned):  # a plan that would write is refused even past the sqlglot check
                await plan_cost(conn, "WITH gone AS (DELETE FROM canary RETURNING id) SELECT id FROM gone")
            advice = await missing_indexes(conn, [
                _candidate("SELECT id FROM canary WHERE team_id = %s; SET default_transaction_read_only = off"),
                _candidate("SELECT id FROM canary WHERE team_id = %s; DROP TABLE canary"),
                _candidate("WITH gone AS (DELETE FROM canary RETURNING id) SELECT c.id FROM canary AS c "
                           "WHERE c.team_id = %s AND c.id IN (SELECT id FROM gone)"),
                _candidate("WITH gone AS (DELETE FROM canary RETURNING id) UPDATE canary SET team_id = %s "
                           "WHERE team_id = %s AND id IN (SELECT id FROM gone)", "UPDATE"),
                _candidate("INSERT INTO canary SELECT id + 5000, team_id FROM canary WHERE team_id = %s", "INSERT"),
            ], "public", DetectorConfig())
            state = [await conn.fetchval(f"SHOW {name}") for name in ("default_transaction_read_only", "application_name")]
            lingering = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
            return advice, state, lingering
        finally:
            await conn.close()

    advice, state, lingering = asyncio.run(run())
    assert state == ["on", "pgloupe-catalog"] and lingering == 0
    assert [(a.confidence, "cost_before" in a.details) for a in advice] == [(0.6, False)] * 5
    assert [a.message.split("not verified (")[1] for a in advice] == [f"{UNPARSED})"] * 2 + [f"{NOT_A_READ})"] * 3
    assert _count(role_db, "SELECT count(*) FROM canary") == 1000


@pytest.mark.parametrize("text, read", [
    ("SELECT id FROM t WHERE team_id = $1 FOR UPDATE OF t SKIP LOCKED", "SELECT id FROM t WHERE team_id = $1"),
    ("SELECT * FROM (SELECT id FROM t FOR SHARE) AS s WHERE id = $1", "SELECT * FROM (SELECT id FROM t) AS s WHERE id = $1"),
    ("UPDATE t AS x SET a = $1 FROM u JOIN v ON u.id = v.id WHERE x.id = u.id AND u.team_id = $2 RETURNING x.id",
     "SELECT 1 FROM t AS x, u JOIN v ON u.id = v.id WHERE x.id = u.id AND u.team_id = $1"),
    ("WITH q AS (SELECT id FROM u) DELETE FROM ONLY t USING q WHERE t.id = q.id AND t.team_id = $1;",
     "WITH q AS (SELECT id FROM u) SELECT 1 FROM ONLY t, q WHERE t.id = q.id AND t.team_id = $1"),
])
def test_reads_planned_for_statements(text, read):
    assert read_to_plan(text) == read


@pytest.mark.parametrize("text, reason", [
    ("SELECT 1; SELECT 2", UNPARSED), ("SELECT FROM WHERE (", UNPARSED), ("", UNPARSED),
    ("SELECT * INTO t2 FROM t", NOT_A_READ), ("INSERT INTO t VALUES ($1)", NOT_A_READ),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", NOT_A_READ),
    ("SELECT * FROM t WHERE id IN (WITH d AS (DELETE FROM u RETURNING id) SELECT id FROM d)", NOT_A_READ),
    ("VACUUM t", NOT_A_READ),
])
def test_statements_never_planned(text, reason):
    with pytest.raises(NotPlanned, match=re.escape(reason)):
        read_to_plan(text)
