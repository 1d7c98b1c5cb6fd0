"""Settings: defaults, then a TOML file, then PGLOUPE_* environment variables, then command-line flags."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class Upstream:
    host: str
    port: int
    user: str | None
    database: str | None
    sslmode: str
    sslrootcert: str | None

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    def describe(self) -> str:
        """Where, without credentials, for messages and logs."""
        return f"{self.host}:{self.port}"


def parse_upstream(url: str, sslmode: str | None = None, sslrootcert: str | None = None) -> Upstream:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"upstream must be a postgresql:// URL, got scheme {parts.scheme!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = unquote(parts.hostname or query.get("host") or "127.0.0.1")
    if "host" in query:
        host = query["host"]
    try:
        port = int(query.get("port") or parts.port or 5432)
    except ValueError as exc:
        raise ConfigError(f"invalid upstream port in {url!r}") from exc
    mode = sslmode or query.get("sslmode") or "prefer"
    if mode not in SSLMODES:
        raise ConfigError(f"upstream sslmode must be one of {', '.join(SSLMODES)}, got {mode!r}")
    db = unquote(parts.path.lstrip("/")) or None
    return Upstream(host, port, unquote(parts.username) if parts.username else None, db, mode,
                    sslrootcert or query.get("sslrootcert"))


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(slots=True)
class Settings:
    listen: str = "127.0.0.1:6432"
    upstream: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    http: str | None = "127.0.0.1:9187"
    # asked of every HTTP request but /healthz and the page itself (Authorization: Bearer ...); set it
    # whenever http listens beyond loopback: findings hold SQL text and table names
    http_token: str | None = None
    # Host names the HTTP server answers to besides IP addresses, localhost and its own listen host: any
    # other Host is refused (421) unless the request carries http_token, so a page whose name was
    # re-pointed at this address (DNS rebinding) reads nothing
    http_hosts: list = field(default_factory=list)
    upstream_sslmode: str | None = None  # overrides ?sslmode= in the URL; default prefer, as libpq
    upstream_sslrootcert: str | None = None
    tls_cert: str | None = None  # client-side TLS: the certificate pgloupe presents
    tls_key: str | None = None
    tls_required: bool = False  # refuse clients that do not negotiate TLS
    connect_timeout: float = 10.0
    startup_timeout: float = 60.0
    shutdown_timeout: float = 30.0  # SIGTERM: seconds running statements get to finish before sessions are cut
    queue_size: int = 10000
    result_rows: int = 16  # result rows per statement whose cells are hashed (N+1 parent detection)
    max_message_size: int = 1 << 30
    # one message kept whole for analysis; a longer one is relayed and analysed as "too large"
    max_analysed_message_size: int = 16 << 20
    hash_key: str | None = None  # keep hashes comparable across restarts/workers; random if unset
    log_format: str = "console"
    log_level: str = "info"
    admin_database: str = "pgloupe"  # the virtual database pgloupe answers itself (PgBouncer's convention)
    admin_users: list = field(default_factory=list)  # who may open it; empty: nobody
    admin_password: str | None = None  # asked of admin users when set, over client TLS only
    # ask admin_password over non-TLS connections too (loopback use: it then crosses the wire in cleartext)
    admin_allow_cleartext: bool = False
    max_client_connections: int = 2000  # sessions relayed at once, all workers together; 0: no limit
    max_connections_per_ip: int = 0  # sessions from one client address; 0: no limit
    # Forwarding processes (SO_REUSEPORT on the listen port) feeding the one analysis process, by default
    # one per CPU ("auto"); 0 forwards and analyses in a single process (tests, demo, pgloupe run).
    workers: int = field(default_factory=lambda: auto_workers())
    # false: relay only, no statement events (measures pgloupe's own cost; keeps it in place, idle)
    analyse: bool = True
    # With workers, the analysis thread's CPU priority: "low" (nice 19), "idle" (SCHED_IDLE: only what the
    # traffic leaves) or "normal". Below normal the traffic comes first on a busy machine and analysis
    # falls behind (past its backlog, drops, counted) instead of slowing the application.
    analysis_priority: str = "low"
    # What the analysis keeps (caches, statistics, findings, open units of work, prepared statements),
    # bounded in bytes as a whole; see detectors.sizing.MEMORY_SHARES for how it is shared.
    analysis_memory_mb: int = 256
    # The findings store (docs/configuration.md#the-findings-store): a postgresql:// URL shared by every
    # replica, a SQLite file, or "memory"; unset: findings.sqlite3 in state_dir, or memory without one
    store: str | None = None
    state_dir: str | None = None  # serve, demo and run default to $XDG_STATE_HOME/pgloupe
    store_schema: str = "pgloupe"  # PostgreSQL: the store's own schema, never the application's
    store_flush_s: float = 2.0  # batches go out this often: what a kill -9 can lose
    store_retention_days: float = 30.0  # findings not seen for this long, and older counts, are deleted
    store_max_findings: int = 10000  # beyond this, the least recently seen findings go
    store_replica: str | None = None  # this replica's name in the per-replica counts; default host:pid
    fixed_after_s: float = 86400.0  # a finding seen regularly, then quiet this long, is fixed
    fixed_min_count: int = 2  # occurrences that make "seen regularly"
    extra: dict = field(default_factory=dict)  # the other sections (detectors, alerts ...)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_address(self.listen, "listen")

    @property
    def http_address(self) -> tuple[str, int] | None:
        return parse_address(self.http, "http") if self.http else None

    @property
    def upstream_target(self) -> Upstream:
        return parse_upstream(self.upstream, self.upstream_sslmode, self.upstream_sslrootcert)

    def validate(self) -> Settings:
        parse_address(self.listen, "listen")
        if self.http:
            parse_address(self.http, "http")
        parse_upstream(self.upstream, self.upstream_sslmode, self.upstream_sslrootcert)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.tls_required and not self.tls_cert:
            raise ConfigError("tls_required needs tls_cert and tls_key")
        if self.log_format not in ("console", "json"):
            raise ConfigError("log_format must be console or json")
        if self.max_client_connections < 0 or self.max_connections_per_ip < 0:
            raise ConfigError("max_client_connections and max_connections_per_ip must be >= 0 (0: no limit)")
        if not 0 <= self.workers <= 64:
            raise ConfigError("workers must be between 0 and 64")
        if self.analysis_priority not in ("idle", "low", "normal"):
            raise ConfigError("analysis_priority must be idle, low or normal")
        if not 16 <= self.analysis_memory_mb <= 1 << 20:
            raise ConfigError("analysis_memory_mb must be at least 16")
        if self.queue_size < 1 or self.result_rows < 0 or self.max_message_size < 1024:
            raise ConfigError("queue_size >= 1, result_rows >= 0 and max_message_size >= 1024 are required")
        for name in self.http_hosts:
            if not _HOST_NAME.fullmatch(name):
                raise ConfigError(f"http_hosts must be host names without a port, got {name!r}")
        if not isinstance(self.admin_allow_cleartext, bool):
            raise ConfigError("admin_allow_cleartext must be true or false")
        if not 1024 <= self.max_analysed_message_size <= self.max_message_size:
            raise ConfigError("max_analysed_message_size must be between 1024 and max_message_size")
        if self.store and "://" in self.store and not self.store.startswith(("postgresql://", "postgres://")):
            raise ConfigError("store must be a postgresql:// URL, a SQLite file path or memory")
        if self.store and "://" in self.store:
            try:  # the message never quotes the URL: it may hold the store's password
                urlsplit(self.store).port  # noqa: B018 - raises on a port that is not a number in range
            except ValueError:
                raise ConfigError("store: the postgresql:// URL's port is not a number (one host:port only)") from None
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.store_schema or ""):
            raise ConfigError(f"store_schema must be a lower-case SQL name, got {self.store_schema!r}")
        if not 0.05 <= self.store_flush_s <= 3600 or self.store_retention_days <= 0 or self.fixed_after_s <= 0:
            raise ConfigError("store_flush_s must be 0.05-3600 s; store_retention_days and fixed_after_s above 0")
        if self.store_max_findings < 1 or self.fixed_min_count < 1:
            raise ConfigError("store_max_findings and fixed_min_count must be at least 1")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}


MAX_AUTO_WORKERS = 8


def auto_workers() -> int:
    """One forwarding process per CPU this process may run on, at most MAX_AUTO_WORKERS: each relays its
    share of the connections on a core of its own, while one loop for all of them queues every round
    trip behind the others (on 2 cores, 1.2-1.3x the TPS of one worker at 8 clients). A container's CPU
    limit (its cgroup quota) counts, not the node's cores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, min(MAX_AUTO_WORKERS, cpus))


def cgroup_cpus(root: str = "/sys/fs/cgroup") -> int | None:
    """CPUs the cgroup's quota allows, rounded up (cgroup v2 ``cpu.max``, else v1's CFS quota); None when
    unlimited or unreadable."""
    try:
        with open(os.path.join(root, "cpu.max")) as fh:
            quota, period = fh.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as fh:
                quota = fh.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as fh:
                period = fh.read().strip()
        except OSError:
            return None
    try:
        q, per = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return -(-q // per) if q > 0 and per > 0 else None


def parse_workers(value) -> int:
    """A worker count, or "auto" for ``auto_workers()``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_workers()
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"workers must be a number or auto, got {value!r}") from exc


def _coerce(name: str, value):
    if name == "workers":
        return parse_workers(value)
    kind = _FIELDS[name].type
    if kind == "list":
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of names")
        return value
    if value is None or not isinstance(value, str):
        return value
    if "bool" in kind:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be a boolean, got {value!r}")
    try:
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    return value


def load(config_file: str | None = None, env: dict[str, str] | None = None, sections: dict | None = None,
         defaults: dict | None = None, **overrides) -> Settings:
    """``sections`` are TOML tables given in code ({"detectors": {...}}), merged over the file's;
    ``defaults`` replace Settings' own defaults (the file, the environment and ``overrides`` win)."""
    env = os.environ if env is None else env
    values: dict = dict(defaults or {})
    extra: dict = {}
    path = config_file or env.get("PGLOUPE_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
        for key, value in data.items():
            if key in _FIELDS:
                values[key] = value
            elif isinstance(value, dict):
                extra[key] = value
            else:
                raise ConfigError(f"unknown setting {key!r} in {path}")
    for name in _FIELDS:
        env_value = env.get("PGLOUPE_" + name.upper())
        if env_value is not None:
            values[name] = env_value
    for name, table in (sections or {}).items():
        extra[name] = {**extra.get(name, {}), **table}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = Settings(**{k: _coerce(k, v) for k, v in values.items()}, extra=extra)
    return settings.validate()


# The session trackers' share of analysis_memory_mb for prepared statements' texts: the value of
# detectors.sizing.MEMORY_SHARES["prepared_statements"] (the relay does not import the detectors;
# tests/test_layout.py holds the two equal).
PREPARED_SHARE = 0.10


def prepared_budget(settings) -> int:
    """Bytes the session trackers of one process may keep of prepared statements' texts."""
    return int(getattr(settings, "analysis_memory_mb", 256) * PREPARED_SHARE * (1 << 20))
