"""Shared helpers for the forwarding-core tests: a real aiohttp upstream and raw HTTP sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

GATES = web.AppKey("gates", dict[str, asyncio.Event])


def upstream_app() -> web.Application:
    """An upstream model server with the behaviours the tests need."""
    app = web.Application()
    gates: dict[str, asyncio.Event] = {}
    app[GATES] = gates

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_len": len(body),
                "peer": request.transport.get_extra_info("peername")[1] if request.transport else 0,
            }
        )

    async def count(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        return web.Response(text=str(n))

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first\n")
        gate = gates.setdefault(request.query.get("gate", "g"), asyncio.Event())
        await gate.wait()
        await resp.write(b"second\n")
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            part = block[: min(65536, size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def sleep(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="slept")

    async def drip(request: web.Request) -> web.StreamResponse:
        """Writes a byte, then another after ``s`` seconds (idle timeout)."""
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"a")
        await asyncio.sleep(float(request.query.get("s", "5")))
        await resp.write(b"b")
        return resp

    async def reset(request: web.Request) -> web.StreamResponse:
        if request.query.get("when") == "mid":
            resp = web.StreamResponse()
            resp.content_length = 100
            await resp.prepare(request)
            await resp.write(b"partial")
            await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, body=None if code in (204, 304) else b"s")

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=b"\x1f\x8b-not-really", headers={"Content-Encoding": "gzip"})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        """A websocket that echoes text with a prefix; ``bye`` makes the server close."""
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is aiohttp.WSMsgType.TEXT:
                if msg.data == "bye":
                    await sock.close()
                    break
                await sock.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/count", count)
    app.router.add_get("/stream", stream)
    app.router.add_get("/big", big)
    app.router.add_get("/sleep", sleep)
    app.router.add_get("/drip", drip)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/gzip", gzipped)
    return app


@asynccontextmanager
async def run_app(
    app: web.Application, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[web.Application, int]]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    assert isinstance(site._server, asyncio.Server)
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield app, int(port)
    finally:
        await runner.cleanup()


async def raw_exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes and read until the server closes (or 2 s of silence)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 2.0)
            if not chunk:
                break
            out += chunk
            if not until_close and b"\r\n\r\n" in out:
                break
    except TimeoutError:
        pass
    writer.close()
    return out


def parse_echo(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


async def poll_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition every 10 ms until it holds; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling with a deadline (STYLE.md 13)
            await asyncio.sleep(0.01)


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """GET and read the whole body."""
    async with session.get(url) as resp:
        return resp.status, await resp.read()
