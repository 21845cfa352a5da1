"""The concurrency reporter: per-revision stats the activator sends to the autoscaler (§2.3).

Pure: the caller passes ``now`` (monotonic seconds) and ``wall`` (unix seconds, for stamps). A
revision's first request gives an immediate stat (concurrency 1, count 1: the scale-from-zero
signal); then ``report`` every second gives one stat per revision seen, with that first request
subtracted once (``first_adj``). A revision idle for a whole period is dropped, so its next
request signals again. Vectors of §5.7 in tests/test_activator_reporter.py.

The handler's hot path keeps a revision's :class:`RevisionCounter` (from :meth:`counter`) and
counts on it directly while it is ``live``, skipping the lookup by key per request.
"""

from __future__ import annotations

from cluster.spec import RevisionKey
from metrics.request_stats import RequestStats
from metrics.stat import Stat, WireStat


class RevisionCounter:
    """One revision's requests in the activator: count with :meth:`request_in`/``_out`` while
    ``live``; a report that drops the idle revision makes it not live (ask for a new one)."""

    __slots__ = ("first_adj", "live", "refs", "stats")

    def __init__(self, now: float) -> None:
        self.stats = RequestStats(now)
        self.first_adj = 1
        self.refs = 0  # requests in now; a counter with refs > 0 is never dropped
        self.live = True

    def request_in(self, now: float) -> None:
        self.refs += 1
        self.stats.request_in(now)

    def request_out(self, now: float) -> None:
        self.refs -= 1
        self.stats.request_out(now)


class ConcurrencyReporter:
    """Counts requests per revision (time queued in the throttler included)."""

    def __init__(self, pod_name: str) -> None:
        self.pod_name = pod_name
        self._revisions: dict[RevisionKey, RevisionCounter] = {}

    def __len__(self) -> int:
        return len(self._revisions)

    def concurrency(self, key: RevisionKey) -> int:
        """Requests of the revision in the activator now (queued ones included)."""
        entry = self._revisions.get(key)
        return 0 if entry is None else entry.refs

    def counter(
        self, key: RevisionKey, now: float, wall: float = 0.0
    ) -> tuple[RevisionCounter, WireStat | None]:
        """The revision's live counter, and the immediate stat to send if it is new (its first
        request, counted by the caller next: the stat says concurrency 1, count 1)."""
        entry = self._revisions.get(key)
        if entry is not None:
            return entry, None
        entry = self._revisions[key] = RevisionCounter(now)
        return entry, self._wire(key, 1.0, 1.0, wall)

    def request_in(self, key: RevisionKey, now: float, wall: float = 0.0) -> WireStat | None:
        """Count a request in; returns the immediate stat to send if the revision is new."""
        entry, immediate = self.counter(key, now, wall)
        entry.request_in(now)
        return immediate

    def request_out(self, key: RevisionKey, now: float) -> None:
        entry = self._revisions.get(key)
        if entry is None:  # cannot happen: a revision with refs is never dropped
            return
        entry.request_out(now)

    def report(self, now: float, wall: float = 0.0) -> list[WireStat]:
        """One stat per revision for the period since the last report.

        ``conc = max(avg - first_adj, 0)`` and ``count = count - first_adj``: a request alone
        from 0 to 1 s gives the immediate (1, 1), then (0, 0) at the tick of 1 s.
        """
        batch: list[WireStat] = []
        for key, entry in list(self._revisions.items()):
            report = entry.stats.report(now)
            first_adj = entry.first_adj
            entry.first_adj = 0
            if report.average_concurrency == 0 and entry.refs == 0:
                del self._revisions[key]
                entry.live = False
            batch.append(
                self._wire(
                    key,
                    max(report.average_concurrency - first_adj, 0.0),
                    max(float(report.request_count - first_adj), 0.0),
                    wall,
                )
            )
        return batch

    def _wire(self, key: RevisionKey, conc: float, count: float, wall: float) -> WireStat:
        return WireStat(
            namespace=key.namespace,
            revision=key.name,
            stat=Stat(
                pod_name=self.pod_name,
                average_concurrent_requests=conc,
                request_count=count,
                timestamp=int(wall),
            ),
        )
