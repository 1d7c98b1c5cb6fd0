#!/usr/bin/env python3
"""The analysis's memory under a flood of distinct statements: pgloupe's resident size over time.

    .venv/bin/python bench/memory.py [--statements 100000] [--clients 4] [--memory-mb 256] [--workers 1]
        [--json out.json]

One throwaway PostgreSQL and one ``pgloupe serve`` (its own process, defaults but for the options
above). ``--clients`` connections send ``--statements`` distinct statements between 1 and 50 KB, each
its own shape (its own column alias, and a long IN list or a run of predicates), so that every cache
and table of the analysis sees new keys all the time: the worst case for memory, where entry caps
allowed several GB. By default the clients wait while pgloupe's analysis backlog is long, so that
every statement is analysed (``--unpaced`` floods it instead). Every second the resident size of
pgloupe's main process (where the analysis runs) and of its workers is read from /proc; at the end the
analysis gets a minute to catch up, and the JSON records the series, pgloupe's /metrics memory gauges
and what was dropped. This is a
measurement, not a test: docs/performance.md gives the figure and the bound it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from proxy.demo.embedded import EmbeddedPostgres, free_port  # noqa: E402

PACE_BACKLOG = 20  # shipments waiting for analysis above which the clients wait (unless --unpaced)


def _sigterm(signum, frame):  # SIGTERM ends the run like Ctrl-C: the finally blocks stop everything
    raise KeyboardInterrupt


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def statement(i: int, rng: random.Random) -> str:
    """A statement of its own shape (its alias), 1-50 KB, cheap for the server (a one-row VALUES). Most
    are long through an IN list (collapsed in the shape: cheap to fingerprint, but every item a literal
    to hash); one in a hundred through a run of predicates of its own length (its shape as long as the
    text: parsed by sqlglot up to max_parse_chars, the expensive case, 0.1-0.2 s each)."""
    size = rng.randrange(1 << 10, 50 << 10)
    if i % 100:
        items = ", ".join(str(rng.randrange(10 ** 9)) for _ in range(size // 11))
        return f"SELECT x AS a{i} FROM (VALUES (0)) AS v(x) WHERE x IN ({items})"
    terms, n = [], 0
    while n < size:
        term = f"x <> {rng.randrange(10 ** 9)}"
        terms.append(term)
        n += len(term) + 5
    return f"SELECT x AS a{i} FROM (VALUES (0)) AS v(x) WHERE " + " AND ".join(terms)


def metrics(http: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for name, labels, value in re.findall(r"^(pgloupe_[a-z_]+)(\{[^}]*\})? (\S+)$", text, re.M):
        if name.startswith(("pgloupe_analysis_", "pgloupe_events_")):
            out[name + labels] = float(value)
    return out


def healthz(http: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def run(args) -> dict:
    pg = EmbeddedPostgres(settings={"max_connections": "50"})
    proc = None
    try:
        pg.start()
        listen, http = free_port(), free_port()
        env = dict(os.environ, PGLOUPE_UPSTREAM_SSLMODE="disable", PGLOUPE_ANALYSIS_MEMORY_MB=str(args.memory_mb))
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--workers", str(args.workers), "--listen",
             f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}", "--upstream", pg.dsn(), "--log-level", "warning"],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                healthz(http)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pgloupe serve did not start") from None
                time.sleep(0.1)
        samples: list[dict] = []
        sent = [0]
        done = threading.Event()
        flowing = threading.Event()  # cleared while pgloupe's analysis backlog is long (--paced)
        flowing.set()

        def sample() -> None:
            start = time.monotonic()
            while not done.wait(1.0):
                workers = children(proc.pid)
                queued = healthz(http).get("events_queued", 0)
                if args.paced:
                    flowing.clear() if queued > PACE_BACKLOG else flowing.set()
                samples.append({"t": round(time.monotonic() - start, 1), "statements": sent[0], "queued": queued,
                                "main_rss_mb": round(rss_kb(proc.pid) / 1024, 1),
                                "workers_rss_mb": round(sum(rss_kb(p) for p in workers) / 1024, 1)})

        def client(k: int) -> None:
            rng = random.Random(k)
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{listen}/postgres", autocommit=True) as conn:
                for i in range(k, args.statements, args.clients):
                    flowing.wait()
                    conn.execute(statement(i, rng)).fetchall()
                    sent[0] += 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_s = time.monotonic() - started
        deadline = time.monotonic() + 60
        while healthz(http).get("events_queued") and time.monotonic() < deadline:
            time.sleep(1.0)
        done.set()
        sampler.join()
        final = metrics(http)
        health = healthz(http)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
    rss = [s["main_rss_mb"] for s in samples]
    quarter = max(1, len(rss) // 4)
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "python": platform.python_version(), "statements": args.statements, "clients": args.clients,
        "workers": args.workers, "analysis_memory_mb": args.memory_mb, "paced": args.paced,
        "send_seconds": round(sent_s, 1),
        "main_rss_mb": {"max": max(rss), "first_quarter_max": max(rss[:quarter]),
                        "last_quarter_max": max(rss[-quarter:]), "last": rss[-1]},
        "healthz": health, "metrics": final, "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--unpaced", dest="paced", action="store_false",
                        help="send as fast as the server answers (the analysis then drops what it cannot keep up "
                             "with); by default the clients wait while pgloupe's backlog is long, so that every "
                             "statement is analysed and every table fills")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    result = run(args)
    summary = {k: v for k, v in result.items() if k not in ("samples", "metrics")}
    print(json.dumps(summary, indent=2))
    for name, value in sorted(result["metrics"].items()):
        if "memory" in name or "evictions" in name or "dropped" in name:
            print(f"  {name} {value:,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
