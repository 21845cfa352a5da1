"""Readiness of the model server (reference §3.4): TCP connect or HTTP GET on 127.0.0.1.

One loop probes for the whole process (so concurrent health checks share it: single flight).
While not ready it probes aggressively, every 50 ms with 100 ms attempts (Knative's default when
``periodSeconds`` is 0), so a ready replica is known at once; once ready it re-probes every
``periodSeconds`` (1 s when 0) and turns unready after ``failureThreshold`` failures in a row.

zeroserve's departure: during the first ``START_PHASE_S`` after the loop starts, the aggressive
probe runs every 5 ms instead of 50 ms. A model server that starts fast (the GPU emulator takes
~250 ms) is then seen within 5 ms, not 50 ms, on the cold-start path; an attempt on a port that
is not listening yet is one refused connect on loopback (~0.1 ms of CPU), so the phase costs
about 2 % of a core for its 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cluster.spec import ReadinessProbe

log = logging.getLogger("zeroserve.queue_proxy.probe")

AGGRESSIVE_PERIOD_S = 0.05
AGGRESSIVE_TIMEOUT_S = 0.1
START_PERIOD_S = 0.005
START_PHASE_S = 2.0
_USER_AGENT = "kube-probe/1.30"


def unready_delay(since_start_s: float) -> float:
    """Seconds to the next attempt while the model server is not ready (``periodSeconds`` 0):
    5 ms during the start phase, then Knative's 50 ms."""
    return START_PERIOD_S if since_start_s < START_PHASE_S else AGGRESSIVE_PERIOD_S


async def probe_once(probe: ReadinessProbe, port: int, timeout_s: float) -> bool:
    """One attempt: True if the model server answered (TCP connect, or HTTP 200-399)."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if probe.kind == "tcp":
                    return True
                writer.write(
                    f"GET {probe.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"User-Agent: {_USER_AGENT}\r\nK-Kubelet-Probe: queue\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                line = await reader.readline()
                parts = line.split(b" ", 2)
                return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False


class Readiness:
    """The model server's readiness as last probed; ``run()`` keeps it current, and
    :meth:`check` probes afresh for a health check, as Knative's queue-proxy does."""

    def __init__(self, probe: ReadinessProbe, user_port: int) -> None:
        self.probe = probe
        self.port = probe.port or user_port
        self.ready = False
        self.became_ready = asyncio.Event()
        self._successes = 0
        self._failures = 0
        self._wake = asyncio.Event()  # run() probes aggressively at once
        self._checking: asyncio.Future[bool] | None = None  # the one check in flight

    async def check(self) -> bool:
        """Whether the model server answers now, for a health check (the kubelet's, the
        activator's): Knative probes the model server for each one rather than answer from the
        last periodic probe, so a model server that restarted is not reported ready before it
        listens again. Unready as last probed: False at once (``run()`` probes aggressively).
        Ready: attempts of 100 ms, every 50 ms, for up to the probe's ``timeoutSeconds`` (Knative
        polls up to 10 s; the kubelet's own timeout is ``timeoutSeconds``); concurrent checks
        share one. None answers: unready from now, and ``run()`` probes aggressively."""
        if not self.ready:
            return False
        checking = self._checking
        if checking is None:
            checking = self._checking = asyncio.ensure_future(self._check())
            checking.add_done_callback(self._checked)
        return await asyncio.shield(checking)

    def _checked(self, _: asyncio.Future[bool]) -> None:
        self._checking = None

    async def _check(self) -> bool:
        loop = asyncio.get_running_loop()
        until = loop.time() + max(self.probe.timeout_s, AGGRESSIVE_TIMEOUT_S)
        while True:
            left = until - loop.time()
            if await probe_once(self.probe, self.port, min(AGGRESSIVE_TIMEOUT_S, max(left, 0.01))):
                return True
            if loop.time() + AGGRESSIVE_PERIOD_S >= until:
                break
            await asyncio.sleep(AGGRESSIVE_PERIOD_S)
        if self.ready:
            self.ready = False
            self.became_ready.clear()
            self._successes = self._failures = 0
            self._wake.set()
            log.warning(
                "model server not ready: a health check's probe failed", extra={"port": self.port}
            )
        return False

    def _record(self, ok: bool) -> None:
        if ok:
            self._successes += 1
            self._failures = 0
            if not self.ready and self._successes >= self.probe.success_threshold:
                self.ready = True
                self.became_ready.set()
                log.info("model server ready", extra={"port": self.port})
        else:
            self._failures += 1
            self._successes = 0
            if self.ready and self._failures >= self.probe.failure_threshold:
                self.ready = False
                self.became_ready.clear()
                log.warning("model server not ready", extra={"port": self.port})

    async def run(self) -> None:
        p = self.probe
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if not self.ready and p.period_s == 0:
                ok = await probe_once(p, self.port, AGGRESSIVE_TIMEOUT_S)
                self._record(ok)
                if not self.ready:
                    await asyncio.sleep(unready_delay(loop.time() - started))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # (a failed check wakes it early)
                await asyncio.wait_for(self._wake.wait(), p.period_s or 1.0)
            if self._wake.is_set() and not self.ready:
                continue  # a check found it unready: probe aggressively (period 0)
            self._record(await probe_once(p, self.port, p.timeout_s))
