#!/usr/bin/env python3
"""Offline benchmark of the detector pipeline: events per second with a warm fingerprint cache,
and the cost of a fingerprint cache hit, a shape hit (literals differ) and a miss (sqlglot parse);
and the whole analysis of one pgbench -S statement as the main process does it with workers (the
session trackers replaying a worker's capture, then the pipeline), in -M simple and -M prepared.

    .venv/bin/python bench/detectors.py [--events 200000] [--json results.json]

The event stream is synthetic but shaped like the seeds' traffic: ORM statements with $n
parameters over tenant tables, N+1 loops with their parent query, transactions, pooled lookups.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors.config import DetectorConfig  # noqa: E402
from detectors.fingerprint import Fingerprinter  # noqa: E402
from detectors.pipeline import Pipeline  # noqa: E402
from detectors.schema import Schema, Table  # noqa: E402
from proxy.events import StatementEvent  # noqa: E402
from proxy.protocol.hashing import ValueHasher  # noqa: E402
from proxy.protocol.replay import Replayer
from proxy.protocol.tracker import SessionTracker  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instructions import captured, messages, pgbench_schema  # noqa: E402

TABLES = ["contacts", "activities", "campaigns", "emails", "leads", "messages", "journey_contacts", "users"]
OIDS = {t: 16384 + i for i, t in enumerate(TABLES)}
SCHEMA = Schema({t: Table(t, columns={"id": "integer", "team_id": "integer", "title": "text", "metadata": "jsonb",
                                      "created_at": "timestamptz"}, unique_keys=(("id",),), primary_key=("id",),
                          oid=OIDS[t], numbers=(1, 2, 3, 4, 5)) for t in TABLES}, loaded=True)


def shapes() -> list[str]:
    out = []
    for t in TABLES:
        out += [
            f"SELECT id, title FROM {t} WHERE id = $1 AND team_id = $2",
            f"SELECT id, title, created_at FROM {t} WHERE team_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            f"INSERT INTO {t} (team_id, title, metadata) VALUES ($1, $2, $3) RETURNING id",
            f"UPDATE {t} SET title = $1 WHERE id = $2 AND team_id = $3",
            f"DELETE FROM {t} WHERE id = $1 AND team_id = $2",
            f'SELECT "{t}"."id", "{t}"."title" FROM "{t}" WHERE "{t}"."team_id" = $1 AND "{t}"."id" IN ($2, $3, $4)',
        ]
    return out


def stream(n: int, seed: int = 1) -> list[StatementEvent]:
    rnd = random.Random(seed)
    hasher = ValueHasher(b"bench" * 8)
    sqls = shapes()
    events = []
    t = 1_000_000.0
    while len(events) < n:
        conn = rnd.randint(1, 50)
        t += rnd.random() * 0.002
        pattern = rnd.random()
        if pattern < 0.1:  # an N+1 loop with its parent
            ids = [str(rnd.randint(1, 10**6)).encode() for _ in range(20)]
            events.append(_ev(conn, sqls[1], [b"1", b"20"], ids, t, hasher))
            for i in ids:
                t += 0.0005
                events.append(_ev(conn, sqls[0], [i, b"1"], [b"x"], t, hasher))
        elif pattern < 0.2:  # a transaction of a few writes
            events.append(_ev(conn, "BEGIN", [], [], t, hasher, ("I", "T")))
            for _ in range(3):
                t += 0.0005
                events.append(_ev(conn, rnd.choice(sqls[2::6]), [b"1", b"t", b"{}"], [b"5"], t, hasher, ("T", "T")))
            events.append(_ev(conn, "COMMIT", [], [], t, hasher, ("T", "I")))
        else:  # ordinary traffic
            events.append(_ev(conn, rnd.choice(sqls), [str(rnd.randint(1, 999)).encode(), b"1"], [b"a"], t, hasher))
    return events[:n]


def _ev(conn, sql, params, rows, t, hasher, tx=("I", "I")):
    # the result column is each table's id, as RowDescription names it
    table = next((name for name in TABLES if f" {name} " in sql or f'"{name}"' in sql), None)
    sources = ((OIDS[table], 1),) if rows and table else ()
    return StatementEvent(conn, "app", "crm", "api", "10.0.0.1", sql, "extended", "", len(params),
                          tuple(hasher.digest(p) for p in params), tuple((hasher.digest(r),) for r in rows),
                          t, 0.0004, sql.split()[0].upper(), len(rows), 120, None, tx[0], tx[1], tx != ("I", "I"),
                          result_sources=sources)


def pgbench_capture(mode: str, statements: int, sessions: int = 8, seed: int = 1) -> bytes:
    """What a worker ships for ``statements`` pgbench -S transactions over ``sessions`` connections: the
    messages libpq sends and PostgreSQL answers (bench/instructions.py), through the real gauges."""
    return captured(messages(mode, statements, sessions, seed), mode, sessions)


def analysis_cost(mode: str, statements: int) -> tuple[float, float]:
    """(replay, pipeline) seconds per statement for fresh pgbench traffic (new literals, warm caches)."""
    hasher = ValueHasher(b"bench" * 8)

    def tracker(info, tx):
        return SessionTracker(info, hasher, 16, markers=True)

    pipeline = Pipeline(DetectorConfig(), pgbench_schema(), hasher=hasher)
    pipeline.process(Replayer(tracker, 0.0).feed(pgbench_capture(mode, 2000, seed=2)))  # warm
    raw = pgbench_capture(mode, statements)
    start = time.perf_counter()
    events = Replayer(tracker, 0.0).feed(raw)
    replayed = time.perf_counter()
    for i in range(0, len(events), 500):
        pipeline.process(events[i:i + 500])
    analysed = time.perf_counter()
    if len(events) != statements:
        raise SystemExit(f"replay gave {len(events)} events for {statements} statements")
    return (replayed - start) / statements, (analysed - replayed) / statements


def per_call(fn, args: list, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for a in args:
            fn(a)
    return (time.perf_counter() - start) / (len(args) * repeat)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    events = stream(args.events)

    pipeline = Pipeline(DetectorConfig(), SCHEMA)
    pipeline.process(events[:20_000])  # warm the fingerprint cache
    pipeline.flush()
    start = time.perf_counter()
    for i in range(0, len(events), 1000):
        pipeline.process(events[i : i + 1000])
    pipeline.flush()
    elapsed = time.perf_counter() - start

    fp = Fingerprinter()
    sqls = shapes()
    miss = per_call(fp, sqls)
    hit = per_call(fp, sqls, repeat=2000)
    literal = [s.replace("$1", str(i)).replace("$2", "7") for i, s in enumerate(sqls * 21)]
    per_call(fp, literal[: len(sqls)])  # each shape parsed once for this layout of its values
    shape_hit = per_call(fp, literal[len(sqls):])
    pgbench = {mode: analysis_cost(mode, max(2000, args.events // 4)) for mode in ("simple", "prepared")}

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        "events": len(events),
        "events_per_second": round(len(events) / elapsed),
        "fingerprint_hit_us": round(hit * 1e6, 2),
        "fingerprint_shape_hit_us": round(shape_hit * 1e6, 2),
        "fingerprint_miss_us": round(miss * 1e6, 1),
        "findings": len(pipeline.findings),
        **{f"pgbench_{mode}_{part}_us": round(cost * 1e6, 2)
           for mode, costs in pgbench.items() for part, cost in zip(("replay", "pipeline"), costs, strict=True)},
    }
    print(f"detector pipeline: {results['events_per_second']:,} events/s over {len(events):,} events (warm cache)")
    print(f"fingerprint cache: hit {results['fingerprint_hit_us']} us, literal-only change "
          f"{results['fingerprint_shape_hit_us']} us, miss (sqlglot parse) {results['fingerprint_miss_us']} us")
    print(f"findings raised: {results['findings']}")
    for mode, (replay_s, pipeline_s) in pgbench.items():
        print(f"analysis of one pgbench -S -M {mode} statement from a worker's capture: "
              f"{(replay_s + pipeline_s) * 1e6:.1f} us (session trackers {replay_s * 1e6:.1f} + pipeline "
              f"{pipeline_s * 1e6:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
