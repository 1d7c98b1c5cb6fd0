"""Settings of the corpus's Django CRM: the database comes from DATABASE_URL, application_name from PGAPPNAME.

DJANGO_CONN_MAX_AGE sets persistent connections (the web-server workloads run with 60); scripts use 0.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit


def database_from_url(url: str) -> dict:
    """DATABASES["default"] from a postgresql:// URL (query parameters become connection options)."""
    parts = urlsplit(url)
    options: dict[str, str] = dict(parse_qsl(parts.query))
    if os.environ.get("PGAPPNAME"):
        options["application_name"] = os.environ["PGAPPNAME"]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
        # the test runner creates (and drops) this one, through whatever DATABASE_URL points at
        "TEST": {"NAME": "test_ra_django"},
    }


DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}

SECRET_KEY = "realapps-django-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["tests.realapps.python.django_app"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.realapps.python.django_app.urls"
WSGI_APPLICATION = "tests.realapps.python.django_app.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
