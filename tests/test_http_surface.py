"""The HTTP endpoint against what a browser can be made to do: DNS rebinding (a foreign Host), framing and
sniffing (security headers), and how it answers HEAD and a failing handler. Raw sockets, so each test
controls the Host header and sees the exact bytes and the close."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket

import pytest
import structlog

from proxy.service import page
from proxy.service.http import host_name

from .browser import chromium, harness, needs_chromium, parse

TOKEN = "surface-token-77e2"


def request(port: int, path: str = "/", method: str = "GET", host: str | None = "127.0.0.1",
            headers: tuple[str, ...] = (), version: str = "HTTP/1.1") -> tuple[int, dict[str, str], bytes]:
    """One request; the answer is read to EOF, so returning at all shows the server closed the connection."""
    lines = [f"{method} {path} {version}", *([f"Host: {host}"] if host is not None else []), *headers]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        assert name.lower() not in fields, f"{name} sent twice"
        fields[name.lower()] = value.strip()
    return int(status_line.split()[1]), fields, body


@pytest.mark.parametrize("value, expected", [
    (b"127.0.0.1:9187", "127.0.0.1"), (b"LocalHost", "localhost"), (b"localhost.:80", "localhost"),
    (b"[::1]:9187", "::1"), (b"[0:0::1]", "::1"), (b"pgloupe.staging", "pgloupe.staging"),
    (b"::1", None), (b"[::1", None), (b"[::1]x", None), (b"[not-ip]:80", None), (b"host:port", None), (b"", None),
])
def test_host_header_parsing(value, expected):
    assert host_name(value) == expected


def test_a_foreign_host_is_refused_before_routing(start_proxy):
    proxy = start_proxy()  # no http_token: the Host check is all that keeps a rebound page out
    called = []
    proxy.app.http.routes["/probe"] = lambda query: called.append(query) or (200, "text/plain", b"routed\n")
    port = proxy.http_port
    for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example",
                 "[::1", "::1"):
        for path in ("/", "/api/findings", "/metrics", "/healthz", "/probe", "/nope"):
            for method in ("GET", "HEAD"):
                status, headers, body = request(port, path, method, host=host)
                assert status == 421, (host, path, method, status)
                assert headers["content-type"] == "text/plain" and headers["x-content-type-options"] == "nosniff"
                assert body == (b"this server does not answer to that Host; see http_hosts\n" if method == "GET" else b"")
    # two Host headers: one of them would be believed by something in front, the other here
    assert request(port, "/probe", host="127.0.0.1", headers=("Host: attacker.example",))[0] == 421
    assert called == []
    assert request(port, "/probe")[0] == 200 and called == [""]


def test_the_hosts_it_answers_to(start_proxy):
    proxy = start_proxy(http_hosts=["pgloupe.staging", "Metrics.Internal."])
    port = proxy.http_port
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}",
                 "10.20.30.40:9187",  # a probe or scraper addressing the pod or container by its IP
                 "pgloupe.staging", "PGLOUPE.staging:443", "metrics.internal"):
        status, _, body = request(port, "/api/findings", host=host)
        assert status == 200 and "findings" in json.loads(body), host
    # HTTP/1.0 probes may send no Host; browsers always send one, so this is not a page's request
    assert request(port, "/healthz", host=None, version="HTTP/1.0")[0] == 200
    assert request(port, "/healthz", host="other.staging")[0] == 421


def test_with_a_token_a_foreign_host_needs_it(start_proxy):
    proxy = start_proxy(http_token=TOKEN)
    port = proxy.http_port
    for path in ("/", "/healthz", "/api/findings"):
        assert request(port, path, host="attacker.example")[0] == 421
        assert request(port, path, host="attacker.example", headers=("Authorization: Bearer nope",))[0] == 421
    # a scraper sending the token may use any name (Prometheus in compose asks for pgloupe:9187)
    status, _, body = request(port, "/metrics", host="pgloupe:9187", headers=(f"Authorization: Bearer {TOKEN}",))
    assert status == 200 and b"pgloupe_" in body
    assert request(port, "/api/findings", host="127.0.0.1")[0] == 401


def _inline_hash(tag: str) -> str:
    code = re.search(rf"<{tag}>(.*?)</{tag}>".encode(), page._BODY, re.S).group(1)
    return "'sha256-" + base64.b64encode(hashlib.sha256(code).digest()).decode() + "'"


def test_security_headers_on_the_page_and_the_data(start_proxy):
    proxy = start_proxy()
    port = proxy.http_port
    status, headers, body = request(port, "/")
    assert status == 200 and body == page._BODY
    policy = {d.split()[0]: d.split()[1:] for d in headers["content-security-policy"].split("; ")}
    assert policy["default-src"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'self'"] and policy["base-uri"] == ["'none'"]
    assert policy["style-src"] == [_inline_hash("style")]
    assert _inline_hash("script") in policy["script-src"]
    assert not [s for s in sum(policy.values(), []) if s in ("'unsafe-inline'", "'unsafe-eval'", "*")]
    assert headers["x-frame-options"] == "SAMEORIGIN"
    for path in ("/", "/api/findings", "/healthz", "/metrics", "/nope"):
        status, headers, _ = request(port, path)
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer", path
        assert headers["cache-control"] == "no-store" and headers["connection"] == "close"
        if path != "/":
            assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'", path
            assert headers["x-frame-options"] == "DENY"


def test_head_answers_as_get_without_the_body(start_proxy):
    proxy = start_proxy(http_token=TOKEN)
    port = proxy.http_port
    auth = (f"Authorization: Bearer {TOKEN}",)
    # (kind=none: an empty list, so the advisor's findings arriving between the two cannot change the length)
    for path, headers in (("/", ()), ("/api/findings?kind=none", auth), ("/api/findings", ()), ("/nope", ()),
                          ("/metrics", auth)):
        get_status, get_headers, get_body = request(port, path, "GET", headers=headers)
        head_status, head_headers, head_body = request(port, path, "HEAD", headers=headers)
        assert head_body == b"" and get_body, path
        if path == "/metrics":  # its counters move between two scrapes: all but the length must agree
            get_headers.pop("content-length"), head_headers.pop("content-length")
        else:
            assert int(head_headers["content-length"]) == len(get_body), path
        assert (head_status, head_headers) == (get_status, get_headers), path
    status, headers, _ = request(port, "/", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_a_failing_handler_answers_500_and_closes(start_proxy):
    proxy = start_proxy()

    def boom(_query):
        raise RuntimeError("secret-value-in-the-message")

    async def async_boom(_query):
        raise KeyError("secret-value-in-the-message")

    proxy.app.http.routes["/boom"] = boom
    proxy.app.http.routes["/async-boom"] = async_boom
    with structlog.testing.capture_logs() as logs:
        for path, error in (("/boom", "RuntimeError"), ("/async-boom", "KeyError")):
            status, headers, body = request(proxy.http_port, path)  # returns only once the server has closed
            assert (status, body) == (500, b"internal server error\n") and headers["connection"] == "close"
            assert headers["content-type"] == "text/plain"
            failed = [e for e in logs if e["event"] == "http_handler_failed" and e.get("error") == error]
            assert failed and failed[-1]["path"] == path
    assert "secret-value" not in repr(logs)
    assert request(proxy.http_port, "/api/findings")[0] == 200  # and the server goes on


# Loads the page in a same-origin frame, then tries what an injection would: run a script of its own.
HARNESS = harness("""
frame.onload = async function () {
  var w = frame.contentWindow, d = w.document;
  await wait(function () { return d.body.dataset.state === "ready"; }, 3000).catch(function () {});
  var injected = d.createElement("script");
  injected.textContent = "window.injected = true;";
  d.body.appendChild(injected);
  report({state: d.body.dataset.state, font: w.getComputedStyle(d.body).fontSize, injected: w.injected === true});
};
""")


@needs_chromium
def test_the_page_runs_under_its_policy_and_injected_script_does_not(start_proxy):
    proxy = start_proxy()
    proxy.app.http.routes["/harness"] = lambda _query: (200, "text/html; charset=utf-8", HARNESS)
    html = chromium(f"http://127.0.0.1:{proxy.http_port}/harness", "--dump-dom", budget_ms=5000).stdout
    seen = json.loads(parse(html).by_id("out").text())
    # its own script ran (state ready) and its own style applies (14px, not the browser's 16px)
    assert seen == {"state": "ready", "font": "14px", "injected": False}, seen
