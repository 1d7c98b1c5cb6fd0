"""One review of a database: read the catalog, derive the advice, verify index suggestions.

Used by the proxy after each catalog refresh (with the traffic it observed) and by
``pgloupe advise`` (with pg_stat_statements' statements when that extension is there).
"""

from __future__ import annotations

from dataclasses import dataclass

from detectors.advisor import Advice, advise, health_ratios, index_candidates
from detectors.config import DetectorConfig
from detectors.database.catalog import connect, read_catalog
from detectors.database.hypo import missing_indexes
from detectors.fingerprint import Fingerprinter
from detectors.pipeline import ShapeStats
from detectors.schema import Catalog

PG_STAT_STATEMENTS_SQL = """
SELECT query, calls, total_exec_time / 1000.0 AS total_s, max_exec_time / 1000.0 AS max_s, rows
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT 500
"""


@dataclass(slots=True)
class Review:
    catalog: Catalog
    advice: list[Advice]
    ratios: dict[str, float | None]
    # the advice could not be completed (the catalog was still read): what a log may say of why
    error: dict[str, str] | None = None


def failure(exc: BaseException) -> dict[str, str]:
    """The class of an advisor failure and the server's SQLSTATE, never the message: HypoPG plans the
    clients' statements, and the server's words about one can quote its literals."""
    summary = {"error": type(exc).__name__}
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        summary["sqlstate"] = sqlstate
    return summary


async def statements_from_pg_stat_statements(conn, fingerprint: Fingerprinter) -> list[ShapeStats]:
    shapes: dict[str, ShapeStats] = {}
    for r in await conn.fetch(PG_STAT_STATEMENTS_SQL):
        fp = fingerprint(r["query"])
        st = shapes.get(fp.id)
        if st is None:
            st = shapes[fp.id] = ShapeStats(fp)
        st.calls += r["calls"]
        st.total_s += r["total_s"]
        st.max_s = max(st.max_s, r["max_s"])
        st.rows += r["rows"]
    return list(shapes.values())


async def review(dsn: str, config: DetectorConfig, observed: list[ShapeStats] | None = None,
                 flagged: set[str] | None = None, timeout: float = 10.0, ssl=None,
                 index_first_seen: dict[str, float] | None = None, database: str = "") -> Review:
    """Read the catalog (errors propagate: there is nothing to review), then advise (errors are reported
    in ``Review.error`` so the catalog snapshot still reaches the detectors)."""
    conn = await connect(dsn, timeout, ssl)
    try:
        catalog = await read_catalog(conn)
        advice: list[Advice] = []
        error = None
        try:
            if observed is None:
                observed = []
                if catalog.pg_stat_statements:
                    try:
                        observed = await statements_from_pg_stat_statements(conn, Fingerprinter())
                    except Exception:  # not readable by this role: schema advice only
                        observed = []
            advice = advise(catalog, observed, config, index_first_seen)
            if "missing_index" not in config.disabled:
                candidates = index_candidates(catalog, observed, flagged or set(), config)
                advice += await missing_indexes(conn, candidates, catalog.hypopg, config)
        except Exception as exc:
            error = failure(exc)
    finally:
        await conn.close()
    for a in advice:
        a.database = database
    return Review(catalog, advice, health_ratios(catalog, config), error)
