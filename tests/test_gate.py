"""``pgloupe run`` and ``pgloupe report --compare`` as CI runs them: real PostgreSQL, real subprocesses.

Each test gets its own database, so the advisor's whole-database findings come from that test's
tables only. The commands run are one small psycopg script in several modes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from proxy.service.gate import baseline_json, judge, junit_xml, load_baseline, proxy_url, touched_tables

ROOT = Path(__file__).resolve().parent.parent
GATE = [sys.executable, "-c", "import sys; from proxy.service.gate import main; sys.exit(main(sys.argv[1:]))"]
TIMEOUT = 120
CANARY = "canary-4e1d"  # a parameter value the workload sends: it must never appear in pgloupe's output
ROWS = 12  # round trips in the N+1 loop: above n_plus_one_min, below the error threshold (warning)

WORKLOAD = textwrap.dedent("""
    import os, sys
    from urllib.parse import urlsplit
    import psycopg

    mode, prefix = sys.argv[1], sys.argv[2]
    url = os.environ["DATABASE_URL"]
    assert urlsplit(url).port == int(os.environ["PGPORT"]), "DATABASE_URL and PGPORT disagree"
    print(f"workload {mode} via port {os.environ['PGPORT']}", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        if mode in ("nplus1", "nplus1+tenant"):
            books = conn.execute(f"SELECT id, author_id FROM {prefix}_books ORDER BY id").fetchall()
            for _, author in books:
                conn.execute(f"SELECT name, %s::text AS tag FROM {prefix}_authors WHERE id = %s",
                             ("canary-4e1d", author)).fetchone()
        if mode == "nplus1+tenant":
            conn.execute(f"SELECT id, body FROM {prefix}_notes WHERE body = %s", ("hello",)).fetchall()
        if mode == "fixed":
            conn.execute(f"SELECT b.id, a.name FROM {prefix}_books b "
                         f"JOIN {prefix}_authors a ON a.id = b.author_id ORDER BY b.id").fetchall()
        if mode == "inserts":
            with conn.transaction():
                for i in range(int(sys.argv[3])):
                    conn.execute(f"INSERT INTO {prefix}_items (id, name) VALUES (%s, %s)", (i, f"item {i}"))
        if mode == "batch":
            n = int(sys.argv[3])
            values = ", ".join(["(%s, %s)"] * n)
            params = [v for i in range(n) for v in (i, f"item {i}")]
            with conn.transaction():
                conn.execute(f"INSERT INTO {prefix}_items (id, name) VALUES {values}", params)
        if mode == "fail":
            conn.execute("SELECT 1")
            sys.exit(3)
        if mode == "signal":
            import signal, time
            def stop(signum, _frame):
                print(f"workload got {signal.Signals(signum).name}", flush=True)
                sys.exit(5 if signum == signal.SIGTERM else 6)
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            open(sys.argv[3], "w").close()
            time.sleep(60)
""")


@pytest.fixture
def db(pg):
    """A fresh database per test: no other test's tables in the advisor's view."""
    name = f"gate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg.dsn(database=name)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def workload(tmp_path) -> Path:
    path = tmp_path / "workload.py"
    path.write_text(WORKLOAD)
    return path


def _prefix() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


def _setup(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _library(dsn: str, prefix: str) -> None:
    _setup(dsn, f"""
        CREATE TABLE {prefix}_authors (id int PRIMARY KEY, name text NOT NULL);
        CREATE TABLE {prefix}_books (id int PRIMARY KEY, author_id int NOT NULL, title text);
        INSERT INTO {prefix}_authors SELECT g, 'author ' || g FROM generate_series(1, {ROWS}) g;
        INSERT INTO {prefix}_books SELECT g, g, 'book ' || g FROM generate_series(1, {ROWS}) g;
        ANALYZE;
    """)


def _env(database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PGLOUPE_") and k not in ("DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE")}
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def gate(*args: str, database_url: str | None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*GATE, *args], env=_env(database_url), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _junit_cases(path: Path) -> list[ET.Element]:
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["pgloupe"]
    return suites[0].findall("testcase")


def test_n_plus_one_fails_the_gate_and_writes_report_and_junit(db, pg, workload, tmp_path):
    prefix = _prefix()
    _library(db, prefix)
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = gate("run", "--fail-on", "warning", "--report", str(report), "--junit", str(junit),
                  "--", sys.executable, str(workload), "nplus1", prefix, database_url=db)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "workload nplus1 via port" in result.stdout
    assert f"via port {pg.port}\n" not in result.stdout  # it went through the proxy, not straight to the server
    assert "n_plus_one_select" in result.stdout and "FAILED" in result.stdout
    assert CANARY not in result.stdout + result.stderr  # no value from the wire is printed

    data = json.loads(report.read_text())
    assert data["exit_code"] == 0 and data["pgloupe_exit_code"] == 1
    assert data["command"][-2:] == ["nplus1", prefix]
    n1 = [f for f in data["findings"] if f["kind"] == "n_plus_one_select"]
    assert len(n1) == 1 and n1[0]["failing"] and f"{prefix}_authors" in n1[0]["tables"]
    assert n1[0]["statements"] >= ROWS - 1
    lookups = [s for s in data["statements"] if s["kind"] == "SELECT" and s["tables"] == [f"{prefix}_authors"]]
    assert len(lookups) == 1 and lookups[0]["calls"] == ROWS
    assert "%s" in lookups[0]["text"] and CANARY not in report.read_text() + junit.read_text()

    cases = _junit_cases(junit)
    failing = [c for c in cases if c.find("failure") is not None]
    assert [c.get("classname") for c in failing] == ["n_plus_one_select"]
    assert failing[0].get("name") == f"n_plus_one_select {prefix}_authors {n1[0]['fingerprint']}"
    failure = failing[0].find("failure")
    assert failure.get("type") == n1[0]["severity"] and failure.get("message") == n1[0]["message"]
    assert n1[0]["suggestion"] in failure.text


def test_fixed_query_passes(db, workload, tmp_path):
    prefix = _prefix()
    _library(db, prefix)
    junit = tmp_path / "junit.xml"
    result = gate("run", "--fail-on", "warning", "--junit", str(junit),
                  "--", sys.executable, str(workload), "fixed", prefix, database_url=db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "n_plus_one" not in result.stdout and "passed" in result.stdout
    cases = _junit_cases(junit)
    assert cases and all(c.find("failure") is None for c in cases)


def test_baseline_accepts_known_findings_but_not_new_ones(db, workload, tmp_path):
    prefix = _prefix()
    _library(db, prefix)
    _setup(db, f"CREATE TABLE {prefix}_notes (id int PRIMARY KEY, team_id int NOT NULL, body text); "
               f"INSERT INTO {prefix}_notes VALUES (1, 1, 'hello'); ANALYZE;")
    baseline = tmp_path / "baseline.json"
    first = gate("run", "--fail-on", "warning", "--write-baseline", str(baseline),
                 "--", sys.executable, str(workload), "nplus1", prefix, database_url=db)
    assert first.returncode == 1, first.stdout + first.stderr
    assert any(f["kind"] == "n_plus_one_select" for f in json.loads(baseline.read_text())["findings"])

    again = gate("run", "--fail-on", "warning", "--baseline", str(baseline),
                 "--", sys.executable, str(workload), "nplus1", prefix, database_url=db)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "n_plus_one_select" in again.stdout and "in the baseline" in again.stdout

    junit = tmp_path / "junit.xml"
    new = gate("run", "--fail-on", "warning", "--baseline", str(baseline), "--junit", str(junit),
               "--", sys.executable, str(workload), "nplus1+tenant", prefix, database_url=db)
    assert new.returncode == 1, new.stdout + new.stderr
    failing = {c.get("classname") for c in _junit_cases(junit) if c.find("failure") is not None}
    assert "cross_tenant" in failing and "n_plus_one_select" not in failing


def test_missing_baseline_file_is_an_error(db, workload, tmp_path):
    result = gate("run", "--baseline", str(tmp_path / "nope.json"), "--", sys.executable, "-c", "pass",
                  database_url=db)
    assert result.returncode == 2 and "nope.json does not exist" in result.stderr


def test_failing_command_exit_code_wins(db, workload):
    result = gate("run", "--fail-on", "info", "--", sys.executable, str(workload), "fail", _prefix(), database_url=db)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the command failed (exit 3)" in result.stdout


def test_no_database_is_a_usage_error():
    result = gate("run", "--", sys.executable, "-c", "pass", database_url=None, timeout=30)
    assert result.returncode == 2
    assert "--upstream" in result.stderr and "DATABASE_URL" in result.stderr


def test_command_that_cannot_run(db):
    result = gate("run", "--", "pgloupe-no-such-command-3c1f", database_url=db, timeout=30)
    assert result.returncode == 127 and "command not found: pgloupe-no-such-command-3c1f" in result.stderr


def test_upstream_flag_without_database_url(db, workload):
    prefix = _prefix()
    _library(db, prefix)
    result = gate("run", "--upstream", db, "--", sys.executable, str(workload), "fixed", prefix, database_url=None)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 5), (signal.SIGINT, 6)])
def test_signals_are_forwarded_to_the_command(db, workload, tmp_path, sig, code):
    ready = tmp_path / "ready"
    # Its own session, as under a CI runner: no terminal delivers Ctrl-C to the command directly.
    proc = subprocess.Popen([*GATE, "run", "--", sys.executable, str(workload), "signal", _prefix(), str(ready)],
                            env=_env(db), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), "the command did not start"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, out + err
    assert f"workload got {sig.name}" in out and "the command failed" in out


def test_compare_loop_and_batched_inserts(db, workload, tmp_path):
    n = 40
    prefix = _prefix()
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    for mode, path in (("inserts", before), ("batch", after)):
        _setup(db, f"DROP TABLE IF EXISTS {prefix}_items; CREATE TABLE {prefix}_items (id int PRIMARY KEY, name text)")
        result = gate("run", "--fail-on", "never", "--report", str(path),
                      "--", sys.executable, str(workload), mode, prefix, str(n), database_url=db)
        assert result.returncode == 0, result.stdout + result.stderr
    loop_findings = {f["kind"] for f in json.loads(before.read_text())["findings"]}
    assert "n_plus_one_insert" in loop_findings

    text = gate("report", "--compare", str(before), str(after), database_url=None, timeout=30)
    assert text.returncode == 0, text.stderr
    assert f"{n} INSERTs became 1" in text.stdout
    assert "statements" in text.stdout and "time" in text.stdout
    assert "fixed finding: n_plus_one_insert" in text.stdout
    insert_line = next(line for line in text.stdout.splitlines() if "INSERT INTO" in line)
    assert f"{n} -> 1" in insert_line and f"-{n - 1}" in insert_line

    machine = gate("report", "--compare", str(before), str(after), "--json", database_url=None, timeout=30)
    assert machine.returncode == 0, machine.stderr
    data = json.loads(machine.stdout)
    inserts = [s for s in data["shapes"] if s["kind"] == "INSERT"]
    assert len(inserts) == 1
    assert (inserts[0]["calls_before"], inserts[0]["calls_after"], inserts[0]["calls_delta"]) == (n, 1, 1 - n)
    assert data["shapes"][0] is not None and data["shapes"][0]["fingerprint"] == inserts[0]["fingerprint"]
    assert data["before"]["statements"] >= n and data["after"]["statements"] >= 1
    assert {"kind": "INSERT", "before": n, "after": 1, "delta": 1 - n} in data["by_kind"]


def test_compare_reports_added_and_removed_shapes(tmp_path):
    row = {"fingerprint": "a" * 16, "text": "SELECT ? FROM t", "kind": "SELECT", "tables": ["t"], "calls": 3,
           "total_ms": 1.5, "rows": 3}
    other = {**row, "fingerprint": "b" * 16, "text": "DELETE FROM t WHERE id = ?", "kind": "DELETE"}
    (tmp_path / "b.json").write_text(json.dumps({"findings": [], "statements": [row]}))
    (tmp_path / "a.json").write_text(json.dumps({"findings": [], "statements": [other]}))
    result = gate("report", "--compare", str(tmp_path / "b.json"), str(tmp_path / "a.json"), "--json",
                  database_url=None, timeout=30)
    statuses = {s["fingerprint"][0]: s["status"] for s in json.loads(result.stdout)["shapes"]}
    assert statuses == {"a": "removed", "b": "added"}
    bad = gate("report", "--compare", str(tmp_path / "b.json"), str(tmp_path / "missing.json"),
               database_url=None, timeout=30)
    assert bad.returncode == 2 and "missing.json does not exist" in bad.stderr


def test_proxy_url_keeps_credentials_and_options():
    url = "postgresql://app%40x:p%2Fw@db.internal:5433,db2:5432/app?sslmode=require&application_name=ci&port=5433"
    out = proxy_url(url, "127.0.0.1", 6543)
    parts = urlsplit(out)
    assert parts.netloc == "app%40x:p%2Fw@127.0.0.1:6543" and parts.path == "/app"
    assert parts.query == "application_name=ci"
    assert "sslmode=require" in proxy_url(url, "::1", 6543, tls=True)
    assert urlsplit(proxy_url("postgresql:///app?host=/run/pg", "::1", 7)).netloc == "[::1]:7"


def test_junit_and_baseline_helpers():
    finding = {"kind": "cross_tenant", "severity": "error", "fingerprint": "f" * 16, "tables": ["notes"],
               "message": "no team_id \x01 filter", "suggestion": "add team_id", "example": "SELECT ... = %s"}
    verdicts = judge([finding], set(), "error")
    root = ET.fromstring(junit_xml([finding], verdicts))
    assert root.find("testsuite").get("failures") == "1"
    assert judge([finding], {("cross_tenant", "f" * 16)}, "error") == ["base"]
    assert judge([finding], set(), "never") == [""] and judge([finding], set(), "critical") == [""]
    assert baseline_json([finding])["findings"][0]["fingerprint"] == "f" * 16


def test_the_gate_judges_the_commands_own_traffic_by_default():
    """Catalog advice is judged when it is about the command's statements (an index they lack, on a table
    of the database they used); a duplicate index, or advice about another database or table, is the
    database's state: reported, not judged, unless --judge database."""
    touched = touched_tables([{"tables": ["books"], "databases": ["app_test"]}])

    def advice(kind, table, database="app_test"):
        return {"kind": kind, "severity": "error", "fingerprint": kind + table, "tables": [table],
                "databases": [database]}

    runtime = {"kind": "n_plus_one_select", "severity": "error", "fingerprint": "f", "tables": ["books"]}
    findings = [runtime, advice("missing_index", "books"), advice("missing_index", "authors"),
                advice("missing_index", "books", "app"), advice("duplicate_index", "books"),
                advice("missing_tenant_index", "books")]
    assert judge(findings, set(), "error", touched) == ["FAIL", "FAIL", "out", "out", "out", "FAIL"]
    assert judge(findings, set(), "error") == ["FAIL"] * 6  # --judge database


def test_baseline_file_must_hold_findings(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('{"something": 1}')
    with pytest.raises(Exception, match="not a pgloupe report or baseline"):
        load_baseline(str(path))
