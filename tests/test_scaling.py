"""The KPA decider: Knative's vectors by name (§5.1, §5.4, §5.6, §5.10), timelines and properties.

Timelines use no clock at all: ``T0 + 61 * SEC`` is just a float passed as ``now``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.scaling import (
    Activity,
    BoundsDecision,
    BoundsSpec,
    DeciderSpec,
    ScaleResult,
    ScalingState,
    apply_bounds,
    initial_ebc,
    initial_state,
    same_sign,
    sample_size,
    scale,
)

SEC = 1.0
T0 = 1_700_000_000.0  # a multiple of the 2 s delay slot

# --- §5.1 single-step cases ----------------------------------------------------------------------


def knative_spec(t: float, tbc: float) -> DeciderSpec:
    """newTestAutoscaler's spec: target t, total t/0.75, threshold 2, rates 10, window 60 s."""
    return DeciderSpec(
        target_value=t,
        total_value=t / 0.75,
        target_burst_capacity=tbc,
        panic_threshold=2.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=10.0,
        stable_window_s=60.0,
        reachable=True,
        activator_capacity=150.0,
    )


@dataclass(frozen=True, kw_only=True)
class Case:
    t: float = 10.0
    tbc: float = 100.0
    ready: int | None = 1
    stable: float | None = 0.0
    panic: float | None = 0.0
    prep_panic: bool = False  # panicTime = now-5s, maxPanicPods = 5
    up_rate: float = 10.0
    down_rate: float = 10.0
    reachable: bool = True
    metric: str = "concurrency"
    pods: int = 0
    ebc: int = 0
    valid: bool = True
    panicking: bool | None = None


BASE = Case()

SINGLE_STEP = [
    pytest.param(replace(BASE, pods=0, ebc=-87), id="NoDataAtZero"),
    pytest.param(
        replace(BASE, t=181, tbc=-1, stable=21, panic=26, pods=1, ebc=-1),
        id="StableModeUnlimitedTBC",
    ),
    pytest.param(
        replace(BASE, tbc=0, stable=50, panic=49, pods=5, ebc=0, panicking=True), id="0TBC"
    ),
    pytest.param(replace(BASE, stable=50, panic=50, pods=5, ebc=-137), id="StableModeNoChange"),
    pytest.param(
        replace(BASE, t=1, ready=5, stable=50, panic=30, prep_panic=True, pods=50, ebc=-124),
        id="PanicStableLargerThanPanic",
    ),
    pytest.param(
        replace(BASE, t=1, ready=5, stable=20, panic=30, prep_panic=True, pods=30, ebc=-124),
        id="PanicStableLessThanPanic",
    ),
    pytest.param(
        replace(BASE, ready=5, stable=50, panic=50, pods=5, ebc=-84),
        id="StableModeNoChangeAlreadyScaled",
    ),
    pytest.param(
        replace(
            BASE,
            t=1,
            tbc=1982,
            ready=2,
            stable=3,
            panic=3.1,
            up_rate=1.1,
            pods=3,
            ebc=-1983,
            panicking=True,  # unclamped dppc 4 / 2 ≥ 2; the clamped 3 / 2 would not panic
        ),
        id="IncreaseWithSmallScaleUpRate",
    ),
    pytest.param(
        replace(BASE, tbc=1982, ready=100, stable=1, panic=1, down_rate=1.1, pods=90, ebc=-650),
        id="DecreaseWithSmallScaleDownRate",
    ),
    pytest.param(
        replace(
            BASE,
            tbc=1982,
            ready=100,
            stable=1,
            panic=1,
            down_rate=1.1,
            reachable=False,
            pods=1,
            ebc=-650,
        ),
        id="DecreaseNonReachable",
    ),
    pytest.param(
        replace(BASE, tbc=84, stable=50, panic=100, pods=10, ebc=-171, panicking=True),
        id="PanicModeDoublePodCount",
    ),
    pytest.param(
        replace(BASE, tbc=81, ready=0, stable=1000, panic=888, pods=10, ebc=-969, panicking=True),
        id="UseOnePodAsMinimumIfEndpointsNotFound",
    ),
    pytest.param(
        replace(BASE, metric="rps", stable=100, panic=99, pods=10, ebc=-186, panicking=True),
        id="MetricsWithRPS",
    ),
    pytest.param(replace(BASE, stable=None, panic=None, valid=False), id="NoData"),
    pytest.param(
        replace(BASE, tbc=81, ready=None, stable=1000, panic=888, valid=False), id="CantCountPods"
    ),
]


@pytest.mark.parametrize("case", SINGLE_STEP)
def test_autoscaler_scale(case: Case) -> None:
    """TestAutoscalerScale: the autoscaler was created with ready = 1 (not panicking, max 1)."""
    spec = replace(
        knative_spec(case.t, case.tbc),
        max_scale_up_rate=case.up_rate,
        max_scale_down_rate=case.down_rate,
        reachable=case.reachable,
        scaling_metric="rps" if case.metric == "rps" else "concurrency",
    )
    now = T0 + 61 * SEC
    state = initial_state(spec, 1, T0)
    assert state == ScalingState(max_panic_pods=1)
    if case.prep_panic:
        state = replace(state, panic_time=now - 5 * SEC, max_panic_pods=5)
    result, new_state = scale(
        spec, state, ready_pods=case.ready, stable=case.stable, panic=case.panic, now=now
    )
    assert result.valid == case.valid
    assert result.desired_pods == case.pods
    assert result.excess_burst_capacity == case.ebc
    if not case.valid:
        assert result.reason == "invalid"
        assert new_state is state
    if case.panicking is not None:
        assert result.panicking == case.panicking
        assert result.reason == ("panic" if case.panicking else "stable")


# --- §5.4 multiscaler, §5.6 sample size ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        pytest.param(
            DeciderSpec(initial_scale=2, total_value=25, target_burst_capacity=42),
            8,
            id="initial-ebc-8",
        ),
        pytest.param(
            DeciderSpec(initial_scale=2, total_value=25, target_burst_capacity=-1),
            -1,
            id="tbc-minus-1",
        ),
        pytest.param(
            DeciderSpec(initial_scale=2, total_value=25, target_burst_capacity=0), 0, id="tbc-0"
        ),
    ],
)
def test_initial_ebc(spec: DeciderSpec, want: int) -> None:
    assert initial_ebc(spec) == want


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        pytest.param(1982, 1984, True, id="both-positive"),
        pytest.param(-1984, -1988, True, id="both-negative"),
        pytest.param(-1988, 2006, False, id="neg-pos"),
        pytest.param(-2006, 2009, False, id="neg-pos-2"),
        pytest.param(0, 1, True, id="zero-is-positive"),
        pytest.param(0, -42, False, id="zero-vs-negative"),
    ],
)
def test_same_sign(a: int, b: int, want: bool) -> None:
    assert same_sign(a, b) == want


@pytest.mark.parametrize(
    ("n", "want"),
    [
        pytest.param(n, w, id=f"pods-{n}")
        for n, w in {0: 0, 1: 1, 2: 2, 5: 4, 10: 7, 100: 14, 1000: 16}.items()
    ],
)
def test_sample_size(n: int, want: int) -> None:
    assert sample_size(n) == want


# --- timelines -----------------------------------------------------------------------------------

SPEC = knative_spec(10, 100)  # target 10, rates 10, threshold 2, window 60 s


def step(
    spec: DeciderSpec, state: ScalingState, ready: int, stable: float, panic: float, now: float
) -> tuple[ScaleResult, ScalingState]:
    return scale(spec, state, ready_pods=ready, stable=stable, panic=panic, now=now)


def test_panic_entered_extended_and_left_a_stable_window_after_the_last_over_tick() -> None:
    state = initial_state(SPEC, 1, T0)
    # 1 pod, panic load 100 → 10 pods wanted, 10/1 ≥ 2: panic.
    r, state = step(SPEC, state, 1, 10, 100, T0)
    assert (r.panicking, r.desired_pods, state.panic_time) == (True, 10, T0)
    r, state = step(SPEC, state, 1, 10, 100, T0 + 2 * SEC)  # still over: extended
    assert state.panic_time == T0 + 2 * SEC
    # 10 ready now, load falls to 20 (2 pods); 2/10 < 2, but panic holds the high-water mark.
    for k in range(2, 32):
        r, state = step(SPEC, state, 10, 20, 20, T0 + 2 * k * SEC)
        assert (r.panicking, r.desired_pods) == (True, 10)
    # Exactly a stable window after the last over tick: still panicking (strict <).
    r, state = step(SPEC, state, 10, 20, 20, T0 + 62 * SEC)
    assert (r.panicking, r.desired_pods) == (True, 10)
    r, state = step(SPEC, state, 10, 20, 20, T0 + 62.5 * SEC)
    assert (r.panicking, r.desired_pods, r.reason) == (False, 2, "stable")
    assert state == ScalingState(panic_time=None, max_panic_pods=0)


def test_panic_never_lowers_the_scale() -> None:
    state = ScalingState()
    r, state = step(SPEC, state, 1, 10, 100, T0)
    assert r.desired_pods == 10
    r, state = step(SPEC, state, 5, 100, 150, T0 + 2 * SEC)  # 15/5 ≥ 2: still over, 15 pods
    assert (r.desired_pods, state.max_panic_pods) == (15, 15)
    r, state = step(SPEC, state, 15, 10, 10, T0 + 4 * SEC)  # load gone: 15 held
    assert r.desired_pods == 15


def test_scale_down_delay_holds_the_max() -> None:
    spec = replace(SPEC, scale_down_delay_s=10.0)  # 5 slots of 2 s
    state = ScalingState()
    r, state = step(spec, state, 10, 100, 100, T0)
    assert r.desired_pods == 10
    for k in range(1, 5):
        r, state = step(spec, state, 10, 20, 20, T0 + 2 * k * SEC)
        assert r.desired_pods == 10, k
    r, state = step(spec, state, 10, 20, 20, T0 + 10 * SEC)
    assert r.desired_pods == 2
    # Unreachable revisions ignore the delay (Knative records only when reachable).
    r, _ = step(replace(spec, reachable=False), state, 10, 100, 100, T0 + 12 * SEC)
    r2, _ = step(replace(spec, reachable=False), state, 10, 0, 0, T0 + 12 * SEC)
    assert (r.desired_pods, r2.desired_pods) == (10, 0)


def test_rate_limited_ramp_up() -> None:
    spec = replace(SPEC, target_value=1, total_value=1 / 0.75)
    state = ScalingState()
    ready = 1
    for want in (10, 100, 1000, 10000):
        r, state = step(spec, state, ready, 50_000, 50_000, T0)
        assert r.desired_pods == want
        ready = want


def test_rate_limited_ramp_down() -> None:
    spec = replace(SPEC, max_scale_down_rate=2.0)
    state = ScalingState()
    ready = 1000
    seen = []
    for k in range(12):
        r, state = step(spec, state, ready, 0, 0, T0 + 2 * k * SEC)
        seen.append(r.desired_pods)
        ready = r.desired_pods
    assert seen == [500, 250, 125, 62, 31, 15, 7, 3, 1, 0, 0, 0]


@pytest.mark.parametrize(
    ("stable", "panic", "want"),
    [
        pytest.param(0.0, 0.0, 0, id="no-load-no-activation"),
        pytest.param(1.0, 1.0, 3, id="any-load-activation-scale"),
        pytest.param(45.0, 45.0, 5, id="above-activation-scale"),
    ],
)
def test_activation_scale(stable: float, panic: float, want: int) -> None:
    spec = replace(SPEC, activation_scale=3)
    r, _ = step(spec, ScalingState(), 3, stable, panic, T0)
    assert r.desired_pods == want


def test_startup_panic_keeps_the_scale() -> None:
    """A restarted autoscaler with 5 ready pods and no history keeps 5 for a stable window."""
    spec = replace(SPEC, max_scale_down_rate=2.0)
    state = initial_state(spec, 5, T0)
    assert state == ScalingState(panic_time=T0, max_panic_pods=5)
    for k in range(1, 31):
        r, state = step(spec, state, 5, 0, 0, T0 + 2 * k * SEC)
        assert (r.panicking, r.desired_pods) == (True, 5), k
    r, state = step(spec, state, 5, 0, 0, T0 + 61 * SEC)
    assert (r.panicking, r.desired_pods) == (False, 2)  # floor(5 / 2)


def test_initial_state_small() -> None:
    assert initial_state(SPEC, 0, T0) == ScalingState(max_panic_pods=0)
    assert initial_state(SPEC, None, T0) == ScalingState(max_panic_pods=0)
    assert initial_state(SPEC, 1, T0) == ScalingState(max_panic_pods=1)


def test_unchanged_state_is_reused() -> None:
    state = ScalingState()
    _, new = step(SPEC, state, 3, 20, 20, T0)
    assert new is state


# --- properties ----------------------------------------------------------------------------------

specs = st.builds(
    DeciderSpec,
    target_value=st.sampled_from([0.5, 1.0, 7.0, 10.0, 70.0]),
    total_value=st.just(100.0),
    max_scale_up_rate=st.sampled_from([1.1, 2.0, 10.0, 1000.0]),
    max_scale_down_rate=st.sampled_from([1.1, 2.0, 10.0]),
    panic_threshold=st.sampled_from([1.1, 2.0, 10.0]),
    stable_window_s=st.sampled_from([6.0, 60.0]),
    activation_scale=st.sampled_from([0, 2, 5]),
    scale_down_delay_s=st.sampled_from([0.0, 4.0, 30.0]),
    target_burst_capacity=st.sampled_from([-1.0, 0.0, 211.0]),
)
loads = st.floats(min_value=0.0, max_value=5000.0, allow_subnormal=False)
ticks = st.lists(
    st.tuples(loads, loads, st.integers(min_value=1, max_value=40)), min_size=1, max_size=25
)


@settings(max_examples=200, deadline=None)
@given(spec=specs, ready=st.integers(min_value=0, max_value=200), ticks=ticks)
def test_property_within_rate_limits(
    spec: DeciderSpec, ready: int, ticks: list[tuple[float, float, int]]
) -> None:
    """With a steady ready count, every decision lies in [max_down, max(max_up, activation)]."""
    rpc = max(1, ready)
    lo = math.floor(rpc / spec.max_scale_down_rate)
    hi = max(math.ceil(spec.max_scale_up_rate * rpc), spec.activation_scale)
    state = initial_state(spec, ready, T0)
    now = T0
    for stable, panic, dt in ticks:
        now += dt
        r, state = step(spec, state, ready, stable, panic, now)
        assert lo <= r.desired_pods <= hi


@settings(max_examples=200, deadline=None)
@given(
    spec=specs,
    readies=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=25),
    ticks=ticks,
)
def test_property_never_falls_while_panicking(
    spec: DeciderSpec, readies: list[int], ticks: list[tuple[float, float, int]]
) -> None:
    """Without a scale-down delay (whose older maxima may expire), panic only ratchets up."""
    spec = replace(spec, scale_down_delay_s=0.0)
    state = initial_state(spec, readies[0], T0)
    now = T0
    previous: ScaleResult | None = None
    for (stable, panic, dt), ready in zip(ticks, readies * len(ticks), strict=False):
        now += dt
        r, state = step(spec, state, ready, stable, panic, now)
        if previous is not None and previous.panicking and r.panicking:
            assert r.desired_pods >= previous.desired_pods
        previous = r


@settings(max_examples=200, deadline=None)
@given(
    spec=specs,
    ready=st.integers(min_value=0, max_value=200),
    panic_age=st.one_of(st.none(), st.floats(min_value=0.0, max_value=120.0)),
    max_panic=st.integers(min_value=0, max_value=300),
    a=st.tuples(loads, loads),
    b=st.tuples(loads, loads),
)
def test_property_rises_with_load(
    spec: DeciderSpec,
    ready: int,
    panic_age: float | None,
    max_panic: int,
    a: tuple[float, float],
    b: tuple[float, float],
) -> None:
    """From the same state, more observed load (stable and panic) never gives fewer pods."""
    low = (min(a[0], b[0]), min(a[1], b[1]))
    high = (max(a[0], b[0]), max(a[1], b[1]))
    now = T0 + 200 * SEC
    state = ScalingState(
        panic_time=None if panic_age is None else now - panic_age, max_panic_pods=max_panic
    )
    r_low, _ = step(spec, state, ready, low[0], low[1], now)
    r_high, _ = step(spec, state, ready, high[0], high[1], now)
    assert r_high.desired_pods >= r_low.desired_pods


@settings(max_examples=200, deadline=None)
@given(
    spec=specs,
    ready=st.integers(min_value=0, max_value=200),
    ticks=ticks,
    bounds_min=st.sampled_from([0, 1, 3]),
)
def test_property_zero_only_without_load(
    spec: DeciderSpec, ready: int, ticks: list[tuple[float, float, int]], bounds_min: int
) -> None:
    """The decider says 0 only when the stable load is 0; the bounds keep it only if allowed."""
    state = initial_state(spec, ready, T0)
    now = T0
    bounds = BoundsSpec(min_scale=bounds_min)
    for stable, panic, dt in ticks:
        now += dt
        r, state = step(spec, state, ready, stable, panic, now)
        if r.desired_pods == 0:
            assert stable == 0
        for activity_state in ("active", "inactive"):
            activity = Activity(state=activity_state, since=now - 1000 * SEC, initialized=True)
            d, _ = apply_bounds(
                bounds,
                desired=r.desired_pods,
                ready_pods=ready,
                activity=activity,
                reachable=True,
                now=now,
            )
            if d.scale == 0:
                assert r.desired_pods == 0
                assert bounds.min_scale == 0


# --- bounds and scale to zero: TestScaler (§5.10) --------------------------------------------------

GRACE = 60.0
WINDOW = 300.0
TIMEOUT = 121.0 + 30.0  # progress deadline 121 s + 30 s buffer
BOUNDS = BoundsSpec(
    scale_to_zero_grace_period_s=GRACE, stable_window_s=WINDOW, activation_timeout_s=TIMEOUT
)
NOW = T0 + 10_000 * SEC


@dataclass(frozen=True, kw_only=True)
class BoundsCase:
    bounds: BoundsSpec = BOUNDS
    desired: int = 0
    ready: int = 10
    state: str = "active"
    held_s: float = 0.0  # how long the Active condition has been in its state
    initialized: bool = True
    reachable: bool = True
    proxy_for_s: float = math.inf
    want: BoundsDecision
    next_state: str | None = None  # None = unchanged


B = BoundsCase(want=BoundsDecision(scale=0, want=0, reason="to-zero"))

SCALER_CASES = [
    pytest.param(
        replace(
            B,
            held_s=WINDOW - 1,
            want=BoundsDecision(scale=1, want=1, reason="idle", recheck_after_s=1.0),
        ),
        id="waits-to-scale-to-zero-just-before-idle-expires",
    ),
    pytest.param(
        replace(
            B,
            held_s=WINDOW,
            want=BoundsDecision(scale=None, want=0, reason="deactivate", recheck_after_s=0.0),
            next_state="inactive",
        ),
        id="can-scale-to-zero-after-idle-marks-inactive",
    ),
    pytest.param(
        replace(
            B,
            state="inactive",
            held_s=GRACE,
            want=BoundsDecision(scale=0, want=0, reason="to-zero"),
        ),
        id="scale-to-zero-after-grace-period",
    ),
    pytest.param(
        replace(
            B,
            state="inactive",
            held_s=GRACE,
            want=BoundsDecision(scale=0, want=0, reason="to-zero"),
        ),
        id="scale-to-zero-tbc-minus-1-without-probe",
    ),
    pytest.param(
        replace(
            B,
            state="inactive",
            held_s=GRACE - 1,
            proxy_for_s=GRACE,
            want=BoundsDecision(scale=0, want=0, reason="to-zero"),
        ),
        id="scale-to-zero-fast-path-in-proxy-for-grace",
    ),
    pytest.param(
        replace(
            B,
            state="inactive",
            held_s=GRACE - 1,
            proxy_for_s=10,
            want=BoundsDecision(scale=None, want=0, reason="grace", recheck_after_s=50.0),
        ),
        id="waits-for-grace-when-activator-joined-late",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, scale_to_zero_pod_retention_s=2 * GRACE),
            state="inactive",
            held_s=GRACE,
            want=BoundsDecision(scale=None, want=0, reason="retention", recheck_after_s=GRACE),
        ),
        id="waits-for-pod-retention",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, scale_to_zero_pod_retention_s=2 * GRACE),
            state="inactive",
            held_s=2 * GRACE,
            want=BoundsDecision(scale=0, want=0, reason="to-zero"),
        ),
        id="scale-to-zero-after-pod-retention",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, scale_to_zero_pod_retention_s=2 * GRACE),
            state="inactive",
            held_s=GRACE,
            reachable=False,
            want=BoundsDecision(scale=0, want=0, reason="to-zero"),
        ),
        id="unreachable-ignores-pod-retention",
    ),
    pytest.param(
        replace(
            B,
            state="activating",
            ready=0,
            held_s=TIMEOUT + 1,
            want=BoundsDecision(scale=0, want=0, reason="activation-timeout"),
            next_state="inactive",
        ),
        id="scale-to-zero-while-activating-after-deadline",
    ),
    pytest.param(
        replace(
            B,
            state="activating",
            ready=0,
            held_s=TIMEOUT - 1,
            want=BoundsDecision(scale=None, want=-1, reason="activating", recheck_after_s=1.0),
        ),
        id="waits-while-activating-before-deadline",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, min_scale=2),
            state="inactive",
            held_s=GRACE,
            want=BoundsDecision(scale=2, want=2, reason="bounds"),
            next_state="active",
        ),
        id="min-scale-2",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, min_scale=2),
            state="inactive",
            held_s=GRACE,
            reachable=False,
            want=BoundsDecision(scale=0, want=0, reason="to-zero"),
        ),
        id="unreachable-ignores-min-scale",
    ),
    pytest.param(
        replace(B, desired=-1, want=BoundsDecision(scale=None, want=-1, reason="no-metrics")),
        id="metrics-not-yet-collected",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, enable_scale_to_zero=False),
            held_s=WINDOW,
            want=BoundsDecision(scale=1, want=1, reason="scale-to-zero-disabled"),
        ),
        id="scale-to-zero-disabled",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, max_scale=10),
            desired=25,
            want=BoundsDecision(scale=10, want=10, reason="bounds"),
        ),
        id="max-scale-caps",
    ),
    pytest.param(
        replace(B, desired=7, want=BoundsDecision(scale=7, want=7, reason="stable")),
        id="within-bounds",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, initial_scale=3),
            desired=1,
            ready=1,
            state="activating",
            initialized=False,
            want=BoundsDecision(scale=3, want=3, reason="bounds"),
        ),
        id="initial-scale-raises-min-until-initialized",
    ),
    pytest.param(
        replace(
            B,
            bounds=replace(BOUNDS, initial_scale=3),
            desired=1,
            ready=3,
            initialized=True,
            want=BoundsDecision(scale=1, want=1, reason="stable"),
        ),
        id="initial-scale-ignored-once-initialized",
    ),
]


@pytest.mark.parametrize("case", SCALER_CASES)
def test_scaler(case: BoundsCase) -> None:
    activity = Activity(state=case.state, since=NOW - case.held_s, initialized=case.initialized)  # type: ignore[arg-type]
    decision, new = apply_bounds(
        case.bounds,
        desired=case.desired,
        ready_pods=case.ready,
        activity=activity,
        reachable=case.reachable,
        now=NOW,
        proxy_for_s=case.proxy_for_s,
    )
    assert decision == case.want
    if case.next_state is None:
        assert new.state == activity.state
        assert new.since == activity.since
    else:
        assert new.state == case.next_state
        assert new.since == NOW


# --- computeActiveCondition ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "state", "initialized", "desired", "ready", "want_state", "want_initialized"),
    [
        pytest.param(
            BOUNDS, "activating", False, 1, 0, "activating", False, id="activating-until-ready"
        ),
        pytest.param(BOUNDS, "activating", False, 1, 1, "active", True, id="ready-becomes-active"),
        pytest.param(
            BOUNDS, "inactive", True, 1, 0, "activating", True, id="scale-from-zero-activates"
        ),
        pytest.param(
            BOUNDS, "inactive", True, -1, 0, "inactive", True, id="no-metrics-stays-inactive"
        ),
        pytest.param(BOUNDS, "active", True, -1, 0, "activating", True, id="lost-pods-reactivates"),
        pytest.param(BOUNDS, "active", True, -1, 3, "active", True, id="no-metrics-keeps-active"),
        pytest.param(
            replace(BOUNDS, initial_scale=0),
            "activating",
            False,
            -1,
            0,
            "inactive",
            True,
            id="initial-scale-0-inactive",
        ),
        pytest.param(
            replace(BOUNDS, initial_scale=3),
            "activating",
            False,
            3,
            2,
            "activating",
            False,
            id="waits-for-initial-scale",
        ),
        pytest.param(
            replace(BOUNDS, min_scale=2),
            "activating",
            True,
            2,
            1,
            "activating",
            True,
            id="waits-for-min-scale",
        ),
    ],
)
def test_active_condition(
    bounds: BoundsSpec,
    state: str,
    initialized: bool,
    desired: int,
    ready: int,
    want_state: str,
    want_initialized: bool,
) -> None:
    activity = Activity(state=state, since=NOW - 5 * SEC, initialized=initialized)  # type: ignore[arg-type]
    _, new = apply_bounds(
        bounds, desired=desired, ready_pods=ready, activity=activity, reachable=True, now=NOW
    )
    assert (new.state, new.initialized) == (want_state, want_initialized)
    assert new.since == (activity.since if want_state == state else NOW)


def test_timeline_idle_revision_goes_to_zero() -> None:
    """Active for an hour, traffic stops: 1 pod, then inactive, then 0 at once (activator in path)."""
    bounds = BoundsSpec()  # window 60 s, grace 30 s, no retention
    activity = Activity(state="active", since=T0, initialized=True)
    # Just became active 10 s ago, desired 0: hold one pod for the rest of the stable window.
    d, a = apply_bounds(
        bounds, desired=0, ready_pods=4, activity=activity, reachable=True, now=T0 + 10 * SEC
    )
    assert (d.scale, d.reason, d.recheck_after_s, a.state) == (1, "idle", 50.0, "active")
    d, a = apply_bounds(
        bounds, desired=0, ready_pods=1, activity=a, reachable=True, now=T0 + 60 * SEC
    )
    assert (d.scale, d.reason, a.state, a.since) == (None, "deactivate", "inactive", T0 + 60 * SEC)
    d, a = apply_bounds(
        bounds, desired=0, ready_pods=1, activity=a, reachable=True, now=T0 + 60 * SEC
    )
    assert (d.scale, d.reason, a.state) == (0, "to-zero", "inactive")
    # A request arrives: the decider says 1, the revision activates, then becomes active.
    d, a = apply_bounds(
        bounds, desired=1, ready_pods=0, activity=a, reachable=True, now=T0 + 100 * SEC
    )
    assert (d.scale, a.state, a.since) == (1, "activating", T0 + 100 * SEC)
    d, a = apply_bounds(
        bounds, desired=1, ready_pods=1, activity=a, reachable=True, now=T0 + 103 * SEC
    )
    assert (d.scale, a.state, a.since) == (1, "active", T0 + 103 * SEC)


def test_dataclasses_are_frozen() -> None:
    for obj in (ScalingState(), Activity(), BOUNDS, SPEC):
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.__setattr__(dataclasses.fields(obj)[0].name, 1)
