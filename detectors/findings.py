"""Findings: occurrences aggregated by kind and fingerprint, as the API and the reports show them."""

from __future__ import annotations

import sys
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from detectors.rules import SEVERITIES, Occurrence
from detectors.sizing import ENTRY_OVERHEAD, deep_size

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(slots=True)
class Finding:
    kind: str
    fingerprint: str
    severity: str
    confidence: float
    tables: tuple[str, ...]
    example: str
    suggestion: str
    message: str
    first_seen: float
    last_seen: float
    count: int = 0  # occurrences
    statements: int = 0  # statements involved across occurrences
    total_ms: float = 0.0
    durations: deque = field(default_factory=lambda: deque(maxlen=200))  # recent, for p95
    applications: set[str] = field(default_factory=set)
    databases: set[str] = field(default_factory=set)
    tags: dict[str, set[str]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def p95_ms(self) -> float:
        if not self.durations:
            return 0.0
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "confidence": round(self.confidence, 2),
            "fingerprint": self.fingerprint,
            "tables": list(self.tables),
            "count": self.count,
            "statements": self.statements,
            "total_ms": round(self.total_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "example": self.example,
            "suggestion": self.suggestion,
            "message": self.message,
            "applications": sorted(self.applications),
            "databases": sorted(self.databases),
            "tags": {k: sorted(v)[:20] for k, v in self.tags.items()},
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            **({"details": dict(self.extra)} if self.extra else {}),
        }


TAG_KEYS = ("route", "controller", "action", "framework", "application", "traceparent")
MAX_LABELS = 50  # distinct applications / tag values kept per finding (routes with ids would grow forever)
MAX_LABEL_CHARS = 256
DURATIONS_BYTES = 200 * 32  # the recent durations deque, full
DEFAULT_FINDINGS_BYTES = 32 << 20


class FindingStore:
    """Thread-safe: the pipeline adds from its worker, the HTTP handlers read snapshots. Bounded in
    bytes: past ``limit`` the least recently seen findings go (counted in ``evicted``)."""

    def __init__(self, limit: int = DEFAULT_FINDINGS_BYTES, track_changes: bool = False):
        # least recently seen first, so eviction at the cap is O(1)
        self._findings: OrderedDict[tuple[str, str], Finding] = OrderedDict()
        self._bytes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.limit = limit
        self.used = 0
        self.evicted = 0
        self.by_kind_severity: Counter[tuple[str, str]] = Counter()  # for /metrics without a snapshot
        # With a findings store: what each finding added per hour since the store last took it. Keys are
        # those of the findings (bounded above) and of the few evicted before the store came by.
        self.track_changes = track_changes
        self._changes: dict[tuple[str, str], tuple[Finding, dict[int, list]]] = {}

    def add(self, occ: Occurrence) -> tuple[Finding, bool]:
        """Record an occurrence; returns the finding and whether it is new or rose in severity."""
        stmts = occ.statements
        first = min(s.event.started_at for s in stmts)
        last = max(s.end for s in stmts)
        key = (occ.kind, occ.fingerprint)
        with self._lock:
            finding = self._findings.get(key)
            escalated = False
            grew = 0
            if finding is None:
                finding = Finding(occ.kind, occ.fingerprint, occ.severity, occ.confidence, occ.tables, occ.example,
                                  occ.suggestion, occ.message, first, last)
                self._findings[key] = finding
                self._bytes[key] = 0
                grew = deep_size(finding) + DURATIONS_BYTES + ENTRY_OVERHEAD
                self.by_kind_severity[(occ.kind, occ.severity)] += 1
                escalated = True
            else:
                self._findings.move_to_end(key)
                rank = _RANK[occ.severity] - _RANK[finding.severity]
                if rank > 0:
                    self.by_kind_severity[(finding.kind, finding.severity)] -= 1
                    self.by_kind_severity[(finding.kind, occ.severity)] += 1
                    finding.severity = occ.severity
                    escalated = True
                if rank >= 0:
                    finding.message = occ.message  # the message explains the severity shown
                finding.confidence = max(finding.confidence, occ.confidence)
                finding.first_seen = min(finding.first_seen, first)
                finding.last_seen = max(finding.last_seen, last)
            finding.count += 1
            finding.statements += len(stmts)
            ms = occ.duration_ms
            if self.track_changes:
                hours = self._changes.setdefault(key, (finding, {}))[1]
                slot = hours.setdefault(int(last // 3600), [0, 0, 0.0])
                slot[0] += 1
                slot[1] += len(stmts)
                slot[2] += ms
            finding.total_ms += ms
            finding.durations.append(ms)
            if occ.extra:
                for k, v in occ.extra.items():
                    if v is not None:
                        if k not in finding.extra:
                            grew += deep_size(v) + 100
                        finding.extra[k] = v
            for s in stmts:
                database = s.event.database
                if database not in finding.databases and len(finding.databases) < MAX_LABELS:
                    finding.databases.add(database[:MAX_LABEL_CHARS])
                    grew += sys.getsizeof(database) + 60
                app = s.event.application_name
                if app and len(finding.applications) < MAX_LABELS and app not in finding.applications:
                    app = app[:MAX_LABEL_CHARS]
                    finding.applications.add(app)
                    grew += sys.getsizeof(app) + 60
                for k in TAG_KEYS:
                    v = s.tags.get(k)
                    if v:
                        values = finding.tags.setdefault(k, set())
                        if len(values) < MAX_LABELS and v not in values:
                            v = v[:MAX_LABEL_CHARS]
                            values.add(v)
                            grew += sys.getsizeof(v) + 60
            if grew:
                self._bytes[key] += grew
                self.used += grew
                while self.used > self.limit and len(self._findings) > 1:
                    old_key, old = self._findings.popitem(last=False)
                    self.used -= self._bytes.pop(old_key)
                    self.by_kind_severity[(old.kind, old.severity)] -= 1
                    self.evicted += 1
            return finding, escalated

    def take_changes(self) -> list[tuple[dict, dict[int, list]]]:
        """For the findings store, from its thread: each changed finding as JSON with what it added per
        hour since the last call."""
        with self._lock:
            changes, self._changes = self._changes, {}
            return [(finding.to_json(), hours) for finding, hours in changes.values()]

    def pending(self) -> dict[tuple[str, str], tuple[int, int, float]]:
        """What the store has not taken yet, per finding: (occurrences, statements, ms)."""
        with self._lock:
            out = {}
            for key, (_finding, hours) in self._changes.items():
                out[key] = (sum(h[0] for h in hours.values()), sum(h[1] for h in hours.values()),
                            sum(h[2] for h in hours.values()))
            return out

    def snapshot(self) -> list[dict]:
        with self._lock:
            items = [f.to_json() for f in self._findings.values()]
        items.sort(key=lambda f: (-_RANK[f["severity"]], -f["total_ms"], -f["count"]))
        return items

    def keys(self) -> list[tuple[str, str, str]]:
        """(kind, fingerprint, severity) of each finding: what /metrics needs, without a snapshot."""
        with self._lock:
            return [(f.kind, f.fingerprint, f.severity) for f in self._findings.values()]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return {k: n for k, n in self.by_kind_severity.items() if n > 0}

    def __len__(self) -> int:
        return len(self._findings)
