"""The startup phase, sans-IO: the client's first packet, and the server's replies up to ReadyForQuery.

Nothing here sees a password: the client's authentication messages are relayed untouched and never
parsed. The server side is parsed frame by frame only until the session is ready, for two reasons:
to learn the backend's cancel key and parameters, and to withdraw SCRAM-SHA-256-PLUS from the
mechanisms offered, because TLS ends at the proxy and channel binding to the server's certificate
can never succeed from the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.protocol import wire

MAX_STARTUP_PACKET = 10000  # the server's own limit
CHANNEL_BINDING_HINT = (
    "pgloupe ends TLS, so SCRAM channel binding to the server's certificate cannot succeed through it: "
    "connect with channel_binding=disable, or give pgloupe the server's own certificate and key (tls_cert, tls_key)"
)


@dataclass(slots=True)
class SSLRequest:
    pass


@dataclass(slots=True)
class GSSEncRequest:
    pass


@dataclass(slots=True)
class CancelRequest:
    raw: bytes


@dataclass(slots=True)
class StartupMessage:
    version: int
    params: dict[str, str]
    raw: bytes

    def encode(self) -> bytes:
        body = wire.INT32.pack(self.version) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in self.params.items()
        ) + b"\0"
        return wire.INT32.pack(len(body) + 4) + body


StartupRequest = SSLRequest | GSSEncRequest | CancelRequest | StartupMessage


class StartupLengthError(wire.ProtocolError):
    """Not a startup packet at all (a TLS ClientHello sent after an 'N', an HTTP request...): the server
    closes such a connection without a word, so a client's TLS layer reports an end of stream rather than
    a protocol error it would misread."""


class UnsupportedProtocol(wire.ProtocolError):
    """A startup packet for a protocol version the server does not speak (it answers 0A000)."""


def parse_startup(buf: bytes) -> tuple[StartupRequest, int] | None:
    """Parse the first packet in ``buf``; None while it is incomplete."""
    if len(buf) < 4:
        return None
    (length,) = wire.INT32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise StartupLengthError(f"invalid startup packet length {length}")
    if len(buf) < length:
        return None
    (code,) = wire.INT32.unpack_from(buf, 4)
    raw = bytes(buf[:length])
    if code == wire.SSL_REQUEST and length == 8:
        return SSLRequest(), length
    if code == wire.GSSENC_REQUEST and length == 8:
        return GSSEncRequest(), length
    if code == wire.CANCEL_REQUEST and length >= 12:
        return CancelRequest(raw), length
    if code >> 16 != 3:
        raise UnsupportedProtocol(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    parts = raw[8:].split(b"\0")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise wire.ProtocolError("startup packet is not NUL-terminated")
    items = parts[:-2]
    if len(items) % 2:
        raise wire.ProtocolError("startup packet has a parameter name without a value")
    params = {wire.text(items[i]): wire.text(items[i + 1]) for i in range(0, len(items), 2)}
    return StartupMessage(code, params, raw), length


@dataclass(slots=True)
class ServerStartup:
    """Server messages from the StartupMessage to the first ReadyForQuery."""

    backend_key: bytes | None = None  # process id + secret, as sent (longer in protocol 3.2)
    parameters: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    failed: str | None = None  # SQLSTATE of a startup/authentication error
    transaction_status: str = "I"
    # True when the client sees the server's own certificate (pgloupe was given the server's
    # certificate and key): then tls-server-end-point channel binding works end to end.
    keep_channel_binding: bool = False
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Return (bytes for the client, bytes after ReadyForQuery that belong to the session)."""
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        while len(buf) - pos >= 5:
            mtype = buf[pos]
            (length,) = wire.UINT32.unpack_from(buf, pos + 1)
            if length < 4 or length > MAX_STARTUP_PACKET * 100:
                raise wire.ProtocolError(f"invalid message length {length} during startup")
            end = pos + 1 + length
            if end > len(buf):
                break
            body = bytes(buf[pos + 5 : end])
            frame = buf[pos:end]
            if mtype == 0x52 and len(body) >= 4 and wire.INT32.unpack_from(body, 0)[0] == 10:
                mechanisms = wire.sasl_mechanisms(body)
                kept = [m for m in mechanisms if not m.endswith("-PLUS")]
                if kept != mechanisms and kept and not self.keep_channel_binding:
                    frame = wire.authentication_sasl(kept)
            elif mtype == 0x4B and len(body) >= 8:
                self.backend_key = body
            elif mtype == 0x53:
                name, value = wire.decode_parameter_status(body)
                self.parameters[name] = value
            elif mtype == 0x45:
                fields = wire.decode_fields(body)
                self.failed = fields.get("C", "XX000")
                if "channel binding" in fields.get("M", "") and "H" not in fields:
                    fields["H"] = CHANNEL_BINDING_HINT
                    frame = wire.message(b"E", wire.encode_fields(fields))
            out += frame
            pos = end
            if mtype == 0x5A:
                self.ready = True
                self.transaction_status = chr(body[0]) if body else "I"
                rest = bytes(buf[pos:])
                out += rest
                buf.clear()
                return bytes(out), rest
        del buf[:pos]
        return bytes(out), b""


def cancel_request(backend_key: bytes) -> bytes:
    return wire.INT32.pack(8 + len(backend_key)) + wire.INT32.pack(wire.CANCEL_REQUEST) + backend_key
