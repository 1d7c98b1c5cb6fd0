"""Findings: occurrences aggregated by kind and fingerprint, as the API and the reports show them."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from .rules import SEVERITIES, Occurrence

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
    durations: deque = field(default_factory=lambda: deque(maxlen=1000))
    applications: set[str] = field(default_factory=set)
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
            "tags": {k: sorted(v)[:20] for k, v in self.tags.items()},
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            **({"details": self.extra} if self.extra else {}),
        }


TAG_KEYS = ("route", "controller", "action", "framework", "application")


class FindingStore:
    """Thread-safe: the pipeline adds from its worker, the HTTP handlers read snapshots."""

    def __init__(self, max_findings: int = 5000):
        self._findings: dict[tuple[str, str], Finding] = {}
        self._lock = threading.Lock()
        self.max_findings = max_findings
        self.evicted = 0

    def add(self, occ: Occurrence) -> tuple[Finding, bool]:
        """Record an occurrence; returns the finding and whether it is new or rose in severity."""
        stmts = occ.statements
        first = min(s.event.started_at for s in stmts)
        last = max(s.end for s in stmts)
        key = (occ.kind, occ.fingerprint)
        with self._lock:
            finding = self._findings.get(key)
            escalated = False
            if finding is None:
                if len(self._findings) >= self.max_findings:
                    self._evict()
                finding = Finding(occ.kind, occ.fingerprint, occ.severity, occ.confidence, occ.tables, occ.example,
                                  occ.suggestion, occ.message, first, last)
                self._findings[key] = finding
                escalated = True
            else:
                if _RANK[occ.severity] > _RANK[finding.severity]:
                    finding.severity = occ.severity
                    escalated = True
                finding.confidence = max(finding.confidence, occ.confidence)
                finding.first_seen = min(finding.first_seen, first)
                finding.last_seen = max(finding.last_seen, last)
                finding.message = occ.message
            finding.count += 1
            finding.statements += len(stmts)
            ms = occ.duration_ms
            finding.total_ms += ms
            finding.durations.append(ms)
            if occ.extra:
                finding.extra.update({k: v for k, v in occ.extra.items() if v is not None})
            for s in stmts:
                if s.event.application_name:
                    finding.applications.add(s.event.application_name)
                for k in TAG_KEYS:
                    v = s.tags.get(k)
                    if v:
                        finding.tags.setdefault(k, set()).add(v)
            return finding, escalated

    def _evict(self) -> None:
        oldest = min(self._findings, key=lambda k: self._findings[k].last_seen)
        del self._findings[oldest]
        self.evicted += 1

    def snapshot(self) -> list[dict]:
        with self._lock:
            items = [f.to_json() for f in self._findings.values()]
        items.sort(key=lambda f: (-_RANK[f["severity"]], -f["total_ms"], -f["count"]))
        return items

    def __len__(self) -> int:
        return len(self._findings)
