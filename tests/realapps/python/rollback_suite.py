"""A data-layer test suite in the two fixture styles teams use (RA_SUITE_STYLE=psycopg | sqlalchemy).

Run by the corpus as its own pytest session; not collected by this repository's suite (the file name
does not start with ``test_``).
"""

from __future__ import annotations

import os

import pytest

STYLE = os.environ.get("RA_SUITE_STYLE", "psycopg")
TEAM = 1


if STYLE == "psycopg":
    import psycopg

    @pytest.fixture(scope="session")
    def connection():
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            yield conn

    @pytest.fixture
    def db(connection):
        """Each test in a transaction of its own (psycopg begins it at the first statement), rolled back."""
        yield connection
        connection.rollback()

    def create_contacts(db, owner: int, n: int) -> list[int]:
        return [db.execute("INSERT INTO contacts (team_id, owner_id, email, name) VALUES (%s, %s, %s, %s) "
                           "RETURNING id", (TEAM, owner, f"c{i}@example.com", f"Contact {i}")).fetchone()[0]
                for i in range(n)]

    def create_batch(db, owners: list[int]) -> None:
        with db.cursor() as cur:  # one pipelined round trip
            cur.executemany("INSERT INTO contacts (team_id, owner_id, email, name) VALUES (%s, %s, %s, %s)",
                            [(TEAM, o, f"o{o}@example.com", f"Contact of {o}") for o in owners])

    def page(db) -> list[tuple]:
        return db.execute("SELECT id, name, owner_id FROM contacts WHERE team_id = %s ORDER BY id LIMIT 20",
                          (TEAM,)).fetchall()

    def owner_names(db, rows) -> list[str]:
        return [db.execute("SELECT id, name FROM users WHERE id = %s", (r[2],)).fetchone()[1] for r in rows]

else:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from tests.realapps.python.sqlalchemy_app.db import _split
    from tests.realapps.python.sqlalchemy_app.models import Contact

    @pytest.fixture(scope="session")
    def engine():
        rest, name = _split(os.environ["DATABASE_URL"])
        eng = create_engine("postgresql+psycopg:" + rest, connect_args={"application_name": name} if name else {})
        yield eng
        eng.dispose()

    @pytest.fixture
    def db(engine):
        """SQLAlchemy's recipe: the test's Session joins an outer transaction in a savepoint; rolled back."""
        connection = engine.connect()
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        yield session
        session.close()
        outer.rollback()
        connection.close()

    def create_contacts(db, owner: int, n: int) -> list[int]:
        contacts = [Contact(team_id=TEAM, owner_id=owner, email=f"c{i}@example.com", name=f"Contact {i}")
                    for i in range(n)]
        for c in contacts:  # one add and flush per contact, as a factory (factory_boy) creates them
            db.add(c)
            db.flush()
        return [c.id for c in contacts]

    def create_batch(db, owners: list[int]) -> None:
        db.add_all([Contact(team_id=TEAM, owner_id=o, email=f"o{o}@example.com", name=f"Contact of {o}")
                    for o in owners])
        db.flush()  # one multi-row INSERT

    def page(db) -> list:
        return list(db.scalars(select(Contact).where(Contact.team_id == TEAM).order_by(Contact.id).limit(20)))

    def owner_names(db, rows) -> list[str]:
        return [c.owner.name for c in rows]  # lazy load per contact


@pytest.mark.parametrize("owner", range(1, 21))
def test_created_contacts_are_listed(db, owner):
    ids = create_contacts(db, 2 * (1 + owner % 12), 3)
    listed = page(db)
    assert len(ids) == 3 and len(listed) == 3


if os.environ.get("RA_SUITE_N_PLUS_ONE") == "1":
    def test_page_shows_owner_names(db):
        create_batch(db, [2 * owner for owner in range(1, 11)])
        rows = page(db)
        db.expire_all() if STYLE != "psycopg" else None  # a fresh session, as the view would have
        assert len(owner_names(db, rows)) == 10
