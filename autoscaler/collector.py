"""Per-revision metric windows: what the scraper and the activators saw (reference §1.2).

Each revision has four windows (concurrency and rps, stable and panic) over unix seconds with
1 s buckets. A stat goes into all four, minus its proxied part (the activator already counted
those requests). Stats of the same second are summed by the windows: a bucket holds the whole
revision's load (the scraper's one extrapolated stat plus one stat per activator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from cluster.spec import RevisionKey
from metrics.stat import Stat
from metrics.windows import LinearBuckets, WeightedBuckets

Metric = Literal["concurrency", "rps"]


class _Window(Protocol):
    def record(self, now: float, value: float) -> None: ...

    def window_average(self, now: float) -> float: ...

    def is_empty(self, now: float) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """The stable and panic averages of one metric at one moment."""

    stable: float
    panic: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowSpec:
    """How a revision's windows are built: their lengths, the aggregation, whether it is scraped.

    ``scraped`` is False when nothing scrapes the revision (TBC = -1, the activator always in
    path): empty windows then mean "no load" (0, 0) rather than "no data" (reference §1.2).
    """

    stable_window_s: float
    panic_window_s: float
    weighted: bool = False
    scraped: bool = True


def _window(window_s: float, weighted: bool) -> _Window:
    return WeightedBuckets(window_s) if weighted else LinearBuckets(window_s)


class Collection:
    """One revision's four windows."""

    __slots__ = ("conc_panic", "conc_stable", "rps_panic", "rps_stable", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.conc_stable = _window(spec.stable_window_s, spec.weighted)
        self.conc_panic = _window(spec.panic_window_s, spec.weighted)
        self.rps_stable = _window(spec.stable_window_s, spec.weighted)
        self.rps_panic = _window(spec.panic_window_s, spec.weighted)

    def record(self, stat: Stat, now: float) -> None:
        # Proxied parts are subtracted (§1.2): {conc 20, proxied 10} → 10.
        conc = stat.average_concurrent_requests - stat.average_proxied_concurrent_requests
        rps = stat.request_count - stat.proxied_request_count
        self.conc_stable.record(now, conc)
        self.conc_panic.record(now, conc)
        self.rps_stable.record(now, rps)
        self.rps_panic.record(now, rps)

    def observe(self, metric: Metric, now: float) -> Observed | None:
        """Stable and panic averages of ``metric``; ``None`` when there is no data (no decision)."""
        if metric == "rps":
            stable, panic = self.rps_stable, self.rps_panic
        else:
            stable, panic = self.conc_stable, self.conc_panic
        if stable.is_empty(now):
            if self.spec.scraped:
                return None
            return Observed(stable=0.0, panic=0.0)
        return Observed(stable=stable.window_average(now), panic=panic.window_average(now))


class Collector:
    """All revisions' collections; records stats and answers the multiscaler's questions.

    Times are unix seconds: activators stamp their stats with unix seconds, so the windows and
    every caller use ``Clock.wall()``.
    """

    def __init__(self) -> None:
        self._collections: dict[RevisionKey, Collection] = {}

    def __contains__(self, key: RevisionKey) -> bool:
        return key in self._collections

    def __len__(self) -> int:
        return len(self._collections)

    def watch(self, key: RevisionKey, spec: WindowSpec) -> None:
        """Start collecting for ``key``, or apply a new spec (new windows only if they changed)."""
        current = self._collections.get(key)
        if current is None or current.spec != spec:
            # A changed window length or aggregation starts new windows: their history would
            # not mean the same thing. The next scrape (1 s) gives data again.
            if current is not None and _same_windows(current.spec, spec):
                current.spec = spec
            else:
                self._collections[key] = Collection(spec)

    def reset(self, key: RevisionKey) -> None:
        """Start ``key``'s windows afresh (same spec): a new leader drops a standby's history,
        which lacks the activators' stats (they go to the leader only)."""
        collection = self._collections.get(key)
        if collection is not None:
            self._collections[key] = Collection(collection.spec)

    def forget(self, key: RevisionKey) -> None:
        self._collections.pop(key, None)

    def record(self, key: RevisionKey, stat: Stat, now: float) -> bool:
        """Record one stat at ``now``; False (and nothing recorded) for an unknown revision."""
        collection = self._collections.get(key)
        if collection is None:
            return False
        collection.record(stat, now)
        return True

    def observe(self, key: RevisionKey, metric: Metric, now: float) -> Observed | None:
        """The revision's observed values; ``None`` if not collecting or no data for a window."""
        collection = self._collections.get(key)
        if collection is None:
            return None
        return collection.observe(metric, now)

    def snapshot(self, key: RevisionKey, now: float) -> dict[str, float] | None:
        """Both metrics' averages, for status pages (0 where a window is empty)."""
        c = self._collections.get(key)
        if c is None:
            return None
        return {
            "stable_concurrency": c.conc_stable.window_average(now),
            "panic_concurrency": c.conc_panic.window_average(now),
            "stable_rps": c.rps_stable.window_average(now),
            "panic_rps": c.rps_panic.window_average(now),
        }


def _same_windows(a: WindowSpec, b: WindowSpec) -> bool:
    return (
        a.stable_window_s == b.stable_window_s
        and a.panic_window_s == b.panic_window_s
        and a.weighted == b.weighted
    )
