"""The detector pipeline: statement events in, findings out. Pure and synchronous: callers pass the time.

The proxy runs it on a worker thread fed from the events queue, so nothing here touches the
forwarding path; tests and the offline benchmark call it directly.
"""

from __future__ import annotations

import math
import re
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from detectors.bursts import Bursts
from detectors.config import DetectorConfig
from detectors.findings import Finding, FindingStore
from detectors.fingerprint import MAX_HASHED_LITERALS, Fingerprint, Fingerprinter, in_list_literals, sqlcommenter_tags
from detectors.rules import (
    SEVERITIES,
    STATEMENT_DETECTORS,
    TIMED_KINDS,
    UNIT_DETECTORS,
    Occurrence,
    fan_out,
    long_transaction,
    slow_shape,
    statement_checks,
    system_table,
    traced_loops,
)
from detectors.schema import ANY, Schema, Table, Verdicts
from detectors.sizing import DEFAULT_ANALYSIS_MEMORY_MB, ENTRY_OVERHEAD, deep_size, share
from detectors.tenancy import FIRST, OTHER, SAME, Provenance, cross_tenant
from detectors.tracing import LoopMemory, Tracer
from detectors.traffic import TrafficStats, statement_type
from detectors.units import TRANSACTION, Statement, Unit, UnitTracker
from detectors.values import pinned_values, value_at
from proxy.events import ConnectionClosed, StatementEvent

_NO_TAGS: dict[str, str] = {}
# A literal in column = constant is code, not data, once this many executions of its shape all carried
# the same value (status = 'ACTIVE'); only then may the index advisor write it into a partial index.
CONSTANT_MIN_CALLS = 3
MAX_CONSTANT_CHARS = 64
MAX_DEPLOY_NAMES = 100  # sqlcommenter deploy names remembered, and waiting for the store
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?")
_VARIED = (None, 0, None)
MAX_UNKNOWN_TABLES = 1000
SHARED_S = 1.0  # a shape another live connection of the application ran this recently is pooled work
MAX_CLOSED = 4096
# Statements sent before their database's catalog was read, one per shape, kept to be judged for reaching
# every tenant when it arrives (a test suite's database, made by the suite under ``pgloupe run``)
UNJUDGED_BYTES = 4 << 20
P99_MIN_CALLS = 500  # a busy shape's p99 is judged once it has this many executions ...
QUIET_S = 2.0  # ... a rare one once it has not run for this long (or at the end)


def _p99_level(calls: int, slow: list) -> str | None:
    """The severity the shape's p99 (nearest rank) reaches, from the counts at or above each threshold."""
    above = calls - math.ceil(0.99 * calls) + 1  # how many executions are at or above the p99
    if slow[1] >= above:
        return "critical"
    if slow[0] >= above:
        return "warning"
    return None


MAX_DATABASES = 64  # databases whose catalog is kept and refreshed (the least recently used one goes)
_NO_SCHEMA = Schema()


@dataclass(slots=True)
class ShapeStats:
    """Per fingerprint, like pg_stat_statements: what the index advisor ranks statements by."""

    fp: Fingerprint
    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    rows: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # recent durations, for p95
    # per constant slot of the shape: (keyed hash of the value, executions that carried it, its SQL once
    # proven), _VARIED once two executions differed; None until the first execution
    constants: list | None = None
    proven: dict = field(default_factory=dict)  # on snapshots: literal index -> SQL literal, proven code
    databases: set = field(default_factory=set)  # where it ran (a few names)
    # executions at or above the slow_query p99 thresholds (warning, critical), the latest such statements,
    # the severity rank already reported for the shape's p99, and when it last ran (wall clock)
    slow: list = field(default_factory=lambda: [0, 0])
    slow_recent: deque = field(default_factory=lambda: deque(maxlen=5))
    slow_reported: int = -1
    last_at: float = 0.0
    conns: dict = field(default_factory=dict)  # connection -> (application, last run), a few, for shared shapes
    checks: _Checks | None = None  # Pipeline._checks: what each of its statements is asked, worked out once

    def snapshot(self) -> ShapeStats:
        """A copy for the advisor, which reads it off the analysis thread: counts and proven constants."""
        proven = {}
        if self.constants:
            for (_t, _c, slot, _q), state in zip(self.fp.constant_slots, self.constants, strict=False):
                if state[2] is not None:
                    proven[slot] = state[2]
        return ShapeStats(self.fp, self.calls, self.total_s, self.max_s, self.rows, deque(), None, proven,
                          set(self.databases), list(self.slow))


@dataclass(slots=True)
class _Checks:
    """What a layout of a shape asks of each of its statements under one configuration and snapshot."""

    fp: Fingerprint | None  # the layout (the shape's layouts differ in where values sit)
    configured: object  # the pipeline's configuration it was worked out under
    verdicts: Verdicts | None  # ... and the catalog snapshot: its verdicts and its number there
    snapshot: int
    detectors: tuple  # the statement detectors that can report a statement of it
    dml: bool
    hashed_literals: bool  # DML whose literals are hashed like bound parameters
    application_tables: bool  # it names a table that is not the system's (a driver's catalog query does not)


# What a shape's statistics cost beyond its fingerprint (a full deque of recent durations, its checks)
SHAPE_STATS_BYTES = deep_size(ShapeStats(None, recent=deque([float(i) for i in range(64)], maxlen=64),
                                          checks=_Checks(None, None, None, 0, (None,) * len(STATEMENT_DETECTORS),
                                                         False, False, False))) + ENTRY_OVERHEAD
FindingListener = Callable[[Finding], None]


def _literal_sql(value: str, quoted: bool) -> str | None:
    """A proven constant as SQL: a quoted string, or a plain number; anything else is not written."""
    if quoted:
        return "'" + value.replace("'", "''") + "'"
    return value if _NUMBER.fullmatch(value) else None


class Pipeline:
    def __init__(self, config: DetectorConfig | None = None, schema: Schema | None = None,
                 fingerprinter: Fingerprinter | None = None, hasher=None,
                 memory_mb: float = DEFAULT_ANALYSIS_MEMORY_MB, database: str | None = None):
        self.config = config or DetectorConfig()
        # what the snapshots told about shapes and RowDescriptions, bounded in bytes for all of them
        self.verdicts = Verdicts(share(memory_mb, "schema_verdicts"))
        if schema is not None:
            schema.memo.bind(self.verdicts)
        # Each database clients use has its own catalog snapshot; None holds one for every database (a
        # snapshot given here, for tests and the offline benchmark)
        self.schemas: dict[str | None, Schema] = {None: schema} if schema is not None else {}
        self.database = database  # the upstream URL's database: what `schema` names
        self.databases: OrderedDict[str, float] = OrderedDict()  # databases seen in traffic -> last seen
        self.memory_mb = memory_mb
        self.fingerprint = fingerprinter or Fingerprinter(share(memory_mb, "fingerprint_texts"),
                                                          share(memory_mb, "fingerprint_shapes"),
                                                          self.config.max_parse_chars)
        self.hasher = hasher  # the proxy's ValueHasher: interpolated literals hash like bound parameters
        self.units = UnitTracker(self.config.unit_gap_ms / 1000, self.config.max_unit_statements,
                                 share(memory_mb, "open_units"))
        self.findings = FindingStore(share(memory_mb, "findings"))
        self.listeners: list[FindingListener] = []  # called for new or escalated findings (alerts)
        # sqlcommenter deploy tags not yet taken by the findings store: name -> first seen
        self.deploys: OrderedDict[str, float] = OrderedDict()
        self._deploy_names: OrderedDict[str, None] = OrderedDict()  # names already seen (recent ones)
        self.on_error: Callable[[object], None] | None = None
        self.events = 0
        self.errors = 0  # events the detectors failed on (logged by the caller, never fatal)
        # per database: tables seen in traffic but not in its snapshot, and those still absent after a refresh
        self.unknown: dict[str | None, set[str]] = {}
        self._still_missing: dict[str | None, set[str]] = {}
        self.shapes: OrderedDict[str, ShapeStats] = OrderedDict()
        self.shapes_limit = share(memory_mb, "shape_stats")
        self.shapes_used = 0
        self.shapes_evicted = 0
        self.unknown_evicted = 0
        self._slow_shapes: dict[str, ShapeStats] = {}  # shapes with slow executions not judged at their worst
        self.provenance = Provenance(share(memory_mb, "keys"))  # where keys came from, for the tenant check
        self.loops = LoopMemory(share(memory_mb, "loops"))
        self.tracer = Tracer(self.loops)  # loops followed to their parent result, across units and connections
        self.bursts = Bursts(self.loops)  # loops fanned out over a pool with no parent result
        self._closed: OrderedDict[int, None] = OrderedDict()  # connections that ended (recent ones)
        self._unjudged: OrderedDict[tuple[str, str], Statement] = OrderedDict()  # (database, shape) -> first
        self.unjudged_used = 0
        self.unjudged_evicted = 0
        # conn -> (its piece of work, a read's cross_tenant occurrence, the tenant of its rows, FIRST or
        # OTHER): see _wait_for_tenant
        self._other_tenant: dict[int, tuple] = {}
        self._last_tenancy: tuple = (None, None, None, None)  # (fingerprint, schema, tenant columns, verdict)
        self.traffic = TrafficStats(self.config.max_fingerprint_labels)
        self.reconfigure(self.config)

    def reconfigure(self, config: DetectorConfig) -> None:
        """New thresholds, silences and disabled detectors from now on (SIGHUP); findings, shapes and
        open units are kept."""
        self.config = config
        self.units.gap = config.unit_gap_ms / 1000
        self.units.max_statements = config.max_unit_statements
        self.fingerprint.max_parse_chars = config.max_parse_chars
        skip = config.disabled
        self._unit_detectors = [d for d in UNIT_DETECTORS if not _skipped(d.__name__, skip)]
        self._statement_detectors = [d for d in STATEMENT_DETECTORS if d.__name__ not in skip]
        self._configured = object()  # each shape's statement detectors are chosen again

    def process(self, events: Iterable[StatementEvent | ConnectionClosed]) -> None:
        for ev in events:
            try:
                if isinstance(ev, ConnectionClosed):
                    for unit in self.units.close(ev.conn_id):
                        self._close(unit)
                    self.provenance.forget(ev.conn_id)
                    self._traced(0.0, closed=ev.conn_id)
                    self._closed[ev.conn_id] = None
                    if len(self._closed) > MAX_CLOSED:
                        self._closed.popitem(last=False)
                    continue
                self._process(ev)
            except Exception:  # one odd statement must not cost the rest of the batch
                self.errors += 1
                if self.on_error is not None:
                    self.on_error(ev)

    def _process(self, ev: StatementEvent) -> None:
        self.events += 1
        fp = self.fingerprint(ev.sql)
        shapes = self.shapes
        st = shapes.get(fp.id)
        if st is None:
            st = shapes[fp.id] = ShapeStats(fp)
            self.shapes_used += fp.size + SHAPE_STATS_BYTES
            while self.shapes_used > self.shapes_limit and len(shapes) > 1:
                self.shapes_used -= shapes.popitem(last=False)[1].fp.size + SHAPE_STATS_BYTES
                self.shapes_evicted += 1
        elif st.calls & 63 == 0:
            shapes.move_to_end(fp.id)  # keep busy shapes from eviction without paying on every call
        st.calls += 1
        st.total_s += ev.duration
        if ev.duration > st.max_s:
            st.max_s = ev.duration
        st.rows += ev.rows or 0
        st.recent.append(ev.duration)
        if ev.database not in st.databases and len(st.databases) < 8:
            st.databases.add(ev.database)
        if fp.constant_slots:
            self._track_constants(st, fp, ev)
        self.traffic.observe(ev, fp)
        database = ev.database
        if database not in self.databases:
            self._saw_database(database, ev.started_at)
        elif not self.events & 255:
            self.databases.move_to_end(database)
        schema = self.schema_for(database)
        checks = self._checks(st, fp, schema)
        stmt = Statement(ev, fp, sqlcommenter_tags(ev.sql) if "/*" in ev.sql else _NO_TAGS, ev.param_hashes)
        if stmt.tags and "deploy" in stmt.tags:
            self._saw_deploy(stmt.tags["deploy"], ev.started_at)
        if checks.hashed_literals and self.hasher is not None:
            self._literal_hashes(stmt)
        if ev.array_hashes:  # = ANY($n) arrays: their elements are the statement's list of keys
            stmt.in_list_values += tuple([h for _, hashes in ev.array_hashes for h in hashes])
        if fp.tables and schema.loaded:
            missing = self._still_missing.get(database, ())
            for t in fp.tables:
                if t not in schema.tables and t not in missing and not system_table(t):
                    unknown = self.unknown.setdefault(database, set())
                    if sum(map(len, self.unknown.values())) < MAX_UNKNOWN_TABLES and len(t) <= 128:
                        unknown.add(t)  # names from traffic: bounded, a refresh empties it
                    else:
                        self.unknown_evicted += 1
        config = self.config
        st.last_at = ev.started_at
        stmt.shared = self._shared(st, ev)
        if ev.duration * 1000 >= config.slow_query_ms[0] and ev.sqlstate is None and fp.kind in TIMED_KINDS:
            self._slow_execution(st, stmt)
        closed = self.units.add(stmt)  # first: it numbers the statement's transaction and run
        if checks.dml and ev.sqlstate is None:
            self._tenancy(stmt, schema)
            # a driver's catalog queries (pg_type's oids) are neither loops nor their parents
            if checks.application_tables:
                keys, named = self._keys(stmt, schema)
                if keys or ev.result_hashes:
                    self.tracer.observe(stmt, keys, self._parent_hashes(stmt, schema), self.units.previous_work,
                                        named)
                self.bursts.observe(stmt, keys)
        for detect in checks.detectors:
            for occ in detect(stmt, schema, config):
                self._record(occ)
        for unit in closed:
            self._close(unit)

    def _checks(self, st: ShapeStats, fp: Fingerprint, schema: Schema) -> _Checks:
        """What the shape (this layout of it) asks of each of its statements, worked out once per
        configuration and catalog snapshot."""
        memo = schema.memo
        checks = st.checks
        if (checks is not None and checks.fp is fp and checks.configured is self._configured
                and checks.verdicts is memo.verdicts and checks.snapshot == memo.snapshot and memo.verdicts is not None):
            return checks
        dml = fp.is_dml
        checks = st.checks = _Checks(
            fp, self._configured, memo.verdicts, memo.snapshot, statement_checks(fp, self._statement_detectors, schema),
            dml, dml and ("%s" in fp.text or "?" in fp.text),
            bool(fp.tables) and not all(system_table(t) for t in fp.tables))
        return checks

    def _shared(self, st: ShapeStats, ev: StatementEvent) -> bool:
        """Whether another connection of the same application ran this shape in the last second: the mark
        of pooled work (requests, a fan-out) rather than of one connection's loop."""
        conns = st.conns
        now = ev.started_at
        shared = False
        for conn, (app, at) in conns.items():
            if conn != ev.conn_id and app == ev.application_name and now - at <= SHARED_S \
                    and conn not in self._closed:
                shared = True
                break
        if ev.conn_id in conns:
            del conns[ev.conn_id]
        elif len(conns) >= 8:
            del conns[next(iter(conns))]
        conns[ev.conn_id] = (ev.application_name, now)
        return shared

    def _tenancy(self, stmt: Statement, schema: Schema) -> None:
        """The tenant check, and what a tenant-checked statement teaches about where keys come from."""
        fp = stmt.fp
        if "cross_tenant" in self.config.disabled:
            return
        if not schema.loaded:
            # Before its database's catalog is read, nothing can be judged, nor can it be told which keys
            # were tenant-checked: what its statements return or use is presumed so, lest a row created
            # now and saved after the catalog arrives (a test suite's database, made by the suite) be
            # taken for an id from nowhere.
            rows = stmt.event.result_hashes
            self.provenance.learn(stmt, [(ANY, [h for r in rows for h in r]), (ANY, stmt.values)], fp.tables, False)
            self._hold_unjudged(stmt)
            return
        if not self._shape_tenancy(fp, schema).tenant_table:
            return
        occurrences = cross_tenant(stmt, schema, self.config, self._known, self._rows_tenant)
        ev = stmt.event
        waiting = None
        for occ in occurrences:
            if occ.extra.get("pending"):
                waiting = self._wait_for_tenant(stmt, occ, schema)
            else:
                self._record(occ)
        tenants = self._tenant_values(stmt, schema)
        if tenants:
            stmt.tenants = frozenset(tenants)
        if any(occ.severity != "info" and occ is not waiting for occ in occurrences):
            return
        if waiting is not None:
            return
        if not occurrences:
            self.provenance.learn(stmt, self._vouched_keys(stmt, schema), fp.tables,
                                  (ev.rows or 0) > len(ev.result_hashes))
        pending = self._other_tenant.get(ev.conn_id)
        worked_for = self._tenant_values(stmt, schema, returned=False) if pending is not None else ()
        if worked_for:
            del self._other_tenant[ev.conn_id]
            if pending[0] != stmt.run or not worked_for & pending[2]:
                self._record(pending[1])  # the work went on for another tenant: the row was not its own
            else:  # it was the signed-in user's row: its keys are the work's
                read = pending[1].statements[0]
                self.provenance.learn(read, pending[4], read.fp.tables, False)
        self.provenance.note_tenants(stmt, tenants)

    def _hold_unjudged(self, stmt: Statement) -> None:
        """The first statement of its shape in a database whose catalog is not read yet: kept, within
        UNJUDGED_BYTES (oldest dropped, counted), to be judged when the catalog arrives."""
        key = (stmt.event.database, stmt.fp.id)
        held = self._unjudged
        if key in held:
            return
        cost = stmt.cost
        if cost > UNJUDGED_BYTES // 8:
            self.unjudged_evicted += 1
            return
        held[key] = stmt
        self.unjudged_used += cost
        while self.unjudged_used > UNJUDGED_BYTES:
            self.unjudged_used -= held.popitem(last=False)[1].cost
            self.unjudged_evicted += 1

    def _judge_unjudged(self, database: str, schema: Schema) -> None:
        """What ran before ``database``'s catalog arrived, judged now for what needs no history: a
        statement that reaches every tenant (its keys, presumed tenant-checked then, stay so)."""
        for key in [k for k in self._unjudged if k[0] == database]:
            stmt = self._unjudged.pop(key)
            self.unjudged_used -= stmt.cost
            if "cross_tenant" in self.config.disabled or not self._shape_tenancy(stmt.fp, schema).tenant_table:
                continue
            for occ in cross_tenant(stmt, schema, self.config, lambda *_: True, None):
                self._record(occ)

    def _wait_for_tenant(self, stmt: Statement, occ: Occurrence, schema: Schema) -> Occurrence:
        """A read by an id no tenant-checked query returned, of a row of no tenant or of another tenant than
        the piece of work's so far: the signed-in user loaded by the id its session holds (on a connection
        that may have served another tenant's request just before), or an id from the request. What
        follows tells: judged at the next statement that works for a tenant (filters by it or writes it),
        or at the end of the piece of work. The first such row is the work's tenant meanwhile; a row of
        another tenant read after it is the suspect, and the first was the identity."""
        conn = stmt.event.conn_id
        verdict = occ.extra["pending"]
        rows = self._tenant_values(stmt, schema)
        earlier = self._other_tenant.pop(conn, None)
        if earlier is not None:
            if verdict == OTHER and earlier[3] == FIRST and earlier[0] == stmt.run:
                read = earlier[1].statements[0]  # the identity this one is compared with: its keys are the work's
                self.provenance.learn(read, earlier[4], read.fp.tables, False)
            else:
                self._record(earlier[1])
        self._other_tenant[conn] = (stmt.run, occ, rows, verdict, self._vouched_keys(stmt, schema))
        if verdict == FIRST:
            self.provenance.note_tenants(stmt, rows)
        return occ

    def _judge_other_tenant(self, conn_id: int | None = None, run: int | None = None) -> None:
        """Reads of another tenant's row still waiting for what followed them: their piece of work ended."""
        for conn in [conn_id] if conn_id is not None else list(self._other_tenant):
            pending = self._other_tenant.get(conn)
            if pending is not None and (run is None or pending[0] == run):
                del self._other_tenant[conn]
                self._record(pending[1])

    def _tenant_columns(self, stmt: Statement, schema: Schema, table: str | None = None) -> list[int]:
        """Indexes of the result columns that are a tenant column (of ``table``, or of any table)."""
        tenant = self.config.tenant_columns
        sources = stmt.event.result_sources

        def compute() -> list[int]:
            out = []
            for i, (oid, number) in enumerate(sources):
                place = schema.source(oid, number) if oid else None
                if place is not None and place[1] in tenant and (table is None or place[0] == table):
                    out.append(i)
            return out

        return schema.remember(("tenant columns", sources, table, tenant), compute) if sources else []

    def _tenant_values(self, stmt: Statement, schema: Schema, returned: bool = True) -> set[str]:
        """The tenant values a statement pinned, wrote or (``returned``) returned."""
        out: set[str] = set()
        for kind, n in self._shape_tenancy(stmt.fp, schema).tenant_places:
            h = value_at(stmt, kind, n)
            if isinstance(h, tuple):
                out.update(h)
            elif h:
                out.add(h)
        rows = stmt.event.result_hashes if returned else ()
        for i in self._tenant_columns(stmt, schema) if rows else ():
            out.update(r[i] for r in rows if i < len(r) and r[i])
        return out

    def _rows_tenant(self, stmt: Statement, table: str) -> str | None:
        """Whose rows a read by a key of unknown provenance returned, for the tenant check."""
        schema = self.schema_for(stmt.event.database)
        rows = stmt.event.result_hashes
        columns = self._tenant_columns(stmt, schema, table) if rows else []
        found = {r[i] for r in rows for i in columns if i < len(r) and r[i]}
        if not found:
            return None
        used = self.provenance.tenants(stmt)
        if not used:
            return FIRST
        if found <= used:
            return SAME
        return None if stmt.shared else OTHER

    def _shape_tenancy(self, fp: Fingerprint, schema: Schema) -> _ShapeTenancy:
        tenant = self.config.tenant_columns
        last = self._last_tenancy  # asked for several times per statement, and busy shapes run in a row
        if last[0] is fp and last[1] is schema and last[2] is tenant:
            return last[3]
        # (positions differ between the layouts of one shape: a client binding, another interpolating)
        verdict = schema.remember(("tenancy", fp.id, fp.param_count, fp.literal_count, tenant),
                                  lambda: _ShapeTenancy.of(fp, schema, tenant))
        self._last_tenancy = (fp, schema, tenant, verdict)
        return verdict

    def _vouched_keys(self, stmt: Statement, schema: Schema) -> list[tuple[str, list]]:
        """(table they are keys of, hashes) for the values a tenant-checked statement returned or filtered by."""
        ev = stmt.event
        fp = stmt.fp
        keys: list[tuple[str, list]] = []
        rows = ev.result_hashes
        if rows:
            width = max(len(r) for r in rows)
            entities = schema.remember(("entities", ev.result_sources, width),
                                       lambda: _column_entities(schema, ev.result_sources, width))
            for i, entity in enumerate(entities):
                if entity:
                    keys.append((entity, [r[i] for r in rows if i < len(r)]))
        if fp.value_pins:
            for kind, n, entity in self._shape_tenancy(fp, schema).pin_entities:
                h = value_at(stmt, kind, n)
                if isinstance(h, tuple):
                    keys.append((entity, h))
                elif h is not None:
                    keys.append((entity, (h,)))
        elif not fp.parsed:
            keys.append((ANY, stmt.values))
        return keys

    def _known(self, stmt: Statement, table: str, key: tuple[str, ...], named: str) -> bool | None:
        hashes = pinned_values(stmt, table, key)
        if hashes is None:
            return None
        return self.provenance.known(stmt, hashes, named, self.schema_for(stmt.event.database))

    def _keys(self, stmt: Statement, schema: Schema) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        """The values that could be a loop's key: what the statement filters or writes by, less its tenant
        values (every statement of a tenant shares those); and the table whose rows each names (None when
        the catalog does not say)."""
        fp = stmt.fp
        places = self._shape_tenancy(fp, schema).key_places
        if places is None:  # not parsed: its values, placed nowhere
            keys = tuple(h for h in stmt.values if h)
            return keys, (None,) * len(keys)
        if not places:
            return (), ()
        keys: list[str] = []
        tables: list[str | None] = []
        for kind, n, table in places:
            h = value_at(stmt, kind, n)
            if isinstance(h, tuple):
                keys.extend(h)
                tables.extend((table,) * len(h))
            elif h is not None:
                keys.append(h)
                tables.append(table)
        return tuple(keys), tuple(tables)

    def _parent_hashes(self, stmt: Statement, schema: Schema) -> tuple | None:
        """The result's values that could key a loop: all but its tenant column's (every row of a
        tenant-filtered page holds the same team id, which a loop's other values may equal by chance);
        and of those, the keys of its own rows (contacts.id, not contacts.owner_id), which a loop writing
        per row uses."""
        ev = stmt.event
        sources = ev.result_sources
        if len(ev.result_hashes) < 3 or not sources or not schema.loaded:
            return None
        tenant = self.config.tenant_columns
        skip = set()
        foreign = set()
        own_tables = set()
        for i, (oid, number) in enumerate(sources):
            place = schema.source(oid, number) if oid else None
            if place is None:
                continue
            if place[1] in tenant:
                skip.add(i)
                continue
            table = schema.get(place[0])
            if table is not None and schema.names(table, place[1]) != table.name:
                foreign.add(i)
            elif table is not None:
                own_tables.add(table.name)
        rows = ev.result_hashes
        every = frozenset(h for row in rows for i, h in enumerate(row) if h is not None and i not in skip)
        own = frozenset(h for row in rows for i, h in enumerate(row)
                        if h is not None and i not in skip and i not in foreign)
        width = max(len(r) for r in rows)
        entities = schema.remember(("entities", sources, width), lambda: _column_entities(schema, sources, width))
        named: dict[str, set] = {}
        unplaced: set = set()
        for i, entity in enumerate(entities):
            if i in skip or entity is None:
                continue
            column = {r[i] for r in rows if i < len(r) and r[i] is not None}
            if entity == ANY:
                unplaced |= column
            else:
                named.setdefault(entity, set()).update(column)
        return every, own, {t: frozenset(v) for t, v in named.items()}, frozenset(unplaced), frozenset(own_tables)

    def _slow_execution(self, st: ShapeStats, stmt: Statement) -> None:
        ms = stmt.event.duration * 1000
        warn, critical, _log = self.config.slow_query_ms
        st.slow[0] += 1
        if ms >= critical:
            st.slow[1] += 1
        st.slow_recent.append(stmt)
        if st.slow_reported < SEVERITIES.index("critical"):
            self._slow_shapes[st.fp.id] = st

    def _judge_slow(self, now: float, final: bool = False) -> None:
        """slow_query by percentile, as the seeds set it (p99 over 100 ms: warning, over 500 ms: critical):
        a shape is judged once it has run often enough for its p99 to mean something, or has gone quiet, so
        a fast statement that was slow a few times on a busy machine is not reported."""
        for fp_id, st in list(self._slow_shapes.items()):
            if not final and st.calls < P99_MIN_CALLS and now - st.last_at < QUIET_S:
                continue
            level = _p99_level(st.calls, st.slow)
            if level is None:
                continue
            rank = SEVERITIES.index(level)
            if rank > st.slow_reported:
                st.slow_reported = rank
                self._record(slow_shape(st.fp, list(st.slow_recent), level, st.calls, st.slow, self.config))
            if rank >= SEVERITIES.index("critical"):
                self._slow_shapes.pop(fp_id, None)

    def _track_constants(self, st: ShapeStats, fp: Fingerprint, ev: StatementEvent) -> None:
        """Whether each column = literal of the shape held the same value in every execution so far (as a
        keyed hash: no value is kept until it has proved to be code). Only a client that binds its values
        can prove it: one that interpolates them writes data as literals too (a loop's tenant id is the
        same in every execution and still data)."""
        slots = fp.constant_slots
        states = st.constants
        if states is None:
            states = st.constants = [None] * len(slots)
        literals = self.fingerprint.literal_values(ev.sql)
        if not ev.param_hashes or len(literals) != fp.literal_count:  # (another list length: no positions)
            states[:] = [_VARIED] * len(slots)
            return
        for i, (_t, _c, slot, quoted) in enumerate(slots):
            state = states[i]
            if state is _VARIED:
                continue
            value = literals[slot]
            digest = self.hasher.text(value.encode("utf-8", "surrogatepass")) if self.hasher else hash(value)
            if state is None:
                states[i] = (digest, 1, None)
            elif state[0] != digest:
                states[i] = _VARIED
            else:
                proven = state[2]
                if proven is None and state[1] + 1 >= CONSTANT_MIN_CALLS and len(value) <= MAX_CONSTANT_CHARS:
                    proven = _literal_sql(value, quoted)
                states[i] = (digest, state[1] + 1, proven)

    def observed(self) -> list[ShapeStats]:
        """Snapshots of every shape's statistics (on the analysis thread), for the advisor."""
        return [st.snapshot() for st in self.shapes.values()]

    def memory(self) -> dict[str, tuple[int, int, int]]:
        """table -> (bytes used, bytes allowed, evictions), for /metrics (off the analysis thread: the
        tables are read as counters, the unseen table names from a copy)."""
        fp, units, findings = self.fingerprint, self.units, self.findings
        unknown = _copied(lambda: [t for names in list(self.unknown.values()) for t in list(names)])
        return {
            "fingerprint_texts": (fp.texts_used, fp.texts_limit, fp.texts_evicted),
            "fingerprint_shapes": (fp.shapes_used, fp.shapes_limit, fp.shapes_evicted),
            "shape_stats": (self.shapes_used, self.shapes_limit, self.shapes_evicted),
            "findings": (findings.used, findings.limit, findings.evicted),
            "open_units": (units.used, units.limit, units.evicted),
            "loops": (self.loops.used, self.loops.limit, self.loops.evicted),
            "keys": (self.provenance.used, self.provenance.limit, self.provenance.evicted),
            "schema_verdicts": (self.verdicts.used, self.verdicts.limit, self.verdicts.evicted),
            "unknown_tables": (sum(sys.getsizeof(t) + 60 for t in unknown),
                               MAX_UNKNOWN_TABLES * 200, self.unknown_evicted),
            "unjudged": (self.unjudged_used, UNJUDGED_BYTES, self.unjudged_evicted),
        }

    def observed_rows(self) -> list[dict]:
        """Per shape, like pg_stat_statements, busiest first (the admin console's SHOW FINGERPRINTS)."""
        rows = []
        for st in self.shapes.values():
            recent = sorted(st.recent)
            p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))] if recent else 0.0
            rows.append({"fingerprint": st.fp.id, "type": statement_type(st.fp), "calls": st.calls,
                         "total_ms": st.total_s * 1000, "mean_ms": st.total_s * 1000 / st.calls if st.calls else 0.0,
                         "p95_ms": p95 * 1000, "rows": st.rows, "tables": list(st.fp.tables), "query": st.fp.text})
        rows.sort(key=lambda r: -r["total_ms"])
        return rows

    def _saw_deploy(self, name: str, at: float) -> None:
        """A ``deploy`` tag: each name is a deploy marker once (bounded: a tag per request id must not grow it)."""
        if not name or name in self._deploy_names:
            return
        self._deploy_names[name] = None
        if len(self._deploy_names) > MAX_DEPLOY_NAMES:
            self._deploy_names.popitem(last=False)
        if len(self.deploys) < MAX_DEPLOY_NAMES:
            self.deploys[name] = at

    def take_deploys(self) -> list[tuple[str, float]]:
        """From another thread: the deploy tags seen since the last call, oldest first."""
        taken = []
        while self.deploys:
            try:
                taken.append(self.deploys.popitem(last=False))
            except KeyError:
                break
        return taken

    def reset_findings(self) -> None:
        """One attribute swap: safe from the findings store's thread, which runs it between two of its rounds."""
        self.findings = FindingStore(self.findings.limit, self.findings.track_changes)

    def _saw_database(self, database: str, at: float) -> None:
        databases = self.databases
        databases[database] = at
        if len(databases) > MAX_DATABASES:  # the least recently seen goes, with its snapshot
            self.forget_database(next(iter(databases)))

    def forget_database(self, database: str) -> None:
        """A database no longer followed (dropped, or the least recently used past MAX_DATABASES)."""
        self.databases.pop(database, None)
        self.schemas.pop(database, None)
        self.unknown.pop(database, None)
        self._still_missing.pop(database, None)
        for key in [k for k in self._unjudged if k[0] == database]:
            self.unjudged_used -= self._unjudged.pop(key).cost

    def schema_for(self, database: str | None) -> Schema:
        schemas = self.schemas
        return schemas.get(database) or schemas.get(None) or _NO_SCHEMA

    @property
    def schema(self) -> Schema:
        """The upstream database's snapshot (the one for every database when it was given directly)."""
        return self.schema_for(self.database)

    @property
    def unknown_tables(self) -> set[str]:
        """Tables traffic named that a snapshot lacks, in any database."""
        return set().union(*self.unknown.values()) if self.unknown else set()

    def database_names(self) -> list[str]:
        """The databases seen in traffic, least recently seen first (a copy: safe off the analysis thread)."""
        return _copied(lambda: list(self.databases))

    def databases_wanting_refresh(self) -> list[str]:
        """Databases whose traffic named tables their snapshot lacks (or that have none yet). The catalog
        task asks from the event loop while the analysis thread adds and forgets databases: it reads a copy."""
        unknown, schemas = self.unknown, self.schemas
        return [db for db in self.database_names() if unknown.get(db) or db not in schemas]

    def schema_loaded(self, schema: Schema, database: str | None = None) -> None:
        """Swap in a fresh catalog snapshot of ``database`` (None: the upstream's); names it still lacks
        stop asking for refreshes."""
        database = database if database is not None else self.database
        asked = self.unknown.pop(database, set())
        self._still_missing[database] = {t for t in asked if t not in schema.tables}
        schema.memo.bind(self.verdicts)
        self.schemas[database] = schema
        if schema.loaded and self._unjudged:
            self._judge_unjudged(database, schema)

    def _literal_hashes(self, stmt: Statement) -> None:
        """Values written into the text join the bound ones: an ORM loop may bind the tenant id and
        interpolate the loop's value (or a prepared statement per value, as pgbench -M prepared does)."""
        digest = self.hasher.text
        sql = stmt.event.sql
        literals = self.fingerprint.literal_values(sql)
        if len(literals) > MAX_HASHED_LITERALS:
            literals = literals[:MAX_HASHED_LITERALS]
        if stmt.event.param_hashes:
            if literals:
                stmt.values = stmt.event.param_hashes + tuple([
                    digest(v.encode("utf-8", "surrogatepass")) for v in literals])
            return
        stmt.values = tuple([digest(v.encode("utf-8", "surrogatepass")) for v in literals])
        if stmt.fp.has_in_list:
            stmt.in_list_values = tuple(digest(v.encode("utf-8", "surrogatepass"))
                                        for v in in_list_literals(sql)[:MAX_HASHED_LITERALS])

    def tick(self, now: float) -> None:
        """Close idle units, judge slow shapes and traced loops, and look at transactions still open
        (wall-clock ``now``)."""
        for unit in self.units.expire(now):
            self._close(unit)
        self._traced(now)
        if self._slow_shapes and "slow_query" not in self.config.disabled:
            self._judge_slow(now)
        if "long_transaction" in self.config.disabled:
            return
        for unit in self.units.open_transactions():
            for occ in long_transaction(unit, self.config, now):
                if unit.reported is None or SEVERITIES.index(occ.severity) > SEVERITIES.index(unit.reported):
                    unit.reported = occ.severity
                    self._record(occ)

    def flush(self) -> None:
        """Close every open unit and judge every slow shape and traced loop (shutdown, end of a CI run, tests)."""
        for conn_id in list(self.units.connections):
            for unit in self.units.close(conn_id):
                self._close(unit)
        self._traced(0.0, final=True)
        self._judge_other_tenant()
        if self._slow_shapes and "slow_query" not in self.config.disabled:
            self._judge_slow(0.0, final=True)

    def _traced(self, now: float, final: bool = False, closed: int | None = None) -> None:
        """Loops judged across units: those traced to a parent result, and fan-outs (``closed``: only the
        loops that ran all on that connection, which ended)."""
        occurrences = [occ for groups in self.tracer.due(now, final, closed)
                       for occ in traced_loops(groups, self.config)]
        if closed is None:
            occurrences += [occ for burst in self.bursts.due(now, final) for occ in fan_out(burst, self.config)]
        if any(d.__name__ == "n_plus_one" for d in self._unit_detectors):
            for occ in occurrences:
                self._record(occ)

    def _close(self, unit: Unit) -> None:
        if self._other_tenant and unit.kind != TRANSACTION:
            self._judge_other_tenant(unit.conn_id, unit.seq)
        if unit.kind == TRANSACTION:
            if "long_transaction" not in self.config.disabled:
                for occ in long_transaction(unit, self.config):
                    if unit.reported is None or SEVERITIES.index(occ.severity) > SEVERITIES.index(unit.reported):
                        self._record(occ)  # (not already raised while the transaction was open)
            return
        schema = self.schema_for(unit.statements[0].event.database) if unit.statements else _NO_SCHEMA
        for detect in self._unit_detectors:
            for occ in detect(unit, self.config, schema):
                self._record(occ)

    def _record(self, occ: Occurrence) -> None:
        c = self.config
        if occ.confidence < c.min_confidence or occ.kind in c.silenced_kinds or occ.fingerprint in c.silenced_fingerprints:
            return
        if occ.kind in c.disabled:
            return
        finding, escalated = self.findings.add(occ)
        if escalated:
            for listener in self.listeners:
                listener(finding)


def _copied(copy: Callable[[], list], tries: int = 100) -> list:
    """``copy()`` of a table the analysis thread changes, from another thread: a copy that ran into a
    change (RuntimeError: changed size during iteration) is made again. Nothing is locked, so the
    analysis thread pays nothing per statement; the copies are C loops the GIL rarely interrupts."""
    for _ in range(tries - 1):
        try:
            return copy()
        except RuntimeError:
            continue
    return copy()


def _column_entities(schema: Schema, sources: tuple, width: int) -> tuple:
    """Per result column, the table whose rows its values name (ANY when the catalog cannot place it,
    None when it names none: a title, a count)."""
    out = []
    for i in range(width):
        if i >= len(sources):
            out.append(ANY)  # (an event from a client the tracker could not describe)
        elif not sources[i][0]:
            out.append(None)  # computed (a count, an expression): no row's key
        else:
            place = schema.source(*sources[i])
            table = schema.get(place[0]) if place is not None else None
            out.append(schema.names(table, place[1]) if table is not None else ANY)
    return tuple(out)


@dataclass(slots=True)
class _ShapeTenancy:
    """What the tenant check needs of a shape, worked out once per catalog snapshot."""

    tenant_table: bool  # it names a table with a tenant column
    tenant_places: tuple  # (kind, number) of the values it pins or writes a tenant column to
    pin_entities: tuple  # (kind, number, the table it names) of each WHERE value that names rows
    # (kind, number, the table it names or None) of the values that could be a loop's key: what an INSERT
    # writes, else what the WHERE pins, tenant columns left out; None for a shape that was not parsed
    key_places: tuple | None

    @classmethod
    def of(cls, fp: Fingerprint, schema: Schema, tenant: tuple[str, ...]) -> _ShapeTenancy:
        tenant_table = any(schema.get(t) is not None and schema.get(t).tenant_column(tenant) for t in fp.tables)
        places = tuple((kind, n) for _t, column, kind, n in fp.value_pins if column in tenant)
        places += tuple((kind, n) for column, kind, n in fp.insert_values if column in tenant)
        single = fp.tables[0] if len(fp.tables) == 1 else None
        entities = []
        for t, column, kind, n in fp.value_pins:
            table = schema.get(t or single)
            entity = schema.names(table, column) if table is not None else ANY
            if entity is not None:
                entities.append((kind, n, entity))
        if fp.kind == "INSERT" and fp.insert_values:
            into = schema.get(fp.tables[0]) if fp.tables else None
            keys = tuple((kind, n, schema.names(into, column) if into is not None else None)
                         for column, kind, n in fp.insert_values if column not in tenant)
        elif fp.value_pins:
            keys = tuple((kind, n, _named(schema, schema.get(t or single), column))
                         for t, column, kind, n in fp.value_pins if column not in tenant)
        else:
            keys = None if not fp.parsed else ()
        return cls(tenant_table, places, tuple(entities), keys)


def _named(schema: Schema, table: Table | None, column: str) -> str | None:
    named = schema.names(table, column) if table is not None else None
    return None if named == ANY else named


def _skipped(detector: str, disabled: frozenset[str]) -> bool:
    if detector == "n_plus_one":
        return all(f"n_plus_one_{k}" in disabled for k in ("select", "insert", "update", "delete"))
    return detector in disabled
