"""Fingerprints of statements as drivers and ORMs send them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.fingerprint import Fingerprinter, literal_values, pre_normalize, sqlcommenter_tags


@pytest.mark.parametrize("variants", [
    # node-postgres / Drizzle / asyncpg ($n) against client-side interpolation (psycopg ClientCursor, Django)
    ["SELECT id, name FROM users WHERE id = $1 AND team_id = $2",
     "select id, name from users where id = 5 and team_id = 1",
     "SELECT  id,\n  name FROM users WHERE id = 77 AND team_id = 'x' -- trailing comment",
     "SELECT id, name FROM users WHERE id = $1 AND team_id = $2 /*traceparent='00-a-b-01',route='%2Fusers'*/"],
    # IN lists of any length, as Drizzle's inArray and TypeORM's In() produce
    ["SELECT id FROM users WHERE id IN ($1, $2, $3)",
     "SELECT id FROM users WHERE id IN ($1)",
     "select id from users where id in (4, 5, 6, 7, 8, 9)"],
    # multi-row VALUES of any length
    ["INSERT INTO activities (organization_id, action) VALUES ($1, $2)",
     "INSERT INTO activities (organization_id, action) VALUES ($1, $2), ($3, $4), ($5, $6)",
     "insert into activities (organization_id, action) values (1, 'a'), (1, 'b')"],
    # TypeORM quotes identifiers; case of keywords does not matter
    ['SELECT "Contact"."id" FROM "contacts" "Contact" WHERE "Contact"."tenantId" = $1',
     'select "Contact"."id" from "contacts" "Contact" where "Contact"."tenantId" = $1'],
])
def test_same_shape_same_fingerprint(variants):
    fp = Fingerprinter()
    ids = {fp(v).id for v in variants}
    assert len(ids) == 1, [fp(v).text for v in variants]
    assert all(fp(v).parsed for v in variants)
    assert all(len(fp(v).id) == 16 and int(fp(v).id, 16) >= 0 for v in variants)


def test_different_shapes_differ():
    fp = Fingerprinter()
    assert fp("SELECT id FROM users WHERE id = $1").id != fp("SELECT id FROM users WHERE team_id = $1").id
    assert fp("SELECT id FROM users").id != fp("SELECT id FROM contacts").id
    assert fp("DELETE FROM users WHERE id = $1").id != fp("SELECT id FROM users WHERE id = $1").id


def test_facts_for_detectors_and_the_index_advisor():
    fp = Fingerprinter()
    f = fp('SELECT a.*, u.name FROM activities a JOIN users u ON u.id = a.user_id AND u.team_id = a.organization_id '
           'WHERE a.organization_id = $1 AND a.id IN ($2, $3) ORDER BY a.created_at DESC, a.id DESC LIMIT 20 OFFSET 40')
    assert f.kind == "SELECT" and f.tables == ("activities", "users")
    assert ("activities", "organization_id") in f.constrained and ("activities", "id") in f.constrained
    assert (("users", "team_id"), ("activities", "organization_id")) in f.join_equalities
    assert f.order_by == (("activities", "created_at"), ("activities", "id"))
    assert f.has_limit and f.offset_literal and f.select_star == ("activities",) and f.in_list_params == (2, 3)
    ins = fp("INSERT INTO contacts (team_id, email) VALUES ($1, $2) RETURNING id")
    assert ins.kind == "INSERT" and ins.insert_columns == ("team_id", "email")
    assert fp("SELECT id FROM c WHERE id NOT IN (SELECT contact_id FROM j)").not_in_subquery
    assert not fp("SELECT id FROM c WHERE NOT EXISTS (SELECT 1 FROM j WHERE j.c = c.id)").not_in_subquery
    assert fp("SELECT count(*) FROM c WHERE team_id = $1").aggregate
    assert fp("SELECT id FROM c WHERE team_id = $1 OR public").constrained == frozenset()
    assert fp("BEGIN").kind == "TRANSACTION" and fp("COMMIT").kind == "COMMIT"


def test_cache_levels_and_fallback_are_counted():
    fp = Fingerprinter()
    fp("SELECT id FROM users WHERE id = 1")
    fp("SELECT id FROM users WHERE id = 1")  # same text: raw cache
    fp("SELECT id FROM users WHERE id = 2")  # same shape, other literal: pre-normalized cache
    assert (fp.parses, fp.hits, fp.shape_hits) == (1, 1, 1)
    weird = fp("VACUUM (VERBOSE, ANALYZE) contacts; garbage ((( 'x'")
    assert not weird.parsed and fp.fallbacks == 1 and weird.id
    assert fp("this is not SQL 42").text == "this is not sql ?"


def test_pre_normalize_and_tags():
    assert pre_normalize("SELECT * FROM t WHERE a = 'x''y' AND b IN (1,2, 3) /* c */") == \
        "select * from t where a = ? and b in (?)"
    assert pre_normalize("select $$a;b$$, E'\\n', 1.5e3, -2") == "select ?, ?, ?, ?"
    assert sqlcommenter_tags("SELECT 1 /*controller='leads',route='%2Fapi%2Fleads%2F%3Aid'*/") == \
        {"controller": "leads", "route": "/api/leads/:id"}
    assert literal_values("SELECT 1 FROM t WHERE a = 'b' /* 'not' */") == ["1", "b"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gets_a_fingerprint_and_never_raises(sql):
    f = Fingerprinter()(sql)
    assert isinstance(f.id, str) and len(f.id) == 16


def test_huge_statements_never_reach_the_parser_but_keep_their_shape(monkeypatch):
    import sqlglot

    from detectors import fingerprint

    parsed_texts = []
    real_parse = sqlglot.parse
    monkeypatch.setattr(fingerprint.sqlglot, "parse", lambda sql, **kw: parsed_texts.append(sql) or real_parse(sql, **kw))
    fp = Fingerprinter()
    small = "INSERT INTO t (a, b) VALUES " + ", ".join(f"({i}, 'v{i}')" for i in range(3))
    huge = "INSERT INTO t (a, b) VALUES " + ", ".join(f"({i}, 'v{i}')" for i in range(60000))  # ~1 MB
    assert len(huge) > 1_000_000
    f = fp(huge)  # its shape (one row of placeholders) is parsed instead
    assert f.kind == "INSERT" and f.tables == ("t",) and f.insert_columns == ("a", "b") and f.parsed
    assert f.id == fp(small).id and f.constant_slots == () and fp.fallbacks == 0
    assert max(map(len, parsed_texts)) <= fingerprint.DEFAULT_MAX_PARSE_CHARS
    # a shape too long to parse itself (thousands of distinct columns): the token normalizer only
    wide = "SELECT " + ", ".join(f"column_{i}" for i in range(3000)) + " FROM t WHERE id = 1"
    w = fp(wide)
    assert not w.parsed and w.tables == ("t",) and fp.fallbacks == 1
    assert max(map(len, parsed_texts)) <= fingerprint.DEFAULT_MAX_PARSE_CHARS


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet="aeE1 .+-$:?%()/*'\"\\\n_sx0\u0663", max_size=30))
def test_token_scanner_lookahead_changes_no_match(text):
    # _TOKENS starts with a lookahead listing the characters a token can begin with, only to skip
    # the rest fast; the same pattern without it must find exactly the same tokens
    import re

    from detectors import fingerprint

    pattern = fingerprint._TOKENS.pattern
    lookahead = "(?=[-+/'\"$?%:eE.\\d])"
    assert lookahead in pattern
    plain = re.compile(pattern.replace(lookahead, "", 1), re.S | re.X)
    assert ([(m.lastgroup, m.span()) for m in fingerprint._TOKENS.finditer(text)]
            == [(m.lastgroup, m.span()) for m in plain.finditer(text)])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab1 .-$:?'\"\\Ee=,()", max_size=30))
def test_literals_from_the_fingerprinting_pass_match_literal_values(text):
    fingerprinter = Fingerprinter()
    fingerprinter(text)
    assert fingerprinter.literal_values(text) == literal_values(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="SELECTabe xyz_.+019eE()=,\n\t;*<>" + "\u00e9", max_size=60))
def test_numbers_only_texts_take_the_short_way_to_the_same_result(sql):
    from detectors.fingerprint import _NOT_NUMBERS_ONLY, _strip_numbers, _strip_tokens

    assert _NOT_NUMBERS_ONLY.search(sql) is None
    fast: list[str] = []
    slow: list[str] = []
    assert _strip_numbers(sql, fast) == _strip_tokens(sql, slow)
    assert fast == slow


def test_every_kind_of_whitespace_folds_to_one_space():
    assert pre_normalize("SELECT\u00a0 a,\x1cb\u2028FROM\tt\r\n WHERE id = 7 ;\u3000") == "select a, b from t where id = ?"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0123456789+.eE aXz_(),=<>*;\n\tSELECTé", max_size=40))
def test_the_numbers_only_scan_reads_a_text_as_the_full_tokenizer_does(sql):
    """The fast path for texts whose only literals are numbers (``WHERE id = 42``) finds the same numbers
    and leaves the same text as the tokenizer every other text goes through."""
    from detectors.fingerprint import _NOT_NUMBERS_ONLY, _strip_numbers, _strip_tokens

    assert _NOT_NUMBERS_ONLY.search(sql) is None
    fast, full = [], []
    assert _strip_numbers(sql, fast) == _strip_tokens(sql, full)
    assert fast == full



@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789+.eE aXz_(),=<>*;\n\t$é٣-") + ["1.5", "+.", "e+", "SELECT "]),
                max_size=30).map("".join))
def test_the_compiled_number_scan_reads_a_text_as_the_number_regex_does(sql):
    """Where the module is compiled, numbers-only texts are scanned by hand (scan_numbers) instead of split
    by _NUMBER: the same text left and the same numbers taken, Unicode digits and names included."""
    from detectors.fingerprint import _NUMBER, scan_numbers

    parts = _NUMBER.split(sql)
    taken: list[str] = []
    assert scan_numbers(sql, taken) == "?".join(parts[0::2])
    assert taken == [v.lstrip("+") for v in parts[1::2]]
