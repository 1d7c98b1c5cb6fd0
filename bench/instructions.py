#!/usr/bin/env python3
"""CPU per statement as instruction counts, which this noisy 2-core machine cannot blur: callgrind
counts the same instructions for the same input every time.

    .venv/bin/python bench/instructions.py [--statements 2000] [--mode simple|prepared|both] [--json out.json]

One fixed pgbench -S stream (seeded: the same aids, the same rows) goes through pgloupe's per-statement
path in stages, each run under ``valgrind --tool=callgrind`` twice, with N and 2N statements; the
difference over N is the stage's instructions per statement, start-up and imports cancelled out:

- ``capture``: a worker's SessionGauge and CaptureBuffer over the client and server bytes of each
  statement (what the forwarding loop adds to relaying);
- ``replay``: the main process's session trackers over that capture, out come statement events;
- ``pipeline``: the detectors over those events (fingerprint cache hit, units, loops, tenancy).

Each stage's count is the run through that stage less the run through the one before it (``gen``
makes the bytes). ``--stage NAME --count N`` is the child run that callgrind measures; without it the
script runs them all and prints the table. Which implementation ran (compiled or pure Python) is
printed beside it (``proxy.implementation``).

``--what servers`` measures the same way what the real processes spend under pgbench -S (one client,
-t N and -t 2N, through a throwaway PostgreSQL): PgBouncer (session mode), and the worker process of
``pgloupe serve --workers 1``, relay-only (``analyse = false``) and with capture. The main process is
left out: what it runs besides the analysis (ticks, the catalog review) depends on the wall-clock
length of the run, not on the statements; the offline stages above count its analysis exactly.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("gen", "capture", "replay", "pipeline")
PGBENCH_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"


def pgbench_schema():
    """The catalog snapshot the proxy holds of pgbench's database once its first review has read it
    (pgbench_accounts as pgbench -i creates it; oid and attnums as the RowDescription below names them):
    what the detectors consult per statement, as under ``pgloupe serve``, rather than the catalog-less
    start where every statement's keys are presumed tenant-checked and remembered."""
    from detectors.schema import Schema, Table

    accounts = Table("pgbench_accounts", columns={"aid": "integer", "bid": "integer", "abalance": "integer",
                                                  "filler": "character"},
                     row_estimate=100_000, unique_keys=(("aid",),), primary_key=("aid",), analysed=True,
                     oid=16397, numbers=(1, 2, 3, 4), avg_width={"aid": 4, "bid": 4, "abalance": 4, "filler": 85})
    return Schema({"pgbench_accounts": accounts}, loaded=True)


def messages(mode: str, statements: int, sessions: int = 8, seed: int = 7) -> list[tuple[int, bytes, bytes]]:
    """(session, client bytes, server bytes) per pgbench -S statement, as libpq and PostgreSQL send them."""
    from proxy.protocol import wire

    rnd = random.Random(seed)
    row_desc = wire.message(b"T", struct.pack("!h", 1) + b"abalance\0" + struct.pack("!ihihih", 16397, 3, 23, 4, -1, 0))
    done = wire.message(b"C", b"SELECT 1\0") + wire.message(b"Z", b"I")
    out = []
    for i in range(statements):
        aid = str(rnd.randint(1, 1_000_000)).encode()
        row = wire.message(b"D", struct.pack("!hi", 1, 4) + b"%4d" % rnd.randint(0, 9999))
        if mode == "prepared":  # libpq's PQexecPrepared: Bind, Describe portal, Execute, Sync
            bind = b"\0P_1\0" + struct.pack("!hhi", 0, 1, len(aid)) + aid + struct.pack("!h", 0)
            request = (wire.message(b"B", bind) + wire.message(b"D", b"P\0") + wire.message(b"E", b"\0\0\0\0\0")
                       + wire.message(b"S", b""))
            response = wire.message(b"2", b"") + row_desc + row + done
        else:
            request = wire.message(b"Q", PGBENCH_SQL.format(aid.decode()).encode() + b"\0")
            response = row_desc + row + done
        out.append((i % sessions, request, response))
    return out


def captured(batch: list, mode: str, sessions: int = 8, start: float = 1000.0) -> bytes:
    """What a worker ships for ``batch`` (from ``messages``): the bytes through the real SessionGauge and
    CaptureBuffer, one gauge per session (with -M prepared, each prepares pgbench's statement first)."""
    from proxy.events import ConnectionInfo
    from proxy.protocol import wire
    from proxy.protocol.capture import CaptureBuffer, SessionGauge

    capture = CaptureBuffer(limit=1 << 40)
    gauges = [SessionGauge(ConnectionInfo(i + 1, "10.0.0.1", "bench", "bench", "pgbench"), capture, 16)
              for i in range(sessions)]
    t = start
    if mode == "prepared":
        parse = wire.message(b"P", b"P_1\0" + PGBENCH_SQL.format("$1").encode() + b"\0\0\0")
        for g in gauges:
            g.client_data(parse + wire.message(b"S", b""), t)
            g.server_data(wire.message(b"1", b"") + wire.message(b"Z", b"I"), t)
    for session, request, response in batch:
        t += 0.00005
        g = gauges[session]
        g.client_data(request, t)
        g.server_data(response, t + 0.0001)
    return capture.take()


def run_stage(stage: str, mode: str, count: int, sessions: int = 8) -> int:
    """The measured child: everything up to and including ``stage`` for ``count`` statements (and a warm-up
    of the same path first, so caches are as warm in the N run as in the 2N run)."""
    from detectors.config import DetectorConfig
    from detectors.pipeline import Pipeline
    from proxy.protocol.hashing import ValueHasher
    from proxy.protocol.replay import Replayer
    from proxy.protocol.tracker import SessionTracker

    hasher = ValueHasher(b"bench" * 8)
    pipeline = Pipeline(DetectorConfig(), pgbench_schema(), hasher=hasher)

    def tracker(info, tx):
        return SessionTracker(info, hasher, 16, markers=True)

    def through(batch: list, start: float) -> int:
        if stage == "gen":
            return len(batch)
        raw = captured(batch, mode, sessions, start)
        if stage == "capture":
            return len(raw)
        events = Replayer(tracker, 0.0).feed(raw)
        if stage == "replay":
            return len(events)
        for i in range(0, len(events), 500):
            pipeline.process(events[i:i + 500])
        return len(events)

    through(messages(mode, 500, sessions, seed=3), 1000.0)  # warm-up: the shape cached, the units set up
    return through(messages(mode, count, sessions), 2000.0)


def callgrind(stage: str, mode: str, count: int, workdir: str) -> int:
    """Instructions (Ir) of one child run under callgrind."""
    out = Path(workdir) / f"cg.{stage}.{mode}.{count}"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                    "--stage", stage, "--mode", mode, "--count", str(count)],
                   check=True, capture_output=True, timeout=3600, env={**os.environ, "PYTHONHASHSEED": "0"})
    summary = re.search(r"^summary:\s+(\d+)", out.read_text(errors="replace"), re.M)
    if summary is None:
        raise SystemExit(f"no summary in {out}")
    return int(summary.group(1))


def measure(mode: str, n: int) -> dict[str, float]:
    """Instructions per statement of each stage (capture, replay, pipeline) in ``mode``."""
    with tempfile.TemporaryDirectory(prefix="pgloupe-callgrind-") as workdir:
        slope = {}
        for stage in STAGES:
            slope[stage] = (callgrind(stage, mode, 2 * n, workdir) - callgrind(stage, mode, n, workdir)) / n
    return {stage: slope[stage] - slope[before] for before, stage in zip(STAGES, STAGES[1:], strict=False)}


def _pgbench(pgbench: str, port: int, mode: str, transactions: int) -> None:
    from targets import DATABASE, USER

    run = subprocess.run([pgbench, "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", "-S", "-M", mode, "-c", "1",
                          "-t", str(transactions), DATABASE], capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise SystemExit(f"pgbench failed: {run.stderr[-2000:]}")


def _totals(outdir: Path) -> dict[str, int]:
    """Ir per measured process, by what it ran (its command line in the callgrind file)."""
    out: dict[str, int] = {}
    for path in outdir.glob("cg.*"):
        text = path.read_text(errors="replace")
        cmd = re.search(r"^cmd:\s*(.*)$", text, re.M)
        total = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
        if cmd is None or total is None:
            continue
        line = cmd.group(1)
        role = ("pgbouncer" if "pgbouncer" in line else "worker" if "proxy.workers.child" in line
                else "main" if "proxy" in line else None)
        if role is not None:
            out[role] = out.get(role, 0) + int(total.group(1))
    return out


def measure_servers(mode: str, n: int) -> dict[str, float]:
    """Instructions per statement of PgBouncer, and of pgloupe's worker and main process, under pgbench."""
    from procs import find_tool
    from targets import DATABASE, USER, PgBouncer, Pgloupe

    from proxy.demo.embedded import EmbeddedPostgres

    pgbench = find_tool("pgbench", "/usr/bin/pgbench", *sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench")))
    pgbouncer = find_tool("pgbouncer", "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
    pg = EmbeddedPostgres(settings={"fsync": "off", "synchronous_commit": "off"}).start()
    try:
        subprocess.run([str(pg.bindir / "createdb"), "-h", pg.host, "-p", str(pg.port), "-U", USER, DATABASE],
                       check=True, capture_output=True, timeout=60)
        subprocess.run([pgbench, "-h", pg.host, "-p", str(pg.port), "-U", USER, "-i", "-s", "1", "-q", DATABASE],
                       check=True, capture_output=True, timeout=600)
        counts: dict[str, dict[int, dict[str, int]]] = {}
        for target in ("pgbouncer", "relay", "pgloupe"):
            for count in (n, 2 * n):
                outdir = Path(tempfile.mkdtemp(prefix="pgloupe-callgrind-"))
                os.chmod(outdir, 0o777)  # PgBouncer runs as the postgres user
                prefix = ("valgrind", "--tool=callgrind", "--trace-children=yes",
                          f"--callgrind-out-file={outdir}/cg.%p")
                server = (PgBouncer(pgbouncer, pg, 1, prefix=prefix) if target == "pgbouncer"
                          else Pgloupe(pg.dsn(), 1, analyse=target == "pgloupe", prefix=prefix, start_timeout=600))
                server.start()
                try:
                    _pgbench(pgbench, server.port, mode, count)
                finally:
                    server.stop()
                counts.setdefault(target, {})[count] = _totals(outdir)
                shutil.rmtree(outdir, ignore_errors=True)
    finally:
        pg.stop()
    per = {}
    for target, by_count in counts.items():
        for role in by_count[2 * n]:
            per[role if target != "relay" else f"relay_{role}"] = (by_count[2 * n][role] - by_count[n].get(role, 0)) / n
    return per


def stages(modes, n: int, implementation: str, results: dict) -> None:
    print(f"instructions per pgbench -S statement ({implementation}; N = {n}, 2N - N)")
    print(f"{'mode':10} {'capture':>10} {'replay':>10} {'pipeline':>10} {'analysis':>10}")
    for mode in modes:
        counts = measure(mode, n)
        counts["analysis"] = counts["replay"] + counts["pipeline"]
        results[mode] = {k: round(v) for k, v in counts.items()}
        print(f"{mode:10} {counts['capture']:10,.0f} {counts['replay']:10,.0f} {counts['pipeline']:10,.0f} "
              f"{counts['analysis']:10,.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=2000, help="N: each stage runs with N and 2N")
    parser.add_argument("--mode", choices=("simple", "prepared", "both"), default="both")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--what", choices=("stages", "servers", "both"), default="stages",
                        help="the offline stages, PgBouncer and pgloupe serve under pgbench -S (needs pgbench and "
                        "pgbouncer), or both")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.mode, args.count)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing (Debian's valgrind package)")
    import proxy

    implementation = proxy.implementation()
    modes = ("simple", "prepared") if args.mode == "both" else (args.mode,)
    results = {"implementation": implementation, "statements": args.statements}
    if args.what != "servers":
        stages(modes, args.statements, implementation, results)
    if args.what != "stages":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        print(f"\ninstructions per pgbench -S statement, one client, -t N vs 2N (N = {args.statements})")
        print(f"{'mode':10} {'PgBouncer':>10} {'relay-only':>11} {'worker':>10}   (worker: relaying and capture)")
        for mode in modes:
            per = measure_servers(mode, args.statements)
            results[f"servers_{mode}"] = {k: round(v) for k, v in per.items()}
            print(f"{mode:10} {per.get('pgbouncer', 0):10,.0f} {per.get('relay_worker', 0):11,.0f} "
                  f"{per.get('worker', 0):10,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
