"""The README and docs/ cannot drift from the code: what they name must exist and what they tell a
user to run must run.

Checked without a server or the network: relative links (and their #anchors) resolve; repository
paths in backticks exist; every module of proxy/ and detectors/ is described in docs/architecture.md;
``make`` targets are in the Makefile; every ``pgloupe ...`` line of a ```sh block parses with the
real CLI parser, and flags named inline belong to their subcommand; benchmark and corpus scripts are
given only flags their ``--help`` lists; the settings table, the TOML examples and the ``[detectors]``
and ``[alerts]`` references match the code that reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_DIRS = ("proxy", "detectors", "tests", "bench", "scripts", "deploy", "grafana", "docs")

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
SPAN = re.compile(r"`([^`]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
REPO_PATH = re.compile(rf"^(?:{'|'.join(REPO_DIRS)})/[\w./-]*$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@functools.cache
def _text(path: Path) -> str:
    return path.read_text()


@functools.cache
def _prose(path: Path) -> str:
    """The document without its fenced code blocks (kept as blank lines, so headings stay put)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), _text(path))


def _blocks(path: Path, *langs: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(_text(path)) if not langs or m.group(1) in langs]


def _spans(text: str) -> list[str]:
    """Inline code spans (a span may wrap over a line break), whitespace normalized."""
    return [" ".join(s.split()) for s in SPAN.findall(text)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation out, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(_prose(path)):
        slug = _slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def _code_lines() -> list[tuple[Path, str]]:
    """Every line of every code block and every inline span, with its document."""
    out = []
    for doc in DOCS:
        out += [(doc, line) for block in _blocks(doc) for line in block.splitlines()]
        out += [(doc, span) for span in _spans(_prose(doc))]
    return out


# ----------------------------------------------------------------------------------------- links


def _links() -> list[tuple[Path, str]]:
    out = []
    for doc in DOCS:
        prose = SPAN.sub("", _prose(doc))  # a link inside `code` is not a link
        out += [(doc, target) for target in LINK.findall(prose)
                if not re.match(r"^[a-z][a-z+.-]*:", target)]  # http:, https:, mailto:
    return out


@pytest.mark.parametrize(("doc", "target"), _links(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_relative_links_resolve(doc: Path, target: str):
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    assert dest.is_relative_to(ROOT), f"{_rel(doc)}: {target} points outside the repository"
    assert dest.exists(), f"{_rel(doc)}: {target} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{_rel(doc)}: {target}: an anchor into a file that is not Markdown"
        assert anchor in _anchors(dest), (f"{_rel(doc)}: {target}: no heading of {_rel(dest)} has that anchor; "
                                          f"there are {sorted(_anchors(dest))}")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for d, t in _links() if d.name == "README.md"}
    missing = [_rel(p) for p in DOCS[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_the_readme_stays_a_one_sitting_read():
    lines = len(_text(ROOT / "README.md").splitlines())
    assert lines <= 230, f"README.md has {lines} lines; move the detail into docs/"


# ----------------------------------------------------------------------------------------- paths


def _paths() -> list[tuple[Path, str]]:
    return sorted({(doc, s) for doc in DOCS for s in _spans(_prose(doc)) if REPO_PATH.match(s)})


@pytest.mark.parametrize(("doc", "path"), _paths(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_paths_in_backticks_exist(doc: Path, path: str):
    assert (ROOT / path).exists(), f"{_rel(doc)} names `{path}`, which does not exist"


def _modules() -> list[Path]:
    return sorted(p for d in ("proxy", "detectors") for p in (ROOT / d).rglob("*.py")
                  if p.name != "__init__.py" and "__pycache__" not in p.parts)


@functools.cache
def _architecture_sections() -> list[tuple[set[str], set[str]]]:
    """(packages a heading names, the spans of its section) for each section of docs/architecture.md."""
    prose = _prose(ROOT / "docs" / "architecture.md")
    marks = list(HEADING.finditer(prose))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(prose)
        packages = {s.rstrip("/") if s.endswith("/") else str(Path(s).parent)
                    for s in _spans(m.group(2)) if REPO_PATH.match(s)}
        out.append((packages, set(_spans(prose[m.end():end]))))
    return out


@pytest.mark.parametrize("module", _modules(), ids=_rel)
def test_every_module_is_described_in_architecture(module: Path):
    rel = _rel(module)
    named = any(rel in _spans(_prose(doc)) for doc in DOCS)
    in_section = any(str(module.parent.relative_to(ROOT)) in packages and module.name in spans
                     for packages, spans in _architecture_sections())
    assert named or in_section, f"{rel} is not described in docs/architecture.md (under its package's heading)"


def test_modules_named_in_architecture_exist():
    wrong = [f"{s} (under {sorted(packages)})" for packages, spans in _architecture_sections() if packages
             for s in spans if re.fullmatch(r"\w+\.py", s) and not any((ROOT / p / s).exists() for p in packages)]
    assert not wrong, f"docs/architecture.md describes modules that do not exist: {wrong}"


def test_bench_scripts_are_documented():
    named = {s for doc in DOCS for s in _spans(_prose(doc))}
    missing = [_rel(p) for p in sorted((ROOT / "bench").glob("*.py")) if _rel(p) not in named]
    assert not missing, f"bench scripts no page names: {missing}"


_MODULE_RUN = re.compile(r"python3? -m ([\w.]+)")


def _module_runs() -> list[tuple[Path, str]]:
    return sorted({(doc, m) for doc, line in _code_lines() for m in _MODULE_RUN.findall(line)
                   if m.split(".")[0] in REPO_DIRS})


@pytest.mark.parametrize(("doc", "module"), _module_runs(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_python_dash_m_modules_exist(doc: Path, module: str):
    base = ROOT / module.replace(".", "/")
    assert base.with_suffix(".py").exists() or (base / "__main__.py").exists(), \
        f"{_rel(doc)}: python -m {module}: no such module"


# ------------------------------------------------------------------------------------------ make


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


def _make_uses() -> list[tuple[Path, str]]:
    return sorted({(doc, t) for doc, line in _code_lines() for t in re.findall(r"(?:^|\s)make ([a-z][\w-]*)", line)})


@pytest.mark.parametrize(("doc", "target"), _make_uses(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_make_targets_exist(doc: Path, target: str):
    assert target in _make_targets(), f"{_rel(doc)}: `make {target}`, but the Makefile has {sorted(_make_targets())}"


# ------------------------------------------------------------------------------ the pgloupe command


def _shell_commands(block: str) -> list[str]:
    """The commands of a sh block: continuation lines joined, comments and blank lines dropped."""
    out, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append(command)
    return out


def _pgloupe_argv(command: str) -> list[str] | None:
    """The arguments after ``pgloupe`` (or ``python -m proxy``), or None when the command runs something else."""
    command = re.sub(r"\$\([^)]*\)", "SUBSTITUTED", command)  # $(openssl rand ...) is one word to the shell
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):  # the first of ; && || | ends the command
        if word in (";", "&&", "||", "|"):
            words = words[:i]
            break
    while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
        words = words[1:]
    if words[:1] and Path(words[0]).name == "pgloupe":
        return words[1:]
    if len(words) >= 3 and Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "proxy"]:
        return words[3:]
    return None


def _pgloupe_commands() -> list[tuple[Path, str]]:
    return [(doc, command) for doc in DOCS for block in _blocks(doc, "sh", "bash", "shell")
            for command in _shell_commands(block) if _pgloupe_argv(command) is not None]


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    from proxy.service.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv), ""
        except SystemExit:
            return None, err.getvalue().strip()


@pytest.mark.parametrize(("doc", "command"), _pgloupe_commands(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_pgloupe_command_lines_parse(doc: Path, command: str):
    args, error = _parse(_pgloupe_argv(command))
    assert args is not None, f"{_rel(doc)}: `{command}` does not parse: {error}"
    if args.command == "run":
        assert args.cmd[:1] == ["--"] and len(args.cmd) > 1, f"{_rel(doc)}: `{command}`: the command goes after --"


def test_there_are_pgloupe_command_lines_to_check():
    kinds = {_pgloupe_argv(c)[0] for _, c in _pgloupe_commands()}
    assert {"serve", "run", "report", "advise", "demo"} <= kinds, kinds


@functools.cache
def _subcommand_flags() -> dict[str, frozenset[str]]:
    from proxy.service.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: frozenset(p._option_string_actions) for name, p in sub.choices.items()}


def _inline_pgloupe() -> list[tuple[Path, str]]:
    return sorted({(doc, s) for doc in DOCS for s in _spans(_prose(doc)) if re.match(r"^pgloupe [a-z-]", s)})


def _top_level_flags() -> frozenset[str]:
    from proxy.service.cli import build_parser

    return frozenset(build_parser()._option_string_actions)


@pytest.mark.parametrize(("doc", "span"), _inline_pgloupe(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_inline_pgloupe_commands_name_real_subcommands_and_flags(doc: Path, span: str):
    """Inline mentions (`pgloupe advise --dsn ...`, with [optional] parts and placeholders) cannot all be
    parsed, but their subcommand and every flag they name must exist."""
    words = span.split()
    if words[1].startswith("-"):  # pgloupe --version
        assert words[1] in _top_level_flags(), f"{_rel(doc)}: `{span}`: pgloupe has no {words[1]}"
        return
    assert words[1] in _subcommand_flags(), f"{_rel(doc)}: `{span}`: no subcommand {words[1]!r}"
    flags = {f for f in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", " ".join(words[2:]).split(" -- ")[0])}
    unknown = sorted(flags - _subcommand_flags()[words[1]])
    assert not unknown, f"{_rel(doc)}: `{span}`: pgloupe {words[1]} has no {unknown}"


# ------------------------------------------------------------------------- bench and corpus scripts


_SCRIPT = re.compile(r"(?:(?:\S*/)?python3? )?(?:(bench/\w+\.py)|-m (tests\.realapps\.run))\b(.*)")


def _script_lines() -> list[tuple[Path, str]]:
    return sorted({(doc, line.strip()) for doc, line in _code_lines() if _SCRIPT.search(line)})


@functools.cache
def _help(script: str) -> str:
    """``--help`` of a script that reads its flags with argparse (which exits before anything runs; a
    script without argparse would start its work instead, so it is never run here)."""
    path = ROOT / (script if script.endswith(".py") else script.replace(".", "/") + ".py")
    assert "argparse" in path.read_text(), f"{script} takes no flags"
    argv = [sys.executable, script, "--help"] if script.endswith(".py") else [sys.executable, "-m", script, "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{script} --help failed: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.parametrize(("doc", "line"), _script_lines(), ids=lambda v: _rel(v) if isinstance(v, Path) else v)
def test_script_flags_are_in_their_help(doc: Path, line: str):
    m = _SCRIPT.search(line)
    script = m.group(1) or m.group(2)
    assert (ROOT / (script if script.endswith(".py") else script.replace(".", "/") + ".py")).exists(), \
        f"{_rel(doc)}: `{line}`: no {script}"
    flags = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(3))
    if not flags:
        return
    listed = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", _help(script)))
    unknown = sorted(set(flags) - listed)
    assert not unknown, f"{_rel(doc)}: `{line}`: {script} --help does not list {unknown}"


# ----------------------------------------------------------------------------------- configuration


def _settings_table() -> set[str]:
    prose = _prose(ROOT / "docs" / "configuration.md")
    section = prose.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in _spans(row.split("|")[1])}


def test_the_settings_table_lists_every_setting_and_only_those():
    from proxy.config import Settings

    fields = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    documented = _settings_table()
    assert not fields - documented, f"docs/configuration.md lacks settings {sorted(fields - documented)}"
    assert not documented - fields, f"docs/configuration.md documents unknown settings {sorted(documented - fields)}"


def _toml_blocks() -> list[tuple[Path, int, str]]:
    return [(doc, i, block) for doc in DOCS for i, block in enumerate(_blocks(doc, "toml"))]


@pytest.mark.parametrize(("doc", "index", "block"), _toml_blocks(),
                         ids=lambda v: _rel(v) if isinstance(v, Path) else (str(v) if isinstance(v, int) else "toml"))
def test_toml_examples_are_accepted(doc: Path, index: int, block: str, tmp_path: Path):
    from detectors.config import DetectorConfig
    from proxy.config import load
    from proxy.service.alerts import AlertConfig

    path = tmp_path / "pgloupe.toml"
    path.write_text(block)
    settings = load(str(path), env={})  # unknown top-level keys raise
    DetectorConfig.from_mapping(settings.extra.get("detectors"))  # unknown keys and kinds raise
    AlertConfig.from_mapping(settings.extra.get("alerts"))
    assert set(settings.extra) <= {"detectors", "alerts"}, f"{_rel(doc)}: tables {sorted(settings.extra)}"


def _documented_table_keys(table: str) -> set[str]:
    import tomllib

    keys: set[str] = set()
    for _, _, block in _toml_blocks():
        keys |= set(tomllib.loads(block).get(table, {}))
    return keys


def test_every_detector_setting_is_in_a_docs_example():
    from detectors.config import DetectorConfig

    fields = {f.name for f in dataclasses.fields(DetectorConfig)} - {"silenced_kinds", "silenced_fingerprints", "extra"}
    missing = (fields | {"silence"}) - _documented_table_keys("detectors")
    assert not missing, f"no [detectors] example in the docs shows {sorted(missing)}"


def test_every_alert_setting_is_in_a_docs_example():
    from proxy.service.alerts import AlertConfig

    fields = {f.name for f in dataclasses.fields(AlertConfig)}
    missing = fields - _documented_table_keys("alerts")
    assert not missing, f"no [alerts] example in the docs shows {sorted(missing)}"
