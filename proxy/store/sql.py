"""The store's logic in SQL, shared by both backends: migrations, a batch written once, the merged
view read back, states and their transitions, deploy markers, retention.

Everything here runs on the store's own thread (``proxy.store.writer``), never on the forwarding loop
or the analysis thread. Counts are added by the database (``count = count + excluded.count``) inside
one transaction per batch that also records the batch's name, so several replicas add up exactly and
a batch sent twice counts once. A finding's row is locked (``FOR UPDATE`` in PostgreSQL; SQLite's
writer lock) while its labels and state are updated, so a fixed finding regresses for one replica only.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager

from proxy.store.records import (
    FIXED,
    OPEN,
    REGRESSED,
    SEVERITY_RANK,
    STATES,
    Batch,
    Change,
    higher,
    merge_labels,
    merge_tags,
)
from proxy.store.schema import MIGRATIONS, MIGRATIONS_TABLE, VERSION

BATCH_KEEP_S = 86400.0  # batch names kept this long: a replica retries an unconfirmed batch within minutes

_COLUMNS = ("kind", "fingerprint", "source", "severity", "confidence", "tables", "databases", "example",
            "suggestion", "message", "applications", "tags", "details", "first_seen", "last_seen", "count",
            "statements", "total_ms", "p95_ms", "state", "state_reason", "state_by", "state_at", "fixed_at",
            "regressed_at")
_JSON = ("tables", "databases", "applications", "tags", "details")


class StoreError(Exception):
    """Why the store cannot be used, in words for the operator (never a value, never a password).

    ``fatal``: waiting will not help (a corrupt or read-only file, a schema newer than this pgloupe,
    no permission): pgloupe refuses to start. Otherwise the store is unreachable for now, and pgloupe
    serves from memory and retries."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class SqlStore(ABC):
    """One connection, used from one thread. Subclasses give the dialect and the four primitives."""

    prefix = ""  # schema prefix of every table
    lock_rows = ""  # appended to a SELECT whose rows the transaction updates
    greatest, least = "max", "min"
    backend = "sql"

    # -- primitives

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def execute(self, sql: str, *args) -> int:
        """Run a statement; rows it changed."""

    @abstractmethod
    def fetch(self, sql: str, *args) -> list[tuple]: ...

    @abstractmethod
    def begin(self) -> None: ...

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def describe(self) -> str:
        return self.backend

    def sql(self, text: str) -> str:
        return text.replace("{s}", self.prefix)

    @contextmanager
    def transaction(self):
        self.begin()
        try:
            yield
        except BaseException:
            try:
                self.rollback()
            except Exception:  # the connection is gone: the server rolled it back
                pass
            raise
        self.commit()

    # -- schema

    def migrate(self) -> int:
        """Bring the schema to ``VERSION``; the version found before (0 for an empty store)."""
        with self.transaction():
            self.lock_migrations()
            self.execute(self.sql(MIGRATIONS_TABLE))
            found = self.fetch(self.sql("SELECT max(version) FROM {s}migrations"))[0][0] or 0
            if found > VERSION:
                raise StoreError(f"the store's schema is at version {found}, newer than this pgloupe's ({VERSION}): "
                                 "upgrade pgloupe, or point it at another store", fatal=True)
            for version, _what, statements in MIGRATIONS:
                if version > found:
                    for statement in statements:
                        self.execute(self.sql(statement))
                    self.execute(self.sql("INSERT INTO {s}migrations (version, applied_at) VALUES (?, ?)"),
                                 version, time.time())
        return found

    def lock_migrations(self) -> None:  # noqa: B027 - SQLite's BEGIN IMMEDIATE already is the lock
        """Only one process migrates at a time."""

    def version(self) -> int:
        return self.fetch(self.sql("SELECT max(version) FROM {s}migrations"))[0][0] or 0

    def check_version(self) -> int:
        """For a reader that may not change the schema (``pgloupe run --store`` without ``--record``):
        the store must have been made by a pgloupe, and by none newer than this one."""
        try:
            found = self.version()
        except StoreError as exc:
            if exc.fatal or "no such table" in str(exc) or "42P01" in str(exc):
                raise StoreError("the store holds no pgloupe findings yet (no schema): point a pgloupe serve, or "
                                 "pgloupe run --record, at it first", fatal=True) from exc
            raise
        if found > VERSION:
            raise StoreError(f"the store's schema is at version {found}, newer than this pgloupe's ({VERSION}): "
                             "upgrade pgloupe", fatal=True)
        return found

    # -- writing

    def write(self, batch: Batch) -> list[dict]:
        """Apply a batch in one transaction, once; the findings it turned from fixed to regressed."""
        regressed: list[dict] = []
        with self.transaction():
            if not self.execute(self.sql("INSERT INTO {s}batches (run_id, seq, at) VALUES (?, ?, ?) "
                                         "ON CONFLICT DO NOTHING"), batch.run_id, batch.seq, batch.at):
                # applied already, its commit not confirmed to us: the regressions it made (their
                # regressed_at is the batch's time) are still ours to report
                return [self._regression(c) for c in batch.changes if self.fetch(self.sql(
                    "SELECT 1 FROM {s}findings WHERE kind = ? AND fingerprint = ? AND state = ? AND regressed_at = ?"),
                    c.kind, c.fingerprint, REGRESSED, float(batch.at))]
            for change in sorted(batch.changes, key=lambda c: c.key):  # one lock order for every replica
                if self._write_change(change, batch):
                    regressed.append(self._regression(change))
            for kind, fingerprint in sorted(batch.resolved):
                self.execute(self.sql("UPDATE {s}findings SET state = ?, fixed_at = ? WHERE kind = ? AND fingerprint = ? "
                                      "AND source = 'advisor' AND state IN (?, ?)"),
                             FIXED, float(batch.at), kind, fingerprint, OPEN, REGRESSED)
            for deploy in batch.deploys:
                if deploy.source == "sqlcommenter":  # every replica sees the tag: the first one marks it
                    self.execute(self.sql("INSERT INTO {s}deploys (name, at, replica, source) VALUES (?, ?, ?, ?) "
                                          "ON CONFLICT (name) WHERE source = 'sqlcommenter' DO NOTHING"),
                                 deploy.name, deploy.at, batch.replica, deploy.source)
                else:
                    self.mark(deploy.name, deploy.at, batch.replica, deploy.source)
        return regressed

    @staticmethod
    def _regression(change: Change) -> dict:
        return {"kind": change.kind, "fingerprint": change.fingerprint, "severity": change.severity,
                "tables": change.tables, "message": change.message, "suggestion": change.suggestion,
                "example": change.example, "state": REGRESSED}

    def _write_change(self, c: Change, batch: Batch) -> bool:
        """Upsert one finding and its hourly counts; True when it regressed."""
        count, statements, total_ms = c.totals()
        if c.gauge is not None:
            count, statements, total_ms = c.gauge
        rows = self.fetch(self.sql("SELECT severity, applications, databases, tags, tables, state, fixed_at, message "
                                   "FROM {s}findings WHERE kind = ? AND fingerprint = ?" + self.lock_rows),
                          c.kind, c.fingerprint)
        regressed = False
        if not rows:
            # ON CONFLICT: another replica inserted it since the SELECT; its counts are added to
            self.execute(self.sql(
                "INSERT INTO {s}findings AS f (kind, fingerprint, source, severity, confidence, tables, databases, "
                "example, suggestion, message, applications, tags, details, first_seen, last_seen, count, statements, "
                "total_ms, p95_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (kind, fingerprint) DO UPDATE SET last_seen = {self.greatest}(f.last_seen, excluded.last_seen), "
                + ("count = excluded.count, statements = excluded.statements, total_ms = excluded.total_ms"
                   if c.gauge is not None else "count = f.count + excluded.count, "
                   "statements = f.statements + excluded.statements, total_ms = f.total_ms + excluded.total_ms")),
                c.kind, c.fingerprint, c.source, c.severity, float(c.confidence), _dumps(c.tables), _dumps(c.databases),
                c.example, c.suggestion, c.message, _dumps(c.applications), _dumps(c.tags), _dumps(c.details),
                float(c.first_seen), float(c.last_seen), int(count), int(statements), float(total_ms), float(c.p95_ms))
        else:
            severity, apps, dbs, tags, tables, state, fixed_at, message = rows[0]
            new_severity = higher(severity, c.severity)
            if SEVERITY_RANK.get(c.severity, 0) >= SEVERITY_RANK.get(severity, 0):
                message = c.message  # the message explains the severity shown
            seen_again = (count > 0 or c.gauge is not None) and c.last_seen > (fixed_at or 0.0)
            if state == FIXED and seen_again:
                state, regressed = REGRESSED, True
            self.execute(self.sql(
                "UPDATE {s}findings SET source = ?, severity = ?, "
                f"confidence = {self.greatest}(confidence, ?), tables = ?, databases = ?, example = ?, suggestion = ?, "
                f"message = ?, applications = ?, tags = ?, details = ?, first_seen = {self.least}(first_seen, ?), "
                f"last_seen = {self.greatest}(last_seen, ?), "
                + ("count = ?, statements = ?, total_ms = ?" if c.gauge is not None
                   else "count = count + ?, statements = statements + ?, total_ms = total_ms + ?")
                + ", p95_ms = ?, state = ?, "
                "regressed_at = CASE WHEN ? THEN ? ELSE regressed_at END WHERE kind = ? AND fingerprint = ?"),
                c.source, new_severity, float(c.confidence), _dumps(merge_labels(json.loads(tables), c.tables)),
                _dumps(merge_labels(json.loads(dbs), c.databases)), c.example, c.suggestion, message,
                _dumps(merge_labels(json.loads(apps), c.applications)), _dumps(merge_tags(json.loads(tags), c.tags)),
                _dumps(c.details), float(c.first_seen), float(c.last_seen), int(count), int(statements),
                float(total_ms), float(c.p95_ms), state, regressed, float(batch.at), c.kind, c.fingerprint)
        for hour, (n, s, ms) in sorted(c.hours.items()):
            self.execute(self.sql(
                "INSERT INTO {s}counts AS c (kind, fingerprint, replica, hour, count, statements, total_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, fingerprint, replica, hour) DO UPDATE SET "
                "count = c.count + excluded.count, statements = c.statements + excluded.statements, "
                "total_ms = c.total_ms + excluded.total_ms"),
                c.kind, c.fingerprint, batch.replica, int(hour), int(n), int(s), float(ms))
        return regressed

    def mark(self, name: str, at: float, replica: str, source: str) -> None:
        self.execute(self.sql("INSERT INTO {s}deploys (name, at, replica, source) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT DO NOTHING"), name, float(at), replica, source)

    # -- reading

    def read(self) -> dict[tuple[str, str], dict]:
        """Every finding, merged over replicas, as JSON-ready dicts."""
        out = {}
        for row in self.fetch(self.sql(f"SELECT {', '.join(_COLUMNS)} FROM {{s}}findings")):
            record = dict(zip(_COLUMNS, row, strict=True))
            for name in _JSON:
                record[name] = json.loads(record[name])
            out[(record["kind"], record["fingerprint"])] = record
        return out

    def signature(self) -> tuple:
        """A few aggregates that change whenever a finding does (a write, a state, an upkeep, a deletion):
        when they have not, the full read can be skipped (10,000 findings take about 0.1 s to read)."""
        return tuple(self.fetch(self.sql(
            "SELECT count(*), sum(count), sum(statements), max(last_seen), max(state_at), max(fixed_at), "
            "max(regressed_at), (SELECT count(*) FROM {s}deploys), (SELECT max(at) FROM {s}deploys) "
            "FROM {s}findings"))[0])

    def deploys(self, limit: int = 50) -> list[dict]:
        rows = self.fetch(self.sql("SELECT name, at, replica, source FROM {s}deploys ORDER BY at DESC LIMIT ?"), limit)
        return [{"name": n, "at": at, "replica": r, "source": s} for n, at, r, s in rows]

    def history(self, kind: str, fingerprint: str, since: float) -> dict:
        """Per day (UTC) and per replica, what a finding added since ``since``."""
        first_hour = int(since // 3600)
        days = self.fetch(self.sql("SELECT hour / 24, sum(count), sum(statements), sum(total_ms) FROM {s}counts "
                                   "WHERE kind = ? AND fingerprint = ? AND hour >= ? GROUP BY hour / 24 ORDER BY 1"),
                          kind, fingerprint, first_hour)
        replicas = self.fetch(self.sql("SELECT replica, sum(count) FROM {s}counts WHERE kind = ? AND fingerprint = ? "
                                       "GROUP BY replica ORDER BY replica"), kind, fingerprint)
        return {"days": [{"day": int(d) * 86400, "count": int(n), "statements": int(s), "total_ms": round(float(t), 3)}
                         for d, n, s, t in days],
                "replicas": {r: int(n) for r, n in replicas}}

    # -- states and upkeep

    def set_state(self, kind: str, fingerprint: str, state: str, reason: str | None, by: str | None, at: float) -> bool:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        with self.transaction():
            return bool(self.execute(self.sql(
                "UPDATE {s}findings SET state = ?, state_reason = ?, state_by = ?, state_at = ? "
                "WHERE kind = ? AND fingerprint = ?"), state, reason, by, float(at), kind, fingerprint))

    def maintain(self, now: float, fixed_after_s: float, fixed_min_count: int, retention_s: float,
                 max_findings: int) -> dict[str, int]:
        """Runtime findings quiet for ``fixed_after_s`` after being seen regularly become fixed (advice is
        fixed by the review that no longer gives it, not by time); what is older than the retention, or
        beyond ``max_findings`` (least recently seen first), goes."""
        with self.transaction():
            fixed = self.execute(self.sql(
                "UPDATE {s}findings SET state = ?, fixed_at = ? WHERE state IN (?, ?) AND last_seen < ? "
                "AND (state_at IS NULL OR state_at < ?) AND source <> 'advisor' AND count >= ?"),
                FIXED, float(now), OPEN, REGRESSED, float(now - fixed_after_s), float(now - fixed_after_s),
                int(fixed_min_count))
            expired = self.execute(self.sql("DELETE FROM {s}findings WHERE last_seen < ?"), float(now - retention_s))
            over = self.fetch(self.sql("SELECT count(*) FROM {s}findings"))[0][0] - max_findings
            if over > 0:  # a person's verdicts go last: a burst of new shapes must not undo them
                expired += self.execute(self.sql(
                    "DELETE FROM {s}findings WHERE (kind, fingerprint) IN (SELECT kind, fingerprint FROM {s}findings "
                    "ORDER BY CASE WHEN state IN ('acknowledged', 'ignored') THEN 1 ELSE 0 END, last_seen LIMIT ?)"),
                    int(over))
            self.execute(self.sql("DELETE FROM {s}counts WHERE hour < ?"), int((now - retention_s) // 3600))
            if expired:
                self.execute(self.sql("DELETE FROM {s}counts WHERE NOT EXISTS (SELECT 1 FROM {s}findings f "
                                      "WHERE f.kind = {s}counts.kind AND f.fingerprint = {s}counts.fingerprint)"))
            self.execute(self.sql("DELETE FROM {s}deploys WHERE at < ?"), float(now - retention_s))
            self.execute(self.sql("DELETE FROM {s}batches WHERE at < ?"), float(now - min(retention_s, BATCH_KEEP_S)))
        return {"fixed": fixed, "expired": expired}

    def reset(self) -> None:
        """RESET FINDINGS: every replica's findings and counts go (deploy markers stay)."""
        with self.transaction():
            self.execute(self.sql("DELETE FROM {s}counts"))
            self.execute(self.sql("DELETE FROM {s}findings"))

