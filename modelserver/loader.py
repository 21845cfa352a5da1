"""What the local runtime's parked process calls to load a revision's model onto the CPU before
it forks (``cluster.local.model_zygote.MODEL_LOADER``); the model is kept in
:mod:`modelserver.preload`'s registry for the replicas forked from it to take.

A module of its own, apart from the registry: it imports the model loader
(:mod:`modelserver.model`), which itself reads the registry, and the two would import each other.
"""

from __future__ import annotations

from pathlib import Path

from modelserver.model import ModelError, check_format, model_file
from modelserver.preload import RegistryKey, keep, kept, preloadable, registry_key


def load_model(fmt: str, path: Path) -> RegistryKey:
    """Load the model at ``path`` (a file or a one-model directory) onto the CPU and keep it
    for :func:`modelserver.preload.take`. Raises :class:`modelserver.model.ModelError` when it
    cannot be loaded or its format is not preloadable (the replicas then load it themselves)."""
    check_format(fmt)
    file = model_file(path, fmt)
    if not preloadable(fmt, file):
        raise ModelError(f"--model {file}: a {fmt} model of this kind is not preloaded")
    key = registry_key(fmt, file)
    if kept(key):
        return key
    if fmt == "pytorch":
        from modelserver.formats import pytorch

        try:
            keep(key, pytorch.load_on_cpu(file))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"--model {file}: cannot load it as {fmt}: {exc}") from exc
    return key
