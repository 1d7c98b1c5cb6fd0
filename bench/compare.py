"""Side by side: pgbench straight to PostgreSQL, through PgBouncer (session mode) and through pgloupe.

    .venv/bin/python bench/compare.py [--rounds 3] [--duration 10] [--clients 1,8,64] [--workers auto]
        [--scale-workers 1,2] [--no-relay-only] [--json out.json] [--quick]

One throwaway PostgreSQL (``EmbeddedPostgres``, max_connections 300), ``pgbench -i -s 10`` on it,
PgBouncer 1.18 in session mode and pgloupe (``pgloupe serve --workers N``, its own process, every
detector on) in front of it. Each case (pgbench ``-S`` in ``-M simple`` and ``-M prepared`` at each
client count, the TPC-B-like write script, an N+1-heavy script of 20 same-shape INSERTs per
transaction) runs against the three targets in turn, interleaved over the rounds with the order
rotated per round, and the table shows the median over rounds. The select-only cases at the largest
client count also run against one more pgloupe per ``--scale-workers`` count, in the same rounds,
for a second table: TPS by number of worker processes. The select-only cases at the middle client
count (the largest with fewer than three) also run against a relay-only pgloupe (same ``--workers``,
``PGLOUPE_ANALYSE=false``: it relays bytes but builds no statement events), in the same rounds, for
a third table, "cost of analysis": PgBouncer vs pgloupe relay-only vs pgloupe, which separates what
relaying in Python costs from what the analysis costs (``--no-relay-only`` leaves it out). pgbench's
per-transaction logs give the p99 latency; /proc gives the CPU time each proxy spent per 10,000
statements (pgloupe: its main process plus its worker processes, split into forwarding and analysis)
and pgloupe's resident memory (main process plus workers) with 1,000 idle clients (on a second
throwaway server with max_connections 1100, since each client has its own backend).

``--quick`` is a smoke test: one round of 3 s runs at 1 and 8 clients, no write, N+1, memory or
scaling runs (the relay-only runs stay: two cases at 8 clients). Every process started here
(PgBouncer, every pgloupe and its workers, the servers, pgbench) is stopped on exit, Ctrl-C and
SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's proxy/ and detectors/

import psycopg  # noqa: E402
from procs import BenchError, _sigterm, clean_env, cpu_seconds, find_tool, pgloupe_command, tree_rss_kb  # noqa: E402
from report import (  # noqa: E402
    fmt,
    machine_info,
    relay_only,
    relay_table,
    scaling,
    scaling_table,
    summarise,
    table,
    versions,
)
from targets import DATABASE, DEFAULT_PRIORITY, LABEL, RELAY, TARGETS, USER, Case, PgBouncer, Pgloupe  # noqa: E402

from proxy.config import auto_workers, parse_workers  # noqa: E402
from proxy.demo.embedded import EmbeddedPostgres, EmbeddedPostgresError  # noqa: E402
from proxy.protocol.wire import startup_message  # noqa: E402

N_PLUS_ONE_INSERTS = 20




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


async def idle_clients(host: str, port: int, n: int, rss, health, concurrency: int = 50) -> dict:
    """Open ``n`` connections through pgloupe that finish startup (trust) and then stay idle;
    pgloupe's VmRSS (``rss()``: main process, workers) before, with them all open, and after they close."""
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
    before = rss()
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    connect_s = time.monotonic() - started
    await asyncio.sleep(2)
    seen = (await asyncio.to_thread(health)).get("client_connections")
    with_clients = rss()
    for w in writers:
        try:
            w.write(b"X\0\0\0\4")  # Terminate
        except (OSError, RuntimeError):
            pass
        w.close()
    await asyncio.sleep(3)
    after = rss()
    opened = len(writers)
    return {
        "clients_requested": n, "clients_open": opened, "clients_seen_by_pgloupe": seen,
        "connect_seconds": round(connect_s, 2), "errors": errors[:10], "error_count": len(errors),
        # main process + workers; the split below
        "rss_before_kb": sum(before), "rss_with_clients_kb": sum(with_clients), "rss_after_close_kb": sum(after),
        "rss_main_kb": {"before": before[0], "with_clients": with_clients[0], "after_close": after[0]},
        "rss_workers_kb": {"before": before[1], "with_clients": with_clients[1], "after_close": after[1]},
        "kb_per_connection": round((sum(with_clients) - sum(before)) / opened, 1) if opened else None,
    }


def memory_test(n: int, workers: int) -> dict:
    """A second throwaway server sized for n backends, a fresh pgloupe in front, n idle clients."""
    pg = proxy = None
    try:
        pg = EmbeddedPostgres(settings={"max_connections": str(n + 100)}).start()
        proxy = Pgloupe(pg.dsn(), workers)
        proxy.start()
        result = asyncio.run(idle_clients(proxy.host, proxy.port, n, lambda: tree_rss_kb(proxy.pid), proxy.health))
        result["max_connections"] = n + 100
        result["workers"] = workers
        result["pgloupe_log"] = proxy.problems()[-20:]
        return result
    finally:
        if proxy is not None:
            proxy.stop()
            proxy.remove()
        if pg is not None:
            pg.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--clients", default="1,8,64", help="client counts for the select-only runs")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 round, 3 s, clients 1 and 8, no write/N+1/memory/scaling runs "
                             "(relay-only stays on)")
    parser.add_argument("--memory-clients", type=int, default=1000, help="idle clients for the memory test (0: skip)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    parser.add_argument("--workers", type=parse_workers, default=auto_workers(),
                        help="pgloupe serve --workers for the pgloupe target (default: auto, pgloupe's own default)")
    parser.add_argument("--scale-workers", default="1,2",
                        help="worker counts of extra pgloupe targets for select-only at the largest client count "
                             "(empty: none)")
    parser.add_argument("--analysis-priority", choices=("idle", "low", "normal"),
                        help="analysis_priority for the pgloupe targets (default: pgloupe's own, low)")
    parser.add_argument("--no-relay-only", dest="relay_only", action="store_false",
                        help="no relay-only pgloupe (PGLOUPE_ANALYSE=false) for select-only at the middle client count")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.clients, args.memory_clients, args.scale_workers = 1, 3, "1,8", 0, ""
    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
        scale_workers = list(dict.fromkeys(int(w) for w in args.scale_workers.split(",") if w.strip()))
    except ValueError:
        parser.error("--clients and --scale-workers take comma-separated integers")
    if args.rounds < 1 or args.duration < 1 or not clients or min(clients) < 1:
        parser.error("--rounds, --duration and --clients must be positive")
    if max(clients) > 250:
        parser.error("at most 250 clients (the server has max_connections 300)")
    if not 0 <= args.workers <= 64 or not all(0 <= w <= 64 for w in scale_workers):
        parser.error("--workers and --scale-workers must be between 0 and 64")
    scale_workers = [w for w in scale_workers if w != args.workers]  # that one is the pgloupe target already
    # the relay-only pgloupe runs at the middle client count (the lower middle one for an even number of
    # counts), or at the largest with fewer than three
    counts = sorted(set(clients))
    relay_clients = (counts[(len(counts) - 1) // 2] if len(counts) >= 3 else counts[-1]) if args.relay_only else None

    try:
        pgbench_bin = find_tool("pgbench", "/usr/bin/pgbench", *sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench")))
        pgbouncer_bin = find_tool("pgbouncer", "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
    except BenchError as exc:
        print(f"bench/compare.py: {exc}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIG_IGN)
    extra = {f"pgloupe-w{w}": w for w in scale_workers}  # target -> its --workers
    LABEL["pgloupe"] = f"pgloupe w={args.workers}" if extra else "pgloupe"
    LABEL.update({t: f"pgloupe w={w}" for t, w in extra.items()})
    relay = (RELAY,) if args.relay_only else ()
    width = max(len(LABEL[t]) for t in (*TARGETS, *relay, *extra))
    cases = [Case("select-only", mode, c, 1, TARGETS + (relay if c == relay_clients else ())
                  + (tuple(extra) if c == max(clients) else ()))
             for mode in ("simple", "prepared") for c in clients]
    if not args.quick:
        cases += [Case("tpcb-like", "prepared", 8, 7), Case("n-plus-one", "prepared", 8, N_PLUS_ONE_INSERTS + 2)]
    total_runs = sum(len(c.targets) for c in cases) * args.rounds
    print(f"pgloupe (--workers {args.workers}) vs PgBouncer vs direct: {len(cases)} cases x {len(TARGETS)} targets"
          + (f" (+ {', '.join(LABEL[t] for t in extra)} at c={max(clients)} select-only)" if extra else "")
          + (f" (+ {LABEL[RELAY]} at c={relay_clients} select-only)" if relay else "")
          + f" x {args.rounds} rounds x {args.duration} s = about {total_runs * args.duration / 60:.1f} min of pgbench",
          flush=True)

    pg = bouncer = proxy = runner = None
    proxies: dict[str, Pgloupe] = {}  # target -> its pgloupe: "pgloupe", the pgloupe-wN and pgloupe-relay
    workdir = Path(tempfile.mkdtemp(prefix="pgloupe-bench-"))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "machine": machine_info(),
                     "parameters": {"rounds": args.rounds, "duration_s": args.duration, "clients": clients,
                                    "quick": args.quick, "scale": args.scale, "max_connections": 300,
                                    "pgbouncer_pool_mode": "session", "memory_clients": args.memory_clients,
                                    "n_plus_one_inserts_per_txn": N_PLUS_ONE_INSERTS, "workers": args.workers,
                                    # what the pgloupe targets ran with, pgloupe's default included
                                    "analysis_priority": args.analysis_priority or DEFAULT_PRIORITY,
                                    "scale_workers": scale_workers, "relay_only": args.relay_only,
                                    "relay_only_clients": relay_clients,
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
        # loop would.
        script.write_text("\\set aid random(1, 100000)\nBEGIN;\n" + "".join(
            f"\\set k {k}\nINSERT INTO bench_events (aid, n) VALUES (:aid, :k);\n"
            for k in range(1, N_PLUS_ONE_INSERTS + 1)) + "END;\n")

        print("starting PgBouncer (session mode) ...", flush=True)
        bouncer = PgBouncer(pgbouncer_bin, pg, pool_size=max(clients) + 16)
        bouncer.start()
        print(f"starting pgloupe --workers {args.workers} (every detector on) ...", flush=True)
        # in proxies before start(): one that fails to start is stopped too
        proxy = proxies["pgloupe"] = Pgloupe(pg.dsn(database=DATABASE), args.workers,
                                             analysis_priority=args.analysis_priority)
        proxy.start()
        for t, w in extra.items():
            print(f"starting pgloupe --workers {w} for the scaling runs ...", flush=True)
            proxies[t] = Pgloupe(pg.dsn(database=DATABASE), w, analysis_priority=args.analysis_priority)
            proxies[t].start()
        if relay:
            print(f"starting pgloupe --workers {args.workers} relay-only (PGLOUPE_ANALYSE=false) ...", flush=True)
            proxies[RELAY] = Pgloupe(pg.dsn(database=DATABASE), args.workers, analyse=False)
            proxies[RELAY].start()
        results["versions"] = versions(pg, pgbouncer_bin, pgbench_bin)
        results["versions"]["pgloupe_command"] = " ".join(pgloupe_command())
        runner = Runner(pgbench_bin, pg, {"direct": (pg.host, pg.port), "pgbouncer": (bouncer.host, bouncer.port),
                                          **{t: (px.host, px.port) for t, px in proxies.items()}},
                        workdir, args.duration, script)

        warm = 1 if args.quick else 2
        print(f"warm-up: {warm} s per target and query mode, not recorded ...", flush=True)
        for t in (*TARGETS, *relay, *extra):
            for mode in ("simple", "prepared"):
                w = runner.run(Case("select-only", mode, min(8, max(clients)), 1), t, duration=warm, log=False)
                if w["tps"] is None:
                    raise BenchError(f"warm-up against {LABEL[t]} failed (exit {w['returncode']}): {w['stderr']}")
        for t, px in proxies.items():
            if px.drain()[0].get("events_queued"):
                problems.append(f"{LABEL[t]}'s analysis queue was not empty 60 s after the warm-up")

        n = 0
        for r in range(args.rounds):
            for case in cases:
                k = r % len(case.targets)
                for t in case.targets[k:] + case.targets[:k]:
                    n += 1
                    runner.prepare(case)
                    px = proxies.get(t)
                    pid = bouncer.proc.pid if t == "pgbouncer" else None
                    h0 = px.health() if px else None
                    cpu0 = px.cpu() if px else cpu_seconds(pid) if pid else None
                    res = runner.run(case, t)
                    drain_s = None
                    stmts = (res["transactions"] or 0) * case.statements_per_txn
                    if px:
                        h1, drain_s = px.drain()
                        cpu1 = px.cpu()
                        forwarding, analysis = px.cpu_split(cpu0, cpu1)
                        res["pgloupe_workers"] = px.workers
                        res["pgloupe_statements_analysed"] = h1["statements"] - h0["statements"]
                        res["pgloupe_events_dropped"] = h1["events_dropped"] - h0["events_dropped"]
                        res["pgloupe_upstream_errors"] = h1["upstream_errors"] - h0["upstream_errors"]
                        res["pgloupe_analysis_errors"] = h1["analysis_errors"] - h0["analysis_errors"]
                        res["pgloupe_drain_s"] = round(drain_s, 3)
                        main_kb, workers_kb = tree_rss_kb(px.pid)
                        res.update(pgloupe_rss_kb=main_kb + workers_kb, pgloupe_rss_main_kb=main_kb,
                                   pgloupe_rss_workers_kb=workers_kb)
                        res["proxy_cpu_s"] = round(cpu1.total - cpu0.total, 3)
                        res["pgloupe_forwarding_cpu_s"] = round(forwarding, 3)
                        res["pgloupe_analysis_cpu_s"] = round(analysis, 3)
                        res["forwarding_cpu_s_per_10k"] = forwarding / stmts * 10_000 if stmts else None
                        res["analysis_cpu_s_per_10k"] = analysis / stmts * 10_000 if stmts else None
                        if px.workers and cpu0.pids != cpu1.pids:
                            problems.append(f"round {r + 1} {case.name} {LABEL[t]}: worker processes changed during "
                                            f"the run ({len(cpu0.pids)} -> {len(cpu1.pids)}, restarted?)")
                    elif pid:
                        res["proxy_cpu_s"] = round(cpu_seconds(pid) - cpu0, 3)
                    if px or pid:
                        res["statements"] = stmts
                        res["cpu_s_per_10k"] = res["proxy_cpu_s"] / stmts * 10_000 if stmts else None
                    res.update(round=r + 1, case=case.name, target=t, workload=case.workload, mode=case.mode,
                               clients=case.clients)
                    results["runs"].append(res)
                    if res["returncode"] or res["tps"] is None or res["failed"]:
                        failed_runs += 1
                        problems.append(f"round {r + 1} {case.name} {LABEL[t]}: exit {res['returncode']}, "
                                        f"{res['failed']} failed transactions: {res['stderr'][:300]}")
                    if res.get("pgloupe_events_dropped"):
                        problems.append(f"round {r + 1} {case.name} {LABEL[t]}: {res['pgloupe_events_dropped']} "
                                        "statement events dropped (analysis queue full)")
                    note = ""
                    if px or pid:
                        note = f"  cpu {res['proxy_cpu_s']:.2f} s ({fmt(res.get('cpu_s_per_10k'), '.3f')} s/10k stmts)"
                        if px:
                            note += (f", forwarding {res['pgloupe_forwarding_cpu_s']:.2f} s"
                                     f" + analysis {res['pgloupe_analysis_cpu_s']:.2f} s")
                    if drain_s is not None and drain_s > 0.5:
                        note += f"  analysis drained {drain_s:.1f} s after the run"
                    print(f"[{n:3d}/{total_runs}] r{r + 1} {case.name:28} {LABEL[t]:{width}}  tps {fmt(res['tps']):>8}"
                          f"  avg {fmt(res['avg_ms'], '.3f'):>7} ms  p99 {fmt(res.get('p99_ms'), '.3f'):>7} ms{note}",
                          flush=True)

        final_health = proxy.health()
        results["pgloupe_final_health"] = final_health
        main_kb, workers_kb = tree_rss_kb(proxy.pid)
        results["pgloupe_final_rss_kb"] = main_kb + workers_kb
        results["pgloupe_final_rss_main_kb"], results["pgloupe_final_rss_workers_kb"] = main_kb, workers_kb
        results["pgloupe_findings"] = proxy.findings()
        if any(c.workload == "n-plus-one" for c in cases) and not any(
                f["kind"] == "n_plus_one_insert" for f in results["pgloupe_findings"]):
            problems.append("pgloupe reported no n_plus_one_insert for the N+1 workload")
        results["scaling_pgloupe"] = {}
        results["relay_only_pgloupe"] = {}
        for t, px in proxies.items():
            health = final_health if t == "pgloupe" else px.health()
            if health.get("upstream_errors") or health.get("analysis_errors"):
                problems.append(f"{LABEL[t]} health: upstream_errors {health.get('upstream_errors')}, "
                                f"analysis_errors {health.get('analysis_errors')}")
            px_log = px.problems()
            if px_log:
                problems.append(f"{LABEL[t]} logged {len(px_log)} lines at warning or above; last: {px_log[-1][:300]}")
            if t == "pgloupe":
                results["pgloupe_log"] = px_log[-50:]
            elif t == RELAY:
                # no statement events, so no statements analysed and nothing to find: more would mean
                # that PGLOUPE_ANALYSE=false did not take (a pgloupe without the setting ignores it)
                if health.get("statements"):
                    problems.append(f"{LABEL[t]} analysed {health['statements']:,} statements "
                                    "(PGLOUPE_ANALYSE=false not honoured?)")
                main_kb, workers_kb = tree_rss_kb(px.pid)
                results["relay_only_pgloupe"] = {"workers": px.workers, "analyse": False, "final_health": health,
                                                 "final_rss_kb": main_kb + workers_kb,
                                                 "final_rss_main_kb": main_kb, "final_rss_workers_kb": workers_kb,
                                                 "log": px_log[-50:]}
            else:
                main_kb, workers_kb = tree_rss_kb(px.pid)
                results["scaling_pgloupe"][t] = {"workers": px.workers, "final_health": health,
                                                 "final_rss_kb": main_kb + workers_kb, "final_rss_main_kb": main_kb,
                                                 "final_rss_workers_kb": workers_kb,
                                                 "findings": len(px.findings()), "log": px_log[-50:]}
        bouncer_log = bouncer.problems()
        results["pgbouncer_log_warnings"] = bouncer_log[-50:]
        if bouncer_log:
            problems.append(f"PgBouncer logged {len(bouncer_log)} warnings/errors; last: {bouncer_log[-1][:300]}")
        for px in proxies.values():
            px.stop()
        bouncer.stop()
        pg.stop()

        if args.memory_clients:
            print(f"memory: {args.memory_clients:,} idle clients through a fresh pgloupe --workers {args.workers} "
                  f"(server with max_connections {args.memory_clients + 100}) ...", flush=True)
            mem = memory_test(args.memory_clients, args.workers)
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
        for thing in (*proxies.values(), bouncer):
            if thing is not None:
                thing.stop()
        if pg is not None:
            pg.stop()
        for px in proxies.values():
            px.remove()
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
    scale = results["scaling"] = scaling(cases, medians, args.workers)
    rel = results["relay_only"] = relay_only(cases, medians)
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
    main_runs = [r for r in results["runs"] if r["target"] == "pgloupe"]
    forwarding = sum(r.get("pgloupe_forwarding_cpu_s", 0) for r in main_runs)
    total = sum(r.get("proxy_cpu_s", 0) for r in main_runs)
    if total:
        where = (("worker processes", "main process: detectors, HTTP, taking the workers' events") if args.workers
                 else ("main thread's event loop", "other threads: detectors"))
        print(f"pgloupe (--workers {args.workers}) CPU split over all runs: forwarding ({where[0]}: relaying, "
              f"protocol parsing, statement events) {forwarding / total:.0%}, analysis ({where[1]}) "
              f"{1 - forwarding / total:.0%}")
    analysed = sum(r.get("pgloupe_statements_analysed", 0) for r in main_runs)
    dropped = sum(r.get("pgloupe_events_dropped", 0) for r in main_runs)
    print(f"pgloupe analysed {analysed:,} statement events, dropped {dropped:,}; "
          f"findings at the end: {len(results['pgloupe_findings'])} "
          f"({', '.join(sorted({f['kind'] for f in results['pgloupe_findings']})) or 'none'}); "
          f"RSS at the end {results['pgloupe_final_rss_kb'] / 1024:.0f} MB "
          f"(main {results['pgloupe_final_rss_main_kb'] / 1024:.0f} + workers "
          f"{results['pgloupe_final_rss_workers_kb'] / 1024:.0f})")
    if "memory" in results:
        mem = results["memory"]
        mm, mw = mem["rss_main_kb"], mem["rss_workers_kb"]
        print(f"pgloupe memory with {mem['clients_open']:,} idle clients (--workers {mem['workers']}): "
              f"RSS {mem['rss_before_kb'] / 1024:.1f} MB -> {mem['rss_with_clients_kb'] / 1024:.1f} MB "
              f"= {fmt(mem['kb_per_connection'], '.1f')} KB per connection (main {mm['before'] / 1024:.1f} -> "
              f"{mm['with_clients'] / 1024:.1f} MB, workers {mw['before'] / 1024:.1f} -> "
              f"{mw['with_clients'] / 1024:.1f} MB; after they close: {mem['rss_after_close_kb'] / 1024:.1f} MB; "
              f"opened in {mem['connect_seconds']} s)")
    if scale:
        print(f"\nworkers scaling at c={max(clients)} (median TPS, ratio over pgloupe w={args.workers}, "
              "CPU s per 10k statements of the main process and its workers):\n")
        print(scaling_table(scale))
    if rel:
        print(f"\ncost of analysis at c={relay_clients} (median TPS of PgBouncer, pgloupe relay-only "
              f"(--workers {args.workers}, PGLOUPE_ANALYSE=false: relays, builds no statement events) and pgloupe "
              "(every detector on), their ratios, CPU s per 10k statements):\n")
        print(relay_table(rel))
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
