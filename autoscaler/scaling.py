"""The KPA decider: pure functions from observed load to desired pods (reference §1.3–§1.6).

No asyncio, no I/O: frozen dataclasses in, frozen dataclasses out; ``now`` is an argument.

* ``scale``: Knative's ``autoscaler.Scale`` (§1.3–§1.5): rate limits, panic, scale-down delay, EBC.
* ``apply_bounds``: the KPA reconciler's ``scaler.scale`` + ``computeActiveCondition`` (§1.6):
  min/max/initial scale and when to scale to zero.
* ``initial_state``, ``initial_ebc``, ``same_sign``, ``sample_size``: the small rules around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from metrics.windows import MaxEntries, max_window_current, max_window_record


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
    activation_timeout_s: float = 630.0
    """How long a revision may stay activating before it is scaled to zero: Knative's
    progress-deadline (600 s) + its 30 s activationTimeoutBuffer."""


# --- the decider (§1.3–§1.5) ---------------------------------------------------------------------

DELAY_GRANULARITY_S: Final = 2.0
"""Slot width of the scale-down-delay max window: Knative's 2 s decision tick."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingState:
    """What ``scale`` remembers between ticks for one revision (Knative's autoscaler fields).

    ``panic_time`` is the last tick that was over the panic threshold (None = not panicking);
    ``max_panic_pods`` the high-water mark while panicking; ``delay_window`` the scale-down-delay
    max window as (slot, desired) pairs, values strictly decreasing (``metrics.windows``).
    """

    panic_time: float | None = None
    max_panic_pods: int = 0
    delay_window: MaxEntries = ()

    @property
    def panicking(self) -> bool:
        """True while in panic mode."""
        return self.panic_time is not None


ScaleReason = Literal["stable", "panic", "invalid"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleResult:
    """One decision (Knative's ``ScaleResult``) plus what it was computed from.

    ``valid=False`` means no decision: keep the previous desired scale (the multiscaler ignores it).
    ``excess_burst_capacity`` < 0 means the activator should stay in the path.
    """

    desired_pods: int
    excess_burst_capacity: int
    valid: bool
    panicking: bool
    reason: ScaleReason
    observed_stable: float = 0.0
    observed_panic: float = 0.0
    ready_pods: int = 0


def initial_state(spec: DeciderSpec, ready_pods: int | None, now: float) -> ScalingState:
    """The state of a newly created autoscaler (Knative's start-up panic, §1.3).

    With more than one ready pod it starts in panic at ``now`` with ``max_panic_pods = ready``, so
    a restarted autoscaler keeps the current scale for a stable window while its history is
    missing (``test_startup_panic_keeps_the_scale``); with 0 or 1 it starts unpanicked.
    """
    del spec  # Knative's rule depends on the ready count only; spec kept for a stable signature.
    ready = ready_pods or 0
    if ready > 1:
        return ScalingState(panic_time=now, max_panic_pods=ready)
    return ScalingState(max_panic_pods=ready)


def _invalid(state: ScalingState) -> ScaleResult:
    return ScaleResult(
        desired_pods=0,
        excess_burst_capacity=0,
        valid=False,
        panicking=state.panic_time is not None,
        reason="invalid",
    )


def scale(
    spec: DeciderSpec,
    state: ScalingState,
    *,
    ready_pods: int | None,
    stable: float | None,
    panic: float | None,
    now: float,
) -> tuple[ScaleResult, ScalingState]:
    """One KPA decision: Knative's ``Scale()`` (§1.3 steps 1–12, §1.4, §1.5), state in, state out.

    ``ready_pods`` None = the pods could not be counted (Knative's non-NotFound error; NotFound is
    0). ``stable``/``panic`` None = no data (ErrNoData). Either gives ``valid=False`` and the state
    unchanged. Worked numbers below use target 10, total 13.33, TBC 100, rates 10.
    """
    if ready_pods is None or stable is None or panic is None:
        return _invalid(state), state

    # 1. Divide by at least one pod: 0 ready (scaled to zero, or none ready yet) counts as 1.
    rpc = ready_pods if ready_pods > 1 else 1
    # 3. Rate limits. ready 2, up-rate 1.1 → ceil(2.2) = 3; ready 100, down-rate 1.1 → 90.
    #    Unreachable (no traffic routed): no lower limit, drop at once (DecreaseNonReachable → 1).
    max_up = math.ceil(spec.max_scale_up_rate * rpc)
    max_down = math.floor(rpc / spec.max_scale_down_rate) if spec.reachable else 0
    # 4. Pods for the observed load: stable 50, target 10 → 5; panic 3.1, target 1 → 4.
    target = spec.target_value
    dspc = math.ceil(stable / target)
    dppc = math.ceil(panic / target)
    # 5. Clamp both into [max_down, max_up]: ready 0, stable 1000 → min(100, 10) = 10.
    desired_stable = min(max(dspc, max_down), max_up)
    desired_panic = min(max(dppc, max_down), max_up)
    # 6. Activation scale: any load at all asks for at least activation-scale pods (3: 1 → 3).
    activation = spec.activation_scale
    if activation > 1:
        if dspc > 0 and activation > desired_stable:
            desired_stable = activation
        if dppc > 0 and activation > desired_panic:
            desired_panic = activation
    # 7. Over the threshold on the *unclamped* panic count: panic 100, target 10, 1 pod → 10/1 ≥ 2.
    over = dppc / rpc >= spec.panic_threshold
    # 8. Enter or extend panic on every tick over the threshold; leave it only once a whole stable
    #    window has passed since the last such tick (strict: t+60 stays, t+60.001 leaves).
    panic_time = state.panic_time
    max_panic = state.max_panic_pods
    if over:
        panic_time = now
    elif panic_time is not None and panic_time + spec.stable_window_s < now:
        panic_time = None
        max_panic = 0
    # 9. In panic: the larger of stable and panic, and never below the panic high-water mark.
    #    PanicStableLargerThanPanic: stable 50, panic 30, t 1 → 50 (> max 5, so max becomes 50).
    desired = desired_stable
    if panic_time is not None:
        if desired_panic > desired:
            desired = desired_panic
        if desired > max_panic:
            max_panic = desired
        desired = max_panic
    # 10. Scale-down delay: the max of the desired counts of the last ceil(delay / 2 s) ticks,
    #     so a drop takes effect only a delay later (delay 10 s = 5 slots: 10, 3, 3, 3, 3 → 10).
    window = state.delay_window
    if spec.reachable and spec.scale_down_delay_s > 0:
        slots = math.ceil(spec.scale_down_delay_s / DELAY_GRANULARITY_S)
        slot = int(now // DELAY_GRANULARITY_S)
        window = max_window_record(window, slots, slot, desired)
        desired = max_window_current(window, slots, slot)
    # 11. EBC = spare capacity after the burst, with the *actual* ready count and the panic value:
    #     1 pod × 13.33 - TBC 100 - panic 50 = -136.67 → -137 (StableModeNoChange).
    tbc = spec.target_burst_capacity
    if tbc == 0:
        ebc = 0
    elif tbc > 0:
        ebc = math.floor(ready_pods * spec.total_value - tbc - panic)
    else:
        ebc = -1  # TBC -1: the activator always stays in the path.

    if (
        panic_time == state.panic_time
        and max_panic == state.max_panic_pods
        and window is state.delay_window
    ):
        new_state = state  # nothing changed: no allocation on the common stable tick
    else:
        new_state = ScalingState(
            panic_time=panic_time, max_panic_pods=max_panic, delay_window=window
        )
    panicking = panic_time is not None
    result = ScaleResult(
        desired_pods=desired,
        excess_burst_capacity=ebc,
        valid=True,
        panicking=panicking,
        reason="panic" if panicking else "stable",
        observed_stable=stable,
        observed_panic=panic,
        ready_pods=ready_pods,
    )
    return result, new_state


def initial_ebc(spec: DeciderSpec) -> int:
    """The multiscaler's EBC before the first tick (§1.3, §5.4).

    TBC -1 or 0 → itself; else ``int(initial_scale × total - TBC)``: 2 × 25 - 42 = 8.
    """
    tbc = spec.target_burst_capacity
    if tbc in (-1.0, 0.0):
        return int(tbc)
    return int(spec.initial_scale * spec.total_value - tbc)


def same_sign(a: int, b: int) -> bool:
    """Knative's ``sameSign``: 0 counts as positive (0, 1 → True; 0, -42 → False)."""
    return (a < 0) == (b < 0)


# Knative's populationMeanSampleSize: 95 % confidence (z = 1.96), σ 10, margin of error 5 %.
_SAMPLE_X: Final = 1.96 * 1.96 * 100 / (5 * 5)  # 15.3664


def sample_size(n: int) -> int:
    """How many of ``n`` ready pods to scrape (§2.2): 0→0, 1→1, 2→2, 5→4, 10→7, 100→14, 1000→16.

    ``ceil(n·X / (n + X - 1))`` with X = 15.3664, every pod up to 3.
    """
    if n <= 3:
        return max(n, 0)
    return math.ceil(n * _SAMPLE_X / (n + _SAMPLE_X - 1))


# --- bounds and scale to zero (§1.6) -------------------------------------------------------------

ActivityState = Literal["activating", "active", "inactive"]
BoundsReason = Literal[
    "no-metrics",
    "stable",
    "bounds",
    "scale-to-zero-disabled",
    "activating",
    "activation-timeout",
    "idle",
    "deactivate",
    "retention",
    "grace",
    "to-zero",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Activity:
    """The revision's Active condition (Knative's PA ``Active``: Unknown/True/False).

    ``since`` is when ``state`` last changed (the condition's lastTransitionTime); ``initialized``
    turns true once min-ready pods were ready (ScaleTargetInitialized) and stays true. A new
    revision starts ``Activity(state="activating", since=created)``.
    """

    state: ActivityState = "activating"
    since: float = 0.0
    initialized: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundsDecision:
    """What to do with the scale target now.

    ``scale`` None = leave the replicas as they are; otherwise set them (a caller skips a patch
    equal to the current replicas). ``want`` is what Knative's scaler returns even when it does not
    apply it (-1 = unknown), the input of the Active condition. ``recheck_after_s`` asks for
    another pass that much later even without a new decision (Knative's enqueueCB).
    """

    scale: int | None
    want: int
    reason: BoundsReason
    recheck_after_s: float | None = None


def _bounded_scale(
    bounds: BoundsSpec,
    *,
    desired: int,
    activity: Activity,
    reachable: bool,
    now: float,
    proxy_for_s: float,
) -> BoundsDecision:
    """Knative's ``scaler.scale`` + ``handleScaleToZero`` without the SKS, the probe or the patch."""
    activating = activity.state == "activating"
    # 1. No decision yet (-1) and not activating: metrics are not collected yet, touch nothing.
    if desired < 0 and not activating:
        return BoundsDecision(scale=None, want=desired, reason="no-metrics")
    # 2.–3. min (0 when unreachable: no traffic is routed there), raised to the initial scale until
    #       the target first had that many ready pods; max 0 = unbounded.
    lo = bounds.min_scale if reachable else 0
    hi = bounds.max_scale
    if bounds.initial_scale > 1 and not activity.initialized and reachable:
        lo = max(bounds.initial_scale, lo)
    # 4. applyBounds: min 2, desired 0 → 2; max 5, desired 9 → 5. Activating with -1 → min.
    x = lo if desired < lo else hi if hi and desired > hi else desired
    if x != 0:
        return BoundsDecision(scale=x, want=x, reason="stable" if x == desired else "bounds")
    # 5. handleScaleToZero.
    if not bounds.enable_scale_to_zero:
        return BoundsDecision(scale=1, want=1, reason="scale-to-zero-disabled")
    held = now - activity.since
    if activating:
        # Give up on a revision that never became ready: activating for > 630 s → 0.
        timeout = bounds.activation_timeout_s
        if held > timeout:
            return BoundsDecision(scale=0, want=0, reason="activation-timeout")
        return BoundsDecision(
            scale=None, want=-1, reason="activating", recheck_after_s=timeout - held
        )
    window = bounds.stable_window_s
    if activity.state == "active":
        if held >= window:
            # Idle for long enough: mark inactive now, scale to zero on the next pass.
            return BoundsDecision(scale=None, want=0, reason="deactivate", recheck_after_s=0.0)
        # Active for less than a stable window: down to one pod until it has been.
        return BoundsDecision(scale=1, want=1, reason="idle", recheck_after_s=window - held)
    # Inactive: the activator is in the path (always, in zeroserve), so no probe is needed.
    grace = bounds.scale_to_zero_grace_period_s
    retention = bounds.scale_to_zero_pod_retention_s if reachable else 0.0
    if held >= max(grace, retention):
        return BoundsDecision(scale=0, want=0, reason="to-zero")
    if retention > 0 and held < retention:
        # Keep the last pod for the retention period: inactive 60 s of 120 s → recheck in 60 s.
        return BoundsDecision(
            scale=None, want=0, reason="retention", recheck_after_s=retention - held
        )
    # The grace period is how long the activator must have been in the path; it always has been
    # (proxy_for_s = inf), so this is Knative's fast path.
    remaining = grace - proxy_for_s
    if remaining <= 0:
        return BoundsDecision(scale=0, want=0, reason="to-zero")
    return BoundsDecision(scale=None, want=0, reason="grace", recheck_after_s=remaining)


def _active_condition(
    bounds: BoundsSpec,
    activity: Activity,
    *,
    want: int,
    ready_pods: int,
    reachable: bool,
    now: float,
) -> Activity:
    """Knative's ``computeActiveCondition`` (kpa.go)."""
    lo = bounds.min_scale if reachable else 0
    # Until initialized the revision must reach its initial scale; afterwards one pod is enough.
    min_ready = max(lo, 1) if activity.initialized else max(lo, bounds.initial_scale)
    initialized = activity.initialized or ready_pods >= min_ready
    current = activity.state
    state: ActivityState
    if want == 0 or min_ready == 0:
        state = "inactive"
    elif ready_pods < min_ready:
        state = "activating" if want > 0 or current != "inactive" else "inactive"
    elif want > 0 or current != "inactive":
        state = "active"
    else:
        state = current
    if state == current and initialized == activity.initialized:
        return activity
    return Activity(
        state=state, since=now if state != current else activity.since, initialized=initialized
    )


def apply_bounds(
    bounds: BoundsSpec,
    *,
    desired: int,
    ready_pods: int,
    activity: Activity,
    reachable: bool,
    now: float,
    proxy_for_s: float = math.inf,
) -> tuple[BoundsDecision, Activity]:
    """Bound the decider's ``desired`` and decide when to scale to zero (§1.6), state in, state out.

    ``desired`` is the decider's latest valid desired scale (-1 before the first). Returns the
    decision and the revision's new Active condition. The path to zero: desired 0 while active
    for less than a stable window → 1 pod ("idle"); active for ≥ a stable window → inactive
    ("deactivate"); inactive for ≥ max(grace, retention), or with no retention pending while the
    activator has been in the path for the grace period → 0 ("to-zero").

    Departures from Knative, and why:

    * No SKS and no activator probe: zeroserve's activator is always in the path (Knative's
      TBC -1 case, which skips the probe). ``proxy_for_s`` (Knative's ``sks.ProxyFor()``, how
      long the activator has been in the path) defaults to infinity, so after the retention check
      an inactive revision goes to zero at once, as Knative's fast path does with TBC -1; a
      caller that lets traffic bypass the activator passes the real time.
    * Scale-target initialization needs ready ≥ min-ready only (Knative also waits for the SKS
      private service name, which zeroserve has not).
    * While activating, the recheck comes after the *remaining* activation time, not the whole
      timeout; after "deactivate" it comes at once (0 s), not after Knative's 3 s, since no SKS
      has to settle.
    * The activation timeout is ``bounds.activation_timeout_s`` (default 630 s = progress
      deadline 600 s + 30 s) rather than read from config-deployment.
    * Skipping a patch equal to the current replicas is the caller's job.
    """
    decision = _bounded_scale(
        bounds,
        desired=desired,
        activity=activity,
        reachable=reachable,
        now=now,
        proxy_for_s=proxy_for_s,
    )
    new_activity = _active_condition(
        bounds,
        activity,
        want=decision.want,
        ready_pods=ready_pods,
        reachable=reachable,
        now=now,
    )
    return decision, new_activity
