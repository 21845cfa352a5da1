"""Builds the compiled per-request modules (pyproject.toml declares everything else).

The modules named in ``dataplane.COMPILED_MODULES`` (the forwarding core, and the handlers and
accounting of the queue-proxy and the activator) are compiled with Cython; a ``.pxd`` file beside
a module declares its classes as extension types with typed attributes, or types a function's
locals. The ``.py`` files stay the one source: without a compiler, or with
``ZEROSERVE_PURE_PYTHON=1`` at build time, the same modules run as plain Python (slower per
request, same behaviour).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


def compiled_modules() -> tuple[str, ...]:
    """``COMPILED_MODULES`` of ``dataplane/__init__.py``, read without importing the package."""
    tree = ast.parse(Path(__file__).with_name("dataplane").joinpath("__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
            "COMPILED_MODULES"
        ]:
            return tuple(ast.literal_eval(node.value))
    raise SystemExit("dataplane/__init__.py: no COMPILED_MODULES tuple")


DIRECTIVES = {
    "language_level": 3,
    # types come from the .pxd files only: the annotations are for mypy
    "annotation_typing": False,
}


class OptionalBuildExt(build_ext):
    """A compiler that fails leaves the pure-Python modules in place, with a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers
            self._skip(exc)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(
            f"WARNING: the compiled modules were not built ({exc}); "
            "the pure-Python modules run instead (slower per request)",
            file=sys.stderr,
        )


def extensions() -> list[object]:
    if os.environ.get("ZEROSERVE_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print(
            "WARNING: Cython is not installed: the per-request modules stay pure Python",
            file=sys.stderr,
        )
        return []
    from setuptools import Extension

    mods = [Extension(m, [m.replace(".", "/") + ".py"]) for m in compiled_modules()]
    return list(cythonize(mods, compiler_directives=DIRECTIVES, quiet=True))


if __name__ == "__main__":  # as pip's build backend and `setup.py build_ext` run it
    setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
