"""The multiscaler: one decision per revision every tick (2 s) and on pokes, applied to the scale target.

The pure core decides (``scaling.scale``, then ``scaling.apply_bounds`` for min/max/initial scale
and the scale-to-zero flow); this module feeds it (ready pods from the scale target, observed
load from the collector), keeps each revision's state, and calls the scale target only when the
bounded scale changes, with one log line per change (reference §1.3, §1.6).

Leadership (Kubernetes runs several autoscaler replicas, one leading): a scale target that is
also a :class:`Leadership` writes only while this replica leads. A standby decides nothing and
records nothing as applied. Each time this replica starts leading (a new term) every revision
starts afresh from the scale target, as a newly created Knative decider does: the Deployment's
real replicas become ``applied``, the windows are emptied (a standby's hold only the scraped,
all-proxied stats, ~0: the activators' stats go to the leader), and the decider starts in
start-up panic with the current scale as its floor, so it cannot scale below it until a whole
stable window of its own data has passed (reference §1.3; docs/autoscaler.md "Takeover").

Two clocks: the collector's windows use unix seconds (``Clock.wall``: activators stamp their
stats with it); the decider's panic and scale-to-zero timers use ``Clock.monotonic``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Leadership(Protocol):
    """A scale target shared by several autoscaler replicas, of which one leads (Kubernetes:
    ``cluster.kubernetes.runtime.LeaderScaleTarget``). Targets without it always lead."""

    @property
    def term(self) -> int | None:
        """None while a standby; while leading, a number that grows each time leadership is
        gained (a new term is a takeover, even if leadership was lost and regained between
        two looks)."""
        ...

    async def current_scale(self, key: RevisionKey) -> int | None:
        """The replicas the target is asked for now (the Deployment's ``spec.replicas``);
        None if unknown."""
        ...


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
        self._leadership = scale_target if isinstance(scale_target, Leadership) else None
        self._term: int | None = None
        """The term the scalers were started in; None: a standby (always None without
        leadership, where ``_leading`` is always true)."""
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
            await self._follow_leadership()
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
        scaler = RevisionScaler(
            revision=revision,
            resolved=resolved,
            state=initial_state(resolved.decider, 0, self._clock.monotonic()),
            activity=Activity(),
            ebc=float(initial_ebc(resolved.decider)),
        )
        self._scalers[key] = scaler
        self._collector.watch(key, window_spec(resolved))
        await self._start(scaler)
        log.info("revision added", extra={"revision": str(key), "ready_pods": scaler.ready})
        initial = resolved.bounds.initial_scale
        new = scaler.activity.state == "activating" and not scaler.activity.initialized
        if self._leading and new and scaler.applied != initial:
            # A new revision starts at its initial scale (§1.6 step 3).
            await self._apply(scaler, initial, REASON_BOUNDS)

    async def _start(self, scaler: RevisionScaler) -> None:
        """(Re)start one revision's decider from the scale target, as Knative creates a decider:
        when the revision is added, and when this replica takes over as leader.

        The windows start empty, ``desired`` is -1 (no decision yet), and a revision that has
        pods starts in panic with them as its floor (§1.3 start-up panic), so missing history
        never scales it down: it keeps its scale until a whole stable window of its own data.
        """
        key = scaler.revision.key
        resolved = scaler.resolved
        now = self._clock.monotonic()
        ready = await self._target.ready_pods(key)
        current = None
        if self._leadership is not None:
            current = await self._leadership.current_scale(key)
        initialized = await self._target.initialized(key)
        # Knative's floor is the ready count. zeroserve also keeps pods that are still
        # starting (asked for by the last leader, not ready yet): dropping them at a takeover
        # would restart a model server's cold start a moment later. 5 asked, 4 ready → 5.
        floor = max(ready or 0, current or 0)
        scaler.state = initial_state(resolved.decider, floor, now)
        scaler.desired = -1
        scaler.ebc = float(initial_ebc(resolved.decider))
        scaler.ready = ready
        scaler.observed = None
        self._collector.reset(key)
        # Running pods mean the revision was already scaled (by an autoscaler before a restart
        # or a takeover): it is active and initialized, so the initial scale no longer applies.
        # Without ready pods it is new: activating until its initial scale is ready.
        # A revision the target remembers as initialized but without ready pods is at zero
        # (it stays there until a decision or a poke says otherwise), or, when pods are asked
        # for, on its way up from zero.
        if ready:
            scaler.activity = Activity(state="active", since=now, initialized=True)
        elif initialized and current:
            scaler.activity = Activity(state="activating", since=now, initialized=True)
        elif initialized:
            scaler.activity = Activity(state="inactive", since=now, initialized=True)
        else:
            scaler.activity = Activity(state="activating", since=now)
        if not self._leading:
            scaler.applied = None  # a standby writes nothing, so it has applied nothing
            return
        if current is not None:
            scaler.applied = current
        elif ready:
            scaler.applied = ready  # running pods are the target's scale: keep it
        elif initialized:
            scaler.applied = 0
        else:
            scaler.applied = None  # a new revision: nothing asked of the target yet
        if ready:
            await self._target.mark_initialized(key)

    # -- leadership ---------------------------------------------------------------------------

    @property
    def _leading(self) -> bool:
        return self._leadership is None or self._term is not None

    async def _follow_leadership(self) -> None:
        """Catch up with the scale target's leadership (under the lock, before any decision).

        A new term restarts every revision from the scale target (:meth:`_start`); stepping
        down forgets what was applied, since the next leader may change it.
        """
        if self._leadership is None:
            return
        term = self._leadership.term
        if term == self._term:
            return
        self._term = term
        if term is None:
            log.info("standing by: another replica scales", extra={"revisions": len(self)})
            for scaler in self._scalers.values():
                scaler.applied = None
                scaler.desired = -1
            return
        log.info(
            "took over scaling, starting afresh from the scale target",
            extra={"term": term, "revisions": len(self)},
        )
        for scaler in list(self._scalers.values()):
            await self._start(scaler)
            log.info(
                "revision taken over",
                extra={
                    "revision": str(scaler.revision.key),
                    "applied": scaler.applied,
                    "ready_pods": scaler.ready,
                    "floor": scaler.state.max_panic_pods,
                },
            )

    # -- decisions ----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One decision for every revision (the 2 s ticker)."""
        start = self._clock.monotonic()
        async with self._lock:
            self._apply_pending_config()
            await self._follow_leadership()
            for scaler in list(self._scalers.values()):
                await self._decide(scaler)
        self._metrics.decision_duration.observe(max(0.0, self._clock.monotonic() - start))

    async def decide(self, key: RevisionKey) -> None:
        """One decision for one revision now (a poke)."""
        async with self._lock:
            await self._follow_leadership()
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
        if not self._leading:
            return  # a standby shows what it sees, but decides and writes nothing
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
        term = self._term
        await self._target.set_scale(key, want)
        if self._leadership is not None and self._leadership.term != term:
            # Leadership was lost while writing: the write may not have happened, and the
            # next leader starts from the target's real scale anyway. Record nothing.
            log.warning(
                "leadership lost during a scale change, not recorded",
                extra={"revision": str(key), "to": want},
            )
            return
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
