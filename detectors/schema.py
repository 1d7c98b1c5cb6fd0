"""What the detectors know of the database: tables, column types, tenant columns, row-level security.

Built from the catalog snapshot (``detectors.catalog``) and refreshed periodically; detectors only
see the immutable ``Schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDE_TYPES = frozenset({"json", "jsonb", "bytea", "xml", "tsvector"})
WIDE_TEXT_BYTES = 256  # text columns whose average width (pg_stats) is above this count as wide


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    schema: str = "public"
    columns: dict[str, str] = field(default_factory=dict)  # column -> type name
    rls: bool = False
    row_estimate: int = 0
    avg_width: dict[str, int] = field(default_factory=dict)  # from pg_stats when analysed

    def tenant_column(self, names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in self.columns), None)

    @property
    def wide_columns(self) -> tuple[str, ...]:
        return tuple(c for c, t in self.columns.items()
                     if t in WIDE_TYPES or (t in ("text", "character varying") and self.avg_width.get(c, 0) > WIDE_TEXT_BYTES))


@dataclass(frozen=True, slots=True)
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)  # unqualified name -> table (search_path order)
    loaded: bool = False
    # Per-fingerprint verdicts that depend only on this snapshot (the tenant check), memoized by detectors.
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def get(self, name: str | None) -> Table | None:
        return self.tables.get(name) if name else None
