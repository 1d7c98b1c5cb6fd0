"""The findings store on its own, against real SQLite files and a real PostgreSQL: migrations from an
empty store and from the previous version, batches applied once, exact counts under concurrent
writers, one regression however many replicas see it, retention and the size bound, clear errors."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import psycopg
import pytest

from proxy.store.postgres import PostgresStore
from proxy.store.records import Batch, Change, Deploy
from proxy.store.schema import MIGRATIONS, VERSION
from proxy.store.sql import StoreError
from proxy.store.sqlite import SqliteStore

KEY = ("n_plus_one_select", "fp-orders-by-id")


def change(n: int = 1, statements: int = 6, at: float | None = None, severity: str = "warning",
           kind: str = KEY[0], fingerprint: str = KEY[1], app: str = "web") -> Change:
    at = time.time() if at is None else at
    c = Change.of({"kind": kind, "fingerprint": fingerprint, "severity": severity, "confidence": 0.9,
                   "tables": ["orders"], "databases": ["app"], "example": "SELECT * FROM orders WHERE id = %s",
                   "suggestion": "one query with = ANY($1)", "message": f"{statements} SELECTs", "applications": [app],
                   "tags": {"route": ["/orders"]}, "first_seen": at - 1, "last_seen": at, "p95_ms": 2.0}, "runtime")
    c.add(int(at // 3600), n, n * statements, n * 1.5)
    return c


@pytest.fixture
def pg_store(pg):
    """A fresh database on the test server for each test's store, dropped after."""
    name = f"store_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    made: list[PostgresStore] = []

    def make(schema: str = "pgloupe") -> PostgresStore:
        store = PostgresStore(pg.dsn(database=name), schema)
        store.connect()
        made.append(store)
        return store
    make.dsn = pg.dsn(database=name)
    yield make
    for store in made:
        store.close()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "findings.sqlite3"))
        s.connect()
        yield s
        s.close()
    else:
        yield request.getfixturevalue("pg_store")()


def test_migrates_an_empty_store_and_is_idempotent(store):
    assert store.migrate() == 0
    assert store.version() == VERSION
    assert store.migrate() == VERSION  # a second start finds it current and changes nothing
    assert store.read() == {}


def _apply_upto(store, last: int) -> None:
    """The store as an earlier pgloupe left it: migrations 1 to ``last`` only."""
    from proxy.store.schema import MIGRATIONS_TABLE
    with store.transaction():
        store.lock_migrations()
        store.execute(store.sql(MIGRATIONS_TABLE))
        for version, _what, statements in MIGRATIONS[:last]:
            for statement in statements:
                store.execute(store.sql(statement))
            store.execute(store.sql("INSERT INTO {s}migrations (version, applied_at) VALUES (?, ?)"), version, 0.0)


def _apply_first(store) -> None:
    """The store as the first version left it: migration 1 only, with a finding in it."""
    _apply_upto(store, 1)
    with store.transaction():
        store.execute(store.sql(
            "INSERT INTO {s}findings (kind, fingerprint, source, severity, confidence, tables, databases, example, "
            "suggestion, message, applications, tags, details, first_seen, last_seen, count, statements, total_ms) "
            "VALUES (?, ?, 'runtime', 'warning', 0.9, '[\"orders\"]', '[]', 'SELECT %s', 's', 'm', '[]', '{}', '{}', "
            "?, ?, 7, 42, 3.5)"), KEY[0], KEY[1], 1000.0, time.time())


def test_migrates_from_the_previous_version_keeping_findings(store):
    _apply_first(store)
    assert store.migrate() == 1
    record = store.read()[KEY]
    assert (record["count"], record["statements"], record["first_seen"], record["state"]) == (7, 42, 1000.0, "open")
    # and goes on counting from there
    store.write(Batch("run", 1, time.time(), "r1", [change(n=2)]))
    assert store.read()[KEY]["count"] == 9 and store.read()[KEY]["first_seen"] == 1000.0


def test_migrates_from_version_2_keeping_one_marker_per_deploy_tag(store):
    """Version 2 let two replicas mark one deploy tag twice; version 3 keeps the first and forbids more."""
    _apply_upto(store, 2)
    with store.transaction():
        for at, replica in ((100.0, "a"), (100.5, "b")):
            store.execute(store.sql("INSERT INTO {s}deploys (name, at, replica, source) VALUES (?, ?, ?, ?)"),
                          "v3", at, replica, "sqlcommenter")
        store.execute(store.sql("INSERT INTO {s}deploys (name, at, replica, source) VALUES ('v3', 200.0, 'c', 'cli')"))
    assert store.migrate() == 2
    assert [(d["at"], d["source"]) for d in store.deploys()] == [(200.0, "cli"), (100.0, "sqlcommenter")]
    store.write(Batch("d", 1, time.time(), "d", [], [Deploy("v3", time.time(), "sqlcommenter")]))
    assert len(store.deploys()) == 2


def test_refuses_a_store_newer_than_itself(store):
    store.migrate()
    with store.transaction():
        store.execute(store.sql("INSERT INTO {s}migrations (version, applied_at) VALUES (?, ?)"), VERSION + 1, 0.0)
    with pytest.raises(StoreError, match="newer than this pgloupe") as info:
        store.migrate()
    assert info.value.fatal


def test_a_batch_sent_twice_counts_once(store):
    store.migrate()
    batch = Batch("run-a", 1, time.time(), "r1", [change(n=3)], [Deploy("v1", time.time(), "cli")])
    store.write(batch)
    store.write(batch)  # the commit's confirmation was lost: the replica sends it again
    record = store.read()[KEY]
    assert (record["count"], record["statements"]) == (3, 18)
    assert [d["name"] for d in store.deploys()] == ["v1"]
    store.write(Batch("run-b", 1, time.time(), "r1", [change(n=1)]))  # another process's first batch
    assert store.read()[KEY]["count"] == 4


def test_labels_merge_and_severity_only_rises(store):
    store.migrate()
    store.write(Batch("r", 1, time.time(), "r1", [change(severity="error", app="web")]))
    store.write(Batch("r", 2, time.time(), "r2", [change(severity="warning", app="worker")]))
    record = store.read()[KEY]
    assert record["severity"] == "error" and record["applications"] == ["web", "worker"]
    assert store.history(*KEY, 0)["replicas"] == {"r1": 1, "r2": 1}


def test_fixed_then_regressed_once(store):
    store.migrate()
    t0 = time.time()
    store.write(Batch("r", 1, t0, "r1", [change(n=2, at=t0 - 100)]))
    assert store.maintain(t0, 50, 2, 86400, 100)["fixed"] == 1
    assert store.read()[KEY]["state"] == "fixed"
    regressed = store.write(Batch("r", 2, t0, "r1", [change(at=t0 + 1)]))
    assert [r["state"] for r in regressed] == ["regressed"]
    assert store.write(Batch("r", 3, t0, "r1", [change(at=t0 + 2)])) == []  # still regressed: no second alert
    assert store.read()[KEY]["state"] == "regressed"


def test_advice_is_not_fixed_by_time(store):
    """Advice describes the database now: quiet or not, it holds until a review no longer gives it."""
    store.migrate()
    t0 = time.time()
    advice = change(kind="missing_index", fingerprint="ix", at=t0 - 1000)
    advice.source, advice.hours, advice.gauge = "advisor", {}, (5, 5, 1.0)
    store.write(Batch("r", 1, t0, "r1", [advice]))
    assert store.maintain(t0, 50, 2, 86400, 100)["fixed"] == 0


def test_a_reopened_finding_is_not_fixed_again_at_once(store):
    store.migrate()
    t0 = time.time()
    store.write(Batch("r", 1, t0, "r1", [change(n=2, at=t0 - 100)]))
    store.maintain(t0, 50, 2, 86400, 100)
    store.set_state(*KEY, "open", None, "ana", t0 + 1)  # "this is not fixed, keep it open"
    assert store.maintain(t0 + 10, 50, 2, 86400, 100)["fixed"] == 0
    assert store.maintain(t0 + 60, 50, 2, 86400, 100)["fixed"] == 1  # quiet for the window since


def test_seen_once_is_not_fixed(store):
    store.migrate()
    t0 = time.time()
    store.write(Batch("r", 1, t0, "r1", [change(n=1, at=t0 - 100)]))
    assert store.maintain(t0, 50, 2, 86400, 100)["fixed"] == 0


def test_states_set_by_people(store):
    store.migrate()
    store.write(Batch("r", 1, time.time(), "r1", [change()]))
    assert store.set_state(*KEY, "ignored", "the admin report is fine", "ana", time.time())
    assert not store.set_state("slow_query", "nope", "ignored", "x", None, time.time())
    record = store.read()[KEY]
    assert (record["state"], record["state_reason"], record["state_by"]) == ("ignored", "the admin report is fine", "ana")


def test_retention_and_size_bound(store):
    store.migrate()
    now = time.time()
    old = change(fingerprint="old", at=now - 40 * 86400)
    store.write(Batch("r", 1, now, "r1", [old, *(change(fingerprint=f"fp{i}", at=now - i) for i in range(5))]))
    done = store.maintain(now, 86400, 2, 30 * 86400, 3)
    assert done["expired"] == 3  # the old one, then the two least recently seen beyond 3
    assert sorted(k[1] for k in store.read()) == ["fp0", "fp1", "fp2"]
    counts = store.fetch(store.sql("SELECT count(*) FROM {s}counts"))[0][0]
    assert counts == 3


def test_concurrent_replicas_add_up_exactly(pg_store):
    """Four replicas, each its own connection and thread, writing the same findings at once."""
    pg_store().migrate()
    per_replica, batches = 4, 40

    def replica(i: int) -> None:
        s = pg_store()
        for seq in range(1, batches + 1):
            changes = [change(n=1, fingerprint="shared"), change(n=2, fingerprint=f"own-{i}")]
            if seq % 7 == 0:
                s.write(Batch(f"run-{i}", seq - 1, time.time(), f"r{i}", changes))  # a retry: applied already
            s.write(Batch(f"run-{i}", seq, time.time(), f"r{i}", changes))

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(per_replica)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    found = pg_store().read()
    assert found[(KEY[0], "shared")]["count"] == per_replica * batches
    assert found[(KEY[0], "shared")]["statements"] == per_replica * batches * 6
    for i in range(per_replica):
        assert found[(KEY[0], f"own-{i}")]["count"] == 2 * batches


def test_two_replicas_regress_a_fixed_finding_once(pg_store):
    first = pg_store()
    first.migrate()
    t0 = time.time()
    first.write(Batch("a", 1, t0, "a", [change(n=2, at=t0 - 100)]))
    first.maintain(t0, 50, 2, 86400, 100)
    results: list = []
    barrier = threading.Barrier(4)

    def replica(i: int) -> None:
        s = pg_store()
        barrier.wait()
        results.append(s.write(Batch(f"run-{i}", 1, time.time(), f"r{i}", [change(at=time.time())])))

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(len(r) for r in results) == 1
    assert first.read()[KEY]["count"] == 6


def test_postgres_store_keeps_to_its_schema(pg_store):
    s = pg_store("pgloupe_ci")
    s.migrate()
    tables = {r[0] for r in s.fetch("SELECT table_schema FROM information_schema.tables WHERE table_name = ?", "findings")}
    assert tables == {"pgloupe_ci"}
    assert not s.fetch("SELECT 1 FROM information_schema.tables WHERE table_schema = 'public'")


def test_a_corrupt_sqlite_file_is_a_clear_fatal_error(tmp_path):
    path = tmp_path / "findings.sqlite3"
    path.write_bytes(b"this is not a database, it is a text file" * 100)
    store = SqliteStore(str(path))
    with pytest.raises(StoreError, match="not a readable SQLite database") as info:
        store.connect()
        store.migrate()
    assert info.value.fatal
    assert path.read_bytes().startswith(b"this is not")  # left as it was, for the operator to look at


def test_unreachable_postgres_is_not_fatal():
    from proxy.demo.embedded import free_port
    store = PostgresStore(f"postgresql://pgloupe:s3cret-pw@127.0.0.1:{free_port()}/x", connect_timeout=2)
    with pytest.raises(StoreError) as info:
        store.connect()
    assert not info.value.fatal and "s3cret-pw" not in str(info.value)
    store.close()


def test_sqlite_file_is_private(tmp_path):
    store = SqliteStore(str(tmp_path / "state" / "findings.sqlite3"))
    store.connect()
    store.migrate()
    store.close()
    assert (tmp_path / "state" / "findings.sqlite3").stat().st_mode & 0o077 == 0
    assert sqlite3.connect(tmp_path / "state" / "findings.sqlite3").execute("SELECT count(*) FROM findings").fetchone() == (0,)


def test_advice_the_catalog_no_longer_gives_is_fixed_and_can_regress(store):
    store.migrate()
    advice = change(kind="missing_index", fingerprint="ix-orders-team")
    advice.source, advice.hours, advice.gauge = "advisor", {}, (40, 40, 1234.5)
    t0 = time.time()
    store.write(Batch("r", 1, t0, "r1", [advice]))
    store.write(Batch("r", 2, t0, "r1", [advice]))
    record = store.read()[("missing_index", "ix-orders-team")]
    assert (record["count"], record["statements"], record["total_ms"]) == (40, 40, 1234.5)  # gauges, not sums
    store.write(Batch("r", 3, t0 + 1, "r1", [], resolved=[("missing_index", "ix-orders-team"), KEY]))
    assert store.read()[("missing_index", "ix-orders-team")]["state"] == "fixed"
    advice.last_seen = t0 + 5  # the index was dropped again
    assert [r["kind"] for r in store.write(Batch("r", 4, t0 + 5, "r1", [advice]))] == ["missing_index"]


class _Source:
    """What the app hands the replica: a finding whose occurrences arrive from another thread, taken
    and peeked under one lock (as detectors.findings.FindingStore does)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.total = 0
        self.pending = 0
        self.at = time.time()

    def add(self) -> None:
        with self.lock:
            self.total += 1
            self.pending += 1

    def json(self) -> dict:
        return {"kind": KEY[0], "fingerprint": KEY[1], "severity": "warning", "confidence": 0.9, "tables": ["orders"],
                "example": "SELECT %s", "suggestion": "s", "message": "m", "first_seen": self.at, "last_seen": self.at,
                "count": self.total, "statements": self.total, "total_ms": 0.0}

    def take(self) -> list:
        with self.lock:
            n, self.pending = self.pending, 0
        return [(self.json(), {int(self.at // 3600): [n, n, 0.0]})] if n else []

    def peek(self) -> dict:
        with self.lock:
            return {KEY: (self.pending, self.pending, 0.0)} if self.pending else {}


def test_the_view_never_counts_an_occurrence_twice_or_loses_one_across_batches(tmp_path):
    """Occurrences arrive while batches are written and read back: every view in between shows between
    what had arrived when it was asked and what has arrived since, and never goes down."""
    import structlog

    from proxy.store.replica import Replica
    source = _Source()
    replica = Replica(SqliteStore(str(tmp_path / "s.sqlite3")), log=structlog.get_logger(), flush_s=0.01)
    replica.take_changes, replica.peek_changes = source.take, source.peek
    replica.open()
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            source.add()
            time.sleep(0.0005)

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            before = source.total
            local = [source.json()]
            shown = next((f["count"] for f in replica.findings(local, []) if f["kind"] == KEY[0]), 0)
            assert before <= shown <= source.total, (before, shown, source.total)
            seen.append(shown)
    finally:
        stop.set()
        producer.join()
    assert seen == sorted(seen) and replica.batches > 10
    replica.flush_now()
    assert replica.findings([source.json()], [])[0]["count"] == source.total
    replica.stop()


def test_store_urls_are_described_without_their_password():
    from proxy.config import ConfigError, load
    for url in ("postgresql://app:S3cretPW@h1:5432,h2:5432/db", "postgresql://app:S3cretPW@db:99999/x",
                "postgresql://app:S3cretPW@[::1/x"):
        assert "S3cretPW" not in PostgresStore(url).describe()
        try:
            load(None, env={}, store=url)
        except ConfigError as exc:
            assert "S3cretPW" not in str(exc)
    assert PostgresStore("postgresql://app:S3cretPW@db:6000/ops", "pl").describe() == "postgresql://db:6000/ops (schema pl)"


def test_a_batch_sent_again_still_reports_the_regression_it_made(store):
    """The commit that regressed a finding went through but its confirmation was lost: the retry
    (applied already, so it changes nothing) still names the regression, so its alert is not lost."""
    store.migrate()
    t0 = time.time()
    store.write(Batch("r", 1, t0 - 10, "r1", [change(n=2, at=t0 - 100)]))
    store.maintain(t0 - 5, 50, 2, 86400, 100)
    batch = Batch("r", 2, t0, "r1", [change(at=t0)])
    assert len(store.write(batch)) == 1
    assert [r["fingerprint"] for r in store.write(batch)] == [KEY[1]]
    assert store.read()[KEY]["count"] == 3


def test_the_size_bound_keeps_what_people_decided(store):
    store.migrate()
    now = time.time()
    store.write(Batch("r", 1, now, "r1", [change(fingerprint=f"fp{i}", at=now - 100 + i) for i in range(5)]))
    store.set_state(KEY[0], "fp0", "ignored", "accepted", None, now)  # the least recently seen
    store.maintain(now, 86400, 2, 30 * 86400, 3)
    assert sorted(k[1] for k in store.read()) == ["fp0", "fp3", "fp4"]


def test_two_replicas_seeing_one_deploy_tag_mark_it_once(store):
    store.migrate()
    for replica in ("a", "b"):
        store.write(Batch(replica, 1, time.time(), replica, [], [Deploy("v7", time.time(), "sqlcommenter")]))
    store.write(Batch("c", 1, time.time(), "c", [], [Deploy("v7", time.time(), "cli")]))  # a re-deploy by hand
    assert [(d["name"], d["source"]) for d in store.deploys()] == [("v7", "cli"), ("v7", "sqlcommenter")]


def _replica(store_backend, source=None):
    import structlog

    from proxy.store.replica import Replica
    replica = Replica(store_backend, log=structlog.get_logger(), flush_s=3600)
    if source is not None:
        replica.take_changes, replica.peek_changes = source.take, source.peek
    return replica


def test_a_person_s_verdict_does_not_double_count_the_view(tmp_path):
    source = _Source()
    replica = _replica(SqliteStore(str(tmp_path / "s.sqlite3")), source)
    replica.open()
    try:
        for _ in range(3):
            source.add()
        replica.flush_now()
        for _ in range(2):
            source.add()
        replica.call(replica._collect)  # taken, not yet written
        assert replica.set_state(*KEY, "acknowledged", "on the roadmap", "li").result(10)
        shown = replica.findings([source.json()], [])[0]
        assert (shown["count"], shown["state"]) == (5, "acknowledged")
        replica.flush_now()
        assert replica.findings([source.json()], [])[0]["count"] == 5
    finally:
        replica.stop()


def test_a_reset_that_fails_keeps_the_view_and_the_findings(tmp_path):
    source = _Source()
    path = tmp_path / "s.sqlite3"
    replica = _replica(SqliteStore(str(path)), source)
    replica.open()
    forgot = []
    try:
        source.add()
        replica.flush_now()
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
        replica.call(lambda: replica.backend.conn.execute("PRAGMA busy_timeout = 100"))
        with pytest.raises(StoreError, match="locked"):
            replica.reset(lambda: forgot.append(1))
        blocker.rollback()
        blocker.close()
        assert not forgot and replica.findings([source.json()], [])[0]["count"] == 1
        replica.reset(lambda: forgot.append(1))
        assert forgot == [1] and replica.findings([], []) == []
    finally:
        replica.stop()


def test_an_in_memory_store_survives_a_failed_round():
    source = _Source()
    replica = _replica(SqliteStore(":memory:"), source)
    replica.open()
    try:
        source.add()
        replica.flush_now()
        replica._failed(StoreError("a round failed"))  # as after any error: not connected
        replica.flush_now()
        assert replica.findings([], [])[0]["count"] == 1
    finally:
        replica.stop()


def test_only_a_complete_review_fixes_the_advice_it_no_longer_gives(tmp_path):
    replica = _replica(SqliteStore(str(tmp_path / "s.sqlite3")))
    advice = [{"kind": "missing_index", "fingerprint": "ix1", "severity": "warning", "confidence": 1.0,
               "tables": ["orders"], "databases": ["app"], "example": "CREATE INDEX ...", "suggestion": "CREATE INDEX ...",
               "message": "m", "first_seen": time.time(), "last_seen": time.time(), "count": 12, "source": "advisor"}]
    current = {"advice": advice, "reviewed": {"app": True}}
    replica.advice = lambda: current["advice"]
    replica.reviewed = lambda: current["reviewed"]
    replica.open()
    try:
        replica.flush_now()
        current["advice"], current["reviewed"] = [], {"app": False}  # the review failed part-way: it says nothing
        replica.flush_now()
        assert replica.findings([], [])[0]["state"] == "open"
        current["reviewed"] = {"app": True}  # a complete review without it: fixed
        replica.flush_now()
        assert replica.findings([], [])[0]["state"] == "fixed"
        current["advice"] = advice  # the index was dropped again: regressed
        advice[0]["last_seen"] = time.time() + 1
        replica.flush_now()
        assert replica.findings([], [])[0]["state"] == "regressed"
        current["advice"], current["reviewed"] = [], {}  # the database is gone: nothing holds there any more
        replica.flush_now()
        assert replica.findings([], [])[0]["state"] == "fixed"
    finally:
        replica.stop()
