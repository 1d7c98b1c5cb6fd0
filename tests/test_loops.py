"""Loops and pieces of work as real applications send them, as pure functions over built events (no
server): what tests/realapps shows end to end, here one signal at a time."""

from __future__ import annotations

import itertools

from detectors.config import DetectorConfig
from detectors.pipeline import Pipeline
from detectors.schema import Schema, Table
from proxy.events import StatementEvent
from proxy.protocol.hashing import ValueHasher

H = ValueHasher(b"k" * 32)
_clock = itertools.count()


def h(v) -> str:
    return H.digest(str(v).encode())


def cols(*names: str) -> dict[str, str]:
    return {n: "integer" for n in names}


# contacts (oid 10): id, team_id, owner_id -> users; users (oid 11): id, team_id; tasks (oid 12)
CONTACTS = Table("contacts", columns=cols("id", "team_id", "owner_id", "name"), unique_keys=(("id",),),
                 primary_key=("id",), foreign_keys=((("owner_id",), "users"),), references=frozenset({"users"}),
                 oid=10, numbers=(1, 2, 3, 4), analysed=True)
USERS = Table("users", columns=cols("id", "team_id", "token"), unique_keys=(("id",), ("token",)),
              primary_key=("id",), oid=11, numbers=(1, 2, 3), analysed=True)
TASKS = Table("tasks", columns=cols("id", "team_id", "contact_id", "done"), unique_keys=(("id",),),
              primary_key=("id",), foreign_keys=((("contact_id",), "contacts"),), references=frozenset({"contacts"}),
              oid=12, numbers=(1, 2, 3, 4), analysed=True)
AUDIT = Table("audit", columns=cols("id", "team_id", "user_id", "action"), unique_keys=(("id",),),
              primary_key=("id",), foreign_keys=((("user_id",), "users"),), oid=13, numbers=(1, 2, 3, 4), analysed=True)
SCHEMA = Schema({"contacts": CONTACTS, "users": USERS, "tasks": TASKS, "audit": AUDIT}, loaded=True)
PAGE = "SELECT id, owner_id FROM contacts WHERE team_id = $1 ORDER BY id LIMIT 20"
PAGE_SOURCES = ((10, 1), (10, 3))


def ev(sql, params=(), rows_out=(), *, conn=1, at=None, dur=0.001, tx=("I", "I"), app="web", rows=None,
       sources=(), pipelined=False) -> StatementEvent:
    at = next(_clock) * 0.002 if at is None else at
    result = tuple(tuple(h(v) for v in (r if isinstance(r, tuple) else (r,))) for r in rows_out)
    return StatementEvent(
        conn_id=conn, user="u", database="d", application_name=app, client_addr="127.0.0.1", sql=sql,
        protocol="extended", statement_name="", param_count=len(params), param_hashes=tuple(h(p) for p in params),
        result_hashes=result, started_at=1000.0 + at, duration=dur, command=sql.split()[0].upper(),
        rows=rows if rows is not None else len(rows_out), response_bytes=100, sqlstate=None, tx_before=tx[0],
        tx_after=tx[1], in_transaction=tx != ("I", "I"), pipelined=pipelined, result_sources=sources)


def findings(events, **config) -> dict[str, dict]:
    p = Pipeline(DetectorConfig(**config), SCHEMA, hasher=H)
    p.process(events)
    p.flush()
    return {f["kind"]: f for f in p.findings.snapshot() if f["severity"] != "info"}


def page(at, conn=1, rows=10, **kw):
    return ev(PAGE, (1,), [(100 + i, 1 + i % 4) for i in range(rows)], at=at, conn=conn, sources=PAGE_SOURCES, **kw)


def save(contact: int, at: float, conn: int = 1) -> list[StatementEvent]:
    """TypeORM save(): its own transaction per call."""
    return [ev("START TRANSACTION", at=at, conn=conn, tx=("I", "T")),
            ev("UPDATE contacts SET name = $1 WHERE id = $2", ("x", contact), at=at + 0.001, conn=conn, tx=("T", "T")),
            ev("COMMIT", at=at + 0.002, conn=conn, tx=("T", "I"))]


def test_a_loop_of_small_transactions_is_one_n_plus_one():
    events = [page(0.0)] + [e for i in range(10) for e in save(100 + i, 0.01 + i * 0.005)]
    f = findings(events)["n_plus_one_update"]
    assert f["confidence"] == 0.95 and f["statements"] == 10 and "in 10 transactions" in f["message"]


def test_a_job_loop_across_pool_resets_and_connections_is_traced():
    """asyncpg's pool resets each connection on release; the loop's iterations land on two connections."""
    reset = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"
    events = [page(0.0, conn=1), ev(reset, at=0.005, conn=1)]
    for i in range(10):
        conn = 1 + i % 2
        events += save(100 + i, 0.01 + i * 0.01, conn) + [ev(reset, at=0.013 + i * 0.01, conn=conn)]
    f = findings(events)["n_plus_one_update"]
    assert f["statements"] == 10 and "spread over 2 connections" in f["message"]


def test_pooled_requests_are_not_a_loop():
    """Requests on pooled connections with no reset marker: each its auth lookup and audit insert, one in
    five a page of contacts.
    The audit rows carry their user's id, which the pages list as owners, and which equal contact ids of
    the page (small ids of two tables): still no loop."""
    events = []
    t = 0.0
    for request in range(40):
        conn = 1 + request % 4
        user = 1 + (request // 4) % 4  # each connection serves the four users in turn
        contacts = ev(PAGE, (1,), [(1 + i, 1 + i % 4) for i in range(10)], at=t + 0.001, conn=conn,
                      sources=PAGE_SOURCES)
        events += [ev("SELECT id, team_id FROM users WHERE token = $1", (f"tok{user}",), [(user, 1)], at=t, conn=conn,
                      sources=((11, 1), (11, 2)))]
        if request % 5 == 0:  # one request in five lists contacts; every request writes its audit row
            events.append(contacts)
        events.append(ev("INSERT INTO audit (team_id, user_id, action) VALUES ($1, $2, $3)", (1, user, "view"),
                         at=t + 0.002, conn=conn))
        t += 0.004
    assert findings(events) == {}


def test_a_parent_cut_short_keeps_its_whole_loop():
    """Only the first rows of a result are hashed: the loop's later iterations are its too."""
    parent = ev(PAGE, (1,), [(100 + i, 1) for i in range(16)], at=0.0, rows=40, sources=PAGE_SOURCES)
    lookups = [ev("SELECT name FROM tasks WHERE contact_id = $1 AND team_id = $2", (100 + i, 1), at=0.01 + i * 0.001)
               for i in range(40)]
    f = findings([parent] + lookups)["n_plus_one_select"]
    assert f["statements"] == 40 and f["count"] == 1


def test_statements_run_per_row_of_one_parent_are_one_loop():
    """An MN+1: two lookups per row of the page, one finding with one fix."""
    events = [page(0.0)]
    for i in range(10):
        events += [ev("SELECT done FROM tasks WHERE contact_id = $1 AND team_id = $2", (100 + i, 1), at=0.01 + i * 0.01),
                   ev("SELECT id FROM tasks WHERE contact_id = $1 AND done = $2", (100 + i, 0), at=0.015 + i * 0.01)]
    f = findings(events)["n_plus_one_select"]
    assert f["statements"] == 20 and "2 SELECT shapes per row" in f["message"] and f["example"].count(";") == 1


def test_a_fan_out_with_no_parent_is_one_loop_and_steady_traffic_is_not():
    """Promise.all over a request's ids on a pool of 5: a burst, quiet around it. pgbench -S on 5
    connections looks alike but goes on: no burst."""
    lookup = "SELECT name FROM contacts WHERE id = $1 AND team_id = $2"
    burst = [ev(lookup, (200 + i, 1), at=1.0 + i * 0.0005, conn=1 + i % 5) for i in range(30)]
    f = findings(burst)["n_plus_one_select"]
    assert f["statements"] == 30 and "5 connections at once" in f["message"]
    steady = [ev(lookup, (i % 997, 1), at=1.0 + i * 0.0005, conn=1 + i % 5) for i in range(6000)]
    assert "n_plus_one_select" not in findings(steady)


def test_a_test_suite_is_judged_test_by_test():
    """Django's TestCase: one transaction per class, a savepoint per test rolled back at its end. The
    same INSERTs test after test are not a loop; ten lookups inside one test are."""
    events = [ev("BEGIN", at=0.0, tx=("I", "T"))]
    t = 0.001
    for test in range(20):
        events.append(ev(f'SAVEPOINT "s{test}"', at=t, tx=("T", "T")))
        for row in range(3):
            events.append(ev("INSERT INTO contacts (team_id, owner_id, name) VALUES ($1, $2, $3) RETURNING id",
                             (1, 1, f"c{test}-{row}"), [(1000 + test * 3 + row,)], at=t + 0.0001 * (row + 1),
                             tx=("T", "T"), sources=((10, 1),)))
        events.append(ev(f'ROLLBACK TO SAVEPOINT "s{test}"', at=t + 0.001, tx=("T", "T")))
        t += 0.002
    events.append(ev("ROLLBACK", at=t, tx=("T", "I")))
    assert findings(events) == {}
    lazy = [ev('SAVEPOINT "n"', at=t + 0.01, tx=("T", "T"))] + [
        ev("SELECT id, team_id FROM users WHERE id = $1", (1 + i,), [(1 + i, 1)], at=t + 0.011 + i * 0.0001,
           tx=("T", "T")) for i in range(10)] + [ev('ROLLBACK TO SAVEPOINT "n"', at=t + 0.02, tx=("T", "T"))]
    assert "n_plus_one_select" in findings(events[:-1] + lazy + events[-1:])


def _suite_rolling_back(tests: int, outer: bool) -> tuple[list[StatementEvent], float]:
    """pytest fixtures: each test in a transaction of its own, rolled back at its end (``outer``: SQLAlchemy's
    recipe, the test's session in a savepoint released inside it)."""
    events, t = [], 0.0
    for test in range(tests):
        events.append(ev("BEGIN", at=t, tx=("I", "T")))
        if outer:
            events.append(ev("SAVEPOINT sa_savepoint_1", at=t + 0.0001, tx=("T", "T")))
        for row in range(3):
            events.append(ev("INSERT INTO contacts (team_id, owner_id, name) VALUES ($1, $2, $3) RETURNING id",
                             (1, 1, f"c{test}-{row}"), [(1000 + test * 3 + row,)], at=t + 0.0002 * (row + 1),
                             tx=("T", "T"), sources=((10, 1),)))
        if outer:
            events.append(ev("RELEASE SAVEPOINT sa_savepoint_1", at=t + 0.0009, tx=("T", "T")))
        events.append(ev("ROLLBACK", at=t + 0.001, tx=("T", "I")))
        t += 0.002
    return events, t


def test_a_suite_rolling_back_each_tests_transaction_is_judged_test_by_test():
    """Sixty INSERTs over twenty tests, each test's transaction rolled back, are no loop; ten lookups
    inside one test are. A read-only transaction rolled back (an ORM session closing) ends nothing."""
    for outer in (False, True):
        events, t = _suite_rolling_back(20, outer)
        assert findings(events) == {}, outer
        lazy = [ev("BEGIN", at=t, tx=("I", "T"))] + [
            ev("SELECT id, team_id FROM users WHERE id = $1", (1 + i,), [(1 + i, 1)], at=t + 0.0001 * (i + 1),
               tx=("T", "T")) for i in range(10)] + [
            ev("INSERT INTO audit (team_id, user_id, action) VALUES ($1, $2, $3)", (1, 1, "x"), at=t + 0.0015,
               tx=("T", "T")), ev("ROLLBACK", at=t + 0.0016, tx=("T", "I"))]
        assert "n_plus_one_select" in findings(events + lazy), outer
    # a session per row of a page, each closed by a ROLLBACK, is still one loop over the page
    sessions = [ev(PAGE, (1,), [(c, 100 + c) for c in range(10)], at=0.0, sources=PAGE_SOURCES)]
    sessions += [e for i in range(10) for e in (
        ev("BEGIN", at=0.001 + i * 0.001, tx=("I", "T")),
        ev("SELECT id, team_id FROM users WHERE id = $1", (100 + i,), [(100 + i, 1)], at=0.0012 + i * 0.001,
           tx=("T", "T")),
        ev("ROLLBACK", at=0.0014 + i * 0.001, tx=("T", "I")))]
    assert "n_plus_one_select" in findings(sessions)


def test_a_suite_truncating_tables_between_tests_is_judged_test_by_test():
    """Django's TransactionTestCase and pytest fixtures that commit: each test creates the same rows and
    reads them back, and the tables are truncated after it. The same statements test after test are
    neither a loop nor a repeat, and its fixtures (a user, then contacts it owns, in autocommit) are no
    missing transaction; ten lookups inside one test are a loop."""
    events, t = [], 0.0
    for test in range(20):
        events.append(ev("INSERT INTO users (team_id, token) VALUES ($1, $2) RETURNING id", (1, "fixture"), [(7,)],
                         at=t - 0.0001, sources=((11, 1),)))
        for row in range(3):
            events.append(ev("INSERT INTO contacts (team_id, owner_id, name) VALUES ($1, $2, $3) RETURNING id",
                             (1, 7, f"Contact {row}"), [(1000 + test * 3 + row,)], at=t + 0.0002 * row,
                             sources=((10, 1),)))
        events.append(ev("SELECT id, name FROM contacts WHERE team_id = $1 ORDER BY id", (1,),
                         [(1000 + test * 3 + r, f"Contact {r}") for r in range(3)], at=t + 0.0008))
        events.append(ev('TRUNCATE "contacts", "tasks" RESTART IDENTITY CASCADE', at=t + 0.001))
        t += 0.002
    assert findings(events) == {}
    lazy = [ev(PAGE, (1,), [(c, 100 + c) for c in range(10)], at=t, sources=PAGE_SOURCES)] + [
        ev("SELECT id, team_id FROM users WHERE id = $1", (100 + i,), [(100 + i, 1)], at=t + 0.0001 * (i + 1))
        for i in range(10)]
    assert "n_plus_one_select" in findings(events + lazy)


def _requests(n: int, *, users: int = 4, cards: int = 0, config: int = 0, pages: int = 5,
              shuffled: bool = False) -> list[StatementEvent]:
    """One tenant's web requests back to back on one persistent connection: auth by session token (``users``
    users of team 1 in turn, or at random), the team's page (one of ``pages``), ``cards`` cards by ids from
    the request, ``config`` reads of the team's settings, one audit row."""
    import random

    rng = random.Random(5)
    events, t = [], 0.0
    for r in range(n):
        user = 1 + (rng.randrange(users) if shuffled else r % users)
        events.append(ev("SELECT id, team_id FROM users WHERE token = $1", (f"tok{user}",), [(user, 1)], at=t,
                         sources=((11, 1), (11, 2))))
        events.append(ev("SELECT id, owner_id FROM contacts WHERE team_id = $1 ORDER BY id LIMIT 20 OFFSET $2",
                         (1, 20 * (r % pages)), [(c, user) for c in range(20)], at=t + 0.0003, sources=PAGE_SOURCES))
        for i in range(config):
            events.append(ev("SELECT plan FROM teams WHERE id = $1", (1,), [("pro",)], at=t + 0.0004 + i * 0.0001))
        for i in range(cards):
            events.append(ev("SELECT id, name FROM contacts WHERE team_id = $1 AND id = $2", (1, 500 + i),
                             [(500 + i, "n")], at=t + 0.0008 + i * 0.0001, sources=((10, 1), (10, 4))))
        # (as an ORM writes it: the row's creation time among the values, new in every request)
        events.append(ev("INSERT INTO audit (team_id, user_id, action, created_at) VALUES ($1, $2, $3, $4)",
                         (1, user, f"GET {r % pages}", f"12:00:{r / 100:.4f}"), at=t + 0.002))
        t += 0.004
    return events


def test_one_tenants_requests_back_to_back_on_one_connection_are_not_a_loop():
    """A single-threaded worker on a persistent connection, a few users of one team: the requests' lookups
    come back with values seen before, which marks where requests begin. A loop inside each request
    (cards by ids from the request) is still an N+1, and a read repeated within a request still a repeat."""
    assert findings(_requests(40)) == {}
    # the same page every time (nothing but the sign-in tells requests apart), users in turn or at random
    assert findings(_requests(40, pages=1)) == {}
    assert findings(_requests(40, pages=1, shuffled=True)) == {}
    looped = findings(_requests(20, cards=10))
    assert set(looped) == {"n_plus_one_select"}, looped
    assert looped["n_plus_one_select"]["example"].startswith("SELECT id, name FROM contacts")
    assert set(findings(_requests(20, config=3))) == {"repeated_identical"}


def test_a_later_test_reusing_fixture_values_is_not_a_loop_over_an_earlier_tests_result():
    """The class's fixtures (setUpTestData) run before the first savepoint and stay; each test then
    creates "Contact 0".."Contact 2" again. One test lists their names: the next tests' INSERTs carry
    those values, but the listed rows were undone with their test, so they are no loop's parent (here
    with no column sources, as before the test database's catalog is read: every value could be a key)."""
    events = [ev("BEGIN", at=0.0, tx=("I", "T")),
              ev("INSERT INTO users (team_id, token) VALUES ($1, $2) RETURNING id", (1, "t"), [(1,)], at=0.0005,
                 tx=("T", "T"), sources=((11, 1),))]
    t = 0.001
    for test in range(6):
        events.append(ev(f'SAVEPOINT "s{test}"', at=t, tx=("T", "T")))
        for row in range(3):
            events.append(ev("INSERT INTO contacts (team_id, owner_id, name) VALUES ($1, $2, $3) RETURNING id",
                             (1, 1, f"Contact {row}"), [(1000 + test * 3 + row,)], at=t + 0.0001 * (row + 1),
                             tx=("T", "T"), sources=((10, 1),)))
        if test == 1:
            events.append(ev("SELECT name FROM contacts WHERE team_id = $1 ORDER BY name", (1,),
                             [(f"Contact {row}",) for row in range(3)], at=t + 0.0005, tx=("T", "T")))
        events.append(ev(f'ROLLBACK TO SAVEPOINT "s{test}"', at=t + 0.001, tx=("T", "T")))
        t += 0.002
    events.append(ev("ROLLBACK", at=t, tx=("T", "I")))
    assert findings(events) == {}


def test_related_writes_committed_apart_need_a_real_link():
    """The task's contact_id is the id the contact INSERT returned: one unit of work, two commits. Two
    writes whose values meet only as small numbers of unrelated tables are not linked."""
    contact = ev("INSERT INTO contacts (team_id, owner_id, name) VALUES ($1, $2, $3) RETURNING id",
                 (1, 2, "n"), [(7,)], at=0.0, sources=((10, 1),))
    task = ev("INSERT INTO tasks (team_id, contact_id, done) VALUES ($1, $2, $3)", (1, 7, 0), at=0.001)
    assert findings([contact, task])["missing_transaction"]["tables"] == ["contacts", "tasks"]
    audit = ev("INSERT INTO audit (team_id, user_id, action) VALUES ($1, $2, $3) RETURNING id", (1, 3, "x"),
               [(7,)], at=0.0, sources=((13, 1),))
    other = ev("INSERT INTO tasks (team_id, contact_id, done) VALUES ($1, $2, $3)", (1, 7, 0), at=0.001)
    assert "missing_transaction" not in findings([audit, other])


def test_join_candidate_only_when_the_first_query_returned_little_but_keys():
    top = ev("SELECT owner_id, count(*) FROM contacts WHERE team_id = $1 GROUP BY owner_id LIMIT 3", (1,),
             [(5, 9), (6, 4), (7, 1)], at=0.0, sources=((10, 3), (0, 0)))
    users = ev("SELECT id, token FROM users WHERE id = ANY($1) AND team_id = $2", (0, 1), at=0.001)
    users.array_hashes = ((0, (h(5), h(6), h(7))),)
    assert "join_candidate" in findings([top, users])
    # a page of whole rows, then its owners in one batch: the fix for an N+1 (prefetch_related)
    whole = ev("SELECT id, owner_id, name, team_id FROM contacts WHERE team_id = $1 LIMIT 3", (1,),
               [(1, 5, "a", 1), (2, 6, "b", 1), (3, 7, "c", 1)], at=0.0)
    assert "join_candidate" not in findings([whole, users])


def test_every_column_of_a_wide_table_for_a_list_is_select_star():
    wide = Table("activities", columns={"id": "integer", "team_id": "integer", "meta": "jsonb"},
                 avg_width={"meta": 900}, analysed=True)
    narrow = Table("activities", columns={"id": "integer", "team_id": "integer", "meta": "jsonb"},
                   avg_width={}, analysed=True)
    sql = 'SELECT "activities"."id", "activities"."team_id", "activities"."meta" FROM "activities" WHERE team_id = $1'
    for table, expected in ((wide, True), (narrow, False)):
        p = Pipeline(DetectorConfig(), Schema({"activities": table}, loaded=True), hasher=H)
        p.process([ev(sql, (1,), [(1,), (2,), (3,)])])
        assert ("select_star" in {f["kind"] for f in p.findings.snapshot()}) is expected
    p = Pipeline(DetectorConfig(), Schema({"activities": wide}, loaded=True), hasher=H)
    p.process([ev(sql.replace("team_id = $1", "id = $1 AND team_id = $2"), (1, 1), [(1,)])])  # one row to edit
    assert not p.findings.snapshot()


def test_a_loop_inside_each_transaction_of_busy_pooled_connections_is_an_n_plus_one():
    """pgbench's N+1 script on 4 connections: each transaction inserts 20 rows one by one. The
    connections are never idle (one piece of work spans their transactions) and all run the shape at
    once (shared), yet the loop inside each transaction is an N+1."""
    events = []
    for txn in range(3):
        for conn in range(1, 5):
            t = txn * 0.05 + conn * 0.001
            events.append(ev("BEGIN", at=t, conn=conn, tx=("I", "T")))
            for k in range(20):
                events.append(ev("INSERT INTO audit (team_id, user_id, action) VALUES ($1, $2, $3)",
                                 (1, 100 + txn * 10 + conn, k), at=t + 0.0001 * (k + 1), conn=conn, tx=("T", "T")))
            events.append(ev("COMMIT", at=t + 0.003, conn=conn, tx=("T", "I")))
    events.sort(key=lambda e: e.started_at)
    f = findings(events)["n_plus_one_insert"]
    assert f["confidence"] == 0.9 and "inside one transaction" in f["message"]
