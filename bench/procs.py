"""The benchmark harness's processes: finding tools, starting and stopping them, and reading their CPU
time and memory from /proc (children included, also once reaped)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's proxy/ and detectors/




ROOT = Path(__file__).resolve().parent.parent


CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def _sigterm(signum, frame):  # SIGTERM ends the run like Ctrl-C: the finally blocks stop everything
    raise KeyboardInterrupt


def find_tool(name: str, *fallbacks: str) -> str:
    for cand in (shutil.which(name), *fallbacks):
        if cand and os.path.exists(cand) and os.access(cand, os.X_OK):
            return cand
    raise BenchError(f"{name} not found (looked on PATH and in {', '.join(fallbacks)}): "
                     f"install Debian's {'pgbouncer' if name == 'pgbouncer' else 'postgresql-contrib'} package")


def pgloupe_command() -> list[str]:
    for cand in (ROOT / ".venv" / "bin" / "pgloupe", Path(sys.executable).parent / "pgloupe"):
        if cand.exists():
            return [str(cand)]
    if shutil.which("pgloupe"):
        return [shutil.which("pgloupe")]
    return [sys.executable, "-m", "proxy"]


def clean_env() -> dict[str, str]:
    """Nothing from the caller's libpq or pgloupe environment (PGPASSWORD, PGLOUPE_CONFIG, ...) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGLOUPE_"))}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def postgres_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root (PgBouncer refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise BenchError("running as root needs a 'postgres' system user to run PgBouncer as") from exc
    return pw.pw_uid, pw.pw_gid


def stat_fields(path: str) -> list[str]:
    """A /proc .../stat line after "pid (comm) ": [0] is the state (field 3 in proc(5)), so field N is [N - 3]."""
    data = Path(path).read_text()
    return data[data.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    fields = stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of the process's main thread only (with ``--workers 0``, pgloupe's event loop)."""
    fields = stat_fields(f"/proc/{pid}/task/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (ppid in every /proc/N/stat); a process that exits mid-scan is skipped."""
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(stat_fields(f"/proc/{name}/stat")[1]) == pid:
                    children.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(children)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), to tell it from a later process with its pid."""
    try:
        return int(stat_fields(f"/proc/{pid}/stat")[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class TreeCpu:
    """CPU seconds of a process and its children at one instant."""
    main: float  # the process itself, every thread
    main_thread: float  # its main thread alone
    children: float  # its live children, plus what its reaped children used (its cutime + cstime)
    pids: frozenset[int]  # the live children

    @property
    def total(self) -> float:
        return self.main + self.children


def tree_cpu(pid: int) -> TreeCpu:
    """Worker processes may be restarted mid-run. A child that exits and is reaped moves all its CPU
    time from the live children into the parent's cutime + cstime, and a new one starts from 0, so
    the difference of two snapshots is the children's CPU between them whatever restarted (only a
    child exiting during the scan itself can be missed)."""
    fields = stat_fields(f"/proc/{pid}/stat")
    main = (int(fields[11]) + int(fields[12])) / CLK_TCK
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    live, pids = 0.0, []
    for child in child_pids(pid):
        try:
            live += cpu_seconds(child)
            pids.append(child)
        except (OSError, ValueError, IndexError):
            continue
    return TreeCpu(main, main_thread_cpu_seconds(pid), reaped + live, frozenset(pids))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """VmRSS of the process and the sum over its children (one that exits meanwhile counts 0)."""
    children = 0
    for child in child_pids(pid):
        try:
            children += rss_kb(child)
        except (OSError, ValueError, BenchError):  # gone, or a zombie (no VmRSS)
            continue
    return rss_kb(pid), children


def wait_port(host: str, port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} at start:\n{tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} not listening on {host}:{port} after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    except ProcessLookupError:
        pass
