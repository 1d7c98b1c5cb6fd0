"""What the detectors know of the database: tables, column types, tenant columns, row-level security.

Read from the upstream catalog over an asyncpg side connection with read-only statements, and
refreshed periodically; detectors only see the immutable ``Schema`` snapshot.
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


CATALOG_SQL = """
SELECT n.nspname AS schema, c.relname AS table, c.relrowsecurity AS rls,
       greatest(c.reltuples, 0)::bigint AS rows,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       array_agg(t.typname::text ORDER BY a.attnum) AS types
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND has_table_privilege(c.oid, 'SELECT')
GROUP BY n.nspname, c.relname, c.relrowsecurity, c.reltuples
"""
WIDTH_SQL = "SELECT schemaname, tablename, attname, avg_width FROM pg_stats WHERE avg_width > $1"
_TYPE_NAMES = {"varchar": "character varying", "int4": "integer", "int8": "bigint", "bool": "boolean"}


async def load_schema(dsn: str, timeout: float = 10.0, ssl=None) -> Schema:
    """Read the catalog; the side connection is read-only and closed after each refresh."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=timeout, ssl=ssl,
                                 server_settings={"application_name": "pgloupe-catalog",
                                                  "default_transaction_read_only": "on"})
    try:
        search_path = [s.strip().strip('"') for s in (await conn.fetchval("SHOW search_path")).split(",")]
        rows = await conn.fetch(CATALOG_SQL)
        widths: dict[tuple[str, str], dict[str, int]] = {}
        for r in await conn.fetch(WIDTH_SQL, WIDE_TEXT_BYTES):
            widths.setdefault((r["schemaname"], r["tablename"]), {})[r["attname"]] = r["avg_width"]
    finally:
        await conn.close()
    order = {name: i for i, name in enumerate(s for s in search_path if s != "$user")}
    tables: dict[str, Table] = {}
    for r in sorted(rows, key=lambda r: order.get(r["schema"], len(order))):
        if r["table"] in tables:
            continue  # an earlier schema on the search_path wins, as in the server
        columns = {c: _TYPE_NAMES.get(t, t) for c, t in zip(r["columns"], r["types"], strict=True)}
        tables[r["table"]] = Table(r["table"], r["schema"], columns, r["rls"], r["rows"],
                                   widths.get((r["schema"], r["table"]), {}))
    return Schema(tables, loaded=True)
