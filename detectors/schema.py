"""What the detectors know of the database: tables, column types, tenant columns, row-level security.

Built from the catalog snapshot (``detectors.catalog``) and refreshed periodically; detectors only
see the immutable ``Schema``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

WIDE_TYPES = frozenset({"json", "jsonb", "bytea", "xml", "tsvector"})
WIDE_TEXT_BYTES = 256  # text columns whose average width (pg_stats) is above this count as wide
MEMO_MAX = 20_000  # verdicts kept per catalog snapshot (a few MB), then counted afresh
ANY = "*"  # a value naming rows of some table the catalog cannot tell
_REFERENCE = re.compile(r"(\w+?)_?(?:_id|Id)")


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    schema: str = "public"
    columns: dict[str, str] = field(default_factory=dict)  # column -> type name
    rls: bool = False
    row_estimate: int = 0
    avg_width: dict[str, int] = field(default_factory=dict)  # from pg_stats when analysed
    # unique keys (valid, non-partial unique indexes and constraints), the primary key first
    unique_keys: tuple[tuple[str, ...], ...] = ()
    primary_key: tuple[str, ...] = ()
    references: frozenset[str] = frozenset()  # tables its foreign keys point to
    analysed: bool = False  # statistics exist: avg_width tells every wide column (else json and the like are)
    foreign_keys: tuple[tuple[tuple[str, ...], str], ...] = ()  # (columns, the table they point to)
    oid: int = 0
    numbers: tuple[int, ...] = ()  # each column's attnum, in the order of ``columns``

    def identifies(self, column: str) -> str | None:
        """The table whose rows a value of ``column`` names: this one for a one-column unique key, the
        referenced one for a one-column foreign key, else None."""
        if (column,) in self.unique_keys:
            return self.name
        return next((ref for cols, ref in self.foreign_keys if cols == (column,)), None)

    def tenant_column(self, names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in self.columns), None)

    def key_pinned(self, columns) -> tuple[str, ...] | None:
        """The unique key (primary first) that ``columns`` (pinned to values) cover: at most one row."""
        return next((key for key in self.unique_keys if set(key) <= columns), None)

    @property
    def wide_columns(self) -> tuple[str, ...]:
        """Columns whose values are large: by their measured average width, or, before the table was
        analysed, by their type (a jsonb column may hold a few bytes or kilobytes)."""
        widths = self.avg_width
        return tuple(c for c, t in self.columns.items()
                     if widths.get(c, 0) > WIDE_TEXT_BYTES
                     or (t in WIDE_TYPES and not self.analysed and c not in widths))


@dataclass(frozen=True, slots=True)
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)  # unqualified name -> table (search_path order)
    loaded: bool = False
    # Per-fingerprint verdicts that depend only on this snapshot (the tenant check), memoized by detectors.
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def get(self, name: str | None) -> Table | None:
        return self.tables.get(name) if name else None

    def remember(self, key, compute):
        """A verdict that depends only on this snapshot and ``key`` (a shape, a RowDescription), computed
        once; the memo is bounded by count and emptied when full."""
        memo = self.memo
        value = memo.get(key, memo)
        if value is memo:
            if len(memo) > MEMO_MAX:
                memo.clear()
            value = memo[key] = compute()
        return value

    def names(self, table: Table, column: str) -> str | None:
        """The table whose rows a value of ``table.column`` names: by its keys and foreign keys, else, for
        a column named like a reference (``author_id``, ``ownerId``), the table so named, or ANY when none
        is (many schemas declare no foreign keys); None for a column that names no rows."""
        named = table.identifies(column)
        if named is not None:
            return named
        stem = _REFERENCE.fullmatch(column)
        if stem is None:
            return None
        return self.remember(("reference", stem.group(1).lower()), lambda: self._guess(stem.group(1).lower()))

    def _guess(self, stem: str) -> str:
        for name in (stem, stem + "s", stem + "es", stem[:-1] + "ies" if stem.endswith("y") else None):
            if name and name in self.tables:
                return name
        return ANY

    def source(self, table_oid: int, number: int) -> tuple[str, str] | None:
        """(table, column) of a result column RowDescription traced to ``table_oid``'s column ``number``."""
        columns = self.memo.get("columns by oid")
        if columns is None:
            columns = self.memo["columns by oid"] = {
                (t.oid, n): (t.name, c) for t in self.tables.values() for n, c in zip(t.numbers, t.columns, strict=False)}
        return columns.get((table_oid, number))
