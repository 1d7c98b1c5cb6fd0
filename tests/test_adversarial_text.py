"""Statement texts built to make a regular expression backtrack: every reader of a client's text takes it
in one pass. Each case took seconds to hours before its fix (quadratic or exponential in the text); the
bound each test waits for is a stall guard far above what a linear read takes, not a measure of speed."""

from __future__ import annotations

import threading

from detectors.fingerprint import Fingerprinter, in_list_param_numbers, literal_values, sqlcommenter_tags
from proxy.protocol.sqlsplit import skip_comments, split_lexed, split_statements
from proxy.protocol.tracker import _verb

STALL_S = 60


def _finishes(work) -> bool:
    done = []
    worker = threading.Thread(target=lambda: (work(), done.append(True)), daemon=True)
    worker.start()
    worker.join(STALL_S)
    return bool(done)


def test_a_run_of_digits_before_a_letter():
    """The number token gave a run back one digit at a time looking for a word boundary (seven seconds
    for 20,000 digits, hours for the megabyte one statement may be)."""
    run = "1" * 1_000_000
    texts = [f"SELECT {run}a", f"SELECT .{run}a", f"SELECT 1.{run}a", f"SELECT 1e{run}a", f"SELECT 'x', {run}a"]

    def read():
        fingerprinter = Fingerprinter()
        for text in texts:
            fingerprinter(text)
            literal_values(text)
            sqlcommenter_tags(text + "/* */")

    assert _finishes(read)


def test_a_run_of_comments_before_what_is_not_a_statement():
    """Whether a piece of a Query is only comments, and the verb of a failed statement after comments,
    were lazy-comment regexes in a repeated group: every pairing of the comments' ends was tried, a
    second for 24 comments and doubling with each two more (on every simple Query of the session)."""
    comments = "/**/" * 200_000

    def read():
        assert split_statements(comments + "1; SELECT 2") == [comments + "1", "SELECT 2"]
        assert _verb(comments + "1") == "OTHER" and _verb(comments[:1988] + "select 1") == "SELECT"
        assert skip_comments("/*" * 200_000 + "*/" * 200_000 + "x") == 800_000
        assert skip_comments("/*" * 200_000) == -1

    assert _finishes(read)


def test_comments_are_skipped_as_postgresql_nests_them():
    assert split_statements("/* /* x */ */ ; SELECT 1") == ["SELECT 1"]
    assert split_lexed("-- only a comment\n; /* and /* nested */ one */;SELECT 2") == ["SELECT 2"]
    assert split_statements("/* never closed ; SELECT 1") == ["/* never closed ; SELECT 1"]
    assert _verb("/* /* n */ */ select 1") == "SELECT" and _verb("  -- c\n  UPDATE t SET a = 1") == "UPDATE"
    assert _verb("/* unterminated select") == "OTHER" and _verb("") == "OTHER"
    assert skip_comments("/*/ */x") == 6  # "/*/": the second "/" does not close what the first opened


def test_an_in_list_of_parameters_that_never_closes():
    """The $n of IN lists: with a lazy cast type and optional commas, an unclosed list of spaced items was
    split every way there is (two seconds for 24 items, four times more for each two further)."""
    texts = ["SELECT 1 FROM t WHERE id in (" + " $1" * 50_000 + " x",
             "SELECT 1 FROM t WHERE id IN (" + "$1::int , " * 50_000 + "x"]
    assert _finishes(lambda: [in_list_param_numbers(t) for t in texts])
    assert in_list_param_numbers("WHERE a IN ($1, $2::int, $3 :: character varying , $4::text[]) AND b in ($5)") \
        == [1, 2, 3, 4, 5]
    assert in_list_param_numbers("WHERE a IN ($1\n,$2)") == [1, 2]


def test_the_batch_suggestion_for_a_long_qualified_name():
    """An N+1's suggestion rewrote ``name = %s``, starting a search again at every word boundary inside a
    long name (eight seconds for a 40,000-character one, from a client's text through its fingerprint)."""
    from detectors.fingerprint import Fingerprint
    from detectors.rules import _suggest_select_batch

    long_name = '"' + "a." * 100_000 + 'a"'
    assert _finishes(lambda: _suggest_select_batch(Fingerprint(id="x", text=f"SELECT {long_name} = %s", kind="SELECT")))
    quoted = _suggest_select_batch(Fingerprint(id="x", text='SELECT "C"."id" FROM "c" "C" WHERE "C"."id" = %s',
                                               kind="SELECT"))
    assert 'WHERE "C"."id" = ANY($1)' in quoted  # the whole quoted name, opening quote included
