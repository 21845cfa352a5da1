"""The fast HTTP/1.1 forwarding core that the queue-proxy and the activator share.

Its per-request modules (:data:`COMPILED_MODULES`) are compiled with Cython when the package is
built (``setup.py``; the ``.pxd`` beside each module types its classes). The ``.py`` files are
the one source and run as they are where no compiled module was built. ``ZEROSERVE_PURE_PYTHON=1``
in a process's environment makes it run the Python source even where compiled modules exist (for
a debugger or a Python profiler, and for the tests of the pure-Python core).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

COMPILED_MODULES = ("server", "forward", "upstream", "deadlines", "headers")
_HERE = Path(__file__).resolve().parent


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled modules from their ``.py`` source."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        pkg, _, name = fullname.rpartition(".")
        if pkg != __name__ or name not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


if os.environ.get("ZEROSERVE_PURE_PYTHON") == "1":
    sys.meta_path.insert(0, _SourceFirst())


def compiled() -> bool:
    """Whether this process runs the compiled core (imports ``dataplane.server``)."""
    from dataplane import server

    return not (server.__file__ or "").endswith(".py")


def stale_builds(directory: Path = _HERE) -> list[str]:
    """Compiled modules older than their ``.py`` or ``.pxd`` (in a source checkout: rebuild
    with ``make build``), by module name."""
    stale = []
    for name in COMPILED_MODULES:
        built = [p.stat().st_mtime for p in directory.glob(f"{name}.*.so")]
        if not built:
            continue
        sources = [
            p.stat().st_mtime
            for p in (directory / f"{name}.py", directory / f"{name}.pxd")
            if p.exists()
        ]
        if max(sources) > min(built):
            stale.append(name)
    return stale
