"""Headless Chromium for the findings page's tests: load a URL (loopback only), dump its DOM into a
small tree, or drive the page from a same-origin harness page that writes what it saw into #out."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y --no-install-recommends chromium)")


# ------------------------------------------------------------------ a small DOM for the dumped page


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def by_id(self, ident: str) -> Node:
        found = self.find_all(id=ident)
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]

    @property
    def hidden(self) -> bool:
        return "hidden" in self.attrs

    def cell(self, cls: str) -> str:
        (td,) = [c for c in self.iter() if c.tag == "td" and cls in (c.attrs.get("class") or "").split()]
        return td.text()


class _TreeBuilder(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# ------------------------------------------------------------------ Chromium and the proxy


def chromium(url: str, *extra: str, budget_ms: int = 5000, timeout: float = 90) -> subprocess.CompletedProcess:
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    with tempfile.TemporaryDirectory(prefix="pgloupe-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--disable-dev-shm-usage", "--no-proxy-server", "--mute-audio",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


_HARNESS = """<!doctype html><html><head><title>harness</title></head><body>
<iframe id="f" src="/" width="%(width)d" height="%(height)d"></iframe><pre id="out"></pre>
<script>
"use strict";
var frame = document.getElementById("f");
function wait(pred, ms) {
  return new Promise(function (resolve, reject) {
    var start = Date.now();
    (function poll() {
      var v = null;
      try { v = pred(); } catch (e) { v = null; }
      if (v) resolve(v); else if (Date.now() - start > ms) reject(new Error("timed out")); else setTimeout(poll, 50);
    })();
  });
}
function report(seen) { document.getElementById("out").textContent = JSON.stringify(seen); }
%(script)s
</script></body></html>"""


def harness(script: str, width: int = 1000, height: int = 600) -> bytes:
    """A page that loads the findings page in a same-origin iframe (#f) and runs ``script`` with
    ``frame``, ``wait(pred, ms)`` (a promise of pred's first truthy value) and ``report(seen)`` (what
    --dump-dom then shows in #out): Chromium's command line has no other way to interact."""
    return (_HARNESS % {"width": width, "height": height, "script": script.strip("\n")}).encode()
