"""The multiscaler: one decision per revision every tick (2 s) and on pokes, applied to the scale target.

The pure core decides (``scaling.scale``, then ``scaling.apply_bounds`` for min/max/initial scale
and the scale-to-zero flow); this module feeds it (ready pods from the scale target, observed
load from the collector), keeps each revision's state, and calls the scale target only when the
bounded scale changes, with one log line per change (reference §1.3, §1.6).

Two clocks: the collector's windows use unix seconds (``Clock.wall``: activators stamp their
stats with it); the decider's panic and scale-to-zero timers use ``Clock.monotonic``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.collector import Collector, Observed, WindowSpec
from autoscaler.config import AutoscalerConfig, ConfigError
from autoscaler.resolve import ResolvedRevision, ResolveError, resolve
from autoscaler.scaling import (
    Activity,
    BoundsDecision,
    ScalingState,
    apply_bounds,
    initial_ebc,
    initial_state,
    scale,
)
from autoscaler.status import AutoscalerMetrics, RevisionStatus, ScaleChange
from cluster.ports import ScaleTarget
from cluster.spec import Revision, RevisionKey
from metrics.clock import Clock
from metrics.stat import Stat

log = logging.getLogger("zeroserve.autoscaler")

TICK_INTERVAL_S = 2.0

REASON_STABLE = "stable"
REASON_PANIC = "panic"
REASON_TO_ZERO = "to zero"
REASON_BOUNDS = "bounds"
REASON_ACTIVATION = "activation"


@dataclass(slots=True)
class RevisionScaler:
    """One revision's decider state, as the multiscaler keeps it between ticks."""

    revision: Revision
    resolved: ResolvedRevision
    state: ScalingState
    activity: Activity
    desired: int = -1
    """The decider's last valid desired scale (-1: no decision yet, as Knative's)."""
    ebc: float = 0.0
    ready: int | None = None
    applied: int | None = None
    """The scale last asked of the scale target (or found there at start)."""
    observed: Observed | None = None
    last_change: ScaleChange | None = None
    poke_pending: bool = False


def window_spec(resolved: ResolvedRevision) -> WindowSpec:
    return WindowSpec(
        stable_window_s=resolved.decider.stable_window_s,
        panic_window_s=resolved.panic_window_s,
        weighted=resolved.aggregation != "linear",
        scraped=True,
    )


def config_error_keys(exc: ConfigError) -> list[str]:
    """The keys an invalid config names (each message starts with ``key = value:``)."""
    return [e.split(" = ", 1)[0].split(":", 1)[0] for e in exc.errors]


class MultiScaler:
    """Decides for every revision; see the module docstring."""

    def __init__(
        self,
        *,
        collector: Collector,
        scale_target: ScaleTarget,
        clock: Clock,
        metrics: AutoscalerMetrics,
        config: AutoscalerConfig | None = None,
    ) -> None:
        self._collector = collector
        self._target = scale_target
        self._clock = clock
        self._metrics = metrics
        self._config = config or AutoscalerConfig()
        self._pending_config: AutoscalerConfig | None = None
        self._scalers: dict[RevisionKey, RevisionScaler] = {}
        self._pokes: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    # -- configuration ------------------------------------------------------------------------

    @property
    def config(self) -> AutoscalerConfig:
        return self._pending_config or self._config

    def offer_config(self, data: Mapping[str, str]) -> bool:
        """Validate a new ``config-autoscaler``; it applies at the next tick. False if rejected.

        An invalid config is rejected whole and logged with its keys; the last good one stays.
        """
        try:
            cfg = AutoscalerConfig.from_data(data)
        except ConfigError as exc:
            log.error(
                "config-autoscaler rejected, keeping the last valid config",
                extra={"keys": config_error_keys(exc), "errors": list(exc.errors)},
            )
            return False
        self._pending_config = cfg
        log.info("config-autoscaler accepted, applies at the next tick")
        return True

    def adopt_config(self) -> None:
        """Apply an accepted config now rather than at the next tick (at start)."""
        self._apply_pending_config()

    def _apply_pending_config(self) -> None:
        cfg, self._pending_config = self._pending_config, None
        if cfg is None or cfg == self._config:
            return
        self._config = cfg
        for scaler in list(self._scalers.values()):
            self._reresolve(scaler, scaler.revision)

    # -- revisions ----------------------------------------------------------------------------

    def __contains__(self, key: RevisionKey) -> bool:
        return key in self._scalers

    def __len__(self) -> int:
        return len(self._scalers)

    def revision_keys(self) -> list[RevisionKey]:
        return list(self._scalers)

    def _resolve(self, revision: Revision) -> ResolvedRevision | None:
        try:
            return resolve(self._config, revision)
        except ResolveError as exc:
            log.error(
                "revision cannot be autoscaled",
                extra={"revision": str(revision.key), "error": str(exc)},
            )
            return None

    def _reresolve(self, scaler: RevisionScaler, revision: Revision) -> None:
        resolved = self._resolve(revision)
        if resolved is None:
            return
        scaler.revision = revision
        if resolved != scaler.resolved:
            scaler.resolved = resolved
            self._collector.watch(revision.key, window_spec(resolved))

    async def sync_revisions(self, revisions: Mapping[RevisionKey, Revision]) -> None:
        """Add new revisions (with their initial scale), update changed ones, drop removed ones."""
        async with self._lock:
            for key in [k for k in self._scalers if k not in revisions]:
                del self._scalers[key]
                self._collector.forget(key)
                self._metrics.forget_revision(key.namespace, key.name)
                log.info("revision removed", extra={"revision": str(key)})
            for key, revision in revisions.items():
                scaler = self._scalers.get(key)
                if scaler is None:
                    await self._add(revision)
                elif scaler.revision != revision:
                    self._reresolve(scaler, revision)

    async def _add(self, revision: Revision) -> None:
        resolved = self._resolve(revision)
        if resolved is None:
            return
        key = revision.key
        now = self._clock.monotonic()
        ready = await self._target.ready_pods(key)
        # A restarted autoscaler over a busy revision starts in panic with the ready pods as
        # its floor (§1.3 start-up panic), so missing history never scales it down.
        # Running pods mean the revision was already scaled (by an autoscaler before a
        # restart): it is active and initialized, so the initial scale no longer applies.
        # Without ready pods it is new: activating until its initial scale is ready.
        # A revision the target remembers as initialized but without ready pods was scaled to
        # zero before a restart: it stays at zero until a decision or a poke says otherwise.
        at_zero = not ready and await self._target.initialized(key)
        if ready:
            activity = Activity(state="active", since=now, initialized=True)
        elif at_zero:
            activity = Activity(state="inactive", since=now, initialized=True)
        else:
            activity = Activity(state="activating", since=now)
        scaler = RevisionScaler(
            revision=revision,
            resolved=resolved,
            state=initial_state(resolved.decider, ready, now),
            activity=activity,
            ebc=float(initial_ebc(resolved.decider)),
            ready=ready,
        )
        self._scalers[key] = scaler
        self._collector.watch(key, window_spec(resolved))
        log.info("revision added", extra={"revision": str(key), "ready_pods": ready})
        if ready:
            # Running pods are the scale target's current scale: keep it until a decision.
            scaler.applied = ready
            await self._target.mark_initialized(key)
        elif at_zero:
            scaler.applied = 0
        else:
            # A new revision starts at its initial scale (§1.6 step 3).
            await self._apply(scaler, resolved.bounds.initial_scale, REASON_BOUNDS)

    # -- decisions ----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One decision for every revision (the 2 s ticker)."""
        start = self._clock.monotonic()
        async with self._lock:
            self._apply_pending_config()
            for scaler in list(self._scalers.values()):
                await self._decide(scaler)
        self._metrics.decision_duration.observe(max(0.0, self._clock.monotonic() - start))

    async def decide(self, key: RevisionKey) -> None:
        """One decision for one revision now (a poke)."""
        async with self._lock:
            scaler = self._scalers.get(key)
            if scaler is not None:
                scaler.poke_pending = False
                await self._decide(scaler)

    def on_stat(self, key: RevisionKey, stat: Stat) -> None:
        """After a stat is recorded: poke a revision at zero that sees requests (§1.3)."""
        scaler = self._scalers.get(key)
        if (
            scaler is None
            or scaler.desired > 0  # at zero, or no decision yet (a new revision at zero)
            or stat.average_concurrent_requests == 0
            or scaler.poke_pending
        ):
            return
        scaler.poke_pending = True
        task = asyncio.get_running_loop().create_task(self.decide(key))
        self._pokes.add(task)
        task.add_done_callback(self._pokes.discard)

    async def _decide(self, scaler: RevisionScaler) -> None:
        key = scaler.revision.key
        resolved = scaler.resolved
        now = self._clock.monotonic()
        ready = await self._target.ready_pods(key)
        scaler.ready = ready
        observed = self._collector.observe(key, resolved.metric, self._clock.wall())
        scaler.observed = observed
        result, scaler.state = scale(
            resolved.decider,
            scaler.state,
            ready_pods=ready,
            stable=None if observed is None else observed.stable,
            panic=None if observed is None else observed.panic,
            now=now,
        )
        if result.valid:
            scaler.desired = result.desired_pods
            scaler.ebc = float(result.excess_burst_capacity)
        was_initialized = scaler.activity.initialized
        decision = self._bound(scaler, ready or 0, now)
        if scaler.activity.initialized and not was_initialized:
            await self._target.mark_initialized(key)
        if decision.reason == "deactivate":
            # Just marked inactive: the scale-to-zero flow continues at once, not a tick later.
            decision = self._bound(scaler, ready or 0, now)
        want = decision.scale
        if want is None or want < 0 or want == scaler.applied:
            return
        await self._apply(scaler, want, self._reason(scaler, decision))

    def _bound(self, scaler: RevisionScaler, ready: int, now: float) -> BoundsDecision:
        decision, scaler.activity = apply_bounds(
            scaler.resolved.bounds,
            desired=scaler.desired,
            ready_pods=ready,
            activity=scaler.activity,
            reachable=scaler.resolved.decider.reachable,
            now=now,
            # zeroserve's activator is always in the path, so Knative's fast path (proxy_for_s =
            # inf) would drop the last pod as soon as the revision turns inactive. We count the
            # grace period from then instead: an idle revision keeps its last pod for the stable
            # window plus the grace period (window 60 s + grace 30 s → zero ~90 s after the last
            # request), so a request shortly after the window still finds a warm replica.
            proxy_for_s=0.0,
        )
        return decision

    def _reason(self, scaler: RevisionScaler, decision: BoundsDecision) -> str:
        if decision.scale == 0:
            return REASON_TO_ZERO
        if scaler.applied == 0:
            return REASON_ACTIVATION
        if decision.reason != "stable":
            return REASON_BOUNDS  # min/max, initial scale, one pod until idle long enough
        return REASON_PANIC if scaler.state.panicking else REASON_STABLE

    async def _apply(self, scaler: RevisionScaler, want: int, reason: str) -> None:
        key = scaler.revision.key
        before = scaler.applied
        await self._target.set_scale(key, want)
        scaler.applied = want
        scaler.last_change = ScaleChange(
            from_scale=-1 if before is None else before,
            to_scale=want,
            reason=reason,
            at=self._clock.wall(),
        )
        self._metrics.scale_changes.labels(reason).inc()
        log.info(
            "scale changed",
            extra={
                "revision": str(key),
                "from": scaler.last_change.from_scale,
                "to": want,
                "reason": reason,
                "desired_pods": scaler.desired,
                "ready_pods": scaler.ready,
                "panic": scaler.state.panicking,
            },
        )

    # -- status -------------------------------------------------------------------------------

    def status(self) -> list[RevisionStatus]:
        """Every revision's status (``/v1/revisions``), sorted by namespace and name."""
        now = self._clock.wall()
        rows = []
        for key in sorted(self._scalers):
            s = self._scalers[key]
            snap = self._collector.snapshot(key, now) or {}
            rows.append(
                RevisionStatus(
                    namespace=key.namespace,
                    revision=key.name,
                    desired=s.desired,
                    applied=s.applied,
                    ready=s.ready,
                    panicking=s.state.panicking,
                    metric=s.resolved.metric,
                    target=s.resolved.decider.target_value,
                    excess_burst_capacity=s.ebc,
                    stable_concurrency=snap.get("stable_concurrency", 0.0),
                    panic_concurrency=snap.get("panic_concurrency", 0.0),
                    stable_rps=snap.get("stable_rps", 0.0),
                    panic_rps=snap.get("panic_rps", 0.0),
                    has_data=s.observed is not None,
                    last_change=s.last_change,
                )
            )
        return rows

    def scaler(self, key: RevisionKey) -> RevisionScaler | None:
        return self._scalers.get(key)

    async def close(self) -> None:
        for task in list(self._pokes):
            task.cancel()
        await asyncio.gather(*self._pokes, return_exceptions=True)
