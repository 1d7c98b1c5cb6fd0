"""The bounded, non-blocking hand-off of statement events from the forwarding loop to analysis."""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.events import ConnectionClosed, StatementEvent

# Events leave for analysis in batches, at most every BATCH_S seconds and BATCH_MAX at a time: one
# hand-off per batch (to the analysis thread, or over a worker's channel), not one per statement.
BATCH_S = 0.02
BATCH_MAX = 5000


# Bytes of workers' captured sessions the main process keeps waiting for analysis (a few seconds of
# busy traffic); beyond it a batch is dropped and the sessions in it resynchronise (proxy.capture).
CAPTURE_BACKLOG = 64 << 20


# Characters of SQL in the statement events waiting for analysis (one process, or a worker's own queue).
EVENT_BACKLOG = 64 << 20


# Captured bytes the analysis takes in one batch: what is replayed into events at once stays bounded.
BATCH_BYTES = 8 << 20


class EventQueue:
    """Bounded, non-blocking hand-off from the proxy to analysis.

    ``put`` never waits: when the queue is full (``maxsize`` events, or ``event_bytes`` of their SQL
    texts) the event is dropped and counted, because a slow analyser must never slow a client down.
    """

    def __init__(self, maxsize: int = 10000, capture_limit: int = CAPTURE_BACKLOG, event_bytes: int = EVENT_BACKLOG):
        self.maxsize = maxsize
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None
        self.dropped = 0  # statement events dropped because the queue was full
        self.accepted = 0  # statement events queued
        self.closes_dropped = 0  # connection-end markers dropped (the unit then ends by its idle timer)
        # Workers' captured bytes waiting for the trackers (proxy.capture.Captured), bounded in bytes
        self.capture_limit = capture_limit
        self.capture_bytes = 0
        self.event_bytes_limit = event_bytes  # characters of SQL in the events waiting
        self.event_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: StatementEvent | ConnectionClosed) -> bool:
        statement = type(event) is StatementEvent
        size = len(event.sql) if statement else 0
        if len(self._items) >= self.maxsize or self.event_bytes + size > self.event_bytes_limit:
            if statement:
                self.dropped += 1
            else:
                self.closes_dropped += 1
            return False
        self._items.append(event)
        if statement:
            self.accepted += 1
            self.event_bytes += size
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def put_capture(self, item) -> bool:
        """A worker's capture (or a control item with no bytes): False, and nothing queued, when the
        bytes waiting would pass ``capture_limit``."""
        size = len(item.raw)
        if size and self.capture_bytes + size > self.capture_limit:
            return False
        self.capture_bytes += size
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _taken(self, batch: list) -> list:
        if self.capture_bytes:
            for item in batch:
                raw = getattr(item, "raw", None)
                if raw is not None:
                    self.capture_bytes -= len(raw)
        if self.event_bytes:
            for item in batch:
                if type(item) is StatementEvent:
                    self.event_bytes -= len(item.sql)
        return batch

    def drain(self) -> list:
        items = list(self._items)
        self._items.clear()
        return self._taken(items)

    async def wait(self) -> None:
        """Until at least one event is queued."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def get_nowait(self, limit: int, max_bytes: int | None = None) -> list:
        """Up to ``limit`` items, oldest first (maybe none); with ``max_bytes``, no more captured bytes than
        that (but at least one item): what a batch holds while it is analysed stays bounded too."""
        items = self._items
        if max_bytes is not None and self.capture_bytes > max_bytes:
            batch, size = [], 0
            while items and len(batch) < limit and (not batch or size < max_bytes):
                item = items.popleft()
                size += len(getattr(item, "raw", b""))
                batch.append(item)
            return self._taken(batch)
        if len(items) <= limit:
            batch = list(items)
            items.clear()
            return self._taken(batch)
        return self._taken([items.popleft() for _ in range(limit)])
