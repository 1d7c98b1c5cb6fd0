"""The admin console: psql and psycopg against the virtual `pgloupe` database answered by pgloupe itself."""

from __future__ import annotations

import re
import subprocess
import time

import psycopg
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, load
from proxy.protocol import wire
from proxy.relay.client import CLIENT_TLS_PARAM
from proxy.service.admin import redact, startup_warnings

from .rawpg import raw_connect, recv_message


def _psql(proxy, command: str, user: str = "admin", password: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", **({"PGPASSWORD": password} if password else {})}
    return subprocess.run(["psql", "-X", "-A", "-F", "|", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", user,
                           "-d", "pgloupe", "-c", command], capture_output=True, text=True, timeout=30, env=env)


def _wait_findings(proxy, kind: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(f["kind"] == kind for f in proxy.app.all_findings()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {kind} finding")


def test_admin_console_with_psql_and_psycopg(start_proxy, pg):
    proxy = start_proxy(admin_users=["admin"], upstream=pg.dsn(password="not-shown-xyz"))
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name="billing") as conn:
        conn.execute("SELECT pg_sleep(0.12)")
        for i in range(3):
            conn.execute("SELECT %s::int + 1", (i,))
        _wait_findings(proxy, "slow_query")

        out = _psql(proxy, "SHOW FINDINGS")
        assert out.returncode == 0, out.stderr
        header, *rows = out.stdout.strip().splitlines()
        assert header.startswith("kind|severity|confidence|fingerprint|tables|count")
        assert any(r.startswith("slow_query|warning|") for r in rows)

        with psycopg.connect(host="127.0.0.1", port=proxy.port, user="admin", dbname="pgloupe",
                             autocommit=True) as admin:
            fingerprints = admin.execute("SHOW FINGERPRINTS").fetchall()
            by_query = {r[8]: r for r in fingerprints}
            plus_one = by_query["SELECT CAST(%s AS INT) + %s"]
            assert plus_one[1] == "select" and plus_one[2] == "3" and float(plus_one[3]) > 0
            clients = admin.execute("SHOW CLIENTS").fetchall()
            assert {c[3] for c in clients} >= {"billing"} and any(c[6] == "admin" for c in clients)
            config = dict(admin.execute("SHOW CONFIG").fetchall())
            assert config["admin_users"] == "['admin']" and "not-shown-xyz" not in str(config)
            assert "***" in config["upstream"] and config["detectors.slow_query_ms"] == "(100.0, 500.0, 1000.0)"
            with pytest.raises(psycopg.errors.SyntaxError, match="try SHOW HELP"):
                admin.execute("DROP DATABASE postgres")
            assert len(admin.execute("SHOW HELP").fetchall()) == 6  # the session survives an error
            admin.execute("RESET FINDINGS")
            assert not [f for f in admin.execute("SHOW FINDINGS").fetchall() if f[0] == "slow_query"]
        # the proxied session was never disturbed by the console
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_admin_console_access(start_proxy):
    proxy = start_proxy(admin_users=["admin"], admin_password="s3cret-admin", admin_allow_cleartext=True)
    out = _psql(proxy, "SHOW HELP", user="mallory")
    assert out.returncode != 0 and "not in admin_users" in out.stderr
    out = _psql(proxy, "SHOW HELP", password="wrong")
    assert out.returncode != 0 and "password authentication failed" in out.stderr
    out = _psql(proxy, "SHOW HELP", password="s3cret-admin")
    assert out.returncode == 0 and "SHOW FINDINGS" in out.stdout
    closed = start_proxy()  # no admin_users: the console is closed to everyone
    out = _psql(closed, "SHOW HELP", user="postgres")
    assert out.returncode != 0 and "not in admin_users" in out.stderr


# ------------------------------------------------------------------ the password, TLS and start-up warnings

PASSWORD = "adm1n-pw-c4e9"


@pytest.fixture
def proxy_cert(ca, tmp_path) -> tuple[str, str]:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return str(cert), str(key)


def _admin(proxy, sslmode: str, password: str = PASSWORD) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=proxy.port, user="admin", dbname="pgloupe", password=password,
                           sslmode=sslmode, autocommit=True, connect_timeout=10)


def _raw_admin_startup(port: int, **params) -> tuple[bytes, dict]:
    """The console's first answer to a plain startup packet: (message type, error fields or {})."""
    params = {"user": "admin", "database": "pgloupe", **params}
    body = wire.INT32.pack(196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    with raw_connect(port) as sock:
        sock.sendall(wire.INT32.pack(len(body) + 5) + body + b"\0")
        mtype, payload = recv_message(sock)
    return mtype, (wire.decode_fields(payload) if mtype == b"E" else {})


@pytest.mark.parametrize("workers", [0, 2])
def test_the_password_is_not_asked_in_cleartext_over_plain_tcp(start_proxy, workers):
    proxy = start_proxy(admin_users=["admin"], admin_password=PASSWORD, workers=workers)
    with pytest.raises(psycopg.OperationalError, match="in cleartext: connect with sslmode=require"):
        _admin(proxy, "disable")
    # refused before the password is asked (no AuthenticationCleartextPassword), whatever the client claims
    for params in ({}, {CLIENT_TLS_PARAM: "1"}):
        mtype, fields = _raw_admin_startup(proxy.port, **params)
        assert mtype == b"E" and fields["C"] == "28000" and fields["V"] == "FATAL", fields
        assert "admin_allow_cleartext" in fields["M"]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_password_over_tls(start_proxy, proxy_cert, workers):
    cert, key = proxy_cert
    proxy = start_proxy(admin_users=["admin"], admin_password=PASSWORD, tls_cert=cert, tls_key=key, workers=workers)
    with _admin(proxy, "require") as admin:
        assert admin.pgconn.ssl_in_use and len(admin.execute("SHOW HELP").fetchall()) == 6
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _admin(proxy, "require", password="wrong")
    with pytest.raises(psycopg.OperationalError, match="sslmode=require"):
        _admin(proxy, "disable")


def test_admin_allow_cleartext_asks_over_plain_tcp(start_proxy):
    proxy = start_proxy(admin_users=["admin"], admin_password=PASSWORD, admin_allow_cleartext=True)
    with _admin(proxy, "disable") as admin:
        assert not admin.pgconn.ssl_in_use and admin.execute("SHOW HELP").fetchall()
    assert _raw_admin_startup(proxy.port) == (b"R", {})


def test_show_config_redacts_every_credential(start_proxy, pg):
    alerts = {"webhooks": [{"url": "http://127.0.0.1:9/services/T000/B000/canary-slack-token", "format": "slack"},
                           "https://canary-user:canary-hook-pw@127.0.0.1:9/hook?token=canary-query-token"],
              "min_severity": "critical"}
    detectors = {"catalog_dsn": f"{pg.dsn()}?sslmode=disable&PassWord=canary-catalog-pw"}
    proxy = start_proxy(upstream=pg.dsn(password="canary-url-pw") + "?sslpassword=canary-ssl-pw",
                        admin_users=["postgres"], sections={"alerts": alerts, "detectors": detectors})
    with psycopg.connect(proxy.dsn(database="pgloupe"), autocommit=True) as admin:
        config = dict(admin.execute("SHOW CONFIG").fetchall())
    assert "canary" not in repr(config), config
    assert config["upstream"].startswith(f"postgresql://{pg.superuser}:***@") and "sslpassword=***" in config["upstream"]
    assert config["detectors.catalog_dsn"].endswith("?sslmode=disable&PassWord=***")
    assert config["alerts.webhooks"] == "http://127.0.0.1:9/… (slack), https://***@127.0.0.1:9/… (json)"
    assert config["alerts.min_severity"] == "critical"


@pytest.mark.parametrize("text, shown", [
    ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
    ("postgres://app:p%40ss%2Fw@[::1]:5432,db2/app", "postgres://app:***@[::1]:5432,db2/app"),
    ("postgresql://app:raw/p@ss?#w@db/app", "postgresql://app:***@db/app"),  # raw / @ ? # in the password
    ("postgresql://app@db/app?password=s3cret", "postgresql://app@db/app?password=***"),
    ("postgresql://db/app?sslmode=require&PASSWORD=s3cret&application_name=x",
     "postgresql://db/app?sslmode=require&PASSWORD=***&application_name=x"),
    ("postgresql://db/app?sslpassword=s3cret", "postgresql://db/app?sslpassword=***"),
    ("postgresql://db/app?pass%77ord=s%40cret", "postgresql://db/app?pass%77ord=***"),  # an encoded name
    ("postgresql://db/app?user=me@corp&password=s3cret", "postgresql://db/app?user=me@corp&password=***"),
    ("postgresql:///app?host=/run/postgresql&password=s3cret", "postgresql:///app?host=/run/postgresql&password=***"),
    ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://postgres@127.0.0.1:5432/postgres"),
    ("host=db password=s3cret dbname=app", "host=db password=*** dbname=app"),
    ("host=db password = 'with space \\' quote' user=app", "host=db password = *** user=app"),
    ("host=db sslpassword=s3cret", "host=db sslpassword=***"),
    ("dsn=postgresql://app:s3cret@db/app", "dsn=postgresql://app:***@db/app"),
    # a URL runs to the end of its line (SHOW CONFIG redacts a list's items one by one)
    ("['https://hooks.slack.com/services/T000/B000/s3cret', 'http://receiver:8080/']", "['https://hooks.slack.com/…"),
    ("http://receiver:8080/", "http://receiver:8080/"),
    ("http://receiver:8080', 'x'", "http://receiver:8080/…"),
    # raw quotes, spaces and angle brackets in a password (libpq takes them as they are)
    ("postgresql://u:se'cret@h/db", "postgresql://u:***@h/db"),
    ('postgresql://u:se"cret@h/db', "postgresql://u:***@h/db"),
    ("postgresql://u:a b@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:<a>@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:se'cret@h/db (primary)", "postgresql://u:***@h/db (primary)"),
    ("https://u:a b'c@example.com/hook", "https://***@example.com/…"),
    ("https://example.com/services/T/a@b c", "https://example.com/…"),  # an @ in the path: not a userinfo
    ("postgresql://h/db?password=a b&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
    ("postgresql://h/db?password=se'cret", "postgresql://h/db?password=***"),
    ("postgresql://h/db?user=me;password=x&a=b", "postgresql://h/db?user=me;password=***&a=b"),
    ("jdbc:postgresql://h/db;password=x", "jdbc:postgresql://h/db;password=***"),
    ("postgresql://h:5432/db?sslmode=require host=x password=y", "postgresql://h:5432/db?sslmode=require host=x password=***"),
    ("dsn=postgresql://u:a b@h/db", "dsn=postgresql://u:***@h/db"),
    ("postgresql://h/db, https://hooks/secret", "postgresql://h/db, …"),  # where the first ends is in doubt
    ("['postgresql://u:p1@h1/d', 'postgresql://v:p2@h2/d']", "['postgresql://u:***@h2/d']"),
    # keyword/value strings: quoted (escapes, a quote never closed), or raw up to a space
    ("host=db password='a b' user=x", "host=db password=*** user=x"),
    ("host=db password='it\\'s \\\\ q' user=x", "host=db password=*** user=x"),
    ("host=db password='never closed user=x", "host=db password=***"),
    ("host=db password=se'cret user=x", "host=db password=*** user=x"),
    ("host=db password=a\\ b user=x", "host=db password=*** user=x"),
    ('host=db password="a b" user=x', "host=db password=*** user=x"),
    ("https://user:s3cret@example.com/hook?token=s3cret", "https://***@example.com/…"),
    ("https://s3cret@example.com", "https://***@example.com"),
    ("(100.0, 500.0, 1000.0)", "(100.0, 500.0, 1000.0)"),
    ("127.0.0.1:9187", "127.0.0.1:9187"),
])
def test_redact(text, shown):
    assert redact(text) == shown


# A password's own letters are these (the forms below use none of them): none may be shown.
_MARKS = "QJVWXZ"
_PASSWORD = st.text(alphabet=_MARKS + "0123456789 '\"<>@:/?#&;=%\\!$,()[]{}*+-_.~`|^\t", min_size=1, max_size=24)


def _keyword_quoted(pw: str) -> str:
    return "'" + pw.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _keyword_raw(pw: str) -> str:
    escaped = re.sub(r"([\s\\])", r"\\\1", pw)
    return "\\" + escaped if escaped.startswith("'") else escaped  # (a leading quote would open a quoted value)


_FORMS = {
    "userinfo": lambda pw: f"postgresql://app:{pw}@db:5432/app",
    "userinfo, options": lambda pw: f"postgres://app:{pw}@[::1]:5432,db2/app?sslmode=require",
    "userinfo, prose after": lambda pw: f"upstream postgresql://app:{pw}@db/app (primary)",
    "inside a keyword value": lambda pw: f"dsn=postgresql://app:{pw}@db/app",
    "query": lambda pw: f"postgresql://db/app?sslmode=require&password={pw.replace('&', '%26')}&application_name=x",
    "keyword, quoted": lambda pw: f"host=db password = {_keyword_quoted(pw)} dbname=app",
    "keyword, raw": lambda pw: f"host=db password={_keyword_raw(pw)} dbname=app",
    "webhook userinfo": lambda pw: f"https://hook:{re.sub('[/?#]', '_', pw)}@hooks.example.com/services",
    "webhook path": lambda pw: f"https://hooks.example.com/services/{pw}",
}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(_FORMS)), _PASSWORD)
def test_redact_hides_every_password_in_every_form(form, password):
    shown = redact(_FORMS[form](password))
    assert not set(_MARKS) & set(shown), (form, password, shown)


def _settings(**values):
    return load(None, env={}, **values)


def test_startup_warnings():
    assert startup_warnings(_settings()) == []  # the console is closed
    assert startup_warnings(_settings(listen="0.0.0.0:6432")) == []
    warned = dict(startup_warnings(_settings(admin_users=["admin", "ops"])))
    assert list(warned) == ["admin_without_password"]
    assert warned["admin_without_password"]["admin_users"] == "admin,ops"
    assert "anyone who can connect" in warned["admin_without_password"]["hint"]
    warned = dict(startup_warnings(_settings(admin_users=["admin"], admin_password="pw-not-logged-5a1",
                                             listen="0.0.0.0:6432", admin_allow_cleartext=True)))
    assert list(warned) == ["admin_without_tls", "admin_cleartext_allowed"]
    assert warned["admin_without_tls"]["listen"] == "0.0.0.0:6432"
    assert "pw-not-logged-5a1" not in repr(warned)
    assert startup_warnings(_settings(admin_users=["admin"], admin_password="pw", listen="[::1]:6432")) == []


def test_startup_warnings_are_logged(start_proxy):
    with structlog.testing.capture_logs() as logs:
        start_proxy(admin_users=["admin"])
    warned = [e for e in logs if e["event"] == "admin_without_password"]
    assert warned and warned[0]["log_level"] == "warning" and warned[0]["admin_users"] == "admin"


def test_new_settings_from_the_environment():
    settings = load(None, env={"PGLOUPE_HTTP_HOSTS": "pgloupe.staging, metrics.internal",
                               "PGLOUPE_ADMIN_ALLOW_CLEARTEXT": "true"})
    assert settings.http_hosts == ["pgloupe.staging", "metrics.internal"] and settings.admin_allow_cleartext is True
    for bad in (["pgloupe.staging:9187"], ["http://pgloupe"], [""], ["a b"]):
        with pytest.raises(ConfigError, match="http_hosts"):
            load(None, env={}, http_hosts=bad)
