"""The channel between the main process and a worker it started: length-prefixed pickles over a
socketpair (never a network peer)."""

from __future__ import annotations

import asyncio
import pickle
import struct

FRAME = struct.Struct("!I")
MAX_FRAME = 256 << 20
CHANNEL_LIMIT = 16 << 20  # bytes a worker lets pile up unread before it drops batches


def encode(obj) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(payload)) + payload


class FrameDecoder:
    """Sans-IO: bytes in, the objects they complete out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = FRAME.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ValueError(f"channel frame of {size} bytes")
            if len(buf) - pos - 4 < size:
                break
            with memoryview(buf) as view:
                out.append(pickle.loads(view[pos + 4: pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        return out


class _Channel(asyncio.Protocol):
    def __init__(self, on_message, on_lost) -> None:
        self.decoder = FrameDecoder()
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            self.on_message(message)

    def connection_lost(self, exc) -> None:
        self.on_lost()
