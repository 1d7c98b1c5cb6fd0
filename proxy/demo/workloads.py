"""Workloads modelled on the seed documents: each anti-pattern, its fixed version, and ordinary traffic.

``pgloupe demo`` runs the anti-patterns and then their fixes through the proxy; each workload runs
under its own application_name and is labelled with the finding kinds it must produce (none, for the
negatives), so the corpus (proxy.demo.corpus) can score them.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import psycopg

SCHEMA = """
DROP TABLE IF EXISTS teams, users, contacts, campaigns, campaign_recipients, activities, scheduled_calls,
    emails, leads, messages, journey_contacts, team_settings, countries CASCADE;
CREATE TABLE teams (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id int PRIMARY KEY, team_id int NOT NULL, name text, email text);
CREATE TABLE contacts (id serial PRIMARY KEY, team_id int, email text, name text, metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE campaigns (id int PRIMARY KEY, team_id int NOT NULL, name text);
CREATE TABLE campaign_recipients (id serial PRIMARY KEY, team_id int NOT NULL, campaign_id int, contact_id int, email text);
CREATE TABLE activities (id serial PRIMARY KEY, organization_id int NOT NULL, user_id int, entity_id int,
    action text, description text, metadata jsonb, changes jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE scheduled_calls (id serial PRIMARY KEY, organization_id int NOT NULL, customer_id int, activity_id int);
CREATE TABLE emails (id serial PRIMARY KEY, team_id int NOT NULL, contact_id int, subject text);
CREATE TABLE leads (id int PRIMARY KEY, team_id int NOT NULL, owner_id int, title text);
CREATE TABLE messages (id int PRIMARY KEY, team_id int NOT NULL, body text);
CREATE TABLE journey_contacts (id int PRIMARY KEY, team_id int NOT NULL, contact_id int, status text);
CREATE TABLE team_settings (team_id int PRIMARY KEY, plan text, limits jsonb);
INSERT INTO teams VALUES (1, 'acme'), (2, 'globex');
INSERT INTO countries VALUES ('AU', 'Australia'), ('NZ', 'New Zealand'), ('US', 'United States');
INSERT INTO users SELECT g, 1 + g % 2, 'user ' || g, 'u' || g || '@example.com' FROM generate_series(1, 40) g;
INSERT INTO contacts (team_id, email, name, metadata)
    SELECT 1 + (g > 1600)::int, 'c' || g || '@example.com', 'contact ' || g, jsonb_build_object('n', g)
    FROM generate_series(1, 2000) g;
INSERT INTO campaigns VALUES (1, 1, 'spring launch');
INSERT INTO campaign_recipients (team_id, campaign_id, contact_id, email)
    SELECT 1, 1, g, 'c' || g || '@example.com' FROM generate_series(1, 30) g;
INSERT INTO activities (organization_id, user_id, entity_id, action, metadata, changes)
    SELECT 1, 1 + g % 10, g, 'note', jsonb_build_object('text', repeat('x', 800)), '{}'::jsonb FROM generate_series(1, 5000) g;
INSERT INTO leads SELECT g, 1, 1 + g % 20, 'lead ' || g FROM generate_series(1, 12) g;
INSERT INTO messages SELECT g, 1, 'hello ' || g FROM generate_series(1, 50) g;
INSERT INTO journey_contacts SELECT g, 1, g, 'active' FROM generate_series(1, 40) g;
INSERT INTO team_settings VALUES (1, 'pro', '{"seats": 10}');
ANALYZE;
"""


@dataclass
class Workload:
    name: str
    expect: frozenset[str]
    run: Callable[[str], None]
    seed: str = ""
    fixed_by: str | None = None  # the workload that does the same work the recommended way

    @property
    def positive(self) -> bool:
        return bool(self.expect)


WORKLOADS: list[Workload] = []


def workload(name: str, expect: tuple[str, ...] = (), seed: str = "", fixed_by: str | None = None):
    def register(fn):
        WORKLOADS.append(Workload(name, frozenset(expect), fn, seed, fixed_by))
        return fn
    return register


def _arun(coro):
    return asyncio.run(coro)


async def _aconnect(dsn: str, app: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": app})


def _pconnect(dsn: str, app: str, **kw) -> psycopg.Connection:
    return psycopg.connect(dsn, application_name=app, autocommit=kw.pop("autocommit", True), **kw)


@workload("campaign-send-loop", ("n_plus_one_insert", "missing_transaction"), "000 F1/F2, 001", fixed_by="campaign-send-batched")
def _campaign_send(dsn):
    async def go():
        conn = await _aconnect(dsn, "campaign-send-loop")
        try:
            recipients = await conn.fetch(
                "SELECT contact_id, email FROM campaign_recipients WHERE team_id = $1 AND campaign_id = $2", 1, 1)
            for r in recipients:
                email_id = await conn.fetchval(
                    "INSERT INTO emails (team_id, contact_id, subject) VALUES ($1, $2, $3) RETURNING id",
                    1, r["contact_id"], "Spring launch")
                await conn.execute(
                    "INSERT INTO activities (organization_id, user_id, entity_id, action, metadata) "
                    "VALUES ($1, $2, $3, 'email_sent', $4)", 1, 7, r["contact_id"], f'{{"email_id": {email_id}}}')
        finally:
            await conn.close()
    _arun(go())


@workload("lead-owner-lookup", ("n_plus_one_select",), "004 §1.4", fixed_by="lead-owner-join")
def _lead_owners(dsn):
    with _pconnect(dsn, "lead-owner-lookup") as conn:
        leads = conn.execute("SELECT id, owner_id FROM leads WHERE team_id = %s ORDER BY id", (1,)).fetchall()
        for _, owner in leads:
            conn.execute("SELECT name, email FROM users WHERE id = %s AND team_id = %s", (owner, 1)).fetchone()


@workload("django-style-interpolated-n-plus-one", ("n_plus_one_select",), "004 §1.4 (ORM lazy loading)", fixed_by="django-style-select-related")
def _django_style(dsn):
    # Django and SQLAlchemy on psycopg2 interpolate values into the text client-side, as ClientCursor does.
    with _pconnect(dsn, "django-style-interpolated-n-plus-one") as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT id, owner_id FROM leads WHERE team_id = %s ORDER BY id", (1,))
        for _, owner in cur.fetchall():
            cur.execute("SELECT id, name FROM users WHERE id = %s AND team_id = %s", (owner, 1))
            cur.fetchone()


@workload("journey-status-updates", ("n_plus_one_update",), "004 §5.1, 003 §3", fixed_by="journey-status-batched")
def _journey_updates(dsn):
    async def go():
        conn = await _aconnect(dsn, "journey-status-updates")
        try:
            async with conn.transaction():
                for i in range(1, 21):
                    await conn.execute("UPDATE journey_contacts SET status = $1 WHERE id = $2 AND team_id = $3",
                                       "completed", i, 1)
        finally:
            await conn.close()
    _arun(go())


@workload("message-cleanup-traced", ("n_plus_one_delete",), "003 §1")
def _message_cleanup(dsn):
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with _pconnect(dsn, "message-cleanup-traced") as conn:
        for i in range(1, 11):
            conn.execute(f"DELETE FROM messages WHERE id = %s AND team_id = %s "
                         f"/*route='%%2Fapi%%2Fmessages',traceparent='{trace}'*/", (i, 1))


@workload("csv-import-row-by-row", ("n_plus_one_select", "n_plus_one_insert"), "003 §2/§3",
          fixed_by="csv-import-batched")
def _csv_import(dsn):
    rows = [f"c{i}@example.com" for i in range(100, 130)]
    with _pconnect(dsn, "csv-import-row-by-row") as conn:
        for email in rows:
            found = conn.execute("SELECT id FROM contacts WHERE team_id = %s AND email = %s", (1, email)).fetchone()
            conn.execute("INSERT INTO campaign_recipients (team_id, campaign_id, contact_id, email) "
                         "VALUES (%s, %s, %s, %s)", (1, 1, found[0], email))


@workload("tenant-config-refetch", ("repeated_identical",), "004 §3.2")
def _tenant_config(dsn):
    async def go():
        conn = await _aconnect(dsn, "tenant-config-refetch")
        try:
            for _ in range(6):
                await conn.fetchrow("SELECT plan, limits FROM team_settings WHERE team_id = $1", 1)
        finally:
            await conn.close()
    _arun(go())


@workload("leaderboard-two-queries", ("join_candidate",), "000 F3")
def _leaderboard(dsn):
    async def go():
        conn = await _aconnect(dsn, "leaderboard-two-queries")
        try:
            top = await conn.fetch("SELECT user_id, count(*) AS n FROM activities WHERE organization_id = $1 "
                                   "GROUP BY user_id ORDER BY n DESC LIMIT 10", 1)
            ids = [r["user_id"] for r in top]
            placeholders = ", ".join(f"${i + 2}" for i in range(len(ids)))
            await conn.fetch(f"SELECT id, name, email FROM users WHERE team_id = $1 AND id IN ({placeholders})", 1, *ids)
        finally:
            await conn.close()
    _arun(go())


@workload("quick-log-two-writes", ("missing_transaction",), "000 F4", fixed_by="quick-log-in-transaction")
def _quick_log(dsn):
    async def go():
        conn = await _aconnect(dsn, "quick-log-two-writes")
        try:
            activity = await conn.fetchval(
                "INSERT INTO activities (organization_id, user_id, entity_id, action) VALUES ($1, $2, $3, 'call') "
                "RETURNING id", 1, 3, 42)
            await conn.execute("INSERT INTO scheduled_calls (organization_id, customer_id, activity_id) "
                               "VALUES ($1, $2, $3)", 1, 42, activity)
        finally:
            await conn.close()
    _arun(go())


@workload("slow-report", ("slow_query",), "002, 003, 004 §10")
def _slow(dsn):
    with _pconnect(dsn, "slow-report") as conn:
        conn.execute("SELECT count(*), pg_sleep(0.15) FROM activities WHERE organization_id = %s", (1,))


@workload("contact-search-all-teams", ("cross_tenant",), "002 cross-tenant risk")
def _cross_select(dsn):
    with _pconnect(dsn, "contact-search-all-teams") as conn:
        conn.execute("SELECT id, name FROM contacts WHERE email = %s", ("c5@example.com",)).fetchall()


@workload("contact-rename-by-id", ("cross_tenant",), "002 cross-tenant risk")
def _cross_update(dsn):
    with _pconnect(dsn, "contact-rename-by-id") as conn:
        conn.execute("UPDATE contacts SET name = %s WHERE id = %s", ("renamed", 5))


@workload("contact-insert-without-team", ("cross_tenant",), "002 cross-tenant risk")
def _cross_insert(dsn):
    with _pconnect(dsn, "contact-insert-without-team") as conn:
        conn.execute("INSERT INTO contacts (email, name) VALUES (%s, %s)", ("orphan@example.com", "orphan"))


@workload("activity-feed-select-star", ("select_star",), "000 F6, 004 §1.2")
def _select_star(dsn):
    async def go():
        conn = await _aconnect(dsn, "activity-feed-select-star")
        try:
            await conn.fetch("SELECT * FROM activities WHERE organization_id = $1 ORDER BY created_at DESC LIMIT 20", 1)
        finally:
            await conn.close()
    _arun(go())


@workload("contact-export-unbounded", ("unbounded_result",), "004 §6")
def _unbounded(dsn):
    async def go():
        conn = await _aconnect(dsn, "contact-export-unbounded")
        try:
            await conn.fetch("SELECT id, email FROM contacts WHERE team_id = $1", 1)
        finally:
            await conn.close()
    _arun(go())


@workload("contact-list-deep-page", ("offset_pagination",), "004 §6.1")
def _offset(dsn):
    with _pconnect(dsn, "contact-list-deep-page") as conn:
        conn.execute("SELECT id, email FROM contacts WHERE team_id = 1 ORDER BY created_at DESC, id DESC "
                     "LIMIT 50 OFFSET 1200").fetchall()


@workload("segment-not-in", ("not_in_subquery",), "004 §1.5")
def _not_in(dsn):
    with _pconnect(dsn, "segment-not-in") as conn:
        conn.execute("SELECT id FROM contacts WHERE team_id = %s AND id NOT IN "
                     "(SELECT contact_id FROM journey_contacts WHERE team_id = %s) LIMIT 100", (1, 1)).fetchall()


@workload("journey-step-long-transaction", ("long_transaction",), "004 §8")
def _long_tx(dsn):
    with _pconnect(dsn, "journey-step-long-transaction", autocommit=False) as conn:
        conn.execute("SELECT status FROM journey_contacts WHERE team_id = %s AND id = %s", (1, 3)).fetchone()
        time.sleep(1.3)  # an HTTP call made while the transaction holds its locks
        conn.execute("UPDATE journey_contacts SET status = %s WHERE team_id = %s AND id = %s", ("sent", 1, 3))
        conn.commit()


@workload("activity-feed-keyset-page", seed="000 F5 (the advisor suggests the composite index)")
def _keyset(dsn):
    async def go():
        conn = await _aconnect(dsn, "activity-feed-keyset-page")
        try:
            for page in range(120):
                await conn.fetch("SELECT id, action, created_at FROM activities WHERE organization_id = $1 "
                                 "AND (created_at, id) < (now(), $2) ORDER BY created_at DESC, id DESC LIMIT 20",
                                 1, 5000 - page * 20)
        finally:
            await conn.close()
    _arun(go())


@workload("journey-status-batched")
def _journey_batched(dsn):
    async def go():
        conn = await _aconnect(dsn, "journey-status-batched")
        try:
            async with conn.transaction():
                await conn.execute("UPDATE journey_contacts SET status = $1 WHERE team_id = $2 AND id = ANY($3)",
                                   "completed", 1, list(range(1, 21)))
        finally:
            await conn.close()
    _arun(go())


@workload("csv-import-batched")
def _csv_batched(dsn):
    emails = [f"c{i}@example.com" for i in range(130, 160)]
    async def go():
        conn = await _aconnect(dsn, "csv-import-batched")
        try:
            found = await conn.fetch("SELECT id, email FROM contacts WHERE team_id = $1 AND email = ANY($2)", 1, emails)
            await conn.execute("INSERT INTO campaign_recipients (team_id, campaign_id, contact_id, email) "
                               "SELECT $1, $2, unnest($3::int[]), unnest($4::text[])",
                               1, 1, [r["id"] for r in found], [r["email"] for r in found])
        finally:
            await conn.close()
    _arun(go())


@workload("campaign-send-batched")
def _campaign_batched(dsn):
    async def go():
        conn = await _aconnect(dsn, "campaign-send-batched")
        try:
            recipients = await conn.fetch(
                "SELECT contact_id FROM campaign_recipients WHERE team_id = $1 AND campaign_id = $2 LIMIT 30", 1, 1)
            values = ", ".join(f"($1, $2, ${i + 3}, 'email_sent')" for i in range(len(recipients)))
            await conn.execute(f"INSERT INTO activities (organization_id, user_id, entity_id, action) VALUES {values}",
                               1, 7, *[r["contact_id"] for r in recipients])
        finally:
            await conn.close()
    _arun(go())


@workload("django-style-select-related")
def _django_joined(dsn):
    with _pconnect(dsn, "django-style-select-related") as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT l.id, u.name FROM leads l INNER JOIN users u ON (l.owner_id = u.id) "
                    "WHERE l.team_id = %s AND u.team_id = %s", (1, 1))
        cur.fetchall()


@workload("lead-owner-join")
def _lead_join(dsn):
    with _pconnect(dsn, "lead-owner-join") as conn:
        conn.execute("SELECT l.id, u.name FROM leads l JOIN users u ON u.id = l.owner_id AND u.team_id = l.team_id "
                     "WHERE l.team_id = %s", (1,)).fetchall()


@workload("quick-log-in-transaction")
def _quick_log_tx(dsn):
    async def go():
        conn = await _aconnect(dsn, "quick-log-in-transaction")
        try:
            async with conn.transaction():
                activity = await conn.fetchval(
                    "INSERT INTO activities (organization_id, user_id, entity_id, action) VALUES ($1, $2, $3, 'call2') "
                    "RETURNING id", 1, 3, 43)
                await conn.execute("INSERT INTO scheduled_calls (organization_id, customer_id, activity_id) "
                                   "VALUES ($1, $2, $3)", 1, 43, activity)
        finally:
            await conn.close()
    _arun(go())


@workload("tenant-filtered-pages")
def _tenant_filtered(dsn):
    with _pconnect(dsn, "tenant-filtered-pages") as conn:
        conn.execute("SELECT id, email FROM contacts WHERE team_id = %s ORDER BY created_at DESC, id DESC LIMIT 50",
                     (1,)).fetchall()
        conn.execute("SELECT id, email FROM contacts WHERE team_id = %s AND (created_at, id) < (now(), %s) "
                     "ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 20", (1, 1000)).fetchall()
        conn.execute("UPDATE contacts SET name = %s WHERE team_id = %s AND id = %s", ("kept", 1, 6))
        conn.execute("SELECT c.id FROM contacts c WHERE c.team_id = %s AND NOT EXISTS (SELECT 1 FROM journey_contacts j "
                     "WHERE j.contact_id = c.id AND j.team_id = c.team_id) LIMIT 10", (1,)).fetchall()
        conn.execute("SELECT * FROM countries").fetchall()


@workload("country-lookups")
def _countries(dsn):
    with _pconnect(dsn, "country-lookups") as conn:
        for code in ("AU", "NZ", "US"):
            conn.execute("SELECT name FROM countries WHERE code = %s", (code,)).fetchone()


@workload("lead-owner-few")
def _few(dsn):
    with _pconnect(dsn, "lead-owner-few") as conn:
        leads = conn.execute("SELECT id, owner_id FROM leads WHERE team_id = %s ORDER BY id LIMIT 4", (1,)).fetchall()
        for _, owner in leads:
            conn.execute("SELECT email FROM users WHERE id = %s AND team_id = %s", (owner, 1)).fetchone()


@workload("pgbench-select-only")
def _pgbench(dsn):
    parts = urlsplit(dsn)
    subprocess.run(["pgbench", "-n", "-S", "-c", "4", "-t", "300", "-h", parts.hostname, "-p", str(parts.port),
                    "-U", parts.username or "postgres", parts.path.lstrip("/") or "postgres"],
                   check=True, capture_output=True, timeout=120,
                   env={"PGAPPNAME": "pgbench-select-only", "PATH": "/usr/bin:/bin"})


@workload("pooled-contact-lookups")
def _pooled(dsn):
    async def go():
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4,
                                         server_settings={"application_name": "pooled-contact-lookups"})
        rnd = random.Random(7)

        async def lookup():
            async with pool.acquire() as conn:
                await conn.fetchrow("SELECT id, email FROM contacts WHERE team_id = $1 AND id = $2",
                                    1, rnd.randint(1, 1600))
        try:
            await asyncio.gather(*(lookup() for _ in range(300)))
        finally:
            await pool.close()
    _arun(go())


@workload("activities-executemany")
def _executemany(dsn):
    async def go():
        conn = await _aconnect(dsn, "activities-executemany")
        try:
            await conn.executemany("INSERT INTO activities (organization_id, user_id, entity_id, action) "
                                   "VALUES ($1, $2, $3, 'imported')", [(1, 2, i) for i in range(50)])
        finally:
            await conn.close()
    _arun(go())


@workload("activities-copy")
def _copy(dsn):
    async def go():
        conn = await _aconnect(dsn, "activities-copy")
        try:
            await conn.copy_records_to_table("activities", records=[(1, 2, i, "copied") for i in range(500)],
                                             columns=["organization_id", "user_id", "entity_id", "action"])
        finally:
            await conn.close()
    _arun(go())


@workload("psycopg-pipeline-inserts")
def _pipeline(dsn):
    with _pconnect(dsn, "psycopg-pipeline-inserts") as conn:
        with conn.pipeline():
            for i in range(20):
                conn.execute("INSERT INTO messages (id, team_id, body) VALUES (%s, %s, %s)", (1000 + i, 1, "bulk"))


@workload("short-transaction")
def _short_tx(dsn):
    with _pconnect(dsn, "short-transaction", autocommit=False) as conn:
        conn.execute("SELECT status FROM journey_contacts WHERE team_id = %s AND id = %s", (1, 4)).fetchone()
        conn.execute("UPDATE journey_contacts SET status = %s WHERE team_id = %s AND id = %s", ("sent", 1, 4))
        conn.commit()


def prepare(direct_dsn: str, pgbench_tables: bool = True) -> None:
    """The seed-shaped schema; with ``pgbench_tables``, pgbench's own tables too (the corpus runs pgbench
    -S as a negative; the demo does not, so it needs no pgbench)."""
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        try:  # lets the advisor prove its index suggestions, where the server has HypoPG
            conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        except psycopg.Error:
            pass
    if not pgbench_tables:
        return
    parts = urlsplit(direct_dsn)
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", parts.hostname, "-p", str(parts.port),
                    "-U", parts.username or "postgres", parts.path.lstrip("/") or "postgres"],
                   check=True, capture_output=True, timeout=120)
