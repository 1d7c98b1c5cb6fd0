"""One running pgloupe: the proxy, the analysis consumer and the HTTP endpoint, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import structlog

from detectors.config import DetectorConfig
from detectors.pipeline import Pipeline
from detectors.review import Review, review

from .admin import AdminConsole, startup_warnings
from .alerts import AlertConfig, AlertSender
from .capture import replay
from .config import ConfigError, Settings
from .events import BATCH_BYTES, BATCH_MAX, BATCH_S, ConnectionClosed, EventQueue, StatementEvent
from .hashing import ValueHasher
from .http import HttpServer, json_response
from .logs import exception_summary
from .metrics import exposition, registry_for
from .page import index as findings_page
from .server import Proxy, install_uvloop  # noqa: F401  (re-exported for the CLI)
from .workers import WorkerPool

TICK_S = 0.25
REVIEW_TIMEOUT_S = 60.0
MAX_REVIEWED = 64  # databases whose catalog review is kept (as the pipeline's MAX_DATABASES)
# Statements waiting while nothing has been analysed for this long: the analysis is stalled, and
# /healthz fails (a probe restarts a pgloupe that silently stopped finding anything).
STALL_S = 10.0
WATCH_S = 1.0
STOP_STEP_S = 5.0
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}

EventHandler = Callable[[list[StatementEvent]], None]
# open even with http_token: probes need /healthz (counts only), and the page is static (it asks the
# user for the token and sends it with each API call)
PUBLIC_PATHS = frozenset({"/healthz", "/"})


def _reason(exc: BaseException) -> str:
    """The first line of a connection or catalog error (the server's words: no statement values in
    catalog queries), for a log line."""
    return (str(exc).splitlines() or [""])[0][:200]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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


class App:
    def __init__(self, settings: Settings, handlers: list[EventHandler] | None = None):
        self.settings = settings
        self.queue = EventQueue(settings.queue_size)
        self.analysing = 0  # items of the batch on the analysis thread now (counted as queued)
        # One key for the trackers (here or replaying the workers' captures) and the pipeline's literals
        key = settings.hash_key.encode() if settings.hash_key else os.urandom(32)
        self.proxy = Proxy(settings, self.queue, hasher=ValueHasher(key))
        self.workers = WorkerPool(self, settings.workers) if settings.workers else None
        self.handlers: list[EventHandler] = list(handlers or [])
        self.log = structlog.get_logger("pgloupe")
        try:
            self.detector_config = DetectorConfig.from_mapping(settings.extra.get("detectors"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[detectors]: {exc}") from exc
        upstream = settings.upstream_target
        self.database = upstream.database or upstream.user or "postgres"  # the upstream URL's database
        self.pipeline = Pipeline(self.detector_config, hasher=self.proxy.hasher,
                                 memory_mb=settings.analysis_memory_mb, database=self.database)
        try:
            self.alert_config = AlertConfig.from_mapping(settings.extra.get("alerts"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[alerts]: {exc}") from exc
        self.alerts = AlertSender(self.alert_config, self.log)
        self.pipeline.listeners.append(self.alerts.on_finding)
        self._advice_alerted: dict[str, str] = {}  # advisor finding -> severity already alerted
        self.proxy.admin_console = AdminConsole(self)
        self.pipeline.on_error = self._detector_failed
        self.statements = Counter()  # command verb -> statements analysed
        self.http: HttpServer | None = None
        self._tasks: list[asyncio.Task] = []
        # One worker thread runs the detectors: analysis never runs inside a forwarding callback.
        self._analysis = ThreadPoolExecutor(1, thread_name_prefix="pgloupe-analysis")
        self.schema_errors = 0
        # per database clients use: the latest catalog snapshot, advice and health ratios
        self.reviews: dict[str, Review] = {}
        self._refreshed: dict[str, float] = {}  # database -> when its catalog was last read (monotonic)
        self._catalog_failures: dict[str, int] = {}  # database -> reads failed in a row
        self.advice_errors = 0
        self._stopping = False
        self._index_first_seen: dict[str, dict[str, float]] = {}  # database -> index name -> first seen
        self.log = structlog.get_logger("pgloupe")
        # Analysis health: failures contained per batch/step, and progress for the stall watch
        self.analysis_failures = 0
        self._failures_logged: set[str] = set()
        self._progress = (-1, -1)
        self._progress_at = time.monotonic()
        self.health_reasons: list[str] = []
        self.stalled_s = 0.0

    async def start(self) -> None:
        for event, fields in startup_warnings(self.settings):
            self.log.warning(event, **fields)
        if self.workers is not None:
            await self.workers.start()
        else:
            await self.proxy.start()
        address = self.settings.http_address
        if address is not None:
            registry = registry_for(self)
            if not self.settings.http_token and not _loopback(address[0]):
                self.log.warning("http_without_token", http=f"{address[0]}:{address[1]}",
                                 hint="set http_token: the findings and metrics are readable by anyone who can connect")
            self.http = HttpServer(*address, token=self.settings.http_token, public=PUBLIC_PATHS,
                                   hosts=self.settings.http_hosts, log=self.log, routes={
                "/": findings_page,
                "/healthz": self._healthz,
                "/api/findings": self._findings,
                "/metrics": lambda _query: self._metrics(registry),
            })
            await self.http.start()
            self.log.info("http_listening", http=f"{self.http.host}:{self.http.port}")
        if self.workers is not None and self.settings.analysis_priority != "normal":
            # Only with workers: in one process the forwarding loop shares the GIL with this thread, and
            # would wait on it whenever the scheduler left it holding the GIL.
            await self.analyse(self._lower_priority, self.settings.analysis_priority)
        loop = asyncio.get_running_loop()
        self.alerts.start()
        self._tasks = [loop.create_task(self._consume(), name="analysis"),
                       loop.create_task(self._tick(), name="tick"),
                       loop.create_task(self._refresh_schema_periodically(), name="catalog"),
                       loop.create_task(self._watch_analysis(), name="watch")]

    async def stop(self) -> None:
        """Stop everything, each step bounded: a stuck peer must not keep the process from exiting."""
        async def bounded(coro, what: str, limit: float = STOP_STEP_S) -> None:
            try:
                await asyncio.wait_for(coro, limit)
            except Exception as exc:  # TimeoutError or the step's own failure: note it and go on
                self.log.warning("stop_step_incomplete", step=what, error=type(exc).__name__)

        self._stopping = True
        drain_s = self.settings.shutdown_timeout
        if self.workers is not None:
            # each worker drains its sessions; the pool kills one that outlives the drain by 15 s
            await bounded(self.workers.stop(), "workers", drain_s + 20.0)
        else:
            await bounded(self.proxy.drain(drain_s), "drain", drain_s + STOP_STEP_S)
        await bounded(self.proxy.close(), "proxy")
        if self.http is not None:
            await bounded(self.http.close(), "http")
        for task in self._tasks:
            task.cancel()
        await bounded(asyncio.gather(*self._tasks, return_exceptions=True), "tasks")
        # units still open are complete now: judge them
        await bounded(self.analyse(lambda batch: self.pipeline.process(replay(batch)), self.queue.drain()), "drain")
        await bounded(self.analyse(self.pipeline.flush), "flush")
        await bounded(self.alerts.stop(), "alerts")  # after the flush: its findings get their chance to go out
        self._analysis.shutdown(wait=False, cancel_futures=True)

    def _lower_priority(self, priority: str) -> None:
        """On the analysis thread: Linux schedules each thread by its own policy and nice value."""
        tid = threading.get_native_id()
        try:
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
        except (OSError, AttributeError) as exc:  # not Linux, or not allowed: analysis runs at normal priority
            self.log.warning("analysis_priority_not_set", priority=priority, reason=str(exc))

    async def analyse(self, fn, *args):
        """Run ``fn`` on the analysis thread (the pipeline is only ever touched from there)."""
        return await asyncio.get_running_loop().run_in_executor(self._analysis, fn, *args)

    def _failed(self, step: str, exc: BaseException, **fields) -> None:
        """A contained failure of one analysis step: counted, and logged once per step and cause (a bug
        that fires on every statement must not flood the log), with what failed and where, never a value."""
        self.analysis_failures += 1
        summary = exception_summary(exc)
        key = f"{step}|{summary['error']}|{summary.get('where', '')}"
        if key not in self._failures_logged and len(self._failures_logged) < 1000:
            self._failures_logged.add(key)
            self.log.error("analysis_step_failed", step=step, **summary, **fields)

    def _detector_failed(self, ev) -> None:
        """On the analysis thread: a detector raised on one event (the batch's others go on)."""
        self._failed("detectors", sys.exc_info()[1] or RuntimeError("detector failed"),
                     conn=getattr(ev, "conn_id", None))

    async def _consume(self) -> None:
        while True:
            try:
                await self.queue.wait()
                # Let a batch build up: thread switches (and the GIL hand-overs they cost an in-process
                # forwarding loop) stay rare.
                await asyncio.sleep(BATCH_S)
                batch = self.queue.get_nowait(BATCH_MAX, BATCH_BYTES)
                # still queued until analysed: a backlog taken in one batch must not read as an empty queue
                self.analysing = len(batch)
                try:
                    await self._analyse_batch(batch)
                finally:
                    self.analysing = 0
            except Exception as exc:  # never the end of the loop: the next batch is analysed
                self._failed("batch", exc)

    async def _analyse_batch(self, batch: list) -> None:
        if self.workers is None:
            self.proxy.discount_stalls(batch)
        else:  # the workers' captured sessions, through their trackers
            try:
                batch = await self.analyse(replay, batch, lambda exc: self._failed("replay", exc))
            except Exception as exc:
                self._failed("replay", exc)
                return
        statements = [e for e in batch if not isinstance(e, ConnectionClosed)]
        for event in statements:
            self.statements[event.command] += 1
        for handler in self.handlers:
            try:
                handler(statements)
            except Exception as exc:
                self._failed("event_handler", exc, handler=getattr(handler, "__name__", type(handler).__name__))
        try:
            await self.analyse(self.pipeline.process, batch)
        except Exception as exc:
            self._failed("pipeline", exc, events=len(batch))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if len(self.queue) or self.pipeline.events < self.queue.accepted:
                continue  # analysis is behind: idle gaps measured now would split units that are not idle
            try:
                await self.analyse(self.pipeline.tick, time.time())
            except Exception as exc:
                self._failed("tick", exc)

    def _analysed(self) -> tuple[int, int]:
        """Progress counters the analysis thread moves (read without a lock: plain ints)."""
        replayed = 0
        if self.workers is not None:
            replayed = sum(slot.replayer.records for slot in self.workers.slots if slot.replayer is not None)
        return self.pipeline.events, replayed

    async def _watch_analysis(self) -> None:
        """Health of the analysis itself: a backlog with no progress, or a task that ended."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                self.check_health()
            except Exception as exc:
                self._failed("watch", exc)

    def check_health(self) -> list[str]:
        now = time.monotonic()
        progress = self._analysed()
        if progress != self._progress:
            self._progress, self._progress_at = progress, now
        backlog = len(self.queue) + self.analysing
        reasons = []
        self.stalled_s = now - self._progress_at if backlog else 0.0
        if backlog and self.stalled_s > STALL_S:
            reasons.append(f"analysis stalled: {backlog} items waiting, nothing analysed for {self.stalled_s:.0f}s")
        if not self._stopping:
            for task in self._tasks:
                if task.done() and task.get_name() != "watch":
                    reasons.append(f"analysis task {task.get_name()} has stopped")
        self.health_reasons = reasons
        return reasons

    @property
    def review(self) -> Review | None:
        """The upstream database's review."""
        return self.reviews.get(self.database)

    def catalog_dsn(self, database: str) -> str:
        """The side connection's URL for ``database``: catalog_dsn (default the upstream URL) with its
        database replaced, so one role reads the catalog of every database clients use."""
        from urllib.parse import urlsplit, urlunsplit

        base = self.detector_config.catalog_dsn or self.settings.upstream
        return urlunsplit(urlsplit(base)._replace(path="/" + database))

    async def refresh_schema(self, database: str | None = None) -> bool:
        """Read the catalog and review ``database`` now (None: the upstream's, then every other database
        clients used); False (and a log line) when the upstream's (or the one asked) cannot be read.
        Never raises: the catalog and the advisor each survive their own failures."""
        databases = [database] if database is not None else [self.database] + [
            db for db in list(self.pipeline.databases) if db != self.database]
        first = True
        for db in databases:
            try:
                ok = await self._refresh_database(db)
            except Exception as exc:
                self.schema_errors += 1
                self._failed("catalog", exc)
                ok = False
            if db == databases[0]:
                first = ok
        return first

    async def _refresh_database(self, database: str) -> bool:
        config = self.detector_config
        self._refreshed[database] = time.monotonic()
        observed, flagged = await self.analyse(self._observed, database)
        first_seen = self._index_first_seen.get(database, {})
        try:
            result = await asyncio.wait_for(
                review(self.catalog_dsn(database), config, observed, flagged, timeout=self.settings.connect_timeout,
                       ssl=self.settings.upstream_sslmode, index_first_seen=first_seen, database=database),
                REVIEW_TIMEOUT_S)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == "3D000" and database != self.database:
                # a database clients used is gone (a test suite's, dropped at its end): forget it
                self.log.info("database_gone", database=database)
                self._refreshed.pop(database, None)
                self._catalog_failures.pop(database, None)
                self.reviews.pop(database, None)
                await self.analyse(self.pipeline.forget_database, database)
                return False
            self.schema_errors += 1
            self._catalog_failures[database] = self._catalog_failures.get(database, 0) + 1
            self.log.warning("catalog_unavailable", database=database, reason=_reason(exc), error=type(exc).__name__)
            return False
        self._catalog_failures.pop(database, None)
        await self.analyse(self.pipeline.schema_loaded, result.catalog.schema, database)
        # when each index was first seen, for the indexes the catalog has now (a dropped one is forgotten)
        self._index_first_seen[database] = {ix.name: first_seen.get(ix.name, result.catalog.read_at)
                                            for indexes in result.catalog.indexes.values() for ix in indexes}
        if result.error:
            self.advice_errors += 1
            self.log.warning("advice_incomplete", database=database, reason=result.error)
        self.reviews[database] = result
        if len(self.reviews) > MAX_REVIEWED:  # databases no longer in traffic go first
            for gone in [db for db in self.reviews if db != self.database and db not in self.pipeline.databases]:
                self.reviews.pop(gone, None)
                self._index_first_seen.pop(gone, None)
        try:
            self._alert_advice()
        except Exception as exc:
            self.advice_errors += 1
            self._failed("advice_alerts", exc)
        self.log.debug("catalog_loaded", database=database, tables=len(result.catalog.schema.tables),
                       advice=len(result.advice))
        return True

    def _alert_advice(self) -> None:
        """Alert on advice that is new or rose in severity, like runtime findings. Only the current
        advice is remembered: one that went away and comes back is news again."""
        alerted = {}
        for result in list(self.reviews.values()):
            for advice in result.advice:
                seen = self._advice_alerted.get(advice.fingerprint)
                if seen is None or SEVERITY_RANK[advice.severity] > SEVERITY_RANK[seen]:
                    self.alerts.notify(advice.to_json(result.catalog.read_at))
                    seen = advice.severity
                alerted[advice.fingerprint] = seen
        self._advice_alerted = alerted

    async def reload(self, settings: Settings) -> list[str]:
        """Apply the [detectors] and [alerts] tables of freshly read settings without touching a
        connection; the names of changed settings that need a restart are returned (and logged)."""
        try:
            detectors = DetectorConfig.from_mapping(settings.extra.get("detectors"))
            alerts = AlertConfig.from_mapping(settings.extra.get("alerts"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{exc}") from exc
        await self.analyse(self.pipeline.reconfigure, detectors)
        self.detector_config = detectors
        self.alerts.reconfigure(alerts)
        self.alert_config = alerts
        fixed = [f.name for f in dataclasses.fields(Settings)
                 if f.name != "extra" and getattr(settings, f.name) != getattr(self.settings, f.name)]
        self.log.info("config_reloaded", kinds_silenced=len(detectors.silenced_kinds),
                      fingerprints_silenced=len(detectors.silenced_fingerprints), alert_webhooks=len(alerts.webhooks))
        if fixed:
            self.log.warning("restart_needed", settings=",".join(fixed),
                             hint="only [detectors] and [alerts] are reloaded on SIGHUP")
        return fixed

    async def reset_findings(self) -> None:
        """Forget the findings seen so far (admin console RESET FINDINGS); the advisor's come back at the
        next review if they still hold."""
        await self.analyse(self.pipeline.reset_findings)
        self._advice_alerted.clear()
        for result in self.reviews.values():
            result.advice = []

    def _observed(self, database: str | None = None):
        """On the analysis thread: the shapes seen (in ``database``), and those behind an N+1 or slow-query
        finding."""
        flagged = {f["fingerprint"] for f in self.pipeline.findings.snapshot()
                   if f["kind"].startswith("n_plus_one") or f["kind"] == "slow_query"}
        shapes = self.pipeline.observed()
        if database is not None:
            shapes = [st for st in shapes if database in st.databases]
        return shapes, flagged

    def all_findings(self) -> list[dict]:
        """Runtime findings and the advisor's, most severe first."""
        items = self.pipeline.findings.snapshot()
        for current in list(self.reviews.values()):
            items += [a.to_json(current.catalog.read_at) for a in current.advice]
        items.sort(key=lambda f: (-SEVERITY_RANK[f["severity"]], -f["total_ms"], -f["count"]))
        return items

    async def _refresh_schema_periodically(self) -> None:
        while not self._stopping:  # also ends the loop if a cancellation is lost inside wait_for
            for database in self._databases_due(time.monotonic()):
                await self.refresh_schema(database)  # contains its own failures
            await asyncio.sleep(1.0)

    def _databases_due(self, now: float) -> list[str]:
        """Each database clients use is read on the interval, within seconds when traffic names tables its
        snapshot lacks, and every few seconds until a first snapshot could be read (backing off while it
        keeps failing, so an unreadable catalog is not retried every few seconds)."""
        interval = self.detector_config.schema_refresh_s
        pipeline = self.pipeline
        wanting = set(pipeline.databases_wanting_refresh())
        due = []
        for database in dict.fromkeys([self.database, *pipeline.databases]):
            last = self._refreshed.get(database, float("-inf"))
            failures = self._catalog_failures.get(database, 0)
            every = interval if database in self.reviews else min(interval, 5.0 * 2 ** min(failures, 4))
            if now - last >= every or (database in wanting and database in self.reviews and now - last >= 2.0):
                due.append(database)
        return due

    async def _findings(self, query: str):
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        # Built on a worker thread: a large store must not hold up the forwarding loop.
        items = await asyncio.to_thread(self.all_findings)
        for key in ("kind", "severity"):
            if key in params:
                items = [f for f in items if f[key] == params[key]]
        if "application" in params:
            items = [f for f in items if params["application"] in f["applications"]]
        return json_response({"findings": items})

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self.workers.port if self.workers is not None else self.proxy.port

    def proxy_counters(self) -> dict[str, int]:
        """Connection and error counters of the forwarding side, summed over the worker processes."""
        if self.workers is None:
            return self.proxy.counters()
        return self.workers.counters()

    def queue_counters(self) -> dict[str, int]:
        """Events waiting for analysis and events dropped, here and in the workers."""
        queued, dropped, closes = len(self.queue) + self.analysing, self.queue.dropped, self.queue.closes_dropped
        if self.workers is not None:
            w = self.workers.queue_counters()
            queued, dropped, closes = queued + w["queued"], dropped + w["dropped"], closes + w["closes_dropped"]
        return {"queued": queued, "dropped": dropped, "closes_dropped": closes}

    def client_rows(self) -> list[dict]:
        if self.workers is None:
            return self.proxy.client_rows()
        # the main process's own sessions are the admin sessions workers relay: listed by the workers
        return self.workers.client_rows()

    async def refresh_workers(self) -> None:
        """Fresh counters and client lists from the worker processes (no-op without workers)."""
        if self.workers is not None:
            await self.workers.refresh()

    async def _metrics(self, registry):
        await self.refresh_workers()
        return exposition(registry)

    async def _healthz(self, _query: str):
        await self.refresh_workers()
        counters = self.proxy_counters()
        queue = self.queue_counters()
        reasons = self.check_health()
        return json_response({
            "status": "failing" if reasons else "ok",
            "reasons": reasons,
            "workers": self.settings.workers,
            "client_connections": counters.get("client_connections", 0),
            "connections_total": counters.get("connections_total", 0),
            "statements": sum(self.statements.values()),
            "findings": len(self.pipeline.findings),
            "schema_tables": len(self.pipeline.schema.tables),
            "fingerprint_fallbacks": self.pipeline.fingerprint.fallbacks,
            "events_queued": queue["queued"],
            "events_dropped": queue["dropped"],
            "analysis_errors": counters.get("analysis_errors", 0),
            "analysis_failures": self.analysis_failures,
            "upstream_errors": counters.get("upstream_errors", 0),
        }, 503 if reasons else 200)


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
