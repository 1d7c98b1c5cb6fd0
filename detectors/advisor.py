"""The index and health advisor: pure functions from a catalog snapshot and the observed traffic to advice.

Advice uses the finding model of the runtime detectors (kind, severity, confidence, fingerprint,
tables, example, suggestion ...), and every suggestion is the exact statement to run. Index
suggestions for observed statements can then be checked with HypoPG (``detectors.hypo``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .catalog import Catalog, Index
from .config import DetectorConfig
from .fingerprint import Fingerprint
from .pipeline import ShapeStats

MAX_INDEX_COLUMNS = 4


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

    @property
    def fingerprint(self) -> str:
        return hashlib.blake2b(f"{self.kind}|{self.key}".encode(), digest_size=8).hexdigest()

    def to_json(self, seen: float) -> dict:
        return {
            "kind": self.kind, "severity": self.severity, "confidence": round(self.confidence, 2),
            "fingerprint": self.fingerprint, "tables": list(self.tables), "count": max(1, self.calls),
            "statements": self.calls, "total_ms": round(self.total_ms, 3), "p95_ms": 0.0,
            "example": self.example or self.suggestion, "suggestion": self.suggestion, "message": self.message,
            "applications": [], "tags": {}, "first_seen": seen, "last_seen": seen, "source": "advisor",
            **({"details": self.details} if self.details else {}),
        }


def index_name(table: str, columns: list[str], suffix: str = "") -> str:
    name = f"idx_{table}_{'_'.join(columns)}{suffix}"
    if len(name) > 63:  # PostgreSQL truncates identifiers at 63 bytes: keep it unique and readable
        digest = hashlib.blake2b(name.encode(), digest_size=3).hexdigest()
        name = name[:56] + "_" + digest
    return name


def _quote(name: str) -> str:
    return name if name.isidentifier() and name == name.lower() else '"' + name.replace('"', '""') + '"'


def create_index_sql(table: str, columns: list[str], predicate: str | None = None, schema: str = "public") -> str:
    qualified = _quote(table) if schema == "public" else f"{_quote(schema)}.{_quote(table)}"
    where = f" WHERE {predicate}" if predicate else ""
    suffix = "_partial" if predicate else ""
    return (f"CREATE INDEX CONCURRENTLY {index_name(table, columns, suffix)} ON {qualified} "
            f"({', '.join(_quote(c) for c in columns)}){where};")


def _leads(indexes: list[Index], columns: list[str]) -> bool:
    """Some valid index starts with exactly these columns (a partial index counts only for its predicate)."""
    n = len(columns)
    return any(ix.valid and ix.predicate is None and list(ix.columns[:n]) == columns for ix in indexes)


def _ratio(a: int, b: int) -> float | None:
    return a / (a + b) if a + b else None


# ------------------------------------------------------------------ schema advice


def missing_tenant_index(catalog: Catalog, calls_by_table: dict[str, int], config: DetectorConfig) -> list[Advice]:
    out = []
    for name, table in catalog.schema.tables.items():
        col = table.tenant_column(config.tenant_columns)
        if not col or name not in catalog.stats:  # views and foreign tables have no indexes of their own
            continue
        if any(ix.valid and ix.columns[:1] == (col,) for ix in catalog.indexes.get(name, [])):
            continue
        calls = calls_by_table.get(name, 0)
        hot = calls >= config.hot_table_calls
        out.append(Advice(
            "missing_tenant_index", "critical" if hot else "warning", name, (name,),
            create_index_sql(name, [col], schema=table.schema),
            (f"P0: {calls} observed statements on {name}, and no index leads with {col}" if hot
             else f"no index on {name} leads with its tenant column {col}"),
            calls=calls, details={"priority": "P0" if hot else "P1", "rows": table.row_estimate},
        ))
    return out


def missing_fk_index(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    for fk in catalog.foreign_keys:
        indexes = catalog.indexes.get(fk.table, [])
        cols = list(fk.columns)
        # any index whose leading columns are the key's columns, in any order, serves the FK's lookups
        if any(ix.valid and ix.predicate is None and set(ix.columns[: len(cols)]) == set(cols) for ix in indexes):
            continue
        table = catalog.schema.get(fk.table)
        out.append(Advice(
            "missing_fk_index", "warning", f"{fk.table}|{fk.name}", (fk.table, fk.ref_table),
            create_index_sql(fk.table, cols, schema=table.schema if table else "public"),
            f"foreign key {fk.name} ({', '.join(cols)}) -> {fk.ref_table} has no index: joins and "
            f"deletes on {fk.ref_table} scan {fk.table}",
        ))
    return out


def duplicate_index(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    for name, indexes in catalog.indexes.items():
        for ix in indexes:
            if ix.backs_constraint or ix.method != "btree" or None in ix.columns:
                continue
            for other in indexes:
                if other is ix or other.method != "btree" or other.predicate != ix.predicate:
                    continue
                n = len(ix.columns)
                covers = other.columns[:n] == ix.columns and (len(other.columns) > n or other.name < ix.name
                                                             or other.backs_constraint)
                if covers and other.valid:
                    out.append(Advice(
                        "duplicate_index", "warning", f"{name}|{ix.name}", (name,),
                        f"DROP INDEX CONCURRENTLY {_quote(ix.name)};",
                        f"{ix.name} ({', '.join(ix.columns)}) is covered by {other.name} "
                        f"({', '.join(c or '<expr>' for c in other.columns)}): every write pays for both",
                        details={"size_bytes": ix.size, "covered_by": other.name},
                    ))
                    break
    return out


def unused_index(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    for name, indexes in catalog.indexes.items():
        stats = catalog.stats.get(name)
        if stats is None or stats.seq_scan + stats.idx_scan < 100:
            continue  # the table itself is barely read yet: no verdict on its indexes
        for ix in indexes:
            if ix.scans or ix.unique or ix.primary or ix.backs_constraint or not ix.valid:
                continue
            out.append(Advice(
                "unused_index", "info" if ix.size < 1 << 20 else "warning", f"{name}|{ix.name}", (name,),
                f"DROP INDEX CONCURRENTLY {_quote(ix.name)};",
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


def low_index_hit_ratio(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    warn, err = config.index_hit_ratio
    for name, s in catalog.stats.items():
        if s.idx_hit + s.idx_read < config.min_index_blocks:
            continue
        ratio = s.idx_hit / (s.idx_hit + s.idx_read)
        if ratio >= warn:
            continue
        out.append(Advice(
            "low_index_hit_ratio", "error" if ratio < err else "warning", name, (name,),
            f"-- {name}: index pages come from disk. Check shared_buffers against the working set "
            f"(SHOW shared_buffers; SELECT pg_size_pretty(pg_indexes_size('{name}'));) and drop unused indexes.",
            f"index cache hit ratio on {name} is {ratio:.1%} (warning below {warn:.0%}, error below {err:.0%})",
            details={"ratio": round(ratio, 4)},
        ))
    return out


def high_seq_scan_ratio(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    warn, err = config.seq_scan_ratio
    for name, s in catalog.stats.items():
        if s.n_live < config.large_table_rows or s.seq_scan + s.idx_scan < 20:
            continue
        ratio = s.seq_scan / (s.seq_scan + s.idx_scan)
        if ratio <= warn:
            continue
        out.append(Advice(
            "high_seq_scan_ratio", "error" if ratio > err else "warning", name, (name,),
            f"-- find the statements that scan {name} sequentially (missing_index findings, or "
            f"EXPLAIN) and index their WHERE columns",
            f"{ratio:.1%} of scans on {name} ({s.n_live} rows) are sequential "
            f"(warning above {warn:.0%}, error above {err:.0%})",
            details={"ratio": round(ratio, 4), "seq_scan": s.seq_scan, "idx_scan": s.idx_scan},
        ))
    return out


def high_dead_tuple_ratio(catalog: Catalog, config: DetectorConfig) -> list[Advice]:
    out = []
    warn, err = config.dead_tuple_ratio
    for name, s in catalog.stats.items():
        if s.n_live + s.n_dead < 1000:
            continue
        ratio = s.n_dead / (s.n_live + s.n_dead)
        if ratio <= warn:
            continue
        table = catalog.schema.get(name)
        qualified = name if not table or table.schema == "public" else f"{table.schema}.{name}"
        out.append(Advice(
            "high_dead_tuple_ratio", "error" if ratio > err else "warning", name, (name,),
            f"VACUUM (ANALYZE) {qualified};",
            f"{s.n_dead} dead tuples on {name}, {ratio:.1%} of its rows (warning above {warn:.0%}, error "
            f"above {err:.0%}): autovacuum is not keeping up",
            details={"ratio": round(ratio, 4), "dead": s.n_dead, "live": s.n_live},
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

    @property
    def sql(self) -> str:
        return create_index_sql(self.table, self.columns, self.predicate)

    @property
    def hypothetical_sql(self) -> str:
        where = f" WHERE {self.predicate}" if self.predicate else ""
        return f"CREATE INDEX ON {_quote(self.table)} ({', '.join(_quote(c) for c in self.columns)}){where}"


def _index_columns(fp: Fingerprint, table: str, columns: dict[str, str], tenant: str | None):
    single = len(fp.tables) == 1

    def mine(ref) -> bool:
        t, c = ref
        return (t == table or (t is None and single)) and c in columns

    constants = {c: lit for t, c, lit in fp.constant_predicates if mine((t, c))}
    equality = [c for t, c in sorted(fp.constrained, key=lambda r: r[1]) if mine((t, c)) and c not in constants]
    equality.sort(key=lambda c: (c != tenant,))  # the tenant column leads, as every query of a tenant pins it
    order = [c for t, c in fp.order_by if mine((t, c))]
    ranges = [c for t, c in fp.filter_columns if mine((t, c))]
    cols: list[str] = []
    for c in equality + order + ranges:
        if c not in cols and c not in constants:
            cols.append(c)
    predicate = " AND ".join(f"{_quote(c)} = {lit}" for c, lit in sorted(constants.items())) or None
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
            cols, predicate = _index_columns(fp, name, table.columns, table.tenant_column(config.tenant_columns))
            if predicate and not st.parameterized:
                predicate = None  # literals in interpolated statements may be data, not code
            if not cols:
                continue
            indexes = catalog.indexes.get(name, [])
            if _leads(indexes, cols) or (predicate and any(ix.predicate for ix in indexes)):
                continue
            key = (name, tuple(cols), predicate)
            if key not in out or out[key].shape.total_s < st.total_s:
                out[key] = IndexCandidate(name, cols, predicate, st, reason)
    return list(out.values())


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


def advise(catalog: Catalog, observed: list[ShapeStats], config: DetectorConfig) -> list[Advice]:
    """Everything except missing_index, which needs the IO of verification (see ``detectors.hypo``)."""
    calls_by_table: dict[str, int] = {}
    for st in observed:
        for t in st.fp.tables:
            calls_by_table[t] = calls_by_table.get(t, 0) + st.calls
    out: list[Advice] = []
    out += missing_tenant_index(catalog, calls_by_table, config)
    out += missing_fk_index(catalog, config)
    out += duplicate_index(catalog, config)
    out += unused_index(catalog, config)
    out += low_index_hit_ratio(catalog, config)
    out += high_seq_scan_ratio(catalog, config)
    out += high_dead_tuple_ratio(catalog, config)
    out += connection_saturation(catalog, config)
    out += partition_candidate(catalog, observed, config)
    return [a for a in out if a.kind not in config.disabled and a.kind not in config.silenced_kinds
            and a.fingerprint not in config.silenced_fingerprints]
