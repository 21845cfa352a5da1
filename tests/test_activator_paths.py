"""The activator's two paths on loopback, with real pods: the task-free hot path (slots free:
``forward_now``, on an idle pooled connection or one the core dials) and the coroutine (waiting
in the throttler). Both keep CC per pod, and every way a request ends gives its slots back once."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from activator.app import ActivatorSettings, build_activator
from activator.sinks import InProcessStatSink
from cluster.memory import MemoryEndpoints, MemoryRoutes
from cluster.spec import Revision, RevisionKey
from dataplane.api import NOT_SENT
from metrics.stat import WireStat
from tests.test_activator_component import Harness, Pod, poll, service

KEY = RevisionKey("default", "iris-v1")
HOST = "iris.default.example.com"


@dataclass
class EndingPod(Pod):
    """A pod whose answer the request picks with ``X-End``: ``ok`` (200), ``hold`` (200 once
    the gate named by ``X-Gate`` opens), ``reset`` (connection dropped before any response
    byte) or ``reset-mid`` (dropped after the head and a part of the body)."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        end = request.headers.get("X-End", "ok")
        if request.headers.get("K-Network-Probe") == "queue" or end == "ok":
            return await super().handle(request)
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.seen.append(dict(request.headers))
        try:
            transport = request.transport
            assert transport is not None
            if end == "hold":
                await self.gate(request.headers.get("X-Gate", "")).wait()
                return web.Response(text=f"{self.name}:held")
            if end == "reset":
                transport.abort()
                raise asyncio.CancelledError  # nothing more to write: end the handler
            assert end == "reset-mid"
            resp = web.StreamResponse()
            resp.content_length = 100
            await resp.prepare(request)
            await resp.write(b"partial")
            await asyncio.sleep(0.01)  # let the head and the part go out first
            transport.abort()
            raise asyncio.CancelledError
        finally:
            self.active -= 1

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Harness] = []

    async def build(*services: object, **settings: float) -> Harness:
        routes = MemoryRoutes(services)  # type: ignore[arg-type]
        endpoints = MemoryEndpoints()
        stats: list[WireStat] = []
        base = ActivatorSettings(pod_name="activator-0", seed=5, probe_period_s=0.02)
        act = build_activator(
            routes,
            endpoints,
            InProcessStatSink(stats.extend),
            settings=dataclasses.replace(base, **settings),  # type: ignore[arg-type]
        )
        await act.start("127.0.0.1", 0)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        h = Harness(routes, endpoints, stats, act, session, [])
        made.append(h)
        return h

    yield build
    for h in made:
        for p in h.pods:
            if isinstance(p, EndingPod):
                p.open_all()
        await h.session.close()
        await h.act.close()
        for p in h.pods:
            await p.stop()


async def ending_pod(h: Harness, name: str) -> EndingPod:
    p = EndingPod(name)
    await p.start()
    h.pods.append(p)
    return p


async def send(
    h: Harness, end: str = "ok", gate: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One request on its own client connection (raw, so a test can drop the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.act.port)
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-End: {end}\r\nX-Gate: {gate}\r\n\r\n".encode()
    )
    return reader, writer


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, str]:
    """Status and body; status -1 when the response was cut short."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        try:
            body = await reader.readexactly(int(m.group(1)) if m else 0)
        except asyncio.IncompleteReadError:
            return -1, ""
        return status, body.decode()
    finally:
        writer.close()


async def call(h: Harness, end: str = "ok", gate: str = "") -> tuple[int, str]:
    return await answer(*await send(h, end, gate))


def revision(h: Harness) -> Revision:
    rev = h.routes.current()[("default", "iris")].revision("iris-v1")
    assert rev is not None
    return rev


def settled(h: Harness) -> bool:
    """No slot, count or stat left held for the revision."""
    rt = h.act.throttler.find(KEY)
    assert rt is not None
    rm = h.act.metrics.revision(revision(h))
    return (
        rt.in_flight == 0
        and all(t.in_flight == 0 for t in rt.assigned())
        and rm.in_flight == 0
        and rm.queued == 0
        and h.act.reporter.concurrency(KEY) == 0
    )


def answered(h: Harness) -> int:
    """Requests of the revision recorded as ended (each must be recorded once)."""
    return sum(h.act.metrics.revision(revision(h)).by_class)


async def test_both_paths_keep_cc1_per_pod(make: Make) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    a, b = await h.pod("a", delay_s=0.005), await h.pod("b", delay_s=0.005)
    h.set_pods("iris-v1", a, b)
    await h.ready("iris-v1", 2)
    # two at once: each pod gets one, and the activator a pooled connection to each
    assert [r[0] for r in await asyncio.gather(h.get(), h.get())] == [200, 200]
    paths = h.act.handler.paths
    hot_before, waited_before = paths.hot, paths.waited
    results = await asyncio.gather(*(h.get() for _ in range(40)))
    assert [r[0] for r in results] == [200] * 40
    assert paths.hot > hot_before  # some found a slot and a connection at once
    assert paths.waited > waited_before  # others waited for a slot
    assert (a.peak, b.peak) == (1, 1)
    assert len(a.seen) + len(b.seen) == 42
    await poll(lambda: settled(h))
    assert answered(h) == 42


# (path, ending, expected answer): hot = a warm pooled connection and a free slot; dialed = the
# first request to the pod (the hot path, the core dials); waited = a request queued behind one
# that holds the only slot.
ENDINGS = [
    ("ok", (200, "p:")),
    ("reset", (502, "")),
    ("reset-mid", (-1, "")),
    ("client-gone", None),
    ("timeout", (504, "activator request timeout")),
]


@pytest.mark.parametrize(
    ("path", "end", "want"),
    [
        pytest.param(path, end, want, id=f"{path}-{end}")
        for path in ("hot", "dialed", "waited")
        for end, want in ENDINGS
    ],
)
async def test_every_ending_gives_the_slots_back(
    make: Make, path: str, end: str, want: tuple[int, str] | None
) -> None:
    h = await make(service("iris", {"iris-v1": 100}, cc=1, timeout_s=0.5))
    pod = await ending_pod(h, "p")
    h.set_pods("iris-v1", pod)
    await h.ready("iris-v1", 1)
    paths = h.act.handler.paths
    sent = 0
    if path in ("hot", "waited"):  # a pooled connection to the pod
        assert (await call(h))[0] == 200
        sent += 1
        assert paths.hot == 1
    first = None
    if path == "waited":  # the only slot is held by a request waiting on gate "first"
        first = await send(h, "hold", "first")
        sent += 1
        await poll(lambda: pod.active == 1)
    before = (paths.hot, paths.waited)

    mode = {"client-gone": "hold", "timeout": "hold"}.get(end, end)
    reader, writer = await send(h, mode, "second")
    sent += 1
    if first is not None:
        await poll(lambda: h.act.handler.paths.waited == before[1] + 1)
        pod.gate("first").set()
        assert await answer(*first) == (200, "p:held")
    if end == "client-gone":
        await poll(lambda: pod.active == 1)
        writer.close()
    else:
        status, body = await answer(reader, writer)
        assert want is not None
        assert status == want[0], body
        assert body.startswith(want[1])
    after = (paths.hot, paths.waited)
    took = {"hot": (1, 0), "dialed": (1, 0), "waited": (0, 1)}[path]
    assert tuple(x - y for x, y in zip(after, before, strict=True)) == took
    await poll(lambda: settled(h))
    assert answered(h) == sent  # each request recorded once
    pod.open_all()
    # the slot is free again: the next request is served (with a leaked slot it would wait
    # and time out with 503)
    status, body = await call(h)
    assert (status, body.split(":")[0]) == (200, "p")
    await poll(lambda: settled(h))


class DyingPod(Pod):
    """A raw pod that answers ``queue`` on keep-alive connections until it dies: then it stops
    listening and closes a kept connection when the next request arrives on it, without an
    answer. Its pooled connection then looks alive to the activator until it is used (the
    race of a pod that exits as a request is sent on its keep-alive connection)."""

    server: asyncio.Server | None = None
    dead: bool = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(m.group(1)) if m else 0)
                if self.dead:
                    break
                if b"k-network-probe" not in head.lower():
                    self.seen.append({})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.dead = True
        if self.server is not None:
            self.server.close()  # stops listening; kept connections stay open


async def test_hot_path_retries_on_another_pod_when_a_dead_pods_reconnect_is_refused(
    make: Make,
) -> None:
    """The hot path's pooled connection is stale and the pod no longer listens: the core hands
    the request back (nothing answered) and the activator sends it, body and all, to another
    pod, as its slow path does with a refused connection."""
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    dying = DyingPod("a")
    await dying.start()
    try:
        h.set_pods("iris-v1", dying)
        await h.ready("iris-v1", 1)
        assert (await h.get())[0] == 200  # dialed: leaves a pooled connection to the pod
        assert len(dying.seen) == 1
        other = await h.pod("b")
        while other.address < dying.address:  # CC=1 picks the first pod by address
            other = await h.pod("b")
        h.set_pods("iris-v1", dying, other)
        await h.ready("iris-v1", 2)
        await dying.stop()
        paths = h.act.handler.paths
        before = (paths.hot, paths.refused)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.act.port)
        # head and body in one write: the whole body is at hand when the request goes out
        writer.write(f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc".encode())
        status, body = await answer(reader, writer)
        assert (status, body) == (200, "b::3")  # the body went along
        assert (paths.hot - before[0], paths.refused - before[1]) == (1, 1)
        assert len(dying.seen) == 1
        await poll(lambda: settled(h))
        assert answered(h) == 2
    finally:
        await dying.stop()


@dataclass
class NotSentPod(Pod):
    """A queue-proxy whose model server has just died: ready to the prober still, it answers
    each request 502 marked as not sent (dataplane.api.NOT_SENT), as a real one does."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("K-Network-Probe") == "queue":
            return await super().handle(request)
        await request.read()
        self.seen.append(dict(request.headers))
        return web.Response(status=502, text="upstream connect error: dial", headers=NOT_SENT)


async def test_a_pod_whose_model_server_refused_is_retried_on_another_pod(make: Make) -> None:
    """The window between a model server's crash and its pod leaving the endpoints: the pod's
    marked 502 goes back to the activator, which sends the request, body and all, to another
    pod; with no other pod the client gets the activator's 502 naming the revision."""
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    dead = NotSentPod("dead")
    await dead.start()
    h.pods.append(dead)
    other = await h.pod("b")
    while other.address < dead.address:  # CC=1 picks the first pod by address
        other = await h.pod("b")
    h.set_pods("iris-v1", dead, other)
    await h.ready("iris-v1", 2)
    paths = h.act.handler.paths
    before = paths.refused
    post = f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.act.port)
    writer.write(post)  # head and body in one write: the whole body is at hand
    assert await answer(reader, writer) == (200, "b::3")
    assert (len(dead.seen), paths.refused - before) == (1, 1)
    h.set_pods("iris-v1", dead)
    await h.ready("iris-v1", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", h.act.port)
    writer.write(post)
    status, body = await answer(reader, writer)
    assert status == 502
    assert body.startswith("error connecting to revision default/iris-v1 (pod 127.0.0.1:")
    await poll(lambda: settled(h))
    assert answered(h) == 2


async def test_the_retry_waits_for_a_busy_pod_when_cc_holds_the_others(make: Make) -> None:
    """CC 1, the other pod busy when a pod's model server refuses: the request keeps its
    revision slot and waits for the other pod (as it would for any pod), rather than 502."""
    h = await make(service("iris", {"iris-v1": 100}, cc=1))
    busy = EndingPod("b")
    await busy.start()
    h.pods.append(busy)
    dead = NotSentPod("dead")
    await dead.start()
    h.pods.append(dead)
    while dead.address < busy.address:  # CC=1 picks the first free pod by address
        dead = NotSentPod("dead")
        await dead.start()
        h.pods.append(dead)
    h.set_pods("iris-v1", busy, dead)
    await h.ready("iris-v1", 2)
    held = await send(h, "hold", "g")  # on b, the first pod, until the gate opens
    await poll(lambda: busy.active == 1)
    post = f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.act.port)
    writer.write(post)  # to the dead pod (b is full): refused, then waits for b
    await poll(lambda: len(dead.seen) == 1)
    await asyncio.sleep(0.1)
    assert busy.active == 1  # still held: the retry waits for it, no 502
    busy.gate("g").set()
    assert await answer(*held) == (200, "b:held")
    assert await answer(reader, writer) == (200, "b::3")
    await poll(lambda: settled(h))
