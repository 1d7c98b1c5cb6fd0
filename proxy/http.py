"""A small HTTP/1.1 endpoint for health, metrics, the findings API and page.

GET-only, one request per connection, bounded request size: enough for probes, Prometheus scrapes
and a browser, without another web framework in the proxy process.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable

Response = tuple[int, str, bytes]
Handler = Callable[[str], Response | Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


def json_response(payload, status: int = 200) -> Response:
    return status, "application/json", json.dumps(payload).encode()


def _authorized(head: bytes, token: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
    return False


class HttpServer:
    """With ``token``, every path but the ``public`` ones needs ``Authorization: Bearer <token>``."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], token: str | None = None,
                 public: frozenset[str] = frozenset()):
        self.host = host
        self.port = port
        self.routes = routes
        self.token = token.encode() if token else None
        self.public = public
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3:
                status, ctype, body = 400, "text/plain", b"bad request\n"
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
                    result = handler(query)
                    if asyncio.iscoroutine(result):
                        result = await result
                    status, ctype, body = result
                if parts[0] == "HEAD":
                    body = b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        reason = _REASONS.get(status, "")
        challenge = 'WWW-Authenticate: Bearer realm="pgloupe"\r\n' if status == 401 else ""
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{challenge}Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode() + body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()
