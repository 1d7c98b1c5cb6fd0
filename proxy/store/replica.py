"""This process's side of the findings store, on a thread of its own: every ``flush_s`` it takes what
the findings gained, writes it as one batch, runs the upkeep (fixed findings, retention), and reads the
merged record of every replica back for the page, the API and /metrics.

Nothing here reaches the traffic: the forwarding loop never waits on it, the analysis thread only
hands over counts under a lock it holds for a dict swap, and a store that is down or slow costs
durability only. Batches that cannot be written wait, bounded (``max_pending`` findings; beyond that
new findings' counts are dropped and counted), and go out once the store is back, in order, each
applied once however often it is sent.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable

from proxy.logs import exception_summary
from proxy.store.records import MAX_BY, MAX_DEPLOY_NAME, MAX_REASON, SET_BY_PEOPLE, Batch, Change, Deploy, higher
from proxy.store.sql import SqlStore, StoreError
from proxy.store.view import merged_view

MAINTAIN_EVERY_S = 30.0
MAX_BACKOFF_S = 60.0
HISTORY_DAYS = 14
MAX_TAGGED_DEPLOYS = 10  # deploy markers from sqlcommenter tags per round and waiting


def default_replica() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Replica:
    def __init__(self, backend: SqlStore, *, log, replica: str | None = None, flush_s: float = 2.0,
                 fixed_after_s: float = 86400.0, fixed_min_count: int = 2, retention_s: float = 30 * 86400.0,
                 max_findings: int = 10000, max_pending: int = 10000):
        self.backend = backend
        self.log = log
        self.replica = replica or default_replica()
        self.run_id = uuid.uuid4().hex  # names this process's batches: a restart never reuses one
        self.flush_s = flush_s
        self.fixed_after_s = fixed_after_s
        self.fixed_min_count = fixed_min_count
        self.retention_s = retention_s
        self.max_findings = max_findings
        self.max_pending = max_pending
        # Sources, set by the app: runtime findings' changes, their unsent counts, current advice, deploy tags
        self.take_changes: Callable[[], list[tuple[dict, dict]]] = list
        self.peek_changes: Callable[[], dict] = dict
        self.advice: Callable[[], list[dict]] = list
        # database -> whether its latest catalog review ran to the end (a database no longer reviewed is absent)
        self.reviewed: Callable[[], dict[str, bool]] = dict
        self.take_deploys: Callable[[], list[tuple[str, float]]] = list
        self.on_regressed: Callable[[dict], None] = lambda finding: None
        self.on_view: Callable[[dict], None] = lambda view: None
        self._lock = threading.Lock()
        self._stored: dict[tuple[str, str], dict] = {}
        self._deploys: list[dict] = []
        self._inflight: Batch | None = None
        self._written: list[Change] = []  # written since the last read: not in _stored yet
        self._backlog: dict[tuple[str, str], Change] = {}
        self._deploy_backlog: list[Deploy] = []
        self._resolved: list[tuple[str, str]] = []  # advice the catalog no longer gives
        self._advice_written: dict[tuple[str, str], tuple] = {}
        self._seq = 0
        self._signature: tuple | None = None  # of the store at the last full read
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_maintain = 0.0
        self._advice_refreshed = 0.0
        self.connected = False
        self._opened = False
        self.writes = True  # False: read the store, never write it (pgloupe run --store without --record)
        self.version_found: int | None = None
        self.last_write = 0.0  # wall time of the last batch written (0: none yet)
        self.behind_since: float | None = None  # monotonic: since when the store has been failing
        self.last_error: str | None = None
        self.batches = self.failures = self.dropped = self.regressions = self.fixed = self.expired = 0

    def read_only(self) -> None:
        """Read the store, never write it (``pgloupe run --store`` without ``--record``): no batch, no
        upkeep, no migration, and a SQLite file opened read-only."""
        self.writes = False
        if hasattr(self.backend, "read_only"):
            self.backend.read_only = True

    # -- life

    def open(self, timeout: float = 60.0) -> None:
        """Start the thread, and connect and migrate on it now: a store that cannot work (corrupt,
        read-only, too new) stops the start-up with StoreError; one out of reach is retried later."""
        self._thread = threading.Thread(target=self._run, name="pgloupe-store", daemon=True)
        self._thread.start()
        try:
            self.call(self._open, timeout)
        except BaseException:
            self._stop.set()
            self._wake.set()
            self._thread.join(5)
            raise

    def _open(self) -> None:
        try:
            self._connect()
        except StoreError as exc:
            if exc.fatal:
                self.backend.close()
                raise
            self._failed(exc)
        self._opened = True
        if self.connected:
            self._cycle()  # what the store knows (states, and so the alerts to mute) before traffic

    def _connect(self) -> None:
        """Connect, and migrate; a reader (``writes`` False) only checks the schema, which it may not change."""
        self.backend.connect()
        if self.writes:
            self.version_found = self.backend.migrate()
        else:
            self.version_found = self.backend.check_version()
        self.connected = True

    def stop(self, timeout: float = 10.0) -> None:
        """A last batch (what the findings gained until now), then the connection closes."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush_now(self, timeout: float = 10.0) -> bool:
        """Write what is pending and read the merged view back before returning (tests, the gate)."""
        return bool(self.call(lambda: self._cycle(force=True), timeout))

    def call(self, fn: Callable, timeout: float = 10.0):
        """Run ``fn`` on the store's thread; its result, or its exception raised here. On a timeout it
        is cancelled unless it has started."""
        future = self.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(self, fn: Callable) -> concurrent.futures.Future:
        """``fn`` queued for the store's thread (between two rounds); asyncio callers wrap the future
        rather than hold a thread while they wait."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.put((fn, future))
        self._wake.set()
        return future

    # -- the thread

    def _run(self) -> None:
        delay = self.flush_s
        next_at = time.monotonic() + delay
        while True:
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            self._wake.clear()
            self._serve_requests()
            stopping = self._stop.is_set()
            if time.monotonic() >= next_at or stopping:
                ok = self._cycle(force=stopping) if self._opened else True
                delay = self.flush_s if ok else min(MAX_BACKOFF_S, max(self.flush_s, delay * 2))
                next_at = time.monotonic() + delay
            if stopping:
                self._serve_requests()
                if self._thread is not None:
                    self.backend.close()
                return

    def _serve_requests(self) -> None:
        while True:
            try:
                fn, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    def _cycle(self, force: bool = False) -> bool:
        """Collect, write, upkeep, read back. False when the store failed (everything stays pending)."""
        try:
            if self.writes:
                self._collect()
        except Exception as exc:  # a bug in a source costs this round's collection, not the thread
            self.log.error("store_collect_failed", **exception_summary(exc))
        try:
            if not self.connected:
                self._connect()
            for _ in range(8 if self.writes else 0):  # a long backlog goes out in a few batches per cycle
                batch = self._next_batch()
                if batch is None:
                    break
                regressed = self.backend.write(batch)
                # committed: alerted now, whatever happens to the rest of this round
                self.regressions += len(regressed)
                for finding in regressed:
                    self._notify(self.on_regressed, finding)
                self.batches += 1
                self.last_write = time.time()
                with self._lock:
                    self._written += batch.changes
                    self._inflight = None
            now = time.time()
            every = min(MAINTAIN_EVERY_S, max(self.flush_s, self.fixed_after_s / 4))
            if self.writes and (force or time.monotonic() - self._last_maintain >= every):
                done = self.backend.maintain(now, self.fixed_after_s, self.fixed_min_count, self.retention_s,
                                             self.max_findings)
                self.fixed += done["fixed"]
                self.expired += done["expired"]
                self._last_maintain = time.monotonic()
            signature = self.backend.signature()
            if signature == self._signature and not self._written:
                return self._caught_up()  # nothing changed anywhere since the last read
            stored, deploys = self.backend.read(), self.backend.deploys()
        except StoreError as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # a bug: logged once per cause, the thread goes on
            self._failed(StoreError(f"{type(exc).__name__} in the store's code"), exc)
            return False
        with self._lock:
            self._stored, self._deploys, self._written = stored, deploys, []
        self._signature = signature
        self._notify(self.on_view, stored)
        return self._caught_up()

    def _caught_up(self) -> bool:
        if self.behind_since is not None:
            self.log.info("store_caught_up", store=self.backend.describe(),
                          behind_s=round(time.monotonic() - self.behind_since, 1))
        self.behind_since, self.last_error = None, None
        return True

    def _notify(self, fn, arg) -> None:
        try:
            fn(arg)
        except Exception as exc:
            self.log.error("store_listener_failed", **exception_summary(exc))

    def _failed(self, exc: StoreError, cause: BaseException | None = None) -> None:
        self.failures += 1
        self.connected = False  # the last view read stays on show
        if self.behind_since is None:
            self.behind_since = time.monotonic()
        message = str(exc)
        if message != self.last_error:  # once per cause, not once per retry
            fields = exception_summary(cause) if cause is not None else {}
            self.log.warning("store_unavailable", reason=message, hint="findings are kept in memory and written "
                             "once the store is back", **fields)
        self.last_error = message

    def _collect(self) -> None:
        """What the findings gained since the last round, folded into the backlog (bounded)."""
        changes = []
        advice = self.advice()
        reviewed = self.reviewed()
        current = {(f["kind"], f["fingerprint"]) for f in advice}
        # advice written before that no longer holds: the latest review of its database ran to the end
        # without it, or the database is no longer reviewed (gone). A review cut short by an error says
        # nothing about what it missed.
        resolved = [key for key, (_marker, databases) in self._advice_written.items()
                    if key not in current and all(reviewed.get(db, True) for db in databases)]
        for key in resolved:
            del self._advice_written[key]
        # advice is written when it changed, and all of it now and then so that its last_seen moves on
        # well within fixed_after_s (advice that still holds is never "quiet")
        refresh = time.monotonic() - self._advice_refreshed >= min(MAINTAIN_EVERY_S, self.fixed_after_s / 4)
        if refresh:
            self._advice_refreshed = time.monotonic()
        for finding in advice:
            change = Change.of(finding, "advisor")
            change.gauge = (int(finding.get("count") or 0), int(finding.get("statements") or 0),
                            float(finding.get("total_ms") or 0.0))
            marker = (change.severity, change.gauge, change.message, change.suggestion)
            key = change.key
            written = self._advice_written.get(key)
            if written and written[0] == marker and not refresh:
                continue
            self._advice_written[key] = (marker, tuple(change.databases))
            changes.append(change)
        with self._lock:
            # taken under this lock, as ``findings`` peeks under it: a change is counted once, as pending
            # in the findings store or as waiting here, never both and never neither
            for finding, hours in self.take_changes():
                change = Change.of(finding, "runtime")
                for hour, (count, statements, ms) in hours.items():
                    change.add(hour, count, statements, ms)
                changes.append(change)
            self._resolved.extend(resolved)
            for change in changes:
                known = self._backlog.get(change.key)
                if known is not None:
                    known.absorb(change)
                elif len(self._backlog) < self.max_pending:
                    self._backlog[change.key] = change
                else:
                    self.dropped += 1
            for name, at in self.take_deploys()[:MAX_TAGGED_DEPLOYS]:  # clients choose the tags: bounded
                self._deploy_backlog.append(Deploy(name[:MAX_DEPLOY_NAME], at, "sqlcommenter"))
            del self._deploy_backlog[:-MAX_TAGGED_DEPLOYS]

    def _next_batch(self) -> Batch | None:
        with self._lock:
            if self._inflight is None and (self._backlog or self._deploy_backlog or self._resolved):
                self._seq += 1
                self._inflight = Batch(self.run_id, self._seq, time.time(), self.replica,
                                       list(self._backlog.values()), self._deploy_backlog, self._resolved)
                self._backlog, self._deploy_backlog, self._resolved = {}, [], []
            return self._inflight

    # -- reads for the HTTP handlers, the admin console and /metrics (any thread)

    def findings(self, local: list[dict], advice: list[dict]) -> list[dict]:
        with self._lock:
            stored = self._stored
            unsent: dict[tuple[str, str], list] = {k: list(v) for k, v in self.peek_changes().items()}
            waiting = [*self._backlog.values(), *(self._inflight.changes if self._inflight else ()), *self._written]
            deploys = self._deploys
        for change in waiting:
            if change.source == "runtime":
                slot = unsent.setdefault(change.key, [0, 0, 0.0])
                count, statements, ms = change.totals()
                slot[0], slot[1], slot[2] = slot[0] + count, slot[1] + statements, slot[2] + ms
        last_deploy = deploys[0]["at"] if deploys else None
        return merged_view(stored, {k: tuple(v) for k, v in unsent.items()}, local, advice, last_deploy)

    def deploys(self) -> list[dict]:
        with self._lock:
            return list(self._deploys)

    def counts(self, local: list[tuple[str, str, str]]) -> tuple[dict, dict]:
        """For /metrics, without building the merged view: runtime findings neither fixed nor ignored
        by (kind, severity), and every finding by state. ``local``: this process's (kind, fingerprint,
        severity)."""
        with self._lock:
            stored, deploys = self._stored, self._deploys
        last_deploy = deploys[0]["at"] if deploys else None
        by_kind: dict[tuple[str, str], int] = {}
        by_state: dict[str, int] = {}
        severities = {(k, f): s for k, f, s in local}
        for key, record in stored.items():
            state = record.get("state") or "open"
            if state == "open" and last_deploy is not None and record["first_seen"] >= last_deploy:
                state = "new"
            by_state[state] = by_state.get(state, 0) + 1
            if record.get("source") != "advisor" and state not in ("fixed", "ignored"):
                severity = higher(record["severity"], severities.get(key, record["severity"]))
                by_kind[(key[0], severity)] = by_kind.get((key[0], severity), 0) + 1
        for kind, fingerprint, severity in local:
            if (kind, fingerprint) not in stored:
                by_state["open"] = by_state.get("open", 0) + 1
                by_kind[(kind, severity)] = by_kind.get((kind, severity), 0) + 1
        return by_kind, by_state

    def status(self) -> dict:
        behind = round(time.monotonic() - self.behind_since, 1) if self.behind_since is not None else 0.0
        with self._lock:
            pending = len(self._backlog) + (len(self._inflight.changes) if self._inflight else 0)
        return {"backend": self.backend.backend, "where": self.backend.describe(), "replica": self.replica,
                "ok": self.behind_since is None, "behind_s": behind, "pending": pending,
                "last_write": self.last_write or None, "error": self.last_error, "batches": self.batches,
                "failures": self.failures, "dropped": self.dropped}

    # -- changes asked by people (page, API, CLI): run on the store's thread

    def set_state(self, kind: str, fingerprint: str, state: str, reason: str | None,
                  by: str | None) -> concurrent.futures.Future:
        """A person's verdict on a finding; the future's result says whether the store holds it."""
        if state not in SET_BY_PEOPLE:
            raise ValueError(f"state must be one of {', '.join(SET_BY_PEOPLE)}")
        reason = (reason or "").strip()[:MAX_REASON] or None
        by = (by or "").strip()[:MAX_BY] or None
        if state != "open" and not reason:
            raise ValueError("a reason is needed to acknowledge or ignore a finding")

        def change() -> bool:
            at = time.time()
            done = self.backend.set_state(kind, fingerprint, state, reason, by, at)
            if done:  # into the view at once; counts are left to the next round's read
                with self._lock:
                    record = self._stored.get((kind, fingerprint))
                    if record is not None:
                        self._stored = {**self._stored, (kind, fingerprint): {
                            **record, "state": state, "state_reason": reason, "state_by": by, "state_at": at}}
                    stored = self._stored
                self._notify(self.on_view, stored)
            return done
        return self.submit(change)

    def mark_deploy(self, name: str, source: str, at: float | None = None) -> concurrent.futures.Future:
        name = name.strip()[:MAX_DEPLOY_NAME]
        if not name:
            raise ValueError("a deploy needs a name")
        when = time.time() if at is None else at

        def mark() -> dict:
            with self.backend.transaction():
                self.backend.mark(name, when, self.replica, source)
            deploys = self.backend.deploys()
            with self._lock:
                self._deploys = deploys
            return {"name": name, "at": when, "replica": self.replica, "source": source}
        return self.submit(mark)

    def history(self, kind: str, fingerprint: str) -> concurrent.futures.Future:
        return self.submit(lambda: self.backend.history(kind, fingerprint, time.time() - HISTORY_DAYS * 86400))

    def reset(self, forget_local: Callable[[], None]) -> None:
        """RESET FINDINGS: every replica's findings in the store, then (only once that worked) what this
        process holds, ``forget_local`` included, all on this thread so no round runs in between."""
        def reset() -> None:
            self.backend.reset()
            forget_local()
            with self._lock:
                self._stored, self._backlog, self._inflight, self._written = {}, {}, None, []
                self._advice_written, self._resolved = {}, []
            self._signature = None
        self.call(reset)
