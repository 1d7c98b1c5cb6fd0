"""The findings page end to end: real findings from corpus workloads through the proxy, rendered by headless Chromium.

Chromium is Debian's ``chromium`` package (``apt-get install -y --no-install-recommends chromium``); the
browser tests skip when it is not installed. Chromium only ever loads loopback URLs of the proxy under test.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest

from proxy.demo.corpus import CORPUS_DETECTORS
from proxy.demo.workloads import WORKLOADS, prepare
from proxy.service import page

from .browser import Node, chromium, harness, needs_chromium, parse

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
PAGE_WORKLOADS = ("campaign-send-loop", "lead-owner-lookup", "contact-search-all-teams", "contact-rename-by-id",
             "slow-report", "message-cleanup-traced")
CANARY = "canary-literal-5be1f0"
# an application_name that is markup: the page must show it as text (63 bytes at most, PostgreSQL truncates)
EVIL_APP = "<script>alert(1)</script><img src=x onerror=document.title=1>"


def dump(proxy, fragment: str = "", **kw) -> tuple[Node, str]:
    html = chromium(f"http://127.0.0.1:{proxy.http_port}/" + (f"#{fragment}" if fragment else ""),
                    "--dump-dom", **kw).stdout
    doc = parse(html)
    assert doc.find_all("body")[0].attrs.get("data-state") == "ready", html[:3000]
    return doc, html


def screenshot(proxy, fragment: str, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    chromium(f"http://127.0.0.1:{proxy.http_port}/" + (f"#{fragment}" if fragment else ""),
             f"--screenshot={path}", "--window-size=1400,1000")
    assert path.exists() and path.stat().st_size > 20_000, f"screenshot {path} missing or blank"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def api(proxy) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/api/findings", timeout=5) as resp:
        return json.load(resp)["findings"]


def rows(doc: Node) -> list[Node]:
    (table,) = doc.find_all("table", id="findings")
    (tbody,) = table.find_all("tbody")
    return tbody.find_all("tr")


def key(f) -> tuple[str, str]:
    return f["kind"], f["fingerprint"]


def row_keys(doc: Node) -> list[tuple[str, str]]:
    return [(r.attrs["data-kind"], r.attrs["data-fingerprint"]) for r in rows(doc)]


def one(findings: list[dict], kind: str, app: str, table: str | None = None) -> dict:
    matched = [f for f in findings if f["kind"] == kind and app in f["applications"]
               and (table is None or table in f["tables"])]
    assert len(matched) == 1, (kind, app, matched)
    return matched[0]


# Drives the page like a user would (clicks, a select change, Copy, Close), then reports what it saw.
HARNESS = harness("""
var seen = {};
frame.onload = async function () {
  var w = frame.contentWindow, d = w.document;
  try {
    await wait(function () { return d.body.dataset.state === "ready"; }, 4000);
    var row = d.querySelector("#findings tbody tr[data-kind=n_plus_one_select]");
    row.querySelector("td.tables").click();
    seen.clicked = {hash: w.location.hash, detail: d.getElementById("detail").dataset.fingerprint,
                    hidden: d.getElementById("detail").hidden, focused: d.activeElement.id, row: row.dataset.fingerprint};
    var sel = d.getElementById("filter-kind");
    sel.value = "cross_tenant";
    sel.dispatchEvent(new Event("change"));
    seen.filtered = {hash: w.location.hash, kinds: Array.prototype.map.call(
      d.querySelectorAll("#findings tbody tr"), function (r) { return r.dataset.kind; })};
    var copied = null;  // the Clipboard API, stubbed: a synthetic click is no user gesture for the real one
    Object.defineProperty(w.navigator, "clipboard", {configurable: true, value: {writeText: function (text) {
      copied = text;
      return Promise.resolve();
    }}});
    d.getElementById("detail-copy").click();
    seen.copy = {status: await wait(function () { return d.getElementById("copy-status").textContent; }, 3000),
                 text: copied, suggestion: d.getElementById("detail-suggestion").textContent};
    Object.defineProperty(w.navigator, "clipboard", {configurable: true, value: undefined});
    d.getElementById("detail-copy").click();  // the textarea fallback: execCommand, no activation needed to try
    seen.fallback = {status: d.getElementById("copy-status").textContent,
                     textareas: d.querySelectorAll("textarea").length};
    d.getElementById("detail-close").click();
    seen.closed = {hash: w.location.hash, hidden: d.getElementById("detail").hidden};
    d.getElementById("filter-clear").click();
    seen.cleared = {hash: w.location.hash, rows: d.querySelectorAll("#findings tbody tr").length};
  } catch (e) {
    seen.error = String(e);
  }
  report(seen);
};
""", 1400, 900)

# ------------------------------------------------------------------ tests


def test_page_is_one_small_self_contained_document():
    status, ctype, body = page.index("")
    assert status == 200 and ctype == "text/html; charset=utf-8"
    assert len(body) < 30_000
    text = body.decode()
    assert text.startswith("<!doctype html>")
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert external not in text, external
    assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text
    assert page.index("kind=x") == (status, ctype, body)


@pytest.fixture
def findings_proxy(pg, start_proxy):
    """pgloupe on a corpus database, with runtime findings of several kinds and severities and the advisor's."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS findings_page")
        conn.execute("CREATE DATABASE findings_page")
    direct = pg.dsn(database="findings_page")
    prepare(direct)
    with psycopg.connect(direct, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")  # index suggestions with plan costs
            hypopg = True
        except psycopg.Error:
            hypopg = False
    proxy = start_proxy(upstream=direct,
                        sections={"detectors": {**CORPUS_DETECTORS, "schema_refresh_s": 3600}})
    assert proxy.app.http.routes["/"] is page.index  # the App serves the page at /
    assert proxy.background.call(proxy.app.reviews.refresh), "the catalog could not be read"
    dsn = proxy.dsn(database="findings_page")
    by_name = {w.name: w for w in WORKLOADS}
    for name in PAGE_WORKLOADS:
        by_name[name].run(dsn)
    with psycopg.connect(dsn, autocommit=True, application_name=EVIL_APP) as conn:
        # a literal in the text: the page shows the normalized statement only
        conn.execute(f"SELECT id FROM contacts WHERE name = '{CANARY}'").fetchall()
    with psycopg.connect(dsn, autocommit=True, application_name="contact-lookup-slow") as conn:
        # slow, and no index serves (team_id, email): the advisor suggests one, costed by HypoPG
        conn.execute("SELECT id, name, pg_sleep(0.11) FROM contacts WHERE team_id = %s AND email = %s",
                     (1, "c7@example.com")).fetchall()
    expected = {("n_plus_one_insert", "campaign-send-loop"), ("n_plus_one_select", "lead-owner-lookup"),
                ("cross_tenant", "contact-search-all-teams"), ("cross_tenant", "contact-rename-by-id"),
                ("slow_query", "slow-report"), ("slow_query", "contact-lookup-slow"), ("cross_tenant", EVIL_APP),
                ("n_plus_one_delete", "message-cleanup-traced")}
    deadline = time.monotonic() + 30
    while True:
        seen = {(f["kind"], a) for f in api(proxy) for a in f["applications"]}
        if expected <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expected <= seen, f"missing findings: {expected - seen}"
    # the advisor's review of the traffic seen, then the store is stable (no traffic, no periodic refresh)
    assert proxy.background.call(proxy.app.reviews.refresh)
    proxy.hypopg = hypopg
    return proxy


@needs_chromium
def test_findings_page_in_headless_chromium(findings_proxy):
    proxy = findings_proxy
    findings = api(proxy)
    by_key = {key(f): f for f in findings}

    # list view: every finding, most severe first, then by total time
    doc, html = dump(proxy)
    keys = row_keys(doc)
    assert sorted(keys) == sorted(by_key), (set(keys) ^ set(by_key))
    ranks = [RANK[by_key[k]["severity"]] for k in keys]
    assert ranks == sorted(ranks, reverse=True), ranks
    assert {"critical", "error"} & {by_key[k]["severity"] for k in keys[:1]}
    assert "warning" in {by_key[k]["severity"] for k in keys}
    for a, b in zip(keys, keys[1:], strict=False):
        if by_key[a]["severity"] == by_key[b]["severity"]:
            assert by_key[a]["total_ms"] >= by_key[b]["total_ms"], (a, b)
    for sev in RANK:
        count = doc.by_id(f"count-{sev}")
        assert int(count.attrs["data-count"]) == sum(f["severity"] == sev for f in findings), sev
        assert count.text() == f"{count.attrs['data-count']} {sev}"
    assert int(doc.by_id("count-total").attrs["data-count"]) == len(findings)
    assert doc.by_id("detail").hidden and doc.by_id("error").hidden
    select_kind = doc.by_id("filter-kind")
    assert {o.attrs["value"] for o in select_kind.find_all("option")} == {""} | {f["kind"] for f in findings}
    apps = {o.attrs["value"] for o in doc.by_id("filter-app").find_all("option")}
    assert set(PAGE_WORKLOADS) | {EVIL_APP} <= apps
    n1 = one(findings, "n_plus_one_insert", "campaign-send-loop", "emails")
    (n1_row,) = [r for r in rows(doc) if (r.attrs["data-kind"], r.attrs["data-fingerprint"]) == key(n1)]
    assert n1_row.cell("count") == f"{n1['count']} / {n1['statements']}"
    assert n1_row.cell("applications") == "campaign-send-loop"
    assert n1_row.cell("last-seen").endswith("ago")
    assert n1_row.cell("tables") == ", ".join(n1["tables"])
    assert CANARY not in html

    # escaping: an application_name made of markup is text in the cell, in the select and nowhere markup
    evil = one(findings, "cross_tenant", EVIL_APP)
    (evil_row,) = [r for r in rows(doc) if r.attrs["data-fingerprint"] == evil["fingerprint"]
                   and r.attrs["data-kind"] == "cross_tenant"]
    assert evil_row.cell("applications") == EVIL_APP
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=document.title=1&gt;" in html
    assert not doc.find_all("img")
    assert len(doc.find_all("script")) == 1  # the page's own
    assert doc.find_all("title")[0].text() == "pgloupe findings"

    # #kind=: only that kind, and the select shows it
    doc, _ = dump(proxy, "kind=n_plus_one_select")
    kinds = {k for k, _ in row_keys(doc)}
    assert kinds == {"n_plus_one_select"}
    assert len(rows(doc)) == sum(f["kind"] == "n_plus_one_select" for f in findings)
    (selected,) = [o for o in doc.by_id("filter-kind").find_all("option") if "selected" in o.attrs]
    assert selected.attrs["value"] == "n_plus_one_select"
    assert doc.by_id("count-shown").attrs["data-count"] == str(len(rows(doc)))

    # #severity= and #app=, combined
    doc, _ = dump(proxy, "severity=error")
    assert {by_key[k]["severity"] for k in row_keys(doc)} == {"error"}
    doc, _ = dump(proxy, urlencode({"app": "lead-owner-lookup"}))
    keys = row_keys(doc)
    assert keys and all("lead-owner-lookup" in by_key[k]["applications"] for k in keys)
    assert len(keys) == sum("lead-owner-lookup" in f["applications"] for f in findings)
    doc, _ = dump(proxy, urlencode({"app": EVIL_APP, "kind": "cross_tenant"}))
    assert row_keys(doc) == [key(evil)]

    # #detail=<fingerprint>: the N+1 insert, with its batched rewrite and the normalized example
    doc, html = dump(proxy, f"detail={n1['fingerprint']}")
    detail = doc.by_id("detail")
    assert not detail.hidden and detail.attrs["data-fingerprint"] == n1["fingerprint"]
    assert detail.attrs["data-kind"] == "n_plus_one_insert"
    assert "VALUES" in doc.by_id("detail-suggestion").text()
    assert doc.by_id("detail-suggestion").text() == n1["suggestion"]
    assert doc.by_id("detail-example").text() == n1["example"]
    assert doc.by_id("detail-message").text() == n1["message"]
    assert "n_plus_one_insert" in doc.by_id("detail-title").text()
    assert doc.by_id("detail-copy").tag == "button"
    facts = {dd.attrs["data-key"]: dd.text() for dd in doc.by_id("detail-facts").find_all("dd")}
    assert facts["count"] == str(n1["count"]) and facts["statements"] == str(n1["statements"])
    assert facts["applications"] == "campaign-send-loop" and facts["tables"] == ", ".join(n1["tables"])
    assert facts["first_seen"].endswith("ago)") and facts["last_seen"].endswith("ago)")
    assert facts["total_ms"].endswith(" ms") and facts["fingerprint"] == n1["fingerprint"]
    (selected_row,) = [r for r in rows(doc) if r.attrs.get("class") == "selected"]
    assert selected_row.attrs["data-fingerprint"] == n1["fingerprint"]
    assert CANARY not in html

    # sqlcommenter tags of the statements label the finding
    traced = one(findings, "n_plus_one_delete", "message-cleanup-traced")
    assert traced["tags"].get("route"), traced
    doc, _ = dump(proxy, urlencode({"detail": traced["fingerprint"], "detail_kind": "n_plus_one_delete"}))
    tags = {dd.attrs["data-key"]: dd.text() for dd in doc.by_id("detail-tags").find_all("dd")}
    assert tags["route"] == ", ".join(traced["tags"]["route"])
    assert not doc.by_id("detail-tags-box").hidden

    # a fingerprint that is not (or no longer) there
    doc, _ = dump(proxy, "detail=0123456789abcdef")
    assert not doc.by_id("detail").hidden and doc.by_id("detail-title").text() == "Finding not found"
    assert not [r for r in rows(doc) if r.attrs.get("class") == "selected"]

    # the markup-named application's finding: the example is normalized, the literal never reaches the page
    doc, html = dump(proxy, urlencode({"app": EVIL_APP, "detail": evil["fingerprint"], "detail_kind": "cross_tenant"}))
    assert doc.by_id("detail-example").text() == "SELECT id FROM contacts WHERE name = %s"
    facts = {dd.attrs["data-key"]: dd.text() for dd in doc.by_id("detail-facts").find_all("dd")}
    assert facts["applications"] == EVIL_APP
    assert "team_id" in doc.by_id("detail-suggestion").text()
    assert CANARY not in html and not doc.find_all("img")

    # an advisor index suggestion shows its plan costs before and after (HypoPG)
    costed = [f for f in findings if f["kind"] == "missing_index" and "cost_before" in f.get("details", {})]
    if proxy.hypopg:
        assert costed, "no missing_index advice with HypoPG costs"
        (f,) = [f for f in costed if f["tables"] == ["contacts"]]
        doc, _ = dump(proxy, urlencode({"detail": f["fingerprint"], "detail_kind": f["kind"]}))
        details = {dd.attrs["data-key"]: dd.text() for dd in doc.by_id("detail-details").find_all("dd")}
        assert float(details["cost_before"]) == f["details"]["cost_before"]
        assert float(details["cost_after"]) == f["details"]["cost_after"] < f["details"]["cost_before"]
        assert details["cost_reduction"].endswith("%")
        assert doc.by_id("detail-suggestion").text().startswith("CREATE INDEX")
        screenshot(proxy, urlencode({"detail": f["fingerprint"], "detail_kind": f["kind"]}), "findings-page-advice.png")

    # it refreshes every 5 s and keeps the filters and the open detail
    doc, _ = dump(proxy, urlencode({"kind": "n_plus_one_insert", "detail": n1["fingerprint"]}), budget_ms=12_000)
    assert int(doc.find_all("body")[0].attrs["data-refreshes"]) >= 2
    assert {k for k, _ in row_keys(doc)} == {"n_plus_one_insert"}
    assert doc.by_id("detail").attrs["data-fingerprint"] == n1["fingerprint"]

    # a user's clicks: a row opens its detail and updates the URL, the select filters, Copy, Close, Clear
    proxy.app.http.routes["/harness"] = lambda _query: (200, "text/html; charset=utf-8", HARNESS)
    html = chromium(f"http://127.0.0.1:{proxy.http_port}/harness", "--dump-dom", budget_ms=8000).stdout
    reported = parse(html).by_id("out").text()
    assert reported, f"the harness reported nothing: {html[-2000:]}"
    seen = json.loads(reported)
    assert "error" not in seen, seen
    select = one(findings, "n_plus_one_select", "lead-owner-lookup")
    assert seen["clicked"] == {"hash": f"#detail={select['fingerprint']}&detail_kind=n_plus_one_select",
                               "detail": select["fingerprint"], "hidden": False, "focused": "detail",
                               "row": select["fingerprint"]}
    assert seen["filtered"]["hash"] == f"#kind=cross_tenant&detail={select['fingerprint']}&detail_kind=n_plus_one_select"
    assert set(seen["filtered"]["kinds"]) == {"cross_tenant"}
    assert seen["copy"] == {"status": "Copied", "text": select["suggestion"], "suggestion": select["suggestion"]}
    # headless Chromium refuses execCommand("copy") without a real user gesture: the page says so
    assert seen["fallback"]["status"] in ("Copied", "Copy failed: select the text and copy it"), seen
    assert seen["fallback"]["textareas"] == 0
    assert seen["closed"] == {"hash": "#kind=cross_tenant", "hidden": True}
    assert seen["cleared"] == {"hash": "", "rows": len(findings)}

    # screenshots for people: the list and a detail
    screenshot(proxy, "", "findings-page-list.png")
    screenshot(proxy, f"detail={n1['fingerprint']}", "findings-page-detail.png")


@needs_chromium
def test_error_banner_when_the_api_fails(proxy):
    proxy.app.http.routes["/api/findings"] = lambda _query: (500, "text/plain", b"boom\n")
    html = chromium(f"http://127.0.0.1:{proxy.http_port}/", "--dump-dom").stdout
    doc = parse(html)
    banner = doc.by_id("error")
    assert not banner.hidden and "HTTP 500" in banner.text()
    assert banner.attrs.get("role") == "alert"
    assert doc.find_all("body")[0].attrs["data-state"] == "error"
    assert rows(doc) == []


STATE_HARNESS = harness("""
var seen = {};
frame.onload = async function () {
  var w = frame.contentWindow, d = w.document;
  try {
    await wait(function () { return d.body.dataset.state === "ready"; }, 4000);
    var row = d.querySelector("#findings tbody tr[data-kind=n_plus_one_select]");
    seen.state = row.querySelector("td.state-cell").textContent;
    row.querySelector("td.tables").click();
    var bars = await wait(function () { return d.querySelectorAll("#chart .bar").length && d.querySelectorAll("#chart .bar"); }, 4000);
    seen.chart = {bars: bars.length, today: Number(bars[bars.length - 1].dataset.count),
                  height: bars[bars.length - 1].style.height, caption: d.querySelector("#chart .chart-caption").textContent};
    seen.deploys = d.getElementById("deploys").hidden ? null : d.getElementById("deploy-list").textContent;
    d.getElementById("state-ignore").click();  // no reason yet: refused on the page
    seen.noReason = d.getElementById("state-status").textContent;
    d.getElementById("state-reason").value = "nightly export, accepted";
    d.getElementById("state-by").value = "ana";
    d.getElementById("state-ignore").click();
    seen.saved = await wait(function () { var t = d.getElementById("state-status").textContent; return t.indexOf("Saved") === 0 && t; }, 4000);
    await wait(function () { return !d.querySelector("#findings tbody tr[data-kind=n_plus_one_select]"); }, 6000);
    seen.hiddenByDefault = true;
    var sel = d.getElementById("filter-state");
    sel.value = "ignored";
    sel.dispatchEvent(new Event("change"));
    var ignored = d.querySelector("#findings tbody tr[data-kind=n_plus_one_select]");
    seen.ignoredRow = ignored ? ignored.querySelector("td.state-cell").textContent : null;
    seen.detailState = d.getElementById("detail-state").textContent;
  } catch (e) {
    seen.error = String(e);
  }
  report(seen);
};
""", 1400, 900)


@needs_chromium
def test_states_deploys_and_the_daily_chart_in_headless_chromium(pg, start_proxy, tmp_path):
    from .test_store_service import found, n_plus_one, store_settings
    from .test_store_service import prepare as prepare_store_tables

    prepare_store_tables(pg.dsn())
    proxy = start_proxy(**store_settings(tmp_path))
    n_plus_one(proxy.dsn(), 2)
    finding = None
    deadline = time.monotonic() + 20
    while finding is None and time.monotonic() < deadline:
        finding = found(proxy.app)
        time.sleep(0.1)
    assert finding is not None
    proxy.app.store.mark_deploy("v9", "http", at=time.time() - 7200).result(10)
    assert proxy.app.store.flush_now()
    proxy.app.http.routes["/harness"] = lambda _query: (200, "text/html; charset=utf-8", STATE_HARNESS)
    html = chromium(f"http://127.0.0.1:{proxy.http_port}/harness", "--dump-dom", budget_ms=12000).stdout
    reported = parse(html).by_id("out").text()
    assert reported, f"the harness reported nothing: {html[-2000:]}"
    seen = json.loads(reported)
    assert "error" not in seen, seen
    assert seen["state"] == "new"  # first seen after the v9 deploy
    assert seen["chart"]["bars"] == 14 and seen["chart"]["today"] == 2 and seen["chart"]["height"] == "60px"
    assert seen["chart"]["caption"].startswith("2 in 14 days; by replica: ")
    assert seen["deploys"] and "v9" in seen["deploys"]
    assert seen["noReason"].startswith("Say why first")
    assert seen["saved"] == "Saved: ignored" and seen["hiddenByDefault"]
    assert seen["ignoredRow"] == "ignored" and seen["detailState"] == "ignored: nightly export, accepted (ana)"
    stored = found(proxy.app)
    assert (stored["state"], stored["state_reason"], stored["state_by"]) == ("ignored", "nightly export, accepted", "ana")
