"""What travels between the process and its store: one finding's changes since the last batch, a batch,
and the states a finding can be in. Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
# A finding's lifecycle in the store. "open" is shown as "new" while first seen after the latest deploy.
OPEN, FIXED, REGRESSED, ACKNOWLEDGED, IGNORED = "open", "fixed", "regressed", "acknowledged", "ignored"
STATES = (OPEN, FIXED, REGRESSED, ACKNOWLEDGED, IGNORED)
SET_BY_PEOPLE = (OPEN, ACKNOWLEDGED, IGNORED)  # what the page and the API may set; fixed/regressed follow traffic
MAX_REASON = 500
MAX_BY = 100
MAX_DEPLOY_NAME = 200
MAX_TEXT = 8192  # example, suggestion and message as stored: normalized texts, cut
MAX_LABELS = 50
MAX_LABEL_CHARS = 256


@dataclass(slots=True)
class Change:
    """One finding's metadata as this process knows it, and what it added per hour since the last batch.

    Advisor findings carry ``gauge`` ((count, statements, ms) as the latest review put them) and no hours: advice is a
    statement about the database now, not occurrences to add up."""

    kind: str
    fingerprint: str
    source: str  # runtime | advisor
    severity: str
    confidence: float
    tables: list[str]
    databases: list[str]
    example: str
    suggestion: str
    message: str
    applications: list[str]
    tags: dict[str, list[str]]
    details: dict
    first_seen: float
    last_seen: float
    p95_ms: float = 0.0
    hours: dict[int, list] = field(default_factory=dict)  # hour -> [count, statements, total_ms]
    gauge: tuple[int, int, float] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.fingerprint

    @classmethod
    def of(cls, finding: dict, source: str) -> Change:
        """From a finding's JSON (``Finding.to_json`` or an advisor finding's), counts left to the caller."""
        return cls(
            finding["kind"], finding["fingerprint"], source, finding["severity"], float(finding.get("confidence", 1.0)),
            list(finding.get("tables") or ())[:MAX_LABELS], list(finding.get("databases") or ())[:MAX_LABELS],
            str(finding.get("example") or "")[:MAX_TEXT], str(finding.get("suggestion") or "")[:MAX_TEXT],
            str(finding.get("message") or "")[:MAX_TEXT], list(finding.get("applications") or ())[:MAX_LABELS],
            {k: list(v)[:MAX_LABELS] for k, v in (finding.get("tags") or {}).items()},
            dict(finding.get("details") or {}), float(finding.get("first_seen") or 0.0),
            float(finding.get("last_seen") or 0.0), float(finding.get("p95_ms") or 0.0))

    def add(self, hour: int, count: int, statements: int, total_ms: float) -> None:
        slot = self.hours.setdefault(hour, [0, 0, 0.0])
        slot[0] += count
        slot[1] += statements
        slot[2] += total_ms

    def absorb(self, newer: Change) -> None:
        """Fold a later change of the same finding into this one: counts add, metadata is the newer's."""
        for hour, (count, statements, total_ms) in newer.hours.items():
            self.add(hour, count, statements, total_ms)
        hours, first = self.hours, min(self.first_seen, newer.first_seen)
        for name in self.__slots__:
            setattr(self, name, getattr(newer, name))
        self.hours, self.first_seen = hours, first

    def totals(self) -> tuple[int, int, float]:
        count = statements = 0
        total_ms = 0.0
        for c, s, t in self.hours.values():
            count, statements, total_ms = count + c, statements + s, total_ms + t
        return count, statements, total_ms


@dataclass(slots=True)
class Deploy:
    name: str
    at: float
    source: str  # cli | http | sqlcommenter


@dataclass(slots=True)
class Batch:
    """What one transaction writes. (run_id, seq) names it, so a batch whose commit was not confirmed
    (the connection broke) can be sent again and is applied once."""

    run_id: str
    seq: int
    at: float
    replica: str
    changes: list[Change]
    deploys: list[Deploy] = field(default_factory=list)
    resolved: list[tuple[str, str]] = field(default_factory=list)  # advice the catalog no longer gives


def merge_labels(old: list, new: list, limit: int = MAX_LABELS) -> list:
    out = list(dict.fromkeys([*old, *new]))[:limit]
    return [str(v)[:MAX_LABEL_CHARS] for v in out]


def merge_tags(old: dict, new: dict) -> dict:
    out = {k: list(v) for k, v in old.items()}
    for k, values in new.items():
        out[k] = merge_labels(out.get(k, []), values)
    return out


def higher(a: str, b: str) -> str:
    return a if SEVERITY_RANK.get(a, 0) >= SEVERITY_RANK.get(b, 0) else b
