"""A throwaway PostgreSQL server from the installed binaries, for the demo and the tests.

initdb refuses to run as root, so when pgloupe runs as root the cluster is created and started as
the ``postgres`` system user. The data directory, socket and log live in one temporary directory
(under $TMPDIR) that ``stop()`` removes; ``start()`` removes it too when any of its steps fails or is
interrupted. The server runs in a session of its own, so a terminal's Ctrl-C reaches pgloupe, which
stops it in order, rather than the server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class EmbeddedPostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: $PGLOUPE_PG_BINDIR, pg_config, or Debian's layout."""
    env = os.environ.get("PGLOUPE_PG_BINDIR")
    candidates = [Path(env)] if env else []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package "
        "(scripts/setup.sh does) or set PGLOUPE_PG_BINDIR"
    )


@contextlib.contextmanager
def _interrupts_held():
    """Hold SIGINT and SIGTERM back in this thread while a child or directory is created and its handle
    kept: an interrupt landing in between would orphan it. A held signal is delivered on leaving."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield previous
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _remove(path: Path, timeout: float = 10.0) -> None:
    """rmtree until the directory is gone: the children of a killed initdb may still be writing into it."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None,
                 hba: list[str] | None = None, superuser: str = "postgres"):
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.superuser = superuser
        self.settings = settings or {}
        self.extra_hba = hba or []
        self.base: Path | None = None
        self._run_as: tuple[int, int] | None = None
        self._server: subprocess.Popen | None = None

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    def dsn(self, user: str | None = None, database: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def _child_setup(self, mask: set):
        """In the child: the signal mask from before _interrupts_held, then the server's user."""
        run_as = self._run_as

        def setup():
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if run_as is not None:
                os.setgid(run_as[1])
                os.setuid(run_as[0])

        return setup

    def _log_tail(self) -> str:
        logfile = self.base / "postgres.log" if self.base else None
        if logfile and logfile.exists():
            return logfile.read_text(errors="replace")[-2000:]
        return ""

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = None
        try:
            with _interrupts_held() as mask:
                proc = subprocess.Popen(
                    [str(self.bindir / args[0]), *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, cwd=str(self.base), start_new_session=True, preexec_fn=self._child_setup(mask),
                )
            out, err = proc.communicate()
        except BaseException:
            if proc is not None:
                # Its own process group: this ends the step and what it started (initdb's bootstrap backend).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            raise
        if check and proc.returncode != 0:
            raise EmbeddedPostgresError(f"{args[0]} failed ({proc.returncode}): {err.strip()}\n{self._log_tail()}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self) -> EmbeddedPostgres:
        """Create and start the server; on any failure or interrupt, stop it, remove its directory, re-raise."""
        try:
            with _interrupts_held():
                self.base = Path(tempfile.mkdtemp(prefix="pgloupe-pg-"))
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise EmbeddedPostgresError("running as root needs a 'postgres' system user for initdb") from exc
            self._run_as = (pw.pw_uid, pw.pw_gid)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-U", self.superuser, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a") as fh:
            fh.write("\n# pgloupe embedded server\n")
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
        if self.extra_hba:
            hba = self.datadir / "pg_hba.conf"
            # Extra lines go first: pg_hba uses the first matching line.
            hba.write_text("\n".join(self.extra_hba) + "\n" + hba.read_text())
        # The postmaster is our own child rather than pg_ctl's, so its pid is known from the first instant.
        logfile = self.base / "postgres.log"
        with open(logfile, "ab") as log, _interrupts_held() as mask:
            self.chown(logfile)  # a restart with pg_ctl -l appends to it as the server's user
            self._server = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=str(self.base), start_new_session=True,
                preexec_fn=self._child_setup(mask),
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        """What pg_ctl -w waits for: postmaster.pid's status line saying ready, or the server exiting."""
        pidfile = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while self._server.poll() is None:
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) > 7 and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"postgres not ready within {timeout:.0f} s\n{self._log_tail()}")
            time.sleep(0.02)
        raise EmbeddedPostgresError(f"postgres exited ({self._server.returncode}) while starting\n{self._log_tail()}")

    def reload(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "reload")

    def stop(self) -> None:
        if self.base is None:
            return
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGQUIT)  # immediate shutdown, as pg_ctl -m immediate: nothing to keep
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if (self.datadir / "postmaster.pid").exists():  # a server restarted with pg_ctl (tests/test_faults.py)
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
        _remove(self.base)
        self.base = None

    def chown(self, path: Path) -> None:
        """Make a file readable by the server (certificates and keys the tests write)."""
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
