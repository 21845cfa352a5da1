"""Where the activator's stats go: the autoscaler in the same process, or over a websocket.

While the websocket is down, stats are aggregated per revision, not dropped: request counts are
summed (every request is counted once), and concurrency is the mean of the aggregated reports
(each covers one reporting period, so the mean is the time-weighted concurrency over the outage;
the latest alone would hide a burst, the sum would count each period's concurrency many times).
The aggregate carries the latest timestamp and is sent first on reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

import aiohttp

from metrics.stat import Stat, WireStat, encode_batch

log = logging.getLogger("zeroserve.activator")


class StatSink(Protocol):
    """Takes a batch of stats; never blocks the caller (the request path)."""

    def put(self, batch: list[WireStat]) -> None: ...

    @property
    def connected(self) -> bool:
        """The stats reach the autoscaler now (the activator's health depends on it)."""
        ...


class InProcessStatSink:
    """Hands each batch to a callable: the local runtime wires it to the autoscaler's collector."""

    def __init__(self, deliver: Callable[[list[WireStat]], None]) -> None:
        self._deliver = deliver

    @property
    def connected(self) -> bool:
        return True  # the autoscaler is in this process

    def put(self, batch: list[WireStat]) -> None:
        if batch:
            self._deliver(batch)


class _Aggregate:
    __slots__ = ("conc_sum", "count", "n", "namespace", "pod", "proxied_count", "revision", "ts")

    def __init__(self, ws: WireStat) -> None:
        self.namespace, self.revision, self.pod = ws.namespace, ws.revision, ws.stat.pod_name
        self.conc_sum = 0.0
        self.count = self.proxied_count = 0.0
        self.n = 0
        self.ts = 0

    def add(self, ws: WireStat) -> None:
        self.conc_sum += ws.stat.average_concurrent_requests
        self.count += ws.stat.request_count
        self.proxied_count += ws.stat.proxied_request_count
        self.n += 1
        self.ts = max(self.ts, ws.stat.timestamp)

    def stat(self) -> WireStat:
        return WireStat(
            namespace=self.namespace,
            revision=self.revision,
            stat=Stat(
                pod_name=self.pod,
                average_concurrent_requests=self.conc_sum / max(1, self.n),
                request_count=self.count,
                proxied_request_count=self.proxied_count,
                timestamp=self.ts,
            ),
        )


def aggregate(stats: list[WireStat]) -> list[WireStat]:
    """One stat per revision: counts summed, concurrency averaged over the reports."""
    by_rev: dict[tuple[str, str], _Aggregate] = {}
    for ws in stats:
        key = (ws.namespace, ws.revision)
        agg = by_rev.get(key)
        if agg is None:
            agg = by_rev[key] = _Aggregate(ws)
        agg.add(ws)
    return [agg.stat() for agg in by_rev.values()]


class WebsocketStatSink:
    """A durable websocket client to the autoscaler's stat server: one text message per batch.

    Reconnects with backoff (100 ms × 1.3 per failure, jitter up to +50 %, capped at
    ``max_backoff_s``) as Knative's ``pkg/websocket``. Call :meth:`run` in a task.
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        initial_backoff_s: float = 0.1,
        backoff_factor: float = 1.3,
        max_backoff_s: float = 5.0,
        handshake_timeout_s: float = 3.0,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self._session = session
        self._own_session = session is None
        self._initial_backoff_s = initial_backoff_s
        self._backoff_factor = backoff_factor
        self._max_backoff_s = max_backoff_s
        self._handshake_timeout_s = handshake_timeout_s
        self._rng = rng or random.Random()
        self._queue: list[list[WireStat]] = []  # batches to send as they are
        self._pending: list[WireStat] = []  # stats held while disconnected, aggregated on send
        self._wakeup = asyncio.Event()
        self._connected = asyncio.Event()
        self.connects = 0
        self.errors = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def put(self, batch: list[WireStat]) -> None:
        if not batch:
            return
        if self.connected:
            self._queue.append(batch)
            self._wakeup.set()
        else:
            self._pending.extend(batch)
            if len(self._pending) > 4096:  # bound memory on a long outage
                self._pending = aggregate(self._pending)

    async def run(self) -> None:
        """Connect, send, reconnect on failure; until cancelled."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        backoff = self._initial_backoff_s
        try:
            while True:
                try:
                    ws = await asyncio.wait_for(
                        self._session.ws_connect(self.url, heartbeat=10.0 / 3),
                        self._handshake_timeout_s,
                    )
                    async with ws:
                        self.connects += 1
                        backoff = self._initial_backoff_s
                        log.info("stat websocket connected", extra={"url": self.url})
                        await self._serve(ws)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.errors += 1
                    log.warning(
                        "stat websocket failed", extra={"url": self.url, "error": repr(exc)}
                    )
                finally:
                    self._disconnected()
                delay = backoff * (1 + 0.5 * self._rng.random())
                backoff = min(backoff * self._backoff_factor, self._max_backoff_s)
                await asyncio.sleep(delay)
        finally:
            if self._own_session and self._session is not None:
                await self._session.close()

    def _disconnected(self) -> None:
        self._connected.clear()
        for batch in self._queue:  # unsent batches join the aggregate
            self._pending.extend(batch)
        self._queue.clear()

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reader = asyncio.create_task(self._read(ws))
        try:
            if self._pending:
                await ws.send_str(encode_batch(aggregate(self._pending)))
                self._pending.clear()
            self._connected.set()
            while not reader.done():
                waiter = asyncio.create_task(self._wakeup.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                self._wakeup.clear()
                while self._queue and not ws.closed:
                    batch = self._queue[0]
                    await ws.send_str(encode_batch(batch))
                    self._queue.pop(0)
                if ws.closed:
                    break
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    @staticmethod
    async def _read(ws: aiohttp.ClientWebSocketResponse) -> None:
        # Reading is what notices a close from the server (and answers pings).
        async for _msg in ws:
            pass
