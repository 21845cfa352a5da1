"""Time-weighted request accounting: Knative's ``RequestStats`` (reference §2.1).

Each in/out event first adds ``concurrency * dt`` since the last event, so a report's average is
exact over the period. Pure: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestReport:
    """One period's accounting: time-weighted average concurrency and raw request counts."""

    average_concurrency: float
    average_proxied_concurrency: float
    request_count: int
    proxied_request_count: int
    period_s: float


class RequestStats:
    """Counts requests in and out; ``report(now)`` returns the period's figures and starts anew.

    Example (tests/test_request_stats.py): one request for the whole 1 s period and a second one
    for its last half → average concurrency (1 * 0.5 + 2 * 0.5) / 1 = 1.5, request count 2.
    """

    __slots__ = (
        "_conc_time",
        "_concurrency",
        "_count",
        "_last",
        "_period_start",
        "_proxied_conc_time",
        "_proxied_concurrency",
        "_proxied_count",
    )

    def __init__(self, now: float) -> None:
        self._concurrency = 0
        self._proxied_concurrency = 0
        self._conc_time = 0.0
        self._proxied_conc_time = 0.0
        self._count = 0
        self._proxied_count = 0
        self._last = now
        self._period_start = now

    @property
    def concurrency(self) -> int:
        """Requests in flight now (queued ones included)."""
        return self._concurrency

    def _accumulate(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            self._conc_time += self._concurrency * dt
            self._proxied_conc_time += self._proxied_concurrency * dt
            self._last = now

    def request_in(self, now: float, proxied: bool = False) -> None:
        self._accumulate(now)
        self._concurrency += 1
        self._count += 1
        if proxied:
            self._proxied_concurrency += 1
            self._proxied_count += 1

    def request_out(self, now: float, proxied: bool = False) -> None:
        self._accumulate(now)
        self._concurrency -= 1
        if proxied:
            self._proxied_concurrency -= 1

    def report(self, now: float) -> RequestReport:
        """The period since the last report; in-flight requests carry over to the next one."""
        self._accumulate(now)
        period = now - self._period_start
        if period > 0:
            avg = self._conc_time / period
            proxied_avg = self._proxied_conc_time / period
        else:
            avg = proxied_avg = 0.0
        result = RequestReport(avg, proxied_avg, self._count, self._proxied_count, period)
        self._conc_time = self._proxied_conc_time = 0.0
        self._count = self._proxied_count = 0
        self._period_start = self._last = now
        return result
