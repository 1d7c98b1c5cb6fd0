"""Keyed hashes of parameter and result values.

pgloupe must tell that a later statement's parameter came from an earlier result (the parent of an
N+1) without ever keeping a value. Values are reduced to a canonical text form first, so an int4
sent in binary by asyncpg hashes like the same number returned in text to psycopg, then hashed
with a per-process secret key (BLAKE2b keyed mode), so the digests cannot be reversed by guessing.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid

INT_OIDS = {20: 8, 21: 2, 23: 4, 26: 4}  # int8, int2, int4, oid -> binary width
TEXT_OIDS = frozenset({0, 18, 19, 25, 705, 1042, 1043})  # unknown, char, name, text, bpchar, varchar
UUID_OID = 2950
BOOL_OID = 16


def canonical(value: bytes, oid: int, fmt: int) -> bytes:
    """The text form of a value where its binary form is easy to decode, else a tagged raw form."""
    if fmt == 0 or oid in TEXT_OIDS:
        return value
    width = INT_OIDS.get(oid)
    if width == len(value):
        return str(int.from_bytes(value, "big", signed=oid != 26)).encode()
    if oid == UUID_OID and len(value) == 16:
        return str(uuid.UUID(bytes=value)).encode()
    if oid == BOOL_OID and len(value) == 1:
        return b"t" if value[0] else b"f"
    return b"\x00bin:%d:" % oid + value


class ValueHasher:
    __slots__ = ("_keyed", "max_bytes")

    def __init__(self, key: bytes | None = None, max_bytes: int = 256):
        # The key block is compressed once; each digest copies that state (a third cheaper than keying anew,
        # and the same digests).
        self._keyed = hashlib.blake2b(key=(key or os.urandom(32))[:64], digest_size=8)
        # Values longer than this are hashed too, but callers use it to skip wide result cells.
        self.max_bytes = max_bytes

    def digest(self, value: bytes | None, oid: int = 0, fmt: int = 0) -> str | None:
        if value is None:
            return None
        h = self._keyed.copy()
        h.update(value if fmt == 0 else canonical(value, oid, fmt))
        return h.hexdigest()

    def text(self, value: bytes) -> str:
        """The digest of a value in text form (literals, text-format cells)."""
        h = self._keyed.copy()
        h.update(value)
        return h.hexdigest()


# Array types whose elements are worth tracing (keys: integers, text, uuids) -> their element type
ARRAY_ELEMENTS = {1005: 21, 1007: 23, 1016: 20, 1028: 26, 1009: 25, 1015: 1043, 1014: 1042, 2951: 2950}
MAX_ELEMENTS = 1024
_ARRAY_HEAD = struct.Struct("!iiI")


def array_elements(value: bytes, oid: int, fmt: int) -> list[tuple[bytes, int, int]] | None:
    """The elements of a one-dimensional array parameter as (value, element oid, format), NULLs left out;
    None when it is not one (a binary array of another type, several dimensions, malformed). A text-format
    value of unknown type counts when it reads as an array literal ('{1,2,3}'), as node-postgres sends them."""
    if fmt == 1:
        element = ARRAY_ELEMENTS.get(oid)
        if element is None or len(value) < 12:
            return None
        ndim, _flags, elemtype = _ARRAY_HEAD.unpack_from(value, 0)
        if ndim == 0:
            return []
        if ndim != 1 or len(value) < 20:
            return None
        count = struct.unpack_from("!i", value, 12)[0]
        pos, out = 20, []
        for _ in range(min(count, MAX_ELEMENTS)):
            if pos + 4 > len(value):
                return None
            size = struct.unpack_from("!i", value, pos)[0]
            pos += 4
            if size < 0:
                continue
            out.append((value[pos:pos + size], elemtype, 1))
            pos += size
        return out
    if oid not in ARRAY_ELEMENTS and oid != 0:
        return None
    items = _array_literal(value)
    return None if items is None else [(v, 0, 0) for v in items[:MAX_ELEMENTS]]


def _array_literal(value: bytes) -> list[bytes] | None:
    """'{1,2,"a b",NULL}' -> [b'1', b'2', b'a b'] (no nested arrays); None when it is not one."""
    if len(value) < 2 or value[:1] != b"{" or value[-1:] != b"}":
        return None
    body = value[1:-1]
    if not body:
        return []
    if b"{" in body:
        return None
    out: list[bytes] = []
    item = bytearray()
    quoted = was_quoted = False
    i = 0
    while i < len(body):
        c = body[i]
        if quoted:
            if c == 0x5C and i + 1 < len(body):  # backslash escape
                i += 1
                item.append(body[i])
            elif c == 0x22:
                quoted = False
            else:
                item.append(c)
        elif c == 0x22:
            quoted = was_quoted = True
        elif c == 0x2C:
            if was_quoted or bytes(item).strip().upper() != b"NULL":
                out.append(bytes(item).strip() if not was_quoted else bytes(item))
            item.clear()
            was_quoted = False
        else:
            item.append(c)
        i += 1
    if quoted:
        return None
    if was_quoted or bytes(item).strip().upper() != b"NULL":
        out.append(bytes(item).strip() if not was_quoted else bytes(item))
    return out
