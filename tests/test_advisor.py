"""The index and health advisor against a real PostgreSQL with a schema shaped like seed 002,
with traffic observed through the proxy, HypoPG installed by the set-up, and `pgloupe advise`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from detectors.advisor import DEAD_TUPLES, INDEX_HIT, connection_saturation, health_ratios, table_ratios
from detectors.config import DetectorConfig
from detectors.schema import Catalog, Schema, Table, TableStats

ROOT = Path(__file__).resolve().parent.parent

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS hypopg;
CREATE TABLE campaigns (id serial PRIMARY KEY, team_id int NOT NULL, name text);
CREATE TABLE inbox_items (id serial PRIMARY KEY, team_id int NOT NULL, current_bucket text, body text,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE content_items (id serial PRIMARY KEY, team_id int NOT NULL, title text);
CREATE INDEX content_items_team_id_idx ON content_items (team_id);
CREATE TABLE messages (id serial PRIMARY KEY, team_id int NOT NULL, campaign_id int REFERENCES campaigns (id), body text);
CREATE INDEX messages_team_id_idx ON messages (team_id);
CREATE TABLE emails (id serial PRIMARY KEY, team_id int NOT NULL, campaign_id int REFERENCES campaigns (id));
CREATE INDEX emails_campaign_team_idx ON emails (campaign_id, team_id);
CREATE TABLE activities (id serial PRIMARY KEY, organization_id int NOT NULL, action text,
    created_at timestamptz NOT NULL);
CREATE INDEX idx_activities_org_created ON activities (organization_id, created_at);
CREATE INDEX idx_activities_org ON activities (organization_id);
CREATE TABLE journey_contacts (id serial PRIMARY KEY, team_id int NOT NULL, contact_id int, status text);
CREATE INDEX journey_contacts_contact_idx ON journey_contacts (contact_id);
CREATE TABLE flags (id serial PRIMARY KEY, team_id int NOT NULL, enabled boolean NOT NULL);
CREATE INDEX flags_team_idx ON flags (team_id);
CREATE TABLE call_logs (id serial PRIMARY KEY, team_id int NOT NULL, note text) WITH (autovacuum_enabled = false);
CREATE INDEX call_logs_team_idx ON call_logs (team_id);
INSERT INTO campaigns (team_id, name) SELECT g % 20, 'c' || g FROM generate_series(1, 200) g;
INSERT INTO inbox_items (team_id, current_bucket, body) SELECT g % 50, 'b' || g % 7, 'x' FROM generate_series(1, 30000) g;
INSERT INTO content_items (team_id, title) SELECT g % 10, 't' || g FROM generate_series(1, 100) g;
INSERT INTO messages (team_id, campaign_id, body) SELECT g % 20, 1 + g % 200, 'm' FROM generate_series(1, 2000) g;
INSERT INTO emails (team_id, campaign_id) SELECT g % 20, 1 + g % 200 FROM generate_series(1, 2000) g;
INSERT INTO activities (organization_id, action, created_at)
    SELECT g % 5, 'note', now() - (g % 1000) * interval '1 minute' FROM generate_series(1, 50000) g;
INSERT INTO journey_contacts (team_id, contact_id, status)
    SELECT g % 40, g, CASE WHEN g % 20 = 0 THEN 'ACTIVE' ELSE 'DONE' END FROM generate_series(1, 40000) g;
INSERT INTO flags (team_id, enabled) SELECT g % 30, g % 2 = 0 FROM generate_series(1, 20000) g;
INSERT INTO call_logs (team_id, note) SELECT g % 10, 'n' FROM generate_series(1, 10000) g;
DELETE FROM call_logs WHERE id % 5 = 0;
ANALYZE;
"""


@pytest.fixture(scope="module")
def advisor_db(pg):
    pg.require_embedded()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS advisor")
        conn.execute("CREATE DATABASE advisor")
    with psycopg.connect(pg.dsn(database="advisor"), autocommit=True) as conn:
        conn.execute(SCHEMA)
        for _ in range(100):  # content_items is read, but never through its team index
            conn.execute("SELECT count(*) FROM content_items")
        for team in range(5):
            conn.execute("SELECT count(*) FROM messages WHERE team_id = %s", (team,))
    return pg.dsn(database="advisor")


def _traffic(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(150):
            conn.execute("SELECT id, current_bucket FROM inbox_items WHERE team_id = %s ORDER BY created_at DESC LIMIT 20",
                         (i % 50,)).fetchall()
        for i in range(30):
            conn.execute("SELECT count(*) FROM inbox_items WHERE current_bucket = %s", (f"b{i % 7}",)).fetchall()
        for i in range(120):  # keyset pagination (seed 000 F5)
            conn.execute("SELECT id, action FROM activities WHERE organization_id = %s AND (created_at, id) < (now(), %s) "
                         "ORDER BY created_at DESC, id DESC LIMIT 50", (i % 5, 40000)).fetchall()
            conn.execute("SELECT id FROM journey_contacts WHERE team_id = %s AND status = 'ACTIVE'", (i % 40,)).fetchall()
            conn.execute("SELECT id FROM flags WHERE enabled = %s", (i % 2 == 0,)).fetchall()


def _advice(proxy) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for f in proxy.app.all_findings():
        if f.get("source") == "advisor":
            by_kind.setdefault(f["kind"], []).append(f)
    return by_kind


def _tables(advice, kind) -> set[str]:
    return {f["tables"][0] for f in advice.get(kind, [])}


def test_advisor_on_observed_traffic(advisor_db, start_proxy, pg):
    proxy = start_proxy(upstream=advisor_db, sections={"detectors": {"partition_min_rows": 40000,
                                                                           "unused_index_min_age_s": 0}})
    _traffic(proxy.dsn(database="advisor"))
    deadline = time.monotonic() + 20
    advice: dict = {}
    while time.monotonic() < deadline:  # statistics reach pg_stat_* within a second or so of each commit
        proxy.wait_for(lambda e: "FROM flags" in e.sql)
        assert proxy.background.call(proxy.app.reviews.refresh)
        advice = _advice(proxy)
        if "inbox_items" in _tables(advice, "high_seq_scan_ratio") and "missing_index" in advice:
            break
        time.sleep(0.5)

    tenant = {f["tables"][0]: f for f in advice["missing_tenant_index"]}
    assert tenant["inbox_items"]["severity"] == "critical" and tenant["inbox_items"]["details"]["priority"] == "P0"
    assert tenant["inbox_items"]["suggestion"] == "CREATE INDEX CONCURRENTLY idx_inbox_items_team_id ON inbox_items (team_id);"
    assert tenant["campaigns"]["severity"] == "warning"
    assert not {"content_items", "messages", "flags", "activities", "call_logs"} & set(tenant)

    assert _tables(advice, "missing_fk_index") == {"messages"}
    assert [f["suggestion"] for f in advice["missing_fk_index"]] == [
        "CREATE INDEX CONCURRENTLY idx_messages_campaign_id ON messages (campaign_id);"]
    assert [f["suggestion"] for f in advice["duplicate_index"]] == ["DROP INDEX CONCURRENTLY idx_activities_org;"]
    unused = {f["suggestion"] for f in advice.get("unused_index", [])}
    assert "DROP INDEX CONCURRENTLY content_items_team_id_idx;" in unused
    assert "DROP INDEX CONCURRENTLY messages_team_id_idx;" not in unused
    assert "inbox_items" in _tables(advice, "high_seq_scan_ratio")
    assert "content_items" not in _tables(advice, "high_seq_scan_ratio")  # too small to matter
    (dead,) = advice["high_dead_tuple_ratio"]
    assert dead["tables"] == ["call_logs"] and dead["severity"] == "error" and dead["suggestion"] == "VACUUM (ANALYZE) call_logs;"
    assert _tables(advice, "partition_candidate") == {"activities"}

    # missing_index: proved with HypoPG, and the useless boolean index is not suggested
    indexes = {f["suggestion"]: f for f in advice["missing_index"]}
    inbox = indexes["CREATE INDEX CONCURRENTLY idx_inbox_items_team_id_created_at ON inbox_items (team_id, created_at);"]
    assert inbox["details"]["cost_after"] < inbox["details"]["cost_before"] and inbox["confidence"] == 0.95
    partial = indexes["CREATE INDEX CONCURRENTLY idx_journey_contacts_team_id_partial ON journey_contacts (team_id) "
                      "WHERE status = 'ACTIVE';"]
    assert partial["details"]["cost_after"] < partial["details"]["cost_before"]
    keyset = indexes["CREATE INDEX CONCURRENTLY idx_activities_organization_id_created_at_id ON activities "
                     "(organization_id, created_at, id);"]
    assert keyset["details"]["cost_after"] < keyset["details"]["cost_before"]
    assert not [s for s in indexes if "flags" in s], indexes.keys()

    # the health ratios are exported as metrics, and advice shows in /api/findings
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    for name in ("pgloupe_db_seq_scan_ratio", "pgloupe_db_dead_tuple_ratio", "pgloupe_db_connection_ratio",
                 "pgloupe_db_max_connections 200.0", 'pgloupe_advice{kind="missing_fk_index",severity="warning"} 1.0'):
        assert name in metrics, name
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/api/findings?kind=missing_fk_index", timeout=5) as r:
        assert [f["tables"] for f in json.load(r)["findings"]] == [["messages", "campaigns"]]


def test_pgloupe_advise_command(advisor_db):
    proc = subprocess.run([sys.executable, "-m", "proxy", "advise", "--dsn", advisor_db, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    kinds = {f["kind"] for f in report["findings"]}
    assert {"missing_tenant_index", "missing_fk_index", "duplicate_index", "high_dead_tuple_ratio"} <= kinds
    assert report["hypopg"] is True and report["ratios"]["dead_tuple_ratio"] is not None
    text = subprocess.run([sys.executable, "-m", "proxy", "advise", "--dsn", advisor_db], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "-> CREATE INDEX CONCURRENTLY idx_messages_campaign_id" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "proxy", "advise", "--dsn", "postgresql://x@127.0.0.1:1/none"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot review the database" in bad.stderr and "Traceback" not in bad.stderr


def _catalog(**stats) -> Catalog:
    tables = {name: Table(name, columns={"id": "integer", "team_id": "integer"}) for name in stats}
    return Catalog(Schema(tables, loaded=True), stats={n: TableStats(**s) for n, s in stats.items()})


def test_ratio_thresholds_from_the_documents():
    config = DetectorConfig()
    hot = _catalog(hot={"idx_hit": 940, "idx_read": 60, "n_live": 10}, warm={"idx_hit": 985, "idx_read": 15},
                   fine={"idx_hit": 9990, "idx_read": 5}, tiny={"idx_hit": 1, "idx_read": 9})
    found = {a.tables[0]: a.severity for a in table_ratios(hot, config, (INDEX_HIT,))}
    assert found == {"hot": "error", "warm": "warning"}  # 94% < 95%, 98.5% < 99%; tiny has too few reads
    dead = _catalog(a={"n_live": 900, "n_dead": 100}, b={"n_live": 930, "n_dead": 70}, c={"n_live": 990, "n_dead": 10})
    assert {x.tables[0]: x.severity for x in table_ratios(dead, config, (DEAD_TUPLES,))} == {"a": "warning", "b": "warning"}
    cat = _catalog()
    for connections, expected in ((79, []), (85, ["warning"]), (95, ["error"])):
        cat.connections, cat.max_connections = connections, 100
        assert [a.severity for a in connection_saturation(cat, config)] == expected
    ratios = health_ratios(_catalog(big={"n_live": 20000, "seq_scan": 3, "idx_scan": 97, "idx_hit": 990, "idx_read": 10}),
                           config)
    assert ratios["seq_scan_ratio"] == pytest.approx(0.03) and ratios["index_hit_ratio"] == pytest.approx(0.99)


EDGE_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS hypopg;
CREATE SCHEMA other;
CREATE TABLE "order" (id serial PRIMARY KEY, team_id int NOT NULL, total int);
CREATE TABLE jt (id serial PRIMARY KEY, team_id int NOT NULL, doc json);
CREATE TABLE other.only_here (id serial PRIMARY KEY, team_id int NOT NULL);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE pe (id int, team_id int NOT NULL, parent_id int REFERENCES parent (id), created_at date NOT NULL)
    PARTITION BY RANGE (created_at);
CREATE TABLE pe_1 PARTITION OF pe FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE pe_2 PARTITION OF pe FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE u (id serial PRIMARY KEY, a int, b int, c text, team_id int);
CREATE UNIQUE INDEX u_a_uniq ON u (a);
CREATE INDEX u_a_b ON u (a, b);
CREATE INDEX u_b_incl ON u (b) INCLUDE (c);
CREATE INDEX u_b ON u (b);
CREATE INDEX u_c ON u (c);
CREATE INDEX u_c_pattern ON u (c text_pattern_ops);
CREATE INDEX u_team ON u (team_id);
CREATE INDEX u_team_dup ON u (team_id);
CREATE TABLE child (id serial PRIMARY KEY, u_id int REFERENCES u (id));
CREATE INDEX child_u_id ON child (u_id);
INSERT INTO "order" (team_id, total) SELECT g % 50, g FROM generate_series(1, 20000) g;
INSERT INTO jt (team_id, doc) SELECT g % 50, '{"a": "x"}' FROM generate_series(1, 5000) g;
INSERT INTO u (a, b, c, team_id) SELECT g, g, 'c' || g, g % 10 FROM generate_series(1, 3000) g;
ANALYZE;
"""


def test_advice_on_awkward_schemas(pg):
    import asyncio

    from detectors.database.review import review
    from detectors.fingerprint import Fingerprinter
    from detectors.pipeline import ShapeStats

    pg.require_embedded()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS advisor_edge")
        conn.execute("CREATE DATABASE advisor_edge")
    dsn = pg.dsn(database="advisor_edge")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EDGE_SCHEMA)
        for _ in range(120):
            conn.execute("SELECT count(*) FROM child")
            conn.execute("SELECT count(*) FROM u")
    fp = Fingerprinter()
    statements = [
        'SELECT id, total FROM "order" WHERE team_id = $1',
        "SELECT id FROM jt WHERE team_id = $1 AND doc->>'a' = 'x'",
        "SELECT id FROM other.only_here WHERE team_id = $1",
        "SELECT id FROM pe WHERE team_id = $1",
        "SELECT id FROM u WHERE c = 'card 4111 cvv $123' AND team_id = 3",  # interpolated: values, not code
    ]
    observed = [ShapeStats(fp(sql), calls=150, total_s=1.0, max_s=0.01) for sql in statements]
    # the interpolated values are positions in the shape, not kept; no execution proved them constant
    assert fp(statements[-1]).constant_slots and "4111" not in fp(statements[-1]).plan_template
    assert all(not st.proven for st in observed)
    result = asyncio.run(review(dsn, DetectorConfig(), observed))
    assert result.error is None
    by_kind: dict[str, list] = {}
    for a in result.advice:
        by_kind.setdefault(a.kind, []).append(a)
    sql = {a.suggestion for a in result.advice}
    assert 'CREATE INDEX CONCURRENTLY idx_order_team_id ON "order" (team_id);' in sql
    assert "CREATE INDEX CONCURRENTLY idx_only_here_team_id ON other.only_here (team_id);" in sql
    pe = [a for a in by_kind["missing_tenant_index"] if a.tables == ("pe",)]
    assert pe and pe[0].suggestion.startswith("CREATE INDEX idx_pe_team_id ON ONLY pe (team_id);")
    assert not {"pe_1", "pe_2"} & {a.tables[0] for a in result.advice}  # partitions are advised through pe
    assert [a.tables[0] for a in by_kind["missing_fk_index"]] == ["pe"]
    dropped = {a.suggestion for a in by_kind.get("duplicate_index", [])}
    assert dropped == {"DROP INDEX CONCURRENTLY u_team_dup;"}, dropped  # not the unique, INCLUDE or pattern_ops ones
    unused = {a.suggestion for a in by_kind.get("unused_index", [])}
    assert "DROP INDEX CONCURRENTLY child_u_id;" not in unused  # it serves child's foreign key
    assert all("4111" not in a.example and "4111" not in a.suggestion for a in result.advice)


def test_no_index_suggested_that_only_extends_one_serving_the_filter(pg):
    """Issue 16, class 10: with (team_id, id) in place, (team_id, id, owner_id) for a statement that pins
    team_id and id and sorts by owner_id is not advice unless HypoPG shows the gain; a table with no
    index for the filter still gets one."""
    import asyncio

    from detectors.database.review import review
    from detectors.fingerprint import Fingerprinter
    from detectors.pipeline import ShapeStats

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS advisor_refine")
        conn.execute("CREATE DATABASE advisor_refine")
    dsn = pg.dsn(database="advisor_refine")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE deals (id int NOT NULL, team_id int NOT NULL, owner_id int, title text);
            CREATE INDEX deals_team_id_id ON deals (team_id, id);
            CREATE TABLE notes (id int NOT NULL, team_id int NOT NULL, owner_id int, body text);
            INSERT INTO deals SELECT g, 1 + g % 3, g % 7, 'deal' FROM generate_series(1, 3000) g;
            INSERT INTO notes SELECT g, 1 + g % 3, g % 7, 'note' FROM generate_series(1, 3000) g;
            ANALYZE;
        """)
    fp = Fingerprinter()
    observed = [ShapeStats(fp(f"SELECT title FROM {t} WHERE team_id = $1 AND id = $2 ORDER BY owner_id"),
                           calls=500, total_s=1.0, max_s=0.01) for t in ("deals", "notes")]
    result = asyncio.run(review(dsn, DetectorConfig(), observed))
    missing = {a.tables[0]: a for a in result.advice if a.kind == "missing_index"}
    assert "deals" not in missing, missing["deals"].suggestion
    assert "notes" in missing and "(team_id, id" in missing["notes"].suggestion
