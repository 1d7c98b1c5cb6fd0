"""The real-application corpus (tests/realapps) through pgloupe, as issue 16 sets the bar.

Apps written with the libraries teams use (Django, SQLAlchemy sync and async, Drizzle on postgres.js
and on pg, TypeORM, Flask/Starlette/Express servers with connection pools under concurrent load, a
Django TestCase suite, pytest suites whose fixtures roll each test back), each workload labelled with what a reviewer would report. Every kind of
finding at warning or above must reach precision and recall 0.95, and no clean workload may get a
warning. Each app has its own database while pgloupe's upstream URL names ``postgres``: every
database clients use must be covered.

``python -m tests.realapps.run`` prints the same table; ``--explain NAME`` shows a workload's findings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .realapps.corpus import apps
from .realapps.harness import SCORED, report, set_up, with_database
from .realapps.python.django_app.corpus import SETTINGS, SUITE
from .realapps.python.suites import pytest_suite
from .realapps.run import DETECTORS, failing, run_through

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {1, 2, 3, 4, 5, 6, 7, 8, 9}  # issue 16's classes the corpus stands for (10: the gate test below)


def test_findings_on_real_application_traffic_are_right(pg, start_proxy):
    everything = apps()
    cannot = [f"{a.name}: {why}" for a in everything if (why := a.needs())]
    assert not cannot, cannot  # the repo's set-up installs every library the corpus uses
    proxy = start_proxy(sections={"detectors": DETECTORS})
    results = run_through(proxy.background, pg.dsn(), everything)
    table = report(results)
    assert not failing(results), table
    clean = [r for r in results if not r.workload.expect]
    assert not [r.workload.name for r in clean if r.findings], table
    web = [r for r in clean if 1 in r.workload.classes]
    assert len(web) >= 5 and not any(f.severity in SCORED for r in web for f in r.findings)
    assert CLASSES <= set().union(*(r.workload.classes for r in results))
    assert {a.database for a in everything}.isdisjoint({"postgres"})  # class 6: none is the upstream's


def _gate(pg, database: str, suite: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "proxy", "run", "--upstream", with_database(pg.dsn(), database),
               "--fail-on", "warning", "--", *suite]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**_base_env(), **env})


def _gate_django_suite(pg, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _gate(pg, "ra_django", [sys.executable, *SUITE], {**SETTINGS, **env})


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if not k.startswith("PGLOUPE_") and k not in ("DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE")} \
        | {"PYTHONPATH": str(ROOT)}


def test_pgloupe_run_passes_a_passing_test_suite_and_fails_it_with_an_n_plus_one(pg):
    """Class 2 and 10: a Django TestCase suite (a transaction per class, a savepoint per test) through the
    gate at --fail-on warning. Its tests create the same rows test after test: not an N+1. The catalog
    advice about the app's tables the suite never touches is reported, not judged. One test that reads
    each contact's owner lazily fails the run."""
    django = next(a for a in apps() if a.name == "django")
    set_up(django, pg.dsn())
    passing = _gate_django_suite(pg, {})
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "pgloupe: passed" in passing.stdout
    failing_run = _gate_django_suite(pg, {"RA_SUITE_N_PLUS_ONE": "1"})
    assert failing_run.returncode == 1, failing_run.stdout + failing_run.stderr
    assert "n_plus_one_select" in failing_run.stdout and "FAILED" in failing_run.stdout


def test_pgloupe_run_judges_a_suite_rolling_back_each_tests_transaction_test_by_test(pg):
    """Class 2 with pytest fixtures instead of Django's: each test's transaction rolled back (BEGIN ...
    ROLLBACK on one session-wide connection), the same rows created test after test. The suite passes
    the gate; with one test reading each contact's owner one query at a time, it fails it."""
    suites = next(a for a in apps() if a.name == "suites")
    set_up(suites, pg.dsn())
    argv = pytest_suite()
    passing = _gate(pg, suites.database, argv, {"RA_SUITE_STYLE": "psycopg"})
    assert passing.returncode == 0, passing.stdout + passing.stderr
    failing_run = _gate(pg, suites.database, argv, {"RA_SUITE_STYLE": "psycopg", "RA_SUITE_N_PLUS_ONE": "1"})
    assert failing_run.returncode == 1, failing_run.stdout + failing_run.stderr
    assert "n_plus_one_select" in failing_run.stdout and "FAILED" in failing_run.stdout
