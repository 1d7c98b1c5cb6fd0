"""The admin console: a virtual database (``pgloupe`` by default) that pgloupe answers itself.

As with PgBouncer's console, ``psql -h PROXY -p PORT -U ADMIN pgloupe`` opens a session whose
simple-protocol commands read pgloupe's state: SHOW FINDINGS, SHOW FINGERPRINTS, SHOW CLIENTS,
SHOW CONFIG, SHOW HELP and RESET FINDINGS. Only users listed in ``admin_users`` get in, with
``admin_password`` when one is set, which is only asked over client TLS (the protocol sends it in
cleartext) unless ``admin_allow_cleartext`` says otherwise. The message framing here is sans-IO;
answering a command may need the analysis thread, so it is async.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import re
import time
from urllib.parse import unquote

from proxy.protocol import wire
from proxy.protocol.framing import Framer

TEXT_OID = 25
_ALL_FRAMES = bytearray([1] * 256)
_SECRET_KEYS = frozenset({"hash_key", "admin_password", "http_token"})


def row_description(columns: list[str]) -> bytes:
    body = wire.INT16.pack(len(columns))
    for name in columns:
        body += name.encode() + b"\0" + wire.UINT32.pack(0) + wire.INT16.pack(0) + wire.UINT32.pack(TEXT_OID)
        body += wire.INT16.pack(-1) + wire.INT32.pack(-1) + wire.INT16.pack(0)
    return wire.message(b"T", body)


def data_row(values: list) -> bytes:
    body = wire.INT16.pack(len(values))
    for v in values:
        if v is None:
            body += wire.INT32.pack(-1)
        else:
            raw = str(v).encode("utf-8", "replace")
            body += wire.INT32.pack(len(raw)) + raw
    return wire.message(b"D", body)


def result(columns: list[str], rows: list[list], tag: str) -> bytes:
    return row_description(columns) + b"".join(data_row(r) for r in rows) + wire.message(b"C", tag.encode() + b"\0")


def ready(status: str = "I") -> bytes:
    return wire.message(b"Z", status.encode())


def error(message: str, code: str = "42601", severity: str = "ERROR") -> bytes:
    return wire.error_response(message, code, severity)


def startup_reply() -> bytes:
    params = {"server_version": "15.0 (pgloupe admin console)", "server_encoding": "UTF8",
              "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "integer_datetimes": "on",
              "standard_conforming_strings": "on", "application_name": ""}
    out = wire.message(b"R", wire.INT32.pack(0))
    out += b"".join(wire.message(b"S", k.encode() + b"\0" + v.encode() + b"\0") for k, v in params.items())
    out += wire.message(b"K", os.urandom(8))
    return out + ready()


# Parameter names whose values are secrets, in URL queries and keyword/value connection strings.
_SECRET_NAME = re.compile(r"[\w.-]*(?:pass(?:word|wd)?|pwd|secret|token|key)|sig(?:nature)?", re.I)
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
# A keyword/value pair: its value quoted (backslash escapes; a quote never closed runs to the end; what
# sticks to the closing quote goes too), a URL (to the end of the line: its password may hold spaces), or
# up to a space (quotes inside it are its own, as libpq reads them).
_RAW = r"(?:[^\s\\]|\\[\s\S]?)"
_PAIR = (r"(?P<key>[\w.-]+)(?P<eq>\s*=\s*)"
         rf"(?P<value>(?:'(?:[^'\\]|\\[\s\S])*'?|\"(?:[^\"\\]|\\[\s\S])*\"?){_RAW}*|{_SCHEME}[^\n]*|{_RAW}+)")
_CREDENTIALS = re.compile(
    # A URL, to the end of its line: libpq takes a raw ' " < > space ? # / or @ in a password as part of
    # it, so the userinfo runs to the line's last @ (a stray @ further on only hides more than needed).
    rf"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<userinfo>[^\n]*)@)?(?P<rest>[^\n]*)"
    rf"|(?<![\w.-]){_PAIR}")
_SPACED_PAIR = re.compile(rf"(?<!\S){_PAIR}")  # a keyword/value pair after a URL, on its line
# A URL query's parameter: its value runs to the next & (libpq's only separator), raw spaces and quotes
# included; ; separates JDBC-style ones.
_QUERY_ITEM = re.compile(r"(?<=[?&;])([^&;=]*)=([^&]*)")


def _secret(name: str) -> bool:
    return _SECRET_NAME.fullmatch(unquote(name)) is not None


def _pair(m: re.Match) -> str:
    return m["key"] + m["eq"] + ("***" if _secret(m["key"]) else redact(m["value"]))


def _query_item(m: re.Match) -> str:
    if _secret(m[1]):
        return f"{m[1]}=***"
    return f"{m[1]}=" + _QUERY_ITEM.sub(_query_item, m[2])  # (a=1;password=... in one value)


def _redact_url(scheme: str, userinfo: str | None, rest: str) -> str:
    if scheme.lower() in ("postgresql", "postgres"):  # the user, host, database and options help; secrets go
        # another URL further on the line: where this one's last value ends is in doubt, so the rest goes
        nested = re.search(_SCHEME, rest)
        url = rest[:nested.start()] if nested else rest
        if userinfo is not None:
            user, colon, _ = userinfo.partition(":")
            url = user + (":***" if colon else "") + "@" + url
        url = _SPACED_PAIR.sub(_pair, _QUERY_ITEM.sub(_query_item, url))
        return f"{scheme}://{url}" + ("…" if nested else "")
    # webhooks and the like: the path or query is often the secret (Slack's is), the host is enough. Their
    # userinfo ends at the authority's last @ (an HTTP client's / ? or # ends the authority).
    url = rest if userinfo is None else f"{userinfo}@{rest}"
    end = re.search(r"[/?#]", url)
    authority, tail = (url[:end.start()], url[end.start():]) if end else (url, "")
    _, at, host = authority.rpartition("@")
    cut = re.search(r"[\s'\"<>]", host)  # no host holds these: the rest of the line follows
    if cut:
        host, tail = host[:cut.start()], host[cut.start():] + tail
    return f"{scheme}://" + ("***@" if at else "") + host + ("/…" if tail.strip("/'\"]),> \t") else tail)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``***``: URL passwords (percent-encoded or not,
    with any character libpq accepts), secret query parameters (``password``, ``sslpassword``,
    ``token``..., any case, encoded names too), ``password=...`` in keyword/value connection strings
    (quoted or not), and the path and query of non-PostgreSQL URLs. Where a credential's end is in
    doubt, more is hidden."""
    def one(m: re.Match) -> str:
        if m["scheme"]:
            return _redact_url(m["scheme"], m["userinfo"], m["rest"])
        return _pair(m)

    return _CREDENTIALS.sub(one, text)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def startup_warnings(settings) -> list[tuple[str, dict]]:
    """(event, fields) for the App to log at start: ways the console is open to more people, or over
    more of the network, than its settings suggest. Names and addresses only, never a secret."""
    if not settings.admin_users:
        return []  # the console is closed
    warnings = []
    if not settings.admin_password:
        warnings.append(("admin_without_password", {
            "admin_users": ",".join(settings.admin_users),
            "hint": "anyone who can connect to the proxy port as one of these users is admin: set admin_password"}))
    if not settings.tls_cert and not _loopback(settings.listen_address[0]):
        warnings.append(("admin_without_tls", {
            "listen": settings.listen,
            "hint": "the admin console is reachable beyond loopback without client TLS: set tls_cert and tls_key"}))
    if settings.admin_password and settings.admin_allow_cleartext:
        warnings.append(("admin_cleartext_allowed", {
            "hint": "admin_password is accepted over non-TLS connections, where it crosses the network in "
                    "cleartext: keep admin_allow_cleartext for loopback use"}))
    return warnings


class AdminConsole:
    """Answers console commands from the running App's state."""

    COMMANDS = {
        "show help": "this list",
        "show findings": "runtime and advisor findings, most severe first",
        "show fingerprints": "per statement shape: calls, total/mean/p95 time, rows (like pg_stat_statements)",
        "show clients": "client sessions through the proxy",
        "show config": "settings in force (secrets redacted)",
        "reset findings": "forget the findings seen so far",
    }

    def session(self, write, close, log, max_message: int) -> AdminSession:
        """A console session for a client the relay handed over (its transport's write and close)."""
        return AdminSession(self, write, close, log, max_message)

    def __init__(self, app):
        self.app = app

    async def execute(self, sql: str) -> bytes:
        command = " ".join(sql.strip().rstrip(";").split()).lower()
        if command == "show help":
            return result(["command", "shows"], [[c.upper(), h] for c, h in self.COMMANDS.items()], "SHOW")
        if command == "show findings":
            return await self._findings()
        if command == "show fingerprints":
            return await self._fingerprints()
        if command == "show clients":
            return await self._clients()
        if command == "show config":
            return self._config()
        if command == "reset findings":
            await self.app.reset_findings()
            return wire.message(b"C", b"RESET\0")
        if not command:
            return wire.message(b"I", b"")
        return error(f"pgloupe admin console: unknown command {sql.strip()[:80]!r}; try SHOW HELP")

    async def _findings(self) -> bytes:
        import asyncio

        items = await asyncio.to_thread(self.app.all_findings)
        columns = ["kind", "severity", "confidence", "fingerprint", "tables", "count", "statements", "total_ms",
                   "p95_ms", "applications", "last_seen", "message", "suggestion", "state", "first_seen"]
        rows = [[f["kind"], f["severity"], f["confidence"], f["fingerprint"], ",".join(f["tables"]), f["count"],
                 f["statements"], f"{f['total_ms']:.3f}", f"{f['p95_ms']:.3f}", ",".join(f["applications"]),
                 time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f["last_seen"])), f["message"], f["suggestion"],
                 f.get("state", "open"), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f["first_seen"]))]
                for f in items]
        return result(columns, rows, f"SHOW {len(rows)}")

    async def _fingerprints(self) -> bytes:
        shapes = await self.app.analysis.call(self.app.pipeline.observed_rows)
        columns = ["fingerprint", "type", "calls", "total_ms", "mean_ms", "p95_ms", "rows", "tables", "query"]
        rows = [[r["fingerprint"], r["type"], r["calls"], f"{r['total_ms']:.3f}", f"{r['mean_ms']:.3f}",
                 f"{r['p95_ms']:.3f}", r["rows"], ",".join(r["tables"]), r["query"]] for r in shapes]
        return result(columns, rows, f"SHOW {len(rows)}")

    async def _clients(self) -> bytes:
        await self.app.refresh_workers()
        columns = ["conn_id", "user", "database", "application_name", "client_addr", "tls", "state", "transaction",
                   "connected_at"]
        rows = []
        for c in sorted(self.app.client_rows(), key=lambda c: c["conn_id"]):
            rows.append([c["conn_id"], c["user"], c["database"], c["application_name"], c["client_addr"],
                         "on" if c["tls"] else "off", c["state"], c["transaction"],
                         time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["connected_at"]))])
        return result(columns, rows, f"SHOW {len(rows)}")

    def _config(self) -> bytes:
        def shown(value):
            if isinstance(value, frozenset | set):
                value = sorted(value)
            if isinstance(value, list | tuple):  # each item on its own: a URL's end is the item's
                return str(type(value)(redact(str(v)) if isinstance(v, str) else v for v in value))
            return None if value is None else redact(str(value))

        settings = self.app.settings
        rows = []
        for f in dataclasses.fields(settings):
            if f.name != "extra":
                value = getattr(settings, f.name)
                rows.append([f.name, "***" if f.name in _SECRET_KEYS and value else shown(value)])
        for name, value in sorted(dataclasses.asdict(self.app.detector_config).items()):
            if name != "extra":
                rows.append([f"detectors.{name}", shown(value)])
        alerts = self.app.alert_config
        for f in dataclasses.fields(alerts):
            value = getattr(alerts, f.name)
            if f.name == "webhooks":  # each URL redacted on its own
                rows.append([f"alerts.{f.name}", ", ".join(f"{redact(w.url)} ({w.format})" for w in value)])
                continue
            rows.append([f"alerts.{f.name}", shown(value)])
        return result(["key", "value"], rows, f"SHOW {len(rows)}")


class AdminSession:
    """One console session: frames client bytes and answers each Query in order."""

    def __init__(self, console: AdminConsole, write, close, log, max_message: int):
        self.console = console
        self.write = write
        self.close = close
        self.log = log
        self.framer = Framer(_ALL_FRAMES, max_message)
        self.awaiting_password: str | None = None  # the expected password while authenticating

    def start(self, user: str, settings, tls: bool = False) -> None:
        """``tls``: whether the client's own connection is TLS (for a session a worker relays, what the
        worker said in CLIENT_TLS_PARAM)."""
        if user not in settings.admin_users:
            self.write(error(f"pgloupe admin console: user {user!r} is not in admin_users", "28000", "FATAL"))
            self.close()
            return
        if settings.admin_password and not tls and not settings.admin_allow_cleartext:
            self.write(error("pgloupe admin console: admin_password is not asked over a connection without TLS, "
                             "where it would cross the network in cleartext: connect with sslmode=require, or set "
                             "admin_allow_cleartext for loopback use", "28000", "FATAL"))
            self.close()
            return
        if settings.admin_password:
            self.awaiting_password = settings.admin_password
            self.write(wire.message(b"R", wire.INT32.pack(3)))  # AuthenticationCleartextPassword
            return
        self.write(startup_reply())

    def feed(self, data: bytes) -> list:
        """Returns the coroutines the caller must run (in order) to answer queries."""
        jobs = []
        try:
            for mtype, body, _length in self.framer.feed(data):
                jobs += self._frame(mtype, body or b"")
        except wire.ProtocolError as exc:
            self.write(error(f"pgloupe admin console: {exc}", "08P01", "FATAL"))
            self.close()
        return jobs

    def _frame(self, mtype: int, body: bytes) -> list:
        if self.awaiting_password is not None:
            if mtype != 0x70:  # p PasswordMessage
                self.write(error("pgloupe admin console: expected a password", "08P01", "FATAL"))
                self.close()
                return []
            given = body.rstrip(b"\0")
            expected, self.awaiting_password = self.awaiting_password.encode(), None
            if not hmac.compare_digest(given, expected):
                self.write(error("pgloupe admin console: password authentication failed", "28P01", "FATAL"))
                self.close()
                return []
            self.write(startup_reply())
            return []
        if mtype == 0x51:  # Q
            return [self._answer(wire.decode_query(body))]
        if mtype == 0x58:  # X
            self.close()
            return []
        if mtype == 0x53:  # S Sync after unsupported extended-protocol messages
            self.write(ready())
            return []
        if mtype in (0x50, 0x42, 0x44, 0x45, 0x43, 0x48):
            if mtype == 0x50:
                self.write(error("pgloupe admin console: only the simple query protocol is supported", "0A000"))
            return []
        self.write(error(f"pgloupe admin console: unexpected message {chr(mtype)!r}", "08P01"))
        return []

    async def _answer(self, sql: str) -> None:
        try:
            response = await self.console.execute(sql)
        except Exception as exc:  # report, keep the session
            self.log.warning("admin_command_failed", error=type(exc).__name__)
            response = error(f"pgloupe admin console: {type(exc).__name__}", "XX000")
        self.write(response + ready())
