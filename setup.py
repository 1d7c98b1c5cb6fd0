"""The compiled hot path: the modules ``proxy.COMPILED`` names, compiled by Cython when it and a C
compiler are there. Without either, pgloupe installs as pure Python (the same sources), and says so
(``pgloupe --version``, /healthz). Everything else about the package is in pyproject.toml."""

import ast
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """proxy.COMPILED, read from the source (setup.py must not import the package it builds)."""
    tree = ast.parse((ROOT / "proxy" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("proxy/__init__.py has no COMPILED tuple")


class OptionalBuildExt(build_ext):
    """A module that cannot be compiled stays pure Python: a warning, never a failed install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all (distutils' CCompilerError, PlatformError ...)
            self.warn(f"pgloupe: the compiled hot path was not built ({exc}); pure Python it is")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.warn(f"pgloupe: {ext.name} was not compiled ({exc}); its pure-Python source is used")


def extensions() -> list:
    if os.environ.get("PGLOUPE_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pgloupe: Cython is not installed; pure Python it is", file=sys.stderr)
        return []
    sources = [str(Path(*name.split(".")).with_suffix(".py")) for name in compiled_modules()]
    # Annotations stay documentation (as in the pure-Python fallback): C types come from the .pxd files only.
    return cythonize(sources, quiet=True, compiler_directives={"language_level": "3", "annotation_typing": False})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
