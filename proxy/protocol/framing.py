"""Split a PostgreSQL message stream into frames without copying the frames nobody decodes.

Sans-IO: bytes in, (type, body) pairs out. A body is copied only when the caller's ``wanted``
table has that message type set; every other frame is reported with ``body=None`` as soon as
its header is seen and its bytes are skipped, so a 100k-row result costs one header scan per
row and no allocations beyond the tuple.
"""

from __future__ import annotations

from collections.abc import Iterator

from proxy.protocol.wire import DEFAULT_MAX_MESSAGE, HEADER, InvalidLength

Frame = tuple[int, "bytes | None", int]  # (type byte, body or None, length incl. 4-byte length)


def message_types(types: bytes) -> bytearray:
    """A lookup table by message type byte: 1 for each of ``types`` (what a Framer copies, or watches)."""
    table = bytearray(256)
    for t in list(types):  # ints (compiled, iterating a bytes literal directly would give 1-byte strings)
        table[t] = 1
    return table


class Framer:
    __slots__ = ("wanted", "max_message", "max_body", "_head", "_skip", "_body", "_body_need", "_body_type",
                 "at_boundary")

    def __init__(self, wanted: bytearray, max_message: int = DEFAULT_MAX_MESSAGE, max_body: int | None = None):
        # wanted[type] is truthy when frames of that type must be returned with their body;
        # the caller may flip entries between frames (the generator reads it per frame).
        self.wanted = wanted
        self.max_message = max_message
        # A wanted frame longer than this is reported like an unwanted one (body None): what is kept for
        # analysis stays bounded whatever the protocol allows (the bytes are relayed all the same).
        self.max_body = max_message if max_body is None else max_body
        self._head = b""
        self._skip = 0
        self._body: bytearray | None = None
        self._body_need = 0
        self._body_type = 0
        self.at_boundary = True

    def feed(self, data: bytes) -> Iterator[Frame]:
        pos = 0
        n = len(data)
        if self._skip:
            take = min(self._skip, n)
            self._skip -= take
            pos = take
            if self._skip:
                return
        if self._body is not None:
            take = min(self._body_need, n - pos)
            self._body += data[pos : pos + take]
            self._body_need -= take
            pos += take
            if self._body_need:
                return
            body, self._body = bytes(self._body), None
            yield self._body_type, body, len(body) + 4
        if self._head:
            data = self._head + data[pos:]
            self._head = b""
            n = len(data)
            pos = 0
        wanted = self.wanted
        max_message = self.max_message
        max_body = self.max_body
        unpack = HEADER.unpack_from
        while pos < n:
            if n - pos < 5:
                self._head = data[pos:]
                self.at_boundary = False
                return
            mtype = data[pos]
            length = unpack(data, pos)[1]
            if length < 4 or length > max_message:
                raise InvalidLength(f"invalid message length {length} for message type {chr(mtype)!r}")
            end = pos + 1 + length
            if wanted[mtype] and length <= max_body:
                if end <= n:
                    pos = end
                    yield mtype, data[end - length + 4 : end], length
                    continue
                self._body = bytearray(data[pos + 5 :])
                self._body_need = end - n
                self._body_type = mtype
                self.at_boundary = False
                return
            pos = end
            if end > n:
                self._skip = end - n
                self.at_boundary = False
                yield mtype, None, length
                return
            yield mtype, None, length
        self.at_boundary = True
