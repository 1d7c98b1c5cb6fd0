"""PostgreSQL v3 wire format: frame constants, decoders and the few builders the proxy needs.

Pure functions over bytes/memoryview. The proxy relays bytes untouched; these decode only the
messages that carry statement facts, and build the ErrorResponses pgloupe itself must send. The
decoders of command tags and RowDescriptions remember their last few thousand answers: the server
repeats those messages with every execution, and they hold no parameter or row values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Startup-phase request codes (first int32 after the length, no type byte).
PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

HEADER = struct.Struct("!cI")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
INT16 = struct.Struct("!h")
# The server reads every count in a message (parameters, formats, fields, cells) as an unsigned 16-bit
# integer (pq_getmsgint(msg, 2)): 65535 parameter types is a valid Parse, not a negative count.
UINT16 = struct.Struct("!H")
_SOURCE = struct.Struct("!IH")  # a RowDescription field's table OID and column number

# Default upper bound for one message; a length field above it is a protocol error.
DEFAULT_MAX_MESSAGE = 1 << 30


class ProtocolError(Exception):
    """The peer sent bytes that are not valid PostgreSQL protocol."""


class InvalidLength(ProtocolError):
    """A message length below 4 or above the maximum message size: the stream cannot be framed any more."""


def cstring(body: bytes, pos: int) -> tuple[bytes, int]:
    """Read a NUL-terminated string at ``pos``; return it and the position after the NUL."""
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string in message")
    return body[pos:end], end + 1


def text(raw: bytes) -> str:
    """Decode protocol text; invalid UTF-8 must never stop analysis."""
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- frontend messages


@dataclass(slots=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


class Bind:
    """A plain class, not a dataclass: compiled, wire.pxd makes it a C struct (one per execution)."""

    __slots__ = ("portal", "statement", "param_formats", "params", "result_formats")

    def __init__(self, portal: str, statement: str, param_formats: tuple[int, ...],
                 params: tuple[bytes | None, ...], result_formats: tuple[int, ...]):
        self.portal = portal
        self.statement = statement
        self.param_formats = param_formats
        self.params = params
        self.result_formats = result_formats


def _end(body: bytes, pos: int, what: str) -> None:
    """The server rejects a message with bytes left over after its last field (pq_getmsgend)."""
    if pos != len(body):
        raise ProtocolError(f"{what} message has {len(body) - pos} bytes after its last field")


def decode_query(body: bytes) -> str:
    sql, pos = cstring(body, 0)
    _end(body, pos, "Query")
    return text(sql)


def decode_parse(body: bytes) -> Parse:
    name, pos = cstring(body, 0)
    sql, pos = cstring(body, pos)
    if pos + 2 > len(body):
        raise ProtocolError("Parse message too short")
    (n,) = UINT16.unpack_from(body, pos)
    pos += 2
    if pos + 4 * n > len(body):
        raise ProtocolError("Parse parameter types overrun the message")
    oids = struct.unpack_from(f"!{n}I", body, pos) if n else ()
    _end(body, pos + 4 * n, "Parse")
    return Parse(text(name), text(sql), tuple(oids))


def decode_bind(body: bytes) -> Bind:
    # Once per execution on the analysis path: counts and lengths read by hand (C arithmetic once
    # compiled, no struct calls), as the server reads them (counts unsigned, a length of -1 a NULL).
    size = len(body)
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolError("unterminated string in message")
    portal = body[:end]
    pos = end + 1
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string in message")
    stmt = body[pos:end]
    pos = end + 3
    if pos > size:
        raise ProtocolError("Bind message too short")
    nfmt = (body[pos - 2] << 8) | body[pos - 1]
    if nfmt == 0:
        fmts: tuple[int, ...] = ()
    elif pos + 2 * nfmt > size:
        raise ProtocolError("Bind format codes overrun the message")
    else:
        fmts = _int16s(body, pos, nfmt)
        pos += 2 * nfmt
    pos += 2
    if pos > size:
        raise ProtocolError("Bind message too short")
    nparams = (body[pos - 2] << 8) | body[pos - 1]
    if nfmt > 1 and nfmt != nparams:
        raise ProtocolError("Bind has a format code count that is neither 0, 1 nor its parameter count")
    params: list[bytes | None] = []
    for _ in range(nparams):
        if pos + 4 > size:
            raise ProtocolError("Bind parameter overruns the message")
        plen = body[pos]  # (shifted as a 64-bit integer once compiled: a C int would overflow)
        plen = (plen << 24) | (body[pos + 1] << 16) | (body[pos + 2] << 8) | body[pos + 3]
        pos += 4
        if plen == 0xFFFFFFFF:  # -1: NULL
            params.append(None)
            continue
        if plen >= 0x80000000 or pos + plen > size:
            raise ProtocolError("Bind parameter length out of range")
        params.append(body[pos : pos + plen])
        pos += plen
    pos += 2
    if pos > size:
        raise ProtocolError("Bind message too short")
    nres = (body[pos - 2] << 8) | body[pos - 1]
    if nres == 0:
        rfmts: tuple[int, ...] = ()
    elif pos + 2 * nres > size:
        raise ProtocolError("Bind result format codes overrun the message")
    else:
        rfmts = _int16s(body, pos, nres)
    _end(body, pos + 2 * nres, "Bind")
    return Bind(portal.decode("utf-8", "replace") if portal else "", stmt.decode("utf-8", "replace") if stmt else "",
                fmts, tuple(params), rfmts)


def _int16s(body: bytes, pos: int, n: int) -> tuple[int, ...]:
    """``n`` signed 16-bit integers from ``pos`` (format codes)."""
    out = []
    for _ in range(n):
        value = (body[pos] << 8) | body[pos + 1]
        out.append(value - 0x10000 if value >= 0x8000 else value)
        pos += 2
    return tuple(out)


_UNNAMED_TARGETS = {b"P\0": ("P", ""), b"S\0": ("S", "")}


def decode_target(body: bytes) -> tuple[str, str]:
    """Describe/Close: ('S' or 'P', name)."""
    unnamed = _UNNAMED_TARGETS.get(body)
    if unnamed is not None:  # libpq describes the unnamed portal before every prepared execution
        return unnamed
    if not body:
        raise ProtocolError("Describe/Close without a target")
    kind = chr(body[0])
    if kind not in "SP":
        raise ProtocolError("Describe/Close target must be S or P")
    name, pos = cstring(body, 1)
    _end(body, pos, "Describe/Close")
    return kind, text(name)


def decode_execute(body: bytes) -> tuple[str, int]:
    if body == b"\0\0\0\0\0":  # the unnamed portal, all rows: nearly every Execute
        return "", 0
    portal, pos = cstring(body, 0)
    if pos + 4 > len(body):
        raise ProtocolError("Execute message too short")
    _end(body, pos + 4, "Execute")
    return text(portal), INT32.unpack_from(body, pos)[0]


# ---------------------------------------------------------------- backend messages


# Per column: its type OID, and where its values come from (table OID, column number; 0, 0 for a computed one)
RowDescription = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]
_ROW_TYPES: dict[bytes, RowDescription] = {}  # a statement's RowDescription repeats with every execution
_ROW_TYPES_MAX = 1024
_ROW_TYPES_KEY_MAX = 2048


def decode_row_description(body: bytes) -> RowDescription:
    """Each column's type OID, and its source table and column (what the tracker and detectors use)."""
    known = _ROW_TYPES.get(body)
    if known is not None:
        return known
    desc = _row_types(body)
    if len(body) <= _ROW_TYPES_KEY_MAX:  # column names and types: no parameter or row values
        if len(_ROW_TYPES) >= _ROW_TYPES_MAX:
            _ROW_TYPES.clear()
        _ROW_TYPES[body] = desc
    return desc


def _row_types(body: bytes) -> RowDescription:
    if len(body) < 2:
        raise ProtocolError("RowDescription too short")
    (n,) = UINT16.unpack_from(body, 0)
    pos = 2
    oids = []
    sources = []
    for _ in range(n):
        _name, pos = cstring(body, pos)
        if pos + 18 > len(body):
            raise ProtocolError("RowDescription field overruns the message")
        table, column = _SOURCE.unpack_from(body, pos)
        sources.append((table, column))
        oids.append(UINT32.unpack_from(body, pos + 6)[0])
        pos += 18
    return tuple(oids), tuple(sources)


def decode_parameter_description(body: bytes) -> tuple[int, ...]:
    if len(body) < 2:
        raise ProtocolError("ParameterDescription too short")
    (n,) = UINT16.unpack_from(body, 0)
    if 2 + 4 * n > len(body):
        raise ProtocolError("ParameterDescription count out of range")
    return tuple(struct.unpack_from(f"!{n}I", body, 2))


def decode_data_row(body: bytes) -> list[bytes | None]:
    size = len(body)
    if size >= 6 and body[0] == 0 and body[1] == 1:  # one column (lookups, RETURNING id, counts)
        clen = INT32.unpack_from(body, 2)[0]
        if clen == -1:
            return [None]
        if clen >= 0 and 6 + clen <= size:
            return [body[6:6 + clen]]
    if size < 2:
        raise ProtocolError("DataRow too short")
    (n,) = UINT16.unpack_from(body, 0)
    pos = 2
    cells: list[bytes | None] = []
    for _ in range(n):
        if pos + 4 > len(body):
            raise ProtocolError("DataRow cell overruns the message")
        (clen,) = INT32.unpack_from(body, pos)
        pos += 4
        if clen == -1:
            cells.append(None)
            continue
        if clen < 0 or pos + clen > len(body):
            raise ProtocolError("DataRow cell length out of range")
        cells.append(body[pos : pos + clen])
        pos += clen
    return cells


def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields keyed by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = cstring(body, pos + 1)
        fields[code] = text(value)
    return fields


_TAGS: dict[bytes, tuple[str, int | None]] = {}  # tags repeat (SELECT 1, INSERT 0 1): decoded once each
_TAGS_MAX = 4096
_TAG_KEY_MAX = 64  # "INSERT 0 4294967295" and the like: the cache stays under half a megabyte


def decode_command_tag(body: bytes) -> tuple[str, int | None]:
    """Split 'INSERT 0 5' / 'SELECT 3' / 'COPY 7' into (command, rows)."""
    known = _TAGS.get(body)
    if known is not None:
        return known
    if len(body) > _TAG_KEY_MAX:  # not a tag the server repeats: decoded, not remembered
        return _command_tag(body)
    if len(_TAGS) >= _TAGS_MAX:
        _TAGS.clear()
    known = _TAGS[body] = _command_tag(body)
    return known


def _command_tag(body: bytes) -> tuple[str, int | None]:
    tag = text(cstring(body, 0)[0])
    parts = tag.split()
    rows = int(parts[-1]) if len(parts) > 1 and parts[-1].isascii() and parts[-1].isdigit() else None
    command = parts[0] if parts else ""
    if command in ("CREATE", "DROP", "ALTER") and len(parts) > 1:
        command = " ".join(parts[:2])
    return command, rows


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = cstring(body, 0)
    value, _ = cstring(body, pos)
    return text(name), text(value)


# ---------------------------------------------------------------- builders


def message(kind: bytes, body: bytes) -> bytes:
    return HEADER.pack(kind, len(body) + 4) + body


def encode_fields(fields: dict[str, str]) -> bytes:
    return b"".join(code.encode() + value.encode("utf-8", "replace") + b"\0" for code, value in fields.items()) + b"\0"


def error_response(message_text: str, code: str = "08006", severity: str = "FATAL") -> bytes:
    """An ErrorResponse from pgloupe itself (upstream unreachable, protocol violation...)."""
    return message(b"E", encode_fields({"S": severity, "V": severity, "C": code, "M": message_text}))


def startup_message(params: dict[str, str]) -> bytes:
    body = INT32.pack(PROTOCOL_3_0) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()
    ) + b"\0"
    return INT32.pack(len(body) + 4) + body


def request_code(code: int) -> bytes:
    """SSLRequest / GSSENCRequest packet."""
    return INT32.pack(8) + INT32.pack(code)


def sasl_mechanisms(body: bytes) -> list[str]:
    """Mechanisms listed in an AuthenticationSASL body (after the int32 code)."""
    names = []
    pos = 4
    while pos < len(body) and body[pos] != 0:
        name, pos = cstring(body, pos)
        names.append(text(name))
    return names


def authentication_sasl(mechanisms: list[str]) -> bytes:
    body = INT32.pack(10) + b"".join(m.encode() + b"\0" for m in mechanisms) + b"\0"
    return message(b"R", body)
