"""Comparing a mirrored request's two responses, and the shadow metrics (docs/shadow.md).

Pure :func:`compare`: the primary's and the shadow's :class:`Outcome` in, a :class:`Comparison`
out (statuses equal; for JSON bodies, whether ``predictions`` (KServe V1) or ``outputs`` (Open
Inference Protocol V2) are equal). :class:`ShadowMetrics` exports, per shadow revision, what
happened to the copies, the comparisons, and both sides' latencies.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BodyVerdict = Literal["equal", "different", "not_compared"]
COMPARED_FIELDS: Final = ("predictions", "outputs")
"""The fields compared, the first one both bodies have: V1's and V2's model outputs (the rest
of a body, ids and model versions, differs between two revisions by design)."""
OUTCOMES: Final = ("compared", "shadow_failed", "dropped", "body_too_large", "missing", "not_sent")
"""What became of a request picked for a copy: its two responses compared; the copy got no
response (refused, failed, timed out, queue full); dropped (the copies in flight were at their
bound); not sent, its body over the limit; the shadow revision does not exist; not sent, the
request ended before its body was whole."""
_NO_VALUE = object()


@dataclass(frozen=True, slots=True)
class Outcome:
    """One side's response: status, seconds from the request going upstream to its end, body
    (None when over the limit: not compared) and its content type ("" when none)."""

    status: int
    latency_s: float
    body: bytes | None
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict on one mirrored request."""

    status_match: bool
    body: BodyVerdict

    @property
    def agrees(self) -> bool:
        """Same status, and outputs not different (equal, or nothing to compare)."""
        return self.status_match and self.body != "different"


def _outputs(outcome: Outcome) -> object:
    """The compared field of a JSON body, or _NO_VALUE."""
    body = outcome.body
    if not body:
        return _NO_VALUE
    head = body.lstrip()[:1]
    if "json" not in outcome.content_type.lower() and head not in (b"{", b"["):
        return _NO_VALUE
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _NO_VALUE
    if not isinstance(data, dict):
        return _NO_VALUE
    for name in COMPARED_FIELDS:
        if name in data:
            return data[name]
    return _NO_VALUE


def compare(primary: Outcome, shadow: Outcome) -> Comparison:
    """Statuses equal, and for two JSON bodies with ``predictions`` (or both with ``outputs``)
    whether those are equal (as parsed JSON: ``1.0 == 1``, key order ignored)."""
    status_match = primary.status == shadow.status
    mine, theirs = _outputs(primary), _outputs(shadow)
    if mine is _NO_VALUE or theirs is _NO_VALUE:
        return Comparison(status_match, "not_compared")
    return Comparison(status_match, "equal" if mine == theirs else "different")


def content_type(lines: bytes) -> str:
    """The ``Content-Type`` of a response's header lines (``Name: value`` + CRLF each)."""
    for line in lines.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-type":
            return value.strip().decode("latin-1")
    return ""


_LABELS = ["namespace", "service", "revision"]
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _Counts:
    """One shadow revision's counts, as plain numbers (a prometheus_client child update costs
    microseconds and a lock: a copy makes six), exported at scrape time."""

    __slots__ = ("held", "latency_counts", "latency_sums", "outcomes", "verdicts")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.verdicts: dict[tuple[str, str], int] = {}
        self.held = 0
        # per role (primary, shadow): per bucket, not cumulative; +Inf last
        self.latency_counts = {role: [0] * (len(_LATENCY_BUCKETS) + 1) for role in _ROLES}
        self.latency_sums = dict.fromkeys(_ROLES, 0.0)


_ROLES = ("primary", "shadow")
_LE = (*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf")


class ShadowMetrics(Collector):
    """The shadow metrics, labelled by the shadow revision (and its service); registered in
    the activator's registry as a collector of its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: dict[tuple[str, ...], _Counts] = {}
        registry.register(self)

    def _of(self, labels: Sequence[str]) -> _Counts:
        key = tuple(labels)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts()
        return counts

    def outcome(self, labels: Sequence[str], outcome: str) -> None:
        outcomes = self._of(labels).outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def copies_held(self, labels: Sequence[str], change: int) -> None:
        self._of(labels).held += change

    def compared(
        self, labels: Sequence[str], primary: Outcome, shadow: Outcome, verdict: Comparison
    ) -> None:
        c = self._of(labels)
        c.outcomes["compared"] = c.outcomes.get("compared", 0) + 1
        key = ("match" if verdict.status_match else "mismatch", verdict.body)
        c.verdicts[key] = c.verdicts.get(key, 0) + 1
        for role, seconds in (("primary", primary.latency_s), ("shadow", shadow.latency_s)):
            c.latency_counts[role][bisect_left(_LATENCY_BUCKETS, seconds)] += 1
            c.latency_sums[role] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "activator_shadow_requests",
            "Requests picked for a copy to a shadow revision, by what became of the copy "
            "(compared, shadow_failed, dropped, body_too_large, missing, not_sent)",
            labels=[*_LABELS, "outcome"],
        )
        comparisons = CounterMetricFamily(
            "activator_shadow_comparisons",
            "Mirrored requests whose two responses were compared: status match|mismatch; body "
            "equal|different|not_compared (predictions or outputs of JSON bodies)",
            labels=[*_LABELS, "status", "body"],
        )
        latency = HistogramMetricFamily(
            "activator_shadow_latency_seconds",
            "Latency of mirrored requests from going upstream to their end, by role: the "
            "primary's response or the shadow's",
            labels=[*_LABELS, "role"],
        )
        held = GaugeMetricFamily(
            "activator_shadow_in_flight",
            "Copies held now (their body buffered, sent, or waiting for the primary's end)",
            labels=_LABELS,
        )
        for labels, c in list(self._counts.items()):
            for outcome, n in sorted(c.outcomes.items()):
                requests.add_metric([*labels, outcome], n)
            for (status, body), n in sorted(c.verdicts.items()):
                comparisons.add_metric([*labels, status, body], n)
            if c.outcomes.get("compared"):
                for role in _ROLES:
                    cumulative, buckets = 0, []
                    for le, n in zip(_LE, c.latency_counts[role], strict=True):
                        cumulative += n
                        buckets.append((le, float(cumulative)))
                    latency.add_metric([*labels, role], buckets, c.latency_sums[role])
            held.add_metric(list(labels), c.held)
        yield requests
        yield comparisons
        yield latency
        yield held
