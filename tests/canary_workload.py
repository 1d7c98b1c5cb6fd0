"""A workload whose values are canaries: every kind of finding, with secrets in literals, bound parameters
and the password. Run as a script (``DATABASE_URL`` names the proxy) or imported by tests/test_canary.py."""

from __future__ import annotations

import os
import sys

import psycopg

LITERAL = "canary-literal-c4n4ry1"
PARAM = "canary-param-c4n4ry2"
TEAM = 424242  # also a value: the tenant id bound or interpolated below
ESTRING = "canary-estring-c4n4ry3"  # in an E'' literal, with an escape
DOLLAR = "canary-dollar-c4n4ry4"  # in a dollar-quoted string
LOOKALIKE = "canary-lookalike-c4n4ry5"  # between a '/*' literal and a '*/' one: not a sqlcommenter tag
ORM = "canary-orm-c4n4ry6"  # interpolated by an ORM-style client, the same in every execution of a loop
CANARIES = (LITERAL, PARAM, str(TEAM), ESTRING, DOLLAR, LOOKALIKE, ORM)


def prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cn_messages, cn_contacts")
        conn.execute("CREATE TABLE cn_contacts (id int PRIMARY KEY, team_id int NOT NULL, email text, "
                     "notes text, action text, profile jsonb, created_at timestamptz DEFAULT now())")
        conn.execute("CREATE TABLE cn_messages (id serial PRIMARY KEY, team_id int NOT NULL, contact_id int, "
                     "body text)")
        conn.execute("INSERT INTO cn_contacts (id, team_id, email, profile) SELECT g, %s, 'x' || g, "
                     "jsonb_build_object('bio', repeat('b', 800)) FROM generate_series(1, 40) g", (TEAM,))


def run(dsn: str) -> None:
    # interpolated literals (ClientCursor): an N+1 traced to its parent, SELECT *, no tenant filter, OFFSET
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM cn_contacts WHERE team_id = %s ORDER BY id", (TEAM,))]
        for i in ids[:15]:
            conn.execute("SELECT * FROM cn_contacts WHERE id = %s AND email <> %s", (i, LITERAL)).fetchall()
        conn.execute("SELECT email FROM cn_contacts WHERE email = %s", (LITERAL,)).fetchall()
        conn.execute("SELECT * FROM cn_contacts WHERE team_id = %s AND email <> %s", (TEAM, LITERAL)).fetchall()
        conn.execute("SELECT id FROM cn_contacts WHERE team_id = %s ORDER BY id LIMIT 5 OFFSET 5000", (TEAM,))
        conn.execute("SELECT pg_sleep(0.25), %s", (LITERAL,))
        try:
            conn.execute("SELECT %s::int", (LITERAL,))  # an error whose server message holds the value
        except psycopg.Error:
            pass
    # bound parameters: a write loop outside a transaction, repeated identical lookups
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(12):
            conn.execute("INSERT INTO cn_messages (team_id, contact_id, body) VALUES (%s, %s, %s)", (TEAM, i, PARAM))
        for _ in range(5):
            conn.execute("SELECT notes FROM cn_contacts WHERE team_id = %s AND email = %s", (TEAM, PARAM)).fetchall()
        conn.execute("UPDATE cn_contacts SET notes = %s WHERE id = %s", (PARAM, 1))
    # E'' and dollar-quoted literals beside a bound parameter, in loops; a sqlcommenter lookalike made of
    # literals; a Django-style statement interpolating the same value in every execution of a loop
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(6):
            conn.execute(f"SELECT * FROM cn_contacts WHERE id = %s AND notes IS DISTINCT FROM E'{ESTRING}\\n'",
                         (i,)).fetchall()
            conn.execute(f"SELECT * FROM cn_contacts WHERE id = %s AND email <> $q${DOLLAR}$q$", (i,)).fetchall()
        conn.execute(f"SELECT * FROM cn_contacts WHERE email <> '/*' AND action = '{LOOKALIKE}' AND email <> '*/'"
                     ).fetchall()
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        for i in range(8):
            conn.execute('SELECT "cn_contacts"."id", "cn_contacts"."notes" FROM "cn_contacts" WHERE '
                         '"cn_contacts"."id" = %s AND "cn_contacts"."email" = %s AND "cn_contacts"."team_id" = %s',
                         (i, ORM, TEAM)).fetchall()
    # two related writes, each committed on its own
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cn_messages (team_id, contact_id, body) VALUES (%s, %s, %s)", (TEAM, 7, PARAM))
        conn.execute("UPDATE cn_contacts SET notes = %s WHERE team_id = %s AND id = %s", (PARAM, TEAM, 7))
        with conn.transaction():
            conn.execute("SELECT pg_sleep(0.2)")
            conn.execute("UPDATE cn_contacts SET notes = %s WHERE team_id = %s AND id = 2", (PARAM, TEAM))


if __name__ == "__main__":
    url = os.environ["DATABASE_URL"]
    run(url)
    sys.exit(0)
