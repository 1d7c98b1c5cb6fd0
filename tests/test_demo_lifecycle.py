"""Whichever way ``pgloupe demo`` and ``EmbeddedPostgres.start()`` end (Ctrl-C or SIGTERM at any stage, a
failed start-up step), no server process and no pgloupe-pg-* directory remains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from proxy.demo.embedded import EmbeddedPostgres, EmbeddedPostgresError

from .leftovers import assert_nothing_left, clean_up, leftovers, private_tmpdir

ROOT = Path(__file__).resolve().parent.parent

# the line each stage prints as it begins (flushed, so a pipe sees it at once)
STAGES = {
    "server-start-up": "pgloupe demo: starting a throwaway PostgreSQL",
    "schema": "pgloupe demo: creating a schema",
    "workloads": "  [ 2/",
    "serving": "pgloupe demo: serving;",
}


@pytest.fixture
def tmpdir_for_servers():
    path = private_tmpdir()
    yield path
    clean_up(path)


class Demo:
    """``pgloupe demo`` in a subprocess whose output lines are collected as they come."""

    def __init__(self, tmpdir: Path, *args: str, env: dict | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", *args],
            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir), **(env or {})}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"the demo exited ({self.proc.returncode}) before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output}"
            time.sleep(0.01)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the demo did not exit within {timeout} s:\n{self.output}") from None
        self._reader.join(10)
        return code


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_an_interrupted_demo_leaves_nothing_behind(tmpdir_for_servers, stage, sig):
    demo = Demo(tmpdir_for_servers)
    try:
        demo.wait_for_line(STAGES[stage])
        demo.proc.send_signal(sig)
        code = demo.wait()
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    out = demo.output
    assert "Traceback" not in out, out
    if stage == "serving":  # serving until Ctrl-C is how the demo is meant to end
        assert code == 0, out
        assert "throwaway PostgreSQL removed" in out
    else:
        assert code == 128 + sig, out
        assert f"interrupted by {signal.Signals(sig).name}" in out
    assert_nothing_left(tmpdir_for_servers)


def _fake_bindir(path: Path) -> Path:
    """An initdb that writes into its data directory and fails half-way, as a full disk would."""
    bindir = path / "bin"
    bindir.mkdir()
    (bindir / "initdb").write_text('#!/bin/sh\nmkdir -p "$2" && echo half > "$2/PG_VERSION"\n'
                                   'echo "initdb: could not write file: No space left on device" >&2\nexit 1\n')
    (bindir / "pg_ctl").write_text("#!/bin/sh\nexit 1\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return bindir


def test_a_failed_initdb_stops_the_demo_cleanly(tmpdir_for_servers):
    demo = Demo(tmpdir_for_servers, "--once", env={"PGLOUPE_PG_BINDIR": str(_fake_bindir(tmpdir_for_servers))})
    code = demo.wait()
    assert code == 2 and "initdb failed (1)" in demo.output and "No space left" in demo.output, demo.output
    assert "Traceback" not in demo.output
    assert_nothing_left(tmpdir_for_servers)


def test_the_demo_needs_no_pgbench(tmpdir_for_servers):
    """Only the corpus runs pgbench: the demo (and so the container image, which has no PostgreSQL
    programs) gets to its workloads without any program on PATH."""
    demo = Demo(tmpdir_for_servers, "--once", env={"PATH": str(tmpdir_for_servers)})
    try:
        demo.wait_for_line(STAGES["workloads"])
        demo.proc.send_signal(signal.SIGINT)
        assert demo.wait() == 128 + signal.SIGINT, demo.output
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    assert_nothing_left(tmpdir_for_servers)


@pytest.fixture
def server_tmpdir(tmpdir_for_servers, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir_for_servers))
    return tmpdir_for_servers


def test_a_server_that_cannot_start_leaves_nothing(server_tmpdir):
    pg = EmbeddedPostgres(settings={"shared_buffers": "'lots'"})
    with pytest.raises(EmbeddedPostgresError, match="shared_buffers"):
        pg.start()
    assert pg.base is None
    assert_nothing_left(server_tmpdir)


@pytest.mark.parametrize("when", ["launched", "ready"])
def test_an_interrupted_start_stops_the_server(server_tmpdir, monkeypatch, when):
    """Ctrl-C right after the postmaster was launched (it may not have written postmaster.pid yet),
    or once it is ready but before start() returns."""
    wait_ready = EmbeddedPostgres._wait_ready
    seen = {}

    def interrupted(self, *args, **kwargs):
        if when == "ready":
            wait_ready(self, *args, **kwargs)
            with psycopg.connect(self.dsn(), connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        seen["processes"], _ = leftovers(server_tmpdir)
        raise KeyboardInterrupt

    monkeypatch.setattr(EmbeddedPostgres, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        EmbeddedPostgres().start()
    assert seen["processes"], "the server was not running when interrupted"
    assert_nothing_left(server_tmpdir)

