"""What stops or delays the event loop in a proxy: closed connections leave no cycles (a
collection stops the loop), the start-up heap is frozen out of later collections, and writes
are not held until the end of the loop's iteration."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

from dataplane.api import Exchange, ForwardResult
from dataplane.heap import freeze_startup_heap
from dataplane.route import Route
from dataplane.server import serve
from tests.dataplane_fixtures import raw_exchange

# the connection objects of the core, and the parsers that used to hold them in a cycle
_WATCHED = {"Connection", "HttpRequestParser", "UpstreamConnection", "HttpResponseParser"}


@contextmanager
def cyclic_garbage() -> Iterator[collections.Counter[str]]:
    """Counts, by type name, the objects of ``_WATCHED`` that only the collector could free
    among those made inside the block (the collector is off inside it)."""
    found: collections.Counter[str] = collections.Counter()
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.update(n for o in gc.garbage if (n := type(o).__name__) in _WATCHED)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def _closing_upstream() -> tuple[asyncio.Server, int]:
    """Answers each request and closes: every upstream connection is lost after one use."""

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_closed_connections_leave_no_cycles() -> None:
    upstream, up_port = await _closing_upstream()
    results: list[ForwardResult] = []

    def handler(ex: Exchange) -> Awaitable[None] | None:
        ex.forward_now(f"127.0.0.1:{up_port}", results.append, Route())
        return None

    server = await serve(handler, "127.0.0.1", 0)
    try:
        with cyclic_garbage() as found:
            for _ in range(20):
                answer = await raw_exchange(
                    server.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                )
                assert answer.startswith(b"HTTP/1.1 200 OK")
            await asyncio.sleep(0.05)  # the last connections' losses delivered
        assert [r.status for r in results] == [200] * 20
        # before: each of the 20 client and 20 upstream connections, with its parser
        assert sum(found.values()) <= 2, found  # (one of each may still be in flight)
    finally:
        server.close()
        await server.wait_closed(2.0)
        upstream.close()
        await upstream.wait_closed()


def test_freeze_moves_the_start_up_heap_out_of_collections() -> None:
    # in a child: freezing this test process would keep every later test's objects alive
    code = (
        "import gc, time, queue_proxy.app, activator.app\n"
        "from dataplane.heap import freeze_startup_heap\n"
        "n = freeze_startup_heap()\n"
        "assert n > 10_000, n\n"
        "assert sum(gc.get_count()) < 100, gc.get_count()\n"
        "print(n)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10_000


def test_freeze_startup_heap_counts_what_it_froze() -> None:
    before = gc.get_freeze_count()
    try:
        frozen = freeze_startup_heap()
        assert frozen >= before
        assert frozen == gc.get_freeze_count()
    finally:
        gc.unfreeze()


def test_a_response_is_sent_inside_the_callback_that_writes_it() -> None:
    """uvloop queues a small write until every ready callback of the loop's iteration has run;
    the core's connections send at once (a burst of requests overlaps with its answers)."""
    import uvloop

    buffered: list[int] = []

    def handler(ex: Exchange) -> Awaitable[None] | None:
        ex.respond_now(200, b"now\n")
        transport = ex._conn.transport  # type: ignore[attr-defined]
        buffered.append(transport.get_write_buffer_size())
        return None

    async def main() -> bytes:
        server = await serve(handler, "127.0.0.1", 0)
        try:
            return await raw_exchange(
                server.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
        finally:
            server.close()
            await server.wait_closed(2.0)

    answer = uvloop.run(main())
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert buffered == [0]  # (queued, it would be the response's length)
