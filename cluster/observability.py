"""Tracing settings with Knative's ``config-observability`` keys (pure, no I/O but the folder
helpers): ``tracing-protocol`` (``none`` | ``http/protobuf``), ``tracing-endpoint`` (the OTLP/HTTP
traces URL, e.g. ``http://otel-collector:4318/v1/traces``), ``tracing-sampling-rate`` (0–1).

Where they are read: the spec file's ``observability:`` block (the local runtime), the
``config-observability`` ConfigMap (Kubernetes), and in each queue-proxy a folder with one file
per key (:func:`read_folder`: the ConfigMap mounted as a volume, or the folder the local runtime
writes), read again when a file changes, so a change needs no restart. Every error names the
key and echoes the value: ``tracing-sampling-rate = '2': must be a number within [0, 1]``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

PROTOCOL: Final = "tracing-protocol"
ENDPOINT: Final = "tracing-endpoint"
SAMPLING_RATE: Final = "tracing-sampling-rate"
KEYS: Final = (PROTOCOL, ENDPOINT, SAMPLING_RATE)
CONFIGMAP: Final = "config-observability"
PROTOCOL_NONE: Final = "none"
PROTOCOL_HTTP: Final = "http/protobuf"

Protocol = Literal["none", "http/protobuf"]


class ObservabilityError(ValueError):
    """Invalid tracing settings: every problem, each naming its key and value."""

    def __init__(self, errors: tuple[str, ...]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing:
    """Where spans go and how many requests are traced (off by default)."""

    protocol: Protocol = PROTOCOL_NONE
    endpoint: str = ""
    sampling_rate: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.protocol != PROTOCOL_NONE


TRACING_OFF: Final = Tracing()


def parse_tracing(data: Mapping[str, str], *, strict: bool = True) -> Tracing:
    """The tracing ``data`` sets. ``strict`` (the spec's block): a key other than the three is
    an error; otherwise (a ConfigMap, which holds Knative's other observability keys too) only
    an unknown ``tracing-*`` key is. Raises :class:`ObservabilityError` naming each bad key."""
    errors: list[str] = []
    for key in data:
        if key not in KEYS and (strict or key.startswith("tracing-")):
            errors.append(f"{key}: unknown key (known: {', '.join(KEYS)})")
    protocol: Protocol = PROTOCOL_NONE
    raw_protocol = data.get(PROTOCOL, PROTOCOL_NONE).strip()
    if raw_protocol == PROTOCOL_HTTP:
        protocol = PROTOCOL_HTTP
    elif raw_protocol == "grpc":
        errors.append(f"{PROTOCOL} = 'grpc': not supported: use http/protobuf (OTLP over HTTP)")
    elif raw_protocol != PROTOCOL_NONE:
        errors.append(f"{PROTOCOL} = {raw_protocol!r}: must be none or http/protobuf")
    endpoint = data.get(ENDPOINT, "").strip()
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(
                f"{ENDPOINT} = {endpoint!r}: must be an http(s) URL "
                "(e.g. http://otel-collector:4318/v1/traces)"
            )
    elif protocol == PROTOCOL_HTTP:
        errors.append(f"{ENDPOINT}: required when {PROTOCOL} is {PROTOCOL_HTTP}")
    rate = 0.0
    raw_rate = data.get(SAMPLING_RATE)
    if raw_rate is not None:
        try:
            rate = float(raw_rate)
        except ValueError:
            rate = math.nan
        if not 0.0 <= rate <= 1.0:  # (also NaN)
            errors.append(f"{SAMPLING_RATE} = {raw_rate!r}: must be a number within [0, 1]")
            rate = 0.0
    if errors:
        raise ObservabilityError(tuple(errors))
    return Tracing(protocol=protocol, endpoint=endpoint, sampling_rate=rate)


def tracing_data(tracing: Tracing) -> dict[str, str]:
    """``tracing`` as the keys' values (what :func:`parse_tracing` reads back)."""
    return {
        PROTOCOL: tracing.protocol,
        ENDPOINT: tracing.endpoint,
        SAMPLING_RATE: format(tracing.sampling_rate, "g"),
    }


def write_folder(folder: Path, data: Mapping[str, str]) -> None:
    """One file per key, each replaced whole (a reader never sees half a value)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in KEYS:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.")
        with os.fdopen(fd, "w") as f:
            f.write(data.get(key, ""))
        os.replace(tmp, folder / key)


def read_folder(folder: Path) -> dict[str, str]:
    """The keys' values in a folder of one file per key (a mounted ConfigMap); absent files
    and empty values are left out."""
    data: dict[str, str] = {}
    for key in KEYS:
        try:
            value = (folder / key).read_text().strip()
        except FileNotFoundError:
            continue
        if value:
            data[key] = value
    return data


def folder_stamp(folder: Path) -> tuple[float, ...]:
    """What changes when a file of the folder is replaced (a mounted ConfigMap's update swaps a
    symlink, which changes the folder's and the files' times)."""
    stamp = []
    for path in (folder, *(folder / k for k in KEYS)):
        try:
            stamp.append(path.stat().st_mtime)
        except OSError:
            stamp.append(0.0)
    return tuple(stamp)
