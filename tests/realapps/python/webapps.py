"""Pooled Python web servers of the real-application corpus: Flask on psycopg_pool, Starlette on asyncpg.

Each web workload starts a real server on a free port of 127.0.0.1 (werkzeug's threaded WSGI server,
uvicorn) and a local client that sends ~100 requests; every request authenticates by session token,
reads one team-filtered page and writes one audit row, on a connection of a pool of 4. Requests
served one after the other on a pooled connection are separate pieces of work, not a loop. Two
workloads run without a server: a concurrent fan-out over an asyncpg pool, and a background job that
updates due rows one short transaction at a time.

    python -m tests.realapps.python.webapps (setup | <workload name>)
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import random
import socket
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from tests.realapps.harness import App, Expect, Workload, python

MODULE = "tests.realapps.python.webapps"
PAGE = 20
REQUESTS = 100
ACTIVE_USERS = range(1, 13)  # the users browsing during the run (users 1-12: four per team)


def token_for(user_id: int) -> str:
    return hashlib.sha256(f"pyweb-session-{user_id}".encode()).hexdigest()[:40]


def team_of(user_id: int) -> int:
    return 1 + (user_id - 1) % 3


def requests_plan(seed: int, users: range | list[int] = ACTIVE_USERS) -> list[tuple[str, int]]:
    """(token, page) of each request the client sends: a dozen users paging through their contacts."""
    rng = random.Random(seed)
    return [(token_for(rng.choice(users)), rng.randrange(5)) for _ in range(REQUESTS)]


ONE_TEAM = [u for u in ACTIVE_USERS if team_of(u) == 1]  # a staging app's testers: four users of one team


# ------------------------------------------------------------------ schema and seed rows

DDL = """
CREATE TABLE teams (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (
    id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), name text NOT NULL,
    email text NOT NULL, session_token text NOT NULL UNIQUE);
CREATE INDEX users_team_id_idx ON users (team_id);
CREATE TABLE contacts (
    id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id),
    owner_id integer NOT NULL REFERENCES users(id), email text NOT NULL, name text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX contacts_team_created_idx ON contacts (team_id, created_at DESC, id DESC);
CREATE INDEX contacts_owner_id_idx ON contacts (owner_id);
CREATE TABLE campaigns (
    id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), name text NOT NULL,
    status text NOT NULL DEFAULT 'draft');
CREATE INDEX campaigns_team_id_idx ON campaigns (team_id);
CREATE TABLE campaign_recipients (
    id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id),
    campaign_id integer NOT NULL REFERENCES campaigns(id), contact_id integer NOT NULL REFERENCES contacts(id),
    email text NOT NULL);
CREATE INDEX campaign_recipients_team_campaign_idx ON campaign_recipients (team_id, campaign_id);
CREATE INDEX campaign_recipients_campaign_id_idx ON campaign_recipients (campaign_id);
CREATE INDEX campaign_recipients_contact_id_idx ON campaign_recipients (contact_id);
CREATE TABLE activities (
    id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), user_id integer NOT NULL REFERENCES users(id),
    contact_id integer NOT NULL REFERENCES contacts(id), action text NOT NULL, description text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX activities_team_created_idx ON activities (team_id, created_at);
CREATE INDEX activities_user_id_idx ON activities (user_id);
CREATE INDEX activities_contact_id_idx ON activities (contact_id);
CREATE TABLE leads (
    id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), owner_id integer NOT NULL REFERENCES users(id),
    title text NOT NULL, status text NOT NULL DEFAULT 'new');
CREATE INDEX leads_team_status_idx ON leads (team_id, status);
CREATE INDEX leads_owner_id_idx ON leads (owner_id);
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), user_id integer NOT NULL,
    action text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX audit_log_team_created_idx ON audit_log (team_id, created_at);
CREATE TABLE countries (code char(2) PRIMARY KEY, name text NOT NULL);
"""


def setup() -> None:
    """The schema as plain DDL, and seed rows (3 teams, 40 users, 600 contacts, 6,000 activities, 600 leads)."""
    import psycopg
    from psycopg.types.json import Jsonb

    rng = random.Random(7)
    members = {t: [u for u in range(1, 41) if team_of(u) == t] for t in (1, 2, 3)}
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(DDL)
        cur.executemany("INSERT INTO teams (name) VALUES (%s)", [(f"Team {t}",) for t in (1, 2, 3)])
        cur.executemany("INSERT INTO users (team_id, name, email, session_token) VALUES (%s, %s, %s, %s)",
                        [(team_of(u), f"User {u}", f"user{u}@example.com", token_for(u)) for u in range(1, 41)])
        with cur.copy("COPY contacts (team_id, owner_id, email, name, metadata, created_at) FROM STDIN") as copy:
            for c in range(1, 601):
                team = 1 + c % 3
                copy.write_row((team, rng.choice(members[team]), f"contact{c}@client{c % 37}.example", f"Contact {c}",
                                Jsonb({"source": rng.choice(["import", "form", "api"])}),
                                f"2026-01-{1 + rng.randrange(28):02d} {rng.randrange(24):02d}:{rng.randrange(60):02d}Z"))
        contacts = {t: [r[0] for r in cur.execute("SELECT id FROM contacts WHERE team_id = %s", (t,))] for t in (1, 2, 3)}
        with cur.copy("COPY activities (team_id, user_id, contact_id, action, description, metadata) FROM STDIN") as copy:
            for _ in range(6000):
                team = rng.randrange(1, 4)
                action = rng.choice(["email_sent", "email_opened", "call", "note", "meeting"])
                copy.write_row((team, rng.choice(members[team]), rng.choice(contacts[team]), action, f"{action} logged",
                                Jsonb({"message_id": f"<{rng.getrandbits(64):016x}@mail.example>",
                                       "excerpt": " ".join(rng.choice(["hello", "pricing", "demo", "next", "week"])
                                                           for _ in range(150))})))
        cur.executemany("INSERT INTO leads (team_id, owner_id, title, status) VALUES (%s, %s, %s, %s)",
                        [(1 + i % 3, rng.choice(members[1 + i % 3]), f"Deal {i}",
                          rng.choice(["new", "contacted", "qualified", "stale"])) for i in range(600)])
        cur.executemany("INSERT INTO countries (code, name) VALUES (%s, %s)",
                        [(c, f"Country {c}") for c in ("DE", "FR", "GB", "NL", "US")])


# ------------------------------------------------------------------ the queries every request runs

AUTH_SQL = "SELECT id, team_id, name FROM users WHERE session_token = {}"
PAGE_SQL = ("SELECT id, name, email, owner_id, created_at FROM contacts WHERE team_id = {} "
            "ORDER BY created_at DESC, id DESC LIMIT {} OFFSET {}")
AUDIT_SQL = "INSERT INTO audit_log (team_id, user_id, action) VALUES ({}, {}, {})"


def psycopg_sql(sql: str) -> str:
    return sql.format(*["%s"] * sql.count("{}"))


def asyncpg_sql(sql: str) -> str:
    return sql.format(*[f"${i}" for i in range(1, sql.count("{}") + 1)])


# ------------------------------------------------------------------ Flask on psycopg_pool


def flask_app(pool):
    from flask import Flask, abort, jsonify, request

    app = Flask(__name__)

    @app.get("/api/contacts")
    def contacts():
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        page = request.args.get("page", default=0, type=int)
        with pool.connection() as conn:  # in transaction mode: commits here, one transaction per request
            user = conn.execute(psycopg_sql(AUTH_SQL), (token,)).fetchone()
            if user is None:
                abort(401)
            user_id, team_id, _ = user
            rows = conn.execute(psycopg_sql(PAGE_SQL), (team_id, PAGE, page * PAGE)).fetchall()
            conn.execute(psycopg_sql(AUDIT_SQL), (team_id, user_id, f"GET /api/contacts?page={page}"))
        return jsonify([{"id": r[0], "name": r[1], "email": r[2]} for r in rows])

    @app.get("/api/contact-cards")
    def contact_cards():
        """N+1: the cards the client asks for (?ids=...), one query per id from the request."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        ids = [int(i) for i in request.args.get("ids", "").split(",") if i]
        with pool.connection() as conn:
            user = conn.execute(psycopg_sql(AUTH_SQL), (token,)).fetchone()
            if user is None:
                abort(401)
            cards = [conn.execute("SELECT id, name, email FROM contacts WHERE team_id = %s AND id = %s",
                                  (user[1], i)).fetchone() for i in ids]
            conn.execute(psycopg_sql(AUDIT_SQL), (user[1], user[0], "GET /api/contact-cards"))
        return jsonify([{"id": c[0], "name": c[1]} for c in cards if c])

    return app


def serve_flask(autocommit: bool, connections: int = 4, clients: int = 8, users: range | list[int] = ACTIVE_USERS,
                cards: bool = False) -> None:
    """Werkzeug's server in a thread (threaded when there are several connections); ``clients`` client
    threads share the 100 requests of ``users`` (with ``cards``, 20 requests for the same ten contact cards)."""
    import httpx
    from psycopg_pool import ConnectionPool
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with ConnectionPool(os.environ["DATABASE_URL"], min_size=connections, max_size=connections,
                        kwargs={"autocommit": autocommit}, open=True) as pool:
        pool.wait()
        server = make_server("127.0.0.1", 0, flask_app(pool), threaded=connections > 1)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        plan = requests_plan(1, users)[:20 if cards else REQUESTS]

        def client(share: list[tuple[str, int]]) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                for token, page in share:
                    path, params = (("/api/contact-cards", {"ids": ",".join(str(3 * i) for i in range(1, 11))})
                                    if cards else ("/api/contacts", {"page": page}))
                    http.get(path, params=params, headers={"Authorization": f"Bearer {token}"}).raise_for_status()

        try:
            with ThreadPoolExecutor(clients) as threads:
                list(threads.map(client, [plan[i::clients] for i in range(clients)]))
        finally:
            server.shutdown()
            server.server_close()


# ------------------------------------------------------------------ Starlette on an asyncpg pool


def starlette_app(dsn: str):
    import asyncpg
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app):
        async with asyncpg.create_pool(dsn, min_size=4, max_size=4) as pool:
            app.state.pool = pool
            yield

    async def authenticate(conn, request):
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        user = await conn.fetchrow(asyncpg_sql(AUTH_SQL), token)
        if user is None:
            raise HTTPException(401)
        return user

    async def contacts(request):
        page = int(request.query_params.get("page", 0))
        async with request.app.state.pool.acquire() as conn:
            user = await authenticate(conn, request)
            rows = await conn.fetch(asyncpg_sql(PAGE_SQL), user["team_id"], PAGE, page * PAGE)
            await conn.execute(asyncpg_sql(AUDIT_SQL), user["team_id"], user["id"], f"GET /api/contacts?page={page}")
        return JSONResponse([{"id": r["id"], "name": r["name"], "email": r["email"]} for r in rows])

    async def contacts_with_owners(request):
        """N+1: the owner of each contact of the page is fetched by id, one query per distinct owner."""
        page = int(request.query_params.get("page", 0))
        async with request.app.state.pool.acquire() as conn:
            user = await authenticate(conn, request)
            rows = await conn.fetch(asyncpg_sql(PAGE_SQL), user["team_id"], PAGE, page * PAGE)
            owners = {}
            for r in rows:
                if r["owner_id"] not in owners:
                    owners[r["owner_id"]] = await conn.fetchrow("SELECT id, name FROM users WHERE id = $1", r["owner_id"])
            await conn.execute(asyncpg_sql(AUDIT_SQL), user["team_id"], user["id"],
                               f"GET /api/contacts-with-owners?page={page}")
        return JSONResponse([{"id": r["id"], "name": r["name"], "owner": owners[r["owner_id"]]["name"]} for r in rows])

    return Starlette(routes=[Route("/api/contacts", contacts), Route("/api/contacts-with-owners", contacts_with_owners)],
                     lifespan=lifespan)


async def serve_starlette(path: str) -> None:
    """uvicorn on a socket bound to a free port, in this event loop; 100 concurrent requests via httpx."""
    import httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(starlette_app(os.environ["DATABASE_URL"]), log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as http:
            responses = await asyncio.gather(*(
                http.get(path, params={"page": page}, headers={"Authorization": f"Bearer {token}"})
                for token, page in requests_plan(2)))
        for r in responses:
            r.raise_for_status()
    finally:
        server.should_exit = True
        await serving
        sock.close()


# ------------------------------------------------------------------ no web server


async def contact_cards_fan_out() -> None:
    """asyncio.gather of one fetchrow per contact id over a pool of 10: the N+1 spread over 10 connections."""
    import asyncpg

    async with asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=10) as pool:
        user = await pool.fetchrow(asyncpg_sql(AUTH_SQL), token_for(1))
        ids = [r["id"] for r in await pool.fetch("SELECT id FROM contacts WHERE team_id = $1 ORDER BY id LIMIT 50",
                                                 user["team_id"])]
        cards = await asyncio.gather(*(
            pool.fetchrow("SELECT id, name, email, owner_id FROM contacts WHERE team_id = $1 AND id = $2",
                          user["team_id"], contact_id) for contact_id in ids))
        assert len(cards) == 50


async def nurture_job(team_id: int = 2) -> None:
    """A queued job for one team: each due lead updated in its own short transaction."""
    import asyncpg

    async with asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=4) as pool:
        due = await pool.fetch("SELECT id, team_id FROM leads WHERE team_id = $1 AND status = 'stale' "
                               "ORDER BY id LIMIT 30", team_id)
        assert len(due) == 30
        for lead in due:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("UPDATE leads SET status = 'nurture' WHERE id = $1 AND team_id = $2",
                                   lead["id"], lead["team_id"])


HANDLERS = {
    "setup": setup,
    "pyweb-flask-autocommit-pool": lambda: serve_flask(autocommit=True),
    "pyweb-flask-transaction-pool": lambda: serve_flask(autocommit=False),
    "pyweb-flask-one-connection-one-team": lambda: serve_flask(True, connections=1, clients=1, users=ONE_TEAM),
    "pyweb-flask-sequential-one-team": lambda: serve_flask(True, connections=4, clients=1, users=ONE_TEAM),
    "pyweb-flask-one-connection-cards-n-plus-one": lambda: serve_flask(True, connections=1, clients=1, users=ONE_TEAM,
                                                                       cards=True),
    "pyweb-starlette-asyncpg-pool": lambda: asyncio.run(serve_starlette("/api/contacts")),
    "pyweb-starlette-owner-n-plus-one": lambda: asyncio.run(serve_starlette("/api/contacts-with-owners")),
    "pyweb-asyncpg-fan-out": lambda: asyncio.run(contact_cards_fan_out()),
    "pyweb-job-loop-updates": lambda: asyncio.run(nurture_job()),
}


# ------------------------------------------------------------------ the corpus entry


def _needs() -> str | None:
    missing = [m for m in ("flask", "psycopg_pool", "asyncpg", "starlette", "uvicorn", "httpx")
               if importlib.util.find_spec(m) is None]
    return f"missing {', '.join(missing)}" if missing else None


def _w(name: str, expect: Iterable[tuple[str, str]], classes: tuple[int, ...], note: str) -> Workload:
    return Workload(name, python(MODULE, name), frozenset(Expect(k, t) for k, t in expect), classes, note)


WORKLOADS = [
    _w("pyweb-flask-autocommit-pool", (), (1, 3),
       "Flask + psycopg_pool (autocommit, 4 connections), 100 requests from 8 threads: each request is auth by "
       "token, one team page with LIMIT, one audit INSERT; back-to-back requests on a pooled connection are not a loop"),
    _w("pyweb-flask-transaction-pool", (), (1, 3),
       "the same app with transaction-mode connections: pool.connection() commits at exit, one transaction per request"),
    _w("pyweb-flask-one-connection-one-team", (), (1, 3),
       "the same app single-threaded on one persistent connection, one client, the four users of one team: "
       "100 requests back to back for one tenant are still requests, not a loop"),
    _w("pyweb-flask-sequential-one-team", (), (1, 3),
       "a pool of 4 under one sequential client, the four users of one team: the pool hands back an idle "
       "connection, so its requests follow each other on few connections"),
    _w("pyweb-flask-one-connection-cards-n-plus-one", {("n_plus_one_select", "contacts")}, (1,),
       "on that one connection, 20 requests for the same ten contact cards, each card by the id in the "
       "request: the loop inside each request is an N+1 (= ANY), though its values come back request "
       "after request"),
    _w("pyweb-starlette-asyncpg-pool", (), (1, 3),
       "Starlette + asyncpg pool (4) under uvicorn, 100 concurrent requests; the pool resets each connection on "
       "release, between requests"),
    _w("pyweb-starlette-owner-n-plus-one", {("n_plus_one_select", "users")}, (1, 3),
       "per request, the owner of each contact of the page fetched by id (~10 queries): a JOIN or = ANY; "
       "keys from a team-filtered page, so not cross_tenant; the requests around it are not a loop"),
    _w("pyweb-asyncpg-fan-out", {("n_plus_one_select", "contacts")}, (7,),
       "asyncio.gather of 50 pool.fetchrow(contacts WHERE team_id AND id) over a pool of 10: one = ANY($2) query"),
    _w("pyweb-job-loop-updates", {("n_plus_one_update", "leads")}, (4,),
       "a team's job updates 30 due leads one short transaction each (BEGIN; UPDATE; COMMIT): one "
       "UPDATE ... WHERE team_id = $1 AND id = ANY($2)"),
]

APPS = [App("pyweb", "ra_pyweb", python(MODULE, "setup"), WORKLOADS, needs=_needs)]


if __name__ == "__main__":
    HANDLERS[sys.argv[1]]()
