"""The layers of the code import one way (docs/architecture.md):

    service  ->  relay, workers, detectors  ->  protocol, events

``proxy/protocol`` is sans-IO (no event loop, socket, clock or thread), ``proxy/events.py`` is plain
data, ``detectors`` sees nothing of the proxy but its events, and nothing below ``service`` knows the
demo. Read from the source with ``ast``, so an import added anywhere (inside a function too) counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO = {"asyncio", "socket", "selectors", "ssl", "threading", "time", "subprocess", "asyncpg", "psycopg",
      "structlog", "uvloop"}
OWN = ("proxy", "detectors")


def _layer(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "detectors":
        return "detectors.database" if parts[1] == "database" else "detectors"
    return f"proxy.{parts[1]}"  # a sub-package, or a module of its own (events, config, logs, __main__)


def _imports(path: Path) -> list[str]:
    """Absolute names of every module the file imports (relative imports resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]  # from proxy import wire
    return names


def _own_layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] not in OWN:
        return None
    if parts[0] == "detectors":
        return "detectors.database" if parts[1:2] == ["database"] else "detectors"
    return f"proxy.{parts[1]}" if len(parts) > 1 else "proxy"


# layer -> the layers of its own it may import (itself always)
ALLOWED = {
    "proxy.__init__": set(),
    "proxy.events": set(),
    "proxy.config": set(),
    "proxy.logs": set(),
    "proxy.protocol": {"proxy.events"},
    "proxy.relay": {"proxy.protocol", "proxy.events", "proxy.config", "proxy.logs"},
    "proxy.workers": {"proxy.relay", "proxy.protocol", "proxy.events", "proxy.config", "proxy.logs"},
    "detectors": {"proxy.events"},
    "detectors.database": {"detectors", "proxy.events"},
    "proxy.store": {"proxy.config", "proxy.logs"},
    "proxy.service": {"proxy.relay", "proxy.workers", "proxy.protocol", "proxy.events", "proxy.config",
                      "proxy.logs", "detectors", "detectors.database", "proxy.demo", "proxy", "proxy.store"},
    "proxy.demo": {"proxy.service", "proxy.relay", "proxy.protocol", "proxy.events", "proxy.config",
                   "proxy.logs", "detectors", "detectors.database", "proxy", "proxy.store"},
    "proxy.__main__": {"proxy.service"},
}


def _sources() -> list[Path]:
    return [p for root in OWN for p in (ROOT / root).rglob("*.py") if "__pycache__" not in p.parts]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_one_way(path: Path):
    layer = _layer(path)
    assert layer in ALLOWED, f"{path}: a module outside the known layers ({layer}); add it to docs/architecture.md"
    allowed = ALLOWED[layer] | {layer}
    wrong = sorted({n for n in _imports(path) if (own := _own_layer(n)) is not None and own not in allowed
                    and not (own == "proxy" and n.count(".") == 0)})
    assert not wrong, f"{path.relative_to(ROOT)} ({layer}) imports {wrong}"


@pytest.mark.parametrize("path", [p for p in _sources() if _layer(p) in ("proxy.protocol", "proxy.events", "detectors")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_sans_io_layers_do_no_io(path: Path):
    """The protocol, the events and the pure detectors: bytes and values in, facts out; the caller owns
    sockets, loops, threads and clocks (detectors' findings store and traffic counters are read from the
    HTTP thread, so they hold a lock: ``threading`` is allowed there)."""
    io = IO - ({"threading", "time"} if _layer(path) == "detectors" else set())
    used = sorted({n.split(".")[0] for n in _imports(path)} & io)
    assert not used, f"{path.relative_to(ROOT)} imports {used}"


def test_the_service_keeps_the_demo_extra_out_of_a_plain_install():
    """``pgloupe serve`` must start without the demo extra (psycopg): the service reaches the demo's
    workloads only from inside the demo command."""
    for path in (ROOT / "proxy" / "service").glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proxy.demo.workloads"):
                pytest.fail(f"{path.name} imports the demo workloads at module level")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "psycopg" for a in node.names):
                pytest.fail(f"{path.name} imports psycopg at module level")


def test_the_prepared_statements_share_is_the_same_on_both_sides():
    from detectors.sizing import DEFAULT_ANALYSIS_MEMORY_MB, MEMORY_SHARES, share
    from proxy.config import PREPARED_SHARE, Settings, prepared_budget
    from proxy.protocol.prepared import DEFAULT_PREPARED_BYTES

    assert PREPARED_SHARE == MEMORY_SHARES["prepared_statements"]
    assert Settings().analysis_memory_mb == DEFAULT_ANALYSIS_MEMORY_MB
    assert prepared_budget(Settings()) == share(DEFAULT_ANALYSIS_MEMORY_MB, "prepared_statements") == DEFAULT_PREPARED_BYTES
