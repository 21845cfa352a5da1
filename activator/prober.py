"""Endpoint probing: a pod gets traffic only once its queue-proxy answers the probe (§4.2).

``GET http://<address>/healthz`` with ``K-Network-Probe: queue`` and ``User-Agent:
Knative-Activator-Probe``; healthy means 200 with body ``queue``. A round probes every pod not
yet healthy with a 300 ms timeout; a new pod is probed at once, and while some are left the
rounds repeat after 10 ms, 20 ms, 40 ms … up to every 200 ms (:func:`retry_delays`): a pod
that fails its first probe by a hair (a scale from zero has a request waiting for it) is
retried within milliseconds, one that stays unready costs five probes a second. Any change of
the endpoints starts the schedule again. A pod that leaves the endpoints leaves the healthy set
at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import aiohttp

from cluster.ports import EndpointSource, PodEndpoint
from cluster.spec import RevisionKey

log = logging.getLogger("zeroserve.activator")

PROBE_HEADERS = {"K-Network-Probe": "queue", "User-Agent": "Knative-Activator-Probe"}

HealthyListener = Callable[[RevisionKey, tuple[str, ...]], None]


def retry_delays(initial_s: float, period_s: float) -> Iterator[float]:
    """Seconds between probe rounds: from ``initial_s``, doubling, then ``period_s`` forever.

    ``retry_delays(0.01, 0.2)`` → 0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2, …
    """
    delay = min(initial_s, period_s)
    while True:
        yield delay
        delay = min(delay * 2, period_s)


async def probe(session: aiohttp.ClientSession, address: str, timeout_s: float) -> bool:
    """Whether the queue-proxy at ``address`` is ready for traffic."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(f"http://{address}/healthz", headers=PROBE_HEADERS) as resp:
                return resp.status == 200 and (await resp.read()) == b"queue"
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


class EndpointProber:
    """Follows an :class:`EndpointSource` and reports each revision's healthy addresses."""

    def __init__(
        self,
        endpoints: EndpointSource,
        on_healthy: HealthyListener,
        *,
        session: aiohttp.ClientSession | None = None,
        probe_timeout_s: float = 0.3,
        probe_period_s: float = 0.2,
        probe_initial_period_s: float = 0.01,
    ) -> None:
        self._on_healthy = on_healthy
        self._session = session
        self._own_session = session is None
        self._probe_timeout_s = probe_timeout_s
        self._probe_period_s = probe_period_s
        self._probe_initial_period_s = probe_initial_period_s
        self._wanted: dict[RevisionKey, set[str]] = {}
        self._healthy: dict[RevisionKey, set[str]] = {}
        self._wake = asyncio.Event()
        self._update(endpoints.current())
        self._unsubscribe = endpoints.subscribe(self._update)

    def healthy(self, key: RevisionKey) -> tuple[str, ...]:
        return tuple(sorted(self._healthy.get(key, ())))

    def pending(self) -> dict[RevisionKey, set[str]]:
        """Pods known but not (yet) healthy."""
        out = {}
        for key, wanted in self._wanted.items():
            left = wanted - self._healthy.get(key, set())
            if left:
                out[key] = left
        return out

    def _update(self, snapshot: Mapping[RevisionKey, Sequence[PodEndpoint]]) -> None:
        new = {key: {p.address for p in pods} for key, pods in snapshot.items() if pods}
        for key in set(self._wanted) | set(new):
            wanted = new.get(key, set())
            healthy = self._healthy.get(key, set())
            kept = healthy & wanted
            if kept != healthy:  # removed pods: no new request from now on
                self._set_healthy(key, kept)
        self._wanted = new
        self._wake.set()

    def _set_healthy(self, key: RevisionKey, healthy: set[str]) -> None:
        if healthy:
            self._healthy[key] = healthy
        else:
            self._healthy.pop(key, None)
        self._on_healthy(key, tuple(sorted(healthy)))

    async def run(self) -> None:
        """Probe rounds until cancelled."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)
            )
        delays = self._delays()
        try:
            while True:
                self._wake.clear()
                pending = self.pending()
                if not pending:
                    await self._wake.wait()
                    delays = self._delays()
                    continue
                await self._round(self._session, pending)
                if self.pending():
                    # the next round after the next delay, or at once for a new pod
                    try:
                        await asyncio.wait_for(self._wake.wait(), next(delays))
                    except TimeoutError:
                        continue
                    delays = self._delays()
        finally:
            self._unsubscribe()
            if self._own_session:
                await self._session.close()

    def _delays(self) -> Iterator[float]:
        return retry_delays(self._probe_initial_period_s, self._probe_period_s)

    async def _round(
        self, session: aiohttp.ClientSession, pending: dict[RevisionKey, set[str]]
    ) -> None:
        jobs = [(key, addr) for key, addrs in pending.items() for addr in sorted(addrs)]
        results = await asyncio.gather(
            *(probe(session, addr, self._probe_timeout_s) for _, addr in jobs)
        )
        passed: dict[RevisionKey, set[str]] = {}
        for (key, addr), ok in zip(jobs, results, strict=True):
            if ok and addr in self._wanted.get(key, ()):  # still wanted after the round
                passed.setdefault(key, set()).add(addr)
        for key, addrs in passed.items():
            log.info("pods healthy", extra={"revision": str(key), "pods": sorted(addrs)})
            self._set_healthy(key, self._healthy.get(key, set()) | addrs)
