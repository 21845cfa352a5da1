"""The spec file as zeroserve reads it: the cluster loader's checks plus the autoscaler's rules.

``zeroserve validate``, ``zeroserve up`` and every live reload read the file through
:func:`load`, so a ``config:`` block that the autoscaler would reject is an error of the file
(``config.stable-window = 3s: must be within [6s, 1h]``), never a runtime on the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from autoscaler.config import AutoscalerConfig, ConfigError, unknown_keys
from cluster.spec import Spec
from cluster.spec_loader import load_spec


def config_problems(data: Mapping[str, str]) -> tuple[str, ...]:
    """``config-autoscaler``'s own validation: one message per bad key, empty when valid."""
    try:
        AutoscalerConfig.from_data(data)
    except ConfigError as exc:
        return exc.errors
    return ()


def load(path: str | os.PathLike[str]) -> Spec:
    """Read and validate a spec file, ``config`` included; :class:`SpecError` lists every error."""
    return load_spec(path, check_config=config_problems)


def config_warnings(spec: Spec) -> tuple[str, ...]:
    """Keys of ``config`` that are not ``config-autoscaler`` keys: ignored, as Knative ignores
    them, but worth a warning (``stable_window`` for ``stable-window`` keeps the default)."""
    return tuple(
        f"config.{key}: not a config-autoscaler key (ignored)" for key in unknown_keys(spec.config)
    )
