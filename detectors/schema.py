"""What the detectors know of a database: tables, column types, keys, indexes, tenant columns.

Pure data: ``detectors.database.catalog`` reads it from the server (the catalog snapshot, refreshed
periodically); detectors and the advisor only see these immutable values.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from detectors.sizing import ENTRY_OVERHEAD, deep_size

WIDE_TYPES = frozenset({"json", "jsonb", "bytea", "xml", "tsvector"})
WIDE_TEXT_BYTES = 256  # text columns whose average width (pg_stats) is above this count as wide
UNSHARED_VERDICT_BYTES = 1 << 20  # the verdicts of a snapshot no pipeline took (tests, the empty one)
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


class Verdicts:
    """Verdicts that depend only on a catalog snapshot and a key, for every snapshot of one pipeline,
    bounded in bytes: a client chooses how many keys there are and how big (a RowDescription's sources
    hold up to 1,664 columns). The oldest go first: a replaced snapshot's are never asked for again."""

    __slots__ = ("entries", "limit", "used", "evicted", "_snapshots")

    def __init__(self, limit: int = UNSHARED_VERDICT_BYTES):
        self.entries: OrderedDict = OrderedDict()  # (snapshot number, key) -> (verdict, bytes charged)
        self.limit = limit
        self.used = 0
        self.evicted = 0  # verdicts dropped, or not kept because one alone would take a quarter
        self._snapshots = itertools.count()

    def number(self) -> int:
        """A snapshot's own number for its keys (an id() is reused once its snapshot is gone)."""
        return next(self._snapshots)

    def keep(self, key, value):
        """``value`` kept for ``key`` within the bound (Schema.remember looks it up: one call less)."""
        # (the snapshot's tables a verdict points to are the catalog's, not the memo's)
        size = deep_size(key, opaque=(Table,)) + deep_size(value, opaque=(Table,)) + ENTRY_OVERHEAD
        if size > self.limit // 4:
            self.evicted += 1  # computed again when asked: kept, it would crowd out every other
            return value
        entries = self.entries
        entries[key] = (value, size)
        self.used += size
        while self.used > self.limit:
            self.used -= entries.popitem(last=False)[1][1]
            self.evicted += 1
        return value


class Memo:
    """A snapshot's place in the Verdicts of the pipeline that took it (one of its own until then), and
    its columns by table OID."""

    __slots__ = ("verdicts", "snapshot", "columns")

    def __init__(self):
        self.verdicts: Verdicts | None = None
        self.snapshot = 0
        self.columns: dict | None = None

    def bind(self, verdicts: Verdicts) -> None:
        self.verdicts = verdicts
        self.snapshot = verdicts.number()


@dataclass(frozen=True, slots=True)
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)  # unqualified name -> table (search_path order)
    loaded: bool = False
    # Verdicts that depend only on this snapshot (the tenant check), memoized by detectors (a new one per
    # snapshot, even one made by dataclasses.replace).
    memo: Memo = field(default_factory=Memo, init=False, compare=False, repr=False)

    def get(self, name: str | None) -> Table | None:
        return self.tables.get(name) if name else None

    def remember(self, key, compute):
        """A verdict that depends only on this snapshot and ``key`` (a shape, a RowDescription), computed
        once while it stays within its pipeline's bytes for verdicts."""
        memo = self.memo
        verdicts = memo.verdicts
        if verdicts is None:
            memo.bind(verdicts := Verdicts())
        key = (memo.snapshot, key)
        kept = verdicts.entries.get(key)
        return kept[0] if kept is not None else verdicts.keep(key, compute())

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
        columns = self.memo.columns
        if columns is None:  # (as big as the catalog, whatever the traffic)
            columns = self.memo.columns = {
                (t.oid, n): (t.name, c) for t in self.tables.values() for n, c in zip(t.numbers, t.columns, strict=False)}
        return columns.get((table_oid, number))


@dataclass(frozen=True, slots=True)
class Index:
    table: str
    name: str
    columns: tuple[str | None, ...]  # key columns in order; None for an expression
    unique: bool = False
    primary: bool = False
    valid: bool = True
    method: str = "btree"
    predicate: str | None = None  # partial index WHERE clause
    definition: str = ""
    size: int = 0
    scans: int = 0
    backs_constraint: bool = False  # a PRIMARY KEY / UNIQUE / EXCLUDE constraint uses it
    schema: str = "public"
    opclasses: tuple[str, ...] = ()  # operator class and collation of each key column
    has_include: bool = False  # INCLUDE (...) payload columns
    on_partition: bool = False  # attached to an index of a partitioned table: managed through the parent


@dataclass(frozen=True, slots=True)
class ForeignKey:
    table: str
    name: str
    columns: tuple[str, ...]
    ref_table: str


@dataclass(frozen=True, slots=True)
class TableStats:
    seq_scan: int = 0
    idx_scan: int = 0
    n_live: int = 0
    n_dead: int = 0
    n_ins: int = 0
    heap_read: int = 0
    heap_hit: int = 0
    idx_read: int = 0
    idx_hit: int = 0
    size: int = 0  # bytes, with indexes and TOAST


@dataclass(slots=True)
class Catalog:
    schema: Schema
    partitions: frozenset[str] = frozenset()  # tables that are partitions (advice goes to the parent)
    partitioned: frozenset[str] = frozenset()  # partitioned parents (no CREATE INDEX CONCURRENTLY)
    indexes: dict[str, list[Index]] = field(default_factory=dict)  # table -> indexes
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    stats: dict[str, TableStats] = field(default_factory=dict)
    max_connections: int = 0
    connections: int = 0
    hypopg: str | None = None  # the (quoted) schema HypoPG's functions live in, when installed
    pg_stat_statements: bool = False
    read_at: float = field(default_factory=time.time)


def _with_keys(tables: dict[str, Table], indexes: dict[str, list[Index]], fks: list[ForeignKey]) -> dict[str, Table]:
    """The tables with their unique keys (what pins one row) and the tables their foreign keys point to."""
    from dataclasses import replace

    out = {}
    for name, table in tables.items():
        keys = sorted({ix.columns for ix in indexes.get(name, []) if ix.unique and ix.valid and ix.predicate is None
                       and None not in ix.columns},
                      key=lambda cols: (not any(ix.primary and ix.columns == cols for ix in indexes.get(name, [])),
                                        len(cols)))
        primary = next((ix.columns for ix in indexes.get(name, []) if ix.primary), ())
        foreign = tuple((fk.columns, fk.ref_table) for fk in fks if fk.table == name)
        out[name] = replace(table, unique_keys=tuple(keys), primary_key=primary,
                            references=frozenset(ref for _c, ref in foreign), foreign_keys=foreign)
    return out
