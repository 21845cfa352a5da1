"""Where each replica's cold start went: the supervisor's own phases and the model server's.

A cold start runs from the supervisor's decision to start a replica to the replica marked ready.
The phases, in order (one that does not apply is absent):

- ``spawn``: the decision → the model-server process exists (spawned or forked). It includes the
  wait for the revision's artifact (the runtime's prefetch) unless the model server reports a
  ``fetch`` phase, which then gets that wait added to its own.
- ``imports``, ``accelerator_init``, ``fetch``, ``load``, ``warmup``: reported by the model
  server itself (:mod:`modelserver.phases`, ``GET /zeroserve/phases`` on its port), read once the
  replica is ready. A command-based server that reports nothing has none of them.
- ``ready``: what is left until the supervisor marks the replica ready: the queue-proxy's
  readiness cue after the model server is ready (for a server that reports nothing, its whole
  start).

Each cold start is logged (one ``cold-start phase`` line per phase, then ``cold start`` with the
total), observed in ``zeroserve_cold_start_phase_seconds{phase, revision, namespace}``, and kept
as the last one of its revision for ``/v1/revisions`` (``last_cold_start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("zeroserve.coldstart")

PHASES = ("spawn", "imports", "accelerator_init", "fetch", "load", "warmup", "ready")
REPORT_PATH = "/zeroserve/phases"
REPORT_TIMEOUT_S = 2.0
MAX_PREDATE_S = 600.0
"""A model server's start reported this long before the decision is taken to be on another
clock (the supervisor's own mark is used instead)."""
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True, slots=True)
class ReportedPhase:
    """One phase the model server reported: its seconds, and its end after the process start."""

    phase: str
    seconds: float
    since_start_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ColdStart:
    """One replica's cold start: when it was decided (unix seconds), how long it took in all,
    and each phase's seconds in order."""

    namespace: str
    revision: str
    pod: str
    started_at: float
    total_s: float
    phases: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "started_at": round(self.started_at, 3),
            "total_s": round(self.total_s, 4),
            "phases": {name: round(s, 4) for name, s in self.phases},
        }


@dataclass(slots=True)
class StartTimer:
    """The supervisor's marks for one replica's start, in ``time.monotonic()`` seconds: on Linux
    CLOCK_MONOTONIC, the clock the model server reports its own start on, so the two compare."""

    decided: float
    prefetched: float | None = None
    """When the wait for the artifact ended (None: there was none)."""
    spawned: float | None = None
    """When the supervisor had the model-server process (spawned or forked)."""


@dataclass(frozen=True, slots=True)
class Report:
    """What a model server said about its start: when it began (``time.monotonic()``; None if
    it did not say) and its phases in order."""

    started_monotonic: float | None
    phases: tuple[ReportedPhase, ...]


def parse_report(data: object) -> Report | None:
    """A ``GET /zeroserve/phases`` body; None for anything else (a server of its own that
    answers that path differently)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("phases"), list):
        return None
    out: list[ReportedPhase] = []
    for item in data["phases"]:
        if not isinstance(item, Mapping):
            return None
        name, seconds, since = item.get("phase"), item.get("seconds"), item.get("since_start_s")
        if name not in PHASES or name in ("spawn", "ready"):
            return None
        if not _seconds(seconds) or not _seconds(since):
            return None
        out.append(ReportedPhase(str(name), float(seconds), float(since)))  # type: ignore[arg-type]
    started = data.get("started_monotonic")
    return Report(float(started) if _seconds(started) else None, tuple(out))  # type: ignore[arg-type]


def _seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def combine(
    timer: StartTimer, ready_at: float, report: Report | None
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """The total and the phases of one cold start (see the module doc); all times monotonic.

    The model server's start comes from its report (else: when the supervisor had the process);
    a reported phase counts only from the decision on (a process started before it, e.g. one
    handed over ready-made, does not charge its earlier life to this cold start), so the phases
    add up to the total but for the model server's few milliseconds between phases.

    Worked: decided at 0, no artifact wait, the model server starts at 0.004 and reports imports
    0.9 s (ending 0.9 after its start), fetch 0.01 (0.91), load 0.05 (0.96), warmup 0.02 (0.98);
    marked ready at 1.0 → total 1.0: spawn 0.004, imports 0.9, …, ready 1.0 − 0.984 = 0.016.
    """
    total_s = max(ready_at - timer.decided, 0.0)
    prefetched = timer.decided if timer.prefetched is None else timer.prefetched
    reported = report.phases if report is not None else ()
    model_start = timer.spawned if timer.spawned is not None else prefetched
    started = None if report is None else report.started_monotonic
    if started is not None and timer.decided - MAX_PREDATE_S <= started <= ready_at:
        model_start = started  # the same clock, as on Linux
    wait_s = prefetched - timer.decided
    fetch_reported = any(p.phase == "fetch" for p in reported)
    spawn_end = min(max(model_start, prefetched), ready_at)
    spawn_s = spawn_end - prefetched + (0.0 if fetch_reported else wait_s)
    phases: list[tuple[str, float]] = [("spawn", spawn_s)]
    model_end = spawn_end
    for p in reported:
        end = min(model_start + p.since_start_s, ready_at)
        seconds = max(min(p.seconds, end - prefetched), 0.0)  # not before the decision
        phases.append((p.phase, seconds + wait_s if p.phase == "fetch" else seconds))
        model_end = max(model_end, end)
    phases.append(("ready", max(ready_at - model_end, 0.0)))
    return total_s, tuple(phases)


async def fetch_report(
    session: aiohttp.ClientSession, url: str, timeout_s: float = REPORT_TIMEOUT_S
) -> Report | None:
    """The model server's phases at ``url``; None when it reports none (or cannot be asked)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                return None
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return parse_report(data)


class ColdStarts:
    """The cold starts of this runtime's replicas: logged, in a histogram, the last one of each
    revision kept."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.histogram = Histogram(
            "zeroserve_cold_start_phase_seconds",
            "Seconds of each phase of a replica's cold start (spawn, imports, accelerator_init, "
            "fetch, load, warmup, ready).",
            ("phase", "revision", "namespace"),
            registry=self.registry,
            buckets=BUCKETS,
        )
        self._last: dict[tuple[str, str], ColdStart] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # told of each recorded cold start (the runtime's tracing: its requests' cold_start spans)
        self.listeners: list[Callable[[ColdStart], None]] = []

    def last(self, namespace: str, revision: str) -> ColdStart | None:
        """The revision's latest recorded cold start, if any."""
        return self._last.get((namespace, revision))

    def record(self, cold: ColdStart) -> None:
        """Log, observe and keep ``cold``."""
        fields = {"revision": f"{cold.namespace}/{cold.revision}", "pod": cold.pod}
        for phase, seconds in cold.phases:
            log.info(
                "cold-start phase", extra={**fields, "phase": phase, "seconds": round(seconds, 4)}
            )
            self.histogram.labels(phase, cold.revision, cold.namespace).observe(seconds)
        log.info("cold start", extra={**fields, "total_s": round(cold.total_s, 4)})
        self._last[(cold.namespace, cold.revision)] = cold
        for listener in self.listeners:
            try:
                listener(cold)
            except Exception:
                log.exception("cold start listener failed", extra=fields)

    def collect(
        self,
        *,
        namespace: str,
        revision: str,
        pod: str,
        started_at: float,
        timer: StartTimer,
        ready_at: float,
        session: aiohttp.ClientSession,
        report_url: str,
    ) -> None:
        """Ask the model server for its phases in the background, then record the cold start
        (readiness never waits for this)."""

        async def run() -> None:
            report = await fetch_report(session, report_url)
            total_s, phases = combine(timer, ready_at, report)
            self.record(
                ColdStart(
                    namespace=namespace,
                    revision=revision,
                    pod=pod,
                    started_at=started_at,
                    total_s=total_s,
                    phases=phases,
                )
            )

        task = asyncio.create_task(run(), name=f"cold start {pod}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop asking (a replica stopped meanwhile is not recorded)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
