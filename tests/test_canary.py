"""Nothing sensitive leaks: canary values planted as literals, bound parameters and a SCRAM password go
through a workload that produces findings of every kind, then every output pgloupe has is searched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import structlog

from .canary_workload import CANARIES, prepare, run
from .conftest import SCRAM_PASSWORD, SCRAM_USER, start_serve

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (*CANARIES, SCRAM_PASSWORD)
EXPECTED_KINDS = {"n_plus_one_select", "n_plus_one_insert", "select_star", "cross_tenant", "slow_query",
                  "repeated_identical", "offset_pagination", "missing_transaction"}


class Webhook:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fetch(port: int, path: str, token: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.read().decode("utf-8", "replace")


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_no_value_or_password_reaches_any_output(pg, start_proxy, tmp_path):
    hook = Webhook()
    try:
        with structlog.testing.capture_logs() as logs:
            proxy = start_proxy(
                http_token="canary-token", admin_users=[SCRAM_USER], state_dir=str(tmp_path / "state"),
                sections={"alerts": {"webhooks": [hook.url, {"url": hook.url + "/slack", "format": "slack"}],
                                     "min_severity": "info", "cooldown_s": 0},
                          "detectors": {"unit_gap_ms": 300}})
            prepare(pg.dsn())
            assert proxy.background.call(proxy.app.reviews.refresh)
            dsn = proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD)
            run(dsn)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                kinds = {f["kind"] for f in proxy.app.all_findings()}
                if EXPECTED_KINDS <= kinds and hook.bodies:
                    break
                time.sleep(0.2)
            assert EXPECTED_KINDS <= kinds, sorted(kinds)  # the outputs below are not empty
            time.sleep(1.0)  # the last alerts go out
            outputs = {path: fetch(proxy.http_port, path, "canary-token")
                       for path in ("/api/findings", "/metrics", "/healthz", "/")}
            with psycopg.connect(proxy.dsn(user=SCRAM_USER, password=SCRAM_PASSWORD, database="pgloupe"),
                                 autocommit=True) as admin:
                for command in ("SHOW FINDINGS", "SHOW FINGERPRINTS", "SHOW CLIENTS", "SHOW CONFIG"):
                    outputs[command] = repr(admin.execute(command).fetchall())
            assert proxy.app.store.flush_now()
            store_file = tmp_path / "state" / "findings.sqlite3"
            import sqlite3
            with sqlite3.connect(store_file) as db:  # every row of every table, and the file's bytes too
                outputs["store"] = repr([db.execute(f"SELECT * FROM {t}").fetchall() for (t,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()])
            assert "n_plus_one_select" in outputs["store"]
            outputs["store file"] = b"".join(p.read_bytes() for p in store_file.parent.iterdir()).decode("latin-1")
        outputs["logs"] = repr(logs)
        outputs["webhooks"] = b"\n".join(hook.bodies).decode("utf-8", "replace")
        assert hook.bodies and len(logs) > 5
    finally:
        hook.close()
    assert json.loads(outputs["/api/findings"])["findings"]
    found = {name: leaks(text) for name, text in outputs.items() if leaks(text)}
    assert found == {}, found


def test_no_value_reaches_the_ci_reports(pg, tmp_path):
    prepare(pg.dsn())
    report, junit, baseline = tmp_path / "report.json", tmp_path / "junit.xml", tmp_path / "baseline.json"
    url = pg.dsn().replace("postgres@", f"{SCRAM_USER}:{SCRAM_PASSWORD}@")
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--upstream", url, "--fail-on", "never", "--report", str(report),
         "--junit", str(junit), "--write-baseline", str(baseline), "--log-level", "info", "--",
         sys.executable, str(ROOT / "tests" / "canary_workload.py")],
        cwd=ROOT, env=dict(os.environ, PGLOUPE_UPSTREAM_SSLMODE="disable"), capture_output=True, text=True,
        timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    kinds = {f["kind"] for f in json.loads(report.read_text())["findings"]}
    assert {"n_plus_one_select", "slow_query", "select_star"} <= kinds, kinds
    outputs = {"stdout": proc.stdout, "stderr": proc.stderr, "report": report.read_text(),
               "junit": junit.read_text(), "baseline": baseline.read_text()}
    found = {name: leaks(text) for name, text in outputs.items() if leaks(text)}
    assert found == {}, found


def test_no_value_reaches_the_logs_of_serve_and_its_workers(pg):
    """The same through `pgloupe serve --workers 1` at debug level: the worker's log lines and the API too."""
    import signal


    prepare(pg.dsn())
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:  # a PostgreSQL findings store, read after
        conn.execute("DROP DATABASE IF EXISTS canary_store")
        conn.execute("CREATE DATABASE canary_store")
    proc, listen, http = start_serve(["--workers", "1", "--upstream", pg.dsn(), "--log-level", "debug",
                                      "--log-format", "json", "--store", pg.dsn(database="canary_store")])
    try:
        run(f"postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{listen}/postgres")
        deadline = time.monotonic() + 20
        while len(json.loads(fetch(http, "/api/findings", ""))["findings"]) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        api = fetch(http, "/api/findings", "")
        metrics = fetch(http, "/metrics", "")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert '"worker": 0' in err and "session_started" in err  # the worker's own lines are in there
    assert len(json.loads(api)["findings"]) >= 4
    with psycopg.connect(pg.dsn(database="canary_store"), autocommit=True) as conn:  # every row of every table
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'pgloupe'")]
        store = repr([conn.execute(f"SELECT * FROM pgloupe.{t}").fetchall() for t in tables])
    assert {"findings", "counts", "deploys"} <= set(tables) and "n_plus_one_select" in store
    found = {name: leaks(text) for name, text in {"stderr": err, "stdout": out, "api": api, "metrics": metrics,
                                                   "store": store}.items() if leaks(text)}
    assert found == {}, found
