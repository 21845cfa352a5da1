"""Upstream connections: an HTTP/1.1 response-parsing protocol and a keep-alive pool per host:port.

A connection belongs to at most one forwarded request at a time (its ``sink``); idle ones wait in
the pool, newest first, and are dropped when the upstream closes them or they idle too long.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

import httptools

from dataplane.api import UpstreamConnectError
from dataplane.messages import SIMPLE_PATHS, SimpleResponse, simple_response

log = logging.getLogger("zeroserve.dataplane.upstream")


class ResponseSink:
    """What receives one upstream response (the core's forward state derives from it).

    A base class rather than a protocol: compiled, it is an extension type whose methods the
    connection calls through its method table, without a Python-level call or lookup.
    """

    __slots__ = ("simple_ok",)

    def __init__(self) -> None:
        self.simple_ok = False  # a whole response in one read may skip the parser

    def on_headers_complete(self) -> None:
        raise NotImplementedError

    def on_simple_response(self, response: SimpleResponse) -> None:
        raise NotImplementedError

    def on_body(self, body: bytes) -> None:
        raise NotImplementedError

    def on_message_complete(self) -> None:
        raise NotImplementedError

    def on_upgraded(self, rest: bytes) -> None:
        raise NotImplementedError

    def on_tunnel_data(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def upstream_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    def upstream_error(self, reason: str) -> None:
        raise NotImplementedError

    def upstream_pause_writing(self) -> None:
        raise NotImplementedError

    def upstream_resume_writing(self) -> None:
        raise NotImplementedError


def _not_connected(data: bytes) -> None:
    raise RuntimeError("the upstream connection is not made yet")


def write_at_once(transport: asyncio.Transport) -> None:
    """Have ``transport.write`` send at once rather than at the end of the loop's iteration.

    uvloop queues a write that leaves less than the high-water mark buffered and sends the
    queue after every ready callback of the iteration has run; with the mark at 0 it sends in
    ``write`` itself. A burst of requests that arrive together then overlaps: the upstream
    (and the client) gets the first while the next are still being read, where with the queue
    none went out before the last was handled. Flow control stays: the protocol is paused
    while the kernel holds back anything, and resumed once it has taken all."""
    transport.set_write_buffer_limits(high=0)


# a parser bound to nothing, in place of a lost connection's own (see connection_lost)
_NO_RESPONSES = httptools.HttpResponseParser(object())


class UpstreamConnection:
    """One keep-alive connection to an upstream (an ``asyncio.Protocol`` by duck typing, so that
    it compiles to an extension type); parses responses and hands them to its sink.

    The status reason and the headers of the response being parsed collect here
    (``reason``, ``headers``); the sink reads them when the head is complete.
    """

    __slots__ = (
        "closed",
        "fresh",
        "headers",
        "hostport",
        "idle_since",
        "parser",
        "reason",
        "reused",
        "sink",
        "transport",
        "tunnel",
        "write",
    )

    def __init__(self, hostport: str) -> None:
        self.hostport = hostport
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        # the transport's write, bound once (a method looked up per call costs more)
        self.write: Callable[[bytes], None] = _not_connected
        self.sink: ResponseSink | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.tunnel = False  # after a 101: raw bytes to the sink, no more HTTP
        self.fresh = True  # the parser is between messages: a read may be a whole response

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)
        write_at_once(self.transport)
        self.write = self.transport.write

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes on an idle connection: the upstream is confused, drop it
            self.close()
            return
        if self.tunnel:
            sink.on_tunnel_data(data)
            return
        if self.fresh and sink.simple_ok and SIMPLE_PATHS:  # nothing of it parsed yet
            simple = simple_response(data)
            if simple is not None:
                sink.on_simple_response(simple)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            sink.on_upgraded(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self.sink = None
            self.close()
            sink.upstream_error(f"malformed response from upstream: {exc}")
            return
        sink.flush()  # what this read produced, in one client write

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(exc)
        self.parser = _NO_RESPONSES  # (its own holds this connection's callbacks: a cycle)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    # httptools callbacks: the head collects here, the rest goes to the sink
    def on_message_begin(self) -> None:
        self.fresh = False
        self.reason = b""
        self.headers = []

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.sink is not None:
            self.sink.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        self.fresh = True
        if self.sink is not None:
            self.sink.on_message_complete()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.sink = None
        if self.transport is not None:
            self.transport.abort()


class _Idle:
    """One host's idle connections, newest last. A stack over a list that keeps its length
    (``n`` of its slots in use, the rest None): a request's take and give back neither shrink
    nor grow the list (a list popped to empty frees its array, and a deque's methods are
    looked up by name), so at one request at a time they touch no allocator."""

    __slots__ = ("conns", "n")

    def __init__(self) -> None:
        self.conns: list[UpstreamConnection | None] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def push(self, conn: UpstreamConnection) -> None:
        if self.n < len(self.conns):
            self.conns[self.n] = conn
        else:
            self.conns.append(conn)
        self.n += 1

    def pop(self) -> UpstreamConnection:
        """The newest (the caller checks ``n`` first)."""
        if self.n == 0:
            raise IndexError("pop from an empty idle stack")
        self.n -= 1
        conn = self.conns[self.n]
        self.conns[self.n] = None  # (no reference kept to a connection handed out)
        if conn is None:  # (a slot below n is never None)
            raise RuntimeError("idle stack slot below its count is empty")
        return conn


class UpstreamPool:
    """Keep-alive connections per ``host:port``: at most ``max_idle_per_host`` idle ones.

    Knative's transport keeps CC idle connections per host (1000 when CC = 0), reference §3.2.
    """

    def __init__(
        self,
        *,
        max_idle_per_host: int = 1000,
        idle_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        # TLS on every connection (a payload-logging sink's https://), checked against the
        # host's name; None for the proxies' own plain loopback and pod connections
        self.tls = tls
        self._idle: dict[str, _Idle] = {}
        self._addr: dict[str, tuple[str, int]] = {}
        self._closed = False

    def idle_count(self, hostport: str | None = None) -> int:
        if hostport is not None:
            return len(self._idle.get(hostport, ()))
        return sum(len(q) for q in self._idle.values())

    def take_idle(self, hostport: str, now: float) -> UpstreamConnection | None:
        """The newest idle connection still open, or None."""
        q = self._idle.get(hostport)
        while q is not None and q.n > 0:
            conn = q.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.idle_timeout_s:
                conn.close()
                continue
            conn.reused = True
            conn.reason = b""  # nothing of this use's response yet (the stale check reads it)
            if conn.headers:  # (the parser's last head; a whole-message answer leaves it empty)
                conn.headers = []
            return conn
        return None

    def _address(self, hostport: str) -> tuple[str, int]:
        addr = self._addr.get(hostport)
        if addr is None:
            host, sep, port = hostport.rpartition(":")
            if not sep or not port.isdigit():
                raise UpstreamConnectError(f"bad upstream address {hostport!r}: want host:port")
            addr = (host.strip("[]"), int(port))
            self._addr[hostport] = addr
        return addr

    async def connect(self, hostport: str, timeout_s: float | None = None) -> UpstreamConnection:
        """A fresh connection; :class:`UpstreamConnectError` if it cannot be made in time."""
        host, port = self._address(hostport)
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: cast(asyncio.Protocol, UpstreamConnection(hostport)),
                    host,
                    port,
                    ssl=self.tls,
                    server_hostname=host if self.tls is not None else None,
                )
        except TimeoutError as exc:
            raise UpstreamConnectError(f"timed out dialing {hostport}") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"dial {hostport}: {exc.strerror or exc}") from exc
        return cast(UpstreamConnection, conn)

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Give a connection back after a complete exchange (closed if the pool is full)."""
        conn.sink = None
        if conn.closed or self._closed:
            conn.close()
            return
        q = self._idle.get(conn.hostport)
        if q is None:
            q = self._idle[conn.hostport] = _Idle()
        if q.n >= self.max_idle_per_host:
            conn.close()
            return
        conn.idle_since = now
        q.push(conn)

    def close(self) -> None:
        """Close every idle connection; connections in use close when their exchange ends."""
        self._closed = True
        for q in self._idle.values():
            while q.n > 0:
                q.pop().close()
        self._idle.clear()
