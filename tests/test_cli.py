"""The ``pgloupe`` command as a user runs it: flags, environment, TOML config, /healthz, logs, demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from proxy.config import ConfigError, load
from proxy.demo.embedded import free_port

from .conftest import SCRAM_PASSWORD, SCRAM_USER

PGLOUPE = [sys.executable, "-m", "proxy"]
ROOT = Path(__file__).resolve().parent.parent


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pgloupe exited early: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                return json.load(resp)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("pgloupe did not become healthy")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_serve_from_environment_and_config_file(pg, tmp_path):
    listen, http = free_port(), free_port()
    config = tmp_path / "pgloupe.toml"
    config.write_text(f'listen = "127.0.0.1:{listen}"\nlog_format = "json"\nqueue_size = 500\n'
                      f'[detectors]\nslow_query_ms = [100, 500, 1000]\nunit_gap_ms = 300\n')
    env = dict(os.environ, PGLOUPE_UPSTREAM=pg.dsn(), PGLOUPE_HTTP=f"127.0.0.1:{http}",
               PGLOUPE_UPSTREAM_SSLMODE="disable")
    proc = subprocess.Popen([*PGLOUPE, "serve", "--config", str(config)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_healthy(http, proc)
        assert health["status"] == "ok" and health["client_connections"] == 0
        # The client's own user and password go through: SCRAM to the server, not the URL's user.
        canary = "canary-param-77d1"
        with psycopg.connect(host="127.0.0.1", port=listen, user=SCRAM_USER, password=SCRAM_PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            assert conn.execute("SELECT current_user, %s::text", (canary,)).fetchone() == (SCRAM_USER, canary)
        deadline = time.monotonic() + 10
        while _wait_healthy(http, proc)["statements"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _wait_healthy(http, proc)["statements"] >= 1
    finally:
        err = _stop(proc)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["event"] == "listening" and r["listen"] == f"127.0.0.1:{listen}" for r in records)
    assert any(r["event"] == "session_started" and r["user"] == SCRAM_USER for r in records)
    assert SCRAM_PASSWORD not in err and canary not in err
    assert proc.returncode == 0


def test_command_line_flags_override_environment(pg):
    listen, http = free_port(), free_port()
    env = dict(os.environ, PGLOUPE_LISTEN="127.0.0.1:1", PGLOUPE_UPSTREAM="postgresql://nobody@127.0.0.1:1/x")
    proc = subprocess.Popen([*PGLOUPE, "serve", "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
                             "--upstream", pg.dsn(sslmode="disable")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(http, proc)
        with psycopg.connect(host="127.0.0.1", port=listen, user="postgres", dbname="postgres") as conn:
            assert conn.execute("SELECT 42").fetchone() == (42,)
    finally:
        _stop(proc)


@pytest.mark.parametrize("args,message", [
    (["--upstream", "mysql://x@y/z"], "postgresql:// URL"),
    (["--upstream", "postgresql://x@y/z?sslmode=sometimes"], "sslmode must be one of"),
    (["--listen", "nohostport"], "listen must be HOST:PORT"),
    (["--config", "/nonexistent/pgloupe.toml"], "cannot read config file"),
])
def test_bad_settings_get_a_clear_error(args, message):
    proc = subprocess.run([*PGLOUPE, "serve", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PGLOUPE_HTTP="127.0.0.1:0"))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_detector_settings_stop_serve_with_a_clear_error(tmp_path):
    config = tmp_path / "pgloupe.toml"
    config.write_text('[detectors]\nslow_query_ms = "100"\n')
    proc = subprocess.run([*PGLOUPE, "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "[detectors]: slow_query_ms must be a list of numbers" in proc.stderr and "Traceback" not in proc.stderr


def test_config_file_validation(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(str(bad), env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('lisen = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="unknown setting 'lisen'"):
        load(str(unknown), env={})
    with pytest.raises(ConfigError, match="queue_size must be a number"):
        load(None, env={"PGLOUPE_QUEUE_SIZE": "lots"})
    settings = load(None, env={"PGLOUPE_TLS_REQUIRED": "no", "PGLOUPE_RESULT_ROWS": "3"})
    assert settings.tls_required is False and settings.result_rows == 3
    url = load(None, env={}, upstream="postgresql://app@db.internal:6543/crm?sslmode=verify-full").upstream_target
    assert (url.host, url.port, url.user, url.database, url.sslmode) == ("db.internal", 6543, "app", "crm", "verify-full")


def test_demo_runs_against_its_own_throwaway_server():
    proc = subprocess.run([*PGLOUPE, "demo", "--once", "--listen", f"127.0.0.1:{free_port()}",
                           "--http", f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for kind in ("n_plus_one_insert", "n_plus_one_select", "missing_transaction", "cross_tenant", "select_star",
                 "slow_query", "join_candidate", "missing_index", "missing_tenant_index"):
        assert kind in out, (kind, out)
    assert "61 -> 2      campaign-send-loop -> campaign-send-batched" in out
    assert "[ 1/" in out and "throwaway PostgreSQL removed" in out


def test_demo_against_an_existing_server_uses_its_own_database(pg):
    proc = subprocess.run([*PGLOUPE, "demo", "--once", "--upstream", pg.dsn(), "--listen", f"127.0.0.1:{free_port()}",
                           "--http", f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "database pgloupe_demo" in proc.stdout and "n_plus_one_insert" in proc.stdout
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:  # the application's database was not touched
        assert conn.execute("SELECT to_regclass('public.campaign_recipients')").fetchone() == (None,)


def test_serve_tunes_the_collector_once_started(pg):
    """What `pgloupe serve` runs (serve_forever) freezes start-up's objects and collects the young
    generation less often; this test process gets its collector settings back afterwards."""
    import asyncio
    import gc

    from proxy.service.app import App
    from proxy.service.background import GC_GEN0_THRESHOLD, serve_forever

    settings = load(None, env={}, upstream=pg.dsn(), listen="127.0.0.1:0", http=None,
                    upstream_sslmode="disable", workers=0)
    before = gc.get_threshold()
    seen = {}

    async def main() -> None:
        ready = asyncio.Event()

        def started(app) -> None:
            seen["threshold"], seen["frozen"] = gc.get_threshold(), gc.get_freeze_count()
            ready.set()

        task = asyncio.create_task(serve_forever(App(settings), ready=started))
        await asyncio.wait_for(ready.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["threshold"][0] == GC_GEN0_THRESHOLD and seen["frozen"] > 0
