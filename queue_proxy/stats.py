"""The 1 s stat reporter (reference §2.1): RequestStats in, a :class:`metrics.stat.Stat` out.

Counts are per second of the period; concurrency is the time-weighted average (requests waiting
in the breaker included, probes excluded).
"""

from __future__ import annotations

import asyncio

from metrics.clock import Clock
from metrics.request_stats import RequestStats
from metrics.stat import Stat


class StatReporter:
    """Holds the request accounting and the latest stat served at ``/stats``."""

    def __init__(self, pod: str, clock: Clock) -> None:
        self.clock = clock
        self.started = clock.monotonic()
        self.requests = RequestStats(self.started)
        self.latest = Stat(pod_name=pod)  # before the first report: only the pod name
        self._pod = pod

    def report(self) -> Stat:
        """Close the period now and make its stat the latest."""
        now = self.clock.monotonic()
        r = self.requests.report(now)
        per_s = 1.0 / r.period_s if r.period_s > 0 else 0.0
        self.latest = Stat(
            pod_name=self._pod,
            average_concurrent_requests=r.average_concurrency,
            average_proxied_concurrent_requests=r.average_proxied_concurrency,
            request_count=r.request_count * per_s,
            proxied_request_count=r.proxied_request_count * per_s,
            process_uptime=now - self.started,
            timestamp=int(self.clock.wall()),
        )
        return self.latest

    async def run(self, interval_s: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval_s
            self.report()
