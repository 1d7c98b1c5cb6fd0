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

from detectors.config import DetectorConfig
from detectors.fingerprint import Fingerprint, in_list_param_numbers, literal_offset
from detectors.schema import WIDE_TEXT_BYTES, Schema, Table
from detectors.units import TRANSACTION, Statement, Unit
from detectors.values import inserted_values, value_at

SEVERITIES = ("info", "warning", "error", "critical")


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


def lower(severity: str) -> str:
    """One severity lower (row-level security on every table concerned)."""
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

# A whole (qualified, quoted) name = %s: it starts where no name character precedes, so the search does not
# start again inside a long name at every word boundary (quadratic in the name's length), and a quoted name
# keeps its opening quote.
_EQ_PARAM = re.compile(r"(?<![\w.\"])([\w.\"]++) = %s")


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


_DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
MIN_TRACED = 3  # iterations of a piece of work traced to one parent that make the whole group a loop over it


def _loop_occurrence(group: list[Statement], round_trips: int, confidence: float, why: str,
                     parent: Fingerprint | None) -> Occurrence:
    fp = group[0].fp
    kind = f"n_plus_one_{fp.kind.lower()}"
    return Occurrence(
        kind=kind, fingerprint=fp.id, severity=_n_plus_one_severity(round_trips, group), confidence=confidence,
        statements=group, suggestion=_suggest(fp, kind), tables=fp.tables, example=fp.text,
        message=f"{round_trips} round trips of one {fp.kind} ({why})",
        extra={"parent": parent.text if parent else None, "parent_fingerprint": parent.id if parent else None},
    )


def _application_shape(s: Statement) -> bool:
    """A statement of the application's own: DML on its tables (not a driver's catalog lookup)."""
    fp = s.fp
    return fp.kind in _DML and s.event.sqlstate is None and any(not system_table(t) for t in fp.tables)


def n_plus_one(unit: Unit, config: DetectorConfig, schema: Schema | None = None) -> list[Occurrence]:
    """Same-shape statements of one piece of work, one round trip each, judged by what ties them together.

    Loops the tracer follows to their parent result (``traced_loops``) are reported there, wherever their
    iterations ran; here is the evidence it cannot see: one transaction, one trace, or the rhythm of a
    loop on a connection of its own."""
    groups: dict[str, list[Statement]] = defaultdict(list)
    for s in unit.statements:
        if _application_shape(s):
            groups[s.fp.id].append(s)
    # Loops go over tables; pool resets and health checks (SELECT pg_advisory_unlock_all(), SELECT 1) do not.
    sequence = [s.fp.id for s in unit.statements if s.fp.is_dml and s.fp.tables]
    # a cycle needs two shapes: one shape back to back (pgbench -S, a busy pool) skips the O(n) scan
    may_cycle = len(set(sequence)) >= 2
    out = []
    rhythm = None
    for fp_id, group in groups.items():
        # Pipelined executions (asyncpg executemany, psycopg pipelines) share one round trip: what
        # makes an N+1 slow is the round trips, so those are what is counted.
        round_trips = sum(1 for s in group if not s.event.pipelined)
        if round_trips < config.n_plus_one_min:
            continue
        traced = [s.loop for s in group if s.traced]
        if len(traced) >= config.n_plus_one_min:
            continue  # traced to its parent: traced_loops reports it
        distinct = {_values(s) for s in group}
        if len(distinct) < 2:
            continue  # the same values every time: repeated_identical's case
        fp = group[0].fp
        transactions = {s.tx for s in group}
        shared = 2 * sum(1 for s in group if s.shared) > len(group)
        in_one = _in_one_transaction(group, config.n_plus_one_min)
        if traced and not shared and max(traced.count(seq) for seq in set(traced)) >= MIN_TRACED:
            # some iterations, too few for the tracer alone, carried keys of one earlier result (on a
            # connection of its own: pooled requests' writes carry their user's id, which pages list)
            confidence, why = 0.95, "its parameters come from the rows of an earlier query"
        elif (len(transactions) == 1 and 0 not in transactions) or in_one:
            # (a connection that is never idle runs transaction after transaction in one piece of work:
            # the loop is the one inside a transaction, whatever its neighbours run)
            confidence, why = 0.9, "inside one transaction"
        elif unit.trace_id:
            confidence, why = 0.9, "within one trace"
        elif shared:
            # The application's other connections ran the same shape at the same time: a pool serving
            # requests one after another, each with its own lookup, not one loop.
            confidence, why = 0.3, "on pooled connections that all ran it, with nothing tying them together"
        elif fp_id in (rhythm := rhythm or _requests(unit, config.n_plus_one_min)).looping:
            confidence, why = 0.8, (f"{rhythm.looping[fp_id]} times over, between the lookups that begin "
                                    "each request, it runs again and again with different values, as in a loop")
        elif fp_id in rhythm.once:
            confidence, why = 0.3, ("once per request, its values coming back in turn with others': the same "
                                    "requests served one after another on one connection, not a loop")
        elif len(_tenants_during(unit, group)) > 1:
            # One connection working for several tenants in turn: requests served one after another (a
            # single-threaded worker, a persistent connection), not one request's loop.
            confidence, why = 0.3, "on a connection serving several tenants in turn"
        else:
            invariant = _loop_invariant(group)
            cycle = may_cycle and _cycle(sequence, fp_id, config.n_plus_one_min)
            if invariant and cycle:
                confidence, why = 0.8, "a fixed sequence of statements repeats with one parameter held fixed, as in a loop"
            elif invariant and fp.kind != "SELECT":
                # Same-shape writes one by one under a fixed context: batchable whoever sends them.
                confidence, why = 0.75, "one parameter stays fixed while another varies, as in a loop"
            elif cycle:
                confidence, why = 0.6, "the same sequence of statements repeats, as in a loop"
            else:
                # pgbench -S, or a pool serving unrelated lookups for one tenant, look exactly like this.
                confidence, why = 0.3, "same-shape statements back to back, with nothing tying them together"
        out.append(_loop_occurrence(group, round_trips, confidence, f"in one unit of work, {why}", None))
    return out


def _returning(values: list[tuple]) -> bool:
    """Several sets of values, each coming back after others': a few users' requests, again and again."""
    distinct = len(set(values))
    return distinct >= 2 and len(values) >= 2 * distinct


@dataclass(slots=True)
class _Requests:
    once: frozenset[str]  # shapes that never run ``minimum`` times with different values within a request
    looping: dict[str, int]  # shapes that do so in at least two requests: how many
    # (shape, values) -> executions that repeated values already asked in the same request
    repeated: dict = field(default_factory=dict)
    marked: bool = False  # request boundaries were seen at all


def _requests(unit: Unit, minimum: int) -> _Requests:
    """Where the requests of a piece of work begin, and what runs once or in a loop within each.

    A connection serving one tenant's requests back to back (a single-threaded worker on a persistent
    connection, a pool handing back its one idle connection) is never idle for the unit gap, and its
    requests' statements repeat in a fixed cycle as a loop's do. What sets them apart is their values:
    a loop goes over different rows, while requests are a few users doing the same things, so the
    lookups that begin each request (the session by its token) come back with values seen before. Each
    statement of a shape untraced to any earlier result whose value sets keep returning marks a request
    boundary for the other shapes; a shape's own values coming back mark one for itself. A shape that
    runs ``minimum`` times with different values between two marks loops inside a request. A statement
    repeating values its shape already ran with since the last mark of another shape (or, for a marking
    shape, since it last ran with other values) asks again within a request."""
    by_shape: dict[str, list[tuple]] = defaultdict(list)
    traced: set[str] = set()
    for s in unit.statements:
        if _application_shape(s):
            by_shape[s.fp.id].append(_values(s))
            if s.traced:
                traced.add(s.fp.id)
    marks = {fp for fp, values in by_shape.items() if fp not in traced and _returning(values)}
    if not marks:
        return _Requests(frozenset(), {})
    stretch: dict[str, set] = {fp: set() for fp in by_shape}
    request: dict[str, set] = {fp: set() for fp in by_shape}  # values since another shape's mark
    longest = dict.fromkeys(by_shape, 0)
    loops = dict.fromkeys(by_shape, 0)
    repeated: dict[tuple, int] = defaultdict(int)
    for s in unit.statements:
        if not _application_shape(s):
            continue
        fp_id, values = s.fp.id, _values(s)
        seen = stretch[fp_id]
        if values in seen:  # its own values came back: another request
            seen.clear()
        seen.add(values)
        if len(seen) > longest[fp_id]:
            longest[fp_id] = len(seen)
        if len(seen) == minimum:
            loops[fp_id] += 1
        asked = request[fp_id]
        if values in asked:
            repeated[(fp_id, values)] += 1
        elif fp_id in marks:  # a request's own lookup with other values: another request
            asked.clear()
        asked.add(values)
        if fp_id in marks:  # a request's own lookup: what the others ran since was the request before's
            for other in by_shape:
                if other != fp_id:
                    stretch[other].clear()
                    request[other].clear()
    return _Requests(frozenset(fp for fp, n in longest.items() if n < minimum),
                     {fp: n for fp, n in loops.items() if n >= 2}, dict(repeated), True)


def _in_one_transaction(group: list[Statement], minimum: int) -> bool:
    """Some explicit transaction holds ``minimum`` round trips of the group with more than one set of
    values: a loop inside it (a busy connection's piece of work spans many transactions)."""
    by_tx: dict[int, list[Statement]] = defaultdict(list)
    for s in group:
        if s.tx and not s.event.pipelined:
            by_tx[s.tx].append(s)
    return any(len(inside) >= minimum and len({_values(s) for s in inside}) > 1 for inside in by_tx.values())


def _tenants_during(unit: Unit, group: list[Statement]) -> set:
    """The tenant values the piece of work's statements used from the group's first statement to its last."""
    first, last = group[0], group[-1]
    out: set = set()
    inside = False
    for s in unit.statements:
        if s is first:
            inside = True
        if inside and s.tenants:
            out |= s.tenants
            if len(out) > 1:
                break
        if s is last:
            break
    return out


def traced_loops(groups: list, config: DetectorConfig) -> list[Occurrence]:
    """The loops the tracer followed from one parent result (``detectors.tracing``): each iteration's
    statement carried a key that result returned, in its own transaction, after a pool reset or on
    another of the pool's connections. Several shapes of one kind run per row of the same parent are one
    loop (an MN+1: two findOne per node, three DELETEs per contact), reported once with one fix."""
    loops: dict[str, list] = defaultdict(list)
    for group in groups:
        children = group.children
        if not children or children[0].fp.kind not in _DML:
            continue
        if group.round_trips < config.n_plus_one_min or len(group.keys) < group.min_keys:
            continue
        loops[children[0].fp.kind].append(group)
    out = []
    for same_kind in loops.values():
        parent = same_kind[0].parent
        connections = set().union(*(g.connections for g in same_kind))
        transactions = set().union(*(g.transactions for g in same_kind))
        round_trips = sum(g.round_trips for g in same_kind)
        how = [f"each with a key from the {parent.rows}{'+' if parent.truncated else ''} rows of "
               f"{parent.fp.text[:120]}"]
        if len(connections) > 1:
            how.append(f"spread over {len(connections)} connections")
        if len(transactions) > 1:
            how.append(f"in {len(transactions)} transactions")
        if len(same_kind) == 1:
            out.append(_loop_occurrence(same_kind[0].children, round_trips, 0.95, ", ".join(how), parent.fp))
        else:
            out.append(_nested_loop(same_kind, round_trips, ", ".join(how), parent.fp))
    return out


def _nested_loop(groups: list, round_trips: int, why: str, parent: Fingerprint) -> Occurrence:
    """One finding for the M statements run per row of one parent."""
    groups = sorted(groups, key=lambda g: g.children[0].event.started_at)
    shapes = [g.children[0].fp for g in groups]
    statements = [s for g in groups for s in g.children]
    kind = f"n_plus_one_{shapes[0].kind.lower()}"
    key = hashlib.blake2b("|".join(sorted(fp.id for fp in shapes)).encode(), digest_size=8).hexdigest()
    fixes = " ".join(f"({i}) {_suggest(fp, kind)}" for i, fp in enumerate(shapes, 1))
    return Occurrence(
        kind=kind, fingerprint=key, severity=_n_plus_one_severity(round_trips, statements), confidence=0.95,
        statements=statements,
        suggestion=(f"One loop runs {len(shapes)} statements per row of its parent query: batch each over all the "
                    f"rows' keys, or load them with the parent in one query. {fixes}"),
        tables=tuple(dict.fromkeys(t for fp in shapes for t in fp.tables)),
        example="; ".join(fp.text for fp in shapes),
        message=f"{round_trips} round trips of {len(shapes)} {shapes[0].kind} shapes per row ({why})",
        extra={"parent": parent.text, "parent_fingerprint": parent.id, "fingerprints": [fp.id for fp in shapes]},
    )


def fan_out(burst, config: DetectorConfig) -> list[Occurrence]:
    """A burst of one lookup per key over several connections at once (``detectors.bursts``): the loop of
    an N+1 run concurrently (Promise.all, asyncio.gather), its keys from the request."""
    statements = burst.statements
    if not statements or statements[0].fp.kind not in _DML:
        return []
    if sum(1 for s in statements if s.traced) >= config.n_plus_one_min:
        return []  # traced to a parent result: traced_loops reports it
    round_trips = sum(1 for s in statements if not s.event.pipelined)
    if round_trips < config.n_plus_one_min or len(burst.keys) < config.n_plus_one_min:
        return []
    span_ms = (statements[-1].end - statements[0].event.started_at) * 1000
    why = (f"a burst of {len(burst.keys)} keys over {len(burst.connections)} connections at once in "
           f"{span_ms:.0f} ms, nothing else from the application meanwhile: a loop fanned out over the pool")
    return [_loop_occurrence(statements, round_trips, 0.7, why, None)]


def _shared_request(unit: Unit, s: Statement) -> bool:
    """A statement outside a transaction on pooled work with nothing naming the request: whatever ran
    before it on the connection may have been another request's."""
    return s.shared and s.tx == 0 and not unit.trace_id and not any(unit.labels[1:])


def repeated_identical(unit: Unit, config: DetectorConfig, schema: Schema | None = None) -> list[Occurrence]:
    groups: dict[tuple, list[Statement]] = defaultdict(list)
    for s in unit.statements:
        if s.fp.kind == "SELECT" and s.fp.tables and s.event.sqlstate is None and not _shared_request(unit, s):
            # on pooled connections, one transaction is the one request that is sure
            groups[(s.fp.id, _values(s), s.tx if s.shared else 0)].append(s)
    # A unit of thousands of statements is a stretch of nonstop traffic (cut at the size cap, or by
    # the connection's end), not one request: random lookups repeat in it by chance (pgbench -S), so
    # there a repeat must be 1% of it to count. Request-sized units keep the plain minimum.
    least = max(config.repeated_identical_min, len(unit.statements) // 100)
    out = []
    rhythm = None
    for (fp_id, values, _), group in groups.items():
        if len(group) < least or len(_tenants_during(unit, group)) > 1:
            continue  # (a connection serving several tenants' requests in turn repeats their lookups)
        rhythm = rhythm or _requests(unit, config.n_plus_one_min)
        within = rhythm.repeated.get((fp_id, values), 0)
        if rhythm.marked and (within + 1 < least or 2 * within < len(group) - 1):
            # most repeats came in later requests (one tenant's users asking again, request after
            # request, on one connection), not within one
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


def _list_keys(s: Statement) -> list[str]:
    """The keyed hashes of an IN (...) list's or = ANY array's values."""
    params = s.event.param_hashes
    numbers = in_list_param_numbers(s.event.sql) if params else []
    hashes = [params[n - 1] for n in numbers if 0 < n <= len(params) and params[n - 1]]
    return hashes + [h for h in s.in_list_values if h]


def _list_table(fp: Fingerprint) -> str | None:
    """The table whose column the statement's list of keys is compared with."""
    counts: dict[tuple, int] = defaultdict(int)
    for t, column, kind, _n in fp.value_pins:
        counts[(t, column)] += 2 if kind == "array" else 1
    listed = [t for (t, _c), n in counts.items() if n > 1]
    if listed:
        return listed[0] or (fp.tables[0] if len(fp.tables) == 1 else None)
    return fp.tables[0] if fp.tables else None


def _keys_from(previous: Statement, keys: list[str]) -> bool:
    """Whether ``keys`` are the values of one of ``previous``'s result columns. Only the first rows of a
    result are hashed: past them, a column whose hashed values are all among the keys, with no more keys
    than the result had rows, is taken as the source."""
    rows = previous.event.result_hashes
    cells = {h for row in rows for h in row if h is not None}
    if all(h in cells for h in keys):
        return True
    total = previous.event.rows or 0
    if total <= len(rows) or len(keys) > total:
        return False
    wanted = set(keys)
    width = max(len(r) for r in rows)
    return any(all(len(r) > i and r[i] is not None and r[i] in wanted for r in rows) for i in range(width))


def join_candidate(unit: Unit, config: DetectorConfig, schema: Schema | None = None) -> list[Occurrence]:
    """A query whose list of keys is exactly what the application's previous query returned, when that
    query returned little else (its keys, and a count): the two are one JOIN. A previous query that
    returned whole rows is a page whose relations are then fetched in one batch (prefetch_related,
    selectinload): the fix for an N+1, not a finding; one that fetched the same table is an ORM paging
    its joined rows by id (TypeORM's take with relations)."""
    out = []
    previous: Statement | None = None
    for s in unit.statements:
        fp = s.fp
        if previous is not None and fp.kind == "SELECT" and (fp.has_in_list or s.in_list_values) \
                and s.event.sqlstate is None and previous.event.result_hashes:
            keys = _list_keys(s)
            table = _list_table(fp)
            width = max(len(r) for r in previous.event.result_hashes)
            if len(keys) >= 2 and width <= 2 and table not in previous.fp.tables and _keys_from(previous, keys):
                prev_tables = ", ".join(previous.fp.tables) or "the first query"
                out.append(Occurrence(
                    kind="join_candidate", fingerprint=fp.id, severity="warning", confidence=0.9,
                    statements=[previous, s],
                    suggestion=(f"Its list of keys is the ids the previous query returned: fetch both in one query, "
                                f"joining {table or 'the table'} to {prev_tables} on those ids (one round trip "
                                "instead of two)."),
                    tables=tuple(dict.fromkeys(previous.fp.tables + fp.tables)), example=fp.text,
                    message=f"a list of {len(keys)} keys (IN or = ANY) taken from the previous query's rows",
                    extra={"previous": previous.fp.text},
                ))
        if fp.kind == "SELECT" and any(not system_table(t) for t in fp.tables):
            previous = s  # the application's previous query (a driver's catalog lookups in between do not count)
    return out


def _returned_keys(a: Statement, schema: Schema) -> dict[str, set[str]] | None:
    """Table -> the keys of its rows ``a``'s RETURNING gave back, as the catalog places its columns; None
    when it cannot place them."""
    ev = a.event
    if not ev.result_sources or not schema.loaded:
        return None
    named: dict[str, set[str]] = defaultdict(set)
    for i, (oid, number) in enumerate(ev.result_sources):
        place = schema.source(oid, number) if oid else None
        table = schema.get(place[0]) if place else None
        entity = schema.names(table, place[1]) if table else None
        if entity:
            named[entity].update(r[i] for r in ev.result_hashes if i < len(r) and r[i])
    return named


def _written(b: Statement) -> dict[str, str]:
    """column -> hash of the value ``b`` writes (INSERT) or filters by (WHERE) on its first table."""
    out = inserted_values(b) if b.fp.kind == "INSERT" else {}
    first = b.fp.tables[0] if b.fp.tables else None
    for t, column, kind, n in b.fp.value_pins:
        if t in (None, first):
            h = value_at(b, kind, n)
            if isinstance(h, str):
                out.setdefault(column, h)
    return out


def _feeds(a: Statement, b: Statement, schema: Schema | None, tenant: tuple[str, ...]) -> bool:
    """Whether ``a``'s RETURNING gave back a key ``b`` then wrote or filtered by (the new activity's id in
    the scheduled call that points at it). With the catalog, the key must land in a column naming rows of
    the table it came from (a foreign key to it), so that small ids of unrelated tables do not meet by
    chance; without it, in any column but the tenant's."""
    if not a.event.result_hashes:
        return False
    written = _written(b)
    if not written:  # positions unknown (an unparsed statement): any value it carries
        return bool(_result_set(a) & {h for h in b.values if h})
    named = _returned_keys(a, schema) if schema is not None else None
    target = schema.get(b.fp.tables[0]) if named is not None and b.fp.tables else None
    returned = _result_set(a) if target is None else set().union(*named.values()) if named else set()
    for column, h in written.items():
        ref = target.identifies(column) if target is not None else None
        if ref is not None:
            if h in named.get(ref, ()):
                return True
        elif column not in tenant and h in returned:
            return True  # no foreign key declared (or no catalog): a returned key in a plain column
    return False


PAIRED_WRITES = 8  # a write is compared with the next few of its piece of work: related writes are near


def _committed_apart(a: Statement, b: Statement) -> bool:
    return a.tx == 0 or b.tx == 0 or a.tx != b.tx


def missing_transaction(unit: Unit, config: DetectorConfig, schema: Schema | None = None) -> list[Occurrence]:
    """Related writes of one piece of work committed separately (in autocommit, or each in a transaction
    of its own, as an ORM's save() does): a failure between them leaves half of them applied. Not for work
    a test suite threw away (rolled back, or its tables truncated after it): a test's fixtures are not the
    application's writes."""
    if unit.explicit or unit.rolled_back:
        return []
    writes: list[Statement] = []
    seen: set[tuple[str, int]] = set()
    for s in unit.statements:
        if s.fp.kind in ("INSERT", "UPDATE", "DELETE") and s.event.sqlstate is None and s.fp.tables:
            key = (s.fp.id, s.tx)
            if key not in seen:
                seen.add(key)
                writes.append(s)
    if len({s.fp.id for s in writes}) < 2:
        return []
    related: dict[str, Statement] = {}
    loose: dict[str, Statement] = {}
    for i, a in enumerate(writes):
        a_params = {h for h in a.values if h}
        for b in writes[i + 1:i + 1 + PAIRED_WRITES]:
            if b.fp.id == a.fp.id or not _committed_apart(a, b):
                continue
            b_params = {h for h in b.values if h}
            if _feeds(a, b, schema, config.tenant_columns):  # one write's RETURNING feeds the other
                related.setdefault(a.fp.id, a)
                related.setdefault(b.fp.id, b)
            elif len(a_params & b_params) >= 2 and not (a.shared or b.shared):
                # they share two values (a tenant id alone is shared by every write of a tenant); on pooled
                # connections two requests' writes can, so there only RETURNING ties them
                related.setdefault(a.fp.id, a)
                related.setdefault(b.fp.id, b)
            elif a.tx == 0 and b.tx == 0:
                loose.setdefault(a.fp.id, a)
                loose.setdefault(b.fp.id, b)
    group = list(related.values()) or list(loose.values())
    if len(group) < 2:
        return []
    group.sort(key=lambda s: s.event.started_at)
    confidence = 0.85 if related else 0.4
    key = hashlib.blake2b("|".join(s.fp.id for s in group).encode(), digest_size=8).hexdigest()
    tables = tuple(dict.fromkeys(t for s in group for t in s.fp.tables))
    body = "; ".join(s.fp.text for s in group)
    separately = "committed separately" if any(s.tx for s in group) else "in autocommit"
    return [Occurrence(
        kind="missing_transaction", fingerprint=key, severity="warning" if len(group) == 2 else "error",
        confidence=confidence, statements=group,
        suggestion=(f"Run these writes in one transaction so a failure cannot leave half of them applied: "
                    f"BEGIN; {body}; COMMIT -- e.g. db.transaction(async (tx) => {{ ... }})."),
        tables=tables, example=body,
        message=f"{len(group)} related writes {separately} within one unit of work" if related
        else f"{len(group)} writes in autocommit within one unit of work",
    )]


def long_transaction(unit: Unit, config: DetectorConfig, now: float | None = None) -> list[Occurrence]:
    """A finished transaction that lasted too long, or (with ``now``) one still open or idle in it."""
    if unit.kind != TRANSACTION or not unit.statements:
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


# over pieces of work (runs); long_transaction is over transactions
UNIT_DETECTORS = (n_plus_one, repeated_identical, join_candidate, missing_transaction)

# ------------------------------------------------------------------ statement detectors


# What the application's requests wait on. DDL, VACUUM, CREATE DATABASE and the like are a migration's or
# an operator's: slow by nature, and not what slow_query is for.
TIMED_KINDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "CALL", "EXECUTE", "FETCH",
                         "VALUES", "TABLE", "WITH"})
_SLOW_FIX = ("EXPLAIN (ANALYZE, BUFFERS) this statement: look for sequential scans on large tables and add the "
             "index its WHERE/ORDER BY needs, or reduce the rows it reads.")


def slow_query(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    """The slow log: one execution at or over the third threshold (1 s) is reported at once, whatever the
    shape's percentiles (those are judged per shape, ``slow_shape``)."""
    ms = s.event.duration * 1000
    if ms < config.slow_query_ms[2] or s.fp.kind not in TIMED_KINDS:
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


def _all_columns(fp: Fingerprint, schema: Schema) -> dict[str, Table]:
    """Tables the statement selects every column of: by *, or by listing them all as ORMs do."""
    out = {t: table for t in fp.select_star if (table := schema.get(t)) is not None}
    if fp.selected_columns:
        listed: dict[str, set[str]] = defaultdict(set)
        only = fp.tables[0] if len(fp.tables) == 1 else None
        for t, column in fp.selected_columns:
            if t or only:
                listed[t or only].add(column)
        for t, columns in listed.items():
            table = schema.get(t)
            if table is not None and table.columns and columns >= table.columns.keys():
                out[t] = table
    return out


def select_star(s: Statement, schema: Schema, config: DetectorConfig) -> list[Occurrence]:
    """Every column of a table with wide values, for a list of rows (seed 000 F6): most of the bytes go
    unused. One row fetched whole (an edit form) is left alone; so is * over narrow rows."""
    fp = s.fp
    ev = s.event
    if fp.kind != "SELECT" or s.event.sqlstate or (not fp.select_star and not fp.selected_columns):
        return []
    selected = schema.remember(("all columns", fp.id), lambda: _all_columns(fp, schema))
    per_row = ev.response_bytes / ev.rows if ev.rows else 0
    # a table not analysed yet has only its column types to go by (jsonb may hold a few bytes or
    # kilobytes): there the rows this statement returned must be wide too
    wide = {t: table for t, table in selected.items()
            if table.wide_columns and (table.analysed or per_row >= 2 * WIDE_TEXT_BYTES)}
    if wide and (ev.rows or 0) > 1:
        parts = []
        for t, table in wide.items():
            keep = [c for c in table.columns if c not in table.wide_columns]
            parts.append(f"{t}: SELECT {', '.join(keep)} (omit {', '.join(table.wide_columns)} unless needed)")
        fix = "Select only the columns the caller uses; " + "; ".join(parts) + "."
        described = [f"{t} (wide: {', '.join(tb.wide_columns)})" for t, tb in wide.items()]
        how = "SELECT *" if any(t in fp.select_star for t in wide) else "every column"
        why = f"{how} of {', '.join(described)} for {ev.rows} rows"
    elif fp.select_star and per_row >= config.wide_row_bytes:
        fix = "Select only the columns the caller uses instead of *."
        why = f"SELECT * returning {per_row:.0f} bytes per row"
    else:
        return []
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


STATEMENT_DETECTORS = (slow_query, select_star, unbounded_result, offset_pagination, not_in_subquery)


# What a shape must be, under a catalog snapshot, for each statement detector to ever report one of its
# statements (checked once per shape and snapshot by the pipeline, which then runs only those: a lookup by
# key costs two detector calls).
_SHAPE_GUARDS = {
    "slow_query": lambda fp, schema: fp.kind in TIMED_KINDS,
    "select_star": lambda fp, schema: fp.kind == "SELECT" and bool(fp.select_star or _all_columns(fp, schema)),
    "unbounded_result": lambda fp, schema: fp.kind == "SELECT" and not fp.has_limit,
    "offset_pagination": lambda fp, schema: bool(fp.offset_literal or fp.offset_param),
    "not_in_subquery": lambda fp, schema: bool(fp.not_in_subquery),
}


def statement_checks(fp: Fingerprint, detectors, schema: Schema) -> tuple:
    """The ``detectors`` that can report a statement of shape ``fp`` under ``schema``, in their order."""
    return tuple([d for d in detectors if _SHAPE_GUARDS.get(d.__name__, _any_shape)(fp, schema)])


def _any_shape(fp: Fingerprint, schema: Schema) -> bool:
    return True
