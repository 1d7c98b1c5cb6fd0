"""Prove an index suggestion before making it, the way Dexter does: with HypoPG, create the index
hypothetically in this session only, EXPLAIN the statement that motivated it before and after, and
keep the suggestion only when the plan gets cheaper.

Statements are planned from their fingerprint (placeholders, never the values seen on the wire) as
a generic plan: PREPARE with plan_cache_mode = force_generic_plan, then EXPLAIN EXECUTE with NULLs,
which the generic plan does not look at.
"""

from __future__ import annotations

import itertools
import json
import logging
import re

from .advisor import Advice, IndexCandidate, missing_index_advice
from .config import DetectorConfig

_PLACEHOLDER = re.compile(r"%s")
STATEMENT = "pgloupe_advise"


log = logging.getLogger("pgloupe.advisor")


def as_prepared(text: str) -> str:
    """A fingerprint's text (every literal and parameter a %s) as a statement with $n parameters."""
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", text)


def plannable_text(candidate: IndexCandidate) -> str:
    fp = candidate.shape.fp
    return fp.extra.get("code_text") or as_prepared(fp.text)


async def plan_cost(conn, sql: str) -> float | None:
    """Total cost of the generic plan of a statement with $n parameters, or None when it cannot be planned."""
    try:
        await conn.execute(f"PREPARE {STATEMENT} AS {sql}")
    except Exception:
        return None
    try:
        n = await conn.fetchval("SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = $1",
                                STATEMENT)
        args = ", ".join(["NULL"] * (n or 0))
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {STATEMENT}" + (f"({args})" if n else ""))
        data = json.loads(plan) if isinstance(plan, str) else plan
        return float(data[0]["Plan"]["Total Cost"])
    except Exception:
        return None
    finally:
        await conn.execute(f"DEALLOCATE {STATEMENT}")


async def verify(conn, candidate: IndexCandidate, hypopg_schema: str) -> tuple[float, float] | None:
    text = plannable_text(candidate)
    before = await plan_cost(conn, text)
    if before is None:
        return None
    await conn.fetch(f"SELECT * FROM {hypopg_schema}.hypopg_create_index($1)", candidate.hypothetical_sql)
    try:
        after = await plan_cost(conn, text)
    finally:
        await conn.execute(f"SELECT {hypopg_schema}.hypopg_reset()")
    return None if after is None else (before, after)


async def missing_indexes(conn, candidates: list[IndexCandidate], hypopg_schema: str | None,
                          config: DetectorConfig) -> list[Advice]:
    """Advice for the candidates: verified ones only when they lower the cost, unverified without HypoPG."""
    out = []
    if hypopg_schema:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
    for candidate in candidates:
        if not hypopg_schema:
            out.append(missing_index_advice(candidate, None))
            continue
        try:
            costs = await verify(conn, candidate, hypopg_schema)
        except Exception as exc:  # one candidate HypoPG cannot model (a json column, ...) must not stop the rest
            log.info("index candidate not verifiable: %s: %s", type(exc).__name__, str(exc)[:200])
            costs = None
        if costs is None:
            advice = missing_index_advice(candidate, None)
            advice.message = advice.message.replace("HypoPG is not installed in this database",
                                                    "the statement could not be planned with the index")
            out.append(advice)
        elif costs[1] <= costs[0] * (1 - config.min_cost_gain):
            out.append(missing_index_advice(candidate, costs))
    return [a for a in out if a.kind not in config.disabled and a.fingerprint not in config.silenced_fingerprints
            and a.kind not in config.silenced_kinds]
