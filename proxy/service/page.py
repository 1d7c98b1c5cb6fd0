"""The findings web page (static/page.html): one self-contained HTML document, inline CSS and vanilla
JavaScript.

It fetches ``api/findings`` (relative, so it also works behind a path prefix), every 5 s, with the
``http_token`` the user typed when the server asks for one (kept in sessionStorage), and keeps
its view in ``location.hash``: ``#kind=...&severity=...&app=...&detail=<fingerprint>&detail_kind=...``
so a URL restores the filters and the open detail. Every value from the API reaches the DOM through
``textContent`` or attribute setters, never as markup. No external resource: it works offline.
"""

from __future__ import annotations

from importlib import resources

from proxy.service.http import Response

# The page is a static file shipped as package data: edited and linted as HTML, not as a Python string.
_BODY = resources.files("proxy.service").joinpath("static/page.html").read_bytes()


def index(query: str) -> Response:
    """GET /: the findings page (static: the data comes from /api/findings)."""
    return 200, "text/html; charset=utf-8", _BODY
