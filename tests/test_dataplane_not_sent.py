"""A 502 that says the request went no further (``dataplane.api.NOT_SENT_HEADER``, what a
queue-proxy answers when its model server refuses the connection): a forward that holds what
it sent of the request body (all of it, or a streamed body's first 64 KiB) hands the request
back as a refused connection, so the handler may send it to another upstream, body and all.
Any other 502, or one for a request whose streamed body outgrew what is kept, reaches the
client as it came."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest

from dataplane.api import NOT_SENT, NOT_SENT_HEADER, Exchange, ForwardResult, UpstreamConnectError
from dataplane.route import Route
from dataplane.server import Server, serve
from tests.dataplane_fixtures import parse_echo, poll_until, run_app, upstream_app

ROUTE = Route()
_MARKED = f"{NOT_SENT[0][0]}: {NOT_SENT[0][1]}\r\n".encode()


@dataclass
class Refusing:
    """A raw upstream that answers every request 502, marked or not; ``split`` sends the head
    and the body in two writes (the core's parser path, not its whole-response one);
    ``read_body`` false answers on the head alone, before the body comes."""

    marked: bool = True
    split: bool = False
    read_body: bool = True
    seen: int = 0
    server: asyncio.Server | None = None
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.seen += 1
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if self.read_body and m:
                await reader.readexactly(int(m.group(1)))
            body = b"upstream connect error: dial 127.0.0.1:1: Connection refused\n"
            head_out = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n" % len(body)
            head_out += (_MARKED if self.marked else b"") + b"\r\n"
            if self.split:
                writer.write(head_out)
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(body)
            else:
                writer.write(head_out + body)
            await writer.drain()
            await reader.read()  # until the proxy closes its side
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        finally:
            self.server.close()


@dataclass
class Front:
    """A core whose handler forwards to ``first``; a refused connection goes to ``then``."""

    first: str
    then: str
    now: bool
    refused: list[str] = field(default_factory=list)
    results: list[ForwardResult] = field(default_factory=list)
    server: Server | None = None

    async def _elsewhere(self, ex: Exchange, exc: UpstreamConnectError) -> None:
        self.refused.append(str(exc))
        self.results.append(await ex.forward(self.then, route=ROUTE))

    def handler(self, ex: Exchange) -> Awaitable[None] | None:
        if self.now:
            ex.forward_now(
                self.first, self.results.append, ROUTE, on_refused=partial(self._elsewhere, ex)
            )
            return None
        return self._awaiting(ex)

    async def _awaiting(self, ex: Exchange) -> None:
        try:
            self.results.append(await ex.forward(self.first, route=ROUTE))
        except UpstreamConnectError as exc:
            await self._elsewhere(ex, exc)


async def _exchange(
    port: int, head: bytes, body: bytes, pause_s: float = 0.0
) -> tuple[bytes, bytes]:
    """One request on a raw connection (the body with the head, or ``pause_s`` after it):
    the response head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if pause_s:
            writer.write(head)
            await asyncio.sleep(pause_s)
            writer.write(body)
        else:
            writer.write(head + body)
        head_in = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head_in)
        assert m is not None, head_in
        return head_in, await asyncio.wait_for(reader.readexactly(int(m.group(1))), 5)
    finally:
        writer.close()


def _post(body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)


@asynccontextmanager
async def _front(upstream: Refusing, now: bool) -> AsyncIterator[Front]:
    async with upstream.running() as first, run_app(upstream_app()) as (_, other_port):
        front = Front(first, f"127.0.0.1:{other_port}", now)
        front.server = await serve(front.handler, "127.0.0.1", 0)
        try:
            yield front
        finally:
            await poll_until(lambda: front.server is not None and front.server.in_flight == 0)
            front.server.close()
            await front.server.wait_closed(2)


@pytest.mark.parametrize("now", [True, False], ids=["forward_now", "forward"])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
async def test_a_marked_502_goes_back_to_the_handler_with_the_body(now: bool, split: bool) -> None:
    upstream = Refusing(split=split)
    async with _front(upstream, now) as front:
        assert front.server is not None
        body = b'{"instances": [[1, 2, 3, 4]]}'
        head, out = await _exchange(front.server.port, _post(body), body)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert parse_echo(out)["body_len"] == len(body)  # the body went along, whole
        assert upstream.seen == 1
        assert front.refused == [f"{front.first} answered that its upstream refused"]
        assert front.results == [ForwardResult(200, True)]


@pytest.mark.parametrize("now", [True, False], ids=["forward_now", "forward"])
async def test_an_unmarked_502_reaches_the_client(now: bool) -> None:
    upstream = Refusing(marked=False)
    async with _front(upstream, now) as front:
        assert front.server is not None
        head, out = await _exchange(front.server.port, _post(b"abc"), b"abc")
        assert head.startswith(b"HTTP/1.1 502"), head
        assert out.startswith(b"upstream connect error")
        assert front.refused == []
        assert front.results == [ForwardResult(502, True)]


@pytest.mark.parametrize("now", [True, False], ids=["forward_now", "forward"])
@pytest.mark.parametrize("read_body", [True, False], ids=["answered-after-body", "mid-body"])
async def test_a_small_streamed_body_is_kept_and_goes_again(now: bool, read_body: bool) -> None:
    """The body comes after the head (as Python's ``requests`` sends it): what went upstream
    is kept (up to 64 KiB), so the marked 502 goes back to the handler whether it came after
    the whole body or in the middle of it (the rest is held by the exchange meanwhile)."""
    upstream = Refusing(read_body=read_body)
    async with _front(upstream, now) as front:
        assert front.server is not None
        body = b'{"instances": [[1, 2, 3, 4]]}' * 100
        head, out = await _exchange(front.server.port, _post(body), body, pause_s=0.1)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert parse_echo(out)["body_len"] == len(body)
        assert front.refused == [f"{front.first} answered that its upstream refused"]


async def test_a_marked_502_for_a_large_streamed_body_reaches_the_client() -> None:
    """Over 64 KiB streamed: not kept, so nothing can be sent again; the marked 502 is the
    answer (marker and all: the client may retry)."""
    upstream = Refusing(read_body=True)
    async with _front(upstream, now=True) as front:
        assert front.server is not None
        body = b"x" * (80 * 1024)
        head, out = await _exchange(front.server.port, _post(body), body, pause_s=0.1)
        assert head.startswith(b"HTTP/1.1 502"), head
        assert NOT_SENT_HEADER.lower().encode() in head.lower()
        assert out.startswith(b"upstream connect error")
        assert front.refused == []
