"""Shared fixtures: a real PostgreSQL (throwaway, or PGLOUPE_TEST_DSN) and pgloupe in front of it.

The throwaway server has TLS on (certificates from a test CA made by trustme) and roles for each
authentication method, so the same server serves the trust, md5, SCRAM and TLS tests.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import trustme

from proxy.config import load
from proxy.demo.embedded import EmbeddedPostgres, free_port
from proxy.service.background import BackgroundApp

# The real-application corpus's apps (tests/realapps) carry their own test suites (a Django TestCase suite that
# pgloupe run drives): they are run through pgloupe by tests/test_realapps.py, not collected here.
collect_ignore = ["realapps"]

MD5_USER, MD5_PASSWORD = "md5_user", "md5-pw-7f3c"
SCRAM_USER, SCRAM_PASSWORD = "scram_user", "scram-pw-91ab"


ROOT = Path(__file__).resolve().parent.parent
# `pgloupe run` and `serve` keep a findings store in their state directory: the tests' go to a
# throwaway one, never the home directory of whoever runs them.
os.environ.setdefault("PGLOUPE_STATE_DIR", tempfile.mkdtemp(prefix="pgloupe-test-state-"))


def wait_until(predicate, timeout: float = 10.0, what: str | None = None, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy, and return that: tests wait on the
    condition they need (the server runs the statement, the reload was applied ...), never on a fixed
    sleep. On timeout: with ``what``, fail saying what never happened; without, return the last (falsy)
    value for the caller's own assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            break
        time.sleep(interval)
    if not value and what is not None:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


def healthz(http: int) -> dict | None:
    """pgloupe's /healthz on ``http`` as JSON, or None while nothing answers (or it is not healthy)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as resp:
            return json.load(resp)
    except OSError:
        return None


def start_serve(args: list[str], env: dict[str, str] | None = None, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, timeout: float = 30.0) -> tuple[subprocess.Popen, int, int]:
    """``pgloupe serve ARGS`` in a child process (TLS to the test server off), on ports the OS picked,
    once its /healthz answers: (the process, the listen port, the HTTP port). The caller stops it."""
    listen, http = free_port(), free_port()
    if "--store" not in args and "--state-dir" not in args:  # each serve its own findings store
        args = [*args, "--state-dir", tempfile.mkdtemp(prefix="pgloupe-serve-state-")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
         *args], env=dict(os.environ, PGLOUPE_UPSTREAM_SSLMODE="disable", **(env or {})), cwd=ROOT,
        stdout=stdout, stderr=stderr, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or healthz(http), timeout, "pgloupe serve's /healthz")
        assert proc.poll() is None, f"pgloupe serve exited with {proc.returncode}"
    except AssertionError:
        proc.kill()
        proc.wait(10)
        raise
    return proc, listen, http


def backend_activity(admin: psycopg.Connection, pid: int) -> tuple[str, str] | None:
    """(state, query) of a server backend as pg_stat_activity reports it; None once it has gone."""
    return admin.execute("select state, query from pg_stat_activity where pid = %s", (pid,)).fetchone()


def statement_active(admin: psycopg.Connection, pid: int, text: str = "pg_sleep") -> bool:
    """The server has received the statement (containing ``text``) on backend ``pid`` and runs it.
    ``admin`` is a direct connection to the test server (``pg.dsn()``), not one through pgloupe."""
    row = backend_activity(admin, pid)
    return row is not None and row[0] == "active" and text in row[1]


@dataclass
class Server:
    host: str
    port: int
    superuser: str
    database: str
    embedded: EmbeddedPostgres | None
    ca: trustme.CA | None
    ca_file: str | None

    def dsn(self, user: str | None = None, database: str | None = None, password: str | None = None, **params) -> str:
        auth = user or self.superuser
        if password:
            auth += f":{password}"
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database or self.database}" + (f"?{query}" if query else "")

    def require_embedded(self) -> EmbeddedPostgres:
        if self.embedded is None:
            pytest.skip("needs the throwaway server (pg_hba and TLS set-up), not PGLOUPE_TEST_DSN")
        return self.embedded


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def certdir() -> Path:
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    path = Path(tempfile.mkdtemp(prefix="pgloupe-certs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(ca, certdir) -> Server:
    external = os.environ.get("PGLOUPE_TEST_DSN")
    if external:
        parts = urlsplit(external)
        yield Server(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres",
                     parts.path.lstrip("/") or "postgres", None, None, None)
        return
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    server_dir = certdir / "server"
    server_dir.mkdir()
    cert_file, key_file = server_dir / "server.crt", server_dir / "server.key"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    server_cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    for d in (certdir, server_dir):
        d.chmod(0o755)
    if os.geteuid() == 0:  # the server runs as postgres and must own its key
        pw = pwd.getpwnam("postgres")
        for f in (cert_file, key_file):
            os.chown(f, pw.pw_uid, pw.pw_gid)
    pg = EmbeddedPostgres(
        settings={"ssl": "on", "ssl_cert_file": f"'{cert_file}'", "ssl_key_file": f"'{key_file}'"},
        hba=[
            f"host all {MD5_USER} 127.0.0.1/32 md5",
            f"host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256",
        ],
    )
    pg.start()
    ca_file = str(certdir / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("SET password_encryption = 'md5'")
        conn.execute(f"CREATE ROLE {MD5_USER} LOGIN SUPERUSER PASSWORD '{MD5_PASSWORD}'")
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE {SCRAM_USER} LOGIN SUPERUSER PASSWORD '{SCRAM_PASSWORD}'")
    try:
        yield Server(pg.host, pg.port, pg.superuser, "postgres", pg, ca, ca_file)
    finally:
        pg.stop()


@dataclass
class RunningProxy:
    background: BackgroundApp
    host: str = "127.0.0.1"
    events: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def app(self):
        return self.background.app

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def http_port(self) -> int:
        return self.app.http.port

    def dsn(self, user: str = "postgres", database: str = "postgres", password: str | None = None, **params) -> str:
        auth = user + (f":{password}" if password else "")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def record(self, batch) -> None:
        with self._lock:
            self.events.extend(batch)

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "events"):
        """Events are analysed off the forwarding path: wait until the ones a test expects arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                matched = [e for e in self.events if predicate(e)]
            if matched or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert matched, f"no {what} arrived within {timeout}s; seen: {self.events[-10:]}"
        return matched

    def drain(self, timeout: float = 20.0) -> None:
        """Every statement relayed so far analysed, and every open unit of work judged."""
        app = self.app
        wait_until(lambda: app.pipeline.events >= app.queue.accepted, timeout, "the analysis to catch up")
        self.background.call(app.analysis.call, app.pipeline.flush)

    def settle(self, count_predicate, expected: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                matched = [e for e in self.events if count_predicate(e)]
            if len(matched) >= expected or time.monotonic() > deadline:
                return matched
            time.sleep(0.02)


@pytest.fixture
def start_proxy(pg):
    """Start pgloupe in front of the test server with extra settings; stopped after the test."""
    started: list[RunningProxy] = []

    def start(upstream: str | None = None, sections: dict | None = None, **settings) -> RunningProxy:
        settings.setdefault("listen", "127.0.0.1:0")
        settings.setdefault("http", "127.0.0.1:0")
        settings.setdefault("upstream_sslmode", "disable")
        settings.setdefault("connect_timeout", 5.0)
        settings.setdefault("shutdown_timeout", 3.0)  # a test that leaves a statement running must not wait 30 s
        settings.setdefault("workers", 0)  # one process, so tests can look inside; test_workers covers N
        running = RunningProxy(None)
        background = BackgroundApp(load(None, env={}, sections=sections, upstream=upstream or pg.dsn(), **settings),
                                   handlers=[running.record])
        running.background = background
        background.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.background.stop()


@pytest.fixture
def proxy(start_proxy) -> RunningProxy:
    return start_proxy()
