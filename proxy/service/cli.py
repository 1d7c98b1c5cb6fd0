"""The ``pgloupe`` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from collections.abc import Callable

from proxy import logs
from proxy.config import ConfigError, Settings, load
from proxy.demo.embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port
from proxy.relay.listener import install_uvloop
from proxy.service.app import App
from proxy.service.background import serve_forever, tune_gc
from proxy.store import StoreError, backend_for, default_state_dir


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="HOST:PORT for PostgreSQL clients (env PGLOUPE_LISTEN; default 127.0.0.1:6432)")
    p.add_argument("--http", help="HOST:PORT for /healthz and, later, /metrics (env PGLOUPE_HTTP; default 127.0.0.1:9187)")
    p.add_argument("--config", help="TOML config file (env PGLOUPE_CONFIG)")
    p.add_argument("--log-format", choices=["console", "json"], help="log output (env PGLOUPE_LOG_FORMAT)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="(env PGLOUPE_LOG_LEVEL)")


def version_line() -> str:
    """pgloupe's version and which implementation of the hot path runs (compiled, or pure Python)."""
    import importlib.metadata

    import proxy

    try:
        version = importlib.metadata.version("pgloupe")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"pgloupe {version} ({proxy.implementation()}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgloupe", description="PostgreSQL wire-protocol proxy that finds query anti-patterns")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy in front of an upstream PostgreSQL")
    serve.add_argument("--upstream", help="postgresql://[user@]host:port/[db][?sslmode=...] (env PGLOUPE_UPSTREAM)")
    serve.add_argument("--store", help="findings store: postgresql://... shared by every replica, a SQLite file, or "
                       "memory (env PGLOUPE_STORE; default findings.sqlite3 in --state-dir)")
    serve.add_argument("--state-dir", help="directory of the SQLite findings store (env PGLOUPE_STATE_DIR; default "
                       "$XDG_STATE_HOME/pgloupe)")
    serve.add_argument("--workers", help="forwarding processes sharing the listen port, or auto (one per CPU, at "
                       "most 8); 0 forwards in the analysis process (env PGLOUPE_WORKERS; default auto)")
    _common(serve)
    advise = sub.add_parser("advise", help="review a database's indexes and health, without the proxy")
    advise.add_argument("--dsn", help="postgresql://... of the database (env PGLOUPE_UPSTREAM)")
    advise.add_argument("--json", action="store_true", help="print the findings as JSON")
    advise.add_argument("--config", help="TOML config file; its [detectors] table sets the thresholds")
    from proxy.service import gate

    gate.add_parsers(sub)
    mark = sub.add_parser("mark", help="record a deploy marker in the findings store",
                          description="Findings first seen after the latest deploy are shown as new.")
    mark.add_argument("--deploy", required=True, metavar="NAME", help="the deploy's name (a version, a commit)")
    mark.add_argument("--store", help="postgresql://... or a SQLite file (env PGLOUPE_STORE; default the "
                      "state directory's)")
    mark.add_argument("--state-dir", help="(env PGLOUPE_STATE_DIR; default $XDG_STATE_HOME/pgloupe)")
    mark.add_argument("--config", help="TOML config file (env PGLOUPE_CONFIG)")
    demo = sub.add_parser("demo", help="start a throwaway PostgreSQL, put pgloupe in front and run a sample workload")
    demo.add_argument("--upstream", help="run against an existing database instead of a throwaway one")
    demo.add_argument("--once", action="store_true", help="exit after the workload instead of serving until Ctrl-C")
    _common(demo)
    return parser


def _settings(args, **overrides) -> Settings:
    values = dict(listen=args.listen, http=args.http, upstream=args.upstream,
                  log_format=args.log_format, log_level=args.log_level, workers=getattr(args, "workers", None),
                  store=getattr(args, "store", None), state_dir=getattr(args, "state_dir", None))
    values.update(overrides)
    return load(args.config, defaults={"state_dir": default_state_dir()}, **values)


def mark(args) -> int:
    """``pgloupe mark --deploy NAME``: straight into the store, no proxy needed (a deploy job runs it)."""
    import socket
    import time

    try:
        settings = load(args.config, store=args.store, state_dir=args.state_dir,
                        defaults={"state_dir": default_state_dir()})
        backend = backend_for(settings)
        name = args.deploy.strip()[:200]
        if not name:
            raise ConfigError("--deploy needs a name")
        try:
            backend.connect()
            backend.migrate()
            with backend.transaction():
                backend.mark(name, time.time(), settings.store_replica or socket.gethostname(), "cli")
        finally:
            backend.close()
    except (ConfigError, StoreError) as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        return 2
    print(f"pgloupe: deploy {name} marked in {backend.describe()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_uvloop()
    if args.command in ("run", "report"):
        return args.gate(args)
    if args.command == "demo":
        return demo(args)
    if args.command == "advise":
        return advise(args)
    if args.command == "mark":
        return mark(args)
    try:
        settings = _settings(args)
        logs.configure(settings.log_format, settings.log_level)
        asyncio.run(serve_forever(App(settings), reread=lambda: _settings(args)))
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
    from detectors.database.review import review

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


DEMO_DATABASE = "pgloupe_demo"
DEMO_INSTALL = "pip install 'pgloupe[demo]'"


def _demo_requirements_missing() -> str | None:
    """The demo's workloads need a driver that plain pgloupe does not (the ``demo`` extra): say so
    before any server starts, rather than fail half-way through."""
    try:
        from proxy.demo import workloads  # noqa: F401  (imports psycopg and asyncpg)
    except ImportError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"pgloupe demo: its database drivers are not installed ({reason}); install them with: {DEMO_INSTALL}"
    return None


class _DemoSignals:
    """For the demo's lifetime SIGINT and SIGTERM mean one orderly stop: raised as KeyboardInterrupt
    in synchronous code, handed to ``on_signal`` while the event loop runs, and ignored once the
    clean-up has begun, so that a second Ctrl-C cannot leave the throwaway server behind."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.on_signal: Callable[[int], None] | None = None
        self.cleaning = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _DemoSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None or self.cleaning:
            return
        self.signum = signum
        if self.on_signal is not None:
            self.on_signal(signum)
        else:
            raise KeyboardInterrupt

    def interrupted(self) -> int:
        signum = self.signum or signal.SIGINT
        print(f"pgloupe demo: interrupted by {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
        return 128 + signum


def demo(args) -> int:
    """Seed-shaped schema, the anti-patterns and their fixes through the proxy, then the findings."""
    missing = _demo_requirements_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    logs.configure(args.log_format or "console", args.log_level or "error")
    with _DemoSignals() as signals:
        return _run_demo(args, signals)


def _run_demo(args, signals: _DemoSignals) -> int:
    """Every way out (error, exception, Ctrl-C, SIGTERM) goes through the finally that removes the server."""
    pg = None
    try:
        try:
            server = args.upstream
            if server is None:
                print("pgloupe demo: starting a throwaway PostgreSQL ...", flush=True)
                pg = EmbeddedPostgres()
                pg.start()  # cleans up after itself if it fails; pg is already set if it returns
                server = pg.dsn()
            database_url = _create_demo_database(server)
            # One process: the demo counts each workload's statements as soon as it has run.
            settings = _settings(args, upstream=database_url, workers=0,
                                 sections={"detectors": {"long_transaction_ms": [1000, 10000]}})
        except (ConfigError, EmbeddedPostgresError, OSError, RuntimeError) as exc:
            print(f"pgloupe: {exc}", file=sys.stderr)
            return 2
        try:
            return asyncio.run(_demo(settings, args.once, database_url, signals))
        except OSError as exc:
            print(f"pgloupe: {exc}", file=sys.stderr)
            return 2
        finally:
            signals.on_signal = None
    except KeyboardInterrupt:
        return signals.interrupted()
    finally:
        signals.cleaning = True
        if pg is not None and pg.base is not None:
            pg.stop()
            print("pgloupe demo: throwaway PostgreSQL removed", flush=True)


def _create_demo_database(server_url: str) -> str:
    """The demo works in its own database, so --upstream never touches an application's tables."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    except psycopg.Error as exc:
        raise RuntimeError(f"cannot create the {DEMO_DATABASE} database for the demo: {exc}".strip()) from exc
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{DEMO_DATABASE}"))


async def _start_app(settings: Settings, handlers) -> App:
    app = App(settings, handlers=handlers)
    try:
        await app.start()
    except OSError:
        # The default ports are taken: pick free ones rather than fail a first run.
        await app.stop()
        settings.listen = f"127.0.0.1:{free_port()}"
        settings.http = f"127.0.0.1:{free_port()}" if settings.http else None
        app = App(settings, handlers=handlers)
        await app.start()
    tune_gc()
    return app


async def _demo(settings: Settings, once: bool, database_url: str, signals: _DemoSignals) -> int:
    from urllib.parse import urlsplit, urlunsplit

    from proxy.demo.workloads import WORKLOADS, prepare

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stop = asyncio.Event()
    working = True

    def on_signal(signum: int) -> None:
        # While working, a signal cancels the work (a workload thread then fails on the closed proxy);
        # while serving, it is the way to stop. Either way the finally below stops the proxy.
        if not loop.is_closed():
            loop.call_soon_threadsafe(main.cancel if working else stop.set)

    signals.on_signal = on_signal
    app = None
    try:
        per_app: Counter = Counter()
        app = await _start_app(settings, [lambda batch: per_app.update(e.application_name for e in batch)])
        host, _ = settings.listen_address
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        proxy_url = urlunsplit(parts._replace(netloc=(netloc[0] + "@" if len(netloc) == 2 else "")
                                              + f"{host}:{app.port}"))
        print(f"pgloupe demo: proxy on {host}:{app.port} in front of {settings.upstream_target.describe()}"
              f" (database {DEMO_DATABASE})", flush=True)
        print("pgloupe demo: creating a schema modelled on the seeds (teams, contacts, campaigns, activities ...)",
              flush=True)
        await asyncio.to_thread(prepare, database_url, False)
        await app.reviews.refresh()
        by_name = {w.name: w for w in WORKLOADS}
        anti = [w for w in WORKLOADS if w.positive] + [by_name["activity-feed-keyset-page"]]
        fixes = [by_name[name] for name in dict.fromkeys(w.fixed_by for w in anti if w.fixed_by)]
        plan = [("anti-pattern", w) for w in anti] + [("fixed", w) for w in fixes]
        for i, (what, w) in enumerate(plan, 1):
            print(f"  [{i:2d}/{len(plan)}] {what:12} {w.name}" + (f"  (seed {w.seed})" if w.seed else ""), flush=True)
            await asyncio.to_thread(w.run, proxy_url)
        deadline = asyncio.get_running_loop().time() + 10
        while app.pipeline.events < app.queue.accepted and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await app.analysis.call(app.pipeline.flush)
        await app.reviews.refresh()  # the advisor, with the traffic just seen
        _print_findings(app.own_findings())
        print("\n  before -> after: statements sent for the same work")
        for w in anti:
            if w.fixed_by:
                print(f"  {per_app[w.name]:6d} -> {per_app[w.fixed_by]:<6d} {w.name} -> {w.fixed_by}")
        http = f"http://{app.http.host}:{app.http.port}" if app.http else None
        if http:
            print(f"\n  findings page {http}/   API {http}/api/findings   metrics {http}/metrics")
        print(f"  findings kept in {app.store.backend.describe()} (state_dir; the next run shows them again)")
        if once:
            return 0
        working = False
        print(f"\npgloupe demo: serving; psql -h {host} -p {app.port} -U postgres {DEMO_DATABASE}. "
              "Ctrl-C to stop.", flush=True)
        await stop.wait()
        return 0
    except asyncio.CancelledError:
        if signals.signum is None:
            raise
        return signals.interrupted()
    finally:
        working = False  # the proxy's own stop is not cancelled
        if app is not None:
            await app.stop()


def _print_findings(findings: list[dict]) -> None:
    print(f"\n  {'severity':8}  {'kind':22} {'where':34} {'count':>5} {'time ms':>9}  fix")
    for f in findings:
        where = ",".join(f["tables"]) or "-"
        if f["applications"]:
            where += " @" + ",".join(f["applications"])
        suggestion = " ".join(f["suggestion"].split())
        print(f"  {f['severity']:8}  {f['kind']:22} {where[:34]:34} {f['statements'] or f['count']:5d} "
              f"{f['total_ms']:9.1f}  {suggestion[:100]}")


if __name__ == "__main__":
    sys.exit(main())
