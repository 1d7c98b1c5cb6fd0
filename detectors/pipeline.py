"""The detector pipeline: statement events in, findings out. Pure and synchronous: callers pass the time.

The proxy runs it on a worker thread fed from the events queue, so nothing here touches the
forwarding path; tests and the offline benchmark call it directly.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.events import ConnectionClosed, StatementEvent

from .config import DetectorConfig
from .findings import Finding, FindingStore
from .fingerprint import Fingerprint, Fingerprinter, in_list_literals, sqlcommenter_tags
from .rules import SEVERITIES, STATEMENT_DETECTORS, UNIT_DETECTORS, Occurrence, long_transaction
from .schema import Schema
from .traffic import TrafficStats, statement_type
from .units import Statement, Unit, UnitTracker

_NO_TAGS: dict[str, str] = {}
MAX_SHAPES = 5000


@dataclass(slots=True)
class ShapeStats:
    """Per fingerprint, like pg_stat_statements: what the index advisor ranks statements by."""

    fp: Fingerprint
    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    rows: int = 0
    parameterized: bool = False  # sent with bound parameters: its literals are code, not data
    recent: deque = field(default_factory=lambda: deque(maxlen=128))  # recent durations, for p95
FindingListener = Callable[[Finding], None]


class Pipeline:
    def __init__(self, config: DetectorConfig | None = None, schema: Schema | None = None,
                 fingerprinter: Fingerprinter | None = None, hasher=None):
        self.config = config or DetectorConfig()
        self.schema = schema or Schema()
        self.fingerprint = fingerprinter or Fingerprinter()
        self.hasher = hasher  # the proxy's ValueHasher: interpolated literals hash like bound parameters
        self.units = UnitTracker(self.config.unit_gap_ms / 1000, self.config.max_unit_statements)
        self.findings = FindingStore()
        self.listeners: list[FindingListener] = []  # called for new or escalated findings (alerts)
        self.on_error: Callable[[object], None] | None = None
        self.events = 0
        self.errors = 0  # events the detectors failed on (logged by the caller, never fatal)
        self.unknown_tables: set[str] = set()  # tables seen in traffic but not in the schema snapshot
        self._still_missing: set[str] = set()  # named in traffic, absent from the catalog after a refresh
        self.shapes: OrderedDict[str, ShapeStats] = OrderedDict()
        self.traffic = TrafficStats(self.config.max_fingerprint_labels)
        self.reconfigure(self.config)

    def reconfigure(self, config: DetectorConfig) -> None:
        """New thresholds, silences and disabled detectors from now on (SIGHUP); findings, shapes and
        open units are kept."""
        self.config = config
        self.units.gap = config.unit_gap_ms / 1000
        self.units.max_statements = config.max_unit_statements
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
            st = shapes[fp.id] = ShapeStats(fp, parameterized=bool(ev.param_hashes))
            if len(shapes) > MAX_SHAPES:
                shapes.popitem(last=False)
        elif st.calls & 63 == 0:
            shapes.move_to_end(fp.id)  # keep busy shapes from eviction without paying on every call
        st.calls += 1
        st.total_s += ev.duration
        if ev.duration > st.max_s:
            st.max_s = ev.duration
        st.rows += ev.rows or 0
        st.recent.append(ev.duration)
        self.traffic.observe(ev, fp)
        stmt = Statement(ev, fp, sqlcommenter_tags(ev.sql) if "/*" in ev.sql else _NO_TAGS, ev.param_hashes)
        if self.hasher is not None and fp.is_dml and ("%s" in fp.text or "?" in fp.text):
            self._literal_hashes(stmt)
        schema = self.schema
        if schema.loaded and fp.tables:
            for t in fp.tables:
                if t not in schema.tables and t not in self._still_missing and not _system_table(t):
                    self.unknown_tables.add(t)
        config = self.config
        for detect in self._statement_detectors:
            for occ in detect(stmt, schema, config):
                self._record(occ)
        for unit in self.units.add(stmt):
            self._close(unit)

    def observed(self) -> list[ShapeStats]:
        return list(self.shapes.values())

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
        self.findings = FindingStore()

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
        if stmt.event.param_hashes:
            if literals:
                stmt.values = stmt.event.param_hashes + tuple(
                    digest(v.encode("utf-8", "surrogatepass")) for v in literals)
            return
        stmt.values = tuple(digest(v.encode("utf-8", "surrogatepass")) for v in literals)
        if stmt.fp.has_in_list:
            stmt.in_list_values = tuple(digest(v.encode("utf-8", "surrogatepass")) for v in in_list_literals(sql))

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
            self._close(self.units.open.pop(conn_id))

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
