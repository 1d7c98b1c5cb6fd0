"""The index and health advisor: pure functions from a catalog snapshot and the observed traffic to advice.

Advice uses the finding model of the runtime detectors (kind, severity, confidence, fingerprint,
tables, example, suggestion ...), and every suggestion is the exact statement to run. Index
suggestions for observed statements can then be checked with HypoPG (``detectors.hypo``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from detectors.config import DetectorConfig
from detectors.pipeline import ShapeStats
from detectors.schema import Catalog, Index, Table, TableStats

MAX_INDEX_COLUMNS = 4
MAX_CANDIDATES = 20


@dataclass(slots=True)
class Advice:
    kind: str
    severity: str
    key: str  # what makes it the same advice next time (table, index, columns)
    tables: tuple[str, ...]
    suggestion: str
    message: str
    example: str = ""
    confidence: float = 0.9
    calls: int = 0
    total_ms: float = 0.0
    details: dict = field(default_factory=dict)
    database: str = ""  # the database reviewed (the same table name in two databases is two pieces of advice)

    @property
    def fingerprint(self) -> str:
        scope = f"{self.database}|" if self.database else ""
        return hashlib.blake2b(f"{self.kind}|{scope}{self.key}".encode(), digest_size=8).hexdigest()

    def to_json(self, seen: float) -> dict:
        return {
            "kind": self.kind, "severity": self.severity, "confidence": round(self.confidence, 2),
            "fingerprint": self.fingerprint, "tables": list(self.tables), "count": max(1, self.calls),
            "statements": self.calls, "total_ms": round(self.total_ms, 3), "p95_ms": 0.0,
            "example": self.example or self.suggestion, "suggestion": self.suggestion, "message": self.message,
            "applications": [], "databases": [self.database] if self.database else [], "tags": {},
            "first_seen": seen, "last_seen": seen, "source": "advisor",
            **({"details": self.details} if self.details else {}),
        }


# PostgreSQL's reserved key words (and the non-reserved ones that cannot name a table or column unquoted)
_RESERVED = frozenset("""all analyse analyze and any array as asc asymmetric authorization binary both case cast check
collate collation column concurrently constraint create cross current_catalog current_date current_role current_schema
current_time current_timestamp current_user default deferrable desc distinct do else end except false fetch for
foreign freeze from full grant group having ilike in initially inner intersect into is isnull join lateral leading
left like limit localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing
primary references returning right select session_user similar some symmetric system_user table tablesample then to
trailing true union unique user using variadic verbose when where window with""".split())


def quote_ident(name: str) -> str:
    """Quote an identifier unless PostgreSQL would read it back unchanged without quotes."""
    plain = name.isascii() and name.isidentifier() and name == name.lower() and name not in _RESERVED
    return name if plain else '"' + name.replace('"', '""') + '"'


def qualified(table: str, schema: str = "public") -> str:
    return quote_ident(table) if schema == "public" else f"{quote_ident(schema)}.{quote_ident(table)}"


def index_name(table: str, columns: list[str], suffix: str = "", taken: frozenset[str] = frozenset()) -> str:
    """idx_<table>_<cols>, under PostgreSQL's 63-byte limit and distinct from the names already taken."""
    base = f"idx_{table}_{'_'.join(columns)}{suffix}"
    name = base
    if len(name.encode()) > 63 or name in taken:
        digest = hashlib.blake2b("|".join([table, *columns, suffix]).encode(), digest_size=3).hexdigest()
        head = base.encode()[:56].decode("utf-8", "ignore")
        name = f"{head}_{digest}"
    return name


def create_index_sql(table: str, columns: list[str], predicate: str | None = None, schema: str = "public",
                     partitioned: bool = False, taken: frozenset[str] = frozenset()) -> str:
    where = f" WHERE {predicate}" if predicate else ""
    name = quote_ident(index_name(table, columns, "_partial" if predicate else "", taken))
    cols = ", ".join(quote_ident(c) for c in columns)
    if partitioned:  # CONCURRENTLY is refused on a partitioned table: build per partition, then attach
        return (f"CREATE INDEX {name} ON ONLY {qualified(table, schema)} ({cols}){where}; -- then, for each "
                f"partition: CREATE INDEX CONCURRENTLY ... ({cols}){where}; ALTER INDEX {name} ATTACH PARTITION ...;")
    return f"CREATE INDEX CONCURRENTLY {name} ON {qualified(table, schema)} ({cols}){where};"


def _index_sql_for(catalog: Catalog, table: str, columns: list[str], predicate: str | None = None) -> str:
    t = catalog.schema.get(table)
    taken = frozenset(ix.name for ixs in catalog.indexes.values() for ix in ixs)
    return create_index_sql(table, columns, predicate, t.schema if t else "public", table in catalog.partitioned, taken)


def _drop_index_sql(ix: Index) -> str:
    return f"DROP INDEX CONCURRENTLY {qualified(ix.name, ix.schema)};"


def _advised_tables(catalog: Catalog):
    """Tables that own their indexes: partitions are advised through their partitioned parent."""
    for name, table in catalog.schema.tables.items():
        if name in catalog.partitions or (name not in catalog.stats and name not in catalog.partitioned):
            continue  # partitions, views, foreign tables
        yield name, table


def _leads(indexes: list[Index], columns: list[str]) -> bool:
    """Some valid index starts with exactly these columns (a partial index counts only for its predicate)."""
    n = len(columns)
    return any(ix.valid and ix.predicate is None and list(ix.columns[:n]) == columns for ix in indexes)


def _ratio(a: int, b: int) -> float | None:
    return a / (a + b) if a + b else None


# ------------------------------------------------------------------ schema advice


def missing_tenant_index(catalog: Catalog, calls_by_table: dict[str, int], config: DetectorConfig) -> list[Advice]:
    out = []
    for name, table in _advised_tables(catalog):
        col = table.tenant_column(config.tenant_columns)
        if not col:
            continue
        if any(ix.valid and ix.predicate is None and ix.columns[:1] == (col,) for ix in catalog.indexes.get(name, [])):
            continue
        calls = calls_by_table.get(name, 0)
        hot = calls >= config.hot_table_calls
        out.append(Advice(
            "missing_tenant_index", "critical" if hot else "warning", name, (name,),
            _index_sql_for(catalog, name, [col]),
            (f"P0: {calls} observed statements on {name}, and no index leads with {col}" if hot
             else f"no index on {name} leads with its tenant column {col}"),
            calls=calls, details={"priority": "P0" if hot else "P1", "rows": table.row_estimate},
        ))
    return out


def missing_fk_index(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    for fk in catalog.foreign_keys:
        if fk.table in catalog.partitions:
            continue  # the parent's foreign key is advised once, on the parent
        indexes = catalog.indexes.get(fk.table, [])
        cols = list(fk.columns)
        # any index whose leading columns are the key's columns, in any order, serves the FK's lookups
        if any(ix.valid and ix.predicate is None and set(ix.columns[: len(cols)]) == set(cols) for ix in indexes):
            continue
        out.append(Advice(
            "missing_fk_index", "warning", f"{fk.table}|{fk.name}", (fk.table, fk.ref_table),
            _index_sql_for(catalog, fk.table, cols),
            f"foreign key {fk.name} ({', '.join(cols)}) -> {fk.ref_table} has no index: joins and "
            f"deletes on {fk.ref_table} scan {fk.table}",
        ))
    return out


def duplicate_index(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    """A plain btree index whose key leads another index with the same operator classes and predicate.

    Never a unique index (it enforces something), one with INCLUDE columns, or one on a partition.
    """
    out = []
    for name, indexes in catalog.indexes.items():
        for ix in indexes:
            if (ix.backs_constraint or ix.unique or ix.has_include or ix.on_partition or ix.method != "btree"
                    or None in ix.columns or not ix.valid):
                continue
            n = len(ix.columns)
            for other in indexes:
                if other is ix or other.method != "btree" or other.predicate != ix.predicate or not other.valid:
                    continue
                same_key = other.columns[:n] == ix.columns and other.opclasses[:n] == ix.opclasses
                exact_twin = len(other.columns) == n and not other.unique and not other.backs_constraint
                if same_key and (len(other.columns) > n or not exact_twin or other.name < ix.name):
                    out.append(Advice(
                        "duplicate_index", "warning", f"{name}|{ix.name}", (name,), _drop_index_sql(ix),
                        f"{ix.name} ({', '.join(ix.columns)}) is covered by {other.name} "
                        f"({', '.join(c or '<expr>' for c in other.columns)}): every write pays for both",
                        details={"size_bytes": ix.size, "covered_by": other.name},
                    ))
                    break
    return out


def _serves_foreign_key(catalog: Catalog, ix: Index) -> bool:
    for fk in catalog.foreign_keys:
        if fk.table == ix.table and set(ix.columns[: len(fk.columns)]) == set(fk.columns):
            return True
    return False


def unused_index(catalog: Catalog, config: DetectorConfig, first_seen: dict[str, float] | None = None,
                 min_age_s: float = 0.0) -> list[Advice]:
    """Indexes no scan used while their table was read; with ``first_seen`` (name -> time the proxy first
    saw the index), only those known for at least ``min_age_s``, so a new index gets a chance."""
    out = []
    for name, indexes in catalog.indexes.items():
        stats = catalog.stats.get(name)
        if stats is None or stats.seq_scan + stats.idx_scan < 100:
            continue  # the table itself is barely read yet: no verdict on its indexes
        for ix in indexes:
            if (ix.scans or ix.unique or ix.primary or ix.backs_constraint or not ix.valid or ix.on_partition
                    or _serves_foreign_key(catalog, ix)):
                continue
            if first_seen is not None and catalog.read_at - first_seen.get(ix.name, catalog.read_at) < min_age_s:
                continue
            out.append(Advice(
                "unused_index", "info" if ix.size < 1 << 20 else "warning", f"{name}|{ix.name}", (name,),
                _drop_index_sql(ix),
                f"{ix.name} has not been used by any scan since statistics were reset, while {name} was read "
                f"{stats.seq_scan + stats.idx_scan} times: writes pay for it without benefit",
                confidence=0.7, details={"size_bytes": ix.size},
            ))
    return out


# ------------------------------------------------------------------ health ratios


def health_ratios(catalog: Catalog, config: DetectorConfig) -> dict[str, float | None]:
    """The documents' health numbers, for /metrics and the health advice."""
    idx_hit = sum(s.idx_hit for s in catalog.stats.values())
    idx_read = sum(s.idx_read for s in catalog.stats.values())
    large = [s for n, s in catalog.stats.items() if s.n_live >= config.large_table_rows]
    seq = sum(s.seq_scan for s in large)
    idx = sum(s.idx_scan for s in large)
    live = sum(s.n_live for s in catalog.stats.values())
    dead = sum(s.n_dead for s in catalog.stats.values())
    return {
        "index_hit_ratio": _ratio(idx_hit, idx_read) if idx_hit + idx_read >= config.min_index_blocks else None,
        "seq_scan_ratio": _ratio(seq, idx),
        "dead_tuple_ratio": _ratio(dead, live),
        "connection_ratio": catalog.connections / catalog.max_connections if catalog.max_connections else None,
    }


@dataclass(frozen=True, slots=True)
class TableRatio:
    """A per-table health ratio the seeds give thresholds for: ``part / (part + rest)`` of the table's
    statistics, judged against the (warning, error) pair in the config field ``thresholds``."""

    kind: str
    thresholds: str
    bad_below: bool  # a cache hit ratio is bad below its thresholds; the other ratios above theirs
    counts: Callable[[TableStats], tuple[int, int]]  # (part, rest)
    enough: Callable[[TableStats, DetectorConfig], bool]  # enough activity for the ratio to mean anything
    fix: Callable[[str, Table | None], str]
    says: str  # the message: {name}, {ratio}, {bounds} and the statistics' own fields ({n_live} ...)
    details: Callable[[TableStats], dict] = lambda s: {}


INDEX_HIT = TableRatio(
    "low_index_hit_ratio", "index_hit_ratio", True, lambda s: (s.idx_hit, s.idx_read),
    lambda s, c: s.idx_hit + s.idx_read >= c.min_index_blocks,
    lambda name, _t: (f"-- {name}: index pages come from disk. Check shared_buffers against the working set "
                      f"(SHOW shared_buffers; SELECT pg_size_pretty(pg_indexes_size('{name}'));) and drop unused "
                      "indexes."),
    "index cache hit ratio on {name} is {ratio:.1%} ({bounds})")
SEQ_SCAN = TableRatio(
    "high_seq_scan_ratio", "seq_scan_ratio", False, lambda s: (s.seq_scan, s.idx_scan),
    lambda s, c: s.n_live >= c.large_table_rows and s.seq_scan + s.idx_scan >= 20,
    lambda name, _t: (f"-- find the statements that scan {name} sequentially (missing_index findings, or "
                      "EXPLAIN) and index their WHERE columns"),
    "{ratio:.1%} of scans on {name} ({n_live} rows) are sequential ({bounds})",
    lambda s: {"seq_scan": s.seq_scan, "idx_scan": s.idx_scan})
DEAD_TUPLES = TableRatio(
    "high_dead_tuple_ratio", "dead_tuple_ratio", False, lambda s: (s.n_dead, s.n_live),
    lambda s, _c: s.n_live + s.n_dead >= 1000,
    lambda name, t: f"VACUUM (ANALYZE) {qualified(name, t.schema if t else 'public')};",
    "{n_dead} dead tuples on {name}, {ratio:.1%} of its rows ({bounds}): autovacuum is not keeping up",
    lambda s: {"dead": s.n_dead, "live": s.n_live})
TABLE_RATIOS = (INDEX_HIT, SEQ_SCAN, DEAD_TUPLES)


def table_ratios(catalog: Catalog, config: DetectorConfig, rules: tuple[TableRatio, ...] = TABLE_RATIOS) -> list[Advice]:
    """Each table whose ratio is past a rule's warning threshold: one advice, error past the second."""
    out = []
    for rule in rules:
        warn, err = getattr(config, rule.thresholds)
        side = "below" if rule.bad_below else "above"
        bounds = f"warning {side} {warn:.0%}, error {side} {err:.0%}"
        for name, s in catalog.stats.items():
            if not rule.enough(s, config):
                continue
            part, rest = rule.counts(s)
            ratio = part / (part + rest)
            if ratio >= warn if rule.bad_below else ratio <= warn:
                continue
            severe = ratio < err if rule.bad_below else ratio > err
            out.append(Advice(
                rule.kind, "error" if severe else "warning", name, (name,), rule.fix(name, catalog.schema.get(name)),
                rule.says.format(name=name, ratio=ratio, bounds=bounds, **asdict(s)),
                details={"ratio": round(ratio, 4), **rule.details(s)},
            ))
    return out


def connection_saturation(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    if not catalog.max_connections:
        return []
    ratio = catalog.connections / catalog.max_connections
    warn, err = config.connection_ratio
    if ratio <= warn:
        return []
    return [Advice(
        "connection_saturation", "error" if ratio > err else "warning", "server", (),
        "-- put a pooler in transaction mode in front of the server (PgBouncer), cap each app's pool size, "
        "or raise max_connections with memory to match",
        f"{catalog.connections} of max_connections {catalog.max_connections} in use ({ratio:.0%}; warning above "
        f"{warn:.0%}, error above {err:.0%})",
        details={"ratio": round(ratio, 4)},
    )]


# ------------------------------------------------------------------ advice from the observed traffic

_TIME_TYPES = ("timestamp", "timestamptz", "date", "timestamp without time zone", "timestamp with time zone")


def partition_candidate(catalog: Catalog, observed: list[ShapeStats], config: DetectorConfig) -> list[Advice]:
    out = []
    for name, s in catalog.stats.items():
        table = catalog.schema.get(name)
        if table is None or s.n_live < config.partition_min_rows:
            continue
        growth = s.n_ins / s.n_live if s.n_live else 0.0
        if growth < 0.2:
            continue  # not growing fast: most rows were there when statistics were last reset
        time_cols = {c for c, t in table.columns.items() if t in _TIME_TYPES}
        used = [c for st in observed for (t, c) in (st.fp.filter_columns + st.fp.order_by)
                if (t == name or (t is None and st.fp.tables == (name,))) and c in time_cols]
        if not used:
            continue
        col = max(set(used), key=used.count)
        out.append(Advice(
            "partition_candidate", "info", name, (name,),
            f"-- partition {name} by range on {col} (e.g. monthly): CREATE TABLE {name}_new (LIKE {name} INCLUDING ALL) "
            f"PARTITION BY RANGE ({col}); then move the rows, so old periods can be detached and scans prune",
            f"{name} has {s.n_live} rows, {growth:.0%} inserted since statistics were reset, and is queried by {col}",
            details={"rows": s.n_live, "column": col},
        ))
    return out


@dataclass(slots=True)
class IndexCandidate:
    table: str
    columns: list[str]
    predicate: str | None
    shape: ShapeStats
    reason: str
    sql: str = ""
    schema: str = "public"
    # an existing index already serves every equality column: this one only adds sort or range columns,
    # worth suggesting only when HypoPG shows the gain
    refines: str | None = None

    @property
    def hypothetical_sql(self) -> str:
        where = f" WHERE {self.predicate}" if self.predicate else ""
        cols = ", ".join(quote_ident(c) for c in self.columns)
        return f"CREATE INDEX ON {qualified(self.table, self.schema)} ({cols}){where}"


def _index_columns(st: ShapeStats, table: str, columns: dict[str, str], tenant: str | None):
    fp = st.fp
    single = len(fp.tables) == 1

    def mine(ref) -> bool:
        t, c = ref
        return (t == table or (t is None and single)) and c in columns

    # A constant is code when every execution of the shape carried it (status = 'ACTIVE', proven by the
    # pipeline from each execution's own values): a partial index fits it. Any other literal is data
    # (a client interpolating values): its column is a plain equality column.
    constants = {c: lit for t, c, lit in fp.keyword_constants if mine((t, c))}
    constants.update({c: st.proven[slot] for t, c, slot, _quoted in fp.constant_slots
                      if slot in st.proven and mine((t, c)) and c != tenant})  # a tenant id is data
    equality = [c for t, c in sorted(fp.constrained, key=lambda r: r[1]) if mine((t, c)) and c not in constants]
    equality.sort(key=lambda c: (c != tenant,))  # the tenant column leads, as every query of a tenant pins it
    order = [c for t, c in fp.order_by if mine((t, c))]
    ranges = [c for t, c in fp.filter_columns if mine((t, c))]
    cols: list[str] = []
    for c in equality + order + ranges:
        if c not in cols and c not in constants:
            cols.append(c)
    predicate = " AND ".join(f"{quote_ident(c)} = {lit}" for c, lit in sorted(constants.items())) or None
    return cols[:MAX_INDEX_COLUMNS], predicate


def index_candidates(catalog: Catalog, observed: list[ShapeStats], flagged: set[str],
                     config: DetectorConfig) -> list[IndexCandidate]:
    """Observed shapes that are slow, frequent or part of an N+1, and the index each lacks."""
    out: dict[tuple, IndexCandidate] = {}
    warn_s = config.slow_query_ms[0] / 1000
    for st in observed:
        fp = st.fp
        if fp.kind not in ("SELECT", "UPDATE", "DELETE") or not fp.parsed:
            continue
        reason = ("part of a runtime finding" if fp.id in flagged else "slow" if st.max_s >= warn_s
                  else "frequent" if st.calls >= config.frequent_calls else None)
        if reason is None:
            continue
        for name in fp.tables:
            table = catalog.schema.get(name)
            if table is None or name not in catalog.stats:
                continue
            if name in catalog.partitions:
                continue
            cols, predicate = _index_columns(st, name, table.columns, table.tenant_column(config.tenant_columns))
            if not cols:
                continue
            indexes = catalog.indexes.get(name, [])
            pinned = {c for t, c in fp.constrained if t == name or (t is None and len(fp.tables) == 1)}
            if any(ix.unique and ix.valid and ix.predicate is None and None not in ix.columns
                   and set(ix.columns) <= pinned for ix in indexes):
                continue  # a unique index already finds the one row
            if _leads(indexes, cols) or (predicate and any(ix.predicate and ix.columns[: len(cols)] == tuple(cols)
                                                           for ix in indexes)):
                continue
            equality = {c for c in cols if c in pinned}
            serving = next((ix.name for ix in indexes if equality and ix.valid and ix.predicate is None
                            and set(ix.columns[: len(equality)]) == equality), None)
            key = (name, tuple(cols), predicate)
            if key not in out or out[key].shape.total_s < st.total_s:
                out[key] = IndexCandidate(name, cols, predicate, st, reason,
                                          _index_sql_for(catalog, name, cols, predicate), table.schema,
                                          refines=serving)
    # the statements that cost the most first; a bounded number per review (each is planned twice)
    return sorted(out.values(), key=lambda c: -c.shape.total_s)[:MAX_CANDIDATES]


def missing_index_advice(candidate: IndexCandidate, costs: tuple[float, float] | None) -> Advice:
    st = candidate.shape
    details = {"reason": candidate.reason, "columns": candidate.columns}
    if costs is not None:
        before, after = costs
        details.update(cost_before=round(before, 2), cost_after=round(after, 2))
        verified = f"; HypoPG: plan cost {before:.0f} -> {after:.0f}"
    else:
        verified = "; not verified (HypoPG is not installed in this database)"
    severity = "error" if candidate.reason in ("slow", "part of a runtime finding") else "warning"
    return Advice(
        "missing_index", severity, f"{candidate.table}|{','.join(candidate.columns)}|{candidate.predicate}",
        (candidate.table,), candidate.sql,
        f"{candidate.reason} statement filters/sorts {candidate.table} on ({', '.join(candidate.columns)}) "
        f"and no index serves it{verified}",
        example=st.fp.text, confidence=0.95 if costs else 0.6, calls=st.calls, total_ms=st.total_s * 1000,
        details=details,
    )


def advise(catalog: Catalog, observed: list[ShapeStats], config: DetectorConfig,
           index_first_seen: dict[str, float] | None = None) -> list[Advice]:
    """Everything except missing_index, which needs the IO of verification (see ``detectors.hypo``)."""
    calls_by_table: dict[str, int] = {}
    for st in observed:
        for t in st.fp.tables:
            calls_by_table[t] = calls_by_table.get(t, 0) + st.calls
    out: list[Advice] = []
    out += missing_tenant_index(catalog, calls_by_table, config)
    out += missing_fk_index(catalog, config)
    out += duplicate_index(catalog, config)
    out += unused_index(catalog, config, index_first_seen, config.unused_index_min_age_s)
    out += table_ratios(catalog, config)
    out += connection_saturation(catalog, config)
    out += partition_candidate(catalog, observed, config)
    return [a for a in out if a.kind not in config.disabled and a.kind not in config.silenced_kinds
            and a.fingerprint not in config.silenced_fingerprints]
