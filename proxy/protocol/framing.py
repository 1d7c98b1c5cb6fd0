"""Split a PostgreSQL message stream into frames without copying the frames nobody decodes.

Sans-IO: bytes in, (type, body) pairs out. A body is copied only when the caller's ``wanted``
table has that message type set; every other frame is reported with ``body=None`` as soon as
its header is seen and its bytes are skipped, so a 100k-row result costs one header scan per
row and no allocations beyond the tuple.
"""

from __future__ import annotations

from collections.abc import Iterator

from proxy.protocol.wire import DEFAULT_MAX_MESSAGE, InvalidLength

Frame = tuple[int, "bytes | None", int]  # (type byte, body or None, length incl. 4-byte length)


def message_types(types: bytes) -> bytearray:
    """A lookup table by message type byte: 1 for each of ``types`` (what a Framer copies, or watches)."""
    table = bytearray(256)
    for t in list(types):  # ints (compiled, iterating a bytes literal directly would give 1-byte strings)
        table[t] = 1
    return table


class Framer:
    """Frames pulled one at a time: ``start(data)``, then ``next()`` until it is false, each true one
    leaving the frame in ``mtype``, ``body`` and ``length``. A pull, not a generator, so that a
    compiled caller reads frames through C calls and fields instead of resuming a generator and
    unpacking a tuple per frame; ``feed`` is the generator for everyone else."""

    __slots__ = ("wanted", "max_message", "max_body", "_head", "_skip", "_body", "_body_need", "_body_type",
                 "at_boundary", "_data", "_pos", "_n", "mtype", "body", "length")

    def __init__(self, wanted: bytearray, max_message: int = DEFAULT_MAX_MESSAGE, max_body: int | None = None):
        # wanted[type] is truthy when frames of that type must be returned with their body;
        # the caller may flip entries between frames (each frame reads it as it is framed).
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
        self._data = b""
        self._pos = 0
        self._n = 0
        self.mtype = 0
        self.body: bytes | None = None
        self.length = 0

    def feed(self, data: bytes) -> Iterator[Frame]:
        self.start(data)
        while self.next():
            yield self.mtype, self.body, self.length

    def start(self, data: bytes) -> None:
        """The next chunk of the stream: its frames are pulled with ``next``."""
        self._data = data if type(data) is bytes else bytes(data)
        self._pos = 0
        self._n = len(data)

    def next(self) -> bool:
        """The next frame of the chunk (and of what earlier chunks left unfinished) into ``mtype``,
        ``body`` (None when not wanted, or not all of it is here yet) and ``length`` (with its 4-byte
        length); False once the chunk holds no further whole header."""
        data = self._data
        pos = self._pos
        n = self._n
        if self._skip:
            take = min(self._skip, n - pos)
            self._skip -= take
            pos += take
            if self._skip:
                return self._drained()
        if self._body is not None:
            take = min(self._body_need, n - pos)
            self._body += data[pos : pos + take]
            self._body_need -= take
            self._pos = pos + take
            if self._body_need:
                return self._drained()
            body = bytes(self._body)
            self._body = None
            self.mtype = self._body_type
            self.body = body
            self.length = len(body) + 4
            return True
        if self._head:
            data = self._data = self._head + data[pos:]
            self._head = b""
            n = self._n = len(data)
            pos = 0
        if pos >= n:
            self.at_boundary = True
            return self._drained()
        if n - pos < 5:
            self._head = data[pos:]
            self.at_boundary = False
            return self._drained()
        mtype = data[pos]
        # the header's big-endian length, by hand: C arithmetic once compiled, no struct call
        length = data[pos + 1]  # (shifted as a 64-bit integer once compiled: a C int would overflow)
        length = (length << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
        if length < 4 or length > self.max_message:
            self._pos = n
            raise InvalidLength(f"invalid message length {length} for message type {chr(mtype)!r}")
        end = pos + 1 + length
        self.mtype = mtype
        self.length = length
        if self.wanted[mtype] and length <= self.max_body:
            if end <= n:
                self._pos = end
                self.body = data[end - length + 4 : end]
                return True
            self._body = bytearray(data[pos + 5 :])
            self._body_need = end - n
            self._body_type = mtype
            self.at_boundary = False
            return self._drained()
        self.body = None
        if end > n:
            self._skip = end - n
            self.at_boundary = False
            self._drained()
        else:
            self._pos = end
        return True

    def _drained(self) -> bool:
        """The chunk is used up: not kept past it."""
        self._data = b""
        self._pos = 0
        self._n = 0
        return False
