"""Every database clients use has its own catalog: pgloupe in front of a server whose URL names one
database still checks tenants and advises on the others, and each finding names its database."""

from __future__ import annotations

import psycopg

from tests.conftest import wait_until


def _database(pg, name: str, schema: str) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg.dsn(database=name), autocommit=True) as conn:
        conn.execute(schema)
    return name


def test_the_catalogs_of_every_database_clients_use(pg, start_proxy):
    app_db = _database(pg, "db_app_one", "CREATE TABLE deals (id int PRIMARY KEY, team_id int NOT NULL, title text);"
                                         "INSERT INTO deals SELECT g, 1 + g % 3, 'd' || g FROM generate_series(1, 50) g")
    other_db = _database(pg, "db_app_two", "CREATE TABLE deals (id int PRIMARY KEY, title text)")  # no tenants here
    proxy = start_proxy(sections={"detectors": {"schema_refresh_s": 1}})  # its URL names the postgres database
    app = proxy.app
    for database in (app_db, other_db):
        with psycopg.connect(proxy.dsn(database=database), autocommit=True, application_name="multi") as conn:
            conn.execute("SELECT id FROM deals WHERE title = %s", ("d7",)).fetchall()
    wait_until(lambda: {app_db, other_db} <= set(app.reviews.current), 20, "both databases' catalogs read")
    assert app.pipeline.schema_for(app_db).get("deals").tenant_column(("team_id",)) == "team_id"
    assert app.pipeline.schema_for(other_db).get("deals").tenant_column(("team_id",)) is None
    with psycopg.connect(proxy.dsn(database=app_db), autocommit=True, application_name="multi") as conn:
        conn.execute("SELECT id FROM deals WHERE title = %s", ("d8",)).fetchall()
    findings = wait_until(lambda: [f for f in app.all_findings() if f["kind"] == "cross_tenant"], 20,
                          "a cross-tenant finding")
    assert [f["databases"] for f in findings] == [[app_db]]  # the same text on the tenant-free database is fine
    advice = [f for f in app.all_findings() if f["kind"] == "missing_tenant_index" and f["tables"] == ["deals"]]
    assert [f["databases"] for f in advice] == [[app_db]]
