"""One running pgloupe: the proxy, the analysis consumer and the HTTP endpoint, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections import Counter
from collections.abc import Callable

import structlog

from .config import Settings
from .events import EventQueue, StatementEvent
from .http import HttpServer, json_response
from .server import Proxy

EventHandler = Callable[[list[StatementEvent]], None]


class App:
    def __init__(self, settings: Settings, handlers: list[EventHandler] | None = None):
        self.settings = settings
        self.queue = EventQueue(settings.queue_size)
        self.proxy = Proxy(settings, self.queue)
        self.handlers: list[EventHandler] = list(handlers or [])
        self.statements = Counter()  # command verb -> statements analysed
        self.http: HttpServer | None = None
        self._consumer: asyncio.Task | None = None
        self.log = structlog.get_logger("pgloupe")

    async def start(self) -> None:
        await self.proxy.start()
        address = self.settings.http_address
        if address is not None:
            self.http = HttpServer(*address, routes={"/healthz": self._healthz})
            await self.http.start()
            self.log.info("http_listening", http=f"{self.http.host}:{self.http.port}")
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        await self.proxy.close()
        if self.http is not None:
            await self.http.close()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer

    async def _consume(self) -> None:
        while True:
            batch = await self.queue.get_batch()
            for event in batch:
                self.statements[event.command] += 1
            for handler in self.handlers:
                try:
                    handler(batch)
                except Exception:
                    self.log.exception("event_handler_failed", handler=getattr(handler, "__name__", repr(handler)))

    def _healthz(self, _query: str):
        stats = self.proxy.stats
        return json_response({
            "status": "ok",
            "client_connections": len(self.proxy.clients),
            "connections_total": stats.connections_total,
            "statements": sum(self.statements.values()),
            "events_queued": len(self.queue),
            "events_dropped": self.queue.dropped,
            "analysis_errors": stats.analysis_errors,
            "upstream_errors": stats.upstream_errors,
        })


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_forever(app: App, ready: Callable[[App], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        if ready is not None:
            ready(app)
        await stop.wait()
    finally:
        app.log.info("shutting_down")
        await app.stop()


class BackgroundApp:
    """An App on its own event loop in a thread: for tests and for embedding in synchronous code."""

    def __init__(self, settings: Settings, handlers: list[EventHandler] | None = None, use_uvloop: bool = True):
        self.settings = settings
        self.handlers = handlers
        self.use_uvloop = use_uvloop
        self.app: App | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> App:
        def run() -> None:
            if self.use_uvloop:
                try:
                    import uvloop
                    self.loop = uvloop.new_event_loop()
                except ImportError:
                    self.loop = asyncio.new_event_loop()
            else:
                self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.app = App(self.settings, self.handlers)
                self.loop.run_until_complete(self.app.start())
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
                self._started.set()
                return
            self._started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.app.stop())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="pgloupe", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self.app

    def call(self, fn, *args):
        """Run ``fn`` on the proxy's loop and return its result (thread-safe peek at state)."""
        async def wrapper():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
