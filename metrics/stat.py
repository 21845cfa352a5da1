"""The stat one queue-proxy (or activator) reports for one second, and its JSON wire form.

Field names are those of Knative's ``Stat`` proto in snake_case (DESIGN.md, reference §2.1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

_FLOAT_FIELDS = (
    "average_concurrent_requests",
    "average_proxied_concurrent_requests",
    "request_count",
    "proxied_request_count",
    "process_uptime",
)


class StatError(ValueError):
    """A stat on the wire is malformed; the message names the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    """One report for one second.

    Concurrency values are time-weighted averages over the period; counts are per second.
    ``timestamp`` is unix seconds (0 = unset: the receiver uses its own clock).
    """

    pod_name: str
    average_concurrent_requests: float = 0.0
    average_proxied_concurrent_requests: float = 0.0
    request_count: float = 0.0
    proxied_request_count: float = 0.0
    process_uptime: float = 0.0
    timestamp: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stat:
        """Build a stat from its JSON object; raises :class:`StatError` naming a bad field."""
        pod = data.get("pod_name", "")
        if not isinstance(pod, str):
            raise StatError(f"pod_name = {pod!r}: must be a string")
        values: dict[str, float] = {}
        for name in _FLOAT_FIELDS:
            raw = data.get(name, 0.0)
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise StatError(f"{name} = {raw!r}: must be a number")
            if raw != raw or raw < 0:  # NaN or negative
                raise StatError(f"{name} = {raw!r}: must be a number >= 0")
            values[name] = float(raw)
        ts = data.get("timestamp", 0)
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise StatError(f"timestamp = {ts!r}: must be unix seconds")
        return cls(pod_name=pod, timestamp=int(ts), **values)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Stat:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StatError(f"stat is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise StatError("stat must be a JSON object")
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class WireStat:
    """A stat addressed to a revision, as activators send them (Knative's ``WireStatMessage``)."""

    namespace: str
    revision: str
    stat: Stat

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.revision, "stat": self.stat.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WireStat:
        ns, name, stat = data.get("namespace"), data.get("name"), data.get("stat")
        if not isinstance(ns, str) or not ns:
            raise StatError(f"namespace = {ns!r}: must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise StatError(f"name = {name!r}: must be a non-empty string")
        if not isinstance(stat, dict):
            raise StatError(f"stat = {stat!r}: must be an object")
        return cls(namespace=ns, revision=name, stat=Stat.from_dict(stat))


def encode_batch(stats: list[WireStat]) -> str:
    """One websocket text message per batch: ``{"messages": [...]}``."""
    return json.dumps({"messages": [s.to_dict() for s in stats]}, separators=(",", ":"))


def decode_batch(raw: str | bytes) -> list[WireStat]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StatError(f"stat batch is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise StatError("stat batch must be an object with a list 'messages'")
    return [WireStat.from_dict(m) for m in data["messages"] if isinstance(m, dict)]
