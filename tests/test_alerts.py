"""Alert webhooks against real HTTP receivers on loopback: formats, filters, cooldown, retries, timeouts, drops."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from detectors.findings import Finding
from proxy.demo.embedded import free_port
from proxy.service.alerts import AlertConfig, AlertSender, json_body, slack_body

SECRET = "T000-s3cret-token"  # in webhook URLs: must never reach the logs


class Receiver:
    """A loopback HTTP server recording POSTs; answers ``statuses`` in turn (then 200), after ``delay``."""

    def __init__(self, statuses=(), delay: float = 0.0, tls: ssl.SSLContext | None = None):
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        self.delay = delay
        self.release = threading.Event()  # set at teardown: slow handlers stop sleeping
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.delay:
                    receiver.release.wait(receiver.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *args: None
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver():
    started: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        rx = Receiver(**kwargs)
        started.append(rx)
        return rx

    yield make
    for rx in started:
        rx.close()


class Log:
    """Records structlog-style calls: log.warning("event", key=value)."""

    def __init__(self):
        self.records: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.records.append((level, event, kw))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.records]


def finding(kind: str = "n_plus_one_select", severity: str = "error", fingerprint: str = "fp-users-by-id", **extra) -> dict:
    return {
        "kind": kind, "severity": severity, "confidence": 0.95, "fingerprint": fingerprint, "tables": ["users"],
        "count": 3, "statements": 60, "total_ms": 120.5, "p95_ms": 2.1,
        "example": "SELECT * FROM users WHERE id = $1",
        "suggestion": "SELECT * FROM users WHERE id = ANY($1)",
        "message": "20 round trips of the same SELECT on users in one unit of work",
        "applications": ["crm-api"], "tags": {}, "first_seen": 1700000000.0, "last_seen": 1700000001.0,
        **extra,
    }


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def from_thread(sender: AlertSender, findings: list[dict]) -> int:
    """notify from another thread, as the analysis thread does; returns how many calls returned."""
    returned = []

    def run():
        for f in findings:
            sender.notify(f)
            returned.append(f)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return len(returned)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_delivers_both_formats_filters_and_deduplicates(receiver):
    rx = receiver()
    config = AlertConfig.from_mapping({
        "webhooks": [{"url": rx.url("/generic?key=" + SECRET), "format": "json"},
                     {"url": rx.url(f"/services/{SECRET}"), "format": "slack"}],
        "min_severity": "error", "kinds": ["n_plus_one_select", "slow_query"],
    })
    log = Log()
    n1 = finding()

    async def main():
        sender = AlertSender(config, log)
        sender.start()
        try:
            assert from_thread(sender, [
                n1,
                finding("slow_query", "warning", "fp-slow"),  # below min_severity
                finding("cross_tenant", "critical", "fp-tenant"),  # kind not listed
            ]) == 3
            await until(lambda: sender.sent == 2)
            # the same finding again within the cooldown (a later count), and at the same severity: not re-sent
            from_thread(sender, [dict(n1, count=9)])
            await until(lambda: sender.deduplicated == 1)
            # the same finding at a higher severity is sent at once
            from_thread(sender, [dict(n1, severity="critical")])
            await until(lambda: sender.sent == 4)
            # and after that, the lower severity is a repeat
            from_thread(sender, [n1])
            await until(lambda: sender.deduplicated == 2)
        finally:
            await sender.stop()
        return sender

    sender = run(main())
    assert (sender.sent, sender.failed, sender.retried, sender.dropped, sender.deduplicated) == (4, 0, 0, 0, 2)
    with rx.lock:
        requests = list(rx.requests)
    assert len(requests) == 4
    generic = [(h, json.loads(b)) for p, h, b in requests if p.startswith("/generic")]
    slack = [(h, json.loads(b)) for p, h, b in requests if p.startswith("/services/")]
    assert len(generic) == len(slack) == 2
    for headers, _ in generic + slack:
        assert headers["Content-Type"] == "application/json"
        assert headers["Host"] == f"127.0.0.1:{rx.port}"
    assert [b["finding"]["severity"] for _, b in generic] == ["error", "critical"]
    headers, body = generic[0]
    assert body["source"] == "pgloupe" and body["finding"] == n1
    assert "n_plus_one_select" in body["text"] and "users" in body["text"] and "\n" not in body["text"]
    _, sbody = slack[0]
    assert "n_plus_one_select" in sbody["text"]
    blocks = json.dumps(sbody["blocks"])
    for part in ("n_plus_one_select", "ERROR", "`users`", "20 round trips", "```SELECT * FROM users WHERE id = ANY($1)```"):
        assert part in blocks, part
    assert all(b["type"] == "section" for b in sbody["blocks"])
    assert SECRET not in repr(log.records)


def test_zero_cooldown_resends(receiver):
    rx = receiver()
    config = AlertConfig.from_mapping({"webhooks": [rx.url()], "cooldown_s": 0, "min_severity": "info"})

    async def main():
        sender = AlertSender(config, Log())
        sender.start()
        from_thread(sender, [finding(severity="info")])
        await until(lambda: sender.sent == 1)
        from_thread(sender, [finding(severity="info")])
        await until(lambda: sender.sent == 2)
        await sender.stop()
        return sender

    assert run(main()).deduplicated == 0
    assert [b["finding"]["severity"] for b in rx.bodies()] == ["info", "info"]


def test_server_errors_are_retried_then_delivered(receiver):
    rx = receiver(statuses=[500, 500, 200])
    config = AlertConfig.from_mapping({"webhooks": [rx.url()], "retries": 3})

    async def main():
        sender = AlertSender(config, Log(), backoff_s=0.01)
        sender.start()
        from_thread(sender, [finding()])
        await until(lambda: sender.sent + sender.failed == 1)
        await sender.stop()
        return sender

    sender = run(main())
    assert sender.sent == 1 and sender.retried >= 2 and sender.failed == 0
    bodies = rx.bodies()
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]


def test_429_is_retried_but_400_is_not(receiver):
    busy = receiver(statuses=[429, 200])
    refusing = receiver(statuses=[400, 200])
    log = Log()
    config = AlertConfig.from_mapping({"webhooks": [busy.url(), refusing.url(f"/hook/{SECRET}")], "retries": 3})

    async def main():
        sender = AlertSender(config, log, backoff_s=0.01)
        sender.start()
        from_thread(sender, [finding()])
        await until(lambda: sender.sent + sender.failed == 2)
        await sender.stop()
        return sender

    sender = run(main())
    assert (sender.sent, sender.failed, sender.retried) == (1, 1, 1)
    assert len(busy.bodies()) == 2 and len(refusing.bodies()) == 1
    assert log.events() == ["alert_rejected"]
    assert log.records[0][2]["status"] == 400
    assert SECRET not in repr(log.records)


def test_receiver_down_fails_after_retries():
    port = free_port()
    log = Log()
    config = AlertConfig.from_mapping({"webhooks": [f"http://127.0.0.1:{port}/hook/{SECRET}"], "retries": 2})

    async def main():
        sender = AlertSender(config, log, backoff_s=0.01)
        sender.start()
        from_thread(sender, [finding()])
        await until(lambda: sender.failed == 1)
        await sender.stop()
        return sender

    sender = run(main())
    assert (sender.sent, sender.failed, sender.retried) == (0, 1, 2)
    ((level, event, fields),) = log.records
    assert (level, event, fields["attempts"]) == ("warning", "alert_undelivered", 3)
    assert fields["webhook"] == f"http://127.0.0.1:{port}" and fields["kind"] == "n_plus_one_select"
    assert SECRET not in repr(log.records)


def test_slow_receiver_times_out_without_stalling_the_loop(receiver):
    rx = receiver(delay=5.0)
    log = Log()
    config = AlertConfig.from_mapping({"webhooks": [rx.url()], "timeout_s": 0.5, "retries": 1})

    async def main():
        sender = AlertSender(config, log, backoff_s=0.01)
        sender.start()
        gaps: list[float] = []

        async def ticker():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        from_thread(sender, [finding()])
        await until(lambda: sender.failed == 1)
        tick.cancel()
        await sender.stop()
        return sender, gaps

    sender, gaps = run(main())
    assert (sender.sent, sender.failed, sender.retried) == (0, 1, 1)
    assert len(rx.bodies()) == 2
    assert log.records[0][2]["reason"] == "TimeoutError"
    assert len(gaps) > 20 and max(gaps) < 0.2, max(gaps)


def test_full_queue_drops_and_counts(receiver):
    rx = receiver(delay=5.0)
    config = AlertConfig.from_mapping({"webhooks": [rx.url()], "timeout_s": 0.5, "retries": 0, "queue_size": 2})
    many = [finding(fingerprint=f"fp-{i}") for i in range(50)]

    async def main():
        sender = AlertSender(config, Log())
        sender.start()
        assert from_thread(sender, many) == 50  # every notify returned although the receiver hangs
        await until(lambda: sender.dropped > 0)
        await asyncio.wait_for(sender.stop(drain_s=0.1), 10)
        after_stop = sender.dropped
        sender.notify(finding(fingerprint="late"))  # not running any more: dropped, not raised
        return sender, after_stop

    sender, after_stop = run(main())
    assert 0 < after_stop <= 48  # at least the queue's two places were taken
    assert sender.dropped == after_stop + 1
    assert sender.deduplicated == 0


def test_https_webhook(receiver, ca):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    rx = receiver(tls=server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    config = AlertConfig.from_mapping({"webhooks": [{"url": rx.url(), "format": "slack"}]})

    async def main():
        sender = AlertSender(config, Log(), ssl_context=client_ctx)
        sender.start()
        from_thread(sender, [finding()])
        await until(lambda: sender.sent + sender.failed == 1)
        await sender.stop()
        return sender

    assert run(main()).sent == 1
    (body,) = rx.bodies()
    assert "blocks" in body


def test_bodies_from_a_real_finding_are_json():
    f = Finding("slow_query", "fp-1", "critical", 1.0, ("deals",), "SELECT id FROM deals WHERE title = %s",
                "CREATE INDEX ON deals (title) -- ``` fenced", "1200 ms <slow> & more", 1.0, 2.0, count=1)
    data = f.to_json()
    generic = json.loads(json.dumps(json_body(data)))
    assert generic["finding"]["example"] == "SELECT id FROM deals WHERE title = %s"
    slack = json.dumps(slack_body(data))
    assert "&lt;slow&gt; &amp; more" in slack and "-- ''' fenced" in slack


def test_disabled_and_defaults():
    config = AlertConfig.from_mapping(None)
    assert not config.enabled
    assert (config.min_severity, config.kinds, config.cooldown_s, config.timeout_s, config.retries,
            config.queue_size) == ("error", frozenset(), 600.0, 5.0, 3, 1000)
    sender = AlertSender(config, Log())
    sender.notify(finding())  # nothing configured: ignored, never raises
    assert sender.dropped == 0
    config = AlertConfig.from_mapping({"webhooks": ["https://hooks.example.com/x",
                                                    {"url": "http://10.0.0.1:8080/a?b=c", "format": "slack"}]})
    assert [(h.url, h.format) for h in config.webhooks] == [
        ("https://hooks.example.com/x", "json"), ("http://10.0.0.1:8080/a?b=c", "slack")]
    assert config.webhooks[0].target == ("hooks.example.com", 443, True, "/x", "hooks.example.com")
    assert config.webhooks[1].target == ("10.0.0.1", 8080, False, "/a?b=c", "10.0.0.1:8080")


@pytest.mark.parametrize("table, message", [
    ("nope", "must be a table"),
    ({"webhook": []}, "unknown alerts keys: webhook"),
    ({"webhooks": "http://x/"}, "webhooks must be a list"),
    ({"webhooks": [42]}, r"webhooks\[0\] must be a URL"),
    ({"webhooks": [{"format": "json"}]}, r"webhooks\[0\] needs a url"),
    ({"webhooks": [{"url": "http://x/", "headers": {}}]}, "unknown keys headers"),
    ({"webhooks": [f"ftp://x/{SECRET}"]}, "http:// or https://"),
    ({"webhooks": ["http:///path"]}, "no host"),
    ({"webhooks": ["http://x:99999/"]}, "invalid port"),
    ({"webhooks": [{"url": "http://x/", "format": "teams"}]}, "format must be one of json, slack"),
    ({"min_severity": "fatal"}, "min_severity must be one of info, warning, error, critical"),
    ({"kinds": ["n_plus_two"]}, "unknown finding kinds: n_plus_two"),
    ({"kinds": "slow_query"}, "kinds must be a list"),
    ({"cooldown_s": -1}, "cooldown_s must be >= 0"),
    ({"timeout_s": 0}, "timeout_s must be > 0"),
    ({"timeout_s": "5"}, "timeout_s must be a number"),
    ({"retries": 1.5}, "retries must be an integer"),
    ({"retries": True}, "retries must be an integer"),
    ({"retries": -1}, "retries must be >= 0"),
    ({"queue_size": 0}, "queue_size must be >= 1"),
])
def test_config_errors(table, message):
    with pytest.raises(ValueError, match=message) as info:
        AlertConfig.from_mapping(table)
    assert SECRET not in str(info.value)


def test_end_to_end_findings_reach_a_webhook_and_metrics(start_proxy):
    """A slow statement through the running proxy becomes a finding, then a webhook delivery."""
    import urllib.request

    import psycopg

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proxy = start_proxy(sections={"alerts": {
            "webhooks": [f"http://127.0.0.1:{server.server_address[1]}/hook"], "min_severity": "warning"}})
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_sleep(0.15)")
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received and received[0]["finding"]["kind"] == "slow_query"
        assert received[0]["finding"]["severity"] == "warning"
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5) as resp:
            assert 'pgloupe_alerts_total{outcome="sent"} 1.0' in resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
