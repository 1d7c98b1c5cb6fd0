"""Every app of the real-application corpus, in the order they run (see harness.py)."""

from __future__ import annotations

import importlib

from .harness import App

# each module defines APPS: list[App]
MODULES = (
    "tests.realapps.python.django_app.corpus",
    "tests.realapps.python.sqlalchemy_app",
    "tests.realapps.python.webapps",
    "tests.realapps.python.timing",
    "tests.realapps.python.sessions",
    "tests.realapps.python.suites",
    "tests.realapps.node_apps",
)


def apps() -> list[App]:
    out: list[App] = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that app is not written yet
            raise
        out.extend(module.APPS)
    return out
