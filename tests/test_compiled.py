"""The compiled hot path and its pure-Python source are one implementation: for the same client and
server bytes, cut anywhere and with shipments dropped, both produce the same statement events (field
by field), the same failures, the same capture bytes, and so the same findings.

Both run in this process: the ``proxy.COMPILED`` modules are imported a second time from their .py
source (``proxy.SourceFirst(pure=True)``), each set with its own module objects, so the pure set's
functions call the pure set and the compiled set's the compiled set. Where the extensions are not
built (no compiler) both sets are pure Python and the comparison is trivially true: the test says so
by the implementation it reports, and the suite's other tests run whatever is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy
from detectors.config import DetectorConfig
from proxy.events import StatementEvent

KEY = b"e" * 32


def _load(pure: bool) -> dict:
    """The COMPILED modules, freshly imported as extensions (where built) or from source."""
    saved = {name: sys.modules.pop(name) for name in proxy.COMPILED if name in sys.modules}
    finder = proxy.SourceFirst(pure=pure)
    sys.meta_path.insert(0, finder)
    try:
        return {name.rpartition(".")[2]: importlib.import_module(name) for name in proxy.COMPILED}
    finally:
        sys.meta_path.remove(finder)
        for name in proxy.COMPILED:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


PURE = _load(pure=True)
BUILT = _load(pure=False)


def test_both_sets_are_what_they_claim():
    assert all(m.__file__.endswith(".py") for m in PURE.values())
    built = ["compiled" if m.__file__.endswith(".so") else "source" for m in BUILT.values()]
    if proxy.implementation() == "compiled":
        assert set(built) == {"compiled"}, built
    # (else: no extension here, the comparison below is pure against pure)


# ------------------------------------------------------------------ streams: statements and nonsense

def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


SQL = st.sampled_from([
    "SELECT id, name FROM contacts WHERE team_id = $1 AND id = $2",
    "INSERT INTO activities (team_id, contact_id, action) VALUES ($1, $2, $3) RETURNING id",
    "UPDATE leads SET status = $1 WHERE id = $2",
    "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s1", "ROLLBACK TO SAVEPOINT s1",
    "SELECT 1; SELECT 2", "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
    "DELETE FROM messages WHERE id = ANY($1)", "SELECT * FROM users WHERE email = 'a@b.c'",
])
VALUES = st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=4)
ROWS = st.lists(st.lists(st.one_of(st.none(), st.binary(max_size=10)), min_size=1, max_size=3), max_size=4)


def _row_description(n: int) -> bytes:
    fields = b"".join(_cstr(f"c{i}") + struct.pack("!ihihih", 16384, i + 1, 25, -1, -1, 0) for i in range(n))
    return _msg(b"T", struct.pack("!h", n) + fields)


def _data_row(row) -> bytes:
    cells = b"".join(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in row)
    return _msg(b"D", struct.pack("!h", len(row)) + cells)


def _results(rows, tag: str, tx: bytes) -> bytes:
    width = len(rows[0]) if rows else 1
    body = _row_description(width) + b"".join(_data_row(r[:width] + [None] * (width - len(r))) for r in rows)
    return body + _msg(b"C", _cstr(tag)) + _msg(b"Z", tx)


@st.composite
def exchanges(draw):
    """(client bytes, server bytes) of one request the way drivers and PostgreSQL send them."""
    sql = draw(SQL)
    rows = draw(ROWS)
    tx = draw(st.sampled_from([b"I", b"T", b"E"]))
    tag = draw(st.sampled_from(["SELECT 3", "INSERT 0 1", "UPDATE 2", "BEGIN", "COMMIT", "DELETE 1"]))
    kind = draw(st.sampled_from(["simple", "extended", "prepared", "error", "nonsense"]))
    if kind == "simple":
        return _msg(b"Q", _cstr(sql)), _results(rows, tag, tx)
    if kind == "error":
        error = _msg(b"E", b"SERROR\0C" + draw(st.sampled_from([b"42P01", b"23505", b"40001"])) + b"\0Mboom\0\0")
        return _msg(b"Q", _cstr(sql)), error + _msg(b"Z", tx)
    if kind == "nonsense":
        client = b"".join(_msg(bytes([t]), b) for t, b in draw(st.lists(
            st.tuples(st.sampled_from(list(b"QPBEDCSHFXd")), st.binary(max_size=16)), max_size=4)))
        server = b"".join(_msg(bytes([t]), b) for t, b in draw(st.lists(
            st.tuples(st.sampled_from(list(b"TDCZEIsn123dt")), st.binary(max_size=16)), max_size=4)))
        return client, server
    values = draw(VALUES)
    name = "s1" if kind == "prepared" else ""
    params = struct.pack("!h", 0) + struct.pack("!h", len(values)) + b"".join(
        struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in values) + struct.pack("!h", 0)
    client = (_msg(b"P", _cstr(name) + _cstr(sql) + struct.pack("!h", 0))
              + _msg(b"B", _cstr("") + _cstr(name) + params)
              + _msg(b"D", b"P\0") + _msg(b"E", b"\0" + struct.pack("!i", 0)) + _msg(b"S", b""))
    server = _msg(b"1", b"") + _msg(b"2", b"") + _results(rows, tag, tx)[:-6] + _msg(b"Z", tx)
    return client, server


SCRIPTS = st.lists(st.tuples(exchanges(), st.integers(1, 64), st.booleans()), min_size=1, max_size=10)


# ------------------------------------------------------------------ the two paths, run with one set

def _fields(ev) -> tuple:
    if type(ev).__name__ == "ConnectionClosed":
        return ("closed", ev.conn_id, ev.at)
    return tuple((f.name, getattr(ev, f.name)) for f in dataclasses.fields(StatementEvent))


def _exchange(state, client: bytes, server: bytes, cut: int, now: float) -> tuple[list, float]:
    """One request and its answer into a tracker or gauge, each side cut every ``cut`` bytes."""
    events: list = []
    for i in range(0, len(client), cut):
        now += 0.001
        state.client_data(client[i:i + cut], now)
    for i in range(0, len(server), cut):
        now += 0.001
        events += state.server_data(server[i:i + cut], now)
    return events, now


def _in_process(mods: dict, script, rows: int) -> tuple[list, list]:
    """A SessionTracker fed as the relay feeds it in one process."""
    info = mods["events"].ConnectionInfo(3, "10.0.0.3", "ann", "crm", "web")
    errors: list = []
    tracker = mods["tracker"].SessionTracker(info, mods["hashing"].ValueHasher(KEY), rows, max_analysed=4096,
                                             on_error=lambda t, exc: errors.append(type(exc).__name__))
    events, now = [], 1.0
    for (client, server), cut, _drop in script:
        try:
            produced, now = _exchange(tracker, client, server, cut, now)
            events += produced
        except mods["wire"].InvalidLength:
            errors.append("InvalidLength")
            break
    return [_fields(e) for e in events], errors


def _through_workers(mods: dict, script, rows: int) -> tuple[list, list, list]:
    """A worker's SessionGauge and CaptureBuffer, shipments dropped where the script says, then the
    Replayer's trackers: events, failures and the shipped bytes."""
    info = mods["events"].ConnectionInfo(9, "10.0.0.9", "eve", "crm", "web")
    capture = mods["capture"].CaptureBuffer(1 << 20)
    gauge = mods["capture"].SessionGauge(info, capture, rows, "I", max_analysed=4096)
    errors: list = []
    hasher = mods["hashing"].ValueHasher(KEY)
    replayer = mods["replay"].Replayer(
        lambda i, tx: mods["tracker"].SessionTracker(i, hasher, rows, markers=True, tx=tx, max_analysed=4096),
        0.0, on_error=lambda conn, exc: errors.append(type(exc).__name__), on_lost=lambda: errors.append("lost"))
    Captured, replay = mods["replay"].Captured, mods["replay"].replay
    events, shipped, now = [], [], 1.0
    for (client, server), cut, drop in script:
        try:
            _, now = _exchange(gauge, client, server, cut, now)
        except mods["wire"].InvalidLength:
            gauge.closed(now)
            events += replay([Captured(replayer, capture.take(), [])], errors.append)
            break
        shipment = capture.take()
        shipped.append(bytes(shipment))
        if drop:
            events += replay([Captured(replayer, b"", [], "desync")], errors.append)
            gauge.gap = True
        else:
            events += replay([Captured(replayer, shipment, [])], errors.append)
    return [_fields(e) for e in events], errors, shipped


@settings(max_examples=250, deadline=None)
@given(SCRIPTS, st.integers(0, 3))
def test_compiled_and_pure_python_produce_the_same_events(script, rows):
    assert _in_process(BUILT, script, rows) == _in_process(PURE, script, rows)
    assert _through_workers(BUILT, script, rows) == _through_workers(PURE, script, rows)


def _canonical(fields: list, mods: dict) -> list:
    """The events as the classes of one set (its detectors test them by type)."""
    events = mods["events"]
    out = []
    for f in fields:
        if f[0] == "closed":
            out.append(events.ConnectionClosed(f[1], f[2]))
        else:
            out.append(events.StatementEvent(**dict(f)))
    return out


def _findings(pipeline) -> list:
    return sorted((f["kind"], f["severity"], f["fingerprint"], f["count"], f["statements"], f["confidence"],
                   f["message"]) for f in pipeline.findings.snapshot())


@settings(max_examples=60, deadline=None)
@given(st.lists(SCRIPTS, min_size=1, max_size=4))
def test_compiled_and_pure_python_lead_to_the_same_findings(scripts):
    """Several sessions' events through each set's own pipeline: the findings are the same."""
    findings = []
    for mods in (BUILT, PURE):
        pipeline = mods["pipeline"].Pipeline(DetectorConfig(n_plus_one_min=2), hasher=mods["hashing"].ValueHasher(KEY))
        for script in scripts:
            pipeline.process(_canonical(_in_process(mods, script, 2)[0], mods))
        pipeline.flush()
        findings.append(_findings(pipeline))
    assert findings[0] == findings[1]


# ------------------------------------------------------------------ the detectors, on work with loops in it

STEPS = [
    ("SELECT id, owner_id FROM contacts WHERE team_id = $1 ORDER BY id LIMIT 50", 1, 2),  # a page: the parent
    ("SELECT email FROM contacts WHERE id = $1 AND team_id = $2", 2, 1),  # a lookup per row
    ("SELECT email FROM contacts WHERE id = $1", 1, 1),  # ... with no tenant filter
    ("INSERT INTO activities (team_id, contact_id, action) VALUES ($1, $2, $3) RETURNING id", 3, 1),
    ("UPDATE contacts SET status = $1 WHERE id = $2 AND team_id = $3", 3, 0),
    ("DELETE FROM activities WHERE contact_id = $1", 1, 0),
    ("SELECT * FROM notes WHERE team_id = 7", 0, 3),
    ("SELECT id FROM contacts WHERE team_id = 1 ORDER BY id OFFSET 20000", 0, 2),
    ("BEGIN", 0, 0), ("COMMIT", 0, 0), ("ROLLBACK", 0, 0), ("SAVEPOINT s1", 0, 0),
    ("ROLLBACK TO SAVEPOINT s1", 0, 0), ("DISCARD ALL", 0, 0), ("TRUNCATE activities", 0, 0),
]
STEP = st.tuples(st.integers(0, len(STEPS) - 1), st.integers(1, 3), st.sampled_from([0.0002, 0.002, 0.06, 3.0]),
                 st.sampled_from([0.0004, 0.003, 0.2, 1.5]), st.lists(st.integers(1, 6), min_size=3, max_size=3),
                 st.lists(st.integers(1, 12), min_size=0, max_size=4))


def _events(mods: dict, steps) -> list:
    """Statement events of a few connections of one application: pages, loops over their rows (keys from
    a small range, so that loops tie to parents by chance as in real data), transactions and resets."""
    StatementEvent = mods["events"].StatementEvent
    hasher = mods["hashing"].ValueHasher(KEY)
    at, tx, out = 1000.0, {}, []
    for index, conn, gap, duration, params, rows in steps:
        sql, nparams, width = STEPS[index]
        at += gap
        before = tx.get(conn, "I")
        verb = sql.split()[0].upper()
        after = "T" if verb in ("BEGIN", "SAVEPOINT") or (before == "T" and verb not in ("COMMIT", "ROLLBACK")) \
            else "I" if verb in ("COMMIT", "ROLLBACK") and "TO" not in sql else before
        tx[conn] = after
        result = tuple(tuple(hasher.text(str(r + c).encode()) for c in range(width)) for r in rows) if width else ()
        out.append(StatementEvent(
            conn, "app", "crm", "web", "10.0.0.1", sql, "extended", "", nparams,
            tuple(hasher.text(str(v).encode()) for v in params[:nparams]), result, at, duration, verb,
            len(result), 120 * len(result) + 40, None, before, after, before != "I" or after != "I",
            result_sources=tuple((16400, c + 1) for c in range(width)) if result else ()))
    return out


SCHEMA_TABLES = {
    "contacts": ({"id": "integer", "team_id": "integer", "owner_id": "integer", "email": "text", "status": "text"}, 16400),
    "activities": ({"id": "integer", "team_id": "integer", "contact_id": "integer", "action": "text"}, 16401),
    "notes": ({"id": "integer", "team_id": "integer", "body": "text"}, 16402),
}


def _schema(mods: dict):
    schema = mods["schema"]
    return schema.Schema({name: schema.Table(name, columns=columns, oid=oid, numbers=tuple(range(1, len(columns) + 1)),
                                             unique_keys=(("id",),), primary_key=("id",), row_estimate=50_000,
                                             analysed=True)
                          for name, (columns, oid) in SCHEMA_TABLES.items()}, loaded=True)


@settings(max_examples=120, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=80))
def test_compiled_and_pure_detectors_judge_the_same_work_alike(steps):
    """The detectors compiled and from source, over the same pieces of work (each set its own pipeline,
    schema and events): the same findings, with the same counts, confidence and message."""
    findings = []
    for mods in (BUILT, PURE):
        pipeline = mods["pipeline"].Pipeline(DetectorConfig(n_plus_one_min=3), _schema(mods),
                                             hasher=mods["hashing"].ValueHasher(KEY))
        events = _events(mods, steps)
        for i in range(0, len(events), 7):
            pipeline.process(events[i:i + 7])
            pipeline.tick(events[min(i + 6, len(events) - 1)].started_at)
        pipeline.flush()
        assert pipeline.errors == 0
        findings.append(_findings(pipeline))
    assert findings[0] == findings[1]


@pytest.mark.parametrize("name", proxy.COMPILED)
def test_every_compiled_module_has_its_source(name):
    """The fallback exists for each: a machine without a compiler runs the same code."""
    assert PURE[name.rpartition(".")[2]].__file__.endswith(".py")


def test_version_and_healthz_say_which_implementation_runs(start_proxy):
    import json
    import subprocess
    import urllib.request

    out = subprocess.run([sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"({proxy.implementation()}," in out.stdout, out.stdout + out.stderr
    pure = subprocess.run([sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGLOUPE_PURE_PYTHON": "1"})
    assert "(pure Python," in pure.stdout, pure.stdout + pure.stderr
    running = start_proxy()
    with urllib.request.urlopen(f"http://127.0.0.1:{running.http_port}/healthz", timeout=10) as resp:
        assert json.load(resp)["implementation"] == proxy.implementation()


# ------------------------------------------------------------------ decoders on any bytes

def _decoded(mods: dict, body: bytes) -> tuple:
    try:
        bind = mods["wire"].decode_bind(body)
    except Exception as exc:
        return ("failed", type(exc).__name__, str(exc))
    return (bind.portal, bind.statement, bind.param_formats, bind.params, bind.result_formats)


BIND_BODIES = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda formats, params, results, cut: (
            b"p\0s\0" + struct.pack("!H", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
            + struct.pack("!H", len(params))
            + b"".join(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in params)
            + struct.pack("!H", len(results)) + b"".join(struct.pack("!h", f) for f in results))[:cut],
        st.lists(st.integers(-32768, 32767), max_size=3), st.lists(st.one_of(st.none(), st.binary(max_size=6)), max_size=3),
        st.lists(st.integers(-32768, 32767), max_size=3), st.integers(0, 80)),
    st.builds(lambda n, tail: b"\0\0\0\0\0\1" + struct.pack("!I", n) + tail,  # lengths with any high byte
              st.integers(0, 0xFFFFFFFF), st.binary(max_size=8)),
)


@settings(max_examples=400, deadline=None)
@given(BIND_BODIES)
def test_compiled_and_pure_python_decode_any_bind_alike(body):
    """Counts and lengths are read by hand, as C integers once compiled: a byte of 0x80 or more in the
    top of a length must read the same (a length of -1 is a NULL, any other negative one an error)."""
    assert _decoded(BUILT, body) == _decoded(PURE, body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 64))
def test_compiled_and_pure_python_frame_any_bytes_alike(stream, cut):
    def frames(mods):
        framer = mods["framing"].Framer(mods["framing"].message_types(b"QPBDECSTZ"), 1 << 20)
        out = []
        try:
            for i in range(0, len(stream), cut):
                out += list(framer.feed(stream[i:i + cut]))
        except Exception as exc:
            out.append(("failed", type(exc).__name__))
        return out, framer.at_boundary

    assert frames(BUILT) == frames(PURE)
