"""Session-cookie sign-in, as Django's auth, Flask-Login and passport's deserializeUser do it.

Each request reads its session row (a table with no tenant: the user id is inside its data), loads the
signed-in user by that id (a primary key no earlier query returned), then works for the user's team.
Served by one persistent connection (a single-threaded worker, Django's runserver) and by a pool of 4
under 8 client threads, for users of three teams in turn: loading the user is how each request learns
its tenant, not a missing tenant check. The IDOR handler is the risk seed 002 names: GET
/contacts/<id> reads the contact by the id in the URL, and the id is another team's.

    python -m tests.realapps.python.sessions (setup | <workload name>)
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.realapps.harness import App, Expect, Workload, python

MODULE = "tests.realapps.python.sessions"
REQUESTS = 60

DDL = """
CREATE TABLE teams (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), name text NOT NULL,
                    last_seen timestamptz);
CREATE INDEX users_team_id_idx ON users (team_id);
CREATE TABLE sessions (key text PRIMARY KEY, data text NOT NULL, expires timestamptz NOT NULL);
CREATE TABLE contacts (id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id),
                       owner_id integer NOT NULL REFERENCES users(id), name text NOT NULL);
CREATE INDEX contacts_team_id_idx ON contacts (team_id, id);
INSERT INTO teams (name) VALUES ('acme'), ('globex'), ('initech');
INSERT INTO users (team_id, name) SELECT 1 + (g - 1) % 3, 'user ' || g FROM generate_series(1, 9) g;
INSERT INTO sessions SELECT 'sess-' || g, '{"user_id": ' || g || '}', now() + interval '1 day'
    FROM generate_series(1, 9) g;
INSERT INTO contacts (team_id, owner_id, name)
    SELECT 1 + (g - 1) % 3, 1 + (g - 1) % 9, 'contact ' || g FROM generate_series(1, 90) g;
"""


def setup() -> None:
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(DDL)


def signed_in(conn, session_key: str) -> tuple[int, int]:
    """(user id, team id) of the session's user: the session row, then the user by the id it holds."""
    (data,) = conn.execute("SELECT data FROM sessions WHERE key = %s AND expires > now()", (session_key,)).fetchone()
    user_id = json.loads(data)["user_id"]
    uid, team = conn.execute("SELECT id, team_id FROM users WHERE id = %s", (user_id,)).fetchone()
    return uid, team


def contacts_page(conn, session_key: str) -> int:
    uid, team = signed_in(conn, session_key)
    rows = conn.execute("SELECT id, name, owner_id FROM contacts WHERE team_id = %s ORDER BY id LIMIT 10",
                        (team,)).fetchall()
    conn.execute("UPDATE users SET last_seen = now() WHERE id = %s", (uid,))
    return len(rows)


def one_connection() -> None:
    """A single-threaded worker with one persistent connection: users of the three teams in turn."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        for i in range(REQUESTS):
            contacts_page(conn, f"sess-{1 + i % 9}")


def pooled() -> None:
    """A pool of 4 connections, 8 client threads."""
    from psycopg_pool import ConnectionPool

    with ConnectionPool(os.environ["DATABASE_URL"], min_size=4, max_size=4, kwargs={"autocommit": True}) as pool:
        def request(i: int) -> int:
            with pool.connection() as conn:
                return contacts_page(conn, f"sess-{1 + i % 9}")

        with ThreadPoolExecutor(8) as threads:
            list(threads.map(request, range(REQUESTS)))


def contact_by_url_id() -> None:
    """GET /contacts/2 by user 1 (team 1): contact 2 is team 2's, read by the id in the URL as is."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        uid, team = signed_in(conn, "sess-1")
        conn.execute("SELECT id, team_id, name, owner_id FROM contacts WHERE id = %s", (2,)).fetchone()
        conn.execute("UPDATE users SET last_seen = now() WHERE id = %s", (uid,))


HANDLERS = {"session-auth-one-connection": one_connection, "session-auth-pooled": pooled,
            "session-contact-by-url-id": contact_by_url_id}

APPS = [App("sessions", "ra_sessions", python(MODULE, "setup"), [
    Workload("session-auth-one-connection", python(MODULE, "session-auth-one-connection"), frozenset(), (1, 3),
             "60 requests on one persistent connection, users of three teams in turn: the session row, the user "
             "by the id it holds, the user's team's page; loading the user is how the request learns its team"),
    Workload("session-auth-pooled", python(MODULE, "session-auth-pooled"), frozenset(), (1, 3),
             "the same requests on a pool of 4 under 8 threads"),
    Workload("session-contact-by-url-id", python(MODULE, "session-contact-by-url-id"),
             frozenset({Expect("cross_tenant", "contacts")}), (3,),
             "GET /contacts/<id>: the contact read by the id in the URL, no team check, and it is team 2's"),
])]


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup()
    else:
        HANDLERS[sys.argv[1]]()
