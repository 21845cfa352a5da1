"""The forwarding core against a real upstream on loopback: headers, bodies, pool, errors."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import aiohttp
import pytest
from aiohttp import web

from dataplane.api import (
    UPSTREAM_CONNECT,
    Exchange,
    ForwardReason,
    ForwardResult,
    Timeouts,
    UpstreamConnectError,
)
from dataplane.headers import synthesize_forwarded
from dataplane.route import Route
from dataplane.server import Server, serve
from dataplane.upstream import UpstreamPool
from tests.dataplane_fixtures import (
    GATES,
    fetch,
    parse_echo,
    poll_until,
    raw_exchange,
    run_app,
    upstream_app,
)

ROUTE = Route()  # no edits, no timeouts


@dataclass
class Proxy:
    """A core server whose handler forwards everything to one upstream."""

    server: Server
    upstream_app: web.Application
    upstream_port: int
    timeouts: Timeouts = field(default_factory=Timeouts)
    results: list[ForwardResult] = field(default_factory=list)
    connect_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(params=["await", "now"])
async def proxy(request: pytest.FixtureRequest) -> AsyncIterator[Proxy]:
    """Every forwarding test runs twice: the handler awaits ``forward``, or it is synchronous
    and uses ``forward_now`` (whose ``on_refused`` answers a refused connection as the
    awaiting handler does)."""
    async with run_app(upstream_app()) as (app, port):
        holder: list[Proxy] = []

        async def handler(ex: Exchange) -> None:
            p = holder[0]
            try:
                result = await ex.forward(
                    f"127.0.0.1:{p.upstream_port}",
                    set_headers=[("X-Set", "yes")],
                    remove_prefixes=["knative-serving-"],
                    timeouts=p.timeouts,
                )
            except UpstreamConnectError as exc:
                p.connect_errors.append(str(exc))
                await ex.respond(502, f"connect: {exc}\n".encode())
                return
            p.results.append(result)

        async def refused(ex: Exchange, exc: UpstreamConnectError) -> None:
            holder[0].connect_errors.append(str(exc))
            await ex.respond(502, f"connect: {exc}\n".encode())

        def handler_now(ex: Exchange) -> Awaitable[None] | None:
            p = holder[0]
            ex.forward_now(
                f"127.0.0.1:{p.upstream_port}",
                p.results.append,
                Route(remove_prefixes=["knative-serving-"], timeouts=p.timeouts),
                set_headers=(("X-Set", "yes"),),
                on_refused=partial(refused, ex),
            )
            return None

        server = await serve(handler if request.param == "await" else handler_now, "127.0.0.1", 0)
        p = Proxy(server, app, port)
        holder.append(p)
        try:
            yield p
        finally:
            server.close()
            await server.wait_closed(2.0)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_get_passes_headers_and_drops_hop_by_hop(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    headers = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "TE": "trailers",
        "Proxy-Authorization": "secret",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Proto": "https",
        "Knative-Serving-Revision": "r1",
        "X-Keep": "kept",
    }
    async with client.get(proxy.url + "/echo?a=1", headers=headers) as resp:
        assert resp.status == 200
        echo = parse_echo(await resp.read())
    pairs = echo["headers"]
    assert isinstance(pairs, list)
    got = {k.lower(): v for k, v in pairs}
    assert echo["path"] == "/echo?a=1"
    assert got["x-keep"] == "kept"
    assert got["x-set"] == "yes"
    for hop in ("x-hop", "te", "proxy-authorization", "knative-serving-revision"):
        assert hop not in got
    assert got["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert got["forwarded"] == "for=10.0.0.1;proto=https"
    assert proxy.results == [ForwardResult(200, True)]


@pytest.mark.parametrize(
    ("xff", "xfh", "xfp", "want"),
    [
        pytest.param(
            ["1.1.1.1, 2.2.2.2"],
            "h",
            "http",
            "for=1.1.1.1;host=h;proto=http, for=2.2.2.2",
            id="chain",
        ),
        pytest.param(["::1"], None, None, 'for="[::1]"', id="ipv6-quoted"),
        pytest.param([], "h", None, "host=h", id="host-only"),
    ],
)
def test_synthesize_forwarded(xff: list[str], xfh: str | None, xfp: str | None, want: str) -> None:
    assert synthesize_forwarded(xff, xfh, xfp) == want


async def test_keep_alive_reuses_upstream_connection(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    peers = []
    for _ in range(3):
        async with client.get(proxy.url + "/echo") as resp:
            peers.append(parse_echo(await resp.read())["peer"])
    assert len(set(peers)) == 1
    assert proxy.server.pool.idle_count() == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_request_body_streams_upstream(
    proxy: Proxy, client: aiohttp.ClientSession, chunked: bool
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    data: object = gen() if chunked else payload
    async with client.post(proxy.url + "/count", data=data) as resp:
        assert resp.status == 200
        assert int(await resp.text()) == len(payload)


async def test_response_streams_as_produced(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.get(proxy.url + "/stream?gate=s1") as resp:
        first = await asyncio.wait_for(resp.content.readline(), 5)
        assert first == b"first\n"  # arrived while the upstream still waits on its gate
        proxy.upstream_app[GATES]["s1"].set()
        assert await resp.content.readline() == b"second\n"
        assert resp.headers.get("Transfer-Encoding") == "chunked"


async def test_compressed_body_passes_untouched(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(proxy.url + "/gzip") as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == b"\x1f\x8b-not-really"


async def test_big_download_sha(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    size = 8 * 1024 * 1024 + 17
    h = hashlib.sha256()
    async with client.get(proxy.url + f"/big?size={size}") as resp:
        assert resp.headers["Content-Length"] == str(size)
        async for chunk in resp.content.iter_any():
            h.update(chunk)
    assert h.hexdigest() == hashlib.sha256((b"x" * 65536 * 129)[:size]).hexdigest()


async def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """A response head read off a raw socket, and the bytes after it."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def test_pooled_connection_reads_again_after_the_client_paused_at_the_response_end(
    proxy: Proxy,
) -> None:
    """The last upstream read of a response is more than the client's socket takes at once:
    writing it pauses the client, and with it the upstream connection's reading, just as the
    response ends. That connection goes back to the pool and must read again, else the next
    response on it never arrives (a queue-proxy then waits out its drain with the request in
    flight: tests/test_queue_proxy_process.py hung so, under load)."""
    loop = asyncio.get_running_loop()
    size = 100_000  # a few upstream reads at most, each far more than ~16 KiB
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", proxy.server.port))
        await poll_until(lambda: len(proxy.server.connections) == 1)
        (conn,) = proxy.server.connections
        assert conn.transport is not None
        # a small fixed send buffer (no autotuning): the kernel takes a few KiB per write
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        await loop.sock_sendall(sock, b"GET /big?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        head, rest = await asyncio.wait_for(_read_head(sock), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        got = len(rest)
        async with asyncio.timeout(5):
            while got < size:
                got += len(await loop.sock_recv(sock, 65536))
        assert got == size
        assert proxy.server.pool.idle_count() == 1  # the next request takes this connection
        await loop.sock_sendall(sock, b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        head, _ = await asyncio.wait_for(_read_head(sock), 5)
        assert head.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        pytest.param("HEAD", "/echo", 200, b"", id="head"),
        pytest.param("GET", "/status/204", 204, b"", id="204"),
        pytest.param("GET", "/status/304", 304, b"", id="304"),
        pytest.param("GET", "/status/404", 404, b"s", id="404-passes"),
    ],
)
async def test_no_body_statuses(
    proxy: Proxy, client: aiohttp.ClientSession, method: str, path: str, status: int, body: bytes
) -> None:
    async with client.request(method, proxy.url + path) as resp:
        assert resp.status == status
        assert await resp.read() == body
    async with client.get(proxy.url + "/echo") as resp:  # the connection is still usable
        assert resp.status == 200


async def test_upstream_refused_raises_connect_error(proxy: Proxy) -> None:
    proxy.upstream_port = 1  # nothing listens there
    async with aiohttp.ClientSession() as client, client.get(proxy.url + "/echo") as resp:
        assert resp.status == 502
        assert "connect: dial 127.0.0.1:1" in await resp.text()
    assert len(proxy.connect_errors) == 1


async def test_upstream_dies_before_response_is_502(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(proxy.url + "/reset") as resp:
        assert resp.status == 502
        assert "upstream error: upstream closed the connection before responding" in (
            await resp.text()
        )
    assert proxy.results[-1] == ForwardResult(502, False, "upstream-error")


async def test_upstream_dies_mid_response_cuts_client(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(client, proxy.url + "/reset?when=mid")
    assert proxy.results[-1] == ForwardResult(200, False, "upstream-error")


@pytest.mark.parametrize(
    ("timeouts", "path", "body", "reason"),
    [
        pytest.param(
            Timeouts(total_s=0.3), "/sleep?s=5", b"request timeout", "timeout:total", id="total"
        ),
        pytest.param(
            Timeouts(response_start_s=0.3, body_prefix="activator "),
            "/sleep?s=5",
            b"activator response start timeout",
            "timeout:response-start",
            id="response-start",
        ),
    ],
)
async def test_timeouts_answer_504(
    proxy: Proxy,
    client: aiohttp.ClientSession,
    timeouts: Timeouts,
    path: str,
    body: bytes,
    reason: ForwardReason,
) -> None:
    proxy.timeouts = timeouts
    async with client.get(proxy.url + path) as resp:
        assert resp.status == 504
        assert await resp.read() == body
    assert proxy.results[-1] == ForwardResult(504, False, reason)


async def test_idle_timeout_after_response_started_cuts_client(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    proxy.timeouts = Timeouts(idle_s=0.3)
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(client, proxy.url + "/drip?s=5")
    assert proxy.results[-1] == ForwardResult(200, False, "timeout:idle")


async def test_idle_timeout_before_response_is_504(
    proxy: Proxy, client: aiohttp.ClientSession
) -> None:
    proxy.timeouts = Timeouts(idle_s=0.3)
    async with client.get(proxy.url + "/sleep?s=5") as resp:
        assert resp.status == 504
        assert await resp.read() == b"idle timeout"


async def test_malformed_request_is_400(proxy: Proxy) -> None:
    out = await raw_exchange(proxy.server.port, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"malformed request" in out
    assert proxy.server.bad_requests == 1


async def test_pipelined_requests_answered_in_order(proxy: Proxy) -> None:
    req = b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /echo?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = await raw_exchange(proxy.server.port, req % 1 + req % 2 + last)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b"n=1") < out.index(b"n=2") < out.index(b"n=3")


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n", b"Connection: x\r\n"])
async def test_http10_client_gets_a_close_delimited_body_not_chunks(
    proxy: Proxy, connection: bytes
) -> None:
    """An HTTP/1.0 client cannot read chunked framing: a response of unknown length reaches it
    unframed, ended by closing the connection, whatever its ``Connection`` header says."""
    proxy.upstream_app[GATES].setdefault("h10", asyncio.Event()).set()
    req = b"GET /stream?gate=h10 HTTP/1.0\r\nHost: x\r\n" + connection + b"\r\n"
    out = await raw_exchange(proxy.server.port, req)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"Connection: close" in head
    assert body == b"first\nsecond\n"


async def test_http11_client_keeps_chunks_with_a_connection_header(proxy: Proxy) -> None:
    proxy.upstream_app[GATES].setdefault("h11", asyncio.Event()).set()
    req = b"GET /stream?gate=h11 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = await raw_exchange(proxy.server.port, req)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\nfirst\n\r\n7\r\nsecond\n\r\n0\r\n\r\n"


async def test_expect_100_continue(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 OK")
    assert rest.endswith(b"5")


@asynccontextmanager
async def _core_before(
    on_conn: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[Server, list[ForwardResult]]]:
    """A raw upstream served by ``on_conn`` and a core server forwarding everything to it; the
    list collects the forward results."""
    upstream = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    results: list[ForwardResult] = []

    async def handler(ex: Exchange) -> None:
        results.append(await ex.forward(f"127.0.0.1:{port}"))

    server = await serve(handler, "127.0.0.1", 0)
    try:
        yield server, results
    finally:
        server.close()
        await server.wait_closed(2)
        upstream.close()


async def test_websocket_tunnel_both_ways(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    """``Connection: Upgrade`` answered 101: messages flow both ways, big ones too, until the
    client closes; the request then ends as a completed 101."""
    async with client.ws_connect(proxy.url + "/ws") as sock:
        for i in range(20):
            await sock.send_str(f"m{i}")
            assert await sock.receive_str() == f"echo:m{i}"
        big = bytes(range(256)) * 8192  # 2 MiB through the tunnel, with flow control
        await sock.send_bytes(big)
        assert await sock.receive_bytes() == big
    await poll_until(lambda: proxy.server.in_flight == 0)
    assert proxy.results == [ForwardResult(101, True)]


async def test_websocket_closed_by_upstream(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(proxy.url + "/ws") as sock:
        await sock.send_str("bye")
        msg = await sock.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await poll_until(lambda: proxy.server.in_flight == 0)
    assert proxy.results == [ForwardResult(101, True)]


async def test_upgrade_refused_by_upstream_is_its_answer(proxy: Proxy) -> None:
    """An upstream that does not switch protocols answers as usual; the connection then closes
    (what the client sent after the head is not HTTP)."""
    out = await raw_exchange(
        proxy.server.port,
        b"GET /status/426 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"\r\nnot-http",
    )
    assert out.startswith(b"HTTP/1.1 426 Upgrade Required")
    assert b"Connection: close" in out
    assert out.endswith(b"s")


async def test_tunnel_carries_bytes_sent_before_the_101() -> None:
    """A raw upstream that switches protocols and echoes; the client's first tunnel bytes go in
    the same packet as its request head."""
    heads: list[bytes] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nhi:"
        )
        while data := await reader.read(65536):
            writer.write(data.upper())
        writer.close()

    async with _core_before(on_conn) as (server, results):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nearly")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Connection: Upgrade\r\n" in head
        assert b"Upgrade: x\r\n" in head
        assert await asyncio.wait_for(reader.readexactly(8), 5) == b"hi:EARLY"
        writer.write(b"later")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"LATER"
        writer.close()
        await poll_until(lambda: server.in_flight == 0)
        assert results == [ForwardResult(101, True)]
        assert b"Connection: Upgrade\r\n" in heads[0]
        assert b"Upgrade: x\r\n" in heads[0]


async def test_stale_pooled_connection_is_retried() -> None:
    """An upstream that closes each keep-alive connection right after answering."""
    served = 0

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # without "Connection: close": the proxy pools a dead connection

    async with _core_before(on_conn) as (server, results):
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(f"http://127.0.0.1:{server.port}/") as resp:
                    assert resp.status == 200
                    assert await resp.read() == b"ok"
        assert results == [ForwardResult(200, True)] * 3
        assert served == 3


async def test_handler_waiting_is_cancelled_when_client_leaves() -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(ex: Exchange) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = await serve(handler, "127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 5)
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)
        await poll_until(lambda: server.in_flight == 0)
    finally:
        server.close()
        await server.wait_closed(2)


async def test_close_waits_for_in_flight(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    task = asyncio.create_task(client.get(proxy.url + "/sleep?s=0.3"))
    await poll_until(lambda: proxy.server.in_flight > 0)
    proxy.server.close()
    assert await proxy.server.wait_closed(5)
    resp = await task
    assert resp.status == 200
    assert await resp.text() == "slept"
    assert resp.headers.get("Connection") == "close"
    resp.release()


async def _stale_upstream() -> tuple[asyncio.Server, list[int]]:
    """An upstream whose first connection goes stale: it reads the request head and closes
    without answering (a keep-alive connection the server dropped as the request arrived).
    Later connections answer ``ok``. The list holds the requests answered and the connections
    still open."""
    conns = 0
    served = [0, 0]

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        served[1] += 1
        first = conns == 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if first:
                break
            served[0] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        served[1] -= 1

    return await asyncio.start_server(on_conn, "127.0.0.1", 0), served


async def _pool_stale_connection(server: Server, port: int) -> None:
    conn = await server.pool.connect(f"127.0.0.1:{port}")
    conn.reused = True
    server.pool.release(conn, asyncio.get_running_loop().time())


@pytest.mark.parametrize("upstream_listens", [True, False])
async def test_forward_now_retries_a_stale_pooled_connection(upstream_listens: bool) -> None:
    """The pooled connection is stale: retried once on a fresh one; if the upstream no longer
    listens, the core answers 502."""
    upstream, served = await _stale_upstream()
    port = upstream.sockets[0].getsockname()[1]
    results: list[ForwardResult] = []

    def handler(ex: Exchange) -> Awaitable[None] | None:
        ex.forward_now(f"127.0.0.1:{port}", results.append, ROUTE)
        return None

    server = await serve(handler, "127.0.0.1", 0)
    try:
        await _pool_stale_connection(server, port)
        if not upstream_listens:
            upstream.close()  # stops listening; the pooled connection stays open until used
        async with aiohttp.ClientSession() as client:
            status, body = await fetch(client, f"http://127.0.0.1:{server.port}/")
        if upstream_listens:
            assert (status, body) == (200, b"ok")
            assert results == [ForwardResult(200, True)]
            assert served[0] == 1
        else:
            assert status == 502
            assert body.startswith(b"upstream connect error: dial 127.0.0.1:")
            assert [(r.status, r.completed, r.reason) for r in results] == [
                (502, False, "upstream-connect")
            ]
            assert served[0] == 0
        await poll_until(lambda: server.in_flight == 0)
    finally:
        server.close()
        await server.wait_closed(2)
        upstream.close()
        await poll_until(lambda: served[1] == 0)


async def _stale_after_one() -> tuple[asyncio.Server, list[int]]:
    """An upstream whose every connection answers its first request (echoing the body), then
    closes without an answer when the next request arrives on it: a keep-alive connection the
    upstream dropped just as the proxy reused it. The list holds the requests answered and the
    connections still open."""
    served = [0, 0]

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served[1] += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(v) for n, v in _head_fields(head) if n == b"content-length"), 0)
            body = await reader.readexactly(length)
            served[0] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await reader.readuntil(b"\r\n\r\n")  # the next request on it: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        served[1] -= 1

    return await asyncio.start_server(on_conn, "127.0.0.1", 0), served


def _head_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]


async def _post_twice(port: int) -> list[tuple[int, bytes]]:
    """Two POSTs on one client connection, each head and body in one write."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for body in (b"one", b"two!"):
            writer.write(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next((int(v) for n, v in _head_fields(head) if n == b"content-length"), 0)
            out.append((int(head.split()[1]), await reader.readexactly(length)))
    finally:
        writer.close()
    return out


@pytest.mark.parametrize("mode", ["await", "now"])
async def test_reused_connection_gone_stale_is_retried_with_the_body(mode: str) -> None:
    """A pooled connection that served a request goes stale as the next request is sent on
    it: the request, body included, goes again on a fresh connection."""
    upstream, served = await _stale_after_one()
    target = f"127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    results: list[ForwardResult] = []

    async def handler(ex: Exchange) -> None:
        results.append(await ex.forward(target))

    def handler_now(ex: Exchange) -> Awaitable[None] | None:
        ex.forward_now(target, results.append, ROUTE)
        return None

    server = await serve(handler if mode == "await" else handler_now, "127.0.0.1", 0)
    try:
        assert await _post_twice(server.port) == [(200, b"one"), (200, b"two!")]
        assert results == [ForwardResult(200, True)] * 2
        assert served[0] == 2
    finally:
        server.close()
        await server.wait_closed(2)
        upstream.close()
        await poll_until(lambda: served[1] == 0)


async def test_forward_now_hands_a_refused_retry_to_on_refused() -> None:
    """The pooled connection is stale and the upstream no longer listens: with ``on_refused``
    nothing is answered and ``on_done`` is not called; the coroutine it returns continues the
    request (here: to another upstream, with the body kept)."""
    dying, served = await _stale_after_one()
    first = f"127.0.0.1:{dying.sockets[0].getsockname()[1]}"
    results: list[ForwardResult] = []
    refused: list[str] = []

    async def elsewhere(ex: Exchange, exc: UpstreamConnectError) -> None:
        refused.append(str(exc))
        results.append(await ex.forward(f"127.0.0.1:{other_port}"))

    def handler(ex: Exchange) -> Awaitable[None] | None:
        ex.forward_now(first, results.append, ROUTE, on_refused=partial(elsewhere, ex))
        return None

    async with run_app(upstream_app()) as (_, other_port):
        server = await serve(handler, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(3) == b"one"
            dying.close()  # stops listening; the pooled connection stays open until used
            body = b'{"n": 2}'
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(int(v) for n, v in _head_fields(head) if n == b"content-length")
            echoed = parse_echo(await reader.readexactly(length))
            assert echoed["body_len"] == len(body)
            writer.close()
            assert len(refused) == 1
            assert refused[0].startswith(f"dial {first}")
            assert results == [ForwardResult(200, True)] * 2
            assert served[0] == 1
            await poll_until(lambda: server.in_flight == 0)
        finally:
            server.close()
            await server.wait_closed(2)
            await poll_until(lambda: served[1] == 0)


async def test_sync_handler_answers_or_gets_500() -> None:
    def handler(ex: Exchange) -> Awaitable[None] | None:
        if ex.target == "/ok":
            ex.respond_now(201, b"made")
        elif ex.target == "/boom":
            raise RuntimeError("boom")
        return None  # "/silent": returns without an answer

    server = await serve(handler, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as client:
            assert await fetch(client, f"http://127.0.0.1:{server.port}/ok") == (201, b"made")
            status, body = await fetch(client, f"http://127.0.0.1:{server.port}/boom")
            assert (status, body) == (500, b"internal error\n")
            status, body = await fetch(client, f"http://127.0.0.1:{server.port}/silent")
            assert (status, body) == (500, b"handler returned without a response\n")
        assert server.in_flight == 0
    finally:
        server.close()
        await server.wait_closed(2)


async def test_forward_now_dials_when_no_pooled_connection_is_idle() -> None:
    """One way to forward: with no idle pooled connection, ``forward_now`` dials one itself;
    requests at once on one upstream each get a connection, which the pool keeps."""
    async with run_app(upstream_app()) as (_, port):
        results: list[ForwardResult] = []

        def handler(ex: Exchange) -> Awaitable[None] | None:
            ex.forward_now(f"127.0.0.1:{port}", results.append, ROUTE)
            return None

        server = await serve(handler, "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as client:
                url = f"http://127.0.0.1:{server.port}/sleep?s=0.1"
                answers = await asyncio.gather(*(fetch(client, url) for _ in range(4)))
            assert [status for status, _ in answers] == [200] * 4
            assert results == [ForwardResult(200, True)] * 4
            assert server.pool.idle_count(f"127.0.0.1:{port}") == 4
            assert server.in_flight == 0
        finally:
            server.close()
            await server.wait_closed(2)


async def test_forward_now_refused_without_on_refused_is_a_502_with_its_reason() -> None:
    results: list[ForwardResult] = []

    def handler(ex: Exchange) -> Awaitable[None] | None:
        ex.forward_now("127.0.0.1:1", results.append, ROUTE)  # nothing listens there
        return None

    server = await serve(handler, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as client:
            status, body = await fetch(client, f"http://127.0.0.1:{server.port}/")
        assert status == 502
        assert body.startswith(b"upstream connect error: dial 127.0.0.1:1")
        assert results == [ForwardResult(502, False, UPSTREAM_CONNECT)]
        assert server.in_flight == 0
    finally:
        server.close()
        await server.wait_closed(2)


async def test_forward_now_from_a_coroutine_is_refused_with_the_way_to_go(proxy: Proxy) -> None:
    """A coroutine awaits ``forward``: ``forward_now`` there is a bug, said as such (500)."""
    upstream = f"127.0.0.1:{proxy.upstream_port}"
    results: list[ForwardResult] = []

    async def handler(ex: Exchange) -> None:
        await asyncio.sleep(0)
        ex.forward_now(upstream, results.append, ROUTE)

    server = await serve(handler, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as client:
            assert await fetch(client, f"http://127.0.0.1:{server.port}/") == (
                500,
                b"internal error\n",
            )
        assert results == []
        assert server.in_flight == 0
    finally:
        server.close()
        await server.wait_closed(2)


async def test_idle_keep_alive_connections_are_closed() -> None:
    async def handler(ex: Exchange) -> None:
        await ex.respond(200, b"hi")

    server = await serve(handler, "127.0.0.1", 0, keepalive_timeout_s=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"hi")
        assert head.startswith(b"HTTP/1.1 200")
        start = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        waited = asyncio.get_running_loop().time() - start
        assert 0.15 <= waited < 1.5
        writer.close()
    finally:
        server.close()
        await server.wait_closed(2)


async def test_pool_hands_out_the_newest_idle_connection_and_keeps_at_most_its_limit() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def on_client(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    listener = await asyncio.start_server(on_client, "127.0.0.1", 0)
    hostport = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    pool = UpstreamPool(max_idle_per_host=2, idle_timeout_s=5.0)
    now = asyncio.get_running_loop().time()
    try:
        a, b, c = [await pool.connect(hostport) for _ in range(3)]
        for conn in (a, b, c):
            pool.release(conn, now)
        assert c.closed  # past the limit of 2
        assert pool.idle_count(hostport) == 2
        assert pool.take_idle(hostport, now) is b  # newest first
        pool.release(b, now + 1)
        for _ in range(50):  # one at a time, as at a low rate: the stack neither grows nor shrinks
            got = pool.take_idle(hostport, now + 2)
            assert got is b
            pool.release(b, now + 2)
        assert pool.idle_count() == 2
        assert len(pool._idle[hostport].conns) == 2  # its list as long as the most ever idle
        b.close()
        assert pool.take_idle(hostport, now + 3) is a  # a closed one is skipped
        pool.release(a, now)
        assert pool.take_idle(hostport, now + 6) is None  # idle past 5 s: closed, not handed out
        assert a.closed
        assert pool.idle_count(hostport) == 0
        d = await pool.connect(hostport)
        pool.release(d, now)
        pool.close()
        assert d.closed
        assert pool.idle_count() == 0
    finally:
        listener.close()
        for w in accepted:
            w.close()
        await listener.wait_closed()
