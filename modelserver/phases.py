"""Where the model server's own start went: one timed phase after another, from the process's
start to ready, logged as they end and served at ``GET /zeroserve/phases`` for the supervisor.

Phases, in order (a phase that does not apply is absent): ``imports`` (process start → the
format's library imported; ~0 in a replica forked from a parent that imported it),
``accelerator_init`` (the CUDA context, timed apart from loading; absent on the CPU),
``fetch`` (the artifact fetched and held), ``load``, ``warmup`` (the warm-up inference).
Durations are on the monotonic clock; the process's start is read from ``/proc/self/stat``
(Linux; 10 ms ticks) and otherwise taken as the moment this module was imported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

_IMPORTED_AT = time.monotonic()


def process_started_monotonic() -> float:
    """This process's start on the ``time.monotonic()`` clock (a fork's start for a forked one)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            # comm (field 2) may hold spaces or ')': the fields after the last ')' are fixed.
            rest = fh.read().rsplit(b")", 1)[1].split()
        start_ticks = int(rest[19])  # field 22 (starttime), counted from field 3
        ticks = os.sysconf("SC_CLK_TCK")
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT
    now = time.monotonic()
    # never later than what this process has already seen run
    return min(now - max(age_s, 0.0), _IMPORTED_AT)


@dataclass(frozen=True, slots=True)
class Phase:
    """One finished phase: its name, how long it took, and when it ended after the start."""

    phase: str
    seconds: float
    since_start_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "seconds": round(self.seconds, 6),
            "since_start_s": round(self.since_start_s, 6),
        }


@dataclass(slots=True)
class PhaseClock:
    """The phases so far, measured from ``started`` (monotonic seconds)."""

    started: float = field(default_factory=process_started_monotonic)
    started_at: float = 0.0
    """The start in unix seconds, for display."""
    phases: list[Phase] = field(default_factory=list)
    done: bool = False
    """True once the server is ready or has failed: no phase follows."""

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = time.time() - (time.monotonic() - self.started)

    def end(self, phase: str, began: float, now: float | None = None) -> Phase:
        """Record ``phase`` as having run from ``began`` to ``now`` (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        done = Phase(phase, max(now - began, 0.0), max(now - self.started, 0.0))
        self.phases.append(done)
        return done

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": round(self.started_at, 3),
            # the start on CLOCK_MONOTONIC, which the supervisor on this machine shares
            "started_monotonic": round(self.started, 6),
            "done": self.done,
            "phases": [p.to_dict() for p in self.phases],
        }
