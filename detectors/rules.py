"""The detectors: pure functions from statements or units of work (plus the schema) to occurrences.

Each occurrence names its kind, fingerprint, severity, confidence and the concrete fix. Confidence
comes from what the wire shows: a parent query whose result rows hold the repeated statements'
parameters, an explicit transaction, a shared trace id, a loop-invariant parameter; a run of
same-shape statements with none of these (pgbench -S, a pool of unrelated lookups) stays low.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field

from .config import DetectorConfig
from .fingerprint import Fingerprint, in_list_param_numbers, literal_offset
from .schema import Schema
from .units import Statement, Unit

SEVERITIES = ("info", "warning", "error", "critical")
MEMO_MAX = 10_000  # per-shape tenant verdicts kept for a catalog snapshot (a few MB), then counted afresh


@dataclass(slots=True)
class Occurrence:
    kind: str
    fingerprint: str
    severity: str
    confidence: float
    statements: list[Statement]
    suggestion: str
    tables: tuple[str, ...]
    example: str
    message: str
    extra: dict = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return sum(s.event.duration for s in self.statements) * 1000


def system_table(name: str) -> bool:
    """The server's own catalogs, which drivers query for type information (asyncpg, Npgsql, JDBC)."""
    return name.startswith("pg_") or name in ("tables", "columns", "schemata", "routines", "views")


def _lower(severity: str) -> str:
    return SEVERITIES[max(0, SEVERITIES.index(severity) - 1)]


def _by_count(n: int, error_at: int, critical_at: int) -> str:
    return "critical" if n >= critical_at else "error" if n >= error_at else "warning"


def _n_plus_one_severity(round_trips: int, group: list[Statement]) -> str:
    """From the count of round trips and the time they add up to (the seeds' 100/500/1000 ms)."""
    by_count = _by_count(round_trips, 50, 500)
    total_ms = sum(s.event.duration for s in group) * 1000
    by_time = "critical" if total_ms >= 1000 else "error" if total_ms >= 500 else "warning"
    return max(by_count, by_time, key=SEVERITIES.index)


def _values(stmt: Statement) -> tuple:
    """What tells two executions of one shape apart: value hashes, or failing those the text itself."""
    return stmt.values if stmt.values else (stmt.event.sql,)


def _result_set(stmt: Statement) -> set[str]:
    return {h for row in stmt.event.result_hashes for h in row if h is not None}


# ------------------------------------------------------------------ suggestions

_EQ_PARAM = re.compile(r"(\b[\w.\"]+) = %s")


def _suggest_select_batch(fp: Fingerprint) -> str:
    batched = _EQ_PARAM.sub(lambda m: f"{m.group(1)} = ANY(%s)", fp.text, count=1)
    return ("Fetch the rows in one query with the array of keys instead of one query per key: "
            f"{batched.replace('%s', '$1', 1)} (or JOIN it to the query that produced the keys).")


def _suggest(fp: Fingerprint, kind: str) -> str:
    table = fp.tables[0] if fp.tables else "the_table"
    cols = ", ".join(fp.insert_columns) or "..."
    if kind == "n_plus_one_select":
        return _suggest_select_batch(fp)
    if kind == "n_plus_one_insert":
        return (f"Collect the rows and insert them in one statement: INSERT INTO {table} ({cols}) VALUES "
                f"($1, ...), ($n, ...) -- e.g. db.insert({table}).values(rows) -- or COPY {table} ({cols}) "
                "FROM STDIN for thousands of rows.")
    if kind == "n_plus_one_update":
        return (f"Update all rows in one statement: UPDATE {table} AS t SET col = v.col FROM (VALUES ($1, $2), "
                f"($3, $4), ...) AS v(id, col) WHERE t.id = v.id -- or WHERE id = ANY($1) when the new value is the same.")
    if kind == "n_plus_one_delete":
        return f"Delete in one statement: DELETE FROM {table} WHERE id = ANY($1)."
    return ""


# ------------------------------------------------------------------ unit-of-work detectors


def _varying_values(children: list[Statement]) -> list[set[str]]:
    """Per child, the values at positions that change between children (what the loop iterates over).

    A value every child shares, like the tenant id, proves nothing about where the others came from.
    """
    width = len(children[0].values)
    same_width = all(len(c.values) == width for c in children)
    if same_width and width:
        varying = [i for i in range(width) if len({c.values[i] for c in children}) > 1]
        return [{c.values[i] for i in varying if c.values[i]} for c in children]
    common = set.intersection(*({h for h in c.values if h} for c in children))
    return [{h for h in c.values if h} - common for c in children]


def _parent_matches(children: list[Statement], candidates: list[Statement]) -> Statement | None:
    """An earlier statement whose result rows hold the varying values of at least 3 children."""
    need = min(3, len(children))
    first_child = children[0]
    child_values = None
    for parent in candidates:
        if parent is first_child:
            break
        rows = _result_set(parent)
        if not rows:
            continue
        if child_values is None:
            child_values = _varying_values(children)
        matched = set()
        hits = 0
        for values in child_values:
            common = values & rows
            if common:
                hits += 1
                matched |= common
        if hits >= need and len(matched) >= need:
            return parent
    return None


def _loop_invariant(group: list[Statement]) -> bool:
    """One parameter the same in every execution while another varies: a loop over a fixed context."""
    width = len(group[0].values)
    if width < 2:
        return False
    columns = list(zip(*(s.values for s in group if len(s.values) == width), strict=False))
    constant = any(len(set(c)) == 1 and c[0] is not None for c in columns)
    varying = any(len(set(c)) > 1 for c in columns)
    return constant and varying


def _cycle(sequence: list[str], fp_id: str, min_repeats: int) -> bool:
    """Somewhere in the unit, a fixed sequence of 2-4 shapes containing ``fp_id`` repeats ``min_repeats`` times."""
    n = len(sequence)
    for period in (2, 3, 4):
        if n < period * min_repeats:
            continue
        run = 0  # how many consecutive positions i satisfy sequence[i] == sequence[i + period]
        for i in range(n - period):
            if sequence[i] == sequence[i + period]:
                run += 1
                if run + period >= period * min_repeats:
                    pattern = sequence[i + 1 - run : i + 1 - run + period]
                    if fp_id in pattern and len(set(pattern)) >= 2:
                        return True
            else:
                run = 0
    return False


def n_plus_one(unit: Unit, config: DetectorConfig) -> list[Occurrence]:
    groups: dict[str, list[Statement]] = defaultdict(list)
    for s in unit.statements:
        if s.fp.kind in ("SELECT", "INSERT", "UPDATE", "DELETE") and s.event.sqlstate is None:
            groups[s.fp.id].append(s)
    # Loops go over tables; pool resets and health checks (SELECT pg_advisory_unlock_all(), SELECT 1) do not.
    sequence = [s.fp.id for s in unit.statements if s.fp.is_dml and s.fp.tables]
    # a cycle needs two shapes: one shape back to back (pgbench -S, a busy pool) skips the O(n) scan
    may_cycle = len(set(sequence)) >= 2
    out = []
    for fp_id, group in groups.items():
        # Pipelined executions (asyncpg executemany, psycopg pipelines) share one round trip: what
        # makes an N+1 slow is the round trips, so those are what is counted.
        round_trips = sum(1 for s in group if not s.event.pipelined)
        if round_trips < config.n_plus_one_min:
            continue
        distinct = {_values(s) for s in group}
        if len(distinct) < 2:
            continue  # the same values every time: repeated_identical's case
        fp = group[0].fp
        parent = _parent_matches(group, unit.statements)
        invariant = _loop_invariant(group)
        cycle = may_cycle and _cycle(sequence, fp_id, config.n_plus_one_min)
        if parent is not None:
            confidence, why = 0.95, "its parameters come from the rows of an earlier query"
        elif unit.explicit:
            confidence, why = 0.9, "inside one transaction"
        elif unit.trace_id:
            confidence, why = 0.9, "within one trace"
        elif invariant and cycle:
            confidence, why = 0.8, "a fixed sequence of statements repeats with one parameter held fixed, as in a loop"
        elif invariant and fp.kind != "SELECT":
            # Same-shape writes one by one under a fixed context: batchable whoever sends them.
            confidence, why = 0.75, "one parameter stays fixed while another varies, as in a loop"
        elif cycle:
            confidence, why = 0.6, "the same sequence of statements repeats, as in a loop"
        else:
            # pgbench -S, or a pool serving unrelated lookups for one tenant, look exactly like this.
            confidence, why = 0.3, "same-shape statements back to back, with nothing tying them together"
        kind = f"n_plus_one_{fp.kind.lower()}"
        out.append(Occurrence(
            kind=kind, fingerprint=fp_id, severity=_n_plus_one_severity(round_trips, group), confidence=confidence,
            statements=group, suggestion=_suggest(fp, kind), tables=fp.tables, example=fp.text,
            message=f"{round_trips} round trips of one {fp.kind} in one unit of work ({why})",
            extra={"parent": parent.fp.text if parent else None, "parent_fingerprint": parent.fp.id if parent else None},
        ))
    return out


def repeated_identical(unit: Unit, config: DetectorConfig) -> list[Occurrence]:
    groups: dict[tuple, list[Statement]] = defaultdict(list)
    for s in unit.statements:
        if s.fp.kind == "SELECT" and s.fp.tables and s.event.sqlstate is None:
            groups[(s.fp.id, _values(s))].append(s)
    # A unit of thousands of statements is a stretch of nonstop traffic (cut at the size cap, or by
    # the connection's end), not one request: random lookups repeat in it by chance (pgbench -S), so
    # there a repeat must be 1% of it to count. Request-sized units keep the plain minimum.
    least = max(config.repeated_identical_min, len(unit.statements) // 100)
    out = []
    for (fp_id, _), group in groups.items():
        if len(group) < least:
            continue
        fp = group[0].fp
        severity = "error" if len(group) >= 100 else "warning" if len(group) >= 10 else "info"
        out.append(Occurrence(
            kind="repeated_identical", fingerprint=fp_id, severity=severity, confidence=0.9, statements=group,
            suggestion=("The same query with the same parameters ran repeatedly: keep its result (a request-scoped "
                        "memo, or a cache with a TTL for data like tenant configuration) instead of asking again."),
            tables=fp.tables, example=fp.text,
            message=f"identical query repeated {len(group)} times in one unit of work",
        ))
    return out


def join_candidate(unit: Unit, config: DetectorConfig) -> list[Occurrence]:
    out = []
    previous: Statement | None = None
    for s in unit.statements:
        fp = s.fp
        if previous is not None and fp.kind == "SELECT" and (fp.has_in_list or s.in_list_values) \
                and s.event.sqlstate is None:
            params = s.event.param_hashes
            numbers = in_list_param_numbers(s.event.sql) if params else []
            in_hashes = [params[n - 1] for n in numbers if 0 < n <= len(params) and params[n - 1]]
            in_hashes += [h for h in s.in_list_values if h]
            rows = _result_set(previous)
            if len(in_hashes) >= 1 and rows and all(h in rows for h in in_hashes):
                table = fp.tables[0] if fp.tables else "t"
                prev_tables = ", ".join(previous.fp.tables) or "the first query"
                out.append(Occurrence(
                    kind="join_candidate", fingerprint=fp.id, severity="warning", confidence=0.9,
                    statements=[previous, s],
                    suggestion=(f"Its list of keys is the ids the previous query returned: fetch both in one query, "
                                f"joining {table} to {prev_tables} on those ids (one round trip instead of two)."),
                    tables=tuple(dict.fromkeys(previous.fp.tables + fp.tables)), example=fp.text,
                    message=f"a list of {len(in_hashes)} keys (IN or = ANY) taken from the previous query's rows",
                    extra={"previous": previous.fp.text},
                ))
        if fp.kind == "SELECT" and any(not system_table(t) for t in fp.tables):
            previous = s  # the application's previous query (a driver's catalog lookups in between do not count)
    return out


def missing_transaction(unit: Unit, config: DetectorConfig) -> list[Occurrence]:
    if unit.explicit:
        return []
    writes: list[Statement] = []
    seen: set[str] = set()
    for s in unit.statements:
        if s.fp.kind in ("INSERT", "UPDATE", "DELETE") and s.event.sqlstate is None and not s.event.in_transaction:
            if s.fp.id not in seen:
                seen.add(s.fp.id)
                writes.append(s)
    if len(writes) < 2:
        return []
    related = False
    for i, a in enumerate(writes):
        a_params = {h for h in a.values if h}
        a_rows = _result_set(a)
        for b in writes[i + 1 :]:
            b_params = {h for h in b.values if h}
            # One write's RETURNING feeds the other, or they share two values (a tenant id alone
            # is shared by every write of a tenant and proves nothing).
            if a_rows & b_params or len(a_params & b_params) >= 2:
                related = True
    confidence = 0.85 if related else 0.4
    key = hashlib.blake2b("|".join(s.fp.id for s in writes).encode(), digest_size=8).hexdigest()
    tables = tuple(dict.fromkeys(t for s in writes for t in s.fp.tables))
    body = "; ".join(s.fp.text for s in writes)
    return [Occurrence(
        kind="missing_transaction", fingerprint=key, severity="warning" if len(writes) == 2 else "error",
        confidence=confidence, statements=writes,
        suggestion=(f"Run these writes in one transaction so a failure cannot leave half of them applied: "
                    f"BEGIN; {body}; COMMIT -- e.g. db.transaction(async (tx) => {{ ... }})."),
        tables=tables, example=body,
        message=f"{len(writes)} related writes in autocommit within one unit of work" if related
        else f"{len(writes)} writes in autocommit within one unit of work",
    )]


def long_transaction(unit: Unit, config: DetectorConfig, now: float | None = None) -> list[Occurrence]:
    """A finished transaction that lasted too long, or (with ``now``) one still open or idle in it."""
    if not unit.explicit or not unit.statements:
        return []
    end = now if now is not None else unit.end
    seconds = end - unit.start
    warn, err = (t / 1000 for t in config.long_transaction_ms)
    if seconds < warn:
        return []
    body = [s for s in unit.statements if s.event.command not in ("BEGIN", "START", "COMMIT", "ROLLBACK")]
    anchor = body[0] if body else unit.statements[0]
    idle = now is not None and now - unit.end >= warn
    state = "idle in transaction" if idle else "open" if now is not None else "lasted"
    return [Occurrence(
        kind="long_transaction", fingerprint=anchor.fp.id, severity="error" if seconds >= err else "warning",
        confidence=0.95, statements=unit.statements,
        suggestion=("Keep transactions short: do slow work (HTTP calls, file parsing, loops over many items) before "
                    "BEGIN or after COMMIT, and split large batches into several short transactions."),
        tables=tuple(dict.fromkeys(t for s in unit.statements for t in s.fp.tables)), example=anchor.fp.text,
        message=f"transaction {state} for {seconds:.1f}s",
        extra={"seconds": round(seconds, 3), "state": state},
    )]


UNIT_DETECTORS = (n_plus_one, repeated_identical, join_candidate, missing_transaction, long_transaction)

# ------------------------------------------------------------------ statement detectors


_SLOW_FIX = ("EXPLAIN (ANALYZE, BUFFERS) this statement: look for sequential scans on large tables and add the "
             "index its WHERE/ORDER BY needs, or reduce the rows it reads.")


def slow_query(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    """The slow log: one execution at or over the third threshold (1 s) is reported at once, whatever the
    shape's percentiles (those are judged per shape, ``slow_shape``)."""
    ms = s.event.duration * 1000
    if ms < config.slow_query_ms[2] or not s.fp.kind or s.fp.kind in ("TRANSACTION", "COMMIT", "ROLLBACK"):
        return []
    return [Occurrence(
        kind="slow_query", fingerprint=s.fp.id, severity="error", confidence=1.0, statements=[s],
        suggestion=_SLOW_FIX, tables=s.fp.tables, example=s.fp.text,
        message=f"took {ms:.0f} ms (slow log: over {config.slow_query_ms[2]:.0f} ms)",
    )]


def slow_shape(fp: Fingerprint, slow: list[Statement], severity: str, calls: int, counts: list[int],
               config: DetectorConfig) -> Occurrence:
    """A shape whose p99 is over the warning (100 ms) or critical (500 ms) threshold."""
    warn, critical, _log = config.slow_query_ms
    bound = critical if severity == "critical" else warn
    above = counts[1] if severity == "critical" else counts[0]
    return Occurrence(
        kind="slow_query", fingerprint=fp.id, severity=severity, confidence=1.0, statements=slow,
        suggestion=_SLOW_FIX, tables=fp.tables, example=fp.text,
        message=f"p99 over {bound:.0f} ms: {above} of {calls} executions took {bound:.0f} ms or more",
        extra={"executions": calls, "slow_executions": counts[0]},
    )


def _tenant_gaps(fp: Fingerprint, schema: Schema, config: DetectorConfig) -> list[tuple[str, str, bool]]:
    """Tenant tables the statement does not pin to a tenant: (table, tenant column, rls)."""
    names = config.tenant_columns
    if fp.kind == "INSERT":
        if not fp.insert_columns:
            return []
        gaps = []
        for t in fp.tables[:1]:
            table = schema.get(t)
            col = table.tenant_column(names) if table else None
            if col and col not in fp.insert_columns:
                gaps.append((t, col, table.rls))
        return gaps
    scopes = fp.filter_scopes
    external: list[set[str]] = [set() for _ in scopes]
    pinned_refs: list[set[tuple[str, str]]] = [set() for _ in scopes]  # (alias, tenant column) pinned here or above
    gaps: dict[str, tuple[str, bool]] = {}
    for i in reversed(range(len(scopes))):  # traverse order puts children first: walk from the root down
        sc = scopes[i]
        outer = pinned_refs[sc.parent] if sc.parent is not None and sc.parent > i else set()
        instances: dict[str, tuple[str, str, bool]] = {}
        for alias, name in sc.tables:
            table = schema.get(name)
            col = table.tenant_column(names) if table else None
            if col:
                instances[alias] = (name, col, table.rls)

        def owners(ref, instances=instances) -> list[str]:
            alias, column = ref
            if alias is not None:
                return [alias] if alias in instances and instances[alias][1] == column else []
            return [a for a, (_, col, _) in instances.items() if col == column]

        pinned = {a for ref in sc.pins for a in owners(ref)}
        for a, (_, col, _) in instances.items():
            if col in external[i] and ("*" in sc.outputs or col in sc.outputs or not sc.outputs):
                pinned.add(a)
        for x, y in sc.equalities:  # correlated: j.team_id = c.team_id with c pinned in the enclosing query
            for p, q in ((x, y), (y, x)):
                if p[0] not in instances and p in outer:
                    pinned.update(owners(q))
        changed = True
        while changed:  # a join on the tenant column to a pinned instance pins the other side
            changed = False
            for x, y in sc.equalities:
                linked = owners(x) + owners(y)
                if owners(x) and owners(y) and any(a in pinned for a in linked):
                    for a in linked:
                        if a not in pinned:
                            pinned.add(a)
                            changed = True
        pinned_refs[i] = outer | {(a, instances[a][1]) for a in pinned}
        for alias, child in sc.derived:  # an outer pin on a derived table's column reaches its tables
            for ref in sc.pins:
                if ref[0] in (alias, None):
                    external[child].add(ref[1])
            for x, y in sc.equalities:
                for p, q in ((x, y), (y, x)):
                    if p[0] == alias and any(a in pinned for a in owners(q)):
                        external[child].add(p[1])
        for a, (name, col, rls) in instances.items():
            if a not in pinned:
                gaps[name] = (col, rls)
    return [(t, c, r) for t, (c, r) in gaps.items()]


def cross_tenant(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    fp = s.fp
    if fp.kind not in ("SELECT", "INSERT", "UPDATE", "DELETE") or not schema.loaded or s.event.sqlstate:
        return []
    key = ("tenant", fp.id, config.tenant_columns)
    gaps = schema.memo.get(key)
    if gaps is None:
        if len(schema.memo) > MEMO_MAX:
            schema.memo.clear()
        gaps = schema.memo[key] = _tenant_gaps(fp, schema, config)
    if not gaps:
        return []
    severity = {"SELECT": "error", "UPDATE": "critical", "DELETE": "critical", "INSERT": "warning"}[fp.kind]
    if all(rls for _, _, rls in gaps):
        severity = _lower(severity)
    what = ", ".join(f"{t}.{c}" for t, c, _ in gaps)
    if fp.kind == "INSERT":
        fix = f"Set the tenant column on every row: add {', '.join(c for _, c, _ in gaps)} to the INSERT column list."
    else:
        fix = ("Constrain every tenant table to the caller's tenant: "
               + " AND ".join(f"{t}.{c} = $tenant" for t, c, _ in gaps)
               + " (or enable row-level security on these tables).")
    return [Occurrence(
        kind="cross_tenant", fingerprint=fp.id, severity=severity, confidence=0.9 if fp.parsed else 0.5,
        statements=[s], suggestion=fix, tables=fp.tables, example=fp.text,
        message=f"{fp.kind} on tenant data without a tenant filter on {what}"
        + (" (row-level security is on)" if all(r for _, _, r in gaps) else ""),
        extra={"unfiltered": [f"{t}.{c}" for t, c, _ in gaps]},
    )]


def select_star(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    fp = s.fp
    if fp.kind != "SELECT" or not fp.select_star or s.event.sqlstate:
        return []
    wide = {}
    for t in fp.select_star:
        table = schema.get(t)
        if table and table.wide_columns:
            wide[t] = table
    ev = s.event
    per_row = ev.response_bytes / ev.rows if ev.rows else 0
    if not wide and per_row < config.wide_row_bytes:
        return []
    if wide:
        parts = []
        for t, table in wide.items():
            keep = [c for c in table.columns if c not in table.wide_columns]
            parts.append(f"{t}: SELECT {', '.join(keep)} (omit {', '.join(table.wide_columns)} unless needed)")
        fix = "Select only the columns the caller uses; " + "; ".join(parts) + "."
        described = [f"{t} (wide: {', '.join(tb.wide_columns)})" for t, tb in wide.items()]
        why = "SELECT * on " + ", ".join(described)
    else:
        fix = "Select only the columns the caller uses instead of *."
        why = f"SELECT * returning {per_row:.0f} bytes per row"
    return [Occurrence(
        kind="select_star", fingerprint=fp.id, severity="warning", confidence=0.9, statements=[s],
        suggestion=fix, tables=fp.tables, example=fp.text, message=why,
    )]


def unbounded_result(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    fp = s.fp
    rows = s.event.rows or 0
    if fp.kind != "SELECT" or fp.has_limit or rows < config.unbounded_rows or s.event.command != "SELECT":
        return []
    order = ", ".join(c for _, c in fp.order_by) or "created_at, id"
    return [Occurrence(
        kind="unbounded_result", fingerprint=fp.id, severity="error" if rows >= 10 * config.unbounded_rows else "warning",
        confidence=0.9, statements=[s],
        suggestion=(f"Page the result: ORDER BY {order} LIMIT 50 and continue from the last row seen "
                    f"(keyset pagination), or stream it with a cursor for exports."),
        tables=fp.tables, example=fp.text, message=f"returned {rows} rows without a LIMIT",
    )]


def offset_pagination(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    fp = s.fp
    if not (fp.offset_literal or fp.offset_param):  # the two forms share a shape: read each statement's text
        return []
    offset = literal_offset(s.event.sql)
    if offset is None or offset < config.offset_rows:
        return []
    cols = [c for _, c in fp.order_by] or ["created_at", "id"]
    keyset = f"WHERE ({', '.join(cols)}) < ({', '.join(f'${i + 1}' for i in range(len(cols)))}) ORDER BY " + \
        ", ".join(f"{c} DESC" for c in cols) + " LIMIT 50"
    return [Occurrence(
        kind="offset_pagination", fingerprint=fp.id,
        severity="error" if offset >= 10 * config.offset_rows else "warning", confidence=0.95, statements=[s],
        suggestion=(f"OFFSET {offset} reads and discards {offset} rows on every page: use keyset pagination, "
                    f"{keyset}, passing the last row's values, with an index on ({', '.join(cols)})."),
        tables=fp.tables, example=fp.text, message=f"OFFSET {offset}",
    )]


def not_in_subquery(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    fp = s.fp
    if not fp.not_in_subquery:
        return []
    return [Occurrence(
        kind="not_in_subquery", fingerprint=fp.id, severity="warning", confidence=1.0, statements=[s],
        suggestion=("Use NOT EXISTS (SELECT 1 FROM ... WHERE inner.key = outer.key) instead of NOT IN (SELECT ...): "
                    "it is planned as an anti-join and is not defeated by a NULL in the subquery."),
        tables=fp.tables, example=fp.text, message="NOT IN (SELECT ...)",
    )]


STATEMENT_DETECTORS = (slow_query, cross_tenant, select_star, unbounded_result, offset_pagination, not_in_subquery)
