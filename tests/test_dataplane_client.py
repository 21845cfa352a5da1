"""``dataplane.client.fetch`` and ``Exchange.read_body`` against real servers on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dataplane.api import Exchange, UpstreamConnectError
from dataplane.client import UpstreamFailedError, fetch
from dataplane.server import serve
from dataplane.upstream import UpstreamPool
from tests.dataplane_fixtures import parse_echo, raw_exchange, run_app, upstream_app


async def test_fetch_collects_a_whole_response_and_keeps_the_connection() -> None:
    async with run_app(upstream_app()) as (_, port):
        pool = UpstreamPool()
        hostport = f"127.0.0.1:{port}"
        first = await fetch(pool, hostport, "POST", "/echo?a=1", [("X-Mine", "1")], b"abc")
        assert first.status == 200
        assert first.header("content-type") == "application/json; charset=utf-8"
        echo = parse_echo(first.body)
        assert echo["method"] == "POST"
        assert echo["path"] == "/echo?a=1"
        assert echo["body_len"] == 3
        assert ["X-Mine", "1"] in echo["headers"]  # type: ignore[operator]
        assert ["Host", hostport] in echo["headers"]  # type: ignore[operator]
        assert pool.idle_count(hostport) == 1
        second = await fetch(pool, hostport, "GET", "/echo", host="model.example")
        assert parse_echo(second.body)["peer"] == echo["peer"]  # the same connection
        assert ["Host", "model.example"] in parse_echo(second.body)["headers"]  # type: ignore[operator]
        pool.close()


async def test_fetch_retries_a_stale_pooled_connection_once() -> None:
    async with run_app(upstream_app()) as (_, port):
        pool = UpstreamPool()
        hostport = f"127.0.0.1:{port}"
        stale = await pool.connect(hostport)
        stale.reused = True
        pool.release(stale, asyncio.get_running_loop().time())
        assert stale.transport is not None
        stale.transport.close()  # closes as the request is written: nothing comes back
        response = await fetch(pool, hostport, "GET", "/status/201")
        assert response.status == 201
        pool.close()


async def test_fetch_names_each_failure() -> None:
    async with run_app(upstream_app()) as (_, port):
        pool = UpstreamPool()
        hostport = f"127.0.0.1:{port}"
        with pytest.raises(UpstreamFailedError, match="closed the connection early"):
            await fetch(pool, hostport, "GET", "/reset?when=mid")
        with pytest.raises(UpstreamFailedError, match="over 1000 bytes"):
            await fetch(pool, hostport, "GET", "/big?size=5000", max_body=1000)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await fetch(pool, hostport, "GET", "/sleep?s=5")
        assert pool.idle_count(hostport) == 0  # none of them went back to the pool
        pool.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(UpstreamConnectError, match=f"127.0.0.1:{free}"):
        await fetch(UpstreamPool(), f"127.0.0.1:{free}", "GET", "/")


def _post(body: bytes, *, chunked: bool = False, expect: bool = False) -> bytes:
    head = b"POST /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if expect:
        head += b"Expect: 100-continue\r\n"
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7000]), body[i : i + 7000])
        for i in range(0, len(body), 7000)
    )
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True])
async def test_read_body_then_forward_sends_the_whole_body(chunked: bool) -> None:
    """The handler reads the body (whole, or None over its limit) and forwards the request as
    it came: the upstream counts every byte either way."""
    seen: list[int | None] = []
    async with run_app(upstream_app()) as (_, port):

        async def handler(ex: Exchange) -> None:
            body = await ex.read_body(20_000)
            seen.append(None if body is None else len(body))
            await ex.forward(f"127.0.0.1:{port}")

        server = await serve(handler, "127.0.0.1", 0)
        try:
            for size in (0, 15_000, 300_000):
                out = await raw_exchange(server.port, _post(b"b" * size, chunked=chunked))
                assert out.startswith(b"HTTP/1.1 200"), out[:100]
                assert out.endswith(b"\r\n\r\n%d" % size), out[-40:]
        finally:
            server.close()
            await server.wait_closed(1)
    assert seen == [0, 15_000, None]


async def test_read_body_sends_100_continue_and_answers_from_the_body() -> None:
    async def handler(ex: Exchange) -> None:
        body = await ex.read_body(1000)
        assert body is not None
        await ex.respond(200, body.upper())

    server = await serve(handler, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert rest.startswith(b"HTTP/1.1 200 OK")
        assert rest.endswith(b"\r\n\r\nHELLO")
    finally:
        server.close()
        await server.wait_closed(1)
