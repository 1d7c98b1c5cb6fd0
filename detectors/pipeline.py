"""The detector pipeline: statement events in, findings out. Pure and synchronous: callers pass the time.

The proxy runs it on a worker thread fed from the events queue, so nothing here touches the
forwarding path; tests and the offline benchmark call it directly.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.budget import DEFAULT_ANALYSIS_MEMORY_MB, share
from proxy.events import ConnectionClosed, StatementEvent

from .config import DetectorConfig
from .findings import Finding, FindingStore
from .fingerprint import MAX_HASHED_LITERALS, Fingerprint, Fingerprinter, in_list_literals, sqlcommenter_tags
from .rules import SEVERITIES, STATEMENT_DETECTORS, UNIT_DETECTORS, Occurrence, long_transaction
from .schema import Schema
from .sizing import ENTRY_OVERHEAD, deep_size
from .traffic import TrafficStats, statement_type
from .units import Statement, Unit, UnitTracker

_NO_TAGS: dict[str, str] = {}
# A literal in column = constant is code, not data, once this many executions of its shape all carried
# the same value (status = 'ACTIVE'); only then may the index advisor write it into a partial index.
CONSTANT_MIN_CALLS = 3
MAX_CONSTANT_CHARS = 64
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?")
_VARIED = (None, 0, None)
MAX_UNKNOWN_TABLES = 1000


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

    def snapshot(self) -> ShapeStats:
        """A copy for the advisor, which reads it off the analysis thread: counts and proven constants."""
        proven = {}
        if self.constants:
            for (_t, _c, slot, _q), state in zip(self.fp.constant_slots, self.constants, strict=False):
                if state[2] is not None:
                    proven[slot] = state[2]
        return ShapeStats(self.fp, self.calls, self.total_s, self.max_s, self.rows, deque(), None, proven)


# What a shape's statistics cost beyond its fingerprint (a full deque of recent durations)
SHAPE_STATS_BYTES = deep_size(ShapeStats(None, recent=deque([float(i) for i in range(64)], maxlen=64))) \
    + ENTRY_OVERHEAD
FindingListener = Callable[[Finding], None]


def _literal_sql(value: str, quoted: bool) -> str | None:
    """A proven constant as SQL: a quoted string, or a plain number; anything else is not written."""
    if quoted:
        return "'" + value.replace("'", "''") + "'"
    return value if _NUMBER.fullmatch(value) else None


class Pipeline:
    def __init__(self, config: DetectorConfig | None = None, schema: Schema | None = None,
                 fingerprinter: Fingerprinter | None = None, hasher=None,
                 memory_mb: float = DEFAULT_ANALYSIS_MEMORY_MB):
        self.config = config or DetectorConfig()
        self.schema = schema or Schema()
        self.memory_mb = memory_mb
        self.fingerprint = fingerprinter or Fingerprinter(share(memory_mb, "fingerprint_texts"),
                                                          share(memory_mb, "fingerprint_shapes"),
                                                          self.config.max_parse_chars)
        self.hasher = hasher  # the proxy's ValueHasher: interpolated literals hash like bound parameters
        self.units = UnitTracker(self.config.unit_gap_ms / 1000, self.config.max_unit_statements,
                                 share(memory_mb, "open_units"))
        self.findings = FindingStore(share(memory_mb, "findings"))
        self.listeners: list[FindingListener] = []  # called for new or escalated findings (alerts)
        self.on_error: Callable[[object], None] | None = None
        self.events = 0
        self.errors = 0  # events the detectors failed on (logged by the caller, never fatal)
        self.unknown_tables: set[str] = set()  # tables seen in traffic but not in the schema snapshot
        self._still_missing: set[str] = set()  # named in traffic, absent from the catalog after a refresh
        self.shapes: OrderedDict[str, ShapeStats] = OrderedDict()
        self.shapes_limit = share(memory_mb, "shape_stats")
        self.shapes_used = 0
        self.shapes_evicted = 0
        self.unknown_evicted = 0
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

    def process(self, events: Iterable[StatementEvent | ConnectionClosed]) -> None:
        for ev in events:
            try:
                if isinstance(ev, ConnectionClosed):
                    unit = self.units.close(ev.conn_id)
                    if unit is not None:
                        self._close(unit)
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
        if fp.constant_slots:
            self._track_constants(st, fp, ev)
        self.traffic.observe(ev, fp)
        stmt = Statement(ev, fp, sqlcommenter_tags(ev.sql) if "/*" in ev.sql else _NO_TAGS, ev.param_hashes)
        if self.hasher is not None and fp.is_dml and ("%s" in fp.text or "?" in fp.text):
            self._literal_hashes(stmt)
        schema = self.schema
        if schema.loaded and fp.tables:
            for t in fp.tables:
                if t not in schema.tables and t not in self._still_missing and not _system_table(t):
                    if len(self.unknown_tables) < MAX_UNKNOWN_TABLES and len(t) <= 128:
                        self.unknown_tables.add(t)  # names from traffic: bounded, a refresh empties it
                    else:
                        self.unknown_evicted += 1
        config = self.config
        for detect in self._statement_detectors:
            for occ in detect(stmt, schema, config):
                self._record(occ)
        for unit in self.units.add(stmt):
            self._close(unit)

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
        """table -> (bytes used, bytes allowed, evictions), for /metrics."""
        fp, units, findings = self.fingerprint, self.units, self.findings
        return {
            "fingerprint_texts": (fp.texts_used, fp.texts_limit, fp.texts_evicted),
            "fingerprint_shapes": (fp.shapes_used, fp.shapes_limit, fp.shapes_evicted),
            "shape_stats": (self.shapes_used, self.shapes_limit, self.shapes_evicted),
            "findings": (findings.used, findings.limit, findings.evicted),
            "open_units": (units.used, units.limit, units.evicted),
            "unknown_tables": (sys.getsizeof(self.unknown_tables), MAX_UNKNOWN_TABLES * 200, self.unknown_evicted),
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

    def reset_findings(self) -> None:
        self.findings = FindingStore(self.findings.limit)

    def schema_loaded(self, schema: Schema) -> None:
        """Swap in a fresh catalog snapshot; names it still lacks stop asking for refreshes."""
        asked = self.unknown_tables
        self.unknown_tables = set()
        self._still_missing = {t for t in asked if t not in schema.tables}
        self.schema = schema

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
                stmt.values = stmt.event.param_hashes + tuple(
                    digest(v.encode("utf-8", "surrogatepass")) for v in literals)
            return
        stmt.values = tuple(digest(v.encode("utf-8", "surrogatepass")) for v in literals)
        if stmt.fp.has_in_list:
            stmt.in_list_values = tuple(digest(v.encode("utf-8", "surrogatepass"))
                                        for v in in_list_literals(sql)[:MAX_HASHED_LITERALS])

    def tick(self, now: float) -> None:
        """Close idle units and look at transactions still open (wall-clock ``now``)."""
        for unit in self.units.expire(now):
            self._close(unit)
        if "long_transaction" in self.config.disabled:
            return
        for unit in self.units.open_transactions():
            for occ in long_transaction(unit, self.config, now):
                if unit.reported is None or SEVERITIES.index(occ.severity) > SEVERITIES.index(unit.reported):
                    unit.reported = occ.severity
                    self._record(occ)

    def flush(self) -> None:
        """Close every open unit (shutdown, end of a CI run, tests)."""
        for conn_id in list(self.units.open):
            self._close(self.units.close(conn_id))

    def _close(self, unit: Unit) -> None:
        for detect in self._unit_detectors:
            for occ in detect(unit, self.config):
                if detect is long_transaction and unit.reported is not None and \
                        SEVERITIES.index(occ.severity) <= SEVERITIES.index(unit.reported):
                    continue  # already raised while the transaction was open
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


def _system_table(name: str) -> bool:
    return name.startswith("pg_") or name in ("tables", "columns", "schemata", "routines", "views")


def _skipped(detector: str, disabled: frozenset[str]) -> bool:
    if detector == "n_plus_one":
        return all(f"n_plus_one_{k}" in disabled for k in ("select", "insert", "update", "delete"))
    return detector in disabled
