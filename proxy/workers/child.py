"""A worker process (``python -m proxy.workers.child FD``): its own Proxy on the shared port, its
capture and counters shipped to the main process over the channel it was started with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

import structlog

from proxy.config import prepared_budget
from proxy.events import ConnectionClosed, StatementEvent
from proxy.protocol.capture import CaptureBuffer, SessionGauge
from proxy.relay.admission import RemoteAdmission
from proxy.relay.queue import BATCH_MAX, BATCH_S, EventQueue
from proxy.workers.channel import CHANNEL_LIMIT, FrameDecoder, _Channel, encode
from proxy.workers.pool import START_TIMEOUT_S, WorkerError

STATS_S = 1.0  # how often a worker reports its counters and clients


class Worker:
    """One worker: a Proxy on the shared port, its events and counters sent to the main process."""

    def __init__(self, config: dict, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.channel: _Channel | None = None
        self.queue: EventQueue | None = None
        self.proxy = None
        self.channel_dropped = 0  # statements in batches dropped because the main process lagged
        self.channel_closes_dropped = 0
        self.capture: CaptureBuffer | None = None
        self._stalls_shipped = None  # the newest stall record sent to the main process
        self._stop = asyncio.Event()

    async def run(self) -> int:
        from proxy.relay.listener import Proxy

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        settings = self.config["settings"]
        self.queue = EventQueue(settings.queue_size)
        self.proxy = Proxy(settings, self.queue, first_conn_id=self.config["first_conn_id"])
        self.proxy.admin_relay = self.config["admin_path"]
        self.capture = self.proxy.capture = CaptureBuffer(prepared_limit=prepared_budget(settings))
        self.proxy.admission = RemoteAdmission(self._send)
        _, self.channel = await loop.connect_accepted_socket(
            lambda: _Channel(self._on_message, self._stop.set), self.sock)
        try:
            await self.proxy.start(port=self.config["port"], reuse_port=True)
        except OSError as exc:
            self._send(("failed", f"cannot listen: {exc.strerror or exc}"))
            await asyncio.sleep(0.1)
            return 2
        self._send(("ready", os.getpid()))
        shipper = loop.create_task(self._ship())
        try:
            await self._stop.wait()
        finally:
            await self.proxy.drain(settings.shutdown_timeout)  # events keep shipping meanwhile
            shipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipper
            await self.proxy.close()
            self._flush()
            self._send(("stats", self._stats()))
            await self._drain_channel()
        return 0

    def _on_message(self, message) -> None:
        if message[0] == "stop":
            self._stop.set()
        elif message[0] == "admitted":
            self.proxy.admission.answered(message[1], message[2])
        elif message[0] == "resync":  # the main process dropped a shipment: restart every session's stream
            for client in self.proxy.clients:
                if type(client.tracker) is SessionGauge:
                    client.tracker.gap = True
        elif message[0] == "report":
            # events first: a caller that sees the counters expects the statements behind them sent
            self._flush()
            self._send(("stats", self._stats()))

    def _send(self, message) -> None:
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None and not transport.is_closing():
            transport.write(encode(message))

    def _flush(self) -> None:
        transport = self.channel.transport
        capture = self.capture
        # While the main process lags, sessions stop being captured (and resume at a clean point).
        capture.blocked = transport.is_closing() or transport.get_write_buffer_size() > CHANNEL_LIMIT
        if capture.buf and not transport.is_closing():
            stalls = self.proxy.stalls
            shipped = stalls[-1] if stalls else None
            fresh = list(stalls) if shipped is not None and shipped != self._stalls_shipped else None
            self._stalls_shipped = shipped
            transport.write(encode(("capture", capture.take(), fresh)))
        batch = self.queue.get_nowait(BATCH_MAX)
        while batch:
            transport = self.channel.transport
            if transport.is_closing() or transport.get_write_buffer_size() > CHANNEL_LIMIT:
                for event in batch:
                    if type(event) is StatementEvent:
                        self.channel_dropped += 1
                    elif type(event) is ConnectionClosed:
                        self.channel_closes_dropped += 1
            else:
                self.proxy.discount_stalls(batch)
                transport.write(encode(("events", batch)))
            batch = self.queue.get_nowait(BATCH_MAX)

    async def _ship(self) -> None:
        last_stats = 0.0
        while True:
            await asyncio.sleep(BATCH_S)
            if len(self.queue) or self.capture.buf:
                self._flush()
            now = time.monotonic()
            if now - last_stats >= STATS_S:
                last_stats = now
                self._send(("stats", self._stats()))

    def _stats(self) -> dict:
        queue = self.queue
        # (counters are summed over the workers by the main process, for /metrics)
        counters = {**self.proxy.counters(), "prepared_refused": self.capture.prepared_refused}
        return {
            "pid": os.getpid(),
            "counters": counters,
            "queued": len(queue),
            "dropped": queue.dropped + self.channel_dropped + self.capture.dropped,
            "closes_dropped": queue.closes_dropped + self.channel_closes_dropped,
            "clients": self.proxy.client_rows(),
        }

    async def _drain_channel(self) -> None:
        transport = self.channel.transport
        deadline = time.monotonic() + 5.0
        while transport.get_write_buffer_size() and time.monotonic() < deadline and not transport.is_closing():
            await asyncio.sleep(0.01)
        transport.close()


def _read_config(sock: socket.socket) -> dict:
    sock.settimeout(START_TIMEOUT_S)
    decoder = FrameDecoder()
    while True:
        data = sock.recv(65536)
        if not data:
            raise WorkerError("the main process closed the channel before sending the configuration")
        messages = decoder.feed(data)
        if messages:
            sock.settimeout(None)
            return messages[0]


def main(argv: list[str]) -> int:
    # only the forwarding side: a worker never imports the detectors (sqlglot), which keeps it small
    from proxy import logs
    from proxy.relay.listener import install_uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process stops us
    sock = socket.socket(fileno=int(argv[0]))
    config = _read_config(sock)
    settings = config["settings"]
    logs.configure(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(worker=config["worker"])
    install_uvloop()
    return asyncio.run(Worker(config, sock).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
