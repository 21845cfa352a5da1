"""Payload logging in the queue-proxy (queue_proxy.payload_log) against a real sink on loopback that
decodes the CloudEvents (binary HTTP mode, KServe's attributes), in front of a real upstream."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from cluster.payload_logging import parse_logger
from queue_proxy.payload_log import REQUEST_TYPE, RESPONSE_TYPE, PayloadQueueSettings
from tests.dataplane_fixtures import GATES, poll_until
from tests.test_queue_proxy import Running, running, sample, scrape


@dataclass
class CloudEvent:
    """One event as a consumer reads it: ``ce-*`` attributes, content type, data."""

    attributes: dict[str, str]
    content_type: str
    data: bytes

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def id(self) -> str:
        return self.attributes["id"]


@dataclass
class Sink:
    """A CloudEvents sink: decodes each binary-mode event; ``status`` answers it, ``sleep_s``
    delays the answer; ``fail_first`` answers 500 to that many events first."""

    status: int = 202
    sleep_s: float = 0.0
    fail_first: int = 0
    events: list[CloudEvent] = field(default_factory=list)
    attempts: int = 0
    runner: web.AppRunner | None = None
    url: str = ""
    tls: ssl.SSLContext | None = None  # an https:// sink

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        attrs = {
            k[3:].lower(): v for k, v in request.headers.items() if k.lower().startswith("ce-")
        }
        assert attrs["specversion"] == "1.0"
        self.events.append(
            CloudEvent(attrs, request.headers.get("Content-Type", ""), await request.read())
        )
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/events"

    def pairs(self) -> dict[str, dict[str, CloudEvent]]:
        out: dict[str, dict[str, CloudEvent]] = {}
        for e in self.events:
            out.setdefault(e.id, {})[e.type] = e
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FAST = PayloadQueueSettings(backoff_initial_s=0.01, backoff_max_s=0.02, attempt_timeout_s=0.3)


@asynccontextmanager
async def logged(
    url: str, mode: str = "all", queue: PayloadQueueSettings = FAST
) -> AsyncIterator[Running]:
    config = parse_logger({"logger.zeroserve.dev/url": url, "logger.zeroserve.dev/mode": mode})
    async with running(payload_logging=config, service="iris") as r:
        assert r.qp.payload_log is not None
        r.qp.payload_log.settings = queue
        yield r


@asynccontextmanager
async def sink(**kw: object) -> AsyncIterator[Sink]:
    s = Sink(**kw)  # type: ignore[arg-type]
    await s.start()
    try:
        yield s
    finally:
        if s.runner is not None:
            await s.runner.cleanup()


async def _post(r: Running, path: str, body: bytes, **headers: str) -> tuple[int, bytes, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with r.session.post(r.url + path, data=body, headers=headers) as resp:
        return resp.status, await resp.read(), loop.time() - start


async def test_a_request_and_its_response_are_two_events_with_one_id() -> None:
    async with sink() as s, logged(s.url) as r:
        ce_id = str(uuid.uuid4())
        status, answer, _ = await _post(
            r,
            "/echo",
            b'{"instances": [[1, 2]]}',
            **{"Ce-Id": ce_id, "Content-Type": "application/json"},
        )
        assert status == 200
        await _post(r, "/echo", b"no id")
        await poll_until(lambda: len(s.events) == 4)
    pairs = s.pairs()
    request, response = pairs[ce_id][REQUEST_TYPE], pairs[ce_id][RESPONSE_TYPE]
    assert request.data == b'{"instances": [[1, 2]]}'
    assert request.content_type == "application/json"
    assert response.data == answer
    assert response.content_type.startswith("application/json")
    for event in (request, response):  # KServe's attributes and extensions
        assert event.attributes["source"] == "pod-1"
        assert event.attributes["inferenceservicename"] == "iris"
        assert event.attributes["namespace"] == "default"
        assert event.attributes["component"] == "predictor"
        assert event.attributes["endpoint"] == "iris-00001"
        assert event.attributes["time"].endswith("Z")
    assert response.attributes["statuscode"] == "200"
    [other] = [i for i in pairs if i != ce_id]
    uuid.UUID(other)  # a new id, shared by the second request and its response
    assert set(pairs[other]) == {REQUEST_TYPE, RESPONSE_TYPE}


async def test_error_responses_are_logged_too() -> None:
    async with sink() as s, logged(s.url) as r:
        status, _, _ = await _post(r, "/status/500", b"x")
        assert status == 500
        await poll_until(lambda: len(s.events) == 2)
    [response] = [e for e in s.events if e.type == RESPONSE_TYPE]
    assert response.attributes["statuscode"] == "500"


async def test_a_streamed_response_passes_unbuffered_and_is_logged_when_it_ends() -> None:
    async with sink() as s, logged(s.url) as r:
        async with r.session.get(r.url + "/stream?gate=p") as resp:
            first = await asyncio.wait_for(resp.content.readuntil(b"\n"), 5)
            assert first == b"first\n"  # before the response ended
            assert [e.type for e in s.events] == [REQUEST_TYPE] or not s.events
            await poll_until(lambda: "p" in r.app[GATES])
            r.app[GATES]["p"].set()
            assert await resp.read() == b"second\n"
        await poll_until(lambda: len(s.events) == 2)
    [response] = [e for e in s.events if e.type == RESPONSE_TYPE]
    assert response.data == b"first\nsecond\n"
    assert "truncated" not in response.attributes


async def test_a_payload_over_the_cap_is_cut_and_marked() -> None:
    cap = dataclasses.replace(FAST, max_body_bytes=1000)
    async with sink() as s, logged(s.url, queue=cap) as r:
        async with r.session.get(r.url + "/big?size=300000") as resp:
            assert len(await resp.read()) == 300000  # the client gets it all
        await poll_until(lambda: len(s.events) == 2)
        text = await scrape(r)
    [response] = [e for e in s.events if e.type == RESPONSE_TYPE]
    assert response.data == b"x" * 1000
    assert response.attributes["truncated"] == "true"
    assert sample(text, "queue_proxy_payload_truncated_total") == 1


@pytest.mark.parametrize(
    ("mode", "types"), [("request", {REQUEST_TYPE}), ("response", {RESPONSE_TYPE})]
)
async def test_mode_picks_the_events(mode: str, types: set[str]) -> None:
    async with sink() as s, logged(s.url, mode) as r:
        for _ in range(3):
            assert (await _post(r, "/echo", b"abc"))[0] == 200
        await poll_until(lambda: len(s.events) == 3)
        await asyncio.sleep(0.1)
    assert {e.type for e in s.events} == types
    assert len(s.events) == 3


async def test_a_failing_sink_is_retried_with_back_off() -> None:
    async with sink(fail_first=2) as s, logged(s.url) as r:
        assert (await _post(r, "/echo", b"abc"))[0] == 200
        await poll_until(lambda: len(s.events) == 2)
        text = await scrape(r)
    assert s.attempts == 4  # two 500s, then both events
    assert sample(text, "queue_proxy_payload_events_total", outcome="delivered") == 2


async def test_a_sink_that_is_down_changes_nothing_for_requests_and_the_queue_is_bounded() -> None:
    bounded = dataclasses.replace(FAST, max_events=4, workers=4)
    async with logged(f"http://127.0.0.1:{_free_port()}/events", queue=bounded) as r:
        latencies = []
        for _ in range(30):
            status, _, latency = await _post(r, "/echo", b"abc")
            assert status == 200
            latencies.append(latency)
        assert max(latencies) < 0.5
        logger = r.qp.payload_log
        assert logger is not None
        assert logger.queued <= 4
        await poll_until(lambda: sample_now(r) > 0, 5)
        text = await scrape(r)
    assert (sample(text, "queue_proxy_payload_events_total", outcome="dropped") or 0) > 0
    assert (sample(text, "queue_proxy_payload_events_total", outcome="gave_up") or 0) > 0


def sample_now(r: Running, outcome: str = "gave_up") -> float:
    labels = {"namespace": "default", "revision": "iris-00001", "pod": "pod-1", "outcome": outcome}
    value = r.qp.metrics.registry.get_sample_value("queue_proxy_payload_events_total", labels)
    return value or 0.0


async def test_a_sink_that_answers_in_10s_adds_no_latency() -> None:
    bounded = dataclasses.replace(FAST, max_events=10, max_bytes=1000, retries=0)
    async with sink(sleep_s=10.0) as s, logged(s.url, queue=bounded) as r:
        latencies = []
        for _ in range(40):
            status, _, latency = await _post(r, "/echo", b"0123456789")
            assert status == 200
            latencies.append(latency)
        assert max(latencies) < 0.5
        logger = r.qp.payload_log
        assert logger is not None
        assert logger.queued <= 10
        assert logger.queued_bytes <= 1000
        await poll_until(lambda: sample_now(r) > 0, 5)  # each attempt timed out (0.3 s)
        text = await scrape(r)
    assert (sample(text, "queue_proxy_payload_events_total", outcome="dropped") or 0) > 0
    assert s.events == []


@pytest.fixture
def tls_sink(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 from a CA of the test's own, and that CA's file."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, ca_file


async def test_an_https_sink_gets_the_events_over_tls(
    tls_sink: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink's certificate is checked against the system's CAs (OpenSSL's defaults, so
    ``SSL_CERT_FILE`` adds one) and the URL's host."""
    server, ca_file = tls_sink
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    async with sink(tls=server) as s, logged(s.url) as r:
        assert s.url.startswith("https://127.0.0.1:")
        assert (await _post(r, "/echo", b"abc"))[0] == 200
        await poll_until(lambda: len(s.events) == 2)
        text = await scrape(r)
    assert {e.type for e in s.events} == {REQUEST_TYPE, RESPONSE_TYPE}
    assert s.events[0].data == b"abc"
    assert sample(text, "queue_proxy_payload_events_total", outcome="delivered") == 2


async def test_an_https_sink_whose_certificate_is_not_trusted_gets_nothing(
    tls_sink: tuple[ssl.SSLContext, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = tls_sink  # (its CA is not among the system's)
    quick = dataclasses.replace(FAST, retries=1)
    async with sink(tls=server) as s, logged(s.url, queue=quick) as r:
        assert (await _post(r, "/echo", b"abc"))[0] == 200
        await poll_until(lambda: sample_now(r) == 2, 5)
    assert s.events == []
    given_up = [rec for rec in caplog.records if rec.getMessage() == "payload events given up"]
    assert given_up
    assert "CERTIFICATE_VERIFY_FAILED" in str(given_up[0].__dict__.get("error", "")).upper()
