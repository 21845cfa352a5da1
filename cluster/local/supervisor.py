"""The local supervisor: each revision's replicas as model-server + queue-proxy process pairs.

It implements three ports of :mod:`cluster.ports`: the scale target (``set_scale``,
``ready_pods``), the endpoint source (ready replicas, after their queue-proxy's probe says so)
and, with :class:`cluster.memory.MemoryRevisions`, the revision source. A replica that crashes is
seen, reported and replaced, with a back-off on a crash loop; stopping one drains it (SIGTERM to
the queue-proxy, the model server after the drain, SIGKILL after a grace period).

The model server is spawned (its command); the queue-proxy is forked from a zygote that has
imported it already (:mod:`cluster.local.zygote`), so a cold start waits for the model server
only. Ports come from a :class:`cluster.local.ports.PortTable`: the queue-proxy's are sockets the
supervisor listens on and hands over by descriptor, the model server's ``$PORT`` stays reserved
until its replica has exited, and a replica whose ``$PORT`` another process listens on is failed
and replaced on new ports, never marked ready. The queue-proxy says when the model server is
first ready (``QUEUE_READY_FD``); polling its ``K-Network-Probe`` remains as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import aiohttp

from cluster.batching import batching_env
from cluster.local.coldstart import REPORT_PATH, ColdStarts, StartTimer
from cluster.local.model_zygote import ModelZygotes
from cluster.local.output import LogFormat, spawn_relayed
from cluster.local.ports import PortTable, listener_owners
from cluster.local.process import Child, spawn, terminate
from cluster.local.zygote import ForkedChild, Zygote
from cluster.memory import Observable
from cluster.payload_logging import logger_env
from cluster.ports import InitializedInMemory, PodEndpoint, Unsubscribe
from cluster.spec import Revision, RevisionKey

log = logging.getLogger("zeroserve.supervisor")


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSettings:
    """How replicas are run on this machine. Seconds end in ``_s``."""

    host: str = "127.0.0.1"
    drain_quiet_period_s: float = 1.0
    """The queue-proxy's drain quiet period: short, the activator stops sending at once."""
    kill_grace_s: float = 10.0
    """How long a process has after SIGTERM (beyond the drain) before SIGKILL."""
    ready_timeout_s: float = 600.0
    """A replica not ready by then is replaced (Knative's progress deadline)."""
    probe_interval_s: float = 0.05
    crash_backoff_initial_s: float = 0.5
    crash_backoff_max_s: float = 30.0
    crash_backoff_reset_s: float = 60.0
    """A replica that stayed up this long resets the revision's crash back-off."""
    prefork: bool = True
    """Fork each queue-proxy from a warm zygote (see the module doc); False spawns
    ``queue_proxy_command`` per replica (a fresh interpreter: ~300 ms more per cold start)."""
    queue_proxy_entry: str = "queue_proxy.app:main"
    """What the zygote imports and each forked queue-proxy runs."""
    queue_proxy_command: tuple[str, ...] = (sys.executable, "-m", "queue_proxy")
    model_prefork: bool = True
    """Fork each model server whose command is ``python -m MODULE`` (the built-in server's is)
    from a parked process that has imported its framework (the revision's ``preload`` plus its
    format's; :mod:`cluster.local.model_zygote`): seconds less per cold start for torch. False,
    or a parked process that is unsafe to fork from, spawns the command."""
    model_preload: bool = True
    """With ``model_prefork``: a built-in pytorch server's parked process also loads the
    revision's ``.pt2`` model onto the CPU once its artifact is fetched, so that a forked replica
    only moves it to its device (:mod:`modelserver.preload`); it holds one CPU copy of the model
    per artifact. Other formats load in each replica as before. False: only the imports."""
    log_children: bool = True
    """Children's output goes to the runtime's stdout/stderr; False sends it to /dev/null."""
    log_format: LogFormat = "text"
    """``text``: each model-server line prefixed with its pod name (``iris-v1-3 | …``), the
    queue-proxies log text; ``json``: every line a JSON record, model-server lines wrapped with
    their ``pod`` (:mod:`cluster.local.output`; the queue-proxy's ``QUEUE_LOG_FORMAT``)."""
    observability_dir: str = ""
    """The folder of ``config-observability`` files the queue-proxies read (their
    ``QUEUE_OBSERVABILITY_DIR``; the runtime writes it from the spec): tracing. Empty: none."""


def readiness_probe_json(rev: Revision) -> str:
    """``SERVING_READINESS_PROBE`` in Knative's shape (a K8s probe as JSON)."""
    probe = rev.readiness_probe
    handler: dict[str, object]
    if probe.kind == "http":
        handler = {"httpGet": {"path": probe.path, "port": probe.port or rev.user_port}}
    else:
        handler = {"tcpSocket": {"port": probe.port or rev.user_port, "host": "127.0.0.1"}}
    handler.update(
        periodSeconds=probe.period_s,
        timeoutSeconds=probe.timeout_s,
        successThreshold=probe.success_threshold,
        failureThreshold=probe.failure_threshold,
    )
    return json.dumps(handler)


class PortConflictError(OSError):
    """Another process listens on the port a replica's model server was given."""


@dataclass(eq=False)
class Replica:
    """One model-server + queue-proxy pair."""

    name: str
    revision: Revision
    user_port: int
    serving_port: int
    metrics_port: int
    admin_port: int
    model: Child | None = None
    queue_proxy: Child | None = None
    ready: bool = False
    stopping: bool = False
    started_at: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None
    listeners: dict[str, socket.socket] = field(default_factory=dict)
    """The queue-proxy's listening sockets by the variable that hands each over, until it has
    them (``QUEUE_SERVING_FD``, ``QUEUE_ADMIN_FD``, ``QUEUE_METRICS_FD``)."""

    def close_listeners(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()

    def endpoint(self, host: str) -> PodEndpoint:
        return PodEndpoint(
            name=self.name,
            address=f"{host}:{self.serving_port}",
            stats_address=f"{host}:{self.metrics_port}",
            started_at=self.started_at,
        )


@dataclass
class _RevisionState:
    revision: Revision
    desired: int = 0
    replicas: list[Replica] = field(default_factory=list)
    crashes: int = 0
    next_start_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class LocalSupervisor(InitializedInMemory):
    """Runs replicas as local processes; see the module docstring."""

    def __init__(self, settings: SupervisorSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or SupervisorSettings()
        self._revisions: dict[RevisionKey, _RevisionState] = {}
        self._endpoints: Observable[Mapping[RevisionKey, Sequence[PodEndpoint]]] = Observable(
            MappingProxyType({})
        )
        self._names = itertools.count(1)
        self.ports = PortTable(self.settings.host)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.crash_count = 0
        self.on_crash: Callable[[RevisionKey, str, int | None], None] | None = None
        self.before_start: Callable[[Revision], Awaitable[None]] | None = None
        """Awaited by each replica before its processes start, as a pod's init step runs before
        its containers (the runtime's artifact prefetch: a replica waits for its model file
        instead of starting a model server that would fail on a missing one)."""
        self.cold_starts = ColdStarts()
        """Each replica's cold start by phase (:mod:`cluster.local.coldstart`)."""
        s = self.settings
        self.zygote = Zygote(s.queue_proxy_entry, quiet=not s.log_children) if s.prefork else None
        self.models = (
            ModelZygotes(quiet=not s.log_children, model_preload=s.model_preload)
            if s.model_prefork
            else None
        )
        """The model servers' parked processes (:mod:`cluster.local.model_zygote`)."""

    async def start(self) -> None:
        """Start the queue-proxy zygote now, so that it has imported before the first replica,
        and the model servers' parked processes (in the background: torch takes seconds)."""
        if self.models is not None:
            self.models.start()
        if self.zygote is not None:
            await self.zygote.start()

    # -- the revision set ---------------------------------------------------------------------

    def set_revisions(self, revisions: Mapping[RevisionKey, Revision]) -> None:
        """Known revisions; a revision that disappears is scaled to zero and forgotten."""
        for key, rev in revisions.items():
            state = self._revisions.get(key)
            if state is None:
                self._revisions[key] = _RevisionState(rev)
            else:
                state.revision = rev  # new replicas use the new settings
        if self.models is not None:  # parked processes for these revisions' preload sets
            self.models.want(revisions.values())
        for key in list(self._revisions):
            if key not in revisions:
                state = self._revisions[key]
                state.desired = 0
                state.wake.set()

    # -- ScaleTarget ----------------------------------------------------------------------------

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        state = self._revisions.get(key)
        if state is None:
            raise KeyError(f"revision {key}: not known to the local supervisor")
        if replicas < 0:
            raise ValueError(f"replicas = {replicas}: must be >= 0")
        state.desired = replicas
        state.wake.set()
        if state.task is None and not self._closed:
            state.task = asyncio.create_task(self._reconcile(key, state), name=f"reconcile {key}")

    async def ready_pods(self, key: RevisionKey) -> int | None:
        state = self._revisions.get(key)
        if state is None:
            return 0
        return sum(1 for r in state.replicas if r.ready and not r.stopping)

    def desired(self, key: RevisionKey) -> int:
        state = self._revisions.get(key)
        return 0 if state is None else state.desired

    def replicas(self, key: RevisionKey) -> list[Replica]:
        state = self._revisions.get(key)
        return [] if state is None else list(state.replicas)

    # -- EndpointSource ---------------------------------------------------------------------------

    def current(self) -> Mapping[RevisionKey, Sequence[PodEndpoint]]:
        return self._endpoints.current()

    def subscribe(
        self, listener: Callable[[Mapping[RevisionKey, Sequence[PodEndpoint]]], None]
    ) -> Unsubscribe:
        return self._endpoints.subscribe(listener)

    def _publish(self, key: RevisionKey) -> None:
        state = self._revisions.get(key)
        data = dict(self._endpoints.current())
        ready = (
            tuple(
                r.endpoint(self.settings.host) for r in state.replicas if r.ready and not r.stopping
            )
            if state
            else ()
        )
        if ready:
            data[key] = ready
        else:
            data.pop(key, None)
        if data != self._endpoints.current():
            self._endpoints.set(MappingProxyType(data))

    # -- reconciling ---------------------------------------------------------------------------

    async def _reconcile(self, key: RevisionKey, state: _RevisionState) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            state.wake.clear()
            live = [r for r in state.replicas if not r.stopping]
            if len(live) < state.desired:
                delay = state.next_start_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(state.wake.wait(), delay)
                    continue
                for _ in range(state.desired - len(live)):
                    self._start(key, state)
            elif len(live) > state.desired:
                # Stop the ones that serve nothing yet first, then the newest.
                victims = sorted(live, key=lambda r: (r.ready, r.started_at))
                for replica in victims[: len(live) - state.desired]:
                    self._stop(key, replica)
            await state.wake.wait()

    def _start(self, key: RevisionKey, state: _RevisionState) -> None:
        rev = state.revision
        name = f"{rev.name}-{next(self._names)}"
        listeners: dict[str, socket.socket] = {}
        try:
            for var in ("QUEUE_SERVING_FD", "QUEUE_METRICS_FD", "QUEUE_ADMIN_FD"):
                listeners[var] = self.ports.listener(name)
            user_port = self.ports.port(name)
        except OSError as exc:  # the host is out of ports: try again after a back-off
            for sock in listeners.values():
                sock.close()
            self.ports.release(name)
            log.warning("no ports for a replica", extra={"revision": str(key), "error": str(exc)})
            loop = asyncio.get_running_loop()
            state.next_start_at = loop.time() + self.settings.crash_backoff_initial_s
            loop.call_later(self.settings.crash_backoff_initial_s, state.wake.set)
            return
        replica = Replica(
            name=name,
            revision=rev,
            user_port=user_port,
            serving_port=listeners["QUEUE_SERVING_FD"].getsockname()[1],
            metrics_port=listeners["QUEUE_METRICS_FD"].getsockname()[1],
            admin_port=listeners["QUEUE_ADMIN_FD"].getsockname()[1],
            listeners=listeners,
        )
        state.replicas.append(replica)
        replica.task = asyncio.create_task(self._run(key, state, replica), name=replica.name)

    def _stop(self, key: RevisionKey, replica: Replica) -> None:
        if replica.stopping:
            return
        replica.stopping = True
        self._publish(key)  # no new request reaches it from now on
        log.info(
            "stopping replica", extra={"revision": str(key), "pod": replica.name, "reason": "scale"}
        )
        if replica.task is not None:
            replica.task.cancel()

    def _env(self, replica: Replica) -> tuple[dict[str, str], dict[str, str]]:
        rev = replica.revision
        model_env = dict(rev.env)
        model_env["PORT"] = str(replica.user_port)
        model_env.setdefault("POD_NAME", replica.name)
        qp_env = {
            "SERVING_NAMESPACE": rev.namespace,
            "SERVING_SERVICE": rev.service,
            "SERVING_REVISION": rev.name,
            "SERVING_POD": replica.name,
            "SERVING_POD_IP": self.settings.host,
            "CONTAINER_CONCURRENCY": str(rev.container_concurrency),
            "QUEUE_SERVING_PORT": str(replica.serving_port),
            "USER_PORT": str(replica.user_port),
            "METRICS_PORT": str(replica.metrics_port),
            "ADMIN_PORT": str(replica.admin_port),
            "REVISION_TIMEOUT_SECONDS": _num(rev.timeout_s),
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS": _num(rev.response_start_timeout_s),
            "REVISION_IDLE_TIMEOUT_SECONDS": _num(rev.idle_timeout_s),
            "SERVING_READINESS_PROBE": readiness_probe_json(
                _with_user_port(rev, replica.user_port)
            ),
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": _num(self.settings.drain_quiet_period_s),
            "QUEUE_LOG_FORMAT": self.settings.log_format,
            **batching_env(rev.annotations),
            **(
                {"QUEUE_OBSERVABILITY_DIR": self.settings.observability_dir}
                if self.settings.observability_dir
                else {}
            ),
            **logger_env(rev.annotations),
        }
        return model_env, qp_env

    async def _run(self, key: RevisionKey, state: _RevisionState, replica: Replica) -> None:
        """Start, watch and (when cancelled) drain one replica."""
        loop = asyncio.get_running_loop()
        model_env, qp_env = self._env(replica)
        out = None if self.settings.log_children else asyncio.subprocess.DEVNULL
        started = loop.time()
        # the cold start's phases (cluster.local.coldstart), on the clock the model server
        # reports its own start on
        timer = StartTimer(time.monotonic())
        reason = ""
        code: int | None = None
        try:
            if self.before_start is not None:
                await self.before_start(replica.revision)
                started = loop.time()
                timer.prefetched = time.monotonic()
            if self.models is not None and (
                forked := await self.models.fork(
                    replica.revision,
                    model_env,
                    pod=replica.name,
                    revision=str(key),
                    fmt=self.settings.log_format,
                    relay=self.settings.log_children,
                )
            ):
                replica.model = forked
            elif self.settings.log_children:  # each line re-emitted with the pod's name
                replica.model = await spawn_relayed(
                    replica.revision.command,
                    model_env,
                    pod=replica.name,
                    revision=str(key),
                    fmt=self.settings.log_format,
                )
            else:
                replica.model = await spawn(replica.revision.command, model_env, stdout=out)
            timer.spawned = time.monotonic()
            fds = {var: sock.fileno() for var, sock in replica.listeners.items()}
            if self.zygote is not None:
                replica.queue_proxy = await self.zygote.fork(
                    qp_env, name=replica.name, notify_env="QUEUE_READY_FD", fds=fds
                )
            else:  # a spawned child keeps each passed descriptor's number
                qp_env.update({var: str(fd) for var, fd in fds.items()})
                replica.queue_proxy = await spawn(
                    self.settings.queue_proxy_command,
                    qp_env,
                    stdout=out,
                    pass_fds=list(fds.values()),
                )
            replica.close_listeners()  # the queue-proxy holds them now
            log.info(
                "replica started",
                extra={
                    "revision": str(key),
                    "pod": replica.name,
                    "address": f"{self.settings.host}:{replica.serving_port}",
                },
            )
            exited = asyncio.ensure_future(_first_exit(replica.model, replica.queue_proxy))
            try:
                await self._wait_ready(replica, exited)
                if not exited.done():
                    await self._check_user_port(replica)
                if exited.done():
                    proc, code = exited.result()
                    reason = f"{proc} exited with code {code} before it was ready"
                else:
                    replica.ready = True
                    self._publish(key)
                    log.info("replica ready", extra={"revision": str(key), "pod": replica.name})
                    self._collect_cold_start(key, replica, timer, time.monotonic())
                    proc, code = await exited
                    reason = f"{proc} exited with code {code}"
            finally:
                exited.cancel()
        except asyncio.CancelledError:
            await self._drain(key, replica)
            self._forget(state, replica)
            raise
        except TimeoutError:
            reason = f"not ready within {self.settings.ready_timeout_s:g}s"
        except OSError as exc:
            reason = f"could not start: {exc}"
        # Reached only when the replica failed on its own: report, clean up, back off, replace.
        replica.ready = False
        replica.stopping = True
        self._publish(key)
        self.crash_count += 1
        if loop.time() - started >= self.settings.crash_backoff_reset_s:
            state.crashes = 0
        backoff = min(
            self.settings.crash_backoff_initial_s * 2**state.crashes,
            self.settings.crash_backoff_max_s,
        )
        state.crashes += 1
        state.next_start_at = loop.time() + backoff
        log.warning(
            "replica failed",
            extra={
                "revision": str(key),
                "pod": replica.name,
                "reason": reason,
                "restart_in_s": round(backoff, 3),
            },
        )
        if self.on_crash is not None:
            self.on_crash(key, replica.name, code)
        await self._kill(replica)
        self._forget(state, replica)

    def _collect_cold_start(
        self, key: RevisionKey, replica: Replica, timer: StartTimer, ready_at: float
    ) -> None:
        self.cold_starts.collect(
            namespace=key.namespace,
            revision=key.name,
            pod=replica.name,
            started_at=replica.started_at,
            timer=timer,
            ready_at=ready_at,
            session=self._client(),
            report_url=f"http://{self.settings.host}:{replica.user_port}{REPORT_PATH}",
        )

    def _forget(self, state: _RevisionState, replica: Replica) -> None:
        """The replica's processes have exited: its ports may go to another one."""
        replica.close_listeners()
        self.ports.release(replica.name)
        state.replicas.remove(replica)
        state.wake.set()

    async def _check_user_port(self, replica: Replica) -> None:
        """Raise PortConflictError if another process than the model server (or its children)
        listens on its ``$PORT``: the queue-proxy's probe then succeeded against that process,
        and every request would reach it. (Nothing listening, or no way to tell: no error.)"""
        model = replica.model
        if model is None or model.returncode is not None:
            return
        found = await asyncio.to_thread(listener_owners, replica.user_port, model.pid)
        if found is not None and not found[0]:
            raise PortConflictError(
                f"the model server's port {replica.user_port} is held by another process "
                f"(pid {', '.join(map(str, found[1]))}): replacing it on a new port"
            )

    async def _wait_ready(
        self, replica: Replica, exited: asyncio.Future[tuple[str, int | None]]
    ) -> None:
        """Until the queue-proxy says it is ready, or its probe does (``K-Network-Probe: queue``
        → 200 ``queue``), polled every ``probe_interval_s`` in case it cannot say."""
        qp = replica.queue_proxy
        if isinstance(qp, ForkedChild):
            notified = asyncio.ensure_future(qp.ready.wait())
            try:
                await self._poll_ready(replica, exited, notified)
            finally:
                notified.cancel()
        else:
            await self._poll_ready(replica, exited, None)

    async def _poll_ready(
        self,
        replica: Replica,
        exited: asyncio.Future[tuple[str, int | None]],
        notified: asyncio.Future[Any] | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        wake: list[asyncio.Future[Any]] = [exited] if notified is None else [exited, notified]
        deadline = loop.time() + self.settings.ready_timeout_s
        url = f"http://{self.settings.host}:{replica.serving_port}/"
        headers = {"K-Network-Probe": "queue", "User-Agent": "Knative-Activator-Probe"}
        session = self._client()
        timeout = aiohttp.ClientTimeout(total=1.0)
        while not exited.done():
            if notified is not None and notified.done():
                return
            if loop.time() > deadline:
                raise TimeoutError
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, headers=headers, timeout=timeout) as resp:
                    if resp.status == 200 and (await resp.text()) == "queue":
                        return
            await asyncio.wait(
                wake, timeout=self.settings.probe_interval_s, return_when=asyncio.FIRST_COMPLETED
            )

    async def _drain(self, key: RevisionKey, replica: Replica) -> None:
        """Queue-proxy first (it drains in-flight requests), then the model server."""
        replica.ready = False
        rev = replica.revision
        qp_grace = self.settings.drain_quiet_period_s + rev.timeout_s + self.settings.kill_grace_s
        if replica.queue_proxy is not None:
            code = await terminate(replica.queue_proxy, qp_grace)
            log.info(
                "queue-proxy drained",
                extra={"revision": str(key), "pod": replica.name, "code": code},
            )
        if replica.model is not None:
            await terminate(replica.model, self.settings.kill_grace_s)
        log.info("replica stopped", extra={"revision": str(key), "pod": replica.name})

    async def _kill(self, replica: Replica) -> None:
        for proc in (replica.queue_proxy, replica.model):
            if proc is not None:
                await terminate(proc, self.settings.kill_grace_s)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Stop every replica (draining each) and wait until all children have exited."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        for key, state in self._revisions.items():
            if state.task is not None:
                state.task.cancel()
                tasks.append(state.task)
            for replica in list(state.replicas):
                if replica.task is not None and not replica.task.done():
                    if not replica.stopping:  # a stopping one is draining already: let it finish
                        replica.stopping = True
                        replica.task.cancel()
                    tasks.append(replica.task)
            self._publish(key)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.cold_starts.close()
        if self.zygote is not None:
            await self.zygote.close()
        if self.models is not None:
            await self.models.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _first_exit(model: Child, queue_proxy: Child) -> tuple[str, int | None]:
    waits = {
        asyncio.ensure_future(model.wait()): "model server",
        asyncio.ensure_future(queue_proxy.wait()): "queue-proxy",
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for fut in pending:
        fut.cancel()
    first = next(iter(done))
    return waits[first], first.result()


def _num(value: float) -> str:
    return f"{value:g}"


def _with_user_port(rev: Revision, port: int) -> Revision:
    return replace(rev, user_port=port)
