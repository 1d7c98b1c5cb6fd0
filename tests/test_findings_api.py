"""Findings through the running proxy: the catalog read over a side connection, /api/findings, silences."""

from __future__ import annotations

import json
import time
import urllib.request

import psycopg


def get(proxy, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}{path}", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        return json.load(resp)


def test_findings_api_with_catalog_refresh_and_silences(pg, start_proxy):
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS findings_api")
        conn.execute("CREATE DATABASE findings_api")
    proxy = start_proxy(upstream=pg.dsn(database="findings_api"),
                        sections={"detectors": {"silence": {"kinds": ["select_star"]}}})
    dsn = proxy.dsn(database="findings_api", application_name="crm-api")
    canary = "canary-literal-3d9e"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # created after pgloupe started: the first statements on it make pgloupe re-read the catalog
        conn.execute("CREATE TABLE deals (id serial PRIMARY KEY, team_id int NOT NULL, title text, notes jsonb)")
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, team_id int NOT NULL, body text)")
        conn.execute("INSERT INTO deals (team_id, title, notes) SELECT 1 + g % 2, 'd' || g, '{}' FROM generate_series(1, 20) g")
        deadline = time.monotonic() + 20
        findings = []
        while time.monotonic() < deadline and not findings:
            conn.execute(f"SELECT id FROM deals WHERE title = '{canary}'").fetchall()
            conn.execute("SELECT * FROM deals WHERE team_id = %s", (1,)).fetchall()
            findings = get(proxy, "/api/findings?kind=cross_tenant")["findings"]
            time.sleep(0.2)
    assert findings, "no cross_tenant finding after the catalog refresh"
    (f,) = findings
    for key in ("kind", "severity", "confidence", "fingerprint", "tables", "count", "total_ms", "example",
                "suggestion", "applications", "first_seen", "last_seen"):
        assert key in f, key
    assert f["kind"] == "cross_tenant" and f["severity"] == "error" and f["tables"] == ["deals"]
    assert f["applications"] == ["crm-api"] and f["count"] >= 1 and f["first_seen"] <= f["last_seen"]
    assert f["example"] == "SELECT id FROM deals WHERE title = %s"
    assert "deals.team_id = $tenant" in f["suggestion"]
    everything = get(proxy, "/api/findings")
    assert canary not in json.dumps(everything)
    assert all(x["kind"] != "select_star" for x in everything["findings"])  # silenced in the config
    assert get(proxy, "/api/findings?application=someone-else")["findings"] == []
    assert get(proxy, "/api/findings?severity=error")["findings"]
    assert get(proxy, "/healthz")["findings"] >= 1

    # row-level security on the table lowers the severity of what is found from then on
    with psycopg.connect(pg.dsn(database="findings_api"), autocommit=True) as conn:
        conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    assert proxy.background.call(proxy.app.reviews.refresh)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT body FROM notes WHERE body = %s", ("x",)).fetchall()  # every team's notes
    deadline = time.monotonic() + 10
    notes = []
    while time.monotonic() < deadline and not notes:
        notes = [x for x in get(proxy, "/api/findings?kind=cross_tenant")["findings"] if x["tables"] == ["notes"]]
        time.sleep(0.1)
    assert notes and notes[0]["severity"] == "warning" and "row-level security" in notes[0]["message"]


def test_catalog_unreachable_does_not_stop_the_proxy(pg, start_proxy):
    proxy = start_proxy(sections={"detectors": {"catalog_dsn": "postgresql://nobody@127.0.0.1:1/none"}})
    assert proxy.background.call(proxy.app.reviews.refresh) is False
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert proxy.app.reviews.errors >= 1


def test_metrics_count_statements_findings_and_parse_fallbacks(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(0.12)")
        conn.execute("VACUUM (ANALYZE) pg_class")  # sqlglot has no grammar for this: token fallback
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        if ('pgloupe_findings{kind="slow_query",severity="warning"} 1.0' in text
                and "pgloupe_fingerprint_parse_fallbacks_total 0.0" not in text):
            break
        time.sleep(0.1)
    assert 'pgloupe_findings{kind="slow_query",severity="warning"} 1.0' in text
    assert 'pgloupe_statements_total{command="SELECT"}' in text
    fallbacks = [line for line in text.splitlines() if line.startswith("pgloupe_fingerprint_parse_fallbacks_total")]
    assert fallbacks and float(fallbacks[0].split()[-1]) >= 1
    assert "pgloupe_events_dropped_total 0.0" in text


def test_latency_histogram_labels_stay_bounded_with_10000_fingerprints():
    """10,000 distinct statement shapes: the busiest get their own series, the rest fold into "other"."""
    from prometheus_client.parser import text_string_to_metric_families

    from detectors.config import DetectorConfig
    from detectors.pipeline import Pipeline
    from proxy.events import StatementEvent

    pipeline = Pipeline(DetectorConfig(max_fingerprint_labels=50))

    def event(sql: str, i: int) -> StatementEvent:
        return StatementEvent(1, "u", "d", "a", "127.0.0.1", sql, "extended", "", 0, (), (), 1000.0 + i * 0.01,
                              0.003, "SELECT", 1, 100, None, "I", "I", False)

    for i in range(10_000):
        pipeline.process([event(f"SELECT c{i} FROM t{i} WHERE id = $1", i)] * 25)

    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.service.metrics import traffic_families

    class Traffic:
        def collect(self):
            return traffic_families(pipeline.traffic)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Traffic())
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    samples = [s for s in families["pgloupe_statement_duration_seconds"].samples if s.name.endswith("_count")]
    fingerprints = {s.labels["fingerprint"] for s in samples}
    assert len(fingerprints) == 51 and "other" in fingerprints
    assert sum(s.value for s in samples) == 250_000  # nothing lost, only folded
    buckets = {s.labels["le"] for s in families["pgloupe_statement_duration_seconds"].samples if "le" in s.labels}
    assert {"0.1", "0.5", "1.0"} <= buckets
