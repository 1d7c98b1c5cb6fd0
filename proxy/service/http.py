"""A small HTTP/1.1 endpoint for health, metrics, the findings API and page.

GET and HEAD, and POST of a small JSON body to the few paths that change the findings store (a state,
a deploy marker); one request per connection, bounded request size: enough for probes, Prometheus
scrapes and a browser, without another web framework in the proxy process.

The client to defend against is the developer's own browser: any page it shows can send requests
here. The browser keeps that page from reading the answers, except after DNS rebinding (the page's own
name re-pointed at this address makes it same-origin), so requests naming a host this server does not
answer to are refused before any routing (see ``HttpServer.host_allowed``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import html
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable

import structlog

Response = tuple[int, str, bytes]
Handler = Callable[[str], Response | Awaitable[Response]]
PostHandler = Callable[[dict], Response | Awaitable[Response]]
MAX_POST_BYTES = 16384

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
            403: "Forbidden", 421: "Misdirected Request", 500: "Internal Server Error", 503: "Service Unavailable"}
# For every answer that is not HTML (JSON, metrics, errors): nothing in it may run, load or be framed.
_DATA_POLICY = "default-src 'none'; frame-ancestors 'none'"
_NONE = "'none'"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)
_HANDLER_ATTR = re.compile(rb"""\son[a-z]+="([^"]*)\"""")


def json_response(payload, status: int = 200) -> Response:
    return status, "application/json", json.dumps(payload).encode()


def _sha256(data: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode() + "'"


@functools.lru_cache(maxsize=8)
def page_policy(body: bytes) -> str:
    """The page's Content-Security-Policy: its own inline script and style, pinned by hash (markup that
    got into the DOM some other way cannot run), API calls to its own origin, and nothing else.

    frame-ancestors is 'self' rather than 'none': framing is only a risk from another origin (clickjacking),
    and the browser tests drive the page from a harness page of this same server."""
    scripts = [_sha256(code) for tag, code in _INLINE.findall(body) if tag == b"script"]
    styles = [_sha256(code) for tag, code in _INLINE.findall(body) if tag == b"style"]
    # inline event handler attributes (onsubmit="return false") need CSP 3's 'unsafe-hashes' with their hash
    handlers = [_sha256(html.unescape(v.decode()).encode()) for v in _HANDLER_ATTR.findall(body)]
    if handlers:
        scripts += ["'unsafe-hashes'", *handlers]
    return (f"default-src 'none'; script-src {' '.join(scripts) or _NONE}; style-src {' '.join(styles) or _NONE}; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'")


def host_name(value: bytes) -> str | None:
    """The host a Host header names (port, IPv6 brackets and a trailing dot dropped); None if malformed."""
    value = value.strip().decode("latin-1").lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    host, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return None
    return host.rstrip(".") or None


def _header(head: bytes, name: bytes) -> list[bytes]:
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            values.append(value.strip())
    return values


def _is_loopback(address) -> bool:
    """``address``: a socket address tuple (its host first)."""
    try:
        return address[0] == "localhost" or ipaddress.ip_address(address[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False  # a Unix socket has no address: not one to trust either


def _authorized(head: bytes, token: bytes) -> bool:
    for value in _header(head, b"authorization"):
        scheme, _, credentials = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
    return False


class HttpServer:
    """With ``token``, every path but the ``public`` ones needs ``Authorization: Bearer <token>``.

    ``pages`` are the paths whose HTML gets ``page_policy``; HTML served on any other path (a route an
    embedder or a test adds) brings its own policy.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Handler], token: str | None = None,
                 public: frozenset[str] = frozenset(), hosts: Iterable[str] = (),
                 pages: frozenset[str] = frozenset({"/"}), log=None, posts: dict[str, PostHandler] | None = None):
        self.host = host
        self.port = port
        self.routes = routes
        self.posts = posts or {}  # never public: they need the token whenever one is set
        self.token = token.encode() if token else None
        self.public = public
        self.pages = pages
        self.names = {"localhost", host.lower().rstrip("."), *(h.lower().rstrip(".") for h in hosts)}
        self.log = log if log is not None else structlog.get_logger("pgloupe.http")
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def host_allowed(self, head: bytes) -> bool:
        """The Host must be an IP address, ``localhost``, the listen host or one of ``hosts``.

        Any IP address: DNS rebinding needs a name the attacker controls, and probes and scrapers address
        a pod or container by its IP (behind NAT not the address listened on). No Host at all: browsers
        always send one, so such a request (an HTTP/1.0 probe) is not a page's. A request with the right
        bearer token passes too: a rebound page cannot have it, and scrapers keep working under any name.
        """
        values = _header(head, b"host")
        if not values:
            return True
        name = host_name(values[0]) if len(values) == 1 else None
        if name is not None:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                if name in self.names:
                    return True
        return self.token is not None and _authorized(head, self.token)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        path = ""
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        elif not self.host_allowed(head):
            status, ctype, body = 421, "text/plain", b"this server does not answer to that Host; see http_hosts\n"
        elif parts[0] == "POST" and parts[1].partition("?")[0] in self.posts:
            path = parts[1].partition("?")[0]
            status, ctype, body = await self._post(path, head, reader, writer)
        elif parts[0] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"method not allowed\n"
        else:
            path, _, query = parts[1].partition("?")
            handler = self.routes.get(path)
            if handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            elif self.token is not None and path not in self.public and not _authorized(head, self.token):
                status, ctype, body = 401, "text/plain", b"this endpoint needs Authorization: Bearer <http_token>\n"
            else:
                try:
                    result = handler(query)
                    if asyncio.iscoroutine(result):
                        result = await result
                    status, ctype, body = result
                except Exception as exc:  # the message may hold values: the class name only, here and in the log
                    self.log.error("http_handler_failed", path=path, error=type(exc).__name__)
                    status, ctype, body = 500, "text/plain", b"internal server error\n"
        writer.write(self._head(status, ctype, body, path) + (b"" if parts[:1] == ["HEAD"] else body))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def _post(self, path: str, head: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> Response:
        """A JSON body, bounded. ``application/json`` is required: a page of another origin cannot send
        it without a CORS preflight, which this server never grants (so no cross-site POST). Without
        ``http_token`` only loopback clients may change anything."""
        peer = writer.get_extra_info("peername")
        if self.token is not None and not _authorized(head, self.token):
            return 401, "text/plain", b"this endpoint needs Authorization: Bearer <http_token>\n"
        # without a token: only on a loopback listen address, and from loopback (a sidecar or reverse proxy
        # in front of a wider address would make every client look local)
        if self.token is None and not (_is_loopback((self.host,)) and _is_loopback(peer)):
            return 403, "text/plain", b"set http_token to change findings over the network\n"
        if _header(head, b"transfer-encoding"):
            return 400, "text/plain", b"send the body with a Content-Length, not chunked\n"
        ctype = b"".join(_header(head, b"content-type")[:1]).split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return 415, "text/plain", b"send the body as Content-Type: application/json\n"
        lengths = _header(head, b"content-length")
        if len(lengths) != 1 or not lengths[0].isdigit():
            return 411, "text/plain", b"Content-Length is required\n"
        if len(lengths[0]) > 9 or int(lengths[0]) > MAX_POST_BYTES:
            return 413, "text/plain", b"body too large\n"
        length = int(lengths[0])
        if any(v.lower() == b"100-continue" for v in _header(head, b"expect")):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits a second for it before a large body
        try:
            raw = await asyncio.wait_for(reader.readexactly(length), 10)
            payload = json.loads(raw)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return 400, "text/plain", b"incomplete body\n"
        except (ValueError, RecursionError):
            return 400, "text/plain", b"the body is not JSON\n"
        if not isinstance(payload, dict):
            return 400, "text/plain", b"the body must be a JSON object\n"
        try:
            result = self.posts[path](payload)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except Exception as exc:  # the class name only: the message may hold what was posted
            self.log.error("http_handler_failed", path=path, error=type(exc).__name__)
            return 500, "text/plain", b"internal server error\n"

    def _head(self, status: int, ctype: str, body: bytes, path: str) -> bytes:
        """The same for HEAD as for GET, Content-Length included."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", f"Content-Type: {ctype}",
                 f"Content-Length: {len(body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                 "Referrer-Policy: no-referrer", "Connection: close"]
        if status == 401:
            lines.append('WWW-Authenticate: Bearer realm="pgloupe"')
        elif status == 405:
            lines.append("Allow: GET, HEAD" + (", POST" if path in self.posts else ""))
        if not ctype.startswith("text/html"):
            lines += [f"Content-Security-Policy: {_DATA_POLICY}", "X-Frame-Options: DENY"]
        elif path in self.pages:
            lines += [f"Content-Security-Policy: {page_policy(body)}", "X-Frame-Options: SAMEORIGIN"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
