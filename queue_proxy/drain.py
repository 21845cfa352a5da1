"""Knative's drainer (reference §3.6): readiness fails at once, then wait for a quiet period.

Every request that arrives while draining restarts the quiet period; ``drain()`` returns once
``quiet_period_s`` has passed with no new request. Concurrent callers share one drain.
``reset()`` ends a drain and serves as before (the preStop hook ran, but no SIGTERM followed:
the kubelet restarts only the model server after a failed liveness probe).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("zeroserve.queue_proxy.drain")


class Drainer:
    def __init__(self, quiet_period_s: float) -> None:
        self.quiet_period_s = quiet_period_s
        self.draining = False
        self._last_request = 0.0
        self._task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        """A non-probe request arrived (called by the handler only while draining)."""
        self._last_request = asyncio.get_running_loop().time()

    async def drain(self) -> None:
        if self._task is None:
            self.draining = True
            self._last_request = asyncio.get_running_loop().time()
            log.info("draining", extra={"quiet_period_s": self.quiet_period_s})
            self._task = asyncio.create_task(self._wait_quiet())
        task = self._task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this caller was cancelled, not the drain

    def reset(self) -> None:
        """Not draining any more: readiness passes again; a drain in progress returns now."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        self.draining = False
        log.info("drain reset")

    async def _wait_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            remaining = self._last_request + self.quiet_period_s - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)  # a timer, re-armed if a request came meanwhile
        log.info("drained")
