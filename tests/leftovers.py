"""What a throwaway PostgreSQL can leave behind: processes and pgloupe-pg-* directories.

Each test gives the code under test a TMPDIR of its own, so what is found there is that test's, not a
server another test (or the session's ``pg`` fixture) is running.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path


def private_tmpdir() -> Path:
    """Under /tmp and world-traversable: the servers run as the postgres user when the tests run as root."""
    path = Path(tempfile.mkdtemp(prefix="pgloupe-test-tmp-", dir="/tmp"))
    path.chmod(0o755)
    return path


def processes_under(path: Path) -> dict[int, str]:
    """pid -> command line of every process whose command line names ``path`` or whose working directory
    is in it (the postmaster names its data directory; backends and initdb's children work in it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found[int(entry.name)] = cmdline
    return found


def leftovers(path: Path) -> tuple[dict[int, str], list[str]]:
    return processes_under(path), sorted(p.name for p in path.glob("pgloupe-pg-*"))


def assert_nothing_left(path: Path, timeout: float = 10.0) -> None:
    """Processes take a moment to exit after their parent has gone: poll, then say what remains."""
    deadline = time.monotonic() + timeout
    while True:
        processes, directories = leftovers(path)
        if not processes and not directories:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: processes {processes}, directories {directories}")
        time.sleep(0.05)


def clean_up(path: Path) -> None:
    """After a failed test: end what it left (by pid) and remove its directory."""
    for pid in processes_under(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
