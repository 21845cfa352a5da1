"""``Route(tee=...)``: a copy of a forwarded request's bytes and its response's, taken as they
pass (dataplane.tee), against real servers on loopback."""

from __future__ import annotations

import asyncio

import pytest

import dataplane
from dataplane.api import Exchange, ForwardResult, Timeouts
from dataplane.route import Route
from dataplane.server import serve
from dataplane.upstream import UpstreamPool
from tests.dataplane_fixtures import GATES, poll_until, raw_exchange, run_app, upstream_app


class Recorder:
    """A :class:`dataplane.api.Tee` that keeps everything it is given."""

    def __init__(self) -> None:
        self.request_done = False
        self.request = bytearray()
        self.head: tuple[int, bytes] | None = None
        self.response = bytearray()
        self.result: ForwardResult | None = None
        self.ended = asyncio.Event()

    def request_body(self, chunk: bytes) -> None:
        assert not self.request_done
        self.request += chunk

    def request_end(self) -> None:
        self.request_done = True

    def response_head(self, status: int, lines: bytes) -> None:
        self.head = (status, lines)

    def response_body(self, chunk: bytes) -> None:
        self.response += chunk

    def end(self, result: ForwardResult) -> None:
        assert self.result is None
        self.result = result
        self.ended.set()


class Factory:
    """Tees every request whose path does not start with ``/skip``."""

    def __init__(self) -> None:
        self.tees: list[Recorder] = []
        self.asked = 0

    def start(self, ex: Exchange) -> Recorder | None:
        self.asked += 1
        if ex.target.startswith("/skip"):
            return None
        tee = Recorder()
        self.tees.append(tee)
        return tee


async def _tee_server(upstream: str, factory: Factory, timeouts: Timeouts | None = None):  # type: ignore[no-untyped-def]
    route = Route(tee=factory, timeouts=timeouts or Timeouts())

    def handler(ex: Exchange) -> None:
        ex.forward_now(upstream, lambda _r: None, route)

    return await serve(handler, "127.0.0.1", 0)


def _post(path: str, body: bytes, *, chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    parts = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 5000]), body[i : i + 5000])
        for i in range(0, len(body), 5000)
    )
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + parts + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("size", "chunked"),
    [
        pytest.param(0, False, id="no-body"),
        pytest.param(300, False, id="small-whole"),
        pytest.param(400_000, False, id="large-streamed"),
        pytest.param(120_000, True, id="chunked-streamed"),
    ],
)
async def test_the_tee_sees_the_request_and_response_bytes(size: int, chunked: bool) -> None:
    factory = Factory()
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    async with run_app(upstream_app()) as (_, port):
        server = await _tee_server(f"127.0.0.1:{port}", factory)
        try:
            out = await raw_exchange(server.port, _post("/count", body, chunked=chunked))
            assert out.startswith(b"HTTP/1.1 200"), out[:80]
            assert out.endswith(b"\r\n\r\n%d" % size)
            (tee,) = factory.tees
            await asyncio.wait_for(tee.ended.wait(), 5)
        finally:
            server.close()
            await server.wait_closed(1)
    assert tee.request_done
    assert bytes(tee.request) == body
    assert tee.head is not None
    assert tee.head[0] == 200
    assert b"Content-Type: text/plain" in tee.head[1]
    assert bytes(tee.response) == b"%d" % size
    assert tee.result == ForwardResult(200, True)


async def test_a_streamed_response_passes_at_once_and_is_teed_when_it_ends() -> None:
    factory = Factory()
    async with run_app(upstream_app()) as (app, port):
        server = await _tee_server(f"127.0.0.1:{port}", factory)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /stream?gate=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            first = b""
            while b"first\n" not in first:  # the first part reaches the client before the end
                first += await asyncio.wait_for(reader.read(65536), 5)
            (tee,) = factory.tees
            assert tee.result is None
            assert bytes(tee.response) == b"first\n"
            await poll_until(lambda: "t" in app[GATES])
            app[GATES]["t"].set()
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert rest.endswith(b"0\r\n\r\n") or b"second" in rest
            await asyncio.wait_for(tee.ended.wait(), 5)
        finally:
            server.close()
            await server.wait_closed(1)
    assert bytes(tee.response) == b"first\nsecond\n"  # unframed
    assert tee.result == ForwardResult(200, True)


async def test_error_responses_and_the_cores_own_answers_end_the_tee() -> None:
    factory = Factory()
    async with run_app(upstream_app()) as (_, port):
        server = await _tee_server(
            f"127.0.0.1:{port}", factory, Timeouts(response_start_s=0.2, body_prefix="t ")
        )
        try:
            out = await raw_exchange(server.port, _post("/status/500", b"x"))
            assert out.startswith(b"HTTP/1.1 500")
            out = await raw_exchange(
                server.port, b"GET /sleep?s=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert out.startswith(b"HTTP/1.1 504")
            for tee in factory.tees:
                await asyncio.wait_for(tee.ended.wait(), 5)
        finally:
            server.close()
            await server.wait_closed(1)
    failed, timed_out = factory.tees
    assert failed.head is not None
    assert failed.head[0] == 500
    assert failed.result == ForwardResult(500, True)
    assert timed_out.head is None  # the core answered: no upstream head
    assert timed_out.result == ForwardResult(504, False, "timeout:response-start")


async def test_a_declined_request_is_forwarded_plainly_and_asked_once() -> None:
    factory = Factory()
    async with run_app(upstream_app()) as (_, port):
        server = await _tee_server(f"127.0.0.1:{port}", factory)
        try:
            out = await raw_exchange(server.port, _post("/skip/../count", b"abc"))
            assert out.startswith(b"HTTP/1.1 "), out[:60]
        finally:
            server.close()
            await server.wait_closed(1)
    assert factory.asked == 1
    assert factory.tees == []


async def test_a_retry_on_a_fresh_connection_does_not_tee_the_body_twice() -> None:
    """A stale pooled connection: the body goes out again on a new one, the tee sees it once."""
    factory = Factory()
    async with run_app(upstream_app()) as (_, port):
        hostport = f"127.0.0.1:{port}"
        route = Route(tee=factory)
        pool_box: list[UpstreamPool] = []

        async def handler(ex: Exchange) -> None:
            pool = pool_box[0]
            stale = await pool.connect(hostport)
            stale.reused = True
            pool.release(stale, asyncio.get_running_loop().time())
            assert stale.transport is not None
            stale.transport.close()
            await ex.forward(hostport, route=route)

        server = await serve(handler, "127.0.0.1", 0)
        pool_box.append(server.pool)
        try:
            out = await raw_exchange(server.port, _post("/count", b"hello"))
            assert out.endswith(b"\r\n\r\n5"), out[-60:]
            (tee,) = factory.tees
            await asyncio.wait_for(tee.ended.wait(), 5)
        finally:
            server.close()
            await server.wait_closed(1)
    assert bytes(tee.request) == b"hello"


def test_tee_forward_is_compiled_with_the_core() -> None:
    assert "dataplane.tee" in dataplane.COMPILED_MODULES
