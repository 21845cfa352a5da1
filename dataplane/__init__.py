"""The fast HTTP/1.1 forwarding core that the queue-proxy and the activator share.

The per-request modules (:data:`COMPILED_MODULES`: this core's, and the request handlers and
accounting of the components built on it) are compiled with Cython when the package is built
(``setup.py``; a ``.pxd`` beside a module types its classes). The ``.py`` files are the one
source and run as they are where no compiled module was built. ``ZEROSERVE_PURE_PYTHON=1`` in a
process's environment makes it run the Python source even where compiled modules exist (for a
debugger or a Python profiler, and for the tests of the pure-Python core). The packages with a
compiled module import this one first, so the switch is in place before their modules load; the
one exception, ``metrics.request_stats`` (``metrics`` imports no other package), is loaded by
the components after they have imported this package.
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

# Read by setup.py (with ast: keep it a literal tuple of dotted names).
COMPILED_MODULES = (
    "dataplane.server",
    "dataplane.connection",
    "dataplane.exchange",
    "dataplane.request",
    "dataplane.forward",
    "dataplane.tee",
    "dataplane.forward_state",
    "dataplane.upstream",
    "dataplane.deadlines",
    "dataplane.headers",
    "dataplane.messages",
    "dataplane.route",
    "queue_proxy.handler",
    "queue_proxy.metrics",
    "activator.handler",
    "activator.throttler",
    "activator.lb",
    "activator.reporter",
    "activator.routing",
    "activator.metrics",
    "metrics.request_stats",
)
ROOT = Path(__file__).resolve().parent.parent  # the directory that holds the packages


def source(name: str, root: Path = ROOT) -> Path:
    """The ``.py`` file of the compiled module ``name`` (a dotted name)."""
    return root.joinpath(*name.split(".")).with_suffix(".py")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled modules from their ``.py`` source."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


if os.environ.get("ZEROSERVE_PURE_PYTHON") == "1":
    sys.meta_path.insert(0, _SourceFirst())


def compiled() -> bool:
    """Whether this process runs the compiled core (imports ``dataplane.server``)."""
    from dataplane import server

    return not (server.__file__ or "").endswith(".py")


def stale_builds(root: Path = ROOT) -> list[str]:
    """Compiled modules older than their ``.py`` or ``.pxd`` (in a source checkout: rebuild
    with ``make build``), by dotted name."""
    stale = []
    for name in COMPILED_MODULES:
        py = source(name, root)
        built = [p.stat().st_mtime for p in py.parent.glob(f"{py.stem}.*.so")]
        if not built:
            continue
        sources = [p.stat().st_mtime for p in (py, py.with_suffix(".pxd")) if p.exists()]
        if max(sources) > min(built):
            stale.append(name)
    return stale
