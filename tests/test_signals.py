"""SIGTERM drains (running statements finish, then sessions end with 57P01); SIGHUP reloads the detector
and alert tables without dropping a connection."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from .conftest import backend_activity, healthz, start_serve, statement_active, wait_until

ROOT = Path(__file__).resolve().parent.parent
LOCK_KEY = 7314  # an advisory lock the test holds: the statement waiting on it runs until the test says


class Served:
    """``pgloupe serve`` in a child process, its stderr (JSON log lines) read as it comes: a test waits
    for the line that says something happened instead of sleeping and hoping it has."""

    def __init__(self, proc: subprocess.Popen, listen: int, http: int, path: Path):
        self.proc, self.listen, self.http, self.path = proc, listen, http, path
        self.dsn = f"postgresql://postgres@127.0.0.1:{listen}/postgres"
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self._lines)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self._lines) if line.startswith("{")]

    def wait_for_log(self, event: str, after: int = 0, timeout: float = 30.0) -> int:
        """Wait for the ``after``+1-th log line of ``event``; returns how many there are now."""
        def seen() -> int:
            count = sum(1 for e in self.events() if e["event"] == event)
            assert count > after or self.proc.poll() is None, f"pgloupe exited before logging {event}: {self.err}"
            return count if count > after else 0
        return wait_until(seen, timeout, f"pgloupe to log {event}")

    def refuses_connections(self) -> bool:
        """Nothing accepts on the port any more (a worker's closing listen socket resets what was queued)."""
        try:
            socket.create_connection(("127.0.0.1", self.listen), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        return False

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for the process to exit (it fails the test if it does not in ``timeout``); its stderr."""
        self.proc.wait(timeout)
        self._reader.join(10)
        if not self._reader.is_alive():
            self.proc.stderr.close()
        return self.err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _serve(pg, tmp_path, config: str, **env) -> Served:
    path = tmp_path / "pgloupe.toml"
    path.write_text(config)
    proc, listen, http = start_serve(["--upstream", pg.dsn(), "--config", str(path), "--log-format", "json"], env,
                                     stdout=subprocess.DEVNULL)
    return Served(proc, listen, http, path)


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
    served = _serve(pg, tmp_path, "shutdown_timeout = 20\n", PGLOUPE_WORKERS=workers)
    try:
        with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as admin:
            idle = psycopg.connect(served.dsn, autocommit=True, connect_timeout=10)
            running = psycopg.connect(served.dsn, autocommit=True, connect_timeout=10)
            pid = running.execute("SELECT pg_backend_pid()").fetchone()[0]
            # The running statement waits on a lock the test holds, so it is still running for as long as
            # the checks below take, however slow the machine: no race between its end and the drain.
            admin.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            worker, outcome = _in_background(running, f"SELECT pg_advisory_lock({LOCK_KEY}), 'finished'")
            wait_until(lambda: statement_active(admin, pid, "pg_advisory_lock"), 10,
                       "the server to run the statement")
            served.proc.send_signal(signal.SIGTERM)
            # the drain has started once the listen socket refuses connections
            wait_until(served.refuses_connections, 15, "pgloupe to stop accepting connections")
            with pytest.raises(psycopg.OperationalError):  # no new sessions while draining
                psycopg.connect(served.dsn, connect_timeout=3)
            with pytest.raises(psycopg.OperationalError) as ended:  # the idle session was told why
                idle.execute("SELECT 1")
            assert "administrator command" in str(ended.value) or ended.value.sqlstate == "57P01"
            # pgloupe waits for the running statement: still there, still running, not cut
            assert served.proc.poll() is None and worker.is_alive() and not outcome, outcome
            assert statement_active(admin, pid, "pg_advisory_lock"), backend_activity(admin, pid)
            released = time.monotonic()
            admin.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            worker.join(15)
            assert outcome.get("value") == "finished", outcome  # the running one finished first
            err = served.finish(30)
            assert served.proc.returncode == 0, err
            # generous: a session left open would keep pgloupe until the 20 s shutdown_timeout
            assert time.monotonic() - released < 15
            assert "shutdown_timeout" not in err  # nobody was cut
            running.close()
            idle.close()
    finally:
        served.kill()


def test_sigterm_cuts_what_outlives_the_shutdown_timeout(pg, tmp_path):
    served = _serve(pg, tmp_path, "shutdown_timeout = 1\n")
    try:
        with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as admin:
            conn = psycopg.connect(served.dsn, autocommit=True, connect_timeout=10)
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            # far longer than the shutdown_timeout and the wait below: it cannot finish on its own in time
            worker, outcome = _in_background(conn, "SELECT pg_sleep(60), 'finished'")
            wait_until(lambda: statement_active(admin, pid), 10, "the server to run the statement")
            served.proc.send_signal(signal.SIGTERM)
            err = served.finish(30)  # not waiting for the 60 s statement
            worker.join(15)
            assert served.proc.returncode == 0, err
            assert "error" in outcome and "shutdown_timeout" in err, (outcome, err)  # cut, and logged
            conn.close()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # if the server still runs it
    finally:
        served.kill()


def test_sighup_reloads_thresholds_and_silences_without_dropping_connections(pg, tmp_path):
    # the admin console (SHOW FINGERPRINTS, SHOW CONFIG) shows what the analysis has seen and the
    # configuration in force; set in the environment, which a reload reads again unchanged
    served = _serve(pg, tmp_path, "[detectors]\nslow_query_ms = [5000, 10000, 20000]\n",
                    PGLOUPE_ADMIN_USERS="postgres")
    try:
        console = psycopg.connect(f"postgresql://postgres@127.0.0.1:{served.listen}/pgloupe", autocommit=True,
                                  connect_timeout=10)

        def analysed(alias: str) -> bool:
            return any(alias in row[8] for row in console.execute("SHOW FINGERPRINTS").fetchall())

        def detectors_config() -> dict:
            rows = console.execute("SHOW CONFIG").fetchall()
            return {key: value for key, value in rows if key.startswith("detectors.")}

        def slow_examples() -> list[str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{served.http}/api/findings?kind=slow_query",
                                        timeout=5) as r:
                return [f["example"] for f in json.load(r)["findings"]]

        conn = psycopg.connect(served.dsn, autocommit=True, connect_timeout=10)
        conn.execute("SELECT pg_sleep(0.3) AS before_reload")
        # analysed (the console's answer comes from the analysis thread, after the statement's batch)
        wait_until(lambda: analysed("before_reload"), 10, "the statement to be analysed")
        assert slow_examples() == []  # 300 ms is below the 5 s threshold
        served.path.write_text("queue_size = 500\n[detectors]\nslow_query_ms = [100, 1000, 2000]\n"
                               "[detectors.silence]\nkinds = [\"select_star\"]\n")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_log("config_reloaded")  # logged once the new tables are in force
        reloaded = detectors_config()
        assert [float(n) for n in re.findall(r"[\d.]+", reloaded["detectors.slow_query_ms"])] == [100, 1000, 2000]
        assert "select_star" in reloaded["detectors.silenced_kinds"], reloaded
        conn.execute("SELECT pg_sleep(0.3) AS after_reload")  # the same connection, still open
        conn.execute("SELECT * FROM pg_class LIMIT 1")
        wait_until(lambda: any("after_reload" in e for e in slow_examples()), 10, "the slow_query finding")
        assert not any("before_reload" in e for e in slow_examples())
        conn.close()
        # a broken file is refused and the running configuration stays
        served.path.write_text("[detectors]\nslow_query_ms = \"fast\"\n")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_log("config_reload_failed")
        assert healthz(served.http)["status"] == "ok"
        assert detectors_config() == reloaded
        console.close()
        served.proc.send_signal(signal.SIGTERM)
        served.finish(30)
        lines = served.events()
        events = [entry["event"] for entry in lines]
        assert "config_reloaded" in events and "config_reload_failed" in events
        restart = [entry for entry in lines if entry["event"] == "restart_needed"]
        assert restart and restart[0]["settings"] == "queue_size"
    finally:
        served.kill()
