"""The tenant check on what ORMs send (issue 16, class 3), as pure functions over built events.

A statement that can reach several tenants' rows is the risk (seed 002): a table read or changed with
no tenant filter, an id from the request with no tenant check. A row fetched or saved by a key a
tenant-checked query returned, a relation joined along a foreign key, a login by session token are
not."""

from __future__ import annotations

import pytest

from detectors.config import DetectorConfig
from detectors.pipeline import Pipeline
from detectors.schema import Schema

from .test_loops import SCHEMA, ev

PAGE = "SELECT id, owner_id FROM contacts WHERE team_id = $1 ORDER BY id LIMIT 20"


def tenant_findings(events, schema: Schema = SCHEMA, **config) -> list[dict]:
    from .test_loops import H

    p = Pipeline(DetectorConfig(**config), schema, hasher=H)
    p.process(events)
    p.flush()
    return [f for f in p.findings.snapshot() if f["kind"] == "cross_tenant"]


def page(at=0.0, conn=1):
    return ev(PAGE, (1,), [(100 + i, 1 + i % 4) for i in range(5)], at=at, conn=conn, sources=((10, 1), (10, 3)))


def test_a_row_saved_or_read_by_a_key_a_tenant_checked_query_returned_is_fine():
    events = [page(),
              ev("UPDATE contacts SET name = $1 WHERE id = $2", ("x", 102), at=0.01),  # save()
              ev("SELECT id, team_id FROM users WHERE id = $1", (3,), [(3, 1)], at=0.02),  # a lazy owner
              ev("SELECT id FROM tasks WHERE contact_id = $1", (104,), at=0.03)]  # its relation, by foreign key
    assert tenant_findings(events) == []


def test_an_id_from_the_request_with_no_tenant_check():
    """Nothing tenant-checked returned 555: a write is an error, a read a warning; small ids of another
    table (users 3 is in the page as an owner) do not vouch for a contact id."""
    write = tenant_findings([page(), ev("UPDATE contacts SET name = $1 WHERE id = $2", ("x", 555), at=0.01)])
    assert [f["severity"] for f in write] == ["error"] and "request" in write[0]["message"]

    def read(contact_team, before=True):
        lookup = ev("SELECT id, team_id, name FROM contacts WHERE id = $1", (3,), [(3, contact_team, "n")], at=0.01,
                    sources=((10, 1), (10, 2), (10, 4)))
        return [(f["severity"], f["message"]) for f in tenant_findings([page(), lookup] if before else [lookup])]

    # the piece of work was for team 1 and read team 2's contact: a row of another tenant came back
    assert [severity for severity, _ in read(2)] == ["warning"] and "another tenant's row" in read(2)[0][1]
    assert read(1) == []  # its own team's row: the check may be in the code
    # the first tenant row of a piece of work, and nothing after it works for that row's tenant: an id from
    # the URL read as is (TypeORM's findOne({ where: { id } }) then save())
    assert [severity for severity, _ in read(2, before=False)] == ["warning"]
    # one connection serving team 1's request, then team 2's: the signed-in user is loaded by the id its
    # session holds (a row of team 2), and the request goes on for team 2: that was its identity
    user = ev("SELECT id, team_id FROM users WHERE id = $1", (9,), [(9, 2)], at=0.01, sources=((11, 1), (11, 2)))
    follow = ev(PAGE, (2,), [(200 + i, 9) for i in range(3)], at=0.02, sources=((10, 1), (10, 3)))
    assert tenant_findings([page(), user, follow]) == []
    unknown = ev("SELECT name FROM contacts WHERE id = $1", (3,), at=0.01)  # no row to tell by
    assert [f["severity"] for f in tenant_findings([page(), unknown])] == ["info"]


@pytest.mark.parametrize("sql,severity", [
    ("SELECT id, name FROM contacts", "error"),  # every team's contacts
    ("SELECT count(*) FROM contacts WHERE name = $1", "error"),
    ("DELETE FROM tasks WHERE done = $1", "critical"),
    ("UPDATE contacts SET name = $1 WHERE name = $2", "critical"),
])
def test_a_statement_that_reaches_every_tenant(sql, severity):
    params = ("x", "y")[: sql.count("$")]
    assert [f["severity"] for f in tenant_findings([ev(sql, params)])] == [severity]


@pytest.mark.parametrize("sql", [
    "SELECT id, team_id FROM users WHERE token = $1",  # the login, before the tenant is known
    # a relation along a foreign key from a team-filtered table (select_related, joinedload, relations)
    "SELECT c.id, u.token FROM contacts c JOIN users u ON u.id = c.owner_id WHERE c.team_id = $1",
    # Drizzle's with: a lateral subquery correlated by the key
    'select "c"."id", "o"."data" from "contacts" "c" left join lateral (select json_build_array("u"."id") as "data" '
    'from (select * from "users" "u" where "u"."id" = "c"."owner_id" limit $1) "u") "o" on true '
    'where "c"."team_id" = $2',
    # joined to a team-filtered aggregate by its key (a leaderboard)
    "SELECT u.id, t.n FROM users u JOIN (SELECT owner_id, count(*) AS n FROM contacts WHERE team_id = $1 "
    "GROUP BY owner_id) t ON t.owner_id = u.id",
])
def test_orm_access_that_stays_in_one_tenant(sql):
    params = (1, 1)[: sql.count("$")]
    assert tenant_findings([ev(sql, params)]) == []


def test_tables_and_lookups_a_team_declares_tenant_free():
    events = [ev("SELECT id, name FROM contacts", ()), ev("SELECT id FROM users WHERE team_id IS NOT NULL", ())]
    assert len(tenant_findings(events)) == 2
    assert tenant_findings(events, tenant_free=frozenset({"contacts", "users"})) == []
    assert DetectorConfig.from_mapping({"tenant_free": ["plans", "users.email"]}).tenant_free == \
        frozenset({"plans", "users.email"})


def test_row_level_security_lowers_the_severity():
    from dataclasses import replace

    schema = Schema({**SCHEMA.tables, "contacts": replace(SCHEMA.tables["contacts"], rls=True)}, loaded=True)
    found = tenant_findings([ev("SELECT id, name FROM contacts", ())], schema)
    assert [f["severity"] for f in found] == ["warning"] and "row-level security" in found[0]["message"]


def test_tenant_free_and_tenant_columns_apply_on_reload():
    """[detectors] is reloaded on SIGHUP (Pipeline.reconfigure): the new tenant-free tables and tenant
    columns hold from the next statement, with the per-shape verdicts worked out afresh."""
    from .test_loops import H

    p = Pipeline(DetectorConfig(), SCHEMA, hasher=H)
    p.process([ev("SELECT id, name FROM contacts", ())])
    assert [f["kind"] for f in p.findings.snapshot()] == ["cross_tenant"]
    p.reset_findings()
    p.reconfigure(DetectorConfig(tenant_free=frozenset({"contacts"})))
    p.process([ev("SELECT id, name FROM contacts", ())])
    assert p.findings.snapshot() == []
    p.reconfigure(DetectorConfig(tenant_columns=("owner_id",)))  # a schema whose tenant column is another
    p.process([ev("SELECT id, name FROM contacts WHERE team_id = $1", (1,))])
    assert [f["details"]["unfiltered"] for f in p.findings.snapshot()] == [["contacts.owner_id"]]


def test_a_reference_scopes_to_a_tenant_only_when_it_names_a_tenant_tables_row():
    """tasks.contact_id names a contact (a tenant's row): deleting by it reaches that contact's tasks. A
    reference to a table every tenant shares scopes nothing: products of a category span every tenant."""
    from dataclasses import replace

    from detectors.schema import Table

    tasks = replace(SCHEMA.tables["tasks"], columns={**SCHEMA.tables["tasks"].columns, "category_id": "integer"})
    schema = Schema({**SCHEMA.tables, "tasks": tasks, "categories": Table("categories", columns={"id": "integer"})},
                    loaded=True)
    by_contact = tenant_findings([ev("DELETE FROM tasks WHERE contact_id = $1", (555,))], schema)
    assert [f["severity"] for f in by_contact] == ["error"] and "request" in by_contact[0]["message"]
    by_category = tenant_findings([ev("DELETE FROM tasks WHERE category_id = $1", (5,))], schema)
    assert [f["severity"] for f in by_category] == ["critical"]


def test_keys_seen_before_the_catalog_are_not_taken_for_ids_from_nowhere():
    """A test suite creates its database and rows, then saves them by id; pgloupe reads that database's
    catalog meanwhile. The rows it saw created before it knew the tables are not ids from the request."""
    from .test_loops import H

    p = Pipeline(DetectorConfig(), hasher=H)  # no catalog for database "d" yet
    p.process([ev("INSERT INTO contacts (team_id, owner_id, name) VALUES ($1, $2, $3) RETURNING id", (1, 2, "n"),
                  [(41,)], at=0.0, sources=((10, 1),))])
    p.schema_loaded(SCHEMA, "d")
    p.process([ev("UPDATE contacts SET name = $1 WHERE id = $2", ("x", 41), at=0.01),
               ev("UPDATE contacts SET name = $1 WHERE id = $2", ("x", 42), at=0.02)])
    p.flush()
    found = [f for f in p.findings.snapshot() if f["kind"] == "cross_tenant"]
    assert [f["statements"] for f in found] == [1]  # 42 was never seen: only that one


def test_a_tenant_free_lookup_column_frees_that_lookup_only():
    """``tenant_free = ["contacts.name"]``: looking contacts up by name is declared fine before the tenant
    is known (a login by e-mail); the same table by another column, or listed whole, still reaches every
    tenant."""
    by_name = [ev("SELECT id, team_id FROM contacts WHERE name = $1", ("ada",))]
    assert [f["severity"] for f in tenant_findings(by_name)] == ["error"]
    free = frozenset({"contacts.name"})
    assert tenant_findings(by_name, tenant_free=free) == []
    others = [ev("SELECT id, team_id FROM contacts WHERE owner_id = $1", (3,)), ev("SELECT id, name FROM contacts")]
    assert len(tenant_findings(others, tenant_free=free)) == 2


def test_statements_sent_before_the_catalog_are_judged_when_it_arrives():
    """A test suite's database, made by the suite: its first statements run before pgloupe has read its
    catalog. One that reaches every tenant is reported once the catalog is read; a tenant-filtered one,
    or a read by a key (presumed tenant-checked then), is not."""
    from .test_loops import H

    p = Pipeline(DetectorConfig(), hasher=H)
    p.process([ev("SELECT id, name FROM contacts", ()), ev("SELECT id, name FROM contacts", ()),
               ev("SELECT id, name FROM contacts WHERE team_id = $1", (1,)),
               ev("SELECT id, team_id FROM contacts WHERE id = $1", (77,))])
    p.flush()
    assert p.findings.snapshot() == []
    assert p.memory()["unjudged"][0] > 0
    p.schema_loaded(SCHEMA, "d")
    found = [f for f in p.findings.snapshot() if f["kind"] == "cross_tenant"]
    assert [(f["example"], f["severity"]) for f in found] == [("SELECT id, name FROM contacts", "error")]
    assert p.memory()["unjudged"][0] == 0
