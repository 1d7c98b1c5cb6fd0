"""What pgbench runs against, besides the server itself: PgBouncer in session mode and pgloupe (every
detector on, or relay-only), each in its own process, started and stopped by the harness."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's proxy/ and detectors/

import psycopg  # noqa: E402
from procs import (  # noqa: E402
    ROOT,
    BenchError,
    TreeCpu,
    child_pids,
    clean_env,
    pgloupe_command,
    postgres_user,
    start_time,
    stop_process,
    tail,
    tree_cpu,
    wait_port,
)

from proxy.config import Settings  # noqa: E402
from proxy.demo.embedded import EmbeddedPostgres, free_port  # noqa: E402

DATABASE = "bench"


USER = "postgres"


TARGETS = ("direct", "pgbouncer", "pgloupe")


DEFAULT_PRIORITY = next(f.default for f in fields(Settings) if f.name == "analysis_priority")


RELAY = "pgloupe-relay"  # pgloupe with analyse = false: relays bytes, builds no statement events


LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgloupe": "pgloupe", RELAY: "pgloupe relay-only"}


class PgBouncer:
    """PgBouncer in session mode in front of one server, as the postgres user, files in a temp dir."""

    def __init__(self, binary: str, pg: EmbeddedPostgres, pool_size: int, prefix: tuple[str, ...] = ()):
        self.binary = binary
        self.prefix = prefix  # e.g. valgrind's command line (bench/instructions.py)
        self.pg = pg
        self.pool_size = pool_size
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "pgbouncer.log"

    def start(self) -> PgBouncer:
        run_as = postgres_user()
        self.dir = Path(tempfile.mkdtemp(prefix="pgloupe-bench-pgbouncer-"))
        (self.dir / "userlist.txt").write_text(f'"{USER}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
{DATABASE} = host={self.pg.host} port={self.pg.port} dbname={DATABASE}
* = host={self.pg.host} port={self.pg.port}

[pgbouncer]
listen_addr = {self.host}
listen_port = {self.port}
unix_socket_dir = {self.dir}
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = session
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
max_db_connections = 0
logfile = {self.log}
pidfile = {self.dir}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
""")
        if run_as is not None:
            for p in (self.dir, *self.dir.iterdir()):
                os.chown(p, *run_as)

        def drop():
            if run_as is not None:
                os.setgroups([])
                os.setgid(run_as[1])
                os.setuid(run_as[0])

        self.proc = subprocess.Popen([*self.prefix, self.binary, str(self.dir / "pgbouncer.ini")], cwd=str(self.dir),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=drop, start_new_session=True, env=clean_env())
        wait_port(self.host, self.port, self.proc, "PgBouncer", self.log)
        with psycopg.connect(host=self.host, port=self.port, user=USER, dbname=DATABASE, connect_timeout=10) as conn:
            conn.execute("SELECT 1").fetchone()
        return self

    def problems(self) -> list[str]:
        lines = [ln for ln in tail(self.log, 10**7).splitlines() if " WARNING " in ln or " ERROR " in ln]
        return lines

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)  # SIGTERM: immediate shutdown (SIGINT would wait for clients)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class Pgloupe:
    """``pgloupe serve --workers N`` as its own process, default settings (every detector on), plain upstream;
    with ``analyse=False``, ``PGLOUPE_ANALYSE=false``: relay only (no protocol tracking, no statement events)."""

    def __init__(self, upstream: str, workers: int, analyse: bool = True, analysis_priority: str | None = None,
                 prefix: tuple[str, ...] = (), start_timeout: float = 30.0):
        self.upstream = upstream
        self.prefix = prefix  # e.g. valgrind's command line (bench/instructions.py)
        self.start_timeout = start_timeout
        self.workers = workers
        self.analyse = analyse
        self.analysis_priority = analysis_priority
        self.host = "127.0.0.1"
        self.port = free_port()
        self.http_port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.logfh = None

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "pgloupe.log"

    def start(self) -> Pgloupe:
        self.dir = Path(tempfile.mkdtemp(prefix="pgloupe-bench-proxy-"))
        env = clean_env()
        env["PGLOUPE_UPSTREAM_SSLMODE"] = "disable"
        if not self.analyse:
            env["PGLOUPE_ANALYSE"] = "false"
        if self.analysis_priority is not None:
            env["PGLOUPE_ANALYSIS_PRIORITY"] = self.analysis_priority
        self.logfh = open(self.log, "wb")
        self.proc = subprocess.Popen(
            # (under a prefix such as valgrind: the interpreter itself, not the console script's shebang)
            [*self.prefix, *([sys.executable, "-m", "proxy"] if self.prefix else pgloupe_command()),
             "serve", "--listen", f"{self.host}:{self.port}",
             "--http", f"{self.host}:{self.http_port}", "--upstream", self.upstream, "--workers", str(self.workers),
             "--log-level", "warning"],
            cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=self.logfh, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"pgloupe exited with {self.proc.returncode} at start:\n{tail(self.log)}")
            try:
                health = self.health()
            except OSError:
                health = {}
            if health.get("status") == "ok":  # answers once the workers are up
                if health.get("workers", self.workers) != self.workers:
                    raise BenchError(f"pgloupe reports {health.get('workers')} workers, {self.workers} asked for")
                return self
            if time.monotonic() > deadline:
                raise BenchError(f"pgloupe's /healthz did not answer within {self.start_timeout:g} s:\n{tail(self.log)}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> TreeCpu:
        return tree_cpu(self.pid)

    def cpu_split(self, before: TreeCpu, after: TreeCpu) -> tuple[float, float]:
        """(forwarding, analysis) CPU seconds between two snapshots. With workers, forwarding is the
        worker processes and analysis the main process (detectors, HTTP, taking the workers' events);
        with ``--workers 0``, forwarding is the main thread's event loop and analysis the rest."""
        total = after.total - before.total
        forwarding = after.children - before.children if self.workers else after.main_thread - before.main_thread
        return forwarding, total - forwarding

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/healthz", timeout=5) as resp:
            return json.loads(resp.read())

    def findings(self) -> list[dict]:
        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/api/findings", timeout=30) as resp:
            items = json.loads(resp.read())["findings"]
        keys = ("kind", "severity", "confidence", "tables", "count", "statements", "total_ms", "p95_ms", "message",
                "example")
        return [{k: f.get(k) for k in keys} for f in items]

    def drain(self, timeout: float = 60) -> tuple[dict, float]:
        """Wait until the analysis queue is empty; the health snapshot then, and the seconds waited."""
        start = time.monotonic()
        while True:
            h = self.health()
            if h.get("events_queued", 0) == 0 or time.monotonic() - start > timeout:
                return h, time.monotonic() - start
            time.sleep(0.05)

    def problems(self) -> list[str]:
        return [ln for ln in tail(self.log, 10**7).splitlines() if ln.strip()]

    def stop(self) -> None:
        # pgloupe stops its workers itself; should it have to be killed, they would only exit when they
        # notice the closed channel: kill any still there (same pid and start time, never a reused pid).
        workers = {}
        if self.proc is not None and self.proc.poll() is None:
            workers = {pid: start_time(pid) for pid in child_pids(self.proc.pid)}
        stop_process(self.proc, signal.SIGTERM)
        for pid, started in workers.items():
            if started is not None and start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None
        if self.logfh is not None:
            self.logfh.close()
            self.logfh = None

    def remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


@dataclass(frozen=True)
class Case:
    workload: str  # select-only | tpcb-like | n-plus-one
    mode: str  # simple | extended | prepared
    clients: int
    statements_per_txn: int
    targets: tuple[str, ...] = TARGETS  # in round 1's order; the order rotates from round to round

    @property
    def name(self) -> str:
        return f"{self.workload} {self.mode} c={self.clients}"
