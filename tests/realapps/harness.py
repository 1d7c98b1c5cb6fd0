"""The real-application corpus: small apps written with the libraries teams use (Django, SQLAlchemy,
Drizzle, TypeORM, pooled web servers, a transactional test suite), run through pgloupe, each workload
labelled with what a senior reviewer would report.

An app owns a database of its own (so pgloupe must follow every database its clients use), a set-up
command run straight against the server (its migrations and seed rows), and workloads. A workload is a
command run with ``DATABASE_URL`` pointing at pgloupe (``?application_name=<workload>`` in it, and
``PGAPPNAME`` too), so the findings it causes are told apart by their application. Its label is the
set of (kind, table) a reviewer would report at warning or above; findings below warning are not
scored. Precision and recall are per finding kind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
SEVERITIES = ("info", "warning", "error", "critical")
SCORED = frozenset(("warning", "error", "critical"))
WORKLOAD_TIMEOUT_S = 180


@dataclass(frozen=True)
class Expect:
    """A finding a reviewer would report: its kind and a table it names."""

    kind: str
    table: str


@dataclass
class Workload:
    name: str  # also its application_name: unique across the corpus
    argv: list[str]  # run with DATABASE_URL and PGAPPNAME set, from the repository root
    expect: frozenset[Expect] = frozenset()
    classes: tuple[int, ...] = ()  # which of issue 16's classes of false findings or misses it represents
    note: str = ""  # what a reviewer would say of it, in a line
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class App:
    name: str
    database: str
    setup: list[str]  # creates the schema and seed rows, with DATABASE_URL pointing straight at the server
    workloads: list[Workload]
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here (a missing library), or None


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def node(script: str, *args: str) -> list[str]:
    return ["node", str(NODE_DIR / script), *args]


def node_ready() -> str | None:
    if not (NODE_DIR / "node_modules").is_dir():
        return f"{NODE_DIR}/node_modules is missing: scripts/setup.sh runs npm ci there"
    return None


def with_database(dsn: str, database: str, application: str | None = None) -> str:
    parts = urlsplit(dsn)
    query = parts.query
    if application:
        query = "&".join(q for q in (query, f"application_name={application}") if q)
    return urlunsplit(parts._replace(path=f"/{database}", query=query))


# ------------------------------------------------------------------ running


@dataclass
class Finding:
    kind: str
    severity: str
    tables: tuple[str, ...]
    fingerprint: str
    count: int
    statements: int
    example: str
    message: str = ""


@dataclass
class Result:
    workload: Workload
    findings: list[Finding]  # at warning or above, caused by this workload
    below: list[Finding] = field(default_factory=list)  # info findings, shown but not scored
    error: str | None = None  # the workload itself failed

    def matches(self, f: Finding) -> bool:
        return any(e.kind == f.kind and e.table in f.tables for e in self.workload.expect)

    @property
    def false_positives(self) -> list[Finding]:
        return [f for f in self.findings if not self.matches(f)]

    @property
    def true_positives(self) -> list[Finding]:
        return [f for f in self.findings if self.matches(f)]

    @property
    def missed(self) -> list[Expect]:
        return [e for e in self.workload.expect
                if not any(f.kind == e.kind and e.table in f.tables for f in self.findings)]


def _env(dsn: str, workload: Workload) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn, "PGAPPNAME": workload.name, "PYTHONPATH": str(ROOT),
            **workload.env}


def set_up(app: App, server_dsn: str) -> None:
    """The app's database, created afresh, and its set-up run straight against the server."""
    import psycopg

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {app.database} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {app.database}")
    dsn = with_database(server_dsn, app.database)
    proc = subprocess.run(app.setup, cwd=ROOT, env={**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=WORKLOAD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"set-up of {app.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")  # statistics, as a staging database has them (column widths, row counts)


def run_workload(w: Workload, proxy_dsn: str) -> str | None:
    """None, or what went wrong (the workload's own output)."""
    proc = subprocess.run(w.argv, cwd=ROOT, env=_env(proxy_dsn, w), capture_output=True, text=True,
                          timeout=WORKLOAD_TIMEOUT_S)
    if proc.returncode != 0:
        return f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return None


def collect(findings: list[dict], workloads: list[Workload], errors: dict[str, str | None]) -> list[Result]:
    results = []
    for w in workloads:
        mine = [f for f in findings if w.name in f["applications"]]
        as_found = [Finding(f["kind"], f["severity"], tuple(f["tables"]), f["fingerprint"], f["count"],
                            f["statements"], f["example"], f["message"]) for f in mine]
        results.append(Result(w, [f for f in as_found if f.severity in SCORED],
                              [f for f in as_found if f.severity not in SCORED], errors.get(w.name)))
    return results


def run_apps(apps: list[App], server_dsn: str, proxy_dsn: str, analysed: Callable[[], None],
             findings: Callable[[], list[dict]], catalog_ready: Callable[[str], None] | None = None) -> list[Result]:
    """Set each app up, run its workloads through the proxy (``proxy_dsn``, any database), then score.

    ``analysed()`` returns once pgloupe has analysed everything it relayed (and closed open units);
    ``catalog_ready(database)`` once pgloupe knows the app's tables."""
    workloads: list[Workload] = []
    errors: dict[str, str | None] = {}
    for app in apps:
        set_up(app, server_dsn)
        if catalog_ready is not None:
            catalog_ready(app.database)
        for w in app.workloads:
            errors[w.name] = run_workload(w, with_database(proxy_dsn, app.database, w.name))
            workloads.append(w)
    analysed()
    return collect(findings(), workloads, errors)


# ------------------------------------------------------------------ scoring


def per_kind(results: list[Result]) -> dict[str, tuple[int, int, int]]:
    """kind -> (true positives, false positives, missed)."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for r in results:
        for f in r.true_positives:
            tp[f.kind] += 1
        for f in r.false_positives:
            fp[f.kind] += 1
        for e in r.missed:
            fn[e.kind] += 1
    return {k: (tp[k], fp[k], fn[k]) for k in sorted(set(tp) | set(fp) | set(fn))}


def ratios(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


def report(results: list[Result]) -> str:
    lines = [f"{'workload':44} {'expected':52} verdict"]
    for r in results:
        expected = ", ".join(sorted(f"{e.kind}@{e.table}" for e in r.workload.expect)) or "-"
        verdict = []
        if r.error:
            verdict.append("WORKLOAD FAILED")
        if r.missed:
            verdict.append("missed " + ", ".join(f"{e.kind}@{e.table}" for e in r.missed))
        if r.false_positives:
            verdict.append("false " + ", ".join(f"{f.kind}/{f.severity}@{','.join(f.tables)}"
                                                 for f in r.false_positives))
        lines.append(f"{r.workload.name:44} {expected:52} {'; '.join(verdict) or 'ok'}")
    lines.append("")
    lines.append(f"{'kind':24} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>10} {'recall':>8}")
    total = [0, 0, 0]
    for kind, (tp, fp, fn) in per_kind(results).items():
        p, r = ratios(tp, fp, fn)
        total = [total[0] + tp, total[1] + fp, total[2] + fn]
        lines.append(f"{kind:24} {tp:4d} {fp:4d} {fn:4d} {p:10.3f} {r:8.3f}")
    p, r = ratios(*total)
    lines.append(f"{'all':24} {total[0]:4d} {total[1]:4d} {total[2]:4d} {p:10.3f} {r:8.3f}")
    clean = [x for x in results if not x.workload.expect]
    noisy = [x.workload.name for x in clean if x.findings]
    lines.append(f"\n{len(results)} workloads, {len(clean)} clean; clean ones with a finding at warning or above: "
                 f"{len(noisy)}" + (f" ({', '.join(noisy)})" if noisy else ""))
    # last, where a truncated CI log still shows it: what each false finding said
    for x in results:
        for f in x.false_positives:
            lines.append(f"false in {x.workload.name}: {f.kind}/{f.severity} x{f.count}: {f.message}\n"
                         f"    {f.example[:240]}")
    return "\n".join(lines)


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.05)
