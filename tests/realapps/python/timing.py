"""Timing in the real-application corpus: a fast statement with rare slow outliers, and a slow report.

The seeds' slow-query thresholds are percentiles (p99 over 100 ms a warning, over 500 ms critical)
plus a slow log at 1 s. On a busy machine a fast statement is sometimes slow: here pgbench -S's
lookups, thousands of them, a few of which wait about 150 ms on a lock another session takes. Their
p99 stays under a millisecond: no finding. The monthly report scans every activity against a series and takes
hundreds of milliseconds each of its five runs: a slow query.

    python -m tests.realapps.python.timing (setup | <workload name>)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.realapps.harness import App, Expect, Workload, python

MODULE = "tests.realapps.python.timing"
BENCH_S = 3
OUTLIERS = 3  # moments the lookups wait on a lock: a few of thousands, under the 1% a p99 tolerates
LOCK_S = 0.15

DDL = """
CREATE TABLE teams (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE activities (id serial PRIMARY KEY, team_id integer NOT NULL REFERENCES teams(id),
                         action text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO teams (name) VALUES ('acme'), ('globex');
INSERT INTO activities (team_id, action) SELECT 1 + g % 2, 'note' FROM generate_series(1, 20000) g;
"""


def setup() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DDL)
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", url], check=True, capture_output=True, timeout=120)


def lookup_outliers() -> None:
    """pgbench -S (random account lookups) for 3 s on 2 connections; another session takes an exclusive
    lock on the table three times for 150 ms, so a handful of the lookups wait."""
    import psycopg

    url = os.environ["DATABASE_URL"]
    bench = subprocess.Popen(["pgbench", "-n", "-S", "-c", "2", "-T", str(BENCH_S), url],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with psycopg.connect(url) as conn:
        for _ in range(OUTLIERS):
            time.sleep(BENCH_S / (OUTLIERS + 1))
            with conn.transaction():
                conn.execute("LOCK TABLE pgbench_accounts IN ACCESS EXCLUSIVE MODE")
                time.sleep(LOCK_S)
    _, err = bench.communicate(timeout=60)
    if bench.returncode != 0:
        raise SystemExit(f"pgbench failed: {err[-2000:]}")


def monthly_report() -> None:
    """Five runs of a report that scans every activity of the team against a series: slow each time."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        for _ in range(5):
            conn.execute("SELECT count(*) FROM activities a CROSS JOIN generate_series(1, 800) g "
                         "WHERE a.team_id = %s AND (a.id + g) %% 7 = 0", (1,)).fetchall()


HANDLERS = {"timing-lookup-outliers": lookup_outliers, "timing-monthly-report": monthly_report}

APPS = [App("timing", "ra_timing", python(MODULE, "setup"), [
    Workload("timing-lookup-outliers", python(MODULE, "timing-lookup-outliers"), frozenset(), (8,),
             "pgbench -S for 3 s on 2 connections, a few lookups waiting ~150 ms on a table lock: p99 under "
             "a millisecond, not a slow query; unrelated random lookups, not an N+1"),
    Workload("timing-monthly-report", python(MODULE, "timing-monthly-report"),
             frozenset({Expect("slow_query", "activities")}), (8,),
             "a report that cross-joins 10,000 activities with a series, hundreds of ms every run"),
])]


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup()
    else:
        HANDLERS[sys.argv[1]]()
