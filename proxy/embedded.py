"""A throwaway PostgreSQL server from the installed binaries, for the demo and the tests.

initdb refuses to run as root, so when pgloupe runs as root the cluster is created and started as
the ``postgres`` system user. The data directory, socket and log live in one temporary directory
that ``stop()`` removes.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
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

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    def dsn(self, user: str | None = None, database: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def _preexec(self):
        if self._run_as is None:
            return None
        uid, gid = self._run_as

        def drop():
            os.setgid(gid)
            os.setuid(uid)

        return drop

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
            preexec_fn=self._preexec(), cwd=str(self.base), check=False,
        )
        if check and proc.returncode != 0:
            log = ""
            logfile = self.base / "postgres.log" if self.base else None
            if logfile and logfile.exists():
                log = logfile.read_text(errors="replace")[-2000:]
            raise EmbeddedPostgresError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")
        return proc

    def start(self) -> EmbeddedPostgres:
        self.base = Path(tempfile.mkdtemp(prefix="pgloupe-pg-"))
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
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.base / "postgres.log"), "-w", "-t", "60", "start")
        return self

    def reload(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "reload")

    def stop(self) -> None:
        if self.base is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def chown(self, path: Path) -> None:
        """Make a file readable by the server (certificates and keys the tests write)."""
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
