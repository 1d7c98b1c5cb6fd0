"""The web-server workloads: the CRM's views under gunicorn (one worker, four threads, CONN_MAX_AGE=60, so each
thread keeps its connection across requests) and a client sending 80 requests from eight threads; or one
thread (a sync worker: one persistent connection) and one client, for the users of one team."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from proxy.demo.embedded import free_port

from .setup_db import TEAMS, session_token

REQUESTS = 80
CLIENT_THREADS = 8


def start_gunicorn(port: int, log, threads: int = 4) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.realapps.python.django_app.settings",
           "DJANGO_CONN_MAX_AGE": "60"}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", str(threads), "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "tests.realapps.python.django_app.wsgi:application"],
        env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("gunicorn did not answer /healthz")


def serve_and_load(paths: tuple[str, ...], one_team: bool = False) -> None:
    """Serves the app, sends REQUESTS requests cycling over ``paths`` and over 12 users of the three teams
    (``one_team``: the four users of team 1, one request at a time, to a one-thread server)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    teams = range(1, 2) if one_team else range(1, len(TEAMS) + 1)
    tokens = [session_token(t, u) for u in range(4) for t in teams]
    clients = 1 if one_team else CLIENT_THREADS
    with tempfile.TemporaryFile("w+") as log:
        server = start_gunicorn(port, log, threads=1 if one_team else 4)
        try:
            wait_ready(base, server)
            with httpx.Client(base_url=base, timeout=10.0) as client:
                def get(i: int) -> int:
                    response = client.get(f"/{paths[i % len(paths)]}",
                                          headers={"Cookie": f"session={tokens[i % len(tokens)]}"})
                    return response.status_code

                with ThreadPoolExecutor(clients) as pool:
                    statuses = list(pool.map(get, range(REQUESTS)))
            if any(code != 200 for code in statuses):
                raise RuntimeError(f"unexpected statuses: {sorted(set(statuses))}")
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read()[-3000:])
            raise
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
