"""What is kept per shape holds nothing of one execution's values: fingerprints, tags and the constants
the advisor may write into an index (tests/test_canary.py checks every output end to end)."""

from __future__ import annotations

import dataclasses

import pytest

from detectors.advisor import IndexCandidate, _index_columns
from detectors.database.hypo import plannable_text
from detectors.fingerprint import Fingerprinter, sqlcommenter_tags
from detectors.pipeline import CONSTANT_MIN_CALLS, Pipeline
from detectors.sizing import deep_size
from proxy.events import StatementEvent
from proxy.protocol.hashing import ValueHasher


def strings_in(obj) -> str:
    """Every string an object holds, joined (deep_size's walk, reused to reach them)."""
    found: list[str] = []

    def walk(o, seen):
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, str):
            found.append(o)
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(k, seen)
                walk(v, seen)
        elif isinstance(o, (tuple, list, set, frozenset)):
            for v in o:
                walk(v, seen)
        elif dataclasses.is_dataclass(o):
            for f in dataclasses.fields(o):
                walk(getattr(o, f.name), seen)

    walk(obj, set())
    deep_size(obj)  # the same walk the byte budgets use must not fail on it
    return "\n".join(found)


@pytest.mark.parametrize("template", [
    "SELECT * FROM t WHERE a = $1 AND b = '{v}'",
    "SELECT * FROM t WHERE a = $1 AND b = E'{v}\\n'",
    "SELECT * FROM t WHERE a = $1 AND b = $q${v}$q$",
    "SELECT * FROM t WHERE a = $1 AND b = U&'{v}'",
    "SELECT * FROM t WHERE a = $1 AND b = N'{v}'",
    "SELECT * FROM t WHERE a = 7 AND b IN ('{v}', 'other')",
    "UPDATE t SET note = E'{v}' WHERE id = 4",
    "INSERT INTO t (a, b) VALUES (1, $tag${v}$tag$), (2, 'x')",
])
def test_a_shape_holds_no_value_of_the_statement_it_was_parsed_from(template):
    fp = Fingerprinter()
    first = fp(template.format(v="secret-first"))
    second = fp(template.format(v="secret-second"))
    assert first.id == second.id
    kept = strings_in(first) + strings_in(second)
    assert "secret" not in kept, kept


@pytest.mark.parametrize("sql, tags", [
    ("SELECT 1 /*route='%2Fapi%2Fusers',action='list'*/", {"route": "/api/users", "action": "list"}),
    ("SELECT 1 /*action='list'*/;  ", {"action": "list"}),
    # the leak: a '/*' in one literal and a '*/' in a later one
    ("SELECT * FROM t WHERE a = '/*' AND action = 'secret' AND b = '*/'", {}),
    ("SELECT * FROM t WHERE a = '/* route=''x'' */'", {}),
    ("SELECT E'it\\'s /*action=''x''*/'", {}),
    ("SELECT $q$ /*action='inside'*/ $q$", {}),
    ("SELECT $a$ $$ $a$ /*action='after'*/", {"action": "after"}),
    ("SELECT 1 /*action='a'*/ FROM t", {}),  # a comment that does not end the statement
    ("SELECT 1 -- /*action='x'*/", {}),
    ("SELECT 1 /*" + "x" * 5000 + "*/", {}),
])
def test_tags_come_only_from_a_real_trailing_comment(sql, tags):
    assert sqlcommenter_tags(sql) == tags


def test_tags_are_bounded():
    many = ",".join(f"k{i}='v'" for i in range(40))
    long_value = "y" * 1000
    tags = sqlcommenter_tags(f"SELECT 1 /*{many},route='{long_value}'*/")
    assert len(tags) == 16 and "route" not in tags
    assert len(sqlcommenter_tags(f"SELECT 1 /*route='{long_value}'*/")["route"]) == 256


def event(sql: str, params: tuple = ("h1",), t: float = 0.0) -> StatementEvent:
    return StatementEvent(1, "u", "d", "app", "10.0.0.1", sql, "extended", "", len(params), params, (), t, 0.01,
                          "SELECT", 1, 10, None, "I", "I", False)


def _proven(pipeline: Pipeline, sql: str):
    st = next(s for s in pipeline.observed() if s.fp.id == pipeline.fingerprint(sql).id)
    return st, st.proven


def test_a_literal_is_code_only_after_executions_that_bind_their_values_all_carried_it():
    pipeline = Pipeline(hasher=ValueHasher(b"k" * 32))
    code = "SELECT id FROM jobs WHERE team_id = $1 AND status = 'ACTIVE'"
    for i in range(CONSTANT_MIN_CALLS - 1):
        pipeline.process([event(code, (f"h{i}",), i)])
    assert _proven(pipeline, code)[1] == {}
    pipeline.process([event(code, ("h9",), 9)])
    st, proven = _proven(pipeline, code)
    assert list(proven.values()) == ["'ACTIVE'"]
    candidate = IndexCandidate("jobs", ["team_id"], "status = 'ACTIVE'", st, "frequent")
    assert plannable_text(candidate) == "SELECT id FROM jobs WHERE team_id = $1 AND status = 'ACTIVE'"
    cols, predicate = _index_columns(st, "jobs", {"id": "int", "team_id": "int", "status": "text"}, "team_id")
    assert cols == ["team_id"] and predicate == "status = 'ACTIVE'"

    # values that differ, values interpolated by the client, and a tenant id are never code
    varying = "SELECT id FROM jobs WHERE team_id = $1 AND email = '{}'"
    interpolated = "SELECT id FROM jobs WHERE team_id = 5 AND email = 'same@example.com'"
    for i in range(5):
        pipeline.process([event(varying.format(f"user{i}@example.com"), ("h",), 20 + i)])
        pipeline.process([event(interpolated, (), 30 + i)])
    assert _proven(pipeline, varying.format("x"))[1] == {}
    assert _proven(pipeline, interpolated)[1] == {}
    tenant = "SELECT id FROM jobs WHERE status = $1 AND team_id = 42"
    for i in range(5):
        pipeline.process([event(tenant, ("h",), 40 + i)])
    st, proven = _proven(pipeline, tenant)
    assert list(proven.values()) == ["42"]  # the same in every execution, but a tenant id is data:
    cols, predicate = _index_columns(st, "jobs", {"id": "int", "team_id": "int", "status": "text"}, "team_id")
    assert predicate is None and "team_id" in cols
    plain = IndexCandidate("jobs", cols, None, dataclasses.replace(st, proven={}), "frequent")
    assert "42" not in plannable_text(plain)
