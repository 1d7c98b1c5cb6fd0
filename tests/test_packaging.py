"""What a plain ``pip install .`` and the container image get runs what they advertise.

``.venv-plain`` (made by scripts/setup.sh) holds pgloupe without extras: from it, the image's command
serves, and ``pgloupe demo`` says which extra it needs before it starts anything.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import psycopg
import pytest

from proxy.demo.embedded import free_port

from .leftovers import assert_nothing_left, clean_up, private_tmpdir

ROOT = Path(__file__).resolve().parent.parent
PLAIN_BIN = ROOT / ".venv-plain" / "bin"


@pytest.fixture(scope="module")
def plain_bin() -> Path:
    if not (PLAIN_BIN / "pgloupe").exists():
        pytest.skip(".venv-plain is missing: scripts/setup.sh (which `make test` runs) creates it")
    probe = subprocess.run([str(PLAIN_BIN / "python"), "-c", "import psycopg"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        pytest.fail(".venv-plain has psycopg, so it is not a plain install: remove it and run scripts/setup.sh")
    return PLAIN_BIN


@pytest.fixture
def tmpdir_for_servers():
    path = private_tmpdir()
    yield path
    clean_up(path)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.partition(" ") for line in lines if line and not line.startswith("#"))]


def test_demo_without_its_extra_says_what_to_install(plain_bin, tmpdir_for_servers):
    proc = subprocess.run([str(plain_bin / "pgloupe"), "demo", "--once", "--listen", "127.0.0.1:0", "--http",
                           "127.0.0.1:0"], cwd=tmpdir_for_servers, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{plain_bin}:/usr/bin:/bin", "TMPDIR": str(tmpdir_for_servers)})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    message = proc.stderr.strip()
    assert "\n" not in message and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert "psycopg" in message and "pip install 'pgloupe[demo]'" in message, message
    assert "starting a throwaway PostgreSQL" not in proc.stdout  # checked before any server starts
    assert_nothing_left(tmpdir_for_servers)


def test_the_image_command_runs_from_a_plain_install(plain_bin, pg, tmp_path):
    """ENTRYPOINT (and CMD) with the image's ENV, from the plain install: it serves, forwards, and stops
    cleanly on SIGTERM (what `docker stop` sends)."""
    instructions = dockerfile()
    command = json.loads([rest for word, rest in instructions if word == "ENTRYPOINT"][-1])
    command += next((json.loads(rest) for word, rest in reversed(instructions) if word == "CMD"), [])
    executable = shutil.which(command[0], path=str(plain_bin))
    assert executable, f"{command[0]} is not installed in .venv-plain"
    env = {"PATH": f"{plain_bin}:/usr/bin:/bin"}
    for word, rest in instructions:
        if word == "ENV":
            env.update((k, v.strip("\"'")) for k, v in re.findall(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S+)", rest))
    assert {"PGLOUPE_LISTEN", "PGLOUPE_HTTP"} <= env.keys()
    listen, http = free_port(), free_port()
    env.update(PGLOUPE_LISTEN=f"127.0.0.1:{listen}", PGLOUPE_HTTP=f"127.0.0.1:{http}", PGLOUPE_UPSTREAM=pg.dsn())
    log = tmp_path / "pgloupe.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([executable, *command[1:]], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"{command} exited {proc.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"/healthz did not answer 200 within 30 s:\n{log.read_text()}"
            time.sleep(0.1)
        with psycopg.connect(host="127.0.0.1", port=listen, user=pg.superuser, dbname=pg.database,
                             autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, f"{command} did not stop cleanly on SIGTERM:\n{log.read_text()}"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normal(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _optional(tree: ast.AST) -> set[int]:
    """The imports inside a ``try`` that catches ImportError: the code runs without them (``import cython``
    to tell whether the module was compiled)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h.type) for h in node.handlers):
            out |= {id(sub) for child in node.body for sub in ast.walk(child)
                    if isinstance(sub, (ast.Import, ast.ImportFrom))}
    return out


def _catches_import_error(caught: ast.expr | None) -> bool:
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _third_party_imports(paths) -> dict[str, set[str]]:
    """top-level module -> the files importing it, for modules outside the standard library and pgloupe
    (imports the code can do without left out)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text())
        optional = _optional(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("proxy", "detectors", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_image_installs_every_module_pgloupe_imports():
    """The runtime dependencies plus the extras the Dockerfile's pip install names provide every
    third-party module in proxy/ and detectors/ (the demo's psycopg comes from the demo extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run = [rest for word, rest in dockerfile() if word == "RUN" and "pip install" in rest]
    spec = re.search(r"pip install\s+['\"]?\.(?:\[([\w,\s-]*)\])?", run[0]) if run else None
    assert spec, f"no `pip install .` of the package in the Dockerfile: {run}"
    extras = [e.strip() for e in (spec.group(1) or "").split(",") if e.strip()]
    assert "demo" in extras, "the image does not install the demo extra, so `pgloupe demo` cannot run in it"
    installed = _requirement_names(project["dependencies"])
    for extra in extras:
        installed |= _requirement_names(project["optional-dependencies"][extra])
    distributions = importlib.metadata.packages_distributions()
    imports = _third_party_imports([*(ROOT / "proxy").rglob("*.py"), *(ROOT / "detectors").rglob("*.py")])
    assert imports, "found no third-party imports at all"
    missing = {module: sorted(files) for module, files in imports.items()
               if not {_normal(d) for d in distributions.get(module, [module])} & installed}
    assert not missing, f"imported but not installed by the image: {missing}"
