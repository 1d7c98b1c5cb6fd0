"""Split a simple-protocol Query string into its statements, as the server will run them.

Several statements in one Query message get one CommandComplete each; pgloupe needs the text of
each to attribute timings and rows. A lexer aware of quotes, E'' escapes, dollar quoting, quoted
identifiers and (nested) comments finds the semicolons that end statements.
"""

from __future__ import annotations

import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def skip_comments(sql: str, i: int = 0) -> int:
    """Where the text from ``i`` on starts after spaces and comments (-- to the end of the line, and /* */
    nested as PostgreSQL nests them); -1 inside a /* comment that never ends. One pass: a regex with a lazy
    comment in a repeated group (what this replaced) tried every way of pairing a run of comments' ends,
    exponential in their number when what followed did not match."""
    n = len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            depth = 1
            i += 2
            close = sql.find("*/", i)
            while depth:  # (each find starts where the last stopped: one pass, however deep)
                if close < 0:
                    return -1
                opener = sql.find("/*", i, close + 1)  # (one overlapping the close, "/*/", comes first)
                if opener >= 0:
                    depth += 1
                    i = opener + 2
                    if i > close:
                        close = sql.find("*/", i)
                else:
                    depth -= 1
                    i = close + 2
                    close = sql.find("*/", i)
        else:
            return i
    return n


def split_statements(sql: str) -> list[str]:
    if ";" not in sql:
        return [sql.strip()] if sql.strip() else []
    if "'" not in sql and '"' not in sql and "$" not in sql and "--" not in sql and "/*" not in sql:
        # Nothing can hide a semicolon (the common "SELECT ...;" of psql and pgbench): skip the lexer.
        return [s for part in sql.split(";") if (s := part.strip())]
    return split_lexed(sql)


def split_lexed(sql: str) -> list[str]:
    out: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == "'":
                    if i + 1 < n and sql[i + 1] == "'":
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif c == '"':
            end = sql.find('"', i + 1)
            while end >= 0 and end + 1 < n and sql[end + 1] == '"':
                end = sql.find('"', end + 2)
            i = n if end < 0 else end + 1
        elif (c == "-" and sql.startswith("--", i)) or (c == "/" and sql.startswith("/*", i)):
            i = skip_comments(sql, i)
            if i < 0:  # a comment that never ends: the rest is in it
                i = n
        elif c == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            m = _DOLLAR_TAG.match(sql, i)
            if m:
                end = sql.find(m.group(0), m.end())
                i = n if end < 0 else end + len(m.group(0))
            else:
                i += 1
        elif c == ";":
            out.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    out.append(sql[start:])
    return [s.strip() for s in out if skip_comments(s) != len(s)]
