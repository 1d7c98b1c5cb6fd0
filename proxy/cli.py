"""The ``pgloupe`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

import structlog

from . import logs
from .app import App, install_uvloop, serve_forever
from .config import ConfigError, Settings, load
from .embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="HOST:PORT for PostgreSQL clients (env PGLOUPE_LISTEN; default 127.0.0.1:6432)")
    p.add_argument("--http", help="HOST:PORT for /healthz and, later, /metrics (env PGLOUPE_HTTP; default 127.0.0.1:9187)")
    p.add_argument("--config", help="TOML config file (env PGLOUPE_CONFIG)")
    p.add_argument("--log-format", choices=["console", "json"], help="log output (env PGLOUPE_LOG_FORMAT)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="(env PGLOUPE_LOG_LEVEL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgloupe", description="PostgreSQL wire-protocol proxy that finds query anti-patterns")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy in front of an upstream PostgreSQL")
    serve.add_argument("--upstream", help="postgresql://[user@]host:port/[db][?sslmode=...] (env PGLOUPE_UPSTREAM)")
    _common(serve)
    advise = sub.add_parser("advise", help="review a database's indexes and health, without the proxy")
    advise.add_argument("--dsn", help="postgresql://... of the database (env PGLOUPE_UPSTREAM)")
    advise.add_argument("--json", action="store_true", help="print the findings as JSON")
    advise.add_argument("--config", help="TOML config file; its [detectors] table sets the thresholds")
    demo = sub.add_parser("demo", help="start a throwaway PostgreSQL, put pgloupe in front and run a sample workload")
    demo.add_argument("--upstream", help="run against an existing database instead of a throwaway one")
    demo.add_argument("--once", action="store_true", help="exit after the workload instead of serving until Ctrl-C")
    _common(demo)
    return parser


def _settings(args, **overrides) -> Settings:
    values = dict(listen=args.listen, http=args.http, upstream=args.upstream,
                  log_format=args.log_format, log_level=args.log_level)
    values.update(overrides)
    return load(args.config, **values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_uvloop()
    if args.command == "demo":
        return demo(args)
    if args.command == "advise":
        return advise(args)
    try:
        settings = _settings(args)
        logs.configure(settings.log_format, settings.log_level)
        asyncio.run(serve_forever(App(settings)))
    except ConfigError as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pgloupe: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def advise(args) -> int:
    import json
    import os

    from detectors.config import DetectorConfig
    from detectors.review import review

    try:
        settings = load(args.config)
        config = DetectorConfig.from_mapping(settings.extra.get("detectors"))
    except (ConfigError, ValueError) as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        return 2
    dsn = args.dsn or os.environ.get("PGLOUPE_UPSTREAM") or os.environ.get("DATABASE_URL")
    if not dsn:
        print("pgloupe: advise needs --dsn postgresql://... (or PGLOUPE_UPSTREAM / DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(review(dsn, config))
    except Exception as exc:  # connection refused, authentication, permissions: say which, no traceback
        print(f"pgloupe: cannot review the database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    items = sorted((a.to_json(result.catalog.read_at) for a in result.advice),
                   key=lambda f: ({"critical": 0, "error": 1, "warning": 2, "info": 3}[f["severity"]], f["kind"]))
    if args.json:
        print(json.dumps({"findings": items, "ratios": result.ratios,
                          "hypopg": bool(result.catalog.hypopg), "tables": len(result.catalog.schema.tables)}, indent=2))
        return 0
    ratios = ", ".join(f"{k.replace('_', ' ')} {v:.1%}" for k, v in result.ratios.items() if v is not None)
    print(f"pgloupe advise: {len(result.catalog.schema.tables)} tables; {ratios or 'no statistics yet'}; "
          f"HypoPG {'on' if result.catalog.hypopg else 'not installed (index suggestions unverified)'}\n")
    if not items:
        print("  nothing to report")
    for f in items:
        print(f"  {f['severity']:8}  {f['kind']:22} {','.join(f['tables'])[:28]:28}  {f['message']}")
        print(f"  {'':8}  {'':22} {'':28}  -> {f['suggestion']}")
    return 0


def demo(args) -> int:
    logs.configure(args.log_format or "console", args.log_level or "warning")
    pg = None
    try:
        upstream = args.upstream
        if upstream is None:
            print("pgloupe demo: starting a throwaway PostgreSQL ...", flush=True)
            pg = EmbeddedPostgres().start()
            upstream = pg.dsn()
        settings = _settings(args, upstream=upstream)
    except (ConfigError, EmbeddedPostgresError) as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        if pg:
            pg.stop()
        return 2
    try:
        return asyncio.run(_demo(settings, args.once))
    except OSError as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        return 2
    finally:
        if pg is not None:
            pg.stop()
            print("pgloupe demo: throwaway PostgreSQL removed", flush=True)


async def _demo(settings: Settings, once: bool) -> int:
    import asyncpg

    captured: list = []
    app = App(settings, handlers=[captured.extend])
    try:
        await app.start()
    except OSError:
        # The default port is taken: pick free ones rather than fail a first run.
        await app.stop()
        settings.listen = f"127.0.0.1:{free_port()}"
        settings.http = f"127.0.0.1:{free_port()}" if settings.http else None
        app = App(settings, handlers=[captured.extend])
        await app.start()
    host, port = settings.listen_address
    up = settings.upstream_target
    dsn = f"postgresql://{up.user or 'postgres'}@{host}:{app.proxy.port}/{up.database or 'postgres'}"
    print(f"pgloupe demo: proxy on {host}:{app.proxy.port} -> {up.describe()}", flush=True)
    if app.http:
        print(f"pgloupe demo: health at http://{app.http.host}:{app.http.port}/healthz", flush=True)
    try:
        conn = await asyncpg.connect(dsn, server_settings={"application_name": "pgloupe-demo"})
        try:
            await conn.execute(
                "DROP TABLE IF EXISTS demo_recipients, demo_activities; "
                "CREATE TABLE demo_recipients (id serial PRIMARY KEY, team_id int NOT NULL, email text); "
                "CREATE TABLE demo_activities (id serial PRIMARY KEY, team_id int NOT NULL, contact_id int, "
                "action text, metadata jsonb); "
                "INSERT INTO demo_recipients (team_id, email) SELECT 1, 'r' || g || '@example.com' "
                "FROM generate_series(1, 50) g")
            await app.refresh_schema()
            print("pgloupe demo: a campaign loop inserting one activity per recipient (seed 000 F1) ...", flush=True)
            recipients = await conn.fetch("SELECT id FROM demo_recipients WHERE team_id = $1", 1)
            for r in recipients:
                await conn.execute("INSERT INTO demo_activities (team_id, contact_id, action, metadata) "
                                   "VALUES ($1, $2, $3, $4)", 1, r["id"], "email_sent", '{"campaign": 1}')
            print("pgloupe demo: the fix: the same rows in one INSERT ...", flush=True)
            await conn.execute("INSERT INTO demo_activities (team_id, contact_id, action, metadata) "
                               "SELECT team_id, id, 'email_sent', '{}' FROM demo_recipients WHERE team_id = $1", 1)
            print("pgloupe demo: a feed with SELECT * over JSONB, and a lookup that forgets team_id ...", flush=True)
            await conn.fetch("SELECT * FROM demo_activities WHERE team_id = $1 LIMIT 20", 1)
            await conn.fetch("SELECT id FROM demo_recipients WHERE email = $1", "r7@example.com")
        finally:
            await conn.close()
        deadline = asyncio.get_running_loop().time() + 5
        while app.pipeline.events < app.queue.accepted and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await app.analyse(app.pipeline.flush)
        shapes = Counter(" ".join(e.sql.split())[:90] for e in captured)
        print("\n  calls  statement (as seen on the wire)")
        for sql, n in shapes.most_common(6):
            print(f"  {n:5d}  {sql}")
        print("\n  severity  kind                 count  where                 fix")
        for f in app.pipeline.findings.snapshot():
            print(f"  {f['severity']:8}  {f['kind']:20} {f['statements']:5d}  {','.join(f['tables'])[:20]:20}  "
                  f"{f['suggestion'][:110]}")
        print(f"\n  {len(captured)} statements seen, {app.queue.dropped} events dropped; "
              f"findings also at http://{app.http.host}:{app.http.port}/api/findings\n" if app.http else "\n",
              flush=True)
        if once:
            return 0
        print(f"pgloupe demo: serving; connect with psql -h {host} -p {app.proxy.port} -U postgres. Ctrl-C to stop.",
              flush=True)
        stop = asyncio.Event()
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        await app.stop()
        structlog.get_logger("pgloupe").debug("demo_stopped")


if __name__ == "__main__":
    sys.exit(main())
