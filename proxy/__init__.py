"""pgloupe's proxy: the protocol, the relay, the workers, the service and the demo (docs/architecture.md).

The per-statement path (``COMPILED``) is compiled by Cython where a compiler was there at install
time (setup.py); each module's pure-Python source is the fallback. The source is also what runs
where its extension is older than it (edited since the build: a stale build never runs), and for
every module when ``PGLOUPE_PURE_PYTHON=1`` is in the environment (an escape hatch, and how the
equivalence test runs both)."""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder, SourceFileLoader
from importlib.util import find_spec, spec_from_file_location

COMPILED = (
    "proxy.protocol.wire", "proxy.protocol.framing", "proxy.protocol.hashing", "proxy.protocol.tracker",
    "proxy.protocol.capture", "proxy.protocol.replay", "proxy.protocol.sqlsplit", "proxy.protocol.prepared",
    "proxy.events",
    # the detectors' per-statement path, compiled as it is written (no .pxd): the interpreter's dispatch
    # goes, the objects stay Python (their attributes are read by code that is not compiled)
    "detectors.fingerprint", "detectors.pipeline", "detectors.units", "detectors.traffic", "detectors.bursts",
    "detectors.tracing", "detectors.tenancy", "detectors.rules", "detectors.schema", "detectors.values",
)


class SourceFirst:
    """A meta path finder for the ``COMPILED`` modules: their extension unless it is stale (its .py or
    .pxd is newer) or ``pure`` is asked for, else their .py source."""

    def __init__(self, pure: bool = False) -> None:
        self.pure = pure

    def find_spec(self, name, path=None, target=None):
        if name not in COMPILED:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None or spec.origin.endswith(".py"):
            return spec
        source = os.path.join(os.path.dirname(spec.origin), name.rpartition(".")[2] + ".py")
        try:
            built = os.stat(spec.origin).st_mtime
            stale = os.stat(source).st_mtime > built
        except OSError:  # an installed wheel may ship the extension alone
            return spec
        declarations = source[:-3] + ".pxd"  # Cython's types for it, when it has any
        stale = stale or (os.path.exists(declarations) and os.stat(declarations).st_mtime > built)
        if not (self.pure or stale):
            return spec
        return spec_from_file_location(name, source, loader=SourceFileLoader(name, source))


if not any(isinstance(f, SourceFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, SourceFirst(os.environ.get("PGLOUPE_PURE_PYTHON") == "1"))


def implementation() -> str:
    """"compiled" when every hot-path module runs as its extension, "pure Python" when none does
    ("mixed": a partial build)."""
    compiled = []
    for name in COMPILED:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else find_spec(name).origin
        compiled.append((origin or "").endswith((".so", ".pyd")))
    return "compiled" if all(compiled) else "pure Python" if not any(compiled) else "mixed"
