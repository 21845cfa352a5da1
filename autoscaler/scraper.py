"""Direct pod scraping: one revision's stat for one second from a sample of its pods (reference §2.2).

Each call scrapes ``n = sample_size(N)`` of the revision's ``N`` ready pods and extrapolates the
sum to all of them (``sum / n * N``), so the collector records one stat per second that stands for
the whole revision. Pods older than the stable window are preferred: their stats are steady.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Sequence

import aiohttp

from autoscaler.scaling import sample_size
from cluster.ports import PodEndpoint
from metrics.stat import Stat, StatError

SCRAPER_POD_NAME = "service-scraper"
SCRAPE_TIMEOUT_S = 3.0
# Knative reads at most 336 bytes of a protobuf stat; a JSON stat is larger but still small.
MAX_STAT_BYTES = 4096


class ScrapeError(Exception):
    """A revision's scrape failed: nothing is recorded for this second (reference §2.2)."""


class PodsExhaustedError(ScrapeError):
    """Some pods answered, but fewer than the sample needs (Knative's ``errPodsExhausted``)."""


def make_session(
    *, limit: int = 1000, timeout_s: float = SCRAPE_TIMEOUT_S
) -> aiohttp.ClientSession:
    """A client session with pooled keep-alive connections (Knative's direct mode keeps 1000 idle)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=30.0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        skip_auto_headers=("User-Agent",),
        headers={"Accept": "application/json"},
    )


def order_pods(
    pods: Sequence[PodEndpoint],
    *,
    sample: int,
    stable_window_s: float,
    now: float,
    rng: random.Random,
) -> list[PodEndpoint]:
    """The order in which workers try pods: old pods first (``now - started_at >= window``).

    Only the group the sample is drawn from is shuffled, as Knative does: if there are fewer
    old pods than the sample, all of them are taken and the young ones are shuffled; otherwise
    the old ones are shuffled and the young ones are a fallback.
    """
    old = [p for p in pods if now - p.started_at >= stable_window_s]
    young = [p for p in pods if now - p.started_at < stable_window_s]
    if len(old) < sample:
        rng.shuffle(young)
    else:
        rng.shuffle(old)
    return old + young


class StatScraper:
    """Scrapes ``GET http://<stats_address>/stats`` (a JSON :class:`Stat`) from sampled pods."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._rng = rng or random.Random()

    async def scrape_pod(self, pod: PodEndpoint) -> Stat:
        """One pod's stat; raises :class:`ScrapeError` on any failure (status, body, timeout)."""
        url = f"http://{pod.stats_address}/stats"
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if not 200 <= resp.status < 300:
                    raise ScrapeError(f"{url}: HTTP {resp.status}")
                body = await resp.content.read(MAX_STAT_BYTES)
            return Stat.from_json(body)
        except (aiohttp.ClientError, TimeoutError, StatError) as exc:
            raise ScrapeError(f"{url}: {type(exc).__name__}: {exc}") from exc

    async def scrape(
        self, pods: Sequence[PodEndpoint], *, stable_window_s: float, now: float
    ) -> Stat | None:
        """The revision's extrapolated stat, or ``None`` with no ready pods (nothing to record).

        ``now`` is unix seconds (compared with ``PodEndpoint.started_at``). ``n`` workers pull
        pods from one ordered list until each has one success; if the list runs out first, the
        scrape fails. Worked example (reference §5.6, ``test_direct_scrape_one_failing``):
        5 pods answering 3, 5, 3, 5 and one failing → n = 4 → (3+5+3+5) / 4 * 5 = 20.
        """
        total = len(pods)
        if total == 0:
            return None
        sample = sample_size(total)
        ordered = order_pods(
            pods, sample=sample, stable_window_s=stable_window_s, now=now, rng=self._rng
        )
        source = iter(ordered)
        errors: list[str] = []
        results = await asyncio.gather(*(self._worker(source, errors) for _ in range(sample)))
        stats = [s for s in results if s is not None]
        if len(stats) < sample:
            last = errors[-1] if errors else "no error"
            if stats:
                raise PodsExhaustedError(
                    f"{len(stats)} of {sample} sampled pods answered ({total} ready): {last}"
                )
            raise ScrapeError(f"no pod answered ({total} ready): {last}")
        scale = total / sample
        return Stat(
            pod_name=SCRAPER_POD_NAME,
            average_concurrent_requests=sum(s.average_concurrent_requests for s in stats) * scale,
            average_proxied_concurrent_requests=sum(
                s.average_proxied_concurrent_requests for s in stats
            )
            * scale,
            request_count=sum(s.request_count for s in stats) * scale,
            proxied_request_count=sum(s.proxied_request_count for s in stats) * scale,
        )

    async def _worker(self, source: Iterator[PodEndpoint], errors: list[str]) -> Stat | None:
        # The iterator is shared: each worker takes the next untried pod, so a failing pod
        # costs one worker one extra request, never the whole scrape.
        for pod in source:
            try:
                return await self.scrape_pod(pod)
            except ScrapeError as exc:
                errors.append(str(exc))
        return None
