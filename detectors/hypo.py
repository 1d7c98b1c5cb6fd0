"""Prove an index suggestion before making it, the way Dexter does: with HypoPG, create the index
hypothetically in this session only, EXPLAIN the statement that motivated it before and after, and
keep the suggestion only when the plan gets cheaper.

Statements are planned from their fingerprint (placeholders, never the values seen on the wire) as
a generic plan: PREPARE with plan_cache_mode = force_generic_plan, then EXPLAIN EXECUTE with NULLs,
which the generic plan does not look at.
"""

from __future__ import annotations

import json
import re

from .advisor import Advice, IndexCandidate, missing_index_advice
from .config import DetectorConfig

_PLACEHOLDER = re.compile(r"%s")
STATEMENT = "pgloupe_advise"


def as_prepared(text: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", text)


async def plan_cost(conn, text: str) -> float | None:
    """Total cost of the generic plan of a fingerprint's text, or None when it cannot be planned."""
    sql = as_prepared(text)
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


async def verify(conn, candidate: IndexCandidate) -> tuple[float, float] | None:
    fp = candidate.shape.fp
    text = fp.extra.get("code_text") or fp.text
    before = await plan_cost(conn, text)
    if before is None:
        return None
    await conn.fetch("SELECT * FROM hypopg_create_index($1)", candidate.hypothetical_sql)
    try:
        after = await plan_cost(conn, text)
    finally:
        await conn.execute("SELECT hypopg_reset()")
    return None if after is None else (before, after)


async def missing_indexes(conn, candidates: list[IndexCandidate], hypopg: bool,
                          config: DetectorConfig) -> list[Advice]:
    """Advice for the candidates: verified ones only when they lower the cost, unverified without HypoPG."""
    out = []
    if hypopg:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
    for candidate in candidates:
        if not hypopg:
            out.append(missing_index_advice(candidate, None))
            continue
        costs = await verify(conn, candidate)
        if costs is None:
            advice = missing_index_advice(candidate, None)
            advice.message = advice.message.replace("HypoPG is not installed in this database",
                                                    "the statement could not be planned from its fingerprint")
            out.append(advice)
        elif costs[1] <= costs[0] * (1 - config.min_cost_gain):
            out.append(missing_index_advice(candidate, costs))
    return [a for a in out if a.kind not in config.disabled and a.fingerprint not in config.silenced_fingerprints
            and a.kind not in config.silenced_kinds]
