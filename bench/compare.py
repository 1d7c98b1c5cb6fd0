#!/usr/bin/env python3
"""Side by side: pgbench straight to PostgreSQL, through PgBouncer (session mode) and through pgloupe.

    .venv/bin/python bench/compare.py [--rounds 3] [--duration 10] [--clients 1,8,64] [--json out.json] [--quick]

One throwaway PostgreSQL (``EmbeddedPostgres``, max_connections 300), ``pgbench -i -s 10`` on it,
PgBouncer 1.18 in session mode and pgloupe (its own process, every detector on) in front of it.
Each case (pgbench ``-S`` in ``-M simple`` and ``-M prepared`` at each client count, the TPC-B-like
write script, an N+1-heavy script of 20 same-shape INSERTs per transaction) runs against the three
targets in turn, interleaved over the rounds with the order rotated per round, and the table shows
the median over rounds. pgbench's per-transaction logs give the p99 latency; /proc gives the CPU
time each proxy spent per 10,000 statements and pgloupe's resident memory with 1,000 idle clients
(on a second throwaway server with max_connections 1100, since each client has its own backend).

``--quick`` is a smoke test: one round of 3 s runs at 1 and 8 clients, no write, N+1 or memory runs.
Every process started here (PgBouncer, pgloupe, the servers, pgbench) is stopped on exit, Ctrl-C
and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import math
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from proxy.embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port  # noqa: E402
from proxy.wire import startup_message  # noqa: E402

DATABASE = "bench"
USER = "postgres"
TARGETS = ("direct", "pgbouncer", "pgloupe")
LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgloupe": "pgloupe"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
N_PLUS_ONE_INSERTS = 20


class BenchError(RuntimeError):
    pass


def _sigterm(signum, frame):  # SIGTERM ends the run like Ctrl-C: the finally blocks stop everything
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------- tools

def find_tool(name: str, *fallbacks: str) -> str:
    for cand in (shutil.which(name), *fallbacks):
        if cand and os.path.exists(cand) and os.access(cand, os.X_OK):
            return cand
    raise BenchError(f"{name} not found (looked on PATH and in {', '.join(fallbacks)}): "
                     f"install Debian's {'pgbouncer' if name == 'pgbouncer' else 'postgresql-contrib'} package")


def pgloupe_command() -> list[str]:
    for cand in (ROOT / ".venv" / "bin" / "pgloupe", Path(sys.executable).parent / "pgloupe"):
        if cand.exists():
            return [str(cand)]
    if shutil.which("pgloupe"):
        return [shutil.which("pgloupe")]
    return [sys.executable, "-m", "proxy.cli"]


def clean_env() -> dict[str, str]:
    """Nothing from the caller's libpq or pgloupe environment (PGPASSWORD, PGLOUPE_CONFIG, ...) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGLOUPE_"))}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def postgres_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root (PgBouncer refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise BenchError("running as root needs a 'postgres' system user to run PgBouncer as") from exc
    return pw.pw_uid, pw.pw_gid


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is the state
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of the process's main thread only (pgloupe's event loop: the forwarding path)."""
    data = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def wait_port(host: str, port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} at start:\n{tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} not listening on {host}:{port} after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------- targets

class PgBouncer:
    """PgBouncer in session mode in front of one server, as the postgres user, files in a temp dir."""

    def __init__(self, binary: str, pg: EmbeddedPostgres, pool_size: int):
        self.binary = binary
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

        self.proc = subprocess.Popen([self.binary, str(self.dir / "pgbouncer.ini")], cwd=str(self.dir),
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
    """``pgloupe serve`` as its own process, default settings (every detector on), plain upstream."""

    def __init__(self, upstream: str):
        self.upstream = upstream
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
        self.logfh = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [*pgloupe_command(), "serve", "--listen", f"{self.host}:{self.port}",
             "--http", f"{self.host}:{self.http_port}", "--upstream", self.upstream, "--log-level", "warning"],
            cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=self.logfh, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"pgloupe exited with {self.proc.returncode} at start:\n{tail(self.log)}")
            try:
                if self.health().get("status") == "ok":
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"pgloupe's /healthz did not answer within 30 s:\n{tail(self.log)}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
        stop_process(self.proc, signal.SIGTERM)
        self.proc = None
        if self.logfh is not None:
            self.logfh.close()
            self.logfh = None

    def remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# ------------------------------------------------------------------------------------------- pgbench

@dataclass(frozen=True)
class Case:
    workload: str  # select-only | tpcb-like | n-plus-one
    mode: str  # simple | extended | prepared
    clients: int
    statements_per_txn: int

    @property
    def name(self) -> str:
        return f"{self.workload} {self.mode} c={self.clients}"


@dataclass
class Runner:
    pgbench: str
    pg: EmbeddedPostgres
    endpoints: dict[str, tuple[str, int]]
    workdir: Path
    duration: int
    script: Path
    current: subprocess.Popen | None = None
    runs: int = field(default=0)

    def prepare(self, case: Case) -> None:
        """Same starting state for every target: what pgbench's own pre-run vacuum does, done directly."""
        stmts = {"tpcb-like": ["TRUNCATE pgbench_history", "VACUUM pgbench_branches", "VACUUM pgbench_tellers",
                               "CHECKPOINT"],
                 "n-plus-one": ["TRUNCATE bench_events", "CHECKPOINT"]}.get(case.workload, [])
        if stmts:
            with psycopg.connect(self.pg.dsn(database=DATABASE), autocommit=True, connect_timeout=10) as conn:
                for sql in stmts:
                    conn.execute(sql)

    def run(self, case: Case, target: str, duration: float | None = None, log: bool = True) -> dict:
        host, port = self.endpoints[target]
        self.runs += 1
        prefix = self.workdir / f"run{self.runs}"
        script = {"select-only": ["-S"], "tpcb-like": [], "n-plus-one": ["-f", str(self.script)]}[case.workload]
        cmd = [self.pgbench, "-h", host, "-p", str(port), "-U", USER, "-n", "-T", str(int(duration or self.duration)),
               "-c", str(case.clients), "-j", str(min(case.clients, 2)), "-M", case.mode, *script]
        if log:
            cmd += ["-l", f"--log-prefix={prefix}"]
        cmd.append(DATABASE)
        self.current = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True, cwd=str(self.workdir))
        try:
            out, err = self.current.communicate(timeout=(duration or self.duration) + 90)
        except subprocess.TimeoutExpired:
            self.current.kill()
            out, err = self.current.communicate()
            err += "\n(benchmark killed: pgbench did not finish in time)"
        rc = self.current.returncode
        self.current = None
        result = parse_pgbench(out)
        result.update(returncode=rc, stderr=err.strip()[-1500:] if (rc or err.strip()) else "")
        if log:
            files = glob.glob(f"{prefix}.*")
            lat = []
            for f in files:
                with open(f) as fh:
                    for line in fh:
                        parts = line.split(None, 3)
                        if len(parts) >= 3:
                            lat.append(int(parts[2]))
                os.unlink(f)
            if lat:
                lat.sort()
                result["p99_ms"] = lat[max(0, math.ceil(0.99 * len(lat)) - 1)] / 1000
                result["log_mean_ms"] = sum(lat) / len(lat) / 1000
                result["logged_txns"] = len(lat)
        return result

    def kill(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
            self.current.wait(10)


def parse_pgbench(out: str) -> dict:
    def num(pattern, cast=float):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else None

    return {
        "tps": num(r"tps = ([\d.]+) \(without initial connection time\)"),
        "avg_ms": num(r"latency average = ([\d.]+) ms"),
        "transactions": num(r"number of transactions actually processed: (\d+)", int),
        "failed": num(r"number of failed transactions: (\d+)", int) or 0,
        "connect_ms": num(r"initial connection time = ([\d.]+) ms"),
    }


# --------------------------------------------------------------------------------------- memory test

async def idle_clients(host: str, port: int, n: int, pid: int, health, concurrency: int = 50) -> dict:
    """Open ``n`` connections through pgloupe that finish startup (trust) and then stay idle;
    pgloupe's VmRSS before, with them all open, and after they close."""
    sem = asyncio.Semaphore(concurrency)
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []
    packet = startup_message({"user": USER, "database": "postgres", "application_name": "pgloupe-bench-idle"})

    async def one() -> None:
        async with sem:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 15)
                writer.write(packet)
                await writer.drain()
                while True:
                    head = await asyncio.wait_for(reader.readexactly(5), 30)
                    body = await reader.readexactly(int.from_bytes(head[1:], "big") - 4)
                    if head[:1] == b"E":
                        raise BenchError("ErrorResponse: " + body.replace(b"\0", b" ").decode(errors="replace"))
                    if head[:1] == b"R" and body[:4] != b"\0\0\0\0":
                        raise BenchError("the server asked for a password (trust expected)")
                    if head[:1] == b"Z":
                        break
                writers.append(writer)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()

    await asyncio.sleep(1)
    before = rss_kb(pid)
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    connect_s = time.monotonic() - started
    await asyncio.sleep(2)
    seen = (await asyncio.to_thread(health)).get("client_connections")
    with_clients = rss_kb(pid)
    for w in writers:
        try:
            w.write(b"X\0\0\0\4")  # Terminate
        except (OSError, RuntimeError):
            pass
        w.close()
    await asyncio.sleep(3)
    after = rss_kb(pid)
    opened = len(writers)
    return {
        "clients_requested": n, "clients_open": opened, "clients_seen_by_pgloupe": seen,
        "connect_seconds": round(connect_s, 2), "errors": errors[:10], "error_count": len(errors),
        "rss_before_kb": before, "rss_with_clients_kb": with_clients, "rss_after_close_kb": after,
        "kb_per_connection": round((with_clients - before) / opened, 1) if opened else None,
    }


def memory_test(n: int) -> dict:
    """A second throwaway server sized for n backends, a fresh pgloupe in front, n idle clients."""
    pg = proxy = None
    try:
        pg = EmbeddedPostgres(settings={"max_connections": str(n + 100)}).start()
        proxy = Pgloupe(pg.dsn()).start()
        result = asyncio.run(idle_clients(proxy.host, proxy.port, n, proxy.pid, proxy.health))
        result["max_connections"] = n + 100
        result["pgloupe_log"] = proxy.problems()[-20:]
        return result
    finally:
        if proxy is not None:
            proxy.stop()
            proxy.remove()
        if pg is not None:
            pg.stop()


# -------------------------------------------------------------------------------------------- report

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def ratio(a, b):
    return a / b if a is not None and b else None


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = None
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
            "kernel": platform.release(), "python": platform.python_version(),
            "python_implementation": platform.python_implementation()}


def versions(pg: EmbeddedPostgres, pgbouncer: str, pgbench: str) -> dict:
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    with psycopg.connect(pg.dsn(), connect_timeout=10) as conn:
        server = conn.execute("SELECT version()").fetchone()[0]
    try:
        from importlib.metadata import version
        pgloupe_version = version("pgloupe")
    except Exception:  # not installed as a distribution
        pgloupe_version = None
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {"postgresql": server, "pgbouncer": first_line([pgbouncer, "--version"]),
            "pgbench": first_line([pgbench, "--version"]), "pgloupe": pgloupe_version, "pgloupe_commit": commit,
            "uvloop": uv, "psycopg": psycopg.__version__}


def summarise(cases: list[Case], runs: list[dict]) -> dict:
    medians: dict = {}
    for case in cases:
        per = medians[case.name] = {}
        for t in TARGETS:
            rs = [r for r in runs if r["case"] == case.name and r["target"] == t]
            per[t] = {k: median([r.get(k) for r in rs]) for k in ("tps", "avg_ms", "p99_ms", "cpu_s_per_10k")}
        per["pgloupe_over_pgbouncer_tps"] = ratio(per["pgloupe"]["tps"], per["pgbouncer"]["tps"])
        per["pgloupe_over_direct_tps"] = ratio(per["pgloupe"]["tps"], per["direct"]["tps"])
    return medians


def table(cases: list[Case], medians: dict) -> str:
    head = ("| case | TPS direct | TPS PgBouncer | TPS pgloupe | pgloupe/PgBouncer | pgloupe/direct "
            "| avg ms direct / PgBouncer / pgloupe | p99 ms direct / PgBouncer / pgloupe "
            "| CPU s per 10k stmts PgBouncer / pgloupe |")
    lines = [head, "|" + " --- |" * 9]
    for case in cases:
        m = medians[case.name]
        d, b, p = m["direct"], m["pgbouncer"], m["pgloupe"]
        lines.append(
            f"| {case.name} | {fmt(d['tps'])} | {fmt(b['tps'])} | {fmt(p['tps'])} "
            f"| {fmt(m['pgloupe_over_pgbouncer_tps'], '.2f')} | {fmt(m['pgloupe_over_direct_tps'], '.2f')} "
            f"| {fmt(d['avg_ms'], '.3f')} / {fmt(b['avg_ms'], '.3f')} / {fmt(p['avg_ms'], '.3f')} "
            f"| {fmt(d['p99_ms'], '.3f')} / {fmt(b['p99_ms'], '.3f')} / {fmt(p['p99_ms'], '.3f')} "
            f"| {fmt(b['cpu_s_per_10k'], '.3f')} / {fmt(p['cpu_s_per_10k'], '.3f')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--clients", default="1,8,64", help="client counts for the select-only runs")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 round, 3 s, clients 1 and 8, no write/N+1/memory runs")
    parser.add_argument("--memory-clients", type=int, default=1000, help="idle clients for the memory test (0: skip)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.clients, args.memory_clients = 1, 3, "1,8", 0
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.rounds < 1 or args.duration < 1 or not clients or min(clients) < 1:
        parser.error("--rounds, --duration and --clients must be positive")
    if max(clients) > 250:
        parser.error("at most 250 clients (the server has max_connections 300)")

    try:
        pgbench_bin = find_tool("pgbench", "/usr/bin/pgbench", *sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench")))
        pgbouncer_bin = find_tool("pgbouncer", "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
    except BenchError as exc:
        print(f"bench/compare.py: {exc}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIG_IGN)
    cases = [Case("select-only", mode, c, 1) for mode in ("simple", "prepared") for c in clients]
    if not args.quick:
        cases += [Case("tpcb-like", "prepared", 8, 7), Case("n-plus-one", "prepared", 8, N_PLUS_ONE_INSERTS + 2)]
    total_runs = len(cases) * len(TARGETS) * args.rounds
    print(f"pgloupe vs PgBouncer vs direct: {len(cases)} cases x {len(TARGETS)} targets x {args.rounds} rounds "
          f"x {args.duration} s = about {total_runs * args.duration / 60:.1f} min of pgbench", flush=True)

    pg = bouncer = proxy = runner = None
    workdir = Path(tempfile.mkdtemp(prefix="pgloupe-bench-"))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "machine": machine_info(),
                     "parameters": {"rounds": args.rounds, "duration_s": args.duration, "clients": clients,
                                    "quick": args.quick, "scale": args.scale, "max_connections": 300,
                                    "pgbouncer_pool_mode": "session", "memory_clients": args.memory_clients,
                                    "n_plus_one_inserts_per_txn": N_PLUS_ONE_INSERTS,
                                    "cases": [c.__dict__ | {"name": c.name} for c in cases]},
                     "runs": []}
    problems: list[str] = []
    failed_runs = 0
    try:
        print("starting PostgreSQL (max_connections 300) ...", flush=True)
        pg = EmbeddedPostgres(settings={"max_connections": "300"}).start()
        with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        print(f"pgbench -i -s {args.scale} ...", flush=True)
        init = subprocess.run([pgbench_bin, "-h", pg.host, "-p", str(pg.port), "-U", USER, "-i", "-s", str(args.scale),
                               "-q", DATABASE], env=clean_env(), capture_output=True, text=True, timeout=600)
        if init.returncode != 0:
            raise BenchError(f"pgbench -i failed: {init.stderr.strip()[-2000:]}")
        with psycopg.connect(pg.dsn(database=DATABASE), autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE TABLE bench_events (id bigserial PRIMARY KEY, aid int NOT NULL, n int NOT NULL, "
                         "created_at timestamptz NOT NULL DEFAULT now())")
            conn.execute("VACUUM ANALYZE")
        script = workdir / "n_plus_one.sql"
        # k is a pgbench variable, so under -M prepared each INSERT binds it as a parameter like an ORM
        # loop would (a literal k baked into each prepared statement's text is not seen as varying).
        script.write_text("\\set aid random(1, 100000)\nBEGIN;\n" + "".join(
            f"\\set k {k}\nINSERT INTO bench_events (aid, n) VALUES (:aid, :k);\n"
            for k in range(1, N_PLUS_ONE_INSERTS + 1)) + "END;\n")

        print("starting PgBouncer (session mode) ...", flush=True)
        bouncer = PgBouncer(pgbouncer_bin, pg, pool_size=max(clients) + 16).start()
        print("starting pgloupe (every detector on) ...", flush=True)
        proxy = Pgloupe(pg.dsn(database=DATABASE)).start()
        results["versions"] = versions(pg, pgbouncer_bin, pgbench_bin)
        results["versions"]["pgloupe_command"] = " ".join(pgloupe_command())
        runner = Runner(pgbench_bin, pg, {"direct": (pg.host, pg.port), "pgbouncer": (bouncer.host, bouncer.port),
                                          "pgloupe": (proxy.host, proxy.port)}, workdir, args.duration, script)

        warm = 1 if args.quick else 2
        print(f"warm-up: {warm} s per target and query mode, not recorded ...", flush=True)
        for t in TARGETS:
            for mode in ("simple", "prepared"):
                w = runner.run(Case("select-only", mode, min(8, max(clients)), 1), t, duration=warm, log=False)
                if w["tps"] is None:
                    raise BenchError(f"warm-up against {LABEL[t]} failed (exit {w['returncode']}): {w['stderr']}")
        if proxy.drain()[0].get("events_queued"):
            problems.append("pgloupe's analysis queue was not empty 60 s after the warm-up")

        n = 0
        for r in range(args.rounds):
            order = TARGETS[r % len(TARGETS):] + TARGETS[:r % len(TARGETS)]
            for case in cases:
                for t in order:
                    n += 1
                    runner.prepare(case)
                    pid = {"pgbouncer": bouncer.proc.pid, "pgloupe": proxy.pid}.get(t)
                    h0 = proxy.health() if t == "pgloupe" else None
                    cpu0 = cpu_seconds(pid) if pid else None
                    loop0 = main_thread_cpu_seconds(pid) if t == "pgloupe" else None
                    res = runner.run(case, t)
                    drain_s = None
                    if t == "pgloupe":
                        h1, drain_s = proxy.drain()
                        res["pgloupe_statements_analysed"] = h1["statements"] - h0["statements"]
                        res["pgloupe_events_dropped"] = h1["events_dropped"] - h0["events_dropped"]
                        res["pgloupe_upstream_errors"] = h1["upstream_errors"] - h0["upstream_errors"]
                        res["pgloupe_analysis_errors"] = h1["analysis_errors"] - h0["analysis_errors"]
                        res["pgloupe_drain_s"] = round(drain_s, 3)
                        res["pgloupe_rss_kb"] = rss_kb(proxy.pid)
                        res["pgloupe_loop_cpu_s"] = round(main_thread_cpu_seconds(proxy.pid) - loop0, 3)
                    if pid:
                        res["proxy_cpu_s"] = round(cpu_seconds(pid) - cpu0, 3)
                        stmts = (res["transactions"] or 0) * case.statements_per_txn
                        res["statements"] = stmts
                        res["cpu_s_per_10k"] = res["proxy_cpu_s"] / stmts * 10_000 if stmts else None
                        if t == "pgloupe":
                            res["pgloupe_other_threads_cpu_s"] = round(res["proxy_cpu_s"] - res["pgloupe_loop_cpu_s"], 3)
                    res.update(round=r + 1, case=case.name, target=t, workload=case.workload, mode=case.mode,
                               clients=case.clients)
                    results["runs"].append(res)
                    if res["returncode"] or res["tps"] is None or res["failed"]:
                        failed_runs += 1
                        problems.append(f"round {r + 1} {case.name} {LABEL[t]}: exit {res['returncode']}, "
                                        f"{res['failed']} failed transactions: {res['stderr'][:300]}")
                    if res.get("pgloupe_events_dropped"):
                        problems.append(f"round {r + 1} {case.name} pgloupe: {res['pgloupe_events_dropped']} "
                                        "statement events dropped (analysis queue full)")
                    extra = ""
                    if pid:
                        extra = f"  cpu {res['proxy_cpu_s']:.2f} s ({fmt(res.get('cpu_s_per_10k'), '.3f')} s/10k stmts)"
                        if t == "pgloupe":
                            extra += f", event loop {res['pgloupe_loop_cpu_s']:.2f} s"
                    if drain_s is not None and drain_s > 0.5:
                        extra += f"  analysis drained {drain_s:.1f} s after the run"
                    print(f"[{n:3d}/{total_runs}] r{r + 1} {case.name:28} {LABEL[t]:9}  tps {fmt(res['tps']):>8}"
                          f"  avg {fmt(res['avg_ms'], '.3f'):>7} ms  p99 {fmt(res.get('p99_ms'), '.3f'):>7} ms{extra}",
                          flush=True)

        final_health = proxy.health()
        results["pgloupe_final_health"] = final_health
        results["pgloupe_final_rss_kb"] = rss_kb(proxy.pid)
        results["pgloupe_findings"] = proxy.findings()
        if final_health.get("upstream_errors") or final_health.get("analysis_errors"):
            problems.append(f"pgloupe health: upstream_errors {final_health.get('upstream_errors')}, "
                            f"analysis_errors {final_health.get('analysis_errors')}")
        if any(c.workload == "n-plus-one" for c in cases) and not any(
                f["kind"] == "n_plus_one_insert" for f in results["pgloupe_findings"]):
            problems.append("pgloupe reported no n_plus_one_insert for the N+1 workload")
        proxy_log = proxy.problems()
        results["pgloupe_log"] = proxy_log[-50:]
        if proxy_log:
            problems.append(f"pgloupe logged {len(proxy_log)} lines at warning or above; last: {proxy_log[-1][:300]}")
        bouncer_log = bouncer.problems()
        results["pgbouncer_log_warnings"] = bouncer_log[-50:]
        if bouncer_log:
            problems.append(f"PgBouncer logged {len(bouncer_log)} warnings/errors; last: {bouncer_log[-1][:300]}")
        proxy.stop()
        bouncer.stop()
        pg.stop()

        if args.memory_clients:
            print(f"memory: {args.memory_clients:,} idle clients through a fresh pgloupe "
                  f"(server with max_connections {args.memory_clients + 100}) ...", flush=True)
            mem = memory_test(args.memory_clients)
            results["memory"] = mem
            if mem["error_count"]:
                problems.append(f"memory test: {mem['error_count']} connections failed, e.g. {mem['errors'][0]}")
    except (BenchError, EmbeddedPostgresError, psycopg.Error, OSError, subprocess.SubprocessError) as exc:
        print(f"bench/compare.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        if runner is not None:
            runner.kill()
        for thing in (proxy, bouncer):
            if thing is not None:
                thing.stop()
        if pg is not None:
            pg.stop()
        if proxy is not None:
            proxy.remove()
        shutil.rmtree(workdir, ignore_errors=True)

    medians = summarise(cases, results["runs"])
    results["medians"] = medians
    added = {}
    for mode in ("simple", "prepared"):
        m = medians.get(f"select-only {mode} c=1")
        if m and m["direct"]["avg_ms"] is not None:
            added[mode] = {t: round((m[t]["avg_ms"] - m["direct"]["avg_ms"]) * 1000, 1)
                           if m[t]["avg_ms"] is not None else None for t in ("pgbouncer", "pgloupe")}
    results["added_latency_us_per_statement_1_client"] = added
    results["problems"] = problems
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    mach = results["machine"]
    print(f"\nMedian of {args.rounds} round(s) of {args.duration} s; {mach['nproc']} cores ({mach['cpu_model']}), "
          f"Python {mach['python']}; {results['versions']['postgresql'].split(' on ')[0]}, "
          f"{results['versions']['pgbouncer']} (session mode); pgbench -S unless named, -j min(clients, 2); "
          "TPS without connection time.\n")
    print(table(cases, medians))
    print()
    for mode, a in added.items():
        print(f"added latency per statement at 1 client, -M {mode}: pgloupe {fmt(a['pgloupe'], '+.1f')} us, "
              f"PgBouncer {fmt(a['pgbouncer'], '+.1f')} us")
    per_case = [(medians[c.name]["pgloupe"]["cpu_s_per_10k"], c.name) for c in cases
                if medians[c.name]["pgloupe"]["cpu_s_per_10k"] is not None]
    if per_case:
        lo, hi = min(per_case), max(per_case)
        print(f"pgloupe CPU per statement: {lo[0] * 100:.0f} us ({lo[1]}) to {hi[0] * 100:.0f} us ({hi[1]}); "
              f"PgBouncer: {min(medians[c.name]['pgbouncer']['cpu_s_per_10k'] or 0 for c in cases) * 100:.0f} to "
              f"{max(medians[c.name]['pgbouncer']['cpu_s_per_10k'] or 0 for c in cases) * 100:.0f} us")
    loop = sum(r.get("pgloupe_loop_cpu_s", 0) for r in results["runs"])
    total = sum(r.get("proxy_cpu_s", 0) for r in results["runs"] if r["target"] == "pgloupe")
    if total:
        print(f"pgloupe CPU split over all runs: event loop (forwarding, parsing, events) {loop / total:.0%}, "
              f"other threads (analysis) {1 - loop / total:.0%}")
    analysed = sum(r.get("pgloupe_statements_analysed", 0) for r in results["runs"])
    dropped = sum(r.get("pgloupe_events_dropped", 0) for r in results["runs"])
    print(f"pgloupe analysed {analysed:,} statement events, dropped {dropped:,}; "
          f"findings at the end: {len(results['pgloupe_findings'])} "
          f"({', '.join(sorted({f['kind'] for f in results['pgloupe_findings']})) or 'none'}); "
          f"RSS at the end {results['pgloupe_final_rss_kb'] / 1024:.0f} MB")
    if "memory" in results:
        mem = results["memory"]
        print(f"pgloupe memory with {mem['clients_open']:,} idle clients: RSS {mem['rss_before_kb'] / 1024:.1f} MB -> "
              f"{mem['rss_with_clients_kb'] / 1024:.1f} MB = {fmt(mem['kb_per_connection'], '.1f')} KB per connection "
              f"(after they close: {mem['rss_after_close_kb'] / 1024:.1f} MB; opened in {mem['connect_seconds']} s)")
    if problems:
        print("\nproblems:")
        for p in problems:
            print(f"  - {p}")
    else:
        print("\nproblems: none (no pgbench errors, no failed transactions, no dropped events, no proxy warnings)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
