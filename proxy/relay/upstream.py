"""The server side of one session: TLS negotiation, the startup exchange, and server bytes relayed to
the client first, analysed second."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from proxy.protocol import wire
from proxy.protocol.startup import (
    ServerStartup,
)

if TYPE_CHECKING:
    from proxy.relay.client import ClientConnection

monotonic = time.monotonic


class UpstreamError(Exception):
    """The upstream server could not be reached or refused the connection's transport."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, client: ClientConnection | None):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.startup = ServerStartup()
        self.negotiation: asyncio.Future | None = None
        self.peer_cert: bytes | None = None  # the upstream's certificate (DER) when TLS is on
        self.ready = False
        self.closed = False
        self.closed_future: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.ready:
            client.transport.write(data)
            self.analyse(data)
            return
        negotiation = self.negotiation
        if negotiation is not None:
            if not negotiation.done():
                if len(data) != 1:
                    negotiation.set_exception(UpstreamError("unexpected data after the server's SSL response"))
                else:
                    negotiation.set_result(data)
            return
        if client is None:
            return  # a cancel connection: the server answers nothing
        try:
            out, rest = self.startup.feed(data)
        except wire.ProtocolError as exc:
            client.fail(f"pgloupe: invalid data from the upstream server: {exc}", "08P01")
            return
        if out:
            client.transport.write(out)
        if self.startup.ready:
            self.ready = True
            client.session_ready(self.startup, rest)

    def analyse(self, data: bytes) -> None:
        client = self.client
        tracker = client.tracker
        if tracker is None:
            return
        try:
            events = tracker.server_data(data, monotonic())
        except Exception as exc:
            client._analysis_failed("server", exc)
            return
        if events:
            put = client.proxy.queue.put
            for event in events:
                put(event)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        if self.negotiation is not None and not self.negotiation.done():
            self.negotiation.set_exception(UpstreamError("server closed the connection during TLS negotiation"))
        if self.client is not None:
            self.client.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.client is not None and not self.client.closed:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and not self.client.closed:
            self.client.transport.resume_reading()
