"""Prove an index suggestion before making it, the way Dexter does: with HypoPG, create the index
hypothetically in this session only, plan the statement that motivated it before and after, and
keep the suggestion only when the plan gets cheaper.

Only reads are planned, and nothing is ever executed. The statement comes from its fingerprint
(placeholders, never the values seen on the wire) and must be, on its sqlglot tree, one SELECT that
writes nothing: an UPDATE or DELETE is planned as the SELECT of the rows it would change, and a
FOR UPDATE/SHARE clause is dropped (it would need UPDATE privilege and does not change the lookup).
That text reaches the server only as the Parse of a named statement (extended protocol: the server
refuses a second statement), and its generic plan comes from ``EXPLAIN EXECUTE name(NULL, ...)``
under plan_cache_mode = force_generic_plan: EXPLAIN's own bound parameters would be folded into a
custom plan, and GENERIC_PLAN needs PostgreSQL 16. Each plan runs in a read-only transaction, on a
side connection that is read-only by default and caches no statement.
"""

from __future__ import annotations

import itertools
import json
import logging
import re

import sqlglot
from sqlglot import exp

from detectors.advisor import Advice, IndexCandidate, missing_index_advice
from detectors.config import DetectorConfig

_PLACEHOLDER = re.compile(r"%s")
_NAMES = itertools.count(1)
# Nodes that write, or that sqlglot kept as opaque text it did not understand
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Into, exp.Command)
NO_HYPOPG = "HypoPG is not installed in this database"
UNPARSED = "the statement does not parse as one statement"
NOT_A_READ = "the statement writes data or is not a query, and pgloupe plans only reads"
NO_SELECT = "the side connection's role may not read the table: grant it SELECT"
UNPLANNED = "the statement could not be planned with the index"


log = logging.getLogger("pgloupe.advisor")


class NotPlanned(Exception):
    """A statement pgloupe refuses to plan; the text says why, in the advice."""


def as_prepared(text: str) -> str:
    """A fingerprint's text (every literal and parameter a %s) as a statement with $n parameters."""
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", text)


_TEMPLATE_VALUE = re.compile(r"%s|%\(pgloupe_c(\d+)\)s")


def plannable_text(candidate: IndexCandidate) -> str:
    """The shape with $n parameters, and the constants its executions proved to be code written in (a
    partial index's predicate must be implied by the statement for the planner to use it)."""
    st = candidate.shape
    fp = st.fp
    if not fp.plan_template:
        return as_prepared(fp.text)
    counter = itertools.count(1)

    def value(m: re.Match) -> str:
        proven = st.proven.get(int(m.group(1))) if m.group(1) else None
        return proven if proven is not None else f"${next(counter)}"

    return _TEMPLATE_VALUE.sub(value, fp.plan_template)


def _rows_of(stmt: exp.Update | exp.Delete) -> exp.Select:
    """SELECT 1 FROM the target, its FROM/USING tables, WHERE the same condition: the lookup an index serves."""
    select = exp.Select(expressions=[exp.Literal.number(1)], from_=exp.From(this=stmt.this.copy()))
    others = [stmt.args["from_"].this] if stmt.args.get("from_") else list(stmt.args.get("using") or [])
    for other in others:
        select.append("joins", exp.Join(this=other.copy()))
    for key in ("where", "with_"):
        if stmt.args.get(key):
            select.set(key, stmt.args[key].copy())
    # parameters only SET or RETURNING used are gone: renumber the rest, or the server cannot type the gaps
    params = [p for p in select.find_all(exp.Parameter) if p.this.is_int]
    numbers = {n: i for i, n in enumerate(sorted({int(p.name) for p in params}), 1)}
    for p in params:
        p.set("this", exp.Literal.number(numbers[int(p.name)]))
    return select


def read_to_plan(text: str) -> str:
    """The read that shows whether an index helps ``text``; raises NotPlanned for anything else."""
    try:
        trees = [t for t in sqlglot.parse(text, read="postgres") if t is not None]
    except sqlglot.errors.SqlglotError:
        trees = []
    if len(trees) != 1:
        raise NotPlanned(UNPARSED)
    tree = trees[0]
    if isinstance(tree, (exp.Update, exp.Delete)):
        tree = _rows_of(tree)
    # checked after the rewrite: a data-modifying CTE of an UPDATE is carried over, and refused here
    if not isinstance(tree, exp.Query) or any(isinstance(node, _WRITES) for node in tree.walk()):
        raise NotPlanned(NOT_A_READ)
    for lock in list(tree.find_all(exp.Lock)):
        lock.pop()
    return tree.sql(dialect="postgres")


def _writes(plan: dict) -> bool:
    return plan.get("Node Type") in ("ModifyTable", "LockRows") or any(_writes(p) for p in plan.get("Plans", ()))


async def plan_cost(conn, sql: str) -> float:
    """Total cost of the generic plan of one statement with $n parameters, planned and never executed.

    Raises when the server refuses it (a second statement, no SELECT privilege ...) or its plan would write."""
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        # named, so EXECUTE can reach it; asyncpg closes it once the object is gone
        stmt = await conn.prepare(sql, name=f"pgloupe_plan_{next(_NAMES)}")
        n = len(stmt.get_parameters())
        args = f"({', '.join(['NULL'] * n)})" if n else ""
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {stmt.get_name()}{args}")
    data = json.loads(plan) if isinstance(plan, str) else plan
    if _writes(data[0]["Plan"]):
        raise NotPlanned(NOT_A_READ)
    return float(data[0]["Plan"]["Total Cost"])


async def verify(conn, candidate: IndexCandidate, hypopg_schema: str) -> tuple[float, float]:
    sql = read_to_plan(plannable_text(candidate))
    before = await plan_cost(conn, sql)
    await conn.fetch(f"SELECT * FROM {hypopg_schema}.hypopg_create_index($1)", candidate.hypothetical_sql)
    try:
        after = await plan_cost(conn, sql)
    finally:
        await conn.execute(f"SELECT {hypopg_schema}.hypopg_reset()")
    return before, after


def _reason(exc: Exception) -> str:
    if isinstance(exc, NotPlanned):
        return str(exc)
    return NO_SELECT if getattr(exc, "sqlstate", None) == "42501" else UNPLANNED  # insufficient_privilege


async def missing_indexes(conn, candidates: list[IndexCandidate], hypopg_schema: str | None,
                          config: DetectorConfig) -> list[Advice]:
    """Advice for the candidates: verified ones only when they lower the cost, unverified without HypoPG
    or when the statement cannot be planned (the message says why)."""
    out = []
    for candidate in candidates:
        if not hypopg_schema:
            if candidate.refines is None:  # an index that only refines one serving the filter needs proof
                out.append(missing_index_advice(candidate, None))
            continue
        try:
            before, after = await verify(conn, candidate, hypopg_schema)
        except Exception as exc:  # one candidate HypoPG cannot model (a json column, ...) must not stop the rest
            log.info("index candidate not verifiable: %s", type(exc).__name__)  # no text: it may hold values
            if candidate.refines is not None:
                continue
            advice = missing_index_advice(candidate, None)
            advice.message = advice.message.replace(NO_HYPOPG, _reason(exc))
            out.append(advice)
            continue
        if after <= before * (1 - config.min_cost_gain):
            advice = missing_index_advice(candidate, (before, after))
            if candidate.shape.fp.kind in ("UPDATE", "DELETE"):
                advice.message += " (planned as the SELECT of the rows it changes)"
            out.append(advice)
    return [a for a in out if a.kind not in config.disabled and a.fingerprint not in config.silenced_fingerprints
            and a.kind not in config.silenced_kinds]
