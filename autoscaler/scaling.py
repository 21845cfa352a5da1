"""The KPA decider: pure functions from observed load to desired pods (reference §1.3–§1.6).

No asyncio, no I/O: frozen dataclasses in, frozen dataclasses out; ``now`` is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class DeciderSpec:
    """What the decider needs for one revision (Knative's ``DeciderSpec``, snake_case).

    Values are resolved from config-autoscaler and the revision's annotations
    (``autoscaler.resolve``). ``panic_threshold`` is a ratio (2.0 = 200 %). Seconds end in ``_s``.
    """

    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scaling_metric: Literal["concurrency", "rps"] = "concurrency"
    target_value: float = 70.0
    total_value: float = 100.0
    target_burst_capacity: float = 211.0
    activator_capacity: float = 100.0
    panic_threshold: float = 2.0
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    initial_scale: int = 1
    reachable: bool = True
    activation_scale: int = 0
    scale_down_delay_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundsSpec:
    """The bounds and scale-to-zero settings of one revision (reference §1.6).

    ``max_scale`` of 0 is unbounded. Seconds end in ``_s``.
    """

    min_scale: int = 0
    max_scale: int = 0
    initial_scale: int = 1
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_s: float = 0.0
    stable_window_s: float = 60.0
