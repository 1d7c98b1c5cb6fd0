"""The web-server workloads: the CRM's views under gunicorn (one worker, four threads, CONN_MAX_AGE=60, so each
thread keeps its connection across requests) and a client sending 80 requests from eight threads."""

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


def start_gunicorn(port: int, log) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.realapps.python.django_app.settings",
           "DJANGO_CONN_MAX_AGE": "60"}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4", "--bind", f"127.0.0.1:{port}",
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


def serve_and_load(paths: tuple[str, ...]) -> None:
    """Serves the app, sends REQUESTS requests cycling over ``paths`` and over 12 users of the three teams."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tokens = [session_token(t, u) for u in range(4) for t in range(1, len(TEAMS) + 1)]
    with tempfile.TemporaryFile("w+") as log:
        server = start_gunicorn(port, log)
        try:
            wait_ready(base, server)
            with httpx.Client(base_url=base, timeout=10.0) as client:
                def get(i: int) -> int:
                    response = client.get(f"/{paths[i % len(paths)]}",
                                          headers={"Cookie": f"session={tokens[i % len(tokens)]}"})
                    return response.status_code

                with ThreadPoolExecutor(CLIENT_THREADS) as pool:
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
