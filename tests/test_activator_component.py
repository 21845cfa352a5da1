"""The activator end to end on loopback: real upstreams that behave like queue-proxies."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from activator.app import Activator, ActivatorSettings, build_activator
from activator.sinks import InProcessStatSink, StatSink, WebsocketStatSink
from autoscaler.statserver import build_stat_app
from cluster.memory import MemoryEndpoints, MemoryRoutes
from cluster.ports import PodEndpoint
from cluster.spec import Revision, RevisionKey, Service, TrafficTarget
from metrics.stat import WireStat


async def poll(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@dataclass
class Pod:
    """A queue-proxy stand-in: answers the probe, counts concurrency, records requests."""

    name: str
    delay_s: float = 0.0
    active: int = 0
    peak: int = 0
    seen: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event | None = None
    runner: web.AppRunner | None = None
    address: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("K-Network-Probe") == "queue":
            return web.Response(text="queue")
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.seen.append(dict(request.headers))
        try:
            body = await request.read()
            if self.release is not None:
                await self.release.wait()
            elif self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.Response(text=f"{self.name}:{request.headers.get('X-Seq', '')}:{len(body)}")
        finally:
            self.active -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def endpoint(self) -> PodEndpoint:
        return PodEndpoint(name=self.name, address=self.address, stats_address="")


def service(
    name: str,
    split: dict[str, int],
    *,
    cc: int = 0,
    timeout_s: float = 10.0,
    tags: dict[str, str] | None = None,
) -> Service:
    tags = tags or {}
    names = list(dict.fromkeys([*split, *tags.values()]))
    revs = tuple(
        Revision(
            namespace="default", service=name, name=r, container_concurrency=cc, timeout_s=timeout_s
        )
        for r in names
    )
    traffic = [TrafficTarget(revision=r, percent=p) for r, p in split.items()]
    traffic += [TrafficTarget(revision=r, percent=0, tag=t) for t, r in tags.items()]
    return Service(namespace="default", name=name, revisions=revs, traffic=tuple(traffic))


@dataclass
class Harness:
    routes: MemoryRoutes
    endpoints: MemoryEndpoints
    stats: list[WireStat]
    act: Activator
    session: aiohttp.ClientSession
    pods: list[Pod]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.act.port}"

    async def pod(self, name: str, delay_s: float = 0.0) -> Pod:
        p = Pod(name, delay_s=delay_s)
        await p.start()
        self.pods.append(p)
        return p

    def set_pods(self, revision: str, *pods: Pod) -> None:
        self.endpoints.set_endpoints(RevisionKey("default", revision), [p.endpoint() for p in pods])

    async def ready(self, revision: str, n: int) -> None:
        key = RevisionKey("default", revision)
        await poll(lambda: len(self.act.prober.healthy(key)) == n)

    async def get(
        self, host: str = "iris.default.example.com", path: str = "/", **headers: str
    ) -> tuple[int, str]:
        async with self.session.post(
            self.url + path, headers={"Host": host, **headers}, data=b"x"
        ) as resp:
            return resp.status, await resp.text()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def build(*services: Service, sink: StatSink | None = None, **settings: float) -> Harness:
        routes = MemoryRoutes(services)
        endpoints = MemoryEndpoints()
        stats: list[WireStat] = []
        base = ActivatorSettings(
            pod_name="activator-0",
            seed=5,
            probe_period_s=0.02,
            drain_quiet_period_s=0.05,
            report_period_s=0.05,
        )
        act = build_activator(
            routes,
            endpoints,
            sink or InProcessStatSink(stats.extend),
            settings=dataclasses.replace(base, **settings),  # type: ignore[arg-type]
        )
        await act.start("127.0.0.1", 0)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        h = Harness(routes, endpoints, stats, act, session, [])
        made.append(h)
        return h

    yield build
    for h in made:
        await h.session.close()
        await h.act.close()
        for p in h.pods:
            await p.stop()


Make = Callable[..., Awaitable[Harness]]


def waiting(h: Harness, revision: str) -> int:
    rt = h.act.throttler.find(RevisionKey("default", revision))
    return 0 if rt is None else rt.waiting


async def test_scale_from_zero_waits_then_succeeds_in_order(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(h.get(**{"X-Seq": str(i)})))
        await poll(functools.partial(lambda n: waiting(h, "iris-v1") == n, i + 1))
    # the scale-from-zero signal went out at once, before any pod
    assert [
        (s.revision, s.stat.average_concurrent_requests, s.stat.request_count) for s in h.stats[:1]
    ] == [("iris-v1", 1.0, 1.0)]
    assert h.stats[0].stat.pod_name == "activator-0"
    pod = await h.pod("p1", delay_s=0.01)
    h.set_pods("iris-v1", pod)
    results = await asyncio.gather(*tasks)
    assert [r[0] for r in results] == [200] * 5
    assert [s["X-Seq"] for s in pod.seen] == ["0", "1", "2", "3", "4"]
    text = generate_latest(h.act.metrics.registry).decode()
    assert (
        'activator_cold_start_wait_seconds_count{namespace="default",revision="iris-v1",service="iris"} 5.0'
        in text
    )
    assert (
        'activator_requests_total{code="2xx",namespace="default",revision="iris-v1",service="iris"} 5.0'
        in text
    )


async def test_cc1_never_two_concurrent_on_one_pod(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    a, b = await h.pod("a", delay_s=0.01), await h.pod("b", delay_s=0.01)
    h.set_pods("iris-v1", a, b)
    await h.ready("iris-v1", 2)
    results = await asyncio.gather(*(h.get() for _ in range(30)))
    assert all(r[0] == 200 for r in results)
    assert a.peak == 1
    assert b.peak == 1
    assert len(a.seen) + len(b.seen) == 30


@pytest.mark.parametrize(
    ("cc", "want_pods_used"),
    [
        pytest.param(3, 1, id="cc3-first-available-packs"),
        pytest.param(5, 3, id="cc5-round-robin-spreads"),
        pytest.param(0, 3, id="cc0-power-of-two-spreads"),
    ],
)
async def test_lb_policy(make: Make, cc: int, want_pods_used: int) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=cc))
    gate = asyncio.Event()
    pods = [await h.pod(f"p{i}") for i in range(3)]
    for p in pods:
        p.release = gate
    h.set_pods("iris-v1", *pods)
    await h.ready("iris-v1", 3)
    tasks = [asyncio.create_task(h.get()) for _ in range(3)]
    await poll(lambda: sum(p.active for p in pods) == 3)
    used = [p for p in pods if p.active]
    gate.set()
    assert [r[0] for r in await asyncio.gather(*tasks)] == [200] * 3
    assert len(used) == want_pods_used
    if cc == 3:  # first available: the lowest address
        assert used[0].address == min(p.address for p in pods)


async def test_split_and_tags(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 50, "iris-v2": 50}, tags={"canary": "iris-v3"}))
    for rev in ("iris-v1", "iris-v2", "iris-v3"):
        h.set_pods(rev, await h.pod(rev))
        await h.ready(rev, 1)
    counts: Counter[str] = Counter()
    for _ in range(200):
        counts[(await h.get())[1].split(":")[0]] += 1
    assert counts.keys() == {"iris-v1", "iris-v2"}
    assert 70 <= counts["iris-v1"] <= 130, counts
    status, body = await h.get(host="canary-iris.default.example.com")
    assert (status, body.split(":")[0]) == (200, "iris-v3")
    status, body = await h.get(host="localhost", path="/v1/models/iris:predict")
    assert status == 200
    status, body = await h.get(host="nope.default.example.com")
    assert (status, body) == (404, "service default/nope not found\n")


async def test_queue_overflow_and_deadline(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}, timeout_s=0.3), queue_depth=2)
    queued = [asyncio.create_task(h.get()) for _ in range(2)]
    await poll(lambda: waiting(h, "iris-v1") == 2)
    assert await h.get() == (503, "pending request queue full\n")
    results = await asyncio.gather(*queued)
    assert (
        results
        == [(503, "timed out waiting for a ready pod of revision default/iris-v1 after 0.3s\n")] * 2
    )


async def test_client_leaving_the_queue_frees_its_place(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}))
    task = asyncio.create_task(h.get())
    key = RevisionKey("default", "iris-v1")
    await poll(lambda: waiting(h, "iris-v1") == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rt = h.act.throttler.find(key)
    assert rt is not None
    await poll(lambda: rt.waiting == 0 and rt.in_flight == 0)


async def test_pod_removed_mid_traffic(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=2))
    a, b = await h.pod("a", delay_s=0.005), await h.pod("b", delay_s=0.005)
    h.set_pods("iris-v1", a, b)
    await h.ready("iris-v1", 2)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            statuses.append((await h.get())[0])

    clients = [asyncio.create_task(client()) for _ in range(6)]
    await poll(lambda: len(a.seen) > 5 and len(b.seen) > 5)
    h.set_pods("iris-v1", b)  # a leaves: no new request, its in-flight ones finish
    seen_a = len(a.seen) + a.active
    await poll(lambda: len(b.seen) > 60)
    stop.set()
    await asyncio.gather(*clients)
    assert len(a.seen) <= seen_a
    assert set(statuses) == {200}


async def test_refused_connection_is_retried_on_another_pod_else_502(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    pods = [await h.pod("a"), await h.pod("b")]
    h.set_pods("iris-v1", *pods)
    await h.ready("iris-v1", 2)
    first = min(pods, key=lambda p: p.address)  # first-available picks it first
    other = max(pods, key=lambda p: p.address)
    await first.stop()  # dead, but still listed: connection refused
    status, body = await h.get()
    assert (status, body.split(":")[0]) == (200, other.name)
    await other.stop()
    status, body = await h.get()
    assert status == 502
    assert body.startswith("error connecting to revision default/iris-v1")


async def test_client_headers_are_stripped_and_activator_headers_set(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}))
    pod = await h.pod("p")
    h.set_pods("iris-v1", pod)
    await h.ready("iris-v1", 1)
    status, _ = await h.get(
        **{
            "Knative-Serving-Revision": "other",
            "Knative-Serving-Namespace": "kube-system",
            "Knative-Serving-Tag": "canary",
            "K-Proxy-Request": "fake",
            "K-Passthrough-Lb": "true",
            "X-Keep": "yes",
        }
    )
    assert status == 200
    seen = {k.lower(): v for k, v in pod.seen[0].items()}
    assert seen["k-proxy-request"] == "activator"
    assert seen["k-original-host"] == "iris.default.example.com"
    assert seen["x-keep"] == "yes"
    assert not [k for k in seen if k.startswith("knative-serving-")]
    assert "k-passthrough-lb" not in seen


async def test_stats_sequence(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}))
    pod = await h.pod("p")
    h.set_pods("iris-v1", pod)
    await h.ready("iris-v1", 1)
    assert (await h.get())[0] == 200
    # the immediate stat, then the period's with the first request subtracted, then dropped
    await poll(lambda: len(h.stats) >= 3)
    figs = [(s.stat.average_concurrent_requests, s.stat.request_count) for s in h.stats[:2]]
    assert figs[0] == (1.0, 1.0)
    assert figs[1][1] == 0.0
    await poll(lambda: len(h.act.reporter) == 0)
    n = len(h.stats)
    assert (await h.get())[0] == 200
    assert (h.stats[n].stat.average_concurrent_requests, h.stats[n].stat.request_count) == (
        1.0,
        1.0,
    )


async def test_route_change_under_load(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}))
    v1, v2 = await h.pod("iris-v1", delay_s=0.002), await h.pod("iris-v2", delay_s=0.002)
    h.set_pods("iris-v1", v1)
    h.set_pods("iris-v2", v2)
    await h.ready("iris-v1", 1)
    await h.ready("iris-v2", 1)
    statuses: list[int] = []
    stop = asyncio.Event()
    outstanding = 0  # requests sent and not answered yet

    async def client() -> None:
        nonlocal outstanding
        while not stop.is_set():
            outstanding += 1
            statuses.append((await h.get())[0])
            outstanding -= 1

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await poll(lambda: len(v1.seen) > 10)
    h.routes.set_services([service("iris", {"iris-v2": 100})])
    # Requests in flight at the change (already routed to v1, maybe not yet at the pod) finish
    # there; nothing sent after it goes to v1.
    after = len(v1.seen) + outstanding
    await poll(lambda: len(v2.seen) > 20)
    stop.set()
    await asyncio.gather(*clients)
    assert set(statuses) == {200}
    assert len(v1.seen) <= after


async def test_probes_health_and_drain(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}))
    assert await h.get(host="localhost", path="/healthz") == (200, "ok\n")
    assert await h.get(**{"User-Agent": "kube-probe/1.29"}) == (200, "ok\n")
    assert await h.get(**{"K-Network-Probe": "activator"}) == (200, "activator")
    assert (await h.get(**{"K-Network-Probe": "queue"}))[0] == 400
    # The KIngress prober: its hash is echoed (400 without one).
    probe = {"K-Network-Probe": "probe", "K-Network-Hash": "h-1"}
    async with h.session.get(h.url + "/", headers=probe) as resp:
        assert (resp.status, resp.headers.get("K-Network-Hash")) == (200, "h-1")
    assert await h.get(**{"K-Network-Probe": "probe"}) == (400, "no K-Network-Hash header\n")
    drain = asyncio.create_task(h.act.drain())
    await poll(lambda: h.act.handler.draining)
    assert await h.get(host="localhost", path="/healthz") == (503, "draining\n")
    assert await h.get(**probe) == (503, "draining\n")
    await asyncio.wait_for(drain, 5)


async def test_health_fails_while_the_autoscaler_is_unreachable(make: Make) -> None:
    """Knative's HealthHandler: an activator whose stats cannot reach the autoscaler is not
    ready, so no new traffic comes to it (its scale-from-zero signal would be lost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here yet
    sink = WebsocketStatSink(f"ws://127.0.0.1:{port}/", initial_backoff_s=0.02, max_backoff_s=0.05)
    h = await make(service("iris", {"iris-v1": 100}), sink=sink)
    health = {"User-Agent": "kube-probe/1.29"}
    assert await h.get(**health) == (500, "not connected to the autoscaler\n")
    runner = web.AppRunner(build_stat_app(lambda batch: None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.wait_for(sink.wait_connected(), 5)
        assert await h.get(**health) == (200, "ok\n")
    finally:
        await runner.cleanup()
    await poll(lambda: not sink.connected)
    assert await h.get(**health) == (500, "not connected to the autoscaler\n")


async def test_a_live_cc_change_takes_effect_at_once_without_failing_requests(
    make: Make,
) -> None:
    """Issue 19, item 2: a spec edit from CC 0 to CC 1 (and back) reaches the activator's
    capacity and load balancing at once; requests in flight at the change finish."""
    h = await make(service("iris", {"iris-v1": 100}, cc=0))
    a, b = await h.pod("a"), await h.pod("b")
    gate = asyncio.Event()
    a.release = b.release = gate
    h.set_pods("iris-v1", a, b)
    await h.ready("iris-v1", 2)
    held = [asyncio.create_task(h.get()) for _ in range(6)]  # CC 0: all go out at once
    await poll(lambda: a.active + b.active == 6)
    h.routes.set_services([service("iris", {"iris-v1": 100}, cc=1)])  # the spec edit
    later = [asyncio.create_task(h.get()) for _ in range(15)]
    rt = h.act.throttler.find(RevisionKey("default", "iris-v1"))
    assert rt is not None
    # each pod is over its new limit: all 15 wait (for a revision slot, or for a pod slot)
    await poll(lambda: rt.in_flight == 15)  # (in the revision breaker, waiting or not)
    assert a.active + b.active == 6
    for p in (a, b):
        p.peak = p.active
    gate.set()
    results = await asyncio.gather(*held, *later)
    assert [status for status, _ in results] == [200] * 21
    assert (a.peak, b.peak) == (3, 3)  # no pod got more than it had at the change
    a.peak = b.peak = 0
    a.release = b.release = None
    a.delay_s = b.delay_s = 0.02
    results = await asyncio.gather(*(h.get() for _ in range(15)))
    assert [status for status, _ in results] == [200] * 15
    assert (a.peak, b.peak) == (1, 1)  # CC 1 from now on
    h.routes.set_services([service("iris", {"iris-v1": 100}, cc=0)])  # and back to unlimited
    results = await asyncio.gather(*(h.get() for _ in range(15)))
    assert [status for status, _ in results] == [200] * 15
    assert max(a.peak, b.peak) > 1
