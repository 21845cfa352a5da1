"""``zeroserve status``'s shadow table: per shadow revision, how many copies were compared and how
often the shadow agreed with the primary, read from the activator's Prometheus metrics
(``activator_shadow_*``, activator.shadow_compare) — the status port's ``/metrics`` locally, the
activator's ``:9090/metrics`` on Kubernetes."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families

from zeroserve.status import StatusError


@dataclass
class ShadowRow:
    """One shadow revision's copies since the activator started."""

    namespace: str
    service: str
    revision: str
    outcomes: dict[str, float] = field(default_factory=dict)
    compared: float = 0.0
    agreed: float = 0.0
    status_mismatch: float = 0.0
    body_different: float = 0.0
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_count: dict[str, float] = field(default_factory=dict)

    @property
    def agreement(self) -> float | None:
        """Agreeing comparisons / comparisons (same status, outputs not different)."""
        return self.agreed / self.compared if self.compared else None

    def mean_latency(self, role: str) -> float | None:
        n = self.latency_count.get(role, 0.0)
        return self.latency_sum.get(role, 0.0) / n if n else None


def metrics_url(revisions_url: str) -> str:
    """The ``/metrics`` beside a ``/v1/revisions`` URL (the local runtime's status port)."""
    parts = urlsplit(revisions_url)
    return urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))


def parse(text: str) -> list[ShadowRow]:
    """The shadow rows of a Prometheus text exposition (sorted by revision)."""
    rows: dict[tuple[str, str, str], ShadowRow] = {}

    def row(labels: dict[str, str]) -> ShadowRow:
        key = (labels.get("namespace", ""), labels.get("service", ""), labels.get("revision", ""))
        if key not in rows:
            rows[key] = ShadowRow(*key)
        return rows[key]

    for family in text_string_to_metric_families(text):
        if not family.name.startswith("activator_shadow_"):
            continue
        for s in family.samples:
            if s.name == "activator_shadow_requests_total":
                r = row(s.labels)
                r.outcomes[s.labels.get("outcome", "")] = s.value
            elif s.name == "activator_shadow_comparisons_total":
                r = row(s.labels)
                r.compared += s.value
                status_match = s.labels.get("status") == "match"
                different = s.labels.get("body") == "different"
                if status_match and not different:
                    r.agreed += s.value
                if not status_match:
                    r.status_mismatch += s.value
                if different:
                    r.body_different += s.value
            elif s.name == "activator_shadow_latency_seconds_sum":
                row(s.labels).latency_sum[s.labels.get("role", "")] = s.value
            elif s.name == "activator_shadow_latency_seconds_count":
                row(s.labels).latency_count[s.labels.get("role", "")] = s.value
    return [rows[k] for k in sorted(rows)]


def fetch(url: str, timeout_s: float = 3.0) -> list[ShadowRow]:
    """GET a ``/metrics`` URL and parse its shadow rows."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"cannot read the activator's metrics at {url}: {exc}") from exc
    return parse(text)


COLUMNS = (
    "SHADOW",
    "OF SERVICE",
    "COMPARED",
    "AGREEMENT",
    "STATUS DIFF",
    "OUTPUT DIFF",
    "FAILED",
    "DROPPED",
    "NOT MIRRORED",
    "LATENCY PRIMARY/SHADOW",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def render(rows: Sequence[ShadowRow]) -> str:
    """A fixed-width table, one line per shadow revision; "" when there is none."""
    if not rows:
        return ""
    table = [list(COLUMNS)]
    for r in rows:
        agreement = r.agreement
        not_mirrored = sum(r.outcomes.get(k, 0.0) for k in ("body_too_large", "not_sent"))
        table.append(
            [
                f"{r.namespace}/{r.revision}",
                r.service,
                f"{r.compared:.0f}",
                "-" if agreement is None else f"{agreement * 100:.1f}%",
                f"{r.status_mismatch:.0f}",
                f"{r.body_different:.0f}",
                f"{r.outcomes.get('shadow_failed', 0.0):.0f}",
                f"{r.outcomes.get('dropped', 0.0):.0f}",
                f"{not_mirrored + r.outcomes.get('missing', 0.0):.0f}",
                f"{_ms(r.mean_latency('primary'))}/{_ms(r.mean_latency('shadow'))}",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )
