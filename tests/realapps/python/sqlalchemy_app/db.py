"""Engines from ``DATABASE_URL``, the way the app's settings module builds them.

Sync engines use psycopg 3 (``postgresql+psycopg://``): libpq reads ``application_name`` from the URL
and PGAPPNAME. Async engines use asyncpg (``postgresql+asyncpg://``), which reads neither: the name is
passed as a server setting.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_engines: dict[str, Engine] = {}


def _split(url: str) -> tuple[str, str | None]:
    """(the URL without its scheme and application_name, the application name)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    name = query.pop("application_name", None) or os.environ.get("PGAPPNAME")
    return urlunsplit(parts._replace(scheme="", query=urlencode(query))), name


def engine(isolation_level: str | None = None) -> Engine:
    """The process's engine for that isolation level (the driver's default when None)."""
    key = isolation_level or ""
    if key not in _engines:
        rest, name = _split(os.environ["DATABASE_URL"])
        options = {"isolation_level": isolation_level} if isolation_level else {}
        _engines[key] = create_engine("postgresql+psycopg:" + rest,
                                      connect_args={"application_name": name} if name else {}, **options)
    return _engines[key]


def dispose() -> None:
    while _engines:
        _engines.popitem()[1].dispose()


def async_engine(**kwargs) -> AsyncEngine:
    rest, name = _split(os.environ["DATABASE_URL"])
    connect_args = {"server_settings": {"application_name": name}} if name else {}
    return create_async_engine("postgresql+asyncpg:" + rest, connect_args=connect_args, **kwargs)


def token_for(user_id: int) -> str:
    """The seeded session token of a user: what the browser's cookie carries."""
    return hashlib.sha256(f"session-{user_id}".encode()).hexdigest()[:40]
