"""One running pgloupe, composed: the relay (or the worker processes), the analysis thread
(proxy.service.analysis), the catalog reviews (proxy.service.reviews), alerts, the admin console and
the HTTP endpoint (proxy.service.routes), started and stopped together; SIGHUP's reload applies here."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os

import structlog

from detectors.config import DetectorConfig
from detectors.pipeline import Pipeline
from proxy.config import ConfigError, Settings
from proxy.protocol.hashing import ValueHasher
from proxy.relay.listener import Proxy
from proxy.relay.queue import EventQueue
from proxy.service.admin import AdminConsole, startup_warnings
from proxy.service.alerts import AlertConfig, AlertSender
from proxy.service.analysis import Analysis, EventHandler
from proxy.service.http import HttpServer
from proxy.service.reviews import SEVERITY_RANK, Reviews
from proxy.service.routes import PUBLIC_PATHS, post_routes, routes
from proxy.store import StoreError, replica_for
from proxy.workers.pool import WorkerPool

STOP_STEP_S = 5.0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class App:
    def __init__(self, settings: Settings, handlers: list[EventHandler] | None = None):
        self.settings = settings
        self.queue = EventQueue(settings.queue_size)
        # One key for the trackers (here or replaying the workers' captures) and the pipeline's literals
        key = settings.hash_key.encode() if settings.hash_key else os.urandom(32)
        self.proxy = Proxy(settings, self.queue, hasher=ValueHasher(key))
        self.workers = WorkerPool(self, settings.workers) if settings.workers else None
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
        # One thread runs the detectors: analysis never runs inside a forwarding callback.
        self.analysis = Analysis(self.pipeline, self.queue, self.proxy, self.workers, list(handlers or []), self.log)
        self.reviews = Reviews(self)
        self.proxy.admin_console = AdminConsole(self)
        self.http: HttpServer | None = None
        self.finding_counts: tuple[dict, dict] | None = None  # for /metrics, counted off the loop before a scrape
        # The findings store: batches from its own thread, the merged record of every replica back
        self.store = replica_for(settings, self.log)
        self.pipeline.findings.track_changes = True
        self.store.take_changes = lambda: self.pipeline.findings.take_changes()  # (replaced on RESET FINDINGS)
        self.store.peek_changes = lambda: self.pipeline.findings.pending()
        self.store.advice = self.reviews.advice
        self.store.reviewed = self.reviews.complete
        self.store.take_deploys = self.pipeline.take_deploys
        self.store.on_regressed = self.alerts.notify_regression
        self.store.on_view = self.alerts.mute_states

    async def start(self) -> None:
        for event, fields in startup_warnings(self.settings):
            self.log.warning(event, **fields)
        try:
            await asyncio.to_thread(self.store.open)
        except StoreError as exc:  # corrupt, read-only, or newer than this pgloupe: say so and start nothing
            raise ConfigError(str(exc)) from exc
        self.log.info("store_opened", store=self.store.backend.describe(), replica=self.store.replica,
                      connected=self.store.connected)
        if self.workers is not None:
            await self.workers.start()
        else:
            await self.proxy.start()
        address = self.settings.http_address
        if address is not None:
            if not self.settings.http_token and not _loopback(address[0]):
                self.log.warning("http_without_token", http=f"{address[0]}:{address[1]}",
                                 hint="set http_token: the findings and metrics are readable by anyone who can connect")
            self.http = HttpServer(*address, token=self.settings.http_token, public=PUBLIC_PATHS,
                                   hosts=self.settings.http_hosts, log=self.log, routes=routes(self),
                                   posts=post_routes(self))
            await self.http.start()
            self.log.info("http_listening", http=f"{self.http.host}:{self.http.port}")
        if self.workers is not None and self.settings.analysis_priority != "normal":
            # Only with workers: in one process the forwarding loop shares the GIL with this thread, and
            # would wait on it whenever the scheduler left it holding the GIL.
            await self.analysis.call(self.analysis.lower_priority, self.settings.analysis_priority)
        self.alerts.start()
        self.analysis.start([("catalog", self.reviews.run())])

    async def stop(self) -> None:
        """Stop everything, each step bounded: a stuck peer must not keep the process from exiting."""
        async def bounded(coro, what: str, limit: float = STOP_STEP_S) -> None:
            try:
                await asyncio.wait_for(coro, limit)
            except Exception as exc:  # TimeoutError or the step's own failure: note it and go on
                self.log.warning("stop_step_incomplete", step=what, error=type(exc).__name__)

        self.analysis.stopping = self.reviews.stopping = True
        drain_s = self.settings.shutdown_timeout
        if self.workers is not None:
            # each worker drains its sessions; the pool kills one that outlives the drain by 15 s
            await bounded(self.workers.stop(), "workers", drain_s + 20.0)
        else:
            await bounded(self.proxy.drain(drain_s), "drain", drain_s + STOP_STEP_S)
        await bounded(self.proxy.close(), "proxy")
        if self.http is not None:
            await bounded(self.http.close(), "http")
        await bounded(self.analysis.cancel(), "tasks")
        # units still open are complete now: judge them
        await bounded(self.analysis.finish(), "drain")
        # the last batch: what the findings gained until now (bounded: a store that hangs costs it only)
        await bounded(asyncio.to_thread(self.store.stop, STOP_STEP_S), "store", STOP_STEP_S + 1)
        await bounded(self.alerts.stop(), "alerts")  # after the flush: its findings get their chance to go out
        self.analysis.shutdown()

    async def reload(self, settings: Settings) -> list[str]:
        """Apply the [detectors] and [alerts] tables of freshly read settings without touching a
        connection; the names of changed settings that need a restart are returned (and logged)."""
        try:
            detectors = DetectorConfig.from_mapping(settings.extra.get("detectors"))
            alerts = AlertConfig.from_mapping(settings.extra.get("alerts"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{exc}") from exc
        await self.analysis.call(self.pipeline.reconfigure, detectors)
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
        # on the store's thread: the store first, then (once that worked) the findings in memory, with no
        # round of the store in between to write counts of either side of the reset to the other
        await asyncio.to_thread(self.store.reset, self.pipeline.reset_findings)
        self.reviews.forget_advice()

    def own_findings(self) -> list[dict]:
        """This process's runtime findings and the advisor's, most severe first: what one run found
        (the CI gate, the demo), whatever the store holds from before."""
        items = self.pipeline.findings.snapshot() + self.reviews.advice()
        items.sort(key=lambda f: (-SEVERITY_RANK[f["severity"]], -f["total_ms"], -f["count"]))
        return items

    def all_findings(self) -> list[dict]:
        """Every finding the store knows, from every replica and earlier runs, brought up to date with
        what this process has not written yet; each with its state. Most severe first."""
        return self.store.findings(self.pipeline.findings.snapshot(), self.reviews.advice())

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
        queued, dropped, closes = len(self.queue) + self.analysis.analysing, self.queue.dropped, self.queue.closes_dropped
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
