"""SIGTERM drains (running statements finish, then sessions end with 57P01); SIGHUP reloads the detector
and alert tables without dropping a connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def _healthy(http: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as resp:
            return json.load(resp)
    except OSError:
        return None


def _serve(pg, tmp_path, config: str, **env) -> tuple[subprocess.Popen, int, int, Path]:
    listen, http = free_port(), free_port()
    path = tmp_path / "pgloupe.toml"
    path.write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
         "--upstream", pg.dsn(), "--config", str(path), "--log-format", "json"],
        env=dict(os.environ, PGLOUPE_UPSTREAM_SSLMODE="disable", **env), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while _healthy(http) is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.1)
    return proc, listen, http, path


def _in_background(conn: psycopg.Connection, sql: str) -> tuple[threading.Thread, dict]:
    """Run a two-column query on its own thread; the outcome gets its second column or the error."""
    outcome: dict = {}

    def query():
        try:
            outcome["value"] = conn.execute(sql).fetchone()[1]
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=query)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("workers", ["1", "0"])
def test_sigterm_lets_running_statements_finish_then_ends_sessions(pg, tmp_path, workers):
    proc, listen, _http, _ = _serve(pg, tmp_path, "shutdown_timeout = 20\n", PGLOUPE_WORKERS=workers)
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{listen}/postgres"
        idle = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        running = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        worker, outcome = _in_background(running, "SELECT pg_sleep(1.5), 'finished'")
        time.sleep(0.4)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.4)
        with pytest.raises(psycopg.OperationalError):  # no new sessions while draining
            psycopg.connect(dsn, connect_timeout=3)
        with pytest.raises(psycopg.OperationalError) as ended:  # the idle session was told why
            idle.execute("SELECT 1")
        assert "administrator command" in str(ended.value) or ended.value.sqlstate == "57P01"
        worker.join(15)
        assert outcome.get("value") == "finished", outcome  # the running one finished first
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 15
        assert "shutdown_timeout" not in err  # nobody was cut
        running.close()
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_cuts_what_outlives_the_shutdown_timeout(pg, tmp_path):
    proc, listen, _http, _ = _serve(pg, tmp_path, "shutdown_timeout = 1\n")
    try:
        conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:{listen}/postgres", autocommit=True,
                               connect_timeout=10)
        worker, outcome = _in_background(conn, "SELECT pg_sleep(8), 'finished'")
        time.sleep(0.4)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        worker.join(15)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 6
        assert "error" in outcome and "shutdown_timeout" in err
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sighup_reloads_thresholds_and_silences_without_dropping_connections(pg, tmp_path):
    proc, listen, http, path = _serve(pg, tmp_path, "[detectors]\nslow_query_ms = [5000, 10000, 20000]\n")
    try:
        conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:{listen}/postgres", autocommit=True,
                               connect_timeout=10)
        conn.execute("SELECT pg_sleep(0.3) AS before_reload")

        def slow_examples() -> list[str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/findings?kind=slow_query", timeout=5) as r:
                return [f["example"] for f in json.load(r)["findings"]]

        time.sleep(0.5)
        assert slow_examples() == []  # 300 ms is below the 5 s threshold
        path.write_text("queue_size = 500\n[detectors]\nslow_query_ms = [100, 1000, 2000]\n"
                        "[detectors.silence]\nkinds = [\"select_star\"]\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        conn.execute("SELECT pg_sleep(0.3) AS after_reload")  # the same connection, still open
        conn.execute("SELECT * FROM pg_class LIMIT 1")
        deadline = time.monotonic() + 10
        while not any("after_reload" in e for e in slow_examples()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("after_reload" in e for e in slow_examples())
        assert not any("before_reload" in e for e in slow_examples())
        conn.close()
        # a broken file is refused and the running configuration stays
        path.write_text("[detectors]\nslow_query_ms = \"fast\"\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert _healthy(http)["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        events = [entry["event"] for entry in lines]
        assert "config_reloaded" in events and "config_reload_failed" in events
        restart = [entry for entry in lines if entry["event"] == "restart_needed"]
        assert restart and restart[0]["settings"] == "queue_size"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
