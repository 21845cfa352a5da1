"""Models loaded onto the CPU by a parked process before it forks, for its replicas to take.

A replica forked from the local runtime's parked process for its revision
(:mod:`cluster.local.model_zygote`) would otherwise rebuild the model in every child: for a
``torch.export`` program, ``torch.export.load(...).module()`` is most of a cold start (2.9 s of
3.4 s for BERT-base on an H200, docs/benchmarks.md). The parked process calls
:func:`modelserver.loader.load_model` once, which keeps the model here (:func:`keep`); a
child's :func:`modelserver.model.load` asks :func:`take` first and,
on a hit, only moves the model to its device. The registry is keyed by the format and the model
file's resolved path, size and mtime, so an artifact replaced in place is a miss, never a stale hit.

The parent only loads: no tensor operation runs there (a thread pool started by one would not
survive the fork), and nothing touches CUDA. Only ``pytorch`` ``.pt2`` programs are preloaded
(:data:`PRELOADABLE`); any other model loads in the child as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

PRELOADABLE: Mapping[str, tuple[str, ...]] = {"pytorch": (".pt2",)}
"""The formats whose models a parked process loads, and the model files' suffixes."""

RegistryKey = tuple[str, str, int, int]

_registry: dict[RegistryKey, Any] = {}


def registry_key(fmt: str, file: Path) -> RegistryKey:
    """``(format, resolved path, size, mtime_ns)`` of a model file (OSError if it is gone)."""
    resolved = file.resolve()
    st = resolved.stat()
    return (fmt, str(resolved), st.st_size, st.st_mtime_ns)


def preloadable(fmt: str, file: Path) -> bool:
    """Whether :func:`modelserver.loader.load_model` can load ``file`` as ``fmt`` in a parked process."""
    return file.suffix.lower() in PRELOADABLE.get(fmt, ())


def keep(key: RegistryKey, model: Any) -> None:
    """Hold ``model``, loaded from the file ``key`` names, for :func:`take`."""
    _registry[key] = model


def kept(key: RegistryKey) -> bool:
    """Whether a model is held for ``key``."""
    return key in _registry


def take(fmt: str, file: Path) -> Any | None:
    """The model :func:`modelserver.loader.load_model` loaded from ``file`` (removed from the registry: it is the
    caller's now, to move to its device), or None."""
    if not _registry:
        return None
    try:
        key = registry_key(fmt, file)
    except OSError:
        return None
    return _registry.pop(key, None)


def loaded() -> list[RegistryKey]:
    """What the registry holds (for the parked process's hello and for tests)."""
    return list(_registry)


def clear() -> None:
    """Forget every preloaded model (tests)."""
    _registry.clear()
