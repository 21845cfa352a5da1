"""Builds the forwarding core's compiled modules (pyproject.toml declares everything else).

``dataplane/{server,forward,upstream,deadlines,headers}.py`` are compiled with Cython, the
``.pxd`` file beside each declaring its classes as extension types with typed attributes. The
``.py`` files stay the one source: without a compiler, or with ``ZEROSERVE_PURE_PYTHON=1`` at
build time, the same modules run as plain Python (slower per request, same behaviour).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED = ("server", "forward", "upstream", "deadlines", "headers")
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
            f"WARNING: the compiled dataplane was not built ({exc}); "
            "the pure-Python modules run instead (slower per request)",
            file=sys.stderr,
        )


def extensions() -> list[object]:
    if os.environ.get("ZEROSERVE_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not installed: the dataplane stays pure Python", file=sys.stderr)
        return []
    from setuptools import Extension

    mods = [Extension(f"dataplane.{m}", [f"dataplane/{m}.py"]) for m in COMPILED]
    return list(cythonize(mods, compiler_directives=DIRECTIVES, quiet=True))


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
