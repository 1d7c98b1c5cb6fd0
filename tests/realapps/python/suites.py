"""Transactional pytest suites, as teams write them for an app's data layer: every test runs in a
transaction that a fixture rolls back at its end, so the same rows are created test after test.

Two fixture styles, each run as a real pytest session on ``rollback_suite.py``: psycopg with one
connection for the session and a ``ROLLBACK`` after each test, and SQLAlchemy's recipe for joining a
session to an external transaction (``connection.begin()``, the test's ``Session`` in a savepoint it
releases, the outer transaction rolled back). With ``RA_SUITE_N_PLUS_ONE=1`` one more test reads the
owner of each contact of a page one query at a time.

    python -m tests.realapps.python.suites setup
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from tests.realapps.harness import App, Expect, Workload, python

MODULE = "tests.realapps.python.suites"
SUITE = Path(__file__).resolve().parent / "rollback_suite.py"  # not test_*.py: this repository does not collect it

DDL = """
CREATE TABLE teams (id serial PRIMARY KEY, name varchar(120) NOT NULL);
CREATE TABLE users (id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id), name varchar(120) NOT NULL,
                    email varchar(200) NOT NULL, session_token varchar(64) NOT NULL UNIQUE);
CREATE INDEX ix_users_team_id ON users (team_id);
CREATE TABLE contacts (id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id),
                       owner_id integer NOT NULL REFERENCES users(id), email varchar(200) NOT NULL,
                       name varchar(120) NOT NULL, metadata jsonb, created_at timestamp NOT NULL DEFAULT now());
CREATE INDEX ix_contacts_team_created ON contacts (team_id, created_at);
CREATE INDEX ix_contacts_owner_id ON contacts (owner_id);
INSERT INTO teams (name) VALUES ('acme'), ('globex');
INSERT INTO users (team_id, name, email, session_token)
    SELECT 1 + g % 2, 'user ' || g, 'user' || g || '@example.com', 'token-' || g FROM generate_series(1, 24) g;  -- team 1: the even ids
"""


def setup() -> None:
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(DDL)


def pytest_suite() -> list[str]:
    """The suite as CI runs it: its own pytest session, with no conftest of this repository (the fixture
    style comes from ``RA_SUITE_STYLE``)."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-o", "addopts=",
            str(SUITE)]


def _needs() -> str | None:
    missing = [m for m in ("pytest", "psycopg", "sqlalchemy") if importlib.util.find_spec(m) is None]
    return f"missing {', '.join(missing)}" if missing else None


def _suite(name: str, style: str, expect: set[tuple[str, str]], note: str, n_plus_one: bool = False) -> Workload:
    env = {"RA_SUITE_STYLE": style, **({"RA_SUITE_N_PLUS_ONE": "1"} if n_plus_one else {})}
    return Workload(name, pytest_suite(), frozenset(Expect(k, t) for k, t in expect), (2,), note, env)


APPS = [App("suites", "ra_suites", python(MODULE, "setup"), [
    _suite("pytest-rollback-suite", "psycopg", set(),
           "20 tests, 3 contacts each, each test's transaction rolled back by a fixture (BEGIN ... ROLLBACK on "
           "one connection): the same INSERTs test after test are not an N+1"),
    _suite("pytest-rollback-suite-n-plus-one", "psycopg", {("n_plus_one_select", "users")},
           "the same suite plus one test that reads the owner of each of 10 contacts one query at a time",
           n_plus_one=True),
    _suite("sa-outer-transaction-suite", "sqlalchemy", set(),
           "SQLAlchemy's join-an-external-transaction recipe: BEGIN, the test's Session in a savepoint it "
           "releases, ROLLBACK; 20 tests of 3 contacts each"),
    _suite("sa-outer-transaction-suite-n-plus-one", "sqlalchemy", {("n_plus_one_select", "users")},
           "the same with one test touching contact.owner lazily for 10 contacts", n_plus_one=True),
], needs=_needs)]


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup()
