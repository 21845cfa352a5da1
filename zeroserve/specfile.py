"""The spec file as zeroserve reads it: the cluster loader's checks plus the autoscaler's rules.

``zeroserve validate``, ``zeroserve up`` and every live reload read the file through
:func:`load`, so a ``config:`` block that the autoscaler would reject is an error of the file
(``config.stable-window = 3s: must be within [6s, 1h]``), never a runtime on the defaults.

A file of KServe ``InferenceService`` documents is read too (told apart by the documents'
``apiVersion``/``kind``; :mod:`cluster.inferenceservice` translates it onto the same spec).
:class:`SpecReader` keeps what its canary rollouts need between reads of one file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from autoscaler.config import AutoscalerConfig, ConfigError, unknown_keys
from cluster.inferenceservice import History, Translation, load_file
from cluster.spec import Spec


def config_problems(data: Mapping[str, str]) -> tuple[str, ...]:
    """``config-autoscaler``'s own validation: one message per bad key, empty when valid."""
    try:
        AutoscalerConfig.from_data(data)
    except ConfigError as exc:
        return exc.errors
    return ()


def load(path: str | os.PathLike[str]) -> Spec:
    """Read and validate a spec file, ``config`` included; :class:`SpecError` lists every error.

    An InferenceService file is read without history (each service: one revision, all traffic).
    """
    return load_file(path, check_config=config_problems)[0]


def load_translated(path: str | os.PathLike[str]) -> tuple[Spec, Translation | None]:
    """:func:`load`, plus the InferenceService translation (None for a native spec)."""
    return load_file(path, check_config=config_problems)


class SpecReader:
    """Reads one spec file again and again (``zeroserve up`` and its reloads). For an
    InferenceService file it remembers each service's revisions and the last rolled-out one, so
    that an edit with ``canaryTrafficPercent`` splits the traffic between the new revision and
    the one before (KServe's canary). Only a valid read updates the memory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.history = History()

    def load(self) -> Spec:
        spec, translation = load_file(self.path, history=self.history, check_config=config_problems)
        if translation is not None:
            self.history = translation.history
        return spec


def config_warnings(spec: Spec) -> tuple[str, ...]:
    """Keys of ``config`` that are not ``config-autoscaler`` keys: ignored, as Knative ignores
    them, but worth a warning (``stable_window`` for ``stable-window`` keeps the default)."""
    return tuple(
        f"config.{key}: not a config-autoscaler key (ignored)" for key in unknown_keys(spec.config)
    )
