"""The findings web page: one self-contained HTML document (inline CSS and vanilla JavaScript).

It fetches ``api/findings`` (relative, so it also works behind a path prefix), every 5 s, with the
``http_token`` the user typed when the server asks for one (kept in sessionStorage), and keeps
its view in ``location.hash``: ``#kind=...&severity=...&app=...&detail=<fingerprint>&detail_kind=...``
so a URL restores the filters and the open detail. Every value from the API reaches the DOM through
``textContent`` or attribute setters, never as markup. No external resource: it works offline.
"""

from __future__ import annotations

from .http import Response

_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgloupe findings</title>
<style>
:root{--bg:#fff;--fg:#1b1f24;--muted:#505a66;--line:#d5dae0;--head:#f3f5f7;--hover:#eef4fb;--sel:#dbe9f8;
--link:#0b5cad;--critical:#7a0010;--error:#b3261e;--warning:#f2c94c;--info:#1f5f99}
@media (prefers-color-scheme:dark){:root{--bg:#15181c;--fg:#e6e9ed;--muted:#a7b0bb;--line:#343a42;
--head:#1e2227;--hover:#1f2a36;--sel:#243b55;--link:#8cc4ff}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg)}
header,#filters,main{padding:0 20px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 20px;border-bottom:1px solid var(--line);padding-top:10px;padding-bottom:10px}
h1{font-size:20px;margin:0}
h2{font-size:17px;margin:0 0 8px}
h3{font-size:14px;margin:14px 0 4px}
#summary{margin:0}
#summary span{margin-right:10px;white-space:nowrap}
#updated{margin:0;color:var(--muted);font-size:12px}
#auth{margin:10px 20px;display:flex;flex-wrap:wrap;gap:6px;align-items:center}
#auth[hidden]{display:none}
#auth input{font:inherit;color:inherit;background:var(--bg);border:1px solid var(--muted);border-radius:4px;padding:3px 8px}
#error{margin:10px 20px;padding:8px 12px;border:1px solid var(--error);border-left-width:6px;background:#fdecea;color:#5f0f0a}
#filters{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;padding-top:10px;padding-bottom:10px}
#filters label{font-weight:600}
select,button{font:inherit;color:inherit;background:var(--bg);border:1px solid var(--muted);border-radius:4px;padding:3px 8px}
button{cursor:pointer}
select{max-width:22em}
button:focus-visible,select:focus-visible,a:focus-visible,#detail:focus-visible{outline:2px solid var(--link);outline-offset:1px}
main{display:grid;grid-template-columns:minmax(0,1fr);gap:20px;padding-bottom:30px}
main.with-detail{grid-template-columns:minmax(0,1fr) minmax(320px,460px)}
main.with-detail .opt{display:none}
@media (max-width:1000px){main.with-detail{grid-template-columns:minmax(0,1fr)}main.with-detail .opt{display:table-cell}}
#list{overflow-x:auto}
table{border-collapse:collapse;width:100%}
caption{text-align:left;color:var(--muted);padding:4px 0}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num,td.last-seen{white-space:nowrap}
tbody tr{cursor:pointer}
tbody tr:hover{background:var(--hover)}
tbody tr.selected{background:var(--sel)}
a{color:var(--link)}
.badge{display:inline-block;min-width:62px;text-align:center;padding:1px 6px;border-radius:10px;font-size:12px;font-weight:700;color:#fff}
.sev-critical{background:var(--critical)}.sev-error{background:var(--error)}
.sev-warning{background:var(--warning);color:#1b1f24}.sev-info{background:var(--info)}
.source{display:block;font-size:11px;color:var(--muted)}
#detail{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:12px 16px;align-self:start;position:sticky;top:10px;
max-height:calc(100vh - 20px);overflow:auto}
#detail-head{display:flex;justify-content:space-between;align-items:start;gap:10px}
pre{background:var(--head);border:1px solid var(--line);padding:8px;white-space:pre-wrap;word-break:break-word;margin:0;
font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dt{color:var(--muted)}dd{margin:0;word-break:break-word}
#copy-status{margin-left:8px;color:var(--muted)}
#empty{color:var(--muted)}
</style>
</head>
<body data-state="loading" data-refreshes="0">
<header>
<h1>pgloupe findings</h1>
<p id="summary" aria-live="polite"><span id="count-total" data-count="0">0 findings</span><span id="count-critical" class="sev" data-count="0">0 critical</span><span id="count-error" class="sev" data-count="0">0 error</span><span id="count-warning" class="sev" data-count="0">0 warning</span><span id="count-info" class="sev" data-count="0">0 info</span><span id="count-shown" data-count="0"></span></p>
<p id="updated">Loading&hellip;</p>
</header>
<div id="error" role="alert" hidden></div>
<form id="auth" hidden><label for="token">Access token</label> <input id="token" type="password" autocomplete="off" size="28"> <button type="submit">Show findings</button> <span>(this pgloupe asks for its <code>http_token</code>; kept for this tab only)</span></form>
<form id="filters" onsubmit="return false">
<label for="filter-kind">Kind</label><select id="filter-kind"><option value="">all kinds</option></select>
<label for="filter-severity">Severity</label><select id="filter-severity"><option value="">all severities</option></select>
<label for="filter-app">Application</label><select id="filter-app"><option value="">all applications</option></select>
<button type="button" id="filter-clear">Clear filters</button>
</form>
<main id="main">
<div id="list">
<table id="findings">
<caption>Most severe first, then by total time and occurrences. Select a row for details.</caption>
<thead><tr><th scope="col">Severity</th><th scope="col">Kind</th><th scope="col">Tables</th>
<th scope="col" class="num">Count / statements</th><th scope="col" class="num">Total ms</th><th scope="col" class="num opt">p95 ms</th>
<th scope="col" class="num opt">Confidence</th><th scope="col">Applications</th><th scope="col" class="opt">Last seen</th></tr></thead>
<tbody></tbody>
</table>
<p id="empty" hidden></p>
</div>
<section id="detail" hidden aria-labelledby="detail-title" tabindex="-1">
<div id="detail-head"><h2 id="detail-title"></h2><button type="button" id="detail-close">Close</button></div>
<p id="detail-message"></p>
<h3>Example statement</h3>
<pre id="detail-example"></pre>
<h3>Suggestion</h3>
<pre id="detail-suggestion"></pre>
<p><button type="button" id="detail-copy">Copy</button><span id="copy-status" aria-live="polite"></span></p>
<h3>Facts</h3>
<dl id="detail-facts"></dl>
<div id="detail-tags-box"><h3>Tags</h3><dl id="detail-tags"></dl></div>
<div id="detail-details-box"><h3>Details</h3><dl id="detail-details"></dl></div>
</section>
</main>
<script>
"use strict";
(function () {
  var RANK = {critical: 3, error: 2, warning: 1, info: 0};
  var SEVERITIES = ["critical", "error", "warning", "info"];
  var KEYS = ["kind", "severity", "app", "detail", "detail_kind"];
  var REFRESH_MS = 5000;
  var findings = [];
  var loaded = false;
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function state() {
    var p = new URLSearchParams(location.hash.replace(/^#/, "")), s = {};
    KEYS.forEach(function (k) { s[k] = p.get(k) || ""; });
    return s;
  }
  function hashOf(s) {
    var p = new URLSearchParams();
    KEYS.forEach(function (k) { if (s[k]) p.set(k, s[k]); });
    return p.toString();
  }
  function go(changes) {
    var s = state();
    Object.keys(changes).forEach(function (k) { s[k] = changes[k]; });
    var h = hashOf(s);
    if (h !== location.hash.replace(/^#/, "")) {
      if (h) location.hash = h;  // a history entry: Back restores the previous view
      else history.pushState(null, "", location.pathname + location.search);
    }
    render();
  }
  function rank(f) { return RANK.hasOwnProperty(f.severity) ? RANK[f.severity] : -1; }
  function byImpact(a, b) {
    return rank(b) - rank(a) || (b.total_ms || 0) - (a.total_ms || 0) || (b.count || 0) - (a.count || 0) ||
      (a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : 0) || (a.fingerprint < b.fingerprint ? -1 : a.fingerprint > b.fingerprint ? 1 : 0);
  }
  function list(v) { return Array.isArray(v) ? v : []; }
  function matches(f, s) {
    return (!s.kind || f.kind === s.kind) && (!s.severity || f.severity === s.severity) &&
      (!s.app || list(f.applications).indexOf(s.app) >= 0);
  }
  function ms(v) {
    v = Number(v) || 0;
    return v >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toFixed(v >= 10 ? 1 : 2);
  }
  function ago(t) {
    var d = Math.max(0, Date.now() / 1000 - Number(t));
    if (!isFinite(d)) return "";
    if (d < 60) return Math.round(d) + " s ago";
    if (d < 3600) return Math.round(d / 60) + " min ago";
    if (d < 86400) return Math.round(d / 3600) + " h ago";
    return Math.round(d / 86400) + " d ago";
  }
  function when(t) {
    var x = el("time", null, ago(t)), d = new Date(Number(t) * 1000);
    if (!isNaN(d)) { x.dateTime = d.toISOString(); x.title = d.toISOString(); }
    return x;
  }
  function stamp(t) {
    var d = new Date(Number(t) * 1000);
    return isNaN(d) ? "" : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") + " (" + ago(t) + ")";
  }
  function badge(sev) { return el("span", "badge sev-" + (RANK.hasOwnProperty(sev) ? sev : "info"), sev); }

  function fillSelect(sel, values, current) {
    if (current && values.indexOf(current) < 0) values = values.concat([current]);
    while (sel.options.length > 1) sel.remove(1);
    values.forEach(function (v) { var o = el("option", null, v); o.value = v; sel.appendChild(o); });
    Array.prototype.forEach.call(sel.options, function (o) { o.defaultSelected = o.value === current; });
    sel.value = current;
  }
  function uniq(get) {
    var seen = {};
    findings.forEach(function (f) { get(f).forEach(function (v) { if (typeof v === "string") seen[v] = 1; }); });
    return Object.keys(seen).sort();
  }

  function render() {
    var s = state();
    fillSelect($("filter-kind"), uniq(function (f) { return [f.kind]; }), s.kind);
    var sevs = uniq(function (f) { return [f.severity]; }).sort(function (a, b) { return (RANK[b] || 0) - (RANK[a] || 0); });
    fillSelect($("filter-severity"), sevs, s.severity);
    fillSelect($("filter-app"), uniq(function (f) { return list(f.applications); }), s.app);

    var counts = {critical: 0, error: 0, warning: 0, info: 0};
    findings.forEach(function (f) { if (counts.hasOwnProperty(f.severity)) counts[f.severity]++; });
    $("count-total").textContent = findings.length + (findings.length === 1 ? " finding:" : " findings:");
    $("count-total").dataset.count = findings.length;
    SEVERITIES.forEach(function (sev) {
      var c = $("count-" + sev);
      c.textContent = counts[sev] + " " + sev;
      c.dataset.count = counts[sev];
    });

    var shown = findings.filter(function (f) { return matches(f, s); });
    var shownEl = $("count-shown");
    shownEl.dataset.count = shown.length;
    shownEl.textContent = shown.length === findings.length ? "" : "(" + shown.length + " shown)";

    var focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("tbody tr");
    var focusKey = focused ? focused.dataset.key : null;
    var tbody = $("findings").tBodies[0], rows = document.createDocumentFragment();
    shown.forEach(function (f) {
      var tr = el("tr");
      tr.dataset.fingerprint = f.fingerprint;
      tr.dataset.kind = f.kind;
      tr.dataset.severity = f.severity;
      tr.dataset.key = f.kind + ":" + f.fingerprint;
      if (f.fingerprint === s.detail && (!s.detail_kind || f.kind === s.detail_kind)) {
        tr.className = "selected";
        tr.setAttribute("aria-selected", "true");
      }
      var sev = el("td", "severity"); sev.appendChild(badge(f.severity)); tr.appendChild(sev);
      var kind = el("td", "kind"), a = el("a", null, f.kind);
      var target = state(); target.detail = f.fingerprint; target.detail_kind = f.kind;
      a.href = "#" + hashOf(target);
      kind.appendChild(a);
      if (f.source === "advisor") kind.appendChild(el("span", "source", "advisor"));
      tr.appendChild(kind);
      tr.appendChild(el("td", "tables", list(f.tables).join(", ")));
      tr.appendChild(el("td", "num count", f.count + " / " + f.statements));
      tr.appendChild(el("td", "num total", ms(f.total_ms)));
      tr.appendChild(el("td", "num opt p95", ms(f.p95_ms)));
      tr.appendChild(el("td", "num opt confidence", Number(f.confidence).toFixed(2)));
      tr.appendChild(el("td", "applications", list(f.applications).join(", ")));
      var last = el("td", "opt last-seen"); last.appendChild(when(f.last_seen)); tr.appendChild(last);
      rows.appendChild(tr);
    });
    tbody.replaceChildren(rows);
    if (focusKey) {  // a refresh must not take the keyboard focus away
      Array.prototype.forEach.call(tbody.rows, function (r) {
        if (r.dataset.key === focusKey && r.querySelector("a")) r.querySelector("a").focus();
      });
    }
    var empty = $("empty");
    empty.hidden = !loaded || shown.length > 0;
    empty.textContent = findings.length ? "No findings match the filters." : "No findings yet.";
    renderDetail(s);
  }

  function facts(dl, pairs) {
    dl.replaceChildren();
    pairs.forEach(function (p) {
      if (p[1] === undefined || p[1] === null || p[1] === "") return;
      dl.appendChild(el("dt", null, p[0]));
      var dd = el("dd");
      if (p[1] instanceof Node) dd.appendChild(p[1]); else dd.textContent = String(p[1]);
      if (p[2]) dd.dataset.key = p[2];
      dl.appendChild(dd);
    });
    return pairs.length;
  }
  function value(v) {
    if (Array.isArray(v)) return v.map(value).join(", ");
    if (v !== null && typeof v === "object") return JSON.stringify(v);
    return v;
  }
  var DETAIL_LABELS = {cost_before: "Plan cost before", cost_after: "Plan cost after", parent: "Parent query",
    previous: "Previous query", size_bytes: "Size (bytes)", unfiltered: "Tenant columns not filtered"};
  function label(k) { return DETAIL_LABELS[k] || (k.charAt(0).toUpperCase() + k.slice(1)).replace(/_/g, " "); }

  function renderDetail(s) {
    var box = $("detail"), main = $("main");
    var f = null;
    if (s.detail) {
      var candidates = findings.filter(function (x) { return x.fingerprint === s.detail; });
      f = candidates.filter(function (x) { return !s.detail_kind || x.kind === s.detail_kind; })[0] || candidates[0] || null;
    }
    if (!f) {
      box.hidden = true;
      box.removeAttribute("data-fingerprint");
      box.removeAttribute("data-kind");
      main.classList.remove("with-detail");
      if (s.detail && loaded) { box.hidden = false; main.classList.add("with-detail"); showMissing(s.detail); }
      return;
    }
    box.hidden = false;
    main.classList.add("with-detail");
    if (box.dataset.fingerprint !== f.fingerprint || box.dataset.kind !== f.kind) $("copy-status").textContent = "";
    box.dataset.fingerprint = f.fingerprint;
    box.dataset.kind = f.kind;
    var title = $("detail-title");
    title.replaceChildren(badge(f.severity), document.createTextNode(" " + f.kind));
    $("detail-message").textContent = f.message || "";
    $("detail-example").textContent = f.example || "";
    $("detail-suggestion").textContent = f.suggestion || "";
    $("detail-copy").disabled = !f.suggestion;
    var tags = f.tags && typeof f.tags === "object" ? f.tags : {};
    facts($("detail-facts"), [
      ["Severity", f.severity, "severity"],
      ["Confidence", Number(f.confidence).toFixed(2), "confidence"],
      ["Tables", list(f.tables).join(", "), "tables"],
      ["Occurrences", f.count, "count"],
      ["Statements", f.statements, "statements"],
      ["Total time", ms(f.total_ms) + " ms", "total_ms"],
      ["p95", ms(f.p95_ms) + " ms", "p95_ms"],
      ["First seen", stamp(f.first_seen), "first_seen"],
      ["Last seen", stamp(f.last_seen), "last_seen"],
      ["Applications", list(f.applications).join(", "), "applications"],
      ["Source", f.source === "advisor" ? "index and health advisor" : "runtime traffic", "source"],
      ["Fingerprint", f.fingerprint, "fingerprint"]
    ]);
    var order = ["route", "controller", "action", "framework"];
    Object.keys(tags).sort().forEach(function (k) { if (order.indexOf(k) < 0) order.push(k); });
    var tagPairs = order.filter(function (k) { return list(tags[k]).length; })
      .map(function (k) { return [k, list(tags[k]).join(", "), k]; });
    facts($("detail-tags"), tagPairs);
    $("detail-tags-box").hidden = !tagPairs.length;
    var d = f.details && typeof f.details === "object" ? f.details : {};
    var pairs = Object.keys(d).map(function (k) { return [label(k), value(d[k]), k]; });
    var before = Number(d.cost_before), after = Number(d.cost_after);
    if (d.cost_before !== undefined && d.cost_after !== undefined && before > 0) {
      pairs.push(["Cost reduction", Math.round((1 - after / before) * 100) + "%", "cost_reduction"]);
    }
    facts($("detail-details"), pairs);
    $("detail-details-box").hidden = !pairs.length;
  }
  function showMissing(fp) {
    $("detail-title").textContent = "Finding not found";
    $("detail-message").textContent = "No current finding has the fingerprint " + fp + ".";
    ["detail-example", "detail-suggestion", "detail-facts", "detail-tags", "detail-details"].forEach(function (id) {
      $(id).replaceChildren();
    });
    $("detail-copy").disabled = true;
    $("detail-tags-box").hidden = $("detail-details-box").hidden = true;
  }

  function copy() {
    var text = $("detail-suggestion").textContent, status = $("copy-status");
    status.textContent = "";
    function done(ok) { status.textContent = ok ? "Copied" : "Copy failed: select the text and copy it"; }
    function fallback() {
      var ta = el("textarea");
      ta.value = text;
      ta.setAttribute("readonly", "");
      ta.style.position = "fixed"; ta.style.top = "-1000px"; ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      ta.remove();
      done(ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, fallback);
    } else fallback();
  }

  function storedToken() {
    try { return sessionStorage.getItem("pgloupe-token") || ""; } catch (e) { return ""; }
  }
  $("auth").addEventListener("submit", function (ev) {
    ev.preventDefault();
    try { sessionStorage.setItem("pgloupe-token", $("token").value.trim()); } catch (e) { /* private mode */ }
    $("token").value = "";
    $("auth").hidden = true;
    load();
  });

  var timer = null;
  function load() {
    clearTimeout(timer);
    var ctl = window.AbortController ? new AbortController() : null;
    var abort = ctl ? setTimeout(function () { ctl.abort(); }, 4000) : null;
    var token = storedToken(), headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    fetch("api/findings", {cache: "no-store", headers: headers, signal: ctl ? ctl.signal : undefined})
      .then(function (r) {
        if (r.status === 401) {
          var needed = new Error(token ? "the access token was refused" : "this pgloupe asks for an access token");
          needed.auth = true;
          throw needed;
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) {
        if (!data || !Array.isArray(data.findings)) throw new Error("unexpected response");
        findings = data.findings.filter(function (f) { return f && typeof f === "object"; }).sort(byImpact);
        loaded = true;
        $("error").hidden = true;
        $("auth").hidden = true;
        document.body.dataset.state = "ready";
        $("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ", refreshes every 5 s";
        render();
      })
      .catch(function (e) {
        var banner = $("error");
        banner.textContent = "Could not load findings (" + (e && e.name === "AbortError" ? "timed out" : (e && e.message) || e) +
          "). " + (loaded ? "Showing the last data; retrying every 5 s." : "Retrying every 5 s.");
        banner.hidden = false;
        document.body.dataset.state = e && e.auth ? "auth" : "error";
        if (e && e.auth && $("auth").hidden) {
          $("auth").hidden = false;
          $("token").focus();
        }
      })
      .then(function () {
        clearTimeout(abort);
        document.body.dataset.refreshes = Number(document.body.dataset.refreshes) + 1;
        timer = setTimeout(load, REFRESH_MS);
      });
  }

  $("filter-kind").addEventListener("change", function () { go({kind: this.value}); });
  $("filter-severity").addEventListener("change", function () { go({severity: this.value}); });
  $("filter-app").addEventListener("change", function () { go({app: this.value}); });
  $("filter-clear").addEventListener("click", function () { go({kind: "", severity: "", app: ""}); });
  $("detail-close").addEventListener("click", function () { go({detail: "", detail_kind: ""}); });
  $("detail-copy").addEventListener("click", copy);
  $("findings").tBodies[0].addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr");
    // the link in each row is the keyboard path; a modified click on it may open a new tab
    if (!tr || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    go({detail: tr.dataset.fingerprint, detail_kind: tr.dataset.kind});
    $("detail").focus();
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && state().detail) go({detail: "", detail_kind: ""});
  });
  window.addEventListener("hashchange", render);
  window.addEventListener("popstate", render);
  render();
  load();
})();
</script>
</body>
</html>
"""

_BODY = _HTML.encode()


def index(query: str) -> Response:
    """GET /: the findings page (static: the data comes from /api/findings)."""
    return 200, "text/html; charset=utf-8", _BODY
