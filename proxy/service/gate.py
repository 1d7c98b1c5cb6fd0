"""CI gates: ``pgloupe run`` and ``pgloupe report --compare``.

``run`` puts a throwaway proxy in front of one command (a test suite, a seed script, a load test), so
the anti-patterns it sends fail the build the way a failing test does. ``report --compare`` reads two
of its reports and shows what a change did to the statements sent: "1000 INSERTs became 1".
Everything printed or written comes from findings and fingerprints, which hold normalized statements
only: no value that crossed the wire is ever shown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from detectors.config import ADVISOR_KINDS
from proxy import logs
from proxy.config import ConfigError, Settings, load, parse_upstream
from proxy.relay.listener import install_uvloop
from proxy.service.app import SEVERITY_RANK, App
from proxy.store import StoreError, default_state_dir

FAIL_ON = ("info", "warning", "error", "critical", "never")
DEFAULT_FAIL_ON = "error"
CLIENTS_GONE_S = 5.0  # connections the command left behind get this long to close
CATCH_UP_S = 30.0  # analysis gets this long to reach the last statement
FAIL, BASELINED, PASS, OUTSIDE = "FAIL", "base", "", "out"
TRAFFIC_ADVICE = frozenset({"missing_index", "missing_tenant_index"})  # advice about the statements sent
JUDGE = ("traffic", "database")
BASELINE_FORMAT = 1
# Query parameters of the original URL that would point the command past the proxy, or ask the
# proxy for TLS it does not offer.
_ROUTING_PARAMS = frozenset({"host", "hostaddr", "port"})
_TLS_PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir", "sslpassword",
                         "sslnegotiation", "requiressl"})
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class GateError(Exception):
    """A usage or set-up problem: reported in one line, exit code 2 (127/126 for a command that cannot run)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ argument parsing


def add_parsers(sub) -> None:
    """Register ``run`` and ``report`` on the ``pgloupe`` subparsers; each sets ``args.gate`` to its handler."""
    run_p = sub.add_parser(
        "run", help="run a command through a throwaway proxy and fail on its findings (CI gate)",
        description="Start pgloupe in front of --upstream (or $DATABASE_URL), run COMMAND with DATABASE_URL, "
                    "PGHOST and PGPORT pointing at it, then report the findings and exit non-zero on the "
                    "command's failure or on findings at or above --fail-on.")
    run_p.add_argument("--upstream", metavar="URL", help="postgresql://... of the database (default: $DATABASE_URL)")
    run_p.add_argument("--listen", metavar="HOST:PORT", help="HOST:PORT for the proxy (default: a free loopback port)")
    run_p.add_argument("--http", metavar="HOST:PORT", help="HOST:PORT for /healthz, /api/findings and /metrics during the run (default: off)")
    run_p.add_argument("--config", metavar="FILE", help="TOML config file (env PGLOUPE_CONFIG); [detectors] sets the thresholds")
    run_p.add_argument("--fail-on", choices=FAIL_ON, default=DEFAULT_FAIL_ON,
                       help=f"lowest severity that fails the run (default {DEFAULT_FAIL_ON}; never: report only)")
    run_p.add_argument("--report", metavar="FILE", help="write findings and per-statement calls as JSON")
    run_p.add_argument("--junit", metavar="FILE", help="write JUnit XML, one test case per finding")
    run_p.add_argument("--baseline", metavar="FILE", help="ignore findings listed in this --report or --write-baseline file")
    run_p.add_argument("--write-baseline", metavar="FILE", help="write this run's findings as a baseline file")
    run_p.add_argument("--store", metavar="URL",
                       help="judge against a findings store (postgresql://... or a SQLite file): fail only on what "
                            "it does not know, or knows as fixed; read only, unless --record")
    run_p.add_argument("--record", action="store_true",
                       help="with --store: write this run's findings into the store (say, on the main branch)")
    run_p.add_argument("--judge", choices=JUDGE, default="traffic",
                       help="traffic (default): fail on what the command sent and on the indexes its own "
                            "statements lack; database: on every catalog finding too (duplicate or unused "
                            "indexes, ratios)")
    run_p.add_argument("--log-format", choices=["console", "json"], help="log output (env PGLOUPE_LOG_FORMAT)")
    run_p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="(env PGLOUPE_LOG_LEVEL; default warning)")
    run_p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command to run, after --")
    run_p.set_defaults(gate=run)
    report_p = sub.add_parser("report", help="compare two `pgloupe run --report` files",
                              description="Per statement shape: calls and total time before -> after.")
    report_p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), required=True,
                          help="two JSON files written by pgloupe run --report")
    report_p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    report_p.set_defaults(gate=report)


def main(argv: list[str] | None = None) -> int:
    """``pgloupe run|report`` on their own, until proxy/cli.py registers them (and for tests)."""
    parser = argparse.ArgumentParser(prog="pgloupe")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    install_uvloop()
    return args.gate(args)


# ------------------------------------------------------------------ pgloupe run


@dataclass
class Outcome:
    """What one run produced, for the table, the files and the exit code."""

    command: list[str]
    exit_code: int  # the command's, 128 + signal when a signal ended it
    findings: list[dict] = field(default_factory=list)
    statements: list[dict] = field(default_factory=list)
    dropped: int = 0
    unanalysed: int = 0
    known: set = field(default_factory=set)  # (kind, fingerprint) the store knew, and not as fixed


def run(args) -> int:
    """``pgloupe run``: set up, run the command through the proxy, report, and pick the exit code."""
    try:
        command = _command(args.cmd)
        upstream = _upstream(args.upstream)
        baseline = load_baseline(args.baseline) if args.baseline else set()
        if getattr(args, "record", False) and not getattr(args, "store", None):
            raise GateError("--record needs --store: the store to record this run's findings in")
        settings = _run_settings(args, upstream)
        logs.configure(settings.log_format, settings.log_level)
        outcome = asyncio.run(_gate(settings, command, bool(getattr(args, "store", None)),
                                    getattr(args, "record", False)))
        baseline = baseline | outcome.known
    except (GateError, ConfigError) as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        return getattr(exc, "code", 2)
    except KeyboardInterrupt:
        print("pgloupe: interrupted", file=sys.stderr)
        return 130
    touched = None if getattr(args, "judge", "traffic") == "database" else touched_tables(outcome.statements)
    verdicts = judge(outcome.findings, baseline, args.fail_on, touched)
    code = exit_code(outcome.exit_code, verdicts)
    print(render_findings(outcome, verdicts, args.fail_on, code), flush=True)
    try:
        _write_outputs(args, outcome, verdicts, code)
    except OSError as exc:
        print(f"pgloupe: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return code


def _command(argv: list[str]) -> list[str]:
    """argparse keeps the ``--`` that separates pgloupe's flags from the command's."""
    command = argv[1:] if argv[:1] == ["--"] else list(argv)
    if not command:
        raise GateError("run needs a command: pgloupe run [options] -- COMMAND [ARGS ...]")
    _check_runnable(command[0])
    return command


def _check_runnable(program: str) -> None:
    """Fail before starting anything, with the shell's exit codes, when the command cannot run."""
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        raise GateError(f"command not found: {program}", 127)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise GateError(f"cannot execute {program}: permission denied", 126)


def _upstream(flag: str | None) -> str:
    """The database the command would have used: --upstream, else the DATABASE_URL it would have read."""
    url = flag or os.environ.get("DATABASE_URL")
    if not url:
        raise GateError("run needs the database: --upstream postgresql://... or DATABASE_URL in the environment")
    parse_upstream(url)  # a ConfigError names what is wrong with it
    return url


def _run_settings(args, upstream: str) -> Settings:
    """Like serve's settings, but a free port, no HTTP endpoint and quiet logs unless asked for."""
    level = args.log_level or os.environ.get("PGLOUPE_LOG_LEVEL") or "warning"
    # One process: the gate waits for every statement of the command to be analysed, which is exact
    # only when the forwarding side is in the same process.
    settings = load(args.config, upstream=upstream, listen=args.listen or "127.0.0.1:0", http=args.http or "",
                    log_format=args.log_format, log_level=level, workers=0, defaults={"state_dir": default_state_dir()})
    # Only --store names the store the gate judges by, or writes with --record: a store = line or
    # PGLOUPE_STORE meant for serve must not turn every CI run into a writer of the shared store.
    settings.store = getattr(args, "store", None) or _own_store(settings.state_dir)
    return settings


def _own_store(state_dir: str | None) -> str:
    """Without --store, the run's findings go to the SQLite store of the state directory (a developer's
    history of runs), or, where it cannot be written (a CI container without a home), to memory."""
    if state_dir:
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            if os.access(state_dir, os.W_OK):
                return str(Path(state_dir) / "findings.sqlite3")
        except OSError:
            pass
        print(f"pgloupe: state_dir {state_dir} is not writable: this run's findings are kept in memory only",
              file=sys.stderr, flush=True)
    return "memory"


async def _gate(settings: Settings, command: list[str], judge_by_store: bool = False, record: bool = False) -> Outcome:
    """Proxy up, catalog read, command run, analysis settled: the findings of exactly this command.

    With ``judge_by_store``, what the store knows before the command runs (and not as fixed) is
    ``known``; the run's own findings go into it only with ``record``."""
    app = App(settings)
    if judge_by_store and not record:
        app.store.read_only()
    try:
        try:
            await app.start()
        except OSError as exc:
            raise GateError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from exc
        known: set = set()
        if judge_by_store:
            if not app.store.connected:
                raise GateError(f"cannot judge against the findings store: {app.store.last_error}")
            try:
                stored = await asyncio.to_thread(app.store.call, app.store.backend.read)
            except (StoreError, TimeoutError) as exc:
                raise GateError(f"cannot read the findings store: {exc}") from exc
            known = {key for key, record in stored.items() if record["state"] != "fixed"}
        if not await app.reviews.refresh():
            print("pgloupe: cannot read the upstream catalog yet; tenant and index checks wait for it",
                  file=sys.stderr, flush=True)
        host, _ = settings.listen_address
        env = child_env(settings.upstream, _connect_host(host), app.port, bool(settings.tls_cert), os.environ)
        code = await run_child(command, env)
        unanalysed = await settle(app)
        findings = app.own_findings()
        statements = await app.analysis.call(statement_rows, app.pipeline)
        if record:  # the main branch's run: recorded now, or the job says it was not
            try:
                recorded = await asyncio.to_thread(app.store.flush_now, 30.0)
            except TimeoutError:
                recorded = False
            if not recorded:
                raise GateError(f"could not record this run's findings in the store: {app.store.last_error}")
        return Outcome(command, code, findings, statements, app.queue.dropped, unanalysed, known)
    finally:
        await app.stop()


def _connect_host(host: str) -> str:
    """A wildcard listen address is not one to connect to: use loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def proxy_url(url: str, host: str, port: int, tls: bool = False) -> str:
    """The command's URL with the proxy as host and port: same user, password, database and options."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    drop = _ROUTING_PARAMS | (frozenset() if tls else _TLS_PARAMS)
    # Filter the raw pairs rather than re-encode them: the options keep their exact escaping.
    query = "&".join(p for p in parts.query.split("&") if p and unquote(p.partition("=")[0]) not in drop)
    return urlunsplit((parts.scheme, f"{userinfo}{at}{hostport}", parts.path, query, parts.fragment))


def child_env(url: str, host: str, port: int, tls: bool, environ) -> dict[str, str]:
    """The command's environment: DATABASE_URL and libpq's PG* variables lead to the proxy."""
    env = dict(environ)
    env["DATABASE_URL"] = proxy_url(url, host, port, tls)
    env["PGHOST"], env["PGPORT"] = host, str(port)
    env.pop("PGHOSTADDR", None)  # libpq would connect there instead of PGHOST
    target = parse_upstream(url)
    if target.database:
        env.setdefault("PGDATABASE", target.database)
    if target.user:
        env.setdefault("PGUSER", target.user)
    if not tls and env.get("PGSSLMODE") in ("require", "verify-ca", "verify-full"):
        env["PGSSLMODE"] = "disable"  # the proxy offers no TLS; it still uses TLS to the server as configured
    return env


async def run_child(command: list[str], env: dict[str, str]) -> int:
    """Run the command with our stdin/stdout/stderr (its output streams as usual), forwarding signals."""
    sys.stdout.flush()
    sys.stderr.flush()
    child: list = []  # the process, once started: a signal can arrive while it starts
    restore = _forward_signals(child)
    try:
        try:
            child.append(await asyncio.create_subprocess_exec(*command, env=env))
        except FileNotFoundError as exc:  # checked before, but the PATH may change under us
            raise GateError(f"command not found: {command[0]}", 127) from exc
        except PermissionError as exc:
            raise GateError(f"cannot execute {command[0]}: permission denied", 126) from exc
        code = await child[0].wait()
    finally:
        restore()
    return 128 - code if code < 0 else code


def _forward_signals(child: list) -> Callable[[], None]:
    """Ctrl-C and SIGTERM go to the command, which decides how to stop; pgloupe reports after it exits."""
    loop = asyncio.get_running_loop()

    def forward(sig: int) -> None:
        if sig == signal.SIGINT and _terminal_sent_sigint():
            return  # the terminal signalled the command's process group too: a second SIGINT would cut its clean-up
        if not child:
            loop.call_later(0.05, forward, sig)  # still starting: deliver it once it runs
            return
        with contextlib.suppress(ProcessLookupError):
            child[0].send_signal(sig)

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, forward, sig)

    def restore() -> None:
        for sig in sigs:
            loop.remove_signal_handler(sig)
    return restore


def _terminal_sent_sigint() -> bool:
    """True when we are the terminal's foreground process group: Ctrl-C reached the command already."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


async def settle(app: App) -> int:
    """Wait for the last statements to be analysed, close open units, re-run the advisor on what was seen.

    Returns how many accepted events were still unanalysed at the deadline (normally 0).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLIENTS_GONE_S
    while app.proxy.clients and loop.time() < deadline:
        await asyncio.sleep(0.05)
    deadline = loop.time() + CATCH_UP_S
    while app.pipeline.events < app.queue.accepted and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await app.analysis.call(app.pipeline.flush)
    await app.reviews.refresh()
    return max(0, app.queue.accepted - app.pipeline.events)


def statement_rows(pipeline) -> list[dict]:
    """On the analysis thread: per fingerprint, what pg_stat_statements would show, busiest first."""
    rows = [{"fingerprint": st.fp.id, "text": st.fp.text, "kind": st.fp.kind, "tables": list(st.fp.tables),
             "databases": sorted(st.databases), "calls": st.calls, "total_ms": round(st.total_s * 1000, 3),
             "rows": st.rows}
            for st in pipeline.observed()]
    rows.sort(key=lambda r: (-r["total_ms"], -r["calls"], r["fingerprint"]))
    return rows


def touched_tables(statements: list[dict]) -> set[tuple[str | None, str]]:
    """(database, table) the command's own statements named, and (None, table) for each table."""
    out: set[tuple[str | None, str]] = set()
    for s in statements:
        for t in s["tables"]:
            out.add((None, t))
            out.update((db, t) for db in s.get("databases", ()))
    return out


def _judged(f: dict, touched: set[tuple[str | None, str]] | None) -> bool:
    """Whether the gate judges a finding: everything the command sent; of the catalog's advice, the index
    its own statements lack, on the tables and databases they used. The rest of the advice (a duplicate or
    unused index, ratios, saturation) is the database's state, not the command's doing: reported only,
    unless --judge database."""
    if touched is None or f["kind"] not in ADVISOR_KINDS:
        return True
    if f["kind"] not in TRAFFIC_ADVICE:
        return False
    databases = f.get("databases") or [None]
    return any((db, t) in touched for db in databases for t in f["tables"])


def judge(findings: list[dict], baseline: set[tuple[str, str]], fail_on: str,
          touched: set[tuple[str | None, str]] | None = None) -> list[str]:
    """Per finding: FAIL (at or above --fail-on, not baselined), BASELINED, OUTSIDE (not the command's
    doing, with ``touched``, see ``_judged``), or PASS."""
    floor = SEVERITY_RANK.get(fail_on)  # None for "never"
    verdicts = []
    for f in findings:
        if (f["kind"], f["fingerprint"]) in baseline:
            verdicts.append(BASELINED)
        elif not _judged(f, touched):
            verdicts.append(OUTSIDE)
        elif floor is not None and SEVERITY_RANK[f["severity"]] >= floor:
            verdicts.append(FAIL)
        else:
            verdicts.append(PASS)
    return verdicts


def exit_code(command_code: int, verdicts: list[str]) -> int:
    """The command's failure wins (it is what broke); then findings; else success."""
    if command_code != 0:
        return command_code
    return 1 if FAIL in verdicts else 0


# ------------------------------------------------------------------ output of run


def _width() -> int:
    """The terminal's width; CI logs (no terminal) are read in wide browser panes."""
    return shutil.get_terminal_size((160, 24)).columns


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:max(0, width - 3)] + "..."


def render_findings(outcome: Outcome, verdicts: list[str], fail_on: str, code: int) -> str:
    """The terminal table: one line per finding, the suggestion cut to the terminal's width."""
    width = _width()
    calls = sum(s["calls"] for s in outcome.statements)
    lines = [f"\npgloupe: {_cut(' '.join(outcome.command), 60)} exited {outcome.exit_code}; "
             f"{_plural(calls, 'statement')} in {_plural(len(outcome.statements), 'shape')}; "
             f"{_plural(len(outcome.findings), 'finding')}"]
    if outcome.dropped or outcome.unanalysed:
        lines.append(f"pgloupe: {outcome.dropped} events dropped, {outcome.unanalysed} not analysed in time: "
                     "findings may be incomplete")
    if outcome.findings:
        head = f"  {'gate':4}  {'severity':8}  {'kind':24}  {'tables':24}  {'count':>5}  {'stmts':>6}  {'total ms':>9}  "
        lines.append(head + "suggestion")
        room = max(30, width - len(head))
        for f, verdict in zip(outcome.findings, verdicts, strict=True):
            lines.append(f"  {verdict:4}  {f['severity']:8}  {_cut(f['kind'], 24):24}  "
                         f"{_cut(','.join(f['tables']) or '-', 24):24}  {f['count']:>5}  {f['statements']:>6}  "
                         f"{f['total_ms']:>9.1f}  {_cut(f['suggestion'], room)}")
    lines.append(_verdict_line(outcome.exit_code, verdicts, fail_on, code))
    return "\n".join(lines)


def _verdict_line(command_code: int, verdicts: list[str], fail_on: str, code: int) -> str:
    failing, baselined, outside = verdicts.count(FAIL), verdicts.count(BASELINED), verdicts.count(OUTSIDE)
    base = f" ({baselined} in the baseline)" if baselined else ""
    if outside:
        base += f" ({_plural(outside, 'catalog finding')} about the database, not the command's statements: not judged)"
    if command_code:
        return (f"pgloupe: the command failed (exit {command_code}); "
                f"{_plural(failing, 'finding')} at or above {fail_on}{base}")
    if code:
        return f"pgloupe: FAILED: {_plural(failing, 'finding')} at or above {fail_on} not in the baseline{base}"
    return f"pgloupe: passed (fail-on {fail_on}){base}"


def _write_outputs(args, outcome: Outcome, verdicts: list[str], code: int) -> None:
    """Every file asked for, written whatever the verdict: a failed run is when they are needed most."""
    if args.report:
        _write_json(args.report, report_json(outcome, verdicts, args.fail_on, code))
    if args.junit:
        Path(args.junit).write_bytes(junit_xml(outcome.findings, verdicts))
    if args.write_baseline:
        _write_json(args.write_baseline, baseline_json(outcome.findings))


def _write_json(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def report_json(outcome: Outcome, verdicts: list[str], fail_on: str, code: int) -> dict:
    """The --report document; it also serves as a baseline and as input to ``report --compare``."""
    findings = [{**f, "baselined": v == BASELINED, "failing": v == FAIL, "judged": v != OUTSIDE}
                for f, v in zip(outcome.findings, verdicts, strict=True)]
    return {"findings": findings, "statements": outcome.statements, "command": outcome.command,
            "exit_code": outcome.exit_code, "pgloupe_exit_code": code, "fail_on": fail_on,
            "events_dropped": outcome.dropped}


def baseline_json(findings: list[dict]) -> dict:
    """Only what identifies a finding, and enough to tell a reviewer what was accepted."""
    keep = ("kind", "fingerprint", "severity", "tables", "message")
    return {"pgloupe_baseline": BASELINE_FORMAT, "findings": [{k: f[k] for k in keep} for f in findings]}


def load_baseline(path: str) -> set[tuple[str, str]]:
    """(kind, fingerprint) pairs from a --write-baseline or --report file; a missing file is an error."""
    data = _read_json(path, "baseline")
    items = data.get("findings") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(f, dict) and "kind" in f and "fingerprint" in f
                                              for f in items):
        raise GateError(f"baseline {path} is not a pgloupe report or baseline (no findings with kind and fingerprint)")
    return {(f["kind"], f["fingerprint"]) for f in items}


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise GateError(f"{what} file {path} does not exist") from exc
    except OSError as exc:
        raise GateError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise GateError(f"{what} file {path} is not valid JSON: {exc}") from exc


def _xml_text(text) -> str:
    """XML 1.0 cannot carry most control characters, even escaped."""
    return _XML_ILLEGAL.sub("?", str(text))


def junit_xml(findings: list[dict], verdicts: list[str]) -> bytes:
    """JUnit XML for CI test reports: a failing test case per finding that fails the gate."""
    root = ET.Element("testsuites", name="pgloupe")
    suite = ET.SubElement(root, "testsuite", name="pgloupe", tests=str(max(1, len(findings))),
                          failures=str(verdicts.count(FAIL)), errors="0", skipped="0")
    for f, verdict in zip(findings, verdicts, strict=True):
        name = f"{f['kind']} {','.join(f['tables']) or '-'} {f['fingerprint']}"
        case = ET.SubElement(suite, "testcase", classname=f["kind"], name=_xml_text(name))
        if verdict == FAIL:
            failure = ET.SubElement(case, "failure", message=_xml_text(f["message"]), type=f["severity"])
            failure.text = _xml_text(f"{f['message']}\n\nSuggestion: {f['suggestion']}\n\nExample: {f['example']}")
        else:
            note = ("in the baseline" if verdict == BASELINED else "the database's state, not judged"
                    if verdict == OUTSIDE else f"severity {f['severity']}, below the gate")
            ET.SubElement(case, "system-out").text = _xml_text(f"{note}: {f['message']}")
    if not findings:
        ET.SubElement(suite, "testcase", classname="pgloupe", name="no findings")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# ------------------------------------------------------------------ pgloupe report --compare


def report(args) -> int:
    """``pgloupe report --compare BEFORE AFTER``: what a change did to the statements sent."""
    try:
        before, after = (load_report(p) for p in args.compare)
    except GateError as exc:
        print(f"pgloupe: {exc}", file=sys.stderr)
        return 2
    result = compare(before, after)
    result["before"]["file"], result["after"]["file"] = args.compare
    print(json.dumps(result, indent=2) if args.json else render_compare(result))
    return 0


def load_report(path: str) -> dict:
    """A --report file, checked enough that comparing it cannot fail half-way."""
    data = _read_json(path, "report")
    rows = data.get("statements") if isinstance(data, dict) else None
    needed = ("fingerprint", "kind", "calls", "total_ms")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in needed) for r in rows):
        raise GateError(f"{path} is not a pgloupe run --report file (no statements with fingerprint and calls)")
    findings = data.get("findings")
    return {"statements": rows, "findings": findings if isinstance(findings, list) else []}


def compare(before: dict, after: dict) -> dict:
    """Per shape, per statement kind and in total: calls and time before and after."""
    shapes = _shape_changes(before["statements"], after["statements"])
    return {
        "before": _totals(before["statements"]),
        "after": _totals(after["statements"]),
        "by_kind": _kind_changes(before["statements"], after["statements"]),
        "shapes": shapes,
        "findings": _finding_changes(before["findings"], after["findings"]),
    }


def _totals(rows: list[dict]) -> dict:
    return {"statements": sum(r["calls"] for r in rows), "total_ms": round(sum(r["total_ms"] for r in rows), 3),
            "shapes": len(rows)}


def _shape_changes(before: list[dict], after: list[dict]) -> list[dict]:
    """One entry per fingerprint, biggest change in calls first, then in time."""
    old, new = {r["fingerprint"]: r for r in before}, {r["fingerprint"]: r for r in after}
    changes = []
    for fp in old.keys() | new.keys():
        b, a = old.get(fp), new.get(fp)
        ref = a or b
        calls_b, calls_a = (b or {}).get("calls", 0), (a or {}).get("calls", 0)
        ms_b, ms_a = (b or {}).get("total_ms", 0.0), (a or {}).get("total_ms", 0.0)
        status = "added" if b is None else "removed" if a is None else "changed" if calls_a != calls_b else "same calls"
        changes.append({"fingerprint": fp, "kind": ref["kind"], "tables": ref.get("tables", []),
                        "text": ref.get("text", ""), "status": status,
                        "calls_before": calls_b, "calls_after": calls_a, "calls_delta": calls_a - calls_b,
                        "total_ms_before": ms_b, "total_ms_after": ms_a,
                        "total_ms_delta": round(ms_a - ms_b, 3)})
    changes.sort(key=lambda c: (-abs(c["calls_delta"]), -abs(c["total_ms_delta"]), c["fingerprint"]))
    return changes


def _kind_changes(before: list[dict], after: list[dict]) -> list[dict]:
    """Statements per kind (SELECT, INSERT ...), the kinds that changed most first."""
    def count(rows):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["kind"]] = counts.get(r["kind"], 0) + r["calls"]
        return counts
    old, new = count(before), count(after)
    kinds = [{"kind": k, "before": old.get(k, 0), "after": new.get(k, 0), "delta": new.get(k, 0) - old.get(k, 0)}
             for k in old.keys() | new.keys()]
    kinds.sort(key=lambda k: (-abs(k["delta"]), k["kind"]))
    return kinds


def _finding_changes(before: list[dict], after: list[dict]) -> dict:
    """Findings fixed by the change and findings it brought, by (kind, fingerprint)."""
    def keyed(items):
        return {(f.get("kind"), f.get("fingerprint")): f for f in items if isinstance(f, dict)}
    old, new = keyed(before), keyed(after)

    def brief(f):
        return {"kind": f.get("kind"), "fingerprint": f.get("fingerprint"), "severity": f.get("severity"),
                "tables": f.get("tables", [])}
    return {"fixed": [brief(old[k]) for k in sorted(old.keys() - new.keys(), key=str)],
            "new": [brief(new[k]) for k in sorted(new.keys() - old.keys(), key=str)]}


def _plural(n: int, kind: str) -> str:
    return f"{n} {kind}{'' if n == 1 else 's'}"


def render_compare(result: dict) -> str:
    """Totals first (what a reviewer wants to know), then each shape's change."""
    b, a = result["before"], result["after"]
    lines = [f"pgloupe report: {b.get('file', 'before')} -> {a.get('file', 'after')}",
             f"  statements  {b['statements']} -> {a['statements']}  ({a['statements'] - b['statements']:+d})",
             f"  time        {b['total_ms']:.1f} ms -> {a['total_ms']:.1f} ms  ({a['total_ms'] - b['total_ms']:+.1f} ms"
             + (f", {(a['total_ms'] - b['total_ms']) / b['total_ms']:+.0%})" if b["total_ms"] else ")")]
    for k in result["by_kind"]:
        if k["delta"]:
            lines.append(f"  {_plural(k['before'], k['kind'])} became {k['after']}")
    lines += _render_finding_changes(result["findings"])
    lines += _render_shapes(result["shapes"])
    return "\n".join(lines)


def _render_finding_changes(changes: dict) -> list[str]:
    lines = []
    for label in ("fixed", "new"):
        for f in changes[label]:
            lines.append(f"  {label} finding: {f['kind']} ({','.join(f['tables']) or '-'}) {f['fingerprint']}")
    return lines


def _render_shapes(shapes: list[dict]) -> list[str]:
    if not shapes:
        return ["\n  no statements in either report"]
    width = _width()
    head = (f"  {'calls before':>12} -> {'after':<9}  {'delta':>7}  {'ms before':>12} -> {'after':<9}  {'delta ms':>9}  "
            f"{'status':10}  ")
    room = max(30, width - len(head))
    lines = ["", head + "statement"]
    for s in shapes:
        lines.append(f"  {s['calls_before']:>12} -> {s['calls_after']:<9}  {s['calls_delta']:>+7d}  "
                     f"{s['total_ms_before']:>12.1f} -> {s['total_ms_after']:<9.1f}  {s['total_ms_delta']:>+9.1f}  "
                     f"{s['status']:10}  {_cut(s['text'] or s['kind'], room)}")
    return lines
