"""Shadow revisions in the activator (activator.shadow) against real servers on loopback: copies
sent fire and forget, compared, bounded; nothing of the shadow's reaches the primary."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from activator.app import (
    Activator,
    ActivatorSettings,
    build_activator,
    parse_args,
    settings_from_args,
)
from activator.shadow import ShadowSettings, shadow_host
from activator.shadow_compare import Outcome, compare, content_type
from activator.sinks import InProcessStatSink
from cluster.memory import MemoryEndpoints, MemoryRoutes
from cluster.ports import PodEndpoint
from cluster.spec import Revision, RevisionKey, Service, ShadowTarget, TrafficTarget
from metrics.stat import WireStat

HOST = "iris.default.example.com"


@dataclass
class Model:
    """A queue-proxy and model server stand-in: answers the probe, then ``{"predictions"}``."""

    name: str
    predictions: list[int] = field(default_factory=lambda: [1, 0])
    status: int = 200
    sleep_s: float = 0.0
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    address: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("K-Network-Probe") == "queue":
            return web.Response(text="queue")
        body = await request.read()
        self.seen.append((dict(request.headers), body))
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        return web.json_response(
            {"model_name": self.name, "predictions": self.predictions}, status=self.status
        )

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


def shadowed(percent: int = 100, *, missing: bool = False) -> Service:
    revs = tuple(
        Revision(namespace="default", service="iris", name=n, timeout_s=30.0)
        for n in ("iris-v1", "iris-v2")
        if not (missing and n == "iris-v2")
    )
    return Service(
        namespace="default",
        name="iris",
        revisions=revs,
        traffic=(TrafficTarget(revision="iris-v1", percent=100),),
        shadows=(ShadowTarget(revision="iris-v2", percent=percent),),
    )


@dataclass
class Harness:
    act: Activator
    endpoints: MemoryEndpoints
    stats: list[WireStat]
    session: aiohttp.ClientSession
    models: list[Model]

    async def model(self, name: str, **kw: object) -> Model:
        m = Model(name, **kw)  # type: ignore[arg-type]
        await m.start()
        self.models.append(m)
        return m

    def serve(self, revision: str, model: Model) -> None:
        self.endpoints.set_endpoints(
            RevisionKey("default", revision),
            [PodEndpoint(name=model.name, address=model.address, stats_address="")],
        )

    async def ready(self, revision: str) -> None:
        key = RevisionKey("default", revision)
        await poll(lambda: len(self.act.prober.healthy(key)) == 1)

    async def predict(self, body: bytes = b'{"instances": [[1, 2]]}') -> tuple[int, bytes, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        url = f"http://127.0.0.1:{self.act.port}/v1/models/iris:predict"
        async with self.session.post(url, headers={"Host": HOST}, data=body) as resp:
            return resp.status, await resp.read(), loop.time() - start

    def sample(self, name: str, **labels: str) -> float:
        value = self.act.metrics.registry.get_sample_value(
            name, {"namespace": "default", "service": "iris", "revision": "iris-v2", **labels}
        )
        return value or 0.0


async def poll(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110 - polling with a deadline (STYLE.md 13)
            await asyncio.sleep(0.005)


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Harness] = []

    async def build(svc: Service, shadow: ShadowSettings | None = None) -> Harness:
        endpoints = MemoryEndpoints()
        stats: list[WireStat] = []
        act = build_activator(
            MemoryRoutes([svc]),
            endpoints,
            InProcessStatSink(stats.extend),
            settings=ActivatorSettings(
                seed=3,
                probe_period_s=0.02,
                report_period_s=0.05,
                shadow=shadow or ShadowSettings(),
            ),
        )
        await act.start("127.0.0.1", 0)
        h = Harness(act, endpoints, stats, aiohttp.ClientSession(), [])
        made.append(h)
        return h

    yield build
    for h in made:
        await h.session.close()
        await h.act.close()
        for m in h.models:
            if m.runner is not None:
                await m.runner.cleanup()


async def _primary_and_shadow(h: Harness, **shadow: object) -> tuple[Model, Model]:
    primary = await h.model("v1")
    copy = await h.model("v2", **shadow)
    h.serve("iris-v1", primary)
    h.serve("iris-v2", copy)
    await h.ready("iris-v1")
    await h.ready("iris-v2")
    return primary, copy


async def test_a_copy_goes_to_the_shadow_and_is_compared(make: Make) -> None:
    h = await make(shadowed())
    primary, copy = await _primary_and_shadow(h)
    for _ in range(3):
        status, body, _ = await h.predict()
        assert status == 200
        assert json.loads(body)["model_name"] == "v1"  # only the primary's response
    await poll(
        lambda: h.sample("activator_shadow_comparisons_total", status="match", body="equal") == 3
    )
    headers, body = copy.seen[0]
    assert body == b'{"instances": [[1, 2]]}'
    assert headers["K-Original-Host"] == HOST + "-shadow"
    assert headers["K-Proxy-Request"] == "activator"  # the queue-proxy counts it as proxied
    assert primary.seen[0][0]["K-Original-Host"] == HOST
    assert h.sample("activator_shadow_requests_total", outcome="compared") == 3
    assert h.sample("activator_shadow_latency_seconds_count", role="shadow") == 3
    # the copies are the shadow revision's own requests: counted for the autoscaler
    assert any(s.revision == "iris-v2" for s in h.stats)


async def test_a_shadow_that_fails_or_differs_changes_nothing_for_the_primary(make: Make) -> None:
    h = await make(shadowed())
    _, copy = await _primary_and_shadow(h, status=500, predictions=[0, 0])
    status, body, _ = await h.predict()
    assert status == 200
    assert json.loads(body)["predictions"] == [1, 0]
    await poll(
        lambda: (
            h.sample("activator_shadow_comparisons_total", status="mismatch", body="different") == 1
        )
    )
    assert copy.seen


async def test_a_slow_shadow_adds_no_latency_and_its_copies_are_bounded(make: Make) -> None:
    h = await make(shadowed(), ShadowSettings(max_in_flight=3))
    await _primary_and_shadow(h, sleep_s=10.0)
    latencies = []
    for _ in range(8):
        status, _, latency = await h.predict()
        assert status == 200
        latencies.append(latency)
    assert max(latencies) < 1.0  # the shadow answers in 10 s
    assert h.sample("activator_shadow_in_flight") == 3
    assert h.sample("activator_shadow_requests_total", outcome="dropped") == 5


async def test_a_missing_shadow_is_counted_and_the_primary_served(make: Make) -> None:
    h = await make(shadowed(missing=True))
    primary = await h.model("v1")
    h.serve("iris-v1", primary)
    await h.ready("iris-v1")
    status, _, _ = await h.predict()
    assert status == 200
    assert h.sample("activator_shadow_requests_total", outcome="missing") == 1


async def test_a_shadow_at_zero_is_woken_by_its_copies(make: Make) -> None:
    """No pod for the shadow: its copy is counted (the immediate stat that scales it from zero)
    and waits for a pod; once one is ready the copy goes there and is compared."""
    h = await make(shadowed())
    primary = await h.model("v1")
    h.serve("iris-v1", primary)
    await h.ready("iris-v1")
    status, _, latency = await h.predict()
    assert status == 200
    assert latency < 1.0
    await poll(lambda: any(s.revision == "iris-v2" for s in h.stats))
    first = next(s for s in h.stats if s.revision == "iris-v2")
    assert (first.stat.average_concurrent_requests, first.stat.request_count) == (1.0, 1.0)
    copy = await h.model("v2")
    h.serve("iris-v2", copy)
    await poll(
        lambda: h.sample("activator_shadow_comparisons_total", status="match", body="equal") == 1
    )
    assert len(copy.seen) == 1


async def test_a_body_over_the_limit_is_not_mirrored(make: Make) -> None:
    h = await make(shadowed(), ShadowSettings(max_body_bytes=100))
    _, copy = await _primary_and_shadow(h)
    status, _, _ = await h.predict(b'{"instances": [' + b"1, " * 100 + b"1]}")
    assert status == 200
    await poll(lambda: h.sample("activator_shadow_requests_total", outcome="body_too_large") == 1)
    assert h.sample("activator_shadow_in_flight") == 0
    assert copy.seen == []


async def test_percent_zero_sends_no_copy(make: Make) -> None:
    h = await make(shadowed(percent=0))
    _, copy = await _primary_and_shadow(h)
    for _ in range(5):
        assert (await h.predict())[0] == 200
    assert copy.seen == []


@pytest.mark.parametrize(
    ("primary", "shadow", "verdict"),
    [
        pytest.param(
            Outcome(200, 0.1, b'{"predictions": [1, 2.0]}', "application/json"),
            Outcome(200, 0.2, b'{"model": "x", "predictions": [1.0, 2]}', "application/json"),
            (True, "equal"),
            id="v1-equal-as-json",
        ),
        pytest.param(
            Outcome(200, 0.1, b'{"outputs": [{"data": [1]}], "id": "a"}', ""),
            Outcome(200, 0.1, b'{"outputs": [{"data": [2]}], "id": "b"}', ""),
            (True, "different"),
            id="v2-outputs-differ",
        ),
        pytest.param(
            Outcome(200, 0.1, b"ok", "text/plain"),
            Outcome(500, 0.1, b"boom", "text/plain"),
            (False, "not_compared"),
            id="not-json",
        ),
        pytest.param(
            Outcome(200, 0.1, None, "application/json"),
            Outcome(200, 0.1, b'{"predictions": []}', "application/json"),
            (True, "not_compared"),
            id="primary-over-the-limit",
        ),
    ],
)
def test_compare(primary: Outcome, shadow: Outcome, verdict: tuple[bool, str]) -> None:
    got = compare(primary, shadow)
    assert (got.status_match, got.body) == verdict
    assert got.agrees == (verdict[0] and verdict[1] != "different")


def test_shadow_host_and_content_type() -> None:
    assert shadow_host("iris.default.example.com") == "iris.default.example.com-shadow"
    assert shadow_host("iris.default:8080") == "iris.default-shadow:8080"
    assert shadow_host("[::1]:80") == "[::1]-shadow:80"
    assert content_type(b"X-A: 1\r\ncontent-type: application/json\r\n") == "application/json"


def test_the_copy_bounds_come_from_flags_or_the_environment() -> None:
    args = parse_args(["--shadow-max-in-flight", "7"])
    got = settings_from_args(args, {"ACTIVATOR_SHADOW_MAX_BODY_BYTES": "2048"})
    assert got.shadow == ShadowSettings(max_in_flight=7, max_body_bytes=2048)


async def test_a_route_change_keeps_the_copies_in_flight_counted(make: Make) -> None:
    h = await make(shadowed(), ShadowSettings(max_in_flight=2))
    await _primary_and_shadow(h, sleep_s=0.3)
    for _ in range(2):
        assert (await h.predict())[0] == 200
    assert h.sample("activator_shadow_in_flight") == 2
    h.act.router._update({("default", "iris"): shadowed()})  # the same routes, new objects
    await poll(lambda: h.sample("activator_shadow_requests_total", outcome="compared") == 2)
    assert h.sample("activator_shadow_in_flight") == 0
    for _ in range(2):  # both slots are free again
        assert (await h.predict())[0] == 200
    assert h.sample("activator_shadow_requests_total", outcome="dropped") == 0
