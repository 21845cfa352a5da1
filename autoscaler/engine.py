"""The autoscaler as one object: collector, scraper and multiscaler wired to the cluster ports.

This is what ``autoscaler.app`` serves and what the local runtime embeds in its own process:

    scaler = build_autoscaler(revisions, endpoints, scale_target, config)
    await scaler.start()            # subscribes to the ports, starts the scrape and tick loops
    scaler.record_stats(batch)      # the activator's in-process stat sink
    scaler.status()                 # the /v1/revisions rows
    await scaler.close()

Tests pass ``run_loops=False`` with a ``ManualClock`` and drive ``scrape_once()``/``tick()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence

import aiohttp

from autoscaler.collector import Collector
from autoscaler.config import AutoscalerConfig
from autoscaler.multiscaler import TICK_INTERVAL_S, MultiScaler
from autoscaler.scraper import SCRAPE_TIMEOUT_S, ScrapeError, StatScraper, make_session
from autoscaler.status import AutoscalerMetrics, RevisionStatus
from cluster.ports import (
    ConfigSource,
    EndpointSource,
    PodEndpoint,
    RevisionSource,
    ScaleTarget,
    Unsubscribe,
)
from cluster.spec import Revision, RevisionKey
from metrics.clock import Clock, LoopClock
from metrics.stat import WireStat

log = logging.getLogger("zeroserve.autoscaler")

SCRAPE_INTERVAL_S = 1.0


class Autoscaler:
    """Knative's KPA for a set of revisions; see the module docstring for the calls."""

    def __init__(
        self,
        *,
        revisions: RevisionSource,
        endpoints: EndpointSource,
        scale_target: ScaleTarget,
        config: ConfigSource,
        clock: Clock,
        run_loops: bool = True,
        scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
        tick_interval_s: float = TICK_INTERVAL_S,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
        rng: random.Random | None = None,
    ) -> None:
        self._revisions = revisions
        self._endpoints = endpoints
        self._config = config
        self._clock = clock
        self._run_loops = run_loops
        self._scrape_timeout_s = scrape_timeout_s
        self._tick_interval_s = tick_interval_s
        self._scrape_interval_s = scrape_interval_s
        self._rng = rng
        self.metrics = AutoscalerMetrics()
        self.collector = Collector()
        self.multiscaler = MultiScaler(
            collector=self.collector,
            scale_target=scale_target,
            clock=clock,
            metrics=self.metrics,
        )
        self.metrics.watch_revisions(self.multiscaler.status)
        self._session: aiohttp.ClientSession | None = None
        self._scraper: StatScraper | None = None
        self._unsubscribe: list[Unsubscribe] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._revisions_changed = asyncio.Event()
        self._scraping: set[RevisionKey] = set()
        self._failing: set[RevisionKey] = set()
        self._scrape_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the config, add the current revisions, subscribe to changes, start the loops."""
        if not self.multiscaler.offer_config(self._config.current()):
            log.warning("config-autoscaler invalid at start, using the defaults")
        self.multiscaler.adopt_config()
        self._session = make_session(timeout_s=self._scrape_timeout_s)
        self._scraper = StatScraper(self._session, timeout_s=self._scrape_timeout_s, rng=self._rng)
        await self.multiscaler.sync_revisions(self._revisions.current())
        self._unsubscribe = [
            self._config.subscribe(self._on_config),
            self._revisions.subscribe(self._on_revisions),
        ]
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._revision_loop(), name="autoscaler-revisions"))
        if self._run_loops:
            self._tasks.append(loop.create_task(self._tick_loop(), name="autoscaler-tick"))
            self._tasks.append(loop.create_task(self._scrape_loop(), name="autoscaler-scrape"))

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for scrape in list(self._scrape_tasks):
            scrape.cancel()
        await asyncio.gather(*self._scrape_tasks, return_exceptions=True)
        await self.multiscaler.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait(self) -> None:
        """Until a loop dies (its exception propagates) or the autoscaler is closed."""
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    # -- inputs -------------------------------------------------------------------------------

    def record_stats(self, batch: Sequence[WireStat]) -> None:
        """Record activator stats (the websocket's and the embedded activator's sink).

        Each stat is recorded at its ``timestamp`` (unix seconds; 0 = now), then a revision
        at zero that sees requests is decided at once (the poke).
        """
        now = self._clock.wall()
        for wire in batch:
            key = RevisionKey(wire.namespace, wire.revision)
            stat = wire.stat
            if self.collector.record(key, stat, float(stat.timestamp) if stat.timestamp else now):
                self.multiscaler.on_stat(key, stat)

    def _on_config(self, data: Mapping[str, str]) -> None:
        self.multiscaler.offer_config(data)

    def _on_revisions(self, _: Mapping[RevisionKey, Revision]) -> None:
        self._revisions_changed.set()

    async def sync_revisions(self) -> None:
        """Bring the multiscaler's revisions up to the revision source now."""
        self._revisions_changed.clear()
        await self.multiscaler.sync_revisions(self._revisions.current())

    # -- loops --------------------------------------------------------------------------------

    async def _revision_loop(self) -> None:
        while True:
            await self._revisions_changed.wait()
            await self.sync_revisions()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval_s)
            await self.tick()

    async def _scrape_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pending = self._scrape_tasks
        while True:
            await asyncio.sleep(self._scrape_interval_s)
            for key, pods in self._scrape_targets():
                # A revision still being scraped (a pod timing out) skips this second.
                if key in self._scraping:
                    continue
                self._scraping.add(key)
                task = loop.create_task(self._scrape_revision(key, pods))
                pending.add(task)
                task.add_done_callback(pending.discard)

    def _scrape_targets(self) -> list[tuple[RevisionKey, Sequence[PodEndpoint]]]:
        endpoints = self._endpoints.current()
        return [(k, endpoints[k]) for k in self.multiscaler.revision_keys() if endpoints.get(k)]

    # -- one round (loops and tests) ----------------------------------------------------------

    async def tick(self) -> None:
        """One decision per revision."""
        if self._revisions_changed.is_set():
            await self.sync_revisions()
        await self.multiscaler.tick()

    async def scrape_once(self) -> None:
        """Scrape every revision with ready pods once, concurrently, and record the results."""
        targets = self._scrape_targets()
        for key, _ in targets:
            self._scraping.add(key)
        await asyncio.gather(*(self._scrape_revision(k, pods) for k, pods in targets))

    async def _scrape_revision(self, key: RevisionKey, pods: Sequence[PodEndpoint]) -> None:
        scraper = self._scraper
        scaler = self.multiscaler.scaler(key)
        if scraper is None or scaler is None:
            self._scraping.discard(key)
            return
        start = self._clock.monotonic()
        try:
            stat = await scraper.scrape(
                pods,
                stable_window_s=scaler.resolved.decider.stable_window_s,
                now=self._clock.wall(),
            )
        except ScrapeError as exc:
            self.metrics.scrape_errors.labels(key.namespace, key.name).inc()
            if key not in self._failing:
                self._failing.add(key)
                log.warning("scrape failed", extra={"revision": str(key), "error": str(exc)})
            return
        finally:
            self._scraping.discard(key)
            self.metrics.scrape_duration.observe(max(0.0, self._clock.monotonic() - start))
        if key in self._failing:
            self._failing.discard(key)
            log.info("scrape recovered", extra={"revision": str(key)})
        if stat is not None:
            self.collector.record(key, stat, self._clock.wall())

    # -- outputs ------------------------------------------------------------------------------

    def status(self) -> list[RevisionStatus]:
        """The ``/v1/revisions`` rows."""
        return self.multiscaler.status()

    @property
    def config(self) -> AutoscalerConfig:
        return self.multiscaler.config


def build_autoscaler(
    revisions: RevisionSource,
    endpoints: EndpointSource,
    scale_target: ScaleTarget,
    config: ConfigSource,
    clock: Clock | None = None,
    *,
    run_loops: bool = True,
    scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
) -> Autoscaler:
    """The autoscaler over the given ports; call ``await start()`` on the running loop."""
    return Autoscaler(
        revisions=revisions,
        endpoints=endpoints,
        scale_target=scale_target,
        config=config,
        clock=clock or LoopClock(),
        run_loops=run_loops,
        scrape_timeout_s=scrape_timeout_s,
    )
