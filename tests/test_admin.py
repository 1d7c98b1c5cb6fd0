"""The admin console: psql and psycopg against the virtual `pgloupe` database answered by pgloupe itself."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest


def _psql(proxy, command: str, user: str = "admin", password: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", **({"PGPASSWORD": password} if password else {})}
    return subprocess.run(["psql", "-X", "-A", "-F", "|", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", user,
                           "-d", "pgloupe", "-c", command], capture_output=True, text=True, timeout=30, env=env)


def _wait_findings(proxy, kind: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(f["kind"] == kind for f in proxy.app.all_findings()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {kind} finding")


def test_admin_console_with_psql_and_psycopg(start_proxy, pg):
    proxy = start_proxy(admin_users=["admin"], upstream=pg.dsn(password="not-shown-xyz"))
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name="billing") as conn:
        conn.execute("SELECT pg_sleep(0.12)")
        for i in range(3):
            conn.execute("SELECT %s::int + 1", (i,))
        _wait_findings(proxy, "slow_query")

        out = _psql(proxy, "SHOW FINDINGS")
        assert out.returncode == 0, out.stderr
        header, *rows = out.stdout.strip().splitlines()
        assert header.startswith("kind|severity|confidence|fingerprint|tables|count")
        assert any(r.startswith("slow_query|warning|") for r in rows)

        with psycopg.connect(host="127.0.0.1", port=proxy.port, user="admin", dbname="pgloupe",
                             autocommit=True) as admin:
            fingerprints = admin.execute("SHOW FINGERPRINTS").fetchall()
            by_query = {r[8]: r for r in fingerprints}
            plus_one = by_query["SELECT CAST(%s AS INT) + %s"]
            assert plus_one[1] == "select" and plus_one[2] == "3" and float(plus_one[3]) > 0
            clients = admin.execute("SHOW CLIENTS").fetchall()
            assert {c[3] for c in clients} >= {"billing"} and any(c[6] == "admin" for c in clients)
            config = dict(admin.execute("SHOW CONFIG").fetchall())
            assert config["admin_users"] == "['admin']" and "not-shown-xyz" not in str(config)
            assert "***" in config["upstream"] and config["detectors.slow_query_ms"] == "(100.0, 500.0, 1000.0)"
            with pytest.raises(psycopg.errors.SyntaxError, match="try SHOW HELP"):
                admin.execute("DROP DATABASE postgres")
            assert len(admin.execute("SHOW HELP").fetchall()) == 6  # the session survives an error
            admin.execute("RESET FINDINGS")
            assert not [f for f in admin.execute("SHOW FINDINGS").fetchall() if f[0] == "slow_query"]
        # the proxied session was never disturbed by the console
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_admin_console_access(start_proxy):
    proxy = start_proxy(admin_users=["admin"], admin_password="s3cret-admin")
    out = _psql(proxy, "SHOW HELP", user="mallory")
    assert out.returncode != 0 and "not in admin_users" in out.stderr
    out = _psql(proxy, "SHOW HELP", password="wrong")
    assert out.returncode != 0 and "password authentication failed" in out.stderr
    out = _psql(proxy, "SHOW HELP", password="s3cret-admin")
    assert out.returncode == 0 and "SHOW FINDINGS" in out.stdout
    closed = start_proxy()  # no admin_users: the console is closed to everyone
    out = _psql(closed, "SHOW HELP", user="postgres")
    assert out.returncode != 0 and "not in admin_users" in out.stderr
