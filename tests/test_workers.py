"""``--workers N``: N forwarding processes on one port, one analysis, merged findings and metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.events import ConnectionClosed, StatementEvent
from proxy.workers.channel import MAX_FRAME, FrameDecoder, encode
from proxy.workers.pool import CONN_ID_STRIDE, reserve_port

from .conftest import healthz, start_serve, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _event(i: int) -> StatementEvent:
    return StatementEvent(
        conn_id=i, user="u", database="d", application_name="a", client_addr="c", sql=f"select {i}",
        protocol="simple", statement_name=None, param_count=0, param_hashes=(), result_hashes=(("ab",),),
        started_at=1.0, duration=0.5, command="SELECT", rows=1, response_bytes=10, sqlstate=None,
        tx_before="I", tx_after="I", in_transaction=False, pipelined=True, extra={"k": "v"})


def test_channel_frames_survive_any_split():
    messages = [("events", [_event(1), ConnectionClosed(1, 2.0), _event(2)]), ("stats", {"queued": 3}), ("report",)]
    data = b"".join(encode(m) for m in messages)
    for step in (1, 3, 7, len(data)):
        decoder = FrameDecoder()
        out = []
        for i in range(0, len(data), step):
            out += decoder.feed(data[i:i + step])
        assert out == messages


def test_channel_refuses_an_oversized_frame():
    with pytest.raises(ValueError, match="channel frame"):
        FrameDecoder().feed((MAX_FRAME + 1).to_bytes(4, "big") + b"x")


def test_reserved_port_takes_no_connections_but_workers_can_share_it():
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        listener.close()
    finally:
        reserved.close()


def _metrics(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_two_workers_share_the_port_and_report_to_one_analysis(pg, start_proxy):
    proxy = start_proxy(workers=2, admin_users=["postgres"])
    app = proxy.app
    assert app.workers is not None and len(app.workers.slots) == 2
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wk_orders (id int PRIMARY KEY, customer_id int)")
        conn.execute("INSERT INTO wk_orders SELECT g, g % 7 FROM generate_series(1, 50) g ON CONFLICT DO NOTHING")

    async def clients():
        conns = [await asyncpg.connect(proxy.dsn(), timeout=10) for _ in range(12)]
        try:
            for conn in conns:
                assert await conn.fetchval("SELECT count(*) FROM wk_orders") == 50
            # an N+1 on one connection: the loop's statements reach the analysis from one worker
            ids = [r["id"] for r in await conns[0].fetch("SELECT id FROM wk_orders ORDER BY id LIMIT 25")]
            for i in ids:
                await conns[0].fetchrow("SELECT customer_id FROM wk_orders WHERE id = $1", i)
            with psycopg.connect(proxy.dsn(database="pgloupe"), autocommit=True) as admin:
                rows = admin.execute("SHOW CLIENTS").fetchall()
            return rows
        finally:
            for conn in conns:
                await conn.close()

    rows = asyncio.run(clients())
    ids = [int(r[0]) for r in rows]
    workers_used = {i // CONN_ID_STRIDE for i in ids}
    assert len(ids) == 13  # 12 clients and the admin session itself, each listed once
    assert len(workers_used) == 2, f"the kernel gave every connection to one worker: {ids}"
    assert sum(1 for r in rows if r[2] == "pgloupe" and r[6] == "admin") == 1

    def n_plus_one():
        return [f for f in app.all_findings() if f["kind"] == "n_plus_one_select"]

    deadline = time.monotonic() + 15
    while not n_plus_one() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert n_plus_one(), [f["kind"] for f in app.all_findings()]
    # counters from both workers are summed, and no statement was lost on the way
    metrics = _metrics(proxy.http_port)
    assert metrics["pgloupe_workers"] == 2
    assert metrics["pgloupe_client_connections_total"] >= 13
    assert metrics["pgloupe_client_connections"] == 0
    assert metrics["pgloupe_events_dropped_total"] == 0
    assert sum(v for k, v in metrics.items() if k.startswith("pgloupe_statements_total")) >= 12 + 1 + 25
    deadline = time.monotonic() + 10
    while True:  # events reach the analysis in batches: the queue empties shortly after the traffic stops
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/healthz", timeout=10) as resp:
            health = json.load(resp)
        if health["events_queued"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert health["workers"] == 2 and health["events_queued"] == 0


def test_values_hash_alike_in_workers_and_analysis(pg, start_proxy):
    # Django-style N+1: the parent's result values come hashed from a worker, the children's
    # interpolated literals are hashed by the analysis process: the two must agree to link them.
    proxy = start_proxy(workers=1)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wk_authors (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO wk_authors SELECT g, 'a' || g FROM generate_series(1, 30) g ON CONFLICT DO NOTHING")
    with psycopg.connect(proxy.dsn(), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM wk_authors ORDER BY id LIMIT 12").fetchall()]
        for i in ids:
            conn.execute("SELECT name FROM wk_authors WHERE id = %s", (i,)).fetchone()
    deadline = time.monotonic() + 15
    found = []
    while not found and time.monotonic() < deadline:
        found = [f for f in proxy.app.all_findings() if f["kind"] == "n_plus_one_select"]
        time.sleep(0.1)
    assert found and found[0].get("details", {}).get("parent_fingerprint"), found


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _gone(pid: int) -> bool:
    """Exited with its sockets closed: no such process, or a zombie with no thread left. A killed
    process's main thread turns zombie before its other threads (libuv's pool) have exited, and the
    open files, its listening socket among them, go with the last thread: until then the kernel still
    hands that socket new connections, and resets them."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def test_serve_restarts_a_dead_worker_and_stops_cleanly_on_sigterm(pg):
    proc, listen, http = start_serve(["--workers", "2", "--upstream", pg.dsn()])
    try:
        assert wait_until(lambda: healthz(http), 30, "/healthz")["workers"] == 2
        workers = wait_until(lambda: len(_children(proc.pid)) == 2 and _children(proc.pid), 10, "two workers")
        os.kill(workers[0], signal.SIGKILL)
        # (a connection the kernel queued on the dying worker's socket in this instant is lost with it)
        wait_until(lambda: _gone(workers[0]), 10, "the worker's end")
        # the surviving worker keeps serving while the dead one is replaced
        for _ in range(6):
            with psycopg.connect(host="127.0.0.1", port=listen, user="postgres", dbname="postgres",
                                 connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_until(lambda: _metrics(http).get("pgloupe_worker_restarts_total") == 1, 20, "a worker restart")
        replaced = wait_until(lambda: len(_children(proc.pid)) == 2 and _children(proc.pid), 10, "a new worker")
        assert workers[0] not in replaced
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "worker_exited" in err
        for pid in replaced:
            assert _gone(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_workers_report_the_parse_messages_they_could_not_keep(pg):
    """A worker keeps each session's named statements (1 MB of Parse messages at most) to re-send them
    after a capture gap; those it cannot keep are counted in /metrics, and the statements still run."""
    proc, listen, http = start_serve(["--workers", "1", "--upstream", pg.dsn()])
    try:
        assert _metrics(http)["pgloupe_worker_prepared_refused_total"] == 0
        with psycopg.connect(host="127.0.0.1", port=listen, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            for i in range(40):  # named Parses of 30 KB: past the session's 1 MB after 34 of them
                sql = f"SELECT {i} AS n /* " + "x" * 30_000 + " */"
                assert conn.execute(sql, prepare=True).fetchone() == (i,)
        wait_until(lambda: _metrics(http)["pgloupe_worker_prepared_refused_total"] == 6, 20,
                   "the refused Parse messages counted")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_worker_count_is_validated():
    from proxy.config import ConfigError, load

    with pytest.raises(ConfigError, match="workers"):
        load(None, env={"PGLOUPE_WORKERS": "-1"})
    with pytest.raises(ConfigError, match="workers must be a number or auto"):
        load(None, env={"PGLOUPE_WORKERS": "many"})
    # by default one forwarding process per CPU the process may run on, at most 8
    from proxy.config import cgroup_cpus

    cpus = min(len(os.sched_getaffinity(0)), cgroup_cpus() or 64)
    assert load(None, env={}).workers == load(None, env={"PGLOUPE_WORKERS": "auto"}).workers == min(8, cpus)
    assert load(None, env={}, workers="3").workers == 3


def test_auto_workers_follow_a_containers_cpu_quota(tmp_path):
    from proxy.config import cgroup_cpus

    v2 = tmp_path / "v2"
    v2.mkdir()
    for text, cpus in (("max 100000", None), ("100000 100000", 1), ("150000 100000", 2), ("800000 100000", 8)):
        (v2 / "cpu.max").write_text(text + "\n")
        assert cgroup_cpus(str(v2)) == cpus, text
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    for quota, cpus in (("-1", None), ("200000", 2), ("50000", 1)):
        (v1 / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
        assert cgroup_cpus(str(v1)) == cpus, quota
    assert cgroup_cpus(str(tmp_path / "none")) is None


def test_a_worker_process_does_not_load_the_detectors():
    # every worker would otherwise carry sqlglot and the detectors (~40 MB) it never uses
    code = ("import sys, proxy.workers.child, proxy.relay.listener, proxy.logs; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlglot', 'detectors', 'prometheus_client'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_analyse_off_relays_without_statement_events(pg, start_proxy):
    proxy = start_proxy(analyse=False)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        with conn.cursor() as cur:
            cur.execute("SELECT g FROM generate_series(1, 3) g")
            assert cur.fetchall() == [(1,), (2,), (3,)]
    time.sleep(0.3)
    assert proxy.events == [] and proxy.app.queue.accepted == 0
    assert proxy.app.proxy_counters()["connections_total"] == 1


def test_a_worker_is_given_no_secret_it_does_not_use():
    from proxy.config import load
    from proxy.workers.pool import worker_settings

    settings = load(None, env={}, upstream="postgresql://app@127.0.0.1:5432/crm", workers=2,
                    hash_key="canary-hash-key-0123", admin_password="canary-admin-pw", http_token="canary-token")
    told = worker_settings(settings)
    assert (told.hash_key, told.admin_password, told.http_token) == (None, None, None)
    assert told.workers == 2 and told.upstream == settings.upstream
    assert settings.hash_key == "canary-hash-key-0123"  # the main process keeps its own
    wire = encode({"settings": told})
    assert not any(secret in wire for secret in (b"canary-hash-key", b"canary-admin-pw", b"canary-token"))


def test_with_workers_the_analysis_thread_yields_to_the_traffic(pg, start_proxy):
    import threading

    app = start_proxy(workers=1).app
    tid = app.analysis.executor.submit(threading.get_native_id).result(10)
    # the default, analysis_priority = low: nice 19
    assert os.sched_getscheduler(tid) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, tid) == 19
    idle = start_proxy(workers=1, analysis_priority="idle").app
    tid = idle.analysis.executor.submit(threading.get_native_id).result(10)
    assert os.sched_getscheduler(tid) == os.SCHED_IDLE
