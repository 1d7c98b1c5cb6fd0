"""Running an App: in the foreground until a signal (``serve_forever``), or on a thread of its own
(``BackgroundApp``: tests, ``pgloupe demo``, the CI gate); and the collector tuning they share."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Callable

from proxy.config import ConfigError, Settings
from proxy.logs import exception_summary
from proxy.service.app import App, EventHandler

# Young-generation collections every this many allocations (CPython's default is 700). The analysis
# allocates a few objects per statement and keeps each unit of work alive until it closes: at 700 the
# collector ran every hundred statements or so and took about a tenth of the analysis's CPU.
GC_GEN0_THRESHOLD = 10_000

def tune_gc() -> None:
    """For a long-running pgloupe process, once started: what is loaded by now (modules, sqlglot's
    tables) lives as long as the process, so later full collections need not look at it."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def serve_forever(app: App, ready: Callable[[App], None] | None = None,
                        reread: Callable[[], Settings] | None = None) -> None:
    """Run until SIGINT/SIGTERM; on SIGHUP, ``reread`` the settings and reload what can be reloaded."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    reloading: set[asyncio.Task] = set()

    async def reload() -> None:
        try:
            await app.reload(reread())
        except ConfigError as exc:
            app.log.error("config_reload_failed", reason=str(exc), hint="the previous configuration stays in force")
        except Exception as exc:
            app.log.error("config_reload_failed", **exception_summary(exc))

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    if reread is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    await app.start()
    tune_gc()
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
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
