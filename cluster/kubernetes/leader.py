"""Leader election on a coordination.k8s.io/v1 Lease (client-go's leaderelection, in small).

Every autoscaler replica runs a :class:`LeaderElector`. A candidate takes the Lease when it does
not exist, is released (empty holder) or has not been renewed for ``lease_duration_s`` as
measured on the candidate's own monotonic clock since it last saw the record change (so clock
skew between nodes does not matter). Writes carry the resourceVersion they read: of two
candidates racing, one gets 409 Conflict and stays a standby. The leader renews every
``retry_period_s`` and steps down if it could not renew for ``renew_deadline_s`` (shorter than
the lease, so it stops acting before anyone else may start). On a clean stop it releases the
Lease so a standby takes over at its next retry rather than after the lease duration.

Stats reach the leader because the leader labels its own pod ``zeroserve.dev/leader=true``
(:func:`mark_leader_pod`) and the autoscaler's Service selects that label; a replica that steps
down removes the label and must close its stat connections so activators reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from cluster.kubernetes.api import LEASES, PODS, ApiError, KubeApi, NotFoundError, Obj

log = logging.getLogger("zeroserve.kubernetes")

LEADER_LABEL = "zeroserve.dev/leader"


def _micro_time(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaign for, hold and renew one Lease. ``is_leader`` says whether this replica leads."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry_period_s < renew_deadline_s < lease_duration_s")
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self.is_leader = False
        self.holder = ""
        """The holder as last observed ("" if none)."""
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.transitions = 0
        self.terms = 0
        """How many times this replica has started leading: a new term is a new takeover, even
        when leadership was lost and regained between two looks at ``is_leader``."""

    async def run(self) -> None:
        """Campaign and lead until cancelled; then release the Lease if held."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.retry_period_s)
        finally:
            if self.is_leader:
                self._step_down()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release())

    async def step(self) -> None:
        """One round of :meth:`run`: acquire or renew, then start or stop leading.

        ``run`` calls it every ``retry_period_s``; a simulation under a manual clock calls it
        itself.
        """
        ok = await self._try_acquire_or_renew()
        now = self._clock()
        if ok:
            self._last_renew = now
            if not self.is_leader:
                self.is_leader = True
                self.terms += 1
                log.info(
                    "started leading",
                    extra={"lease": self.name, "identity": self.identity, "term": self.terms},
                )
                if self._on_started:
                    self._on_started()
        elif self.is_leader and now - self._last_renew >= self.renew_deadline_s:
            self._step_down()

    def _step_down(self) -> None:
        self.is_leader = False
        log.warning("stopped leading", extra={"lease": self.name, "identity": self.identity})
        if self._on_stopped:
            self._on_stopped()

    def _spec(self, old: dict[str, Any], *, taking: bool) -> dict[str, Any]:
        now = _micro_time()
        spec = dict(old)
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.lease_duration_s)),
            renewTime=now,
        )
        if taking:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (1 if old else 0)
        return spec

    async def _try_acquire_or_renew(self) -> bool:
        try:
            lease = await self._api.get(LEASES, self.namespace, self.name)
        except NotFoundError:
            body: Obj = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}, taking=True),
            }
            return await self._write(lambda: self._api.create(LEASES, self.namespace, body))
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as exc:
            log.warning("cannot read the lease", extra={"lease": self.name, "error": str(exc)})
            return False
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self.holder = holder
        # A lease whose holder wrote leaseDurationSeconds is expired after that long unrenewed.
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False
        lease["spec"] = self._spec(spec, taking=holder != self.identity)
        return await self._write(
            lambda: self._api.replace(LEASES, self.namespace, self.name, lease)
        )

    async def _write(self, call: Callable[[], Any]) -> bool:
        try:
            written: Obj = await call()
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as exc:
            # 409: another candidate wrote first (or created it); we stay a standby this round.
            log.info("lease write lost", extra={"lease": self.name, "error": str(exc)})
            return False
        spec = written.get("spec") or {}
        self.holder = self.identity
        self._observed = (self.identity, str(spec.get("renewTime") or ""))
        self._observed_at = self._clock()
        self.transitions = int(spec.get("leaseTransitions") or 0)
        return True

    async def _release(self) -> None:
        lease = await self._api.get(LEASES, self.namespace, self.name)
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time())
        lease["spec"] = spec
        await self._api.replace(LEASES, self.namespace, self.name, lease)


async def mark_leader_pod(api: KubeApi, namespace: str, pod: str, leading: bool) -> None:
    """Add (or remove) the ``zeroserve.dev/leader=true`` label on this replica's pod."""
    patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}}
    await api.patch(PODS, namespace, pod, patch, patch_type="merge")
