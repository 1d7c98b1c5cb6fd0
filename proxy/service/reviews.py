"""The catalog and advisor reviews of every database clients use, on a schedule: a side connection reads
the catalog (detectors.database), the pipeline gets the fresh snapshot, and the advisor's findings are
kept per database and alerted on when new or more severe.

Each database is read on the interval, within seconds when traffic names tables its snapshot lacks,
and every few seconds until a first snapshot could be read (backing off while it keeps failing). A
database that is gone (a test suite's, dropped at its end) is forgotten. Nothing here raises into its
caller: an unreadable catalog costs that database's review only.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

from detectors.database.review import Review, review

REVIEW_TIMEOUT_S = 60.0
MAX_REVIEWED = 64  # databases whose catalog review is kept (as the pipeline's MAX_DATABASES)
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}


def _reason(exc: BaseException) -> dict[str, str]:
    """Why a catalog could not be read, for a log line: the class, and the first line of the server's
    error (it has a SQLSTATE) or the system's (OSError): words about pgloupe's own login and catalog
    queries, which never carry a client's statement. Any other error's message is left out (it could
    quote the side connection's URL)."""
    fields = {"error": type(exc).__name__}
    if isinstance(getattr(exc, "sqlstate", None), str):
        fields["sqlstate"] = exc.sqlstate
        fields["reason"] = (str(exc).splitlines() or [""])[0][:200]
    elif isinstance(exc, OSError) and exc.strerror:
        fields["reason"] = exc.strerror
    return fields


class Reviews:
    """``current``: database -> its latest review (catalog snapshot, advice, health ratios)."""

    def __init__(self, app) -> None:
        self.app = app  # its settings, detector_config, pipeline, analysis, alerts and log, read when used
        self.current: dict[str, Review] = {}
        self._refreshed: dict[str, float] = {}  # database -> when its catalog was last read (monotonic)
        self._failures: dict[str, int] = {}  # database -> reads failed in a row
        self._index_first_seen: dict[str, dict[str, float]] = {}  # database -> index name -> first seen
        self._advice_alerted: dict[str, str] = {}  # advisor finding -> severity already alerted
        self.errors = 0  # catalog reads that failed
        self.advice_errors = 0
        self.stopping = False

    @property
    def upstream(self) -> Review | None:
        """The upstream database's review."""
        return self.current.get(self.app.database)

    def catalog_dsn(self, database: str) -> str:
        """The side connection's URL for ``database``: catalog_dsn (default the upstream URL) with its
        database replaced, so one role reads the catalog of every database clients use."""
        base = self.app.detector_config.catalog_dsn or self.app.settings.upstream
        return urlunsplit(urlsplit(base)._replace(path="/" + database))

    async def refresh(self, database: str | None = None) -> bool:
        """Read the catalog and review ``database`` now (None: the upstream's, then every other database
        clients used); False (and a log line) when the upstream's (or the one asked) cannot be read."""
        upstream = self.app.database
        databases = [database] if database is not None else [upstream] + [
            db for db in self.app.pipeline.database_names() if db != upstream]
        first = True
        for db in databases:
            try:
                ok = await self._refresh(db)
            except Exception as exc:
                self.errors += 1
                self.app.analysis.failed("catalog", exc)
                ok = False
            if db == databases[0]:
                first = ok
        return first

    async def _refresh(self, database: str) -> bool:
        app = self.app
        call = app.analysis.call
        self._refreshed[database] = time.monotonic()
        observed, flagged = await call(self.observed, database)
        first_seen = self._index_first_seen.get(database, {})
        try:
            result = await asyncio.wait_for(
                review(self.catalog_dsn(database), app.detector_config, observed, flagged,
                       timeout=app.settings.connect_timeout, ssl=app.settings.upstream_sslmode,
                       index_first_seen=first_seen, database=database),
                REVIEW_TIMEOUT_S)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == "3D000" and database != app.database:
                # a database clients used is gone (a test suite's, dropped at its end): forget it
                app.log.info("database_gone", database=database)
                self._refreshed.pop(database, None)
                self._failures.pop(database, None)
                self.current.pop(database, None)
                await call(app.pipeline.forget_database, database)
                return False
            self.errors += 1
            self._failures[database] = self._failures.get(database, 0) + 1
            app.log.warning("catalog_unavailable", database=database, **_reason(exc))
            return False
        self._failures.pop(database, None)
        await call(app.pipeline.schema_loaded, result.catalog.schema, database)
        # when each index was first seen, for the indexes the catalog has now (a dropped one is forgotten)
        self._index_first_seen[database] = {ix.name: first_seen.get(ix.name, result.catalog.read_at)
                                            for indexes in result.catalog.indexes.values() for ix in indexes}
        if result.error:
            self.advice_errors += 1
            app.log.warning("advice_incomplete", database=database, **result.error)
        self.current[database] = result
        if len(self.current) > MAX_REVIEWED:  # databases no longer in traffic go first
            for gone in [db for db in self.current if db != app.database and db not in app.pipeline.databases]:
                self.current.pop(gone, None)
                self._index_first_seen.pop(gone, None)
        try:
            self._alert_advice()
        except Exception as exc:
            self.advice_errors += 1
            app.analysis.failed("advice_alerts", exc)
        app.log.debug("catalog_loaded", database=database, tables=len(result.catalog.schema.tables),
                      advice=len(result.advice))
        return True

    def _alert_advice(self) -> None:
        """Alert on advice that is new or rose in severity, like runtime findings. Only the current
        advice is remembered: one that went away and comes back is news again."""
        alerted = {}
        for result in list(self.current.values()):
            for advice in result.advice:
                seen = self._advice_alerted.get(advice.fingerprint)
                if seen is None or SEVERITY_RANK[advice.severity] > SEVERITY_RANK[seen]:
                    self.app.alerts.notify(advice.to_json(result.catalog.read_at))
                    seen = advice.severity
                alerted[advice.fingerprint] = seen
        self._advice_alerted = alerted

    def forget_advice(self) -> None:
        """RESET FINDINGS: the advice comes back at the next review if it still holds."""
        self._advice_alerted.clear()
        for result in self.current.values():
            result.advice = []

    def complete(self) -> dict[str, bool]:
        """Per database reviewed, whether its latest review ran to the end: advice missing from a
        complete one no longer holds; from one cut short by an error, nothing follows."""
        return {database: not result.error for database, result in list(self.current.items())}

    def advice(self) -> list[dict]:
        return [a.to_json(current.catalog.read_at) for current in list(self.current.values()) for a in current.advice]

    def observed(self, database: str | None = None):
        """On the analysis thread: the shapes seen (in ``database``), and those behind an N+1 or slow-query
        finding."""
        pipeline = self.app.pipeline
        flagged = {f["fingerprint"] for f in pipeline.findings.snapshot()
                   if f["kind"].startswith("n_plus_one") or f["kind"] == "slow_query"}
        shapes = pipeline.observed()
        if database is not None:
            shapes = [st for st in shapes if database in st.databases]
        return shapes, flagged

    async def run(self) -> None:
        while not self.stopping:  # also ends the loop if a cancellation is lost inside wait_for
            try:
                for database in self.due(time.monotonic()):
                    await self.refresh(database)  # contains its own failures
            except Exception as exc:  # a bug in the schedule costs this round, never the task
                self.app.analysis.failed("catalog_schedule", exc)
            await asyncio.sleep(1.0)

    def due(self, now: float) -> list[str]:
        interval = self.app.detector_config.schema_refresh_s
        pipeline = self.app.pipeline
        wanting = set(pipeline.databases_wanting_refresh())
        due = []
        for database in dict.fromkeys([self.app.database, *pipeline.database_names()]):
            last = self._refreshed.get(database, float("-inf"))
            failures = self._failures.get(database, 0)
            every = interval if database in self.current else min(interval, 5.0 * 2 ** min(failures, 4))
            if now - last >= every or (database in wanting and database in self.current and now - last >= 2.0):
                due.append(database)
        return due
