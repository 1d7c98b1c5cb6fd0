"""A database's catalog and statistics read into the pure snapshot of detectors.schema, over an
asyncpg side connection of pgloupe's own.

Read-only: every statement is a SELECT from the catalog or the statistics views, in a session with
``default_transaction_read_only``. The snapshot feeds the detectors (``Schema``) and the index and
health advisor (indexes, foreign keys, pg_stat_* counters, connection use).
"""

from __future__ import annotations

from detectors.schema import WIDE_TEXT_BYTES, Catalog, ForeignKey, Index, Schema, Table, TableStats, _with_keys

TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS table, c.relrowsecurity AS rls, c.relkind::text AS kind,
       c.relispartition AS is_partition, greatest(c.reltuples, 0)::bigint AS rows, c.reltuples > 0 AS analysed,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_total_relation_size(c.oid) ELSE 0 END AS size,
       c.oid::bigint AS oid, array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       array_agg(a.attnum::int ORDER BY a.attnum) AS numbers,
       array_agg(t.typname::text ORDER BY a.attnum) AS types
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
GROUP BY n.nspname, c.relname, c.relrowsecurity, c.reltuples, c.oid, c.relkind, c.relispartition
"""


INDEXES_SQL = """
SELECT n.nspname AS schema, t.relname AS table, i.relname AS index, ix.indisunique AS unique,
       ix.indisprimary AS primary, ix.indisvalid AS valid, am.amname AS method,
       pg_get_expr(ix.indpred, ix.indrelid) AS predicate, pg_get_indexdef(ix.indexrelid) AS definition,
       pg_relation_size(i.oid) AS size, coalesce(s.idx_scan, 0) AS scans,
       EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid) AS backs_constraint,
       EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = ix.indexrelid) AS on_partition,
       ix.indnatts > ix.indnkeyatts AS has_include,
       array(SELECT oc.opcname::text || coalesce(':' || co.collname::text, '')
             FROM unnest(ix.indclass[0:ix.indnkeyatts - 1], ix.indcollation[0:ix.indnkeyatts - 1])
                  WITH ORDINALITY u(opc, coll, ord)
             JOIN pg_opclass oc ON oc.oid = u.opc LEFT JOIN pg_collation co ON co.oid = u.coll AND u.coll <> 0
             ORDER BY u.ord) AS opclasses,
       array(SELECT a.attname::text FROM unnest(ix.indkey[0:ix.indnkeyatts - 1]) WITH ORDINALITY k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord) AS columns
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_class t ON t.oid = ix.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = ix.indexrelid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
"""


FOREIGN_KEYS_SQL = """
SELECT n.nspname AS schema, cl.relname AS table, con.conname AS name, ref.relname AS ref_table,
       array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord) AS columns
FROM pg_constraint con
JOIN pg_class cl ON cl.oid = con.conrelid
JOIN pg_namespace n ON n.oid = cl.relnamespace
JOIN pg_class ref ON ref.oid = con.confrelid
WHERE con.contype = 'f'
"""


STATS_SQL = """
SELECT s.schemaname AS schema, s.relname AS table, s.seq_scan, coalesce(s.idx_scan, 0) AS idx_scan,
       s.n_live_tup, s.n_dead_tup, s.n_tup_ins,
       coalesce(io.heap_blks_read, 0) AS heap_read, coalesce(io.heap_blks_hit, 0) AS heap_hit,
       coalesce(io.idx_blks_read, 0) AS idx_read, coalesce(io.idx_blks_hit, 0) AS idx_hit
FROM pg_stat_user_tables s
LEFT JOIN pg_statio_user_tables io ON io.relid = s.relid
"""


WIDTH_SQL = "SELECT schemaname, tablename, attname, avg_width FROM pg_stats WHERE avg_width > $1"


SERVER_SQL = """
SELECT current_setting('max_connections')::int AS max_connections,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
       (SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'hypopg') AS hypopg,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AS pg_stat_statements,
       current_schemas(false)::text[] AS search_path
"""


_TYPE_NAMES = {"varchar": "character varying", "int4": "integer", "int8": "bigint", "bool": "boolean"}


def side_connection_settings() -> dict[str, str]:
    # Bounded: a catalog read must never wait behind a migration's lock, nor hold its own locks long.
    return {"application_name": "pgloupe-catalog", "default_transaction_read_only": "on",
            "statement_timeout": "15s", "lock_timeout": "2s"}


async def connect(dsn: str, timeout: float = 10.0, ssl=None):
    import asyncpg

    # No statement cache: each statement is unnamed, so nothing this connection prepared lingers on the server
    return await asyncpg.connect(dsn, timeout=timeout, ssl=ssl, statement_cache_size=0,
                                 server_settings=side_connection_settings())


async def read_catalog(conn) -> Catalog:
    server = await conn.fetchrow(SERVER_SQL)
    order = {name: i for i, name in enumerate(server["search_path"])}

    def first_on_path(rows):
        """One entry per unqualified table name: an earlier schema on the search_path wins, as in the server."""
        chosen: dict[str, str] = {}
        for r in sorted(rows, key=lambda r: order.get(r["schema"], len(order))):
            chosen.setdefault(r["table"], r["schema"])
        return chosen

    table_rows = await conn.fetch(TABLES_SQL)
    visible = first_on_path(table_rows)
    widths: dict[tuple[str, str], dict[str, int]] = {}
    for r in await conn.fetch(WIDTH_SQL, WIDE_TEXT_BYTES):
        widths.setdefault((r["schemaname"], r["tablename"]), {})[r["attname"]] = r["avg_width"]
    tables: dict[str, Table] = {}
    sizes: dict[str, int] = {}
    partitions, partitioned = set(), set()
    for r in table_rows:
        if visible.get(r["table"]) != r["schema"]:
            continue
        if r["is_partition"]:
            partitions.add(r["table"])
        if r["kind"] == "p":
            partitioned.add(r["table"])
        columns = {c: _TYPE_NAMES.get(t, t) for c, t in zip(r["columns"], r["types"], strict=True)}
        tables[r["table"]] = Table(r["table"], r["schema"], columns, r["rls"], r["rows"],
                                   widths.get((r["schema"], r["table"]), {}), analysed=r["analysed"],
                                   oid=r["oid"], numbers=tuple(r["numbers"]))
        sizes[r["table"]] = r["size"]
    indexes: dict[str, list[Index]] = {}
    for r in await conn.fetch(INDEXES_SQL):
        if visible.get(r["table"]) != r["schema"]:
            continue
        indexes.setdefault(r["table"], []).append(Index(
            r["table"], r["index"], tuple(r["columns"]), r["unique"], r["primary"], r["valid"], r["method"],
            r["predicate"], r["definition"], r["size"], r["scans"], r["backs_constraint"], r["schema"],
            tuple(r["opclasses"]), r["has_include"], r["on_partition"]))
    fks = [ForeignKey(r["table"], r["name"], tuple(r["columns"]), r["ref_table"])
           for r in await conn.fetch(FOREIGN_KEYS_SQL) if visible.get(r["table"]) == r["schema"]]
    tables = _with_keys(tables, indexes, fks)
    stats = {}
    for r in await conn.fetch(STATS_SQL):
        if visible.get(r["table"]) != r["schema"]:
            continue
        stats[r["table"]] = TableStats(r["seq_scan"], r["idx_scan"], r["n_live_tup"], r["n_dead_tup"], r["n_tup_ins"],
                                       r["heap_read"], r["heap_hit"], r["idx_read"], r["idx_hit"],
                                       sizes.get(r["table"], 0))
    return Catalog(Schema(tables, loaded=True), frozenset(partitions), frozenset(partitioned), indexes, fks, stats,
                   server["max_connections"], server["connections"], server["hypopg"], server["pg_stat_statements"])

