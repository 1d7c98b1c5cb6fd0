"""A minimal raw PostgreSQL protocol client for tests that must see the exact bytes on the wire."""

from __future__ import annotations

import socket
import struct

from proxy.protocol import wire

NET_TIMEOUT = 10.0  # every socket wait is bounded by this


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_message(sock: socket.socket) -> tuple[bytes, bytes]:
    mtype, length = struct.unpack("!cI", recv_exact(sock, 5))
    return mtype, recv_exact(sock, length - 4)


def read_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Messages up to ReadyForQuery, or up to a FATAL error (after which the server closes)."""
    messages = []
    while True:
        mtype, body = recv_message(sock)
        messages.append((mtype, body))
        if mtype == b"Z":
            return messages
        if mtype == b"E" and wire.decode_fields(body).get("V") == "FATAL":
            return messages


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT)
    sock.settimeout(NET_TIMEOUT)
    return sock
