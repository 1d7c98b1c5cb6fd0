"""Several ``pgloupe serve`` replicas on one PostgreSQL findings store, as real processes: their counts
add up exactly, a replica killed with SIGKILL loses at most its batch window, and the store's server
restarting under traffic costs the traffic nothing and the counts nothing."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request

import psycopg
import pytest

from proxy.demo.embedded import EmbeddedPostgres

from .conftest import healthz, start_serve, wait_until
from .test_store_service import N_PLUS_ONE, n_plus_one, prepare

FLUSH_S = 0.3
UNIT_GAP_S = 0.1
# An N+1 request's occurrence reaches the store within: its unit closing, the analysis batch, one flush
WINDOW_S = FLUSH_S + UNIT_GAP_S + 1.0


@pytest.fixture(scope="module")
def store_server():
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store_dsn(store_server):
    with psycopg.connect(store_server.dsn(), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS pgloupe CASCADE")
    return store_server.dsn()


@pytest.fixture
def replicas(pg, store_dsn, tmp_path):
    config = tmp_path / "pgloupe.toml"
    config.write_text(f"[detectors]\nunit_gap_ms = {UNIT_GAP_S * 1000:.0f}\n")
    started: list = []

    def start(name: str):
        proc, listen, http = start_serve(
            ["--workers", "0", "--upstream", pg.dsn(), "--store", store_dsn, "--config", str(config)],
            env={"PGLOUPE_STORE_FLUSH_S": str(FLUSH_S), "PGLOUPE_STORE_REPLICA": name, "PGLOUPE_LOG_LEVEL": "warning"})
        started.append(proc)
        return proc, f"postgresql://postgres@127.0.0.1:{listen}/postgres", http

    prepare(pg.dsn())
    yield start
    for proc in started:
        stop(proc)


def stop(proc) -> None:
    """SIGTERM, as an orchestrator stops a replica (its last batch goes out); SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except Exception:
            proc.kill()
            proc.communicate()


def stored(store_dsn: str) -> tuple[int, int] | None:
    """(occurrences, statements) of the N+1 on st_items as the store holds it."""
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count, statements FROM pgloupe.findings WHERE kind = %s AND tables LIKE %s",
                           (N_PLUS_ONE, '%"st_items"%')).fetchone()
    return tuple(row) if row else None


def api_count(http: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/findings", timeout=10) as resp:
        items = json.load(resp)["findings"]
    return next((f["count"] for f in items if f["kind"] == N_PLUS_ONE and "st_items" in f["tables"]), 0)


class Traffic:
    """N+1 requests through one replica on a thread, each one's completion time recorded."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.done: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n_plus_one(self.dsn)
                self.done.append(time.monotonic())
            except psycopg.Error as exc:
                self.errors.append(type(exc).__name__)
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join(30)
        return len(self.done)


def test_two_replicas_one_merged_set_with_exact_counts(replicas, store_dsn):
    _a, dsn_a, http_a = replicas("a")
    _b, dsn_b, http_b = replicas("b")
    threads = [threading.Thread(target=n_plus_one, args=(dsn, n)) for dsn, n in ((dsn_a, 7), (dsn_b, 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wait_until(lambda: stored(store_dsn) == (12, 12 * 8), 30, "12 occurrences of 8 statements in the store")
    # each replica shows the merged set: the same finding, counted over both
    wait_until(lambda: api_count(http_a) == 12 and api_count(http_b) == 12, 15, "both replicas to show 12")
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        per_replica = dict(conn.execute("SELECT replica, sum(count) FROM pgloupe.counts WHERE kind = %s "
                                        "GROUP BY replica", (N_PLUS_ONE,)).fetchall())
        # the store holds only normalized text: no parameter value of the workload
        texts = conn.execute("SELECT example, message FROM pgloupe.findings").fetchall()
    assert per_replica == {"a": 7, "b": 5}
    assert all("%s" in example or "$" not in example for example, _ in texts)


def test_a_replica_killed_mid_write_loses_at_most_its_batch_window(replicas, store_dsn):
    proc_a, dsn_a, _ = replicas("a")
    _b, dsn_b, http_b = replicas("b")
    traffic = Traffic(dsn_a)
    wait_until(lambda: len(traffic.done) >= 15, 60, "traffic through replica a")
    proc_a.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    proc_a.wait(10)
    sent_a = traffic.stop()
    recent = sum(1 for t in traffic.done if t > killed_at - WINDOW_S)
    # its replacement (a new process, a new run id) and the other replica go on
    _a2, dsn_a2, _ = replicas("a")
    n_plus_one(dsn_a2, 3)
    n_plus_one(dsn_b, 4)
    time.sleep(WINDOW_S + FLUSH_S)
    count, _statements = wait_until(lambda: stored(store_dsn), 10, "the finding in the store")
    expected = sent_a + 3 + 4
    assert count <= expected, "counted twice"
    assert expected - count <= recent, (expected, count, recent)
    assert api_count(http_b) == count


def test_the_store_server_restarting_under_traffic_costs_nothing(replicas, store_server, store_dsn):
    _a, dsn_a, http_a = replicas("a")
    traffic = Traffic(dsn_a)
    wait_until(lambda: len(traffic.done) >= 5, 60, "traffic")
    store_server._run("pg_ctl", "-D", str(store_server.datadir), "-m", "fast", "-w", "stop")
    try:
        health = wait_until(lambda: (h := healthz(http_a)) and not h["store"]["ok"] and h, 20,
                            "/healthz to say the store is behind")
        assert health["status"] == "degraded" and health["warnings"]
        during = len(traffic.done)
        wait_until(lambda: len(traffic.done) >= during + 5, 60, "traffic to go on while the store is down")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_a}/metrics", timeout=10) as resp:
            assert "pgloupe_store_up 0.0" in resp.read().decode()
    finally:
        store_server._run("pg_ctl", "-D", str(store_server.datadir), "-l", str(store_server.base / "postgres.log"),
                          "-w", "start")
    time.sleep(1.0)
    sent = traffic.stop()
    assert traffic.errors == []  # no client saw the store's outage
    wait_until(lambda: (h := healthz(http_a)) and h["store"]["ok"], 90, "the store to catch up")
    wait_until(lambda: stored(store_dsn) and stored(store_dsn)[0] == sent, 30,
               f"all {sent} occurrences in the store, each once")
    assert api_count(http_a) == sent


def test_a_store_down_at_start_is_caught_up_once_it_comes_up(pg, tmp_path):
    """pgloupe starts, serves and finds while its store's server does not exist yet; once it starts,
    what was found is written, each occurrence once."""
    from proxy.demo.embedded import free_port

    prepare(pg.dsn())
    port = free_port()
    store_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    config = tmp_path / "pgloupe.toml"
    config.write_text(f"[detectors]\nunit_gap_ms = {UNIT_GAP_S * 1000:.0f}\n")
    proc, listen, http = start_serve(
        ["--workers", "0", "--upstream", pg.dsn(), "--store", store_url, "--config", str(config)],
        env={"PGLOUPE_STORE_FLUSH_S": str(FLUSH_S), "PGLOUPE_CONNECT_TIMEOUT": "2"})
    server = None
    try:
        health = healthz(http)
        assert health["status"] == "degraded" and not health["store"]["ok"]
        assert set(health["store"]) == {"backend", "ok", "behind_s", "pending"}  # open to probes: no where, no error
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/store", timeout=10) as resp:
            status = json.load(resp)
        assert f"127.0.0.1:{port}/postgres" in status["where"] and "postgres@" not in status["where"]
        assert status["error"] and status["failures"] >= 1
        n_plus_one(f"postgresql://postgres@127.0.0.1:{listen}/postgres", 3)
        wait_until(lambda: api_count(http) == 3, 20, "the findings served from memory")
        server = EmbeddedPostgres(port=port).start()
        wait_until(lambda: (h := healthz(http)) and h["store"]["ok"], 90, "the store to be caught up")
        assert stored(server.dsn()) == (3, 24)
        assert api_count(http) == 3
    finally:
        stop(proc)
        if server is not None:
            server.stop()
