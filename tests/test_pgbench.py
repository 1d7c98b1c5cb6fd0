"""pgbench through pgloupe gives the same results as pgbench straight to the server.

With one client and a fixed random seed, pgbench's TPC-B-like run is deterministic: the same
transactions touch the same accounts with the same deltas. So a database benchmarked through the
proxy must end in exactly the state of a twin database benchmarked directly, in each of pgbench's
query modes (simple Query, extended unnamed statements, named prepared statements).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psycopg
import pytest

PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"
TEMPLATE = "bench_template"
TRANSACTIONS = 300

pytestmark = pytest.mark.skipif(not os.path.exists(PGBENCH), reason="pgbench not installed")


def pgbench_env() -> dict[str, str]:
    # Nothing from the caller's libpq environment (PGPASSWORD, PGSSLMODE, ...) may leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def pgbench(host: str, port: int, database: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [PGBENCH, "-h", host, "-p", str(port), "-U", "postgres", *args, database]
    return subprocess.run(cmd, env=pgbench_env(), capture_output=True, text=True, timeout=timeout, check=False)


def admin(pg, *statements: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def recreate(pg, name: str, template: str | None = None) -> None:
    admin(pg, f"drop database if exists {name} with (force)",
          f"create database {name}" + (f" template {template}" if template else ""))


def state(pg, database: str) -> dict:
    """Everything pgbench's transactions change, reduced to comparable values."""
    with psycopg.connect(pg.dsn(database=database), autocommit=True) as conn:
        def one(sql):
            return conn.execute(sql).fetchone()

        return {
            "accounts": one("select count(*), sum(abalance), "
                            "md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts"),
            "tellers": one("select count(*), sum(tbalance), "
                           "md5(string_agg(tid || ':' || tbalance, ',' order by tid)) from pgbench_tellers"),
            "branches": one("select count(*), sum(bbalance), "
                            "md5(string_agg(bid || ':' || bbalance, ',' order by bid)) from pgbench_branches"),
            "history": one("select count(*), sum(delta), md5(string_agg(tid || ':' || bid || ':' || aid || ':' || delta,"
                           " ',' order by aid, tid, bid, delta)) from pgbench_history"),
        }


def processed(output: str) -> tuple[int, int]:
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


def failed(output: str) -> int:
    m = re.search(r"number of failed transactions: (\d+)", output)
    assert m, output
    return int(m.group(1))


@pytest.fixture(scope="module")
def bench_template(pg):
    """One initialised pgbench database (scale 1) that each test clones, instead of -i every time."""
    admin(pg, f"drop database if exists {TEMPLATE} with (force)", f"create database {TEMPLATE}")
    init = pgbench(pg.host, pg.port, TEMPLATE, "-i", "-s", "1", "-q")
    assert init.returncode == 0, init.stderr
    created: list[str] = []

    def clone(name: str) -> str:
        recreate(pg, name, TEMPLATE)
        created.append(name)
        return name

    yield clone
    admin(pg, *(f"drop database if exists {name} with (force)" for name in [*created, TEMPLATE]))


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_same_result_as_direct(mode, pg, proxy, bench_template):
    direct_db = bench_template(f"bench_direct_{mode}")
    proxy_db = bench_template(f"bench_proxy_{mode}")
    assert state(pg, direct_db) == state(pg, proxy_db)  # identical starting points
    args = ("-n", "-M", mode, "-c", "1", "-j", "1", "-t", str(TRANSACTIONS), "--random-seed=42")

    direct_run = pgbench(pg.host, pg.port, direct_db, *args)
    assert direct_run.returncode == 0, direct_run.stderr
    proxy_run = pgbench(proxy.host, proxy.port, proxy_db, *args)
    assert proxy_run.returncode == 0, proxy_run.stderr

    for out in (direct_run.stdout, proxy_run.stdout):
        assert f"query mode: {mode}" in out
        assert processed(out) == (TRANSACTIONS, TRANSACTIONS)
        assert failed(out) == 0

    after_direct, after_proxy = state(pg, direct_db), state(pg, proxy_db)
    assert after_proxy == after_direct
    assert after_proxy["history"][0] == TRANSACTIONS
    assert after_proxy["accounts"][1] != 0  # the run really changed balances

    # Every statement of every transaction was seen by the proxy.
    def is_account_update(e):
        return e.database == proxy_db and e.command == "UPDATE" and "pgbench_accounts" in e.sql

    def is_history_insert(e):
        return e.database == proxy_db and e.command == "INSERT" and "pgbench_history" in e.sql

    assert len(proxy.settle(is_account_update, TRANSACTIONS, timeout=20)) == TRANSACTIONS
    assert len(proxy.settle(is_history_insert, TRANSACTIONS, timeout=20)) == TRANSACTIONS
    protocols = {e.protocol for e in proxy.events if is_account_update(e)}
    assert protocols == ({"simple"} if mode == "simple" else {"extended"})
    assert not [e for e in proxy.events if e.database == proxy_db and e.sqlstate is not None]


def test_pgbench_select_only_concurrent_clients(pg, proxy, bench_template):
    db = bench_template("bench_select")
    run = pgbench(proxy.host, proxy.port, db, "-n", "-S", "-c", "4", "-j", "2", "-t", "200")
    assert run.returncode == 0, run.stderr
    assert processed(run.stdout) == (800, 800)
    assert failed(run.stdout) == 0

    def is_bench_select(e):
        return e.database == db and e.command == "SELECT" and "from pgbench_accounts where aid" in e.sql.lower()

    selects = proxy.settle(is_bench_select, 800, timeout=20)
    assert len(selects) == 800
    assert all(e.rows == 1 and e.sqlstate is None for e in selects)
    assert len({e.conn_id for e in selects}) == 4
