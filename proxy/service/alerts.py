"""Alert webhooks: findings that matter POSTed to HTTP endpoints (generic JSON or Slack-compatible).

The analysis thread calls ``notify``; delivery runs as one task on the proxy's event loop with a
small asyncio HTTP/1.1 client, every attempt bounded by ``timeout_s``, so a slow or dead receiver
costs neither the forwarding path nor the analysis thread anything but a dropped, counted alert.
Webhook URLs carry secrets (a Slack URL is its own token): logs name only scheme, host and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from detectors.config import KINDS
from detectors.rules import SEVERITIES

FORMATS = ("json", "slack")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_KEYS = ("webhooks", "min_severity", "kinds", "cooldown_s", "timeout_s", "retries", "queue_size")
MAX_COOLDOWN_KEYS = 10000  # (kind, fingerprint) pairs remembered for de-duplication
MAX_TEXT = 2900  # Slack refuses section texts over 3000 characters


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    format: str = "json"

    @property
    def target(self) -> tuple[str, int, bool, str, str]:
        """(host, port, tls, request path, Host header), from a URL already validated."""
        parts = urlsplit(self.url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.hostname, port, tls, path, parts.netloc.rpartition("@")[2]

    def describe(self) -> str:
        """Where, for logs: the path and query of a webhook URL are often its secret."""
        host, port, tls, _, _ = self.target
        return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    webhooks: tuple[Webhook, ...] = ()
    min_severity: str = "error"
    kinds: frozenset[str] = frozenset()  # empty: every kind
    cooldown_s: float = 600.0
    timeout_s: float = 5.0
    retries: int = 3
    queue_size: int = 1000

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks)

    @classmethod
    def from_mapping(cls, data: dict | None) -> AlertConfig:
        """The ``[alerts]`` TOML table; ValueError naming the bad key (never echoing a URL's secret)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("[alerts] must be a table")
        unknown = set(data) - set(_KEYS)
        if unknown:
            raise ValueError(f"unknown alerts keys: {', '.join(sorted(unknown))} (known: {', '.join(_KEYS)})")
        hooks = data.get("webhooks", [])
        if not isinstance(hooks, list):
            raise ValueError("webhooks must be a list of URLs or {url, format} tables")
        webhooks = tuple(_webhook(i, h) for i, h in enumerate(hooks))
        severity = data.get("min_severity", "error")
        if severity not in SEVERITIES:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        kinds = data.get("kinds", [])
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise ValueError("kinds must be a list of finding kinds")
        bad = set(kinds) - set(KINDS)
        if bad:
            raise ValueError(f"unknown finding kinds: {', '.join(sorted(bad))}")
        return cls(webhooks, severity, frozenset(kinds),
                   _number(data, "cooldown_s", 600.0, minimum=0.0),
                   _number(data, "timeout_s", 5.0, minimum=0.0, strict=True),
                   int(_number(data, "retries", 3, minimum=0, integer=True)),
                   int(_number(data, "queue_size", 1000, minimum=1, integer=True)))


def _webhook(i: int, entry) -> Webhook:
    if isinstance(entry, str):
        entry = {"url": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"webhooks[{i}] must be a URL or a {{url, format}} table")
    unknown = set(entry) - {"url", "format"}
    if unknown:
        raise ValueError(f"webhooks[{i}]: unknown keys {', '.join(sorted(unknown))} (known: url, format)")
    url, fmt = entry.get("url"), entry.get("format", "json")
    if not isinstance(url, str) or not url:
        raise ValueError(f"webhooks[{i}] needs a url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"webhooks[{i}]: url must start with http:// or https://, got scheme {parts.scheme!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"webhooks[{i}]: invalid port in url") from None
    if not parts.hostname:
        raise ValueError(f"webhooks[{i}]: url has no host")
    if fmt not in FORMATS:
        raise ValueError(f"webhooks[{i}]: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return Webhook(url, fmt)


def _number(data: dict, key: str, default, minimum, strict: bool = False, integer: bool = False):
    value = data.get(key, default)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{key} must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{key} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


def summary(finding: dict) -> str:
    """One line for chat and for the ``text`` of the generic body."""
    tables = ", ".join(finding.get("tables") or ()) or "-"
    message = " ".join(str(finding.get("message") or "").split())
    back = "REGRESSED (fixed, now seen again) " if finding.get("regressed") else ""
    line = f"[pgloupe] {back}{str(finding.get('severity', '')).upper()} {finding.get('kind')} on {tables}: {message}"
    return line[:500]


def json_body(finding: dict) -> dict:
    return {"source": "pgloupe", "finding": finding, "text": summary(finding)}


def slack_body(finding: dict) -> dict:
    """Slack incoming-webhook shape (Mattermost and Rocket.Chat accept it too)."""
    tables = ", ".join(f"`{_mrkdwn(t)}`" for t in finding.get("tables") or ()) or "-"
    head = (f"*{str(finding.get('severity', '')).upper()}* · *{_mrkdwn(str(finding.get('kind')))}* on {tables}\n"
            f"{_mrkdwn(str(finding.get('message') or ''))}")
    fields = [
        {"type": "mrkdwn", "text": f"*Occurrences*\n{finding.get('count', 0)} ({float(finding.get('total_ms') or 0):.0f} ms)"},
        {"type": "mrkdwn", "text": f"*Fingerprint*\n`{_mrkdwn(str(finding.get('fingerprint', '')))}`"},
    ]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": head[:MAX_TEXT]}, "fields": fields}]
    suggestion = str(finding.get("suggestion") or "").replace("```", "'''")
    if suggestion:
        code = _mrkdwn(suggestion)[:MAX_TEXT - 30]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Suggestion*\n```{code}```"}})
    return {"text": summary(finding), "blocks": blocks}


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class PermanentFailure(Exception):
    """The receiver refused the alert itself (4xx other than 429): sending it again cannot help."""


class AlertSender:
    """Filters, de-duplicates and delivers alerts; counters for /metrics.

    Counters: ``sent``/``failed``/``retried`` count deliveries (one alert to one webhook);
    ``dropped`` (queue full, or not running) and ``deduplicated`` (cooldown) count alerts.
    """

    def __init__(self, config: AlertConfig, log, *, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.config = config
        self.log = log
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._ssl = ssl_context  # created on first https use when not given
        self._min_rank = _RANK[config.min_severity]
        self._recent: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (enqueued at, severity rank)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.sent = self.failed = self.retried = self.dropped = self.deduplicated = self.muted = 0
        # findings a person acknowledged or ignored (from the findings store): no alerts for them
        self._muted: frozenset[tuple[str, str]] = frozenset()

    def reconfigure(self, config: AlertConfig) -> None:
        """New webhooks, filters and cooldown for the alerts from now on (SIGHUP); queued ones still go
        out, and the queue keeps its size until a restart."""
        self.config = config
        self._min_rank = _RANK[config.min_severity]

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """On the running loop: the delivery task lives there, next to the proxy."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.config.queue_size)
        self._task = self._loop.create_task(self._run(), name="pgloupe-alerts")

    async def stop(self, drain_s: float = 2.0) -> None:
        """Give queued alerts ``drain_s`` to go out, then end the task; later notifies are dropped."""
        loop, self._loop = self._loop, None
        if self._task is None or loop is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, 1.0)

    def on_finding(self, finding) -> None:
        """A Pipeline listener: ``pipeline.listeners.append(sender.on_finding)``."""
        if self.config.enabled:
            self.notify(finding.to_json())

    def mute_states(self, stored: dict) -> None:
        """From the findings store's thread, after each read: who acknowledged or ignored what."""
        self._muted = frozenset(key for key, record in stored.items()
                                if record.get("state") in ("acknowledged", "ignored"))

    def notify_regression(self, finding: dict) -> None:
        """A finding fixed for a while is back: worth an alert whatever its severity (the kinds filter
        still applies). The store reports each regression to one replica only."""
        c = self.config
        if not c.enabled or (c.kinds and finding.get("kind") not in c.kinds):
            return
        self._queue_threadsafe({**finding, "regressed": True})

    def notify(self, finding: dict) -> None:
        """From any thread, never blocks nor raises: filter here, queue on the loop."""
        c = self.config
        if not c.enabled or _RANK.get(finding.get("severity"), -1) < self._min_rank:
            return
        if c.kinds and finding.get("kind") not in c.kinds:
            return
        if (finding.get("kind"), finding.get("fingerprint")) in self._muted:
            self.muted += 1
            return
        self._queue_threadsafe(finding)

    def _queue_threadsafe(self, finding: dict) -> None:
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("not running")
            loop.call_soon_threadsafe(self._enqueue, finding)
        except RuntimeError:  # not started, stopped, or the loop is closed
            self.dropped += 1

    def _enqueue(self, finding: dict) -> None:
        """On the loop (so no lock): cooldown per kind+fingerprint, unless the severity rose."""
        key = (str(finding.get("kind")), str(finding.get("fingerprint")))
        rank = _RANK[finding["severity"]]
        now = time.monotonic()
        seen = self._recent.get(key)
        if (seen is not None and now - seen[0] < self.config.cooldown_s and rank <= seen[1]
                and not finding.get("regressed")):
            self.deduplicated += 1
            return
        try:
            self._queue.put_nowait(finding)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        self._recent.pop(key, None)
        self._recent[key] = (now, rank)  # insertion order = age, for the pruning below
        if len(self._recent) > MAX_COOLDOWN_KEYS:
            self._recent.pop(next(iter(self._recent)))

    async def _run(self) -> None:
        queue = self._queue
        while True:
            finding = await queue.get()
            try:
                bodies = {fmt: json.dumps(build(finding), default=str).encode()
                          for fmt, build in (("json", json_body), ("slack", slack_body))}
                await asyncio.gather(*(self._deliver(h, bodies[h.format], finding) for h in self.config.webhooks))
            except Exception:  # a bug here must not end alerting
                self.log.exception("alert_failed", kind=finding.get("kind"))
            finally:
                queue.task_done()

    async def _deliver(self, hook: Webhook, body: bytes, finding: dict) -> None:
        """Up to 1 + retries attempts, exponential backoff between them."""
        where = dict(webhook=hook.describe(), kind=finding.get("kind"), fingerprint=finding.get("fingerprint"))
        for attempt in range(self.config.retries + 1):
            try:
                status = await self._post(hook, body)
                if 200 <= status < 300:
                    self.sent += 1
                    return
                if 400 <= status < 500 and status != 429:
                    raise PermanentFailure(status)
                reason = f"HTTP {status}"
            except PermanentFailure as exc:
                self.failed += 1
                self.log.warning("alert_rejected", status=exc.args[0], **where)
                return
            except Exception as exc:  # refused, reset, TLS, timeout, garbage: all worth another try
                reason = type(exc).__name__
            if attempt == self.config.retries:
                break
            self.retried += 1
            await asyncio.sleep(min(self.backoff_s * 2 ** attempt, self.backoff_max_s))
        self.failed += 1
        self.log.warning("alert_undelivered", reason=reason, attempts=self.config.retries + 1, **where)

    async def _post(self, hook: Webhook, body: bytes) -> int:
        """One POST; the response's status code. Connect, send and read are bounded together by timeout_s."""
        host, port, tls, path, host_header = hook.target
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: pgloupe\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl if tls else None, server_hostname=host if tls else None)
                writer.write(head.encode("latin-1") + body)
                await writer.drain()
                line = await reader.readline()
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):  # a TLS peer that never answers close_notify
                    await asyncio.wait_for(writer.wait_closed(), self.config.timeout_s)
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ConnectionError("no HTTP status line")
        return int(parts[1])
