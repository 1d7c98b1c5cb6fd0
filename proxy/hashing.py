"""Keyed hashes of parameter and result values.

pgloupe must tell that a later statement's parameter came from an earlier result (the parent of an
N+1) without ever keeping a value. Values are reduced to a canonical text form first, so an int4
sent in binary by asyncpg hashes like the same number returned in text to psycopg, then hashed
with a per-process secret key (BLAKE2b keyed mode), so the digests cannot be reversed by guessing.
"""

from __future__ import annotations

import hashlib
import os
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
