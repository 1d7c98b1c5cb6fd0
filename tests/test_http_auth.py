"""http_token: the findings, metrics and API need a bearer token; probes and the static page do not."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import psycopg

from .browser import chromium, harness, needs_chromium, parse
from .conftest import wait_until

TOKEN = "s3cret-token-4c1d"


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_token_guards_findings_and_metrics_but_not_probes(start_proxy):
    proxy = start_proxy(http_token=TOKEN)
    port = proxy.http_port
    for path in ("/api/findings", "/metrics"):
        status, headers, body = get(port, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and b"http_token" in body
        assert get(port, path, "wrong")[0] == 401
        assert get(port, path, TOKEN[:-1])[0] == 401
        assert get(port, path, TOKEN)[0] == 200
    assert get(port, "/healthz")[0] == 200 and json.loads(get(port, "/healthz")[2])["status"] == "ok"
    status, _, page = get(port, "/")
    assert status == 200 and b"<form id=\"auth\"" in page and TOKEN.encode() not in page
    # another scheme, or the token without one, is not accepted
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/findings", headers={"Authorization": TOKEN})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("a bare token was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401


def test_no_token_no_check(start_proxy):
    proxy = start_proxy()
    assert get(proxy.http_port, "/api/findings")[0] == 200


def test_exposed_http_without_token_is_warned_about(start_proxy, capsys):
    import structlog

    with structlog.testing.capture_logs() as logs:
        start_proxy(http="0.0.0.0:0")
    assert any(entry["event"] == "http_without_token" for entry in logs), logs


# Types the token into the page's form like a user would, then reports what the page shows.
HARNESS = harness(f"var TOKEN = {json.dumps(TOKEN)};\n" + """
var seen = {};
frame.onload = async function () {
  var d = frame.contentWindow.document;
  try {
    await wait(function () { return d.body.dataset.state === "auth"; }, 3000);
    seen.asked = {form: !d.getElementById("auth").hidden, focused: d.activeElement.id,
                  banner: d.getElementById("error").textContent};
    d.getElementById("token").value = "not-it";
    d.getElementById("auth").requestSubmit();
    await wait(function () { return d.body.dataset.state === "auth" && !d.getElementById("auth").hidden; }, 3000);
    seen.refused = d.getElementById("error").textContent;
    d.getElementById("token").value = TOKEN;
    d.getElementById("auth").requestSubmit();
    await wait(function () { return d.body.dataset.state === "ready"; }, 3000);
    seen.ready = {form: !d.getElementById("auth").hidden, rows: d.querySelectorAll("#findings tbody tr").length,
                  field: d.getElementById("token").value};
  } catch (e) { seen.error = String(e); }
  report(seen);
};
""", 1200, 800)


@needs_chromium
def test_the_page_asks_for_the_token_and_then_shows_the_findings(start_proxy, pg):
    proxy = start_proxy(http_token=TOKEN)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(0.6)")  # one slow_query finding to show
    # (a slow statement is judged once its shape's window closes: the page is loaded once it is there)
    wait_until(lambda: json.loads(get(proxy.http_port, "/api/findings", TOKEN)[2])["findings"], 15,
               "the slow_query finding")
    proxy.app.http.routes["/harness"] = lambda _query: (200, "text/html; charset=utf-8", HARNESS)
    proxy.app.http.public = proxy.app.http.public | {"/harness"}
    html = chromium(f"http://127.0.0.1:{proxy.http_port}/harness", "--dump-dom", budget_ms=9000).stdout
    seen = json.loads(parse(html).by_id("out").text())
    assert "error" not in seen, seen
    assert seen["asked"]["form"] and seen["asked"]["focused"] == "token"
    assert "asks for an access token" in seen["asked"]["banner"]
    assert "refused" in seen["refused"]
    assert seen["ready"]["form"] is False and seen["ready"]["rows"] >= 1 and seen["ready"]["field"] == ""


def test_the_token_is_never_shown_by_the_admin_console(start_proxy):
    proxy = start_proxy(http_token=TOKEN, admin_users=["postgres"])
    with psycopg.connect(proxy.dsn(database="pgloupe"), autocommit=True) as admin:
        rows = dict(admin.execute("SHOW CONFIG").fetchall())
    assert rows["http_token"] == "***" and TOKEN not in repr(rows)
