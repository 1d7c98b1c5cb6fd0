"""The comparison's tables: medians over rounds as ratios to PgBouncer and to direct, scaling by worker
processes, the cost of analysis, and the machine and versions they were measured on."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's proxy/ and detectors/

import psycopg  # noqa: E402
from procs import ROOT  # noqa: E402
from targets import RELAY, Case  # noqa: E402

from proxy.demo.embedded import EmbeddedPostgres  # noqa: E402


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def ratio(a, b):
    return a / b if a is not None and b else None


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = None
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
            "kernel": platform.release(), "python": platform.python_version(),
            "python_implementation": platform.python_implementation()}


def versions(pg: EmbeddedPostgres, pgbouncer: str, pgbench: str) -> dict:
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    with psycopg.connect(pg.dsn(), connect_timeout=10) as conn:
        server = conn.execute("SELECT version()").fetchone()[0]
    try:
        from importlib.metadata import version
        pgloupe_version = version("pgloupe")
    except Exception:  # not installed as a distribution
        pgloupe_version = None
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {"postgresql": server, "pgbouncer": first_line([pgbouncer, "--version"]),
            "pgbench": first_line([pgbench, "--version"]), "pgloupe": pgloupe_version, "pgloupe_commit": commit,
            "uvloop": uv, "psycopg": psycopg.__version__}


def summarise(cases: list[Case], runs: list[dict]) -> dict:
    medians: dict = {}
    for case in cases:
        per = medians[case.name] = {}
        for t in case.targets:
            rs = [r for r in runs if r["case"] == case.name and r["target"] == t]
            keys = ("tps", "avg_ms", "p99_ms", "cpu_s_per_10k")
            if t.startswith("pgloupe"):
                keys += ("forwarding_cpu_s_per_10k", "analysis_cpu_s_per_10k")
            per[t] = {k: median([r.get(k) for r in rs]) for k in keys}
        per["pgloupe_over_pgbouncer_tps"] = ratio(per["pgloupe"]["tps"], per["pgbouncer"]["tps"])
        per["pgloupe_over_direct_tps"] = ratio(per["pgloupe"]["tps"], per["direct"]["tps"])
    return medians


def table(cases: list[Case], medians: dict) -> str:
    head = ("| case | TPS direct | TPS PgBouncer | TPS pgloupe | pgloupe/PgBouncer | pgloupe/direct "
            "| avg ms direct / PgBouncer / pgloupe | p99 ms direct / PgBouncer / pgloupe "
            "| CPU s per 10k stmts PgBouncer / pgloupe |")
    lines = [head, "|" + " --- |" * 9]
    for case in cases:
        m = medians[case.name]
        d, b, p = m["direct"], m["pgbouncer"], m["pgloupe"]
        lines.append(
            f"| {case.name} | {fmt(d['tps'])} | {fmt(b['tps'])} | {fmt(p['tps'])} "
            f"| {fmt(m['pgloupe_over_pgbouncer_tps'], '.2f')} | {fmt(m['pgloupe_over_direct_tps'], '.2f')} "
            f"| {fmt(d['avg_ms'], '.3f')} / {fmt(b['avg_ms'], '.3f')} / {fmt(p['avg_ms'], '.3f')} "
            f"| {fmt(d['p99_ms'], '.3f')} / {fmt(b['p99_ms'], '.3f')} / {fmt(p['p99_ms'], '.3f')} "
            f"| {fmt(b['cpu_s_per_10k'], '.3f')} / {fmt(p['cpu_s_per_10k'], '.3f')} |")
    return "\n".join(lines)


def scaling(cases: list[Case], medians: dict, base_workers: int) -> dict:
    """For the cases run with pgloupe-wN targets: TPS and CPU per 10k statements of every pgloupe,
    and each pgloupe-wN's TPS over the main pgloupe's (``--workers``)."""
    out: dict = {}
    for case in cases:
        extra = [t for t in case.targets if t.startswith("pgloupe-w")]
        if not extra:
            continue
        m = medians[case.name]
        names = ["pgloupe", *extra]
        out[case.name] = {
            "clients": case.clients,
            "workers": {t: base_workers if t == "pgloupe" else int(t.removeprefix("pgloupe-w")) for t in names},
            "tps": {t: m[t]["tps"] for t in names},
            "tps_over_pgloupe": {t: ratio(m[t]["tps"], m["pgloupe"]["tps"]) for t in extra},
            **{k: {t: m[t][k] for t in names}
               for k in ("cpu_s_per_10k", "forwarding_cpu_s_per_10k", "analysis_cpu_s_per_10k")},
        }
    return out


def scaling_table(scale: dict) -> str:
    first = next(iter(scale.values()))
    names = list(first["tps"])
    label = {t: f"w={w}" for t, w in first["workers"].items()}
    base = label["pgloupe"]
    head = ("| case | " + " | ".join(f"TPS {label[t]}" for t in names) + " | "
            + " | ".join(f"{label[t]} / {base}" for t in names[1:]) + " | "
            + " | ".join(f"CPU s per 10k {label[t]} (forwarding + analysis)" for t in names) + " |")
    lines = [head, "|" + " --- |" * (3 * len(names))]
    for name, sc in scale.items():
        lines.append(
            f"| {name} | " + " | ".join(fmt(sc["tps"][t]) for t in names) + " | "
            + " | ".join(fmt(sc["tps_over_pgloupe"][t], ".2f") for t in names[1:]) + " | "
            + " | ".join(f"{fmt(sc['cpu_s_per_10k'][t], '.3f')} ({fmt(sc['forwarding_cpu_s_per_10k'][t], '.3f')}"
                         f" + {fmt(sc['analysis_cpu_s_per_10k'][t], '.3f')})" for t in names) + " |")
    return "\n".join(lines)


def relay_only(cases: list[Case], medians: dict) -> dict:
    """For the cases run with the relay-only pgloupe: TPS and CPU per 10k statements of PgBouncer, pgloupe
    relay-only and pgloupe (full), and the two pgloupes' TPS over PgBouncer's and full over relay-only."""
    out: dict = {}
    names = ("pgbouncer", RELAY, "pgloupe")
    for case in cases:
        if RELAY not in case.targets:
            continue
        m = medians[case.name]
        out[case.name] = {
            "clients": case.clients,
            "tps": {t: m[t]["tps"] for t in names},
            "relay_over_pgbouncer_tps": ratio(m[RELAY]["tps"], m["pgbouncer"]["tps"]),
            "full_over_pgbouncer_tps": ratio(m["pgloupe"]["tps"], m["pgbouncer"]["tps"]),
            "full_over_relay_tps": ratio(m["pgloupe"]["tps"], m[RELAY]["tps"]),
            "avg_ms": {t: m[t]["avg_ms"] for t in names},
            "p99_ms": {t: m[t]["p99_ms"] for t in names},
            "cpu_s_per_10k": {t: m[t]["cpu_s_per_10k"] for t in names},
            **{k: {t: m[t][k] for t in (RELAY, "pgloupe")}
               for k in ("forwarding_cpu_s_per_10k", "analysis_cpu_s_per_10k")},
        }
    return out


def relay_table(rel: dict) -> str:
    head = ("| case | TPS PgBouncer | TPS pgloupe relay-only | TPS pgloupe | relay-only / PgBouncer "
            "| pgloupe / PgBouncer | pgloupe / relay-only | CPU s per 10k stmts PgBouncer / relay-only / pgloupe |")
    lines = [head, "|" + " --- |" * 8]
    for name, r in rel.items():
        tps, cpu = r["tps"], r["cpu_s_per_10k"]
        lines.append(
            f"| {name} | {fmt(tps['pgbouncer'])} | {fmt(tps[RELAY])} | {fmt(tps['pgloupe'])} "
            f"| {fmt(r['relay_over_pgbouncer_tps'], '.2f')} | {fmt(r['full_over_pgbouncer_tps'], '.2f')} "
            f"| {fmt(r['full_over_relay_tps'], '.2f')} "
            f"| {fmt(cpu['pgbouncer'], '.3f')} / {fmt(cpu[RELAY], '.3f')} / {fmt(cpu['pgloupe'], '.3f')} |")
    return "\n".join(lines)
