"""The Grafana dashboard's queries and the alert rules against a real Prometheus scraping a real pgloupe.

A throwaway Prometheus (Debian's /usr/bin/prometheus, loopback only, killed at the end) scrapes the
test pgloupe every second while a psycopg workload runs through the proxy: N+1 loops, a slow
``pg_sleep``, a query on a tenant table without its tenant filter, updates and deletes. Then every
panel query of grafana/dashboards/pgloupe.json must succeed with data, and every rule of
deploy/prometheus/alerts.yml must load and evaluate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml

from proxy.demo.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "pgloupe.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# Grafana's variables, as Grafana would expand them for a Prometheus scraped every second
VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "$instance": ".*"}
WAIT_S = 30  # for Prometheus to start, to scrape enough samples, to evaluate the rules
LIFETIME_S = 180  # Prometheus is killed after this even if the test process dies

pytestmark = pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK),
                                reason="prometheus not installed (Debian package prometheus)")

SCHEMA = """
DROP TABLE IF EXISTS dash_activities, dash_contacts;
CREATE TABLE dash_contacts (id serial PRIMARY KEY, team_id int NOT NULL, email text NOT NULL);
CREATE TABLE dash_activities (id serial PRIMARY KEY, team_id int NOT NULL,
    contact_id int NOT NULL REFERENCES dash_contacts (id), action text NOT NULL);
INSERT INTO dash_contacts (team_id, email) SELECT 1 + g % 3, 'c' || g || '@example.com' FROM generate_series(1, 300) g;
"""


def panel_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for target in p.get("targets", []):
                if target.get("expr", "").strip():
                    out.append((f"{p['title']} [{target['refId']}]", expand(target["expr"])))
    return out


def expand(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    leftover = re.findall(r"\$\w+", expr)
    assert not leftover, f"Grafana variables the test does not know: {leftover} in {expr}"
    return expr


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # Prometheus answers bad queries with 400 and a JSON error
        return json.loads(exc.read() or b"{}") or {"status": "error", "error": str(exc)}


def wait(what: str, check, timeout: float = WAIT_S, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"{what} within {timeout}s"
            return result
        time.sleep(step)


@pytest.fixture
def prometheus(tmp_path):
    """``start(scrape_port)`` runs Prometheus scraping pgloupe's HTTP port with alerts.yml loaded; returns its URL."""
    processes = []

    def start(scrape_port: int) -> str:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "pgloupe",
                                "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}]}],
        }
        # the deploy config's bearer token for pgloupe, its file resolved where deploy/ keeps it
        deployed = yaml.safe_load((ALERTS.parent / "prometheus.yml").read_text())
        (job,) = [j for j in deployed["scrape_configs"] if j["job_name"] == "pgloupe"]
        authorization = dict(job["authorization"])
        authorization["credentials_file"] = str(ALERTS.parent / authorization["credentials_file"])
        config["scrape_configs"][0]["authorization"] = authorization
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # closed with the process, in the finally below
        process = subprocess.Popen(
            ["timeout", "-k", "5", str(LIFETIME_S), PROMETHEUS,
             f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
             "--web.console.templates=/nonexistent", "--web.console.libraries=/nonexistent"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        processes.append((process, log))
        base = f"http://127.0.0.1:{port}"

        def ready():
            if process.poll() is not None:
                pytest.fail(f"prometheus exited ({process.returncode}):\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait("prometheus ready", ready)
        return base

    try:
        yield start
    finally:
        for process, log in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            log.close()


def workload(dsn: str, rounds: int = 15) -> int:
    """A few hundred mixed statements in a few seconds, with the anti-patterns the panels show."""
    statements = 0
    with psycopg.connect(dsn, autocommit=True, application_name="dashboard-test") as conn:
        for i in range(rounds):
            with conn.transaction():  # N+1 SELECT: one lookup per row of the parent query
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM dash_contacts WHERE team_id = %s ORDER BY id LIMIT 10", (1,))]
                for contact_id in ids:
                    conn.execute("SELECT email FROM dash_contacts WHERE team_id = %s AND id = %s",
                                 (1, contact_id)).fetchone()
            with conn.transaction():  # N+1 INSERT
                for contact_id in ids:
                    conn.execute("INSERT INTO dash_activities (team_id, contact_id, action) VALUES (%s, %s, %s)",
                                 (1, contact_id, "email_sent"))
            conn.execute("UPDATE dash_contacts SET email = %s WHERE team_id = %s AND id = %s",
                         (f"u{i}@example.com", 1, ids[0]))
            conn.execute("DELETE FROM dash_activities WHERE team_id = %s AND contact_id = %s", (1, ids[-1]))
            # cross-tenant: a tenant table without its team_id filter
            conn.execute("SELECT count(*) FROM dash_contacts WHERE email = %s", ("c7@example.com",)).fetchone()
            conn.execute("SELECT pg_sleep(0.12)")  # slow query (100 ms warning)
            statements += 2 + len(ids) + 2 + len(ids) + 4
    return statements


def test_every_panel_query_returns_data_and_every_rule_loads(pg, start_proxy, prometheus):
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:  # before pgloupe starts: its first catalog read sees it
        conn.execute(SCHEMA)
        conn.execute("ANALYZE dash_contacts")
        conn.execute("SELECT count(*) FROM dash_contacts").fetchone()
    # Small thresholds so the test database's health ratios are defined (and refreshed) within seconds.
    # with the token Prometheus is given in deploy/: a scrape without it would be refused (401)
    token = (ALERTS.parent / "pgloupe-http-token").read_text().strip()
    proxy = start_proxy(http_token=token,
                        sections={"detectors": {"schema_refresh_s": 1, "large_table_rows": 1, "min_index_blocks": 1}})
    wait("pgloupe's first catalog read",
         lambda: proxy.app.reviews.upstream is not None and "dash_contacts" in proxy.app.pipeline.schema.tables)
    base = prometheus(proxy.http_port)
    wait("a first scrape of pgloupe",
         lambda: api(base, "/api/v1/query", query='up{job="pgloupe"} == 1')["data"]["result"])

    assert workload(proxy.dsn()) >= 300

    # every panel query, as Grafana would send it, succeeds with data
    exprs = panel_exprs()
    pending = dict(exprs)
    assert len(pending) == len(exprs) >= 20
    last: dict[str, dict] = {}
    deadline = time.monotonic() + WAIT_S
    while pending and time.monotonic() < deadline:
        for title, expr in list(pending.items()):
            answer = last[title] = api(base, "/api/v1/query", query=expr)
            assert answer.get("status") == "success", f"{title}: {expr}\n{answer}"
            if answer["data"]["result"]:
                del pending[title]
        if pending:
            time.sleep(1.0)
    assert not pending, f"panel queries without data after {WAIT_S}s:\n" + "\n".join(
        f"  {title}: {expr}\n    -> {last.get(title)}" for title, expr in pending.items())

    # the anti-patterns the panels are about were really found
    findings = api(base, "/api/v1/query", query="sum by (kind) (pgloupe_findings)")["data"]["result"]
    kinds = {r["metric"]["kind"] for r in findings}
    assert {"n_plus_one_select", "n_plus_one_insert", "slow_query", "cross_tenant"} <= kinds, kinds
    labelled = api(base, "/api/v1/query",
                   query='count by (fingerprint) (pgloupe_statement_duration_seconds_count{fingerprint!="other"})')
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["metric"]["fingerprint"]) for r in labelled["data"]["result"])

    # every metric the alert rules use is one pgloupe exports
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {re.sub(r"_(bucket|sum|count)$", "", name)
             for r in rules for name in re.findall(r"\bpgloupe_\w+", r["expr"])}
    assert len(names) >= 8, names
    for name in sorted(names):
        series = api(base, "/api/v1/series", **{"match[]": f'{{__name__=~"{name}(_bucket|_sum|_count)?"}}'})
        assert series["data"], f"alerts.yml uses {name}, which pgloupe does not export"

    # every alert rule loads and evaluates without error
    expected = [r["alert"] for r in rules]

    def rules_evaluated():
        loaded = [r for g in api(base, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return len(loaded) == len(expected) and all(r["health"] != "unknown" for r in loaded) and loaded

    loaded = wait("every rule evaluated", rules_evaluated)
    assert sorted(r["name"] for r in loaded) == sorted(expected)
    broken = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not broken, broken

    # and the workload's findings raise their alerts, while pgloupe itself is healthy
    def active():
        return {a["labels"]["alertname"] for a in api(base, "/api/v1/alerts")["data"]["alerts"]}

    wait("N+1 and cross-tenant alerts", lambda: {"PgloupeNPlusOneAppeared", "PgloupeCrossTenantFinding"} <= active())
    assert not active() & {"PgloupeTargetDown", "PgloupeUpstreamConnectErrors", "PgloupeEventsDropped"}
