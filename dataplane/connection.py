"""The client connections of the forwarding core (see ``api.py``): one :class:`Connection`
per client socket parses requests (uvloop protocols, httptools, or a whole request read at once)
and runs the component's handler once per request, without a task when the handler needs none.

Bodies stream both ways with flow control: the client's body goes upstream as it arrives
(reading pauses while upstream writes are paused, or while more than ``_BODY_HIGH`` bytes wait
for the handler), and the response goes to the client as it arrives (upstream reading pauses
while client writes are paused). Nothing is buffered whole. :class:`ServerState` is what the
connections share (the base of :class:`dataplane.server.Server`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools

from dataplane.api import Handler
from dataplane.exchange import DirectHandler, HttpExchange, new_exchange
from dataplane.forward import Forward
from dataplane.headers import xff_line
from dataplane.messages import SIMPLE_PATHS, SimpleRequest, simple_request
from dataplane.request import ClientConnection, ForwardContext, Request
from dataplane.upstream import UpstreamPool, write_at_once

log = logging.getLogger("zeroserve.dataplane.connection")

_LINGER_S = 2.0  # after an early answer with Connection: close, read (and drop) this long
_MAX_HEAD = 1024 * 1024  # Go's DefaultMaxHeaderBytes
_HEAD_TIMEOUT_BODY = b"request head not complete within the header timeout\n"
_HEAD_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY)
)

# a parser bound to nothing, in place of a lost connection's own (see connection_lost)
_NO_REQUESTS = httptools.HttpRequestParser(object())


class ServerState:
    """What a server's connections share: the handler, the limits, the counts, the set of open
    connections (the base of :class:`dataplane.server.Server`, which listens and sweeps)."""

    __slots__ = (
        "_idle_event",
        "bad_requests",
        "connections",
        "ctx",
        "handler",
        "header_timeout_s",
        "header_timeouts",
        "in_flight",
        "keepalive_timeout_s",
        "max_connections",
        "now",
        "on_bad_request",
        "on_connection_refused",
        "on_header_timeout",
        "pool",
        "refused_connections",
    )

    def __init__(
        self,
        handler: Handler,
        pool: UpstreamPool,
        *,
        header_timeout_s: float,
        keepalive_timeout_s: float,
        max_connections: int,
        on_bad_request: Callable[[], None] | None,
        on_header_timeout: Callable[[], None] | None,
        on_connection_refused: Callable[[], None] | None,
    ) -> None:
        self.handler = handler
        self.pool = pool
        self.ctx: ForwardContext | None = None  # made when the server starts (it needs the loop)
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_connections = max_connections
        self.on_bad_request = on_bad_request
        self.on_header_timeout = on_header_timeout
        self.on_connection_refused = on_connection_refused
        self.connections: set[Connection] = set()
        self.in_flight = 0
        self.bad_requests = 0
        self.header_timeouts = 0  # heads answered 408
        self.refused_connections = 0  # connections closed at once, over max_connections
        # the loop's time at the last sweep: a coarse clock for per-request timestamps
        self.now = 0.0
        self._idle_event: asyncio.Event | None = None

    def request_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle_event is not None:
            self._idle_event.set()

    def refuse(self, conn: Connection) -> None:
        """A connection over ``max_connections``: closed at once, unanswered, and counted."""
        self.refused_connections += 1
        conn.close()
        if self.on_connection_refused is not None:
            self.on_connection_refused()


class Connection(ClientConnection):
    """One client connection (an ``asyncio.Protocol`` by duck typing, so that it compiles to an
    extension type): parses requests, runs the handler, keeps the connection alive."""

    __slots__ = (
        "_current",
        "_fresh",
        "_head_bytes",
        "_head_connection",
        "_head_since",
        "_linger_handle",
        "_parser",
        "_parsing",
        "_pipeline",
        "_server",
        "_starting",
        "_tunnel",
        "_tunnel_early",
        "_url",
        "idle_since",
    )

    def __init__(self, server: ServerState) -> None:
        ctx = server.ctx
        assert ctx is not None, "the server has not started"
        self._init_client(ctx)
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._head_connection = False  # the head being parsed has a Connection header
        self._fresh = True  # the parser is between messages: a read may be a whole request
        self._head_bytes = 0
        self._parsing: HttpExchange | None = None  # the request being parsed
        self._current: HttpExchange | None = None  # the request being answered
        # Its head is parsed; its handler runs once the rest of this read is parsed, so that a
        # body that came with the head goes upstream with it, in one write (and can be replayed
        # on a fresh connection if the pooled one was stale).
        self._starting: HttpExchange | None = None
        self._pipeline: deque[HttpExchange] = deque()
        self._tunnel: Forward | None = None  # after a 101: bytes go straight upstream
        self._tunnel_early = b""  # bytes after an upgrade request's head, before the 101
        self.idle_since = self._time()  # when the last response ended (the keep-alive sweep)
        # When the head being read began (the header-timeout sweep), 0 when none is: the first
        # one's clock starts at accept (Go's ReadHeaderTimeout, nginx's client_header_timeout),
        # a later one's at its first byte.
        self._head_since = self.idle_since
        self._linger_handle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)
        server = self._server
        cap = server.max_connections
        if cap and len(server.connections) >= cap:
            server.refuse(self)
            return
        write_at_once(self.transport)
        self._transport_write = self.transport.write
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.xff = xff_line(self.client_ip)
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.tunnel_to_upstream(data)
            return
        if self._fresh and self._current is None and SIMPLE_PATHS:  # between requests, idle
            simple = simple_request(data)
            if simple is not None:
                self._simple_request(simple)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # What follows the head belongs to the tunnel, if the upstream opens one (101);
            # else the connection closes after the response.
            self._tunnel_early += data[exc.args[0] :]
            self._pause_reading_all()
        except httptools.HttpParserError as exc:
            self._bad_request(str(exc) or "malformed request")
        ex = self._starting
        if ex is not None:
            self._starting = None
            if not ex._started:  # (a malformed request behind it was answered 400)
                self._start(ex)

    def _simple_request(self, request: SimpleRequest) -> None:
        """A whole request read at once without the parser (:func:`simple_request`): what the
        parser's callbacks would do for it, then its handler."""
        self._head_since = 0.0  # (a whole head: none is being read)
        ex = new_exchange(self)
        ex.raw_head = request.raw
        ex._method = request.method
        ex._target = request.target
        ex._content_length = request.content_length
        ex._keep_alive = request.keep_alive
        ex.arrived_at = self._time()
        if request.body:
            ex.on_body(request.body)
        ex._body_done = True
        self._start(ex)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._server.connections.discard(self)
        self._cancel_timers()
        for ex in (self._current, *self._pipeline):
            if ex is None:
                continue
            if ex._forward is not None:
                ex._forward.client_lost()
            elif ex._task is not None and not ex._task.done() and not ex._response_done:
                ex._task.cancel()  # waiting (breaker, buffering): give the slot back
        self._pipeline.clear()
        # The parser holds this connection's bound callbacks, and an exchange holds its
        # connection: cycles that only the garbage collector would free, and a collection
        # stops the loop (0.1-1.5 ms, every few hundred connections closed). Nothing parses or
        # starts after the connection is lost (an exchange still running keeps its own
        # reference to the connection).
        self._parser = _NO_REQUESTS
        self._current = self._starting = self._parsing = None

    def pause_writing(self) -> None:
        self._write_paused = True
        cur = self._current
        if cur is not None and cur._forward is not None:
            cur._forward.client_pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        cur = self._current
        if cur is not None and cur._forward is not None:
            cur._forward.client_resume_writing()

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        self._fresh = False
        if self._head_since == 0.0:  # (the sweep's coarse clock: no clock read per request)
            self._head_since = self._server.now
        self._parsing = ex = new_exchange(self)
        ex._headers = []
        self._url = []
        self._head_bytes = 0
        self._head_connection = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD:
            raise ValueError("request head too large")
        n = name.decode("latin-1")
        v = value.decode("latin-1")
        ex._header_list().append((n, v))
        ln = len(n)
        if ln == 14 and n.lower() == "content-length":
            ex._content_length = int(v)
        elif ln == 17 and n.lower() == "transfer-encoding":
            ex._chunked = "chunked" in v.lower()
        elif ln == 6 and n.lower() == "expect":
            ex._expect_continue = v.lower() == "100-continue"
        elif ln == 10 and n.lower() == "connection":
            self._head_connection = True

    def on_headers_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        p = self._parser
        ex._method = p.get_method().decode("ascii")
        ex._target = b"".join(self._url).decode("latin-1")
        ex._keep_alive = p.should_keep_alive()
        # An HTTP/1.0 request is kept alive only when it says so in ``Connection``: without that
        # header a kept-alive request is 1.1, and the version string (slow to get) is not needed.
        if self._head_connection or not ex._keep_alive:
            ex._http10 = p.get_http_version() == "1.0"
        ex._upgrade = p.should_upgrade()
        ex.arrived_at = self._time()
        self._head_since = 0.0
        if self._current is None:
            self._current = self._starting = ex  # started at the end of data_received
        else:  # pipelined: answer in order, read no further until its turn
            self._pipeline.append(ex)
            self._pause_pipeline = True
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.on_body(body)

    def on_message_complete(self) -> None:
        self._fresh = True
        ex = self._parsing
        self._parsing = None
        if ex is None:
            return
        ex.on_message_complete()
        if ex._response_done and ex is self._current:
            self._next()

    # --- request lifecycle ---
    def _start(self, ex: HttpExchange) -> None:
        self._current = ex
        self._server.in_flight += 1
        self.call_handler(ex, self._server.handler, ex)

    def call_handler(
        self, ex: Request, handler: Callable[[Any], Awaitable[None] | None], arg: object
    ) -> None:
        """``handler(arg)`` takes ``ex`` on (the handler, or a ``forward_now``'s
        ``on_refused``): a coroutine it returns runs in a task; else the request has ended,
        unless a ``forward_now`` still runs."""
        try:
            if arg is ex and isinstance(handler, DirectHandler) and isinstance(ex, HttpExchange):
                direct = handler  # (compiled: typed, so called through the method table)
                pending = direct.handle(ex)
            else:
                pending = handler(arg)
        except Exception:
            log.exception("handler failed", extra={"method": ex._method, "target": ex._target})
            pending = None
            if ex._forward is None and not ex._started:
                ex.respond_now(500, b"internal error\n")
        if pending is not None:
            ex._task = self._loop.create_task(self._run(ex, pending))
        elif ex._forward is None:  # answered synchronously (or forward_now already ended)
            self.sync_request_done(ex)

    def sync_request_done(self, ex: Request) -> None:
        """A request its handler took without a task has ended."""
        self._server.request_done()
        if not ex._started:
            ex.respond_now(500, b"handler returned without a response\n")

    async def _run(self, ex: Request, pending: Awaitable[None]) -> None:
        try:
            await pending
        except asyncio.CancelledError:
            if not self.lost:
                raise
        except Exception:
            log.exception("handler failed", extra={"method": ex._method, "target": ex._target})
            if ex._started:
                self.abort()
            elif ex._forward is None:
                ex.respond_now(500, b"internal error\n")
        finally:
            self._server.request_done()
        if not ex._started:
            ex.respond_now(500, b"handler returned without a response\n")

    def exchange_response_done(self, ex: Request) -> None:
        if ex is not self._current or self.lost:
            return
        if ex._response_close:
            self._close_lingering(ex)
        elif ex._body_done:
            self._next()
        elif self._pause_body:  # drop the unread rest of the body, then go on
            self._pause_body = False
            self._update_reading()

    def _next(self) -> None:
        self._current = None
        if self._pipeline:
            ex = self._pipeline.popleft()
            if not self._pipeline:
                self._pause_pipeline = False
                self._update_reading()
            self._start(ex)
            if ex._body_done and ex._response_done:
                self._next()
            return
        if self._pause_pipeline:
            self._pause_pipeline = False
            self._update_reading()
        if self.closing:
            self.close()
        else:
            self.idle_since = self._time()

    def _close_lingering(self, ex: Request) -> None:
        """Close after the response without a reset losing it: half-close, drain a little."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if ex._body_done and not self._pipeline:
            t.close()
            return
        self._pipeline.clear()
        self._pause_body = self._pause_upstream = self._pause_pipeline = False
        self._update_reading()
        if t.can_write_eof():
            t.write_eof()
        self._linger_handle = self._loop.call_later(_LINGER_S, t.close)

    def start_tunnel(self, fwd: Forward) -> None:
        """The upstream answered 101: from now on this connection is a byte pipe to it."""
        self._tunnel = fwd
        early, self._tunnel_early = self._tunnel_early, b""
        if early:
            fwd.tunnel_to_upstream(early)
        self._pause_pipeline = False
        self._update_reading()

    # --- flow control ---
    def _pause_reading_all(self) -> None:
        self._pause_pipeline = True
        self._update_reading()

    # --- closing ---
    def _bad_request(self, reason: str) -> None:
        ex = self._current or self._parsing
        if ex is not None and ex._forward is not None:
            ex._forward.client_lost()
        if ex is not None and ex._started:
            self.abort()
            return
        body = f"malformed request: {reason}\n".encode("latin-1", "replace")
        self.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self._server.bad_requests += 1
        if self._server.on_bad_request is not None:
            self._server.on_bad_request()
        if ex is not None:
            ex._started = True
            ex._response_done = True
        if self.transport is not None:
            self.transport.close()

    def head_timeout(self) -> None:
        """The head was not complete within the header timeout: 408 where a request line has
        started, else (nothing sent) just close, as Go and nginx do."""
        ex = self._parsing
        if ex is not None:
            ex._started = ex._response_done = True
            self.write(_HEAD_TIMEOUT)
            server = self._server
            server.header_timeouts += 1
            if server.on_header_timeout is not None:
                server.on_header_timeout()
        self.close()

    def _cancel_timers(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None

    @property
    def idle(self) -> bool:
        return self._current is None and self._parsing is None

    def shutdown(self) -> None:
        """Close now if idle, else after the current response (``Connection: close``)."""
        self.closing = True
        if self.idle:
            self.close()
