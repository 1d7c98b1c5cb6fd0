"""Statement fingerprints: one shape per query, whatever its literals, parameters, comments or list lengths.

Two cache levels keep sqlglot off the common path: the raw SQL text (ORMs send the same ``$1``-style
text every time), then a cheap regex pre-normalization (client-side interpolation puts literals in
the text; they are replaced before the lookup). Only a miss on both parses with sqlglot. Anything
sqlglot cannot parse is normalized by the same regex tokenizer and counted, never dropped.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from detectors.scopes import FilterScope, filter_scopes
from detectors.sizing import ENTRY_OVERHEAD, deep_size, strings_size

try:  # True where Cython compiled this module (it reads cython.compiled at compile time)
    import cython

    _COMPILED = bool(cython.compiled)
except ImportError:  # no Cython here: the module runs as Python
    _COMPILED = False

# sqlglot logs a warning for every statement it falls back on; pgloupe counts those instead.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# ------------------------------------------------------------------ the cheap pre-normalizer

# The leading lookahead names every character a token can start with: it lets the regex engine skip
# the rest of the text (keywords, names, spaces) without trying each alternative at every position.
_TOKENS = re.compile(
    r"""
    (?=[-+/'"$?%:eE.\d])
    (?:(?P<comment>/\*.*?(?:\*/|\Z)|--[^\n]*)
    |(?P<estring>(?<!\w)[eE]'(?:[^'\\]|''|\\.)*(?:'|\Z))
    |(?P<string>'(?:[^']|'')*(?:'|\Z))
    |(?P<dollar>(?<![\w$])(?:\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)\$.*?(?:\$(?P=tag)\$|\Z)))
    |(?P<ident>"(?:[^"]|"")*(?:"|\Z))
    |(?P<param>\$\d+|%\(\w+\)s|%s|\?|(?<!:):\w+)
    |(?P<number>(?<![\w$])[-+]?(?:\d++\.?\d*+(?:[eE][-+]?\d++)?|\.\d++)\b))
    """,
    re.S | re.X,
)  # every alternative runs to the end of the text when unterminated: linear on malformed input. A run of
# digits is possessive (\d++): given back one digit at a time to find a word boundary, a run followed by a
# letter ("1111...1a") cost time quadratic in its length (seven seconds for 20,000 digits).
_LIST = re.compile(r"\bin\s*\(\s*\?(?:\s*,\s*\?)+\s*\)")
_ROWS = re.compile(r"(\(\s*\?(?:\s*,\s*\?)*\s*\))(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+")
_QUOTED_IDENT = re.compile(r'("(?:[^"]|"")*")')


def _token(m: re.Match) -> str:
    kind = m.lastgroup
    if kind == "comment":
        return " "
    if kind == "ident":
        return m.group(0)
    if kind in ("string", "estring", "dollar", "param", "number"):
        return "?"
    return m.group(0)


# Where none of these occur, numbers are the only tokens (no string, comment, parameter, quoted name,
# and no minus sign): the common interpolated lookup ("... WHERE id = 42") takes two plain regex calls.
_NOT_NUMBERS_ONLY = re.compile(r"""['"$?%:/\-]""")
# A number not inside a word: +1, 1.5, .5, 1e3 (the number token of _TOKENS, digit runs possessive alike).
# It starts with a character class (its first character, then a look back at the one before it), so that
# the regex engine skips to candidate characters in C instead of trying a match at every position.
_NUMBER = re.compile(r"([+.\d](?<![\w$][+.\d])(?:(?<=\+)(?:\d++\.?\d*+(?:[eE][-+]?\d++)?|\.\d++)|(?<=\.)\d++"
                     r"|(?<=\d)\d*+\.?\d*+(?:[eE][-+]?\d++)?))\b")


def pre_normalize(sql: str, literals: list[str] | None = None) -> str:
    """Literals, parameters and comments out, lists collapsed, case and spacing folded; the literal
    values go to ``literals`` when given (one scan instead of two for interpolated statements)."""
    if _NOT_NUMBERS_ONLY.search(sql) is None:
        text = _strip_numbers(sql, literals)
    else:
        text = _strip_tokens(sql, literals)
    if '"' in text:  # fold case outside quoted identifiers
        parts = _QUOTED_IDENT.split(text)
        text = "".join(p if i % 2 else p.lower() for i, p in enumerate(parts))
    else:
        text = text.lower()
    text = " ".join(text.split()).rstrip(";").strip()  # str.split's whitespace is re's \s
    if "(" in text:
        text = _ROWS.sub(r"\1", text)
        text = _LIST.sub("in (?)", text)
    return text


def _strip_tokens(sql: str, literals: list[str] | None) -> str:
    if literals is None:
        return _TOKENS.sub(_token, sql)

    def token(m: re.Match) -> str:
        value = _literal(m)
        if value is not None:
            literals.append(value)
        return _token(m)

    return _TOKENS.sub(token, sql)


def _strip_numbers(sql: str, literals: list[str] | None) -> str:
    """``_strip_tokens`` for a text with no character of ``_NOT_NUMBERS_ONLY``, in one scan: by hand where
    this module is compiled (a loop over characters in C, where the regex engine's cost per call was most
    of it), by ``_NUMBER`` where it runs as Python (where a loop over characters would be the slower)."""
    if _COMPILED:
        return scan_numbers(sql, literals)
    parts = _NUMBER.split(sql)  # text, number, text, number, ..., text
    if literals is not None:
        literals += [v.lstrip("+") for v in parts[1::2]]
    return "?".join(parts[0::2])


def scan_numbers(sql: str, literals: list[str] | None) -> str:
    """What ``_NUMBER.split`` makes of ``sql``, numbers replaced by ? (and their values to ``literals``):
    a number starts at +, . or a digit not after a name character or $, and its digit runs are taken
    whole, the end moving back only over its exponent and its point to find a word boundary."""
    out = []
    n = len(sql)
    start = 0
    i = 0
    while i < n:
        c = sql[i]
        if (c == "+" or c == "." or c.isdecimal()) and (i == 0 or not _in_name(sql[i - 1])):
            end = _number_end(sql, i, n)
            if end > 0:
                out.append(sql[start:i])
                if literals is not None:
                    literals.append(sql[i + 1:end] if c == "+" else sql[i:end])
                start = i = end
                continue
        i += 1
    out.append(sql[start:])
    return "?".join(out)


def _in_name(c: str) -> bool:
    return c.isalnum() or c == "_" or c == "$"


def _number_end(sql: str, p: int, n: int) -> int:
    """Where the number starting at ``p`` ends, -1 for none (``_NUMBER``'s alternatives, in its order)."""
    q = p + 1 if sql[p] == "+" else p
    if q < n and sql[q].isdecimal():
        x = q + 1
        while x < n and sql[x].isdecimal():
            x += 1
        if x < n and sql[x] == ".":
            z = x + 1
            while z < n and sql[z].isdecimal():
                z += 1
            e = _exponent_end(sql, z, n)
            if e > 0 and _boundary(sql, e, n):
                return e
            if _boundary(sql, z, n):
                return z
        e = _exponent_end(sql, x, n)
        if e > 0 and _boundary(sql, e, n):
            return e
        return x if _boundary(sql, x, n) else -1
    if q + 1 < n and sql[q] == "." and sql[q + 1].isdecimal():
        z = q + 2
        while z < n and sql[z].isdecimal():
            z += 1
        if _boundary(sql, z, n):
            return z
    return -1


def _exponent_end(sql: str, z: int, n: int) -> int:
    if z < n and (sql[z] == "e" or sql[z] == "E"):
        w = z + 1
        if w < n and (sql[w] == "+" or sql[w] == "-"):
            w += 1
        if w < n and sql[w].isdecimal():
            w += 1
            while w < n and sql[w].isdecimal():
                w += 1
            return w
    return -1


def _boundary(sql: str, e: int, n: int) -> bool:
    """A word boundary at ``e`` (re's \\b): a word character on one side only (alphanumerics and _)."""
    before = sql[e - 1]
    after_word = e < n and (sql[e].isalnum() or sql[e] == "_")
    return (before.isalnum() or before == "_") != after_word


_TAG = re.compile(r"(\w{1,64})\s*=\s*'((?:[^'\\]|\\.){0,1024})'")
MAX_COMMENT_CHARS = 4096
MAX_TAGS = 16
MAX_TAG_CHARS = 256


def sqlcommenter_tags(sql: str) -> dict[str, str]:
    """Tags from a sqlcommenter comment (``/*route='%2Fapi',traceparent='00-...'*/``).

    Only from a real comment that ends the statement: one the token scan finds outside every literal,
    quoted name and dollar-quoted body (a '/*' inside one literal and '*/' inside a later one must not
    turn the values between them into tags), bounded in length and count."""
    if not sql.rstrip(" \t\r\n;").endswith("*/"):
        return {}
    last = None
    for last in _TOKENS.finditer(sql):  # noqa: B007 (only the last token matters)
        pass
    if last is None or last.lastgroup != "comment" or sql[last.end():].strip(" \t\r\n;"):
        return {}
    body = last.group(0)
    if not body.startswith("/*") or not body.endswith("*/"):
        return {}  # a -- comment, or one the text ends inside
    body = body[2:-2]
    if len(body) > MAX_COMMENT_CHARS:
        return {}
    from urllib.parse import unquote

    tags: dict[str, str] = {}
    for key, value in _TAG.findall(body)[:MAX_TAGS]:
        tags[key] = unquote(value.replace("\\'", "'"))[:MAX_TAG_CHARS]
    return tags


def fingerprint_id(normalized: str) -> str:
    return hashlib.blake2b(normalized.encode(), digest_size=8).hexdigest()


# ------------------------------------------------------------------ the facts detectors need

Col = tuple[str | None, str]  # (table, column); table None when it cannot be told from the text


@dataclass(slots=True)
class Fingerprint:
    id: str
    text: str  # normalized SQL: literals and parameters as ?, lists collapsed
    kind: str  # SELECT, INSERT, UPDATE, DELETE, or the statement's verb (BEGIN, SET, COPY ...)
    tables: tuple[str, ...] = ()
    parsed: bool = True
    filter_columns: tuple[Col, ...] = ()  # columns compared in WHERE / JOIN ON
    constrained: frozenset[Col] = frozenset()  # columns pinned by = / IN / ANY in AND-context
    join_equalities: tuple[tuple[Col, Col], ...] = ()  # column = column
    order_by: tuple[Col, ...] = ()
    has_limit: bool = False
    offset_literal: bool = False  # OFFSET is a literal in the text (value read per statement)
    offset_param: bool = False  # OFFSET is a bound parameter (value never visible)
    select_star: tuple[str, ...] = ()  # tables whose every column is selected
    # (table, column) the outermost SELECT lists by name: an ORM lists every column instead of *
    selected_columns: tuple[Col, ...] = ()
    not_in_subquery: bool = False
    in_list_params: tuple[int, ...] = ()  # $n numbers inside IN (...) lists
    has_in_list: bool = False
    insert_columns: tuple[str, ...] = ()
    aggregate: bool = False  # GROUP BY or aggregate: rows are not entity rows
    filter_scopes: tuple[FilterScope, ...] = ()  # per-scope table instances and pinned columns
    # column = constant in WHERE. Per shape, so no value: a literal is named by its position among the
    # statement's literals (each execution's own values decide whether it is code, detectors.pipeline);
    # TRUE/FALSE are part of the shape itself.
    constant_slots: tuple[tuple[str | None, str, int, bool], ...] = ()  # (table, column, literal index, quoted)
    keyword_constants: tuple[tuple[str | None, str, str], ...] = ()  # (table, column, TRUE/FALSE)
    literal_count: int = 0  # literals in the text parsed: executions with another count cannot be matched
    # the normalized statement with %(pgloupe_c<n>)s where literal n is a constant predicate's value, %s for
    # every other literal and parameter: what the index advisor plans, once the constants are known
    plan_template: str = ""
    # Where each value of the top-level WHERE comes from, per column it pins (column = value, IN (...),
    # = ANY(...)): (table, column, "param" $n | "literal" index | "array" $n, number). Positions, not values:
    # each execution's own values are read at those positions (provenance of keys, tenant values).
    value_pins: tuple[tuple[str | None, str, str, int], ...] = ()
    insert_values: tuple[tuple[str, str, int], ...] = ()  # (column, source kind, number) of an INSERT's first row
    # the highest $n of the text parsed: an execution with another count (an IN list of another length
    # sharing the shape) has its values elsewhere, so none is read; -1 when parsed from the shape alone
    param_count: int = 0
    size: int = 0  # bytes, for the caches' byte budgets
    extra: dict = field(default_factory=dict)

    @property
    def is_dml(self) -> bool:
        return self.kind in ("SELECT", "INSERT", "UPDATE", "DELETE")


_KIND = {exp.Select: "SELECT", exp.Union: "SELECT", exp.Intersect: "SELECT", exp.Except: "SELECT",
         exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE"}
_PARAM_SPACING = re.compile(r"(\$\d+)(?=[,)\]])")
# Every node that holds a value: literals of each kind of string PostgreSQL has (E'', $$...$$, U&'', B'',
# X'', N'': sqlglot's classes for them are not Literal) and parameters.
_VALUES = (exp.Literal, exp.ByteString, exp.RawString, exp.UnicodeString, exp.HexString, exp.BitString,
           exp.National, exp.Parameter, exp.Placeholder)


def _normalize_tree(tree: exp.Expression) -> str:
    # lists first: replacing each of thousands of items costs sqlglot time quadratic in the list's length
    tree = _collapse_lists(tree.copy())

    def replace(node):
        if isinstance(node, _VALUES) and not isinstance(node.parent, exp.Parameter):
            return exp.Placeholder()
        return node

    return tree.transform(replace).sql(dialect="postgres", comments=False)


def _collapse_lists(tree: exp.Expression) -> exp.Expression:
    """IN lists and multi-row VALUES down to their first item or row: their length is not the shape."""
    for node in list(tree.find_all(exp.In)):
        items = node.args.get("expressions")
        if items and len(items) > 1:
            node.set("expressions", [items[0]])
    for node in list(tree.find_all(exp.Values)):
        rows = node.expressions
        if len(rows) > 1:
            node.set("expressions", [rows[0]])
    return tree


def _alias_map(tree: exp.Expression) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for table in tree.find_all(exp.Table):
        name = table.name
        if not name:
            continue
        aliases[name] = name
        if table.alias:
            aliases[table.alias] = name
    return aliases


def _col(column: exp.Column, aliases: dict[str, str], single: str | None) -> Col:
    qualifier = column.table
    if qualifier:
        return aliases.get(qualifier, qualifier), column.name
    return single, column.name


def _and_terms(condition: exp.Expression):
    """Predicates that must all hold (the AND-spine of a condition, through parentheses)."""
    stack = [condition]
    while stack:
        node = stack.pop()
        if isinstance(node, exp.And):
            stack.extend((node.left, node.right))
        elif isinstance(node, exp.Paren):
            stack.append(node.this)
        else:
            yield node


def _pinned_value(node: exp.Expression) -> bool:
    """A value side that does not depend on the row: a literal, a parameter, a subquery, a function of those."""
    return not any(isinstance(n, exp.Column) for n in node.walk()) or isinstance(node, exp.Subquery)


def has_bound_parameters(sql: str) -> bool:
    """A real $n placeholder outside literals and comments: the server was sent the values separately."""
    return "$" in sql and any(m.lastgroup == "param" and m.group(0)[:1] == "$" for m in _TOKENS.finditer(sql))


_LITERAL_NODES = (exp.Literal, exp.ByteString, exp.RawString, exp.UnicodeString, exp.HexString, exp.BitString,
                  exp.National)


class _Positions:
    """Maps a value node of the tree sqlglot parsed to its source: $n, or the index of the literal among the
    statement's literals in text order (as the pre-normalizer reads them), by the literal's offset."""

    def __init__(self, sql: str, spaced_at: list[int]):
        self.slots = {m.start(): i for i, m in enumerate(m for m in _TOKENS.finditer(sql) if _literal(m) is not None)}
        self.spaced_at = spaced_at  # offsets (in the original text) where a space was added for sqlglot

    def original(self, offset: int) -> int:
        shift = 0
        for i, at in enumerate(self.spaced_at):
            if at + i < offset:
                shift += 1
        return offset - shift

    def source(self, node: exp.Expression) -> tuple[str, int] | None:
        while isinstance(node, (exp.Cast, exp.Paren)):
            node = node.this
        if isinstance(node, exp.Parameter):
            inner = node.this.this if isinstance(node.this, exp.Expression) else node.this
            return ("param", int(inner)) if str(inner).isdigit() else None
        negative = isinstance(node, exp.Neg)
        if negative:
            node = node.this
        if isinstance(node, _LITERAL_NODES) and "start" in node.meta:
            at = self.original(node.meta["start"]) - (1 if negative else 0)
            slot = self.slots.get(at)
            if slot is None and negative:
                slot = self.slots.get(at + 1)
            return ("literal", slot) if slot is not None else None
        return None


def _value_pins(where: exp.Expression | None, aliases: dict[str, str], single: str | None,
                positions: _Positions) -> tuple:
    """(table, column, kind, number) of each value an AND-term of ``where`` compares a column with."""
    if where is None:
        return ()
    pins = []

    def add(column: exp.Column, value: exp.Expression) -> None:
        if isinstance(value, exp.Any):
            inner = value.this
            while isinstance(inner, (exp.Cast, exp.Paren)):
                inner = inner.this
            if isinstance(inner, exp.Parameter):
                src = positions.source(inner)
                if src is not None:
                    pins.append((*_col(column, aliases, single), "array", src[1]))
                return
            items = inner.expressions if isinstance(inner, exp.Array) else []
        else:
            items = [value]
        for item in items:
            src = positions.source(item)
            if src is not None:
                pins.append((*_col(column, aliases, single), *src))

    for term in _and_terms(where.this):
        if isinstance(term, (exp.EQ, exp.NullSafeEQ)):
            left, right = term.left, term.right
            if isinstance(left, exp.Tuple) and isinstance(right, exp.Tuple):
                for a, b in zip(left.expressions, right.expressions, strict=False):
                    if isinstance(a, exp.Column):
                        add(a, b)
                continue
            for a, b in ((left, right), (right, left)):
                if isinstance(a, exp.Column) and not isinstance(b, exp.Column):
                    add(a, b)
        elif isinstance(term, exp.In) and isinstance(term.this, exp.Column) and term.args.get("query") is None:
            for item in term.args.get("expressions") or []:
                src = positions.source(item)
                if src is not None:
                    pins.append((*_col(term.this, aliases, single), *src))
    return tuple(dict.fromkeys(pins))


def _insert_values(tree: exp.Expression, columns: tuple[str, ...], positions: _Positions) -> tuple:
    values = tree.expression if isinstance(tree, exp.Insert) else None
    if not columns or not isinstance(values, exp.Values) or not values.expressions:
        return ()
    first = values.expressions[0]
    items = first.expressions if isinstance(first, exp.Tuple) else [first]
    out = []
    for column, item in zip(columns, items, strict=False):
        src = positions.source(item)
        if src is not None:
            out.append((column, *src))
    return tuple(out)


def _constant_slots(candidates: list[tuple[str | None, str, exp.Literal]], literals: list[str]):
    """Each (table, column, literal node) whose value occurs exactly once among the statement's literals
    (in text order, as the pre-normalizer reads them), as (table, column, index, quoted); the node is
    marked with its index for the plan template. Ambiguous or unmatched ones are left out."""
    slots = []
    for table, column, node in candidates:
        found = [i for i, v in enumerate(literals) if v == node.this]
        if len(found) == 1:
            node.meta["pgloupe_slot"] = found[0]
            slots.append((table, column, found[0], node.is_string))
    return tuple(slots)


def _quotes_a_value(text: str, literals: list[str]) -> bool:
    """Defence in depth: whether a string literal of the statement still stands quoted in ``text``."""
    return "'" in text and any(v and ("'" + v.replace("'", "''")) in text for v in literals if not v.isdigit())


def _plan_template(tree: exp.Expression) -> str:
    """The statement for the index advisor: constants marked by their literal index, every other value a
    placeholder, so that nothing of the execution it was parsed from is kept."""
    def replace(node):
        if isinstance(node, exp.Literal) and "pgloupe_slot" in node.meta:
            return exp.Placeholder(this=f"pgloupe_c{node.meta['pgloupe_slot']}")
        if isinstance(node, _VALUES) and not isinstance(node.parent, exp.Parameter):
            return exp.Placeholder()
        return node

    return tree.copy().transform(replace).sql(dialect="postgres", comments=False)


def _analyse(tree: exp.Expression, sql: str, literals: list[str] | None = None,
             spaced_at: list[int] | None = None) -> Fingerprint:
    tree = normalize_identifiers(tree, dialect="postgres")  # unquoted names fold to lower case, as in PostgreSQL
    kind = next((v for k, v in _KIND.items() if isinstance(tree, k)), None)
    if kind is None:
        kind = tree.key.upper()
        if isinstance(tree, exp.Command):
            kind = str(tree.this).upper()
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    tables = tuple(dict.fromkeys(t.name for t in tree.find_all(exp.Table) if t.name and t.name not in ctes))
    aliases = _alias_map(tree)
    single = tables[0] if len(tables) == 1 else None

    conditions = [w.this for w in tree.find_all(exp.Where)]
    conditions += [j.args["on"] for j in tree.find_all(exp.Join) if j.args.get("on")]
    filter_cols: list[Col] = []
    constrained: set[Col] = set()
    equalities: list[tuple[Col, Col]] = []
    for cond in conditions:
        for c in cond.find_all(exp.Column):
            filter_cols.append(_col(c, aliases, single))
        for term in _and_terms(cond):
            if isinstance(term, exp.EQ):
                left, right = term.left, term.right
                if isinstance(left, exp.Column) and isinstance(right, exp.Column):
                    equalities.append((_col(left, aliases, single), _col(right, aliases, single)))
                    continue
                for a, b in ((left, right), (right, left)):
                    if isinstance(a, exp.Column) and (_pinned_value(b) or isinstance(b, exp.Any)):
                        constrained.add(_col(a, aliases, single))
            elif isinstance(term, exp.In) and isinstance(term.this, exp.Column):
                constrained.add(_col(term.this, aliases, single))
    for join in tree.find_all(exp.Join):
        for ident in join.args.get("using") or []:
            name = ident.name if hasattr(ident, "name") else str(ident)
            equalities.append(((None, name), (None, name)))

    order = []
    for o in tree.find_all(exp.Order):
        for item in o.expressions:
            target = item.this if isinstance(item, exp.Ordered) else item
            if isinstance(target, exp.Column):
                order.append(_col(target, aliases, single))

    select_star: list[str] = []
    selects = [tree] if isinstance(tree, exp.Select) else list(tree.find_all(exp.Select))
    for sel in selects:
        for e in sel.expressions:
            if isinstance(e, exp.Star):
                sources = [sel.args.get("from") or sel.args.get("from_")] + list(sel.args.get("joins") or [])
                select_star.extend(src.this.name for src in sources
                                   if src is not None and isinstance(src.this, exp.Table) and src.this.name not in ctes)
            elif isinstance(e, exp.Column) and isinstance(e.this, exp.Star):
                select_star.append(aliases.get(e.table, e.table))
    selected: list[Col] = []
    if isinstance(tree, exp.Select):
        for e in tree.expressions:
            inner = e.this if isinstance(e, exp.Alias) else e
            if isinstance(inner, exp.Column) and not isinstance(inner.this, exp.Star):
                selected.append(_col(inner, aliases, single))

    offset = tree.args.get("offset") if isinstance(tree, exp.Select) else None
    offset_expr = offset.expression if offset is not None else None
    in_params: list[int] = []
    has_in_list = False
    for node in tree.find_all(exp.In):
        items = node.args.get("expressions") or []
        if items:
            has_in_list = True
        for item in items:
            if isinstance(item, exp.Parameter):
                try:
                    in_params.append(int(item.this.this if isinstance(item.this, exp.Expression) else item.this))
                except (TypeError, ValueError):
                    pass
    not_in = any(isinstance(n.this, exp.In) and n.this.args.get("query") is not None for n in tree.find_all(exp.Not))
    insert_cols: tuple[str, ...] = ()
    if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Schema):
        insert_cols = tuple(i.name for i in tree.this.expressions)
    aggregate = bool(tree.args.get("group")) or any(True for _ in tree.find_all(exp.AggFunc)) if kind == "SELECT" else False
    candidates, keywords = [], []
    where = tree.args.get("where")
    if where is not None:
        for term in _and_terms(where.this):
            if isinstance(term, exp.EQ):
                for a, b in ((term.left, term.right), (term.right, term.left)):
                    if isinstance(a, exp.Column) and isinstance(b, exp.Literal):
                        candidates.append((*_col(a, aliases, single), b))
                    elif isinstance(a, exp.Column) and isinstance(b, exp.Boolean):
                        keywords.append((*_col(a, aliases, single), b.sql(dialect="postgres")))
    slots = _constant_slots(candidates, literals or []) if candidates else ()
    value_pins = insert_values = ()
    param_count = -1
    if spaced_at is not None:  # the statement's own text: its values' positions mean something
        positions = _Positions(sql, spaced_at)
        if kind in ("SELECT", "UPDATE", "DELETE"):
            value_pins = _value_pins(where, aliases, single, positions)
        elif kind == "INSERT":
            insert_values = _insert_values(tree, insert_cols, positions)
        param_count = max((int(m.group(0)[1:]) for m in _TOKENS.finditer(sql)
                           if m.lastgroup == "param" and m.group(0)[1:].isdigit()), default=0)
    normalized = _normalize_tree(tree)
    if literals and _quotes_a_value(normalized, literals):
        normalized = pre_normalize(sql)  # a kind of literal sqlglot keeps: the token normalizer's text
    return Fingerprint(
        id=fingerprint_id(normalized),
        text=normalized,
        kind=kind,
        tables=tables,
        filter_columns=tuple(dict.fromkeys(filter_cols)),
        constrained=frozenset(constrained),
        join_equalities=tuple(equalities),
        order_by=tuple(order),
        has_limit=isinstance(tree, exp.Select) and tree.args.get("limit") is not None,
        offset_literal=isinstance(offset_expr, exp.Literal),
        offset_param=isinstance(offset_expr, (exp.Parameter, exp.Placeholder)),
        select_star=tuple(dict.fromkeys(select_star)),
        selected_columns=tuple(dict.fromkeys(selected)),
        not_in_subquery=not_in,
        in_list_params=tuple(in_params),
        has_in_list=has_in_list,
        insert_columns=insert_cols,
        aggregate=aggregate,
        filter_scopes=filter_scopes(tree) if kind in ("SELECT", "UPDATE", "DELETE") else (),
        constant_slots=slots,
        keyword_constants=tuple(keywords),
        literal_count=len(literals or ()),
        plan_template=_plan_template(tree) if slots else "",
        value_pins=value_pins,
        insert_values=insert_values,
        param_count=param_count,
    )


_FALLBACK_TABLE = re.compile(r"\b(?:from|join|into|update)\s+((?:\"[^\"]+\"|[\w.]+))", re.I)


def _fallback(key: str) -> Fingerprint:
    first = key.split(" ", 1)[0].upper() if key else ""
    tables = tuple(dict.fromkeys(t.strip('"').split(".")[-1] for t in _FALLBACK_TABLE.findall(key)))
    return _sized(Fingerprint(id=fingerprint_id(key), text=key, kind=first, tables=tables, parsed=False))


def _sized(fp: Fingerprint) -> Fingerprint:
    fp.size = deep_size(fp)
    return fp


_KEY_PLACEHOLDER = re.compile(r"\?")


def key_statement(key: str) -> str:
    """A pre-normalized key as SQL sqlglot can read: each ? (a literal or parameter, lists collapsed)
    becomes $n, outside quoted names."""
    counter = iter(range(1, 1 << 30))
    parts = _QUOTED_IDENT.split(key)
    return "".join(p if i % 2 else _KEY_PLACEHOLDER.sub(lambda _m: f"${next(counter)}", p)
                   for i, p in enumerate(parts))


RAW_CACHE_MAX_CHARS = 4096  # longer texts (bulk VALUES) are not kept as cache keys: memory, not speed
# A shape whose texts carry literals that do not come back (an id written into each lookup) would fill the
# text cache with texts asked for once, each evicting one that might repeat: after RAW_TRIAL of its texts
# were kept, its further texts are kept only while a quarter of those kept were asked for again, and one
# in RAW_SAMPLE otherwise (so that a shape whose texts start repeating is noticed).
RAW_TRIAL = 64
RAW_SAMPLE = 16
DEFAULT_MAX_PARSE_CHARS = 16384
DEFAULT_TEXTS_BYTES = 32 << 20
DEFAULT_SHAPES_BYTES = 32 << 20
MAX_HASHED_LITERALS = 1024  # literal values of one statement hashed for the detectors (a bulk VALUES has more)


class Fingerprinter:
    """Fingerprints with two caches bounded in bytes; counts hits, misses, parse fallbacks and evictions.

    sqlglot never sees a statement longer than ``max_parse_chars`` (its parse time grows faster than the
    text: a 26 KB statement took a second): such a statement's shape is parsed from its pre-normalized
    key when that fits (lists collapsed, values gone: a bulk VALUES or a long IN list shrinks to one row
    or item), else it is fingerprinted by the token normalizer alone."""

    def __init__(self, texts_bytes: int = DEFAULT_TEXTS_BYTES, shapes_bytes: int = DEFAULT_SHAPES_BYTES,
                 max_parse_chars: int = DEFAULT_MAX_PARSE_CHARS):
        # text -> (fingerprint, its literal values, bytes charged, its shape's [texts kept, hits, declined]): one lookup
        # for both on a repeated text
        self._raw: OrderedDict[str, tuple[Fingerprint, list[str], int, list]] = OrderedDict()
        # shape key -> (fingerprint, bytes charged, [its texts kept, hits on them, declined])
        self._shapes: OrderedDict[str, tuple[Fingerprint, int, list]] = OrderedDict()
        self.texts_limit = texts_bytes
        self.shapes_limit = shapes_bytes
        self.texts_used = 0
        self.shapes_used = 0
        self.texts_evicted = 0
        self.shapes_evicted = 0
        self.max_parse_chars = max_parse_chars
        self.hits = 0
        self.shape_hits = 0
        self.parses = 0
        self.fallbacks = 0
        self._last_sql: str | None = None  # the literals of the last text pre-normalized
        self._last_literals: list[str] = []

    def literal_values(self, sql: str) -> list[str]:
        """``literal_values(sql)``, free for the text just fingerprinted."""
        if sql is self._last_sql:
            return self._last_literals
        return literal_values(sql)

    def __call__(self, sql: str) -> Fingerprint:
        raw = self._raw
        hit = raw.get(sql)
        if hit is not None:
            self.hits += 1
            hit[3][1] += 1
            self._last_sql, self._last_literals = sql, hit[1]
            return hit[0]
        literals: list[str] = []
        key = pre_normalize(sql, literals)
        self._last_sql, self._last_literals = sql, literals
        # One shape, parsed once per layout of its values: where a column's value sits ($2, or the third
        # literal) differs between a client that binds and one that interpolates, and with a list's length
        # (a text parsed through its shape has no positions: it is kept under the shape alone).
        # A text twice as long as its shape is long through lists, rows or literals: its shape is what
        # sqlglot parses (the same facts, at the cost of the shape's length, not the text's).
        whole = len(sql) <= self.max_parse_chars and len(key) * 2 >= len(sql)
        cached = f"{key}\x00{len(literals)}:{sql.count('$')}" if whole else key
        entry = self._shapes.get(cached)
        if entry is not None:
            self.shape_hits += 1
            self._shapes.move_to_end(cached)
            fp = entry[0]
            texts = entry[2]
        elif whole or len(key) <= self.max_parse_chars:
            fp = self._parse(sql, key, literals) if whole else self._parse_key(key)
            texts = self._remember_shape(cached, fp)
        else:
            # Too long to parse even as its shape; not cached, so that a shorter statement of the same
            # shape can still be parsed for it.
            self.fallbacks += 1
            fp = _fallback(key)
            texts = [0, 0, 0]
        if len(sql) <= RAW_CACHE_MAX_CHARS and (not literals or _worth_keeping(texts)):
            texts[0] += 1
            cost = sys.getsizeof(sql) + strings_size(literals) + fp.size + ENTRY_OVERHEAD
            raw[sql] = (fp, literals, cost, texts)
            self.texts_used += cost
            while self.texts_used > self.texts_limit and raw:
                self.texts_used -= raw.popitem(last=False)[1][2]
                self.texts_evicted += 1
        return fp

    def _remember_shape(self, key: str, fp: Fingerprint) -> list:
        """-> the shape's [texts kept, hits on them, texts declined] (kept with it)."""
        texts = [0, 0, 0]
        cost = sys.getsizeof(key) + fp.size + ENTRY_OVERHEAD
        if cost > self.shapes_limit // 4:
            self.shapes_evicted += 1  # one shape may not take a quarter of the cache
            return texts
        shapes = self._shapes
        shapes[key] = (fp, cost, texts)
        self.shapes_used += cost
        while self.shapes_used > self.shapes_limit:
            self.shapes_used -= shapes.popitem(last=False)[1][1]
            self.shapes_evicted += 1
        return texts

    def resize(self, texts_bytes: int, shapes_bytes: int) -> None:
        self.texts_limit, self.shapes_limit = texts_bytes, shapes_bytes
        while self.texts_used > self.texts_limit and self._raw:
            self.texts_used -= self._raw.popitem(last=False)[1][2]
            self.texts_evicted += 1
        while self.shapes_used > self.shapes_limit and self._shapes:
            self.shapes_used -= self._shapes.popitem(last=False)[1][1]
            self.shapes_evicted += 1

    def _parse(self, sql: str, key: str, literals: list[str], exact: bool = True) -> Fingerprint:
        self.parses += 1
        if not key:
            return _sized(Fingerprint(id=fingerprint_id(""), text="", kind="EMPTY", parsed=True))
        try:
            # sqlglot reads "$1,$2" as the start of a dollar-quoted string: a space after each $n
            spaced_at = [m.end() for m in _PARAM_SPACING.finditer(sql)]
            trees = sqlglot.parse(_PARAM_SPACING.sub(r"\1 ", sql), read="postgres")
            trees = [t for t in trees if t is not None]
            if len(trees) != 1 or isinstance(trees[0], exp.Command):
                # exp.Command is sqlglot's opaque fallback for syntax it has no grammar for.
                raise ValueError("not one parsable statement")
            return _sized(_analyse(trees[0], sql, literals, spaced_at if exact else None))
        except Exception:  # sqlglot raises many kinds; none may reach the caller
            self.fallbacks += 1
            return _fallback(key)

    def _parse_key(self, key: str) -> Fingerprint:
        """A statement through its shape (its pre-normalized key as SQL): the facts are the shape's, and no
        literal is a constant (there are none left in the key)."""
        return self._parse(key_statement(key), key, [], exact=False)


def _worth_keeping(texts: list) -> bool:
    """Whether a text with literals, of a shape whose texts stand at ``[kept, hits, declined]``, is worth
    a cache entry."""
    kept, hits, declined = texts
    if kept < RAW_TRIAL or hits * 4 >= kept:
        return True
    if kept >= 1 << 16:  # old history fades: how a shape is called may change
        texts[0] >>= 1
        texts[1] >>= 1
    texts[2] = declined + 1
    return declined % RAW_SAMPLE == 0


_OFFSET = re.compile(r"\boffset\s+(\d+)", re.I)
_IN_LIST = re.compile(r"\bin\s*\(([^()]*)\)", re.I)


_ESCAPES = re.compile(r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{1,3}|.)", re.S)
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(m: re.Match) -> str:
    e = m.group(1)
    if e[0] in "xuU" and len(e) > 1:
        return chr(int(e[1:], 16))
    if e[0].isdigit():
        return chr(int(e, 8))
    return _SIMPLE_ESCAPES.get(e, e)


def _literal(m: re.Match) -> str | None:
    kind = m.lastgroup
    if kind == "number":
        return m.group(0).lstrip("+")
    if kind == "string":
        body = m.group(0)
        return body[1:-1 if body.endswith("'") and len(body) > 1 else None].replace("''", "'")
    if kind == "estring":
        body = m.group(0)
        body = body[2:-1 if body.endswith("'") and len(body) > 2 else None].replace("''", "'")
        return _ESCAPES.sub(_unescape, body)
    return None


def literal_values(sql: str) -> list[str]:
    """The literal values a client interpolated into the text (psycopg ClientCursor, Django, SQLAlchemy).

    Hashed like bound parameters, they let the detectors trace Django-style N+1 loops to their parent.
    """
    return [v for m in _TOKENS.finditer(sql) if (v := _literal(m)) is not None]


def in_list_literals(sql: str) -> list[str]:
    return [v for body in _IN_LIST.findall(sql) for m in _TOKENS.finditer(body) if (v := _literal(m)) is not None]


def literal_offset(sql: str) -> int | None:
    """The outermost (last) literal OFFSET: an inner ``OFFSET 0`` fence does not hide it."""
    found = _OFFSET.findall(sql)
    return int(found[-1]) if found else None


# (possessive: with a lazy cast type and optional commas, a list that did not close, "in ( $1 $1 $1 ... x",
# was split every way there is, exponential in its length)
_IN_PARAMS = re.compile(r"\bin\s*\(((?:\s*\$\d++(?:\s*::\s*[\w\s\[\]\"]++)?\s*+,?)++)\)", re.I)


def in_list_param_numbers(sql: str) -> list[int]:
    """$n parameters inside IN (...) lists, read from each statement's own text (list lengths differ)."""
    return [int(n) for body in _IN_PARAMS.findall(sql) for n in re.findall(r"\$(\d+)", body)]
