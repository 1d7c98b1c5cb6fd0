"""Run the real-application corpus through an in-process pgloupe in front of a server, and score it.

    .venv/bin/python -m tests.realapps.run [--only NAME[,NAME]] [--dsn postgresql://...] [--events FILE]

Without ``--dsn`` a throwaway PostgreSQL is started. Prints every workload's verdict and the per-kind
precision and recall table; exit status 1 when a kind is below 0.95 or a workload failed. ``--events``
writes every statement event as a line of JSON (application, connection, times, transaction status,
command, the statement's first 300 characters, counts): what a detector sees, for studying a workload.
"""

from __future__ import annotations

import argparse
import sys
import time

from .corpus import apps as all_apps
from .harness import App, Result, per_kind, ratios, report, run_apps

# The corpus's own thresholds: what a team would set in staging (a long transaction is one second).
DETECTORS = {"long_transaction_ms": [1000, 10000]}
BAR = 0.95


def run_through(background, server_dsn: str, apps: list[App]) -> list[Result]:
    """With ``background`` (a started BackgroundApp whose upstream is ``server_dsn``'s server)."""
    app = background.app
    proxy_dsn = f"postgresql://postgres@127.0.0.1:{app.port}/postgres"

    def catalog_ready(database: str) -> None:
        assert background.call(app.reviews.refresh, database), f"pgloupe could not read {database}'s catalog"

    def analysed() -> None:
        deadline = time.monotonic() + 60
        # the last workload's connections closed (their last events queued), then everything analysed
        while (app.proxy.clients or app.pipeline.events < app.queue.accepted) and time.monotonic() < deadline:
            time.sleep(0.05)
        background.call(app.analysis.call, app.pipeline.flush)

    def findings() -> list[dict]:
        return app.pipeline.findings.snapshot()

    return run_apps(apps, server_dsn, proxy_dsn, analysed, findings, catalog_ready)


def failing(results: list[Result]) -> list[str]:
    """What keeps the corpus from passing: kinds below the bar, failed workloads."""
    out = [f"workload {r.workload.name} failed" for r in results if r.error]
    for kind, counts in per_kind(results).items():
        precision, recall = ratios(*counts)
        if precision < BAR or recall < BAR:
            out.append(f"{kind}: precision {precision:.3f}, recall {recall:.3f}")
    return out


def _dump(out, batch) -> None:
    import json

    for e in batch:
        out.write(json.dumps({
            "app": e.application_name, "conn": e.conn_id, "db": e.database, "t": round(e.started_at, 6),
            "ms": round(e.duration * 1000, 3), "tx": e.tx_before + e.tx_after, "cmd": e.command, "rows": e.rows,
            "params": len(e.param_hashes), "result_rows": len(e.result_hashes), "pipelined": e.pipelined,
            "sqlstate": e.sqlstate, "sources": e.result_sources[:8], "sql": " ".join(e.sql.split())[:300]}) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated app names")
    parser.add_argument("--dsn", help="an existing server (superuser), instead of a throwaway one")
    parser.add_argument("--events", help="write every statement event here, a JSON object a line")
    parser.add_argument("--explain", help="comma-separated workloads whose findings (info too) are printed in full")
    args = parser.parse_args()

    from proxy.config import load
    from proxy.demo.embedded import EmbeddedPostgres
    from proxy.logs import configure
    from proxy.service.background import BackgroundApp

    configure("console", "error")
    apps = [a for a in all_apps() if not args.only or a.name in args.only.split(",")]
    skipped = [(a.name, why) for a in apps if (why := a.needs())]
    apps = [a for a in apps if not a.needs()]
    pg = None
    try:
        if args.dsn:
            server = args.dsn
        else:
            pg = EmbeddedPostgres().start()
            server = pg.dsn()
        settings = load(None, env={}, sections={"detectors": DETECTORS}, upstream=server, listen="127.0.0.1:0",
                        http="127.0.0.1:0", upstream_sslmode="disable", log_level="error",
                        workers=0)  # one process: "everything relayed is analysed" can be waited for exactly
        events = open(args.events, "w") if args.events else None  # noqa: SIM115 (closed below)
        background = BackgroundApp(settings, handlers=[lambda batch: _dump(events, batch)] if events else None)
        background.start()
        try:
            results = run_through(background, server, apps)
        finally:
            background.stop()
            if events is not None:
                events.close()
    finally:
        if pg is not None:
            pg.stop()
    print(report(results))
    for r in results:
        if args.explain and r.workload.name in args.explain.split(","):
            print(f"\n--- {r.workload.name}")
            for f in r.findings + r.below:
                print(f"  {f.kind}/{f.severity} {','.join(f.tables)} x{f.count} ({f.statements} statements): "
                      f"{f.message}\n      {f.example[:300]}")
    for name, why in skipped:
        print(f"skipped {name}: {why}")
    for r in results:
        if r.error:
            print(f"\n--- {r.workload.name} failed: {r.error}")
    problems = failing(results)
    if problems:
        print("\nbelow the bar: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
