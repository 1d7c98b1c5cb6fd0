"""Byte budgets for what the session trackers keep between messages (sans-IO, single-threaded).

A client decides how many statements it prepares and how long their texts are, so the texts the
trackers keep to name later executions are bounded in bytes for the whole process, not per entry.
Identical texts (a pool's connections prepare the same ORM statements) are stored and charged once.
"""

from __future__ import annotations

import sys

# How ``analysis_memory_mb`` is shared among what the analysis keeps; each is bounded in bytes and its
# evictions are counted (/metrics pgloupe_analysis_memory_bytes, pgloupe_analysis_evictions_total).
MEMORY_SHARES = {
    "fingerprint_texts": 0.15,  # recent statement texts -> their shape and literals (detectors.fingerprint)
    "fingerprint_shapes": 0.15,  # normalized shapes -> parsed facts
    "shape_stats": 0.10,  # per shape calls, time, rows (the advisor and SHOW FINGERPRINTS)
    "findings": 0.10,
    "open_units": 0.25,  # statements of units of work not judged yet
    "loops": 0.07,  # parent results and iterations of loops being traced, fan-out bursts (detectors.tracing)
    "keys": 0.03,  # where keys came from, per session and application (detectors.tenancy.Provenance)
    "prepared_statements": 0.10,  # named statements' texts, in the session trackers
    "labels": 0.05,  # unseen table names, metric labels, first-seen and alerted maps
}
DEFAULT_ANALYSIS_MEMORY_MB = 256
DEFAULT_PREPARED_BYTES = int(DEFAULT_ANALYSIS_MEMORY_MB * MEMORY_SHARES["prepared_statements"]) << 20


def share(total_mb: float, table: str) -> int:
    """Bytes of ``analysis_memory_mb`` given to one table."""
    return int(total_mb * MEMORY_SHARES[table] * (1 << 20))


def prepared_budget(settings) -> int:
    return share(getattr(settings, "analysis_memory_mb", DEFAULT_ANALYSIS_MEMORY_MB), "prepared_statements")
SESSION_PREPARED_BYTES = 1 << 20  # one session's share: no client can take the whole budget
ENTRY_OVERHEAD = 120  # the table's slot, the count and the session's reference


class PreparedTexts:
    """Reference-counted statement texts under one byte limit; ``evicted`` counts texts refused."""

    __slots__ = ("limit", "used", "evicted", "_refs")

    def __init__(self, limit: int = DEFAULT_PREPARED_BYTES):
        self.limit = limit
        self.used = 0
        self.evicted = 0
        self._refs: dict[str, list] = {}  # text -> [the stored copy, references]

    @staticmethod
    def cost(sql: str) -> int:
        return sys.getsizeof(sql) + ENTRY_OVERHEAD

    def keep(self, sql: str) -> str | None:
        """The shared copy of ``sql``, or None (counted) when it does not fit."""
        entry = self._refs.get(sql)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        cost = self.cost(sql)
        if self.used + cost > self.limit:
            self.evicted += 1
            return None
        self.used += cost
        self._refs[sql] = [sql, 1]
        return sql

    def release(self, sql: str) -> None:
        entry = self._refs.get(sql)
        if entry is None:
            return
        if entry[1] > 1:
            entry[1] -= 1
        else:
            del self._refs[sql]
            self.used -= self.cost(sql)

    def __len__(self) -> int:
        return len(self._refs)
