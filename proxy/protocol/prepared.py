"""Byte budgets for the prepared statements' texts the session trackers keep between messages.

A client decides how many statements it prepares and how long their texts are, so the texts the
trackers keep to name later executions are bounded in bytes for the whole process, not per entry.
Identical texts (a pool's connections prepare the same ORM statements) are stored and charged once.
"""

from __future__ import annotations

import sys

# The default analysis_memory_mb's share (proxy.config.prepared_budget; tests/test_layout.py holds them equal)
DEFAULT_PREPARED_BYTES = int(256 * 0.10 * (1 << 20))
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
