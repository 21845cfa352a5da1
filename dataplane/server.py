"""The forwarding core: an HTTP/1.1 server on uvloop protocols with httptools (see ``api.py``).

One :class:`_Connection` per client socket parses requests and runs the component's handler once
per request, in its own task. Bodies stream both ways with flow control: the client's body goes
upstream as it arrives (reading pauses while upstream writes are paused, or while more than
``_BODY_HIGH`` bytes wait for the handler), and the response goes to the client as it arrives
(upstream reading pauses while client writes are paused). Nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, cast

import httptools

from dataplane.api import (
    CLIENT_DISCONNECTED,
    UPSTREAM_CONNECT,
    Exchange,
    ForwardResult,
    Handler,
    Timeouts,
    UpstreamConnectError,
)
from dataplane.deadlines import Deadlines
from dataplane.forward import Forward
from dataplane.headers import (
    REASONS,
    SIMPLE_PATHS,
    SimpleRequest,
    edited_request_head,
    raw_headers,
    request_edits,
    simple_request,
)
from dataplane.upstream import UpstreamPool, write_at_once

log = logging.getLogger("zeroserve.dataplane.server")

_BODY_HIGH = 256 * 1024  # request-body bytes held for a handler that has not forwarded yet
_DISCARD_MAX = 256 * 1024  # body left unread after an early answer: read and drop, else close
_LINGER_S = 2.0  # after an early answer with Connection: close, read (and drop) this long
_MAX_HEAD = 1024 * 1024  # Go's DefaultMaxHeaderBytes
_NO_TIMEOUTS = Timeouts()
_NO_BODY: list[bytes] = []  # what _take_body gives when nothing is buffered (never added to)
_CLIENT_GONE = 499  # status in a ForwardResult when the client left first (nginx's convention)
_SWEEP_MAX_S = 1.0  # the longest period of the connection sweep (header and idle timeouts)
_HEAD_TIMEOUT_BODY = b"request head not complete within the header timeout\n"
_HEAD_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY)
)


def default_max_connections() -> int:
    """The client connections a server takes when not told (0: no cap): half the process's
    soft open-file limit, since each proxied request holds a client and an upstream socket
    (1024 → 512, nginx's ``worker_connections`` default; Kubernetes' usual 1048576 → 524288).
    Past it a connection is refused cleanly rather than the process failing with EMFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else soft // 2


def _new_forward(
    ex: HttpExchange,
    head: bytes,
    timeouts: Timeouts,
    on_done: Callable[[ForwardResult], None] | None = None,
    on_refused: Callable[[UpstreamConnectError], Awaitable[None]] | None = None,
    waiter: asyncio.Future[ForwardResult] | None = None,
) -> Forward:
    """``Forward(ex, head, timeouts, on_done, on_refused, waiter)``, made without a
    Python-level call (nor its keyword parsing) when compiled."""
    fwd = Forward.__new__(Forward)
    fwd._init(ex, head, timeouts, on_done, on_refused, waiter)
    return fwd


def _new_exchange(conn: _Connection) -> HttpExchange:
    """``HttpExchange(conn)``, made without a Python-level call when compiled."""
    ex = HttpExchange.__new__(HttpExchange)
    ex._init(conn)
    return ex


# a parser bound to nothing, in place of a lost connection's own (see connection_lost)
_NO_REQUESTS = httptools.HttpRequestParser(object())


class DirectHandler:
    """A handler the core calls directly (compiled: through the extension type's method table,
    without a Python-level call): :meth:`handle` takes the request as the handler would.
    Calling the object calls it too, so it serves wherever a :data:`dataplane.api.Handler`
    does."""

    __slots__ = ()

    def __call__(self, ex: Exchange) -> Awaitable[None] | None:
        return self.handle(cast(HttpExchange, ex))  # (the core's exchanges are all HttpExchange)

    def handle(self, ex: HttpExchange) -> Awaitable[None] | None:
        raise NotImplementedError


class ForwardDone:
    """A ``forward_now`` callback the core calls directly (compiled: through the method table):
    :meth:`forward_done` gets the result. Calling the object calls it too."""

    __slots__ = ()

    def __call__(self, result: ForwardResult) -> None:
        self.forward_done(result)

    def forward_done(self, result: ForwardResult) -> None:
        raise NotImplementedError


class HttpExchange:
    """One request on a client connection; implements :class:`dataplane.api.Exchange`."""

    __slots__ = (
        "_body_buf",
        "_body_bytes",
        "_body_done",
        "_body_read",
        "_chunked",
        "_conn",
        "_content_length",
        "_continue_sent",
        "_expect_continue",
        "_forward",
        "_headers",
        "_http10",
        "_keep_alive",
        "_method",
        "_response_close",
        "_response_done",
        "_started",
        "_target",
        "_task",
        "_upgrade",
        "arrived_at",
        "raw_head",
    )

    def __init__(self, conn: _Connection) -> None:
        self._init(conn)

    def _init(self, conn: _Connection) -> None:
        self._conn = conn
        self._method = ""
        self._target = ""
        # (None when read whole: made from the raw head when first asked for; the parser's
        # requests get a list to fill in on_message_begin)
        self._headers: list[tuple[str, str]] | None = None
        # the request line and header lines, if read whole (an attribute, not a property: a
        # compiled handler reads it without a lookup)
        self.raw_head: bytes | None = None
        self._content_length = -1
        self._chunked = False
        self._expect_continue = False
        self._upgrade = False
        self._http10 = False
        self._keep_alive = True
        self.arrived_at = 0.0
        self._body_buf: list[bytes] | None = None  # (None: nothing buffered)
        self._body_bytes = 0  # buffered, not yet taken by a forward
        self._body_read = 0  # received in all
        self._body_done = False
        self._continue_sent = False
        self._forward: Forward | None = None
        self._started = False  # a response head went out
        self._response_done = False
        self._response_close = False
        self._task: asyncio.Task[None] | None = None

    # --- api.Exchange ---
    @property
    def method(self) -> str:
        return self._method

    @property
    def target(self) -> str:
        return self._target

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        return self._header_list()

    def _header_list(self) -> list[tuple[str, str]]:
        headers = self._headers
        if headers is None:
            assert self.raw_head is not None
            headers = self._headers = raw_headers(self.raw_head)
        return headers

    @property
    def client(self) -> str:
        return self._conn.client_ip

    def header(self, name: str) -> str | None:
        n = len(name)
        low = name.lower()
        for k, v in self._header_list():
            if len(k) == n and k.lower() == low:
                return v
        return None

    @property
    def has_body(self) -> bool:
        return self._chunked or self._content_length > 0

    @property
    def started(self) -> bool:
        """A response head has been sent to the client."""
        return self._started

    async def respond(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.respond_now(status, body, headers)

    def respond_now(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """:meth:`respond` without the await (for callbacks)."""
        if self._started or self._conn.lost:
            return
        self._started = True
        close = self._close_after_response()
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
        has_type = False
        for name, value in headers:
            if name.lower() == "content-type":
                has_type = True
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not has_type:
            parts.append(b"Content-Type: text/plain; charset=utf-8\r\n")
        parts.append(b"Content-Length: %d\r\n" % len(body))
        if close:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if self._method != "HEAD" and status >= 200 and status not in (204, 304):
            parts.append(body)
        self._conn.write(b"".join(parts))
        self._response_finished()

    def _request_head(
        self,
        set_headers: Iterable[tuple[str, str]],
        remove_headers: Iterable[str],
        remove_prefixes: Iterable[str],
    ) -> bytes:
        if self._chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self._content_length >= 0:
            framing = b"Content-Length: %d\r\n" % self._content_length
        else:
            framing = b""
        return edited_request_head(
            self._method,
            self._target,
            self._headers,
            self._conn.client_ip,
            framing,
            request_edits(set_headers, remove_headers, remove_prefixes),
            self.header("Upgrade") if self._upgrade else None,
            self.raw_head,
        )

    def _refusal(self) -> ForwardResult | None:
        """Why this request cannot be forwarded at all (answered here), or None."""
        if self._started:
            raise RuntimeError("the response has already started")
        if self._conn.lost:
            return ForwardResult(_CLIENT_GONE, False, CLIENT_DISCONNECTED)
        return None

    async def forward(
        self,
        upstream: str,
        *,
        set_headers: Iterable[tuple[str, str]] = (),
        remove_headers: Iterable[str] = (),
        remove_prefixes: Iterable[str] = (),
        timeouts: Timeouts = _NO_TIMEOUTS,
    ) -> ForwardResult:
        refused = self._refusal()
        if refused is not None:
            return refused
        head = self._request_head(set_headers, remove_headers, remove_prefixes)
        waiter: asyncio.Future[ForwardResult] = self._conn._loop.create_future()
        fwd = _new_forward(self, head, timeouts, None, None, waiter)
        self._forward = fwd
        fwd.start(upstream)
        try:
            return await waiter
        finally:
            fwd.cleanup()
            if self._forward is fwd:
                self._forward = None

    def forward_now(
        self,
        upstream: str,
        on_done: Callable[[ForwardResult], None],
        set_headers: Iterable[tuple[str, str]] = (),
        remove_headers: Iterable[str] = (),
        remove_prefixes: Iterable[str] = (),
        timeouts: Timeouts = _NO_TIMEOUTS,
        on_refused: Callable[[UpstreamConnectError], Awaitable[None]] | None = None,
    ) -> None:
        if self._task is not None:
            raise RuntimeError(
                "forward_now is for a handler that returns None; a coroutine awaits forward()"
            )
        refused = self._refusal()
        if refused is not None:
            self._call_done(on_done, refused)
            return
        head = self._request_head(set_headers, remove_headers, remove_prefixes)
        fwd = _new_forward(self, head, timeouts, on_done, on_refused, None)
        self._forward = fwd
        fwd.start(upstream)

    def _forward_refused(self, fwd: Forward, exc: UpstreamConnectError) -> None:
        """A forward's new connection was refused, nothing answered (the body it took is back
        in the buffer): ``forward`` raises it; a ``forward_now`` with ``on_refused`` continues
        there, as the handler's coroutine would; one without is answered 502 and ends."""
        if self._forward is fwd:
            self._forward = None
        waiter = fwd._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if fwd._on_refused is not None:
            self._conn.call_handler(self, fwd._on_refused, exc)
            return
        self.respond_now(502, f"upstream connect error: {exc}\n".encode())
        self._forward_done(fwd, ForwardResult(502, False, UPSTREAM_CONNECT))

    def _forward_done(self, fwd: Forward, result: ForwardResult) -> None:
        """A forward ended: its result to ``forward``'s waiter, or to ``forward_now``'s
        ``on_done``, which ends the request."""
        if self._forward is fwd:
            self._forward = None
        waiter = fwd._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(result)
            return
        assert fwd._on_done is not None
        self._call_done(fwd._on_done, result)
        self._conn.sync_request_done(self)  # (forward_now's handler has no task)

    def _call_done(self, on_done: Callable[[ForwardResult], None], result: ForwardResult) -> None:
        try:
            if isinstance(on_done, ForwardDone):
                done = on_done  # (compiled: typed, so called through the method table)
                done.forward_done(result)
            else:
                on_done(result)
        except Exception:
            log.exception("forward callback failed", extra={"target": self._target})

    # --- body plumbing ---
    def _take_body(self) -> list[bytes]:
        buf, self._body_buf = self._body_buf, None
        if buf is None:
            buf = _NO_BODY
        self._body_bytes = 0
        self._conn.resume_for_body()
        return buf

    def _restore_body(self, chunks: list[bytes]) -> None:
        buf = self._body_buf = chunks + (self._body_buf or [])
        self._body_bytes = sum(len(c) for c in buf)

    def on_body(self, data: bytes) -> None:
        self._body_read += len(data)
        fwd = self._forward
        if fwd is not None and fwd.streaming_body:
            fwd.send_body(data)
        elif self._response_done or self._started:
            return  # answered already: drop the rest
        else:
            buf = self._body_buf
            if buf is None:
                buf = self._body_buf = []
            buf.append(data)
            self._body_bytes += len(data)
            if self._body_bytes > _BODY_HIGH:
                self._conn.pause_for_body()

    def on_message_complete(self) -> None:
        self._body_done = True
        fwd = self._forward
        if fwd is not None and fwd.streaming_body:
            fwd.end_body()

    # --- response end ---
    def _close_after_response(self) -> bool:
        if not self._keep_alive or self._conn.closing or self._upgrade:
            self._response_close = True
        elif not self._body_done:
            remaining = self._content_length - self._body_read
            if self._chunked or remaining > _DISCARD_MAX:
                self._response_close = True
        return self._response_close

    def _response_finished(self) -> None:
        self._response_done = True
        self._body_buf = None
        self._body_bytes = 0
        self._conn.exchange_response_done(self)


class _Connection:
    """One client connection (an ``asyncio.Protocol`` by duck typing, so that it compiles to an
    extension type): parses requests, runs the handler, keeps the connection alive."""

    __slots__ = (
        "_current",
        "_fresh",
        "_head_bytes",
        "_head_connection",
        "_head_since",
        "_linger_handle",
        "_loop",
        "_parser",
        "_parsing",
        "_pause_body",
        "_pause_pipeline",
        "_pause_upstream",
        "_pipeline",
        "_reading_paused",
        "_server",
        "_starting",
        "_time",
        "_transport_write",
        "_tunnel",
        "_tunnel_early",
        "_url",
        "_write_paused",
        "client_ip",
        "closing",
        "idle_since",
        "lost",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        # the loop's clock and the transport's write, bound once (a method looked up per call
        # costs more)
        self._time = self._loop.time
        self._transport_write: Callable[[bytes], None] | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
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
        self._pause_body = self._pause_upstream = self._pause_pipeline = False
        self._reading_paused = False  # what this protocol last asked of its transport
        self._write_paused = False
        self._tunnel: Forward | None = None  # after a 101: bytes go straight upstream
        self._tunnel_early = b""  # bytes after an upgrade request's head, before the 101
        self.idle_since = self._time()  # when the last response ended (the keep-alive sweep)
        # When the head being read began (the header-timeout sweep), 0 when none is: the first
        # one's clock starts at accept (Go's ReadHeaderTimeout, nginx's client_header_timeout),
        # a later one's at its first byte.
        self._head_since = self.idle_since
        self._linger_handle: asyncio.TimerHandle | None = None
        self.closing = False
        self.lost = False

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
        method, target, length, keep_alive, body, raw = request
        self._head_since = 0.0  # (a whole head: none is being read)
        ex = _new_exchange(self)
        ex.raw_head = raw
        ex._method = method
        ex._target = target
        ex._content_length = length
        ex._keep_alive = keep_alive
        ex.arrived_at = self._time()
        if body:
            ex.on_body(body)
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
        self._parsing = ex = _new_exchange(self)
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
        self, ex: HttpExchange, handler: Callable[[Any], Awaitable[None] | None], arg: object
    ) -> None:
        """``handler(arg)`` takes ``ex`` on (the handler, or a ``forward_now``'s
        ``on_refused``): a coroutine it returns runs in a task; else the request has ended,
        unless a ``forward_now`` still runs."""
        try:
            if arg is ex and isinstance(handler, DirectHandler):
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

    def sync_request_done(self, ex: HttpExchange) -> None:
        """A request its handler took without a task has ended."""
        self._server.request_done()
        if not ex._started:
            ex.respond_now(500, b"handler returned without a response\n")

    async def _run(self, ex: HttpExchange, pending: Awaitable[None]) -> None:
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

    def exchange_response_done(self, ex: HttpExchange) -> None:
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

    def _close_lingering(self, ex: HttpExchange) -> None:
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
    def pause_for_body(self) -> None:
        if not self._pause_body:
            self._pause_body = True
            self._update_reading()

    def resume_for_body(self) -> None:
        if self._pause_body:
            self._pause_body = False
            self._update_reading()

    def pause_for_upstream(self, paused: bool) -> None:
        if self._pause_upstream is not paused:
            self._pause_upstream = paused
            self._update_reading()

    def _pause_reading_all(self) -> None:
        self._pause_pipeline = True
        self._update_reading()

    def _update_reading(self) -> None:
        pause = self._pause_body or self._pause_upstream or self._pause_pipeline
        if pause is self._reading_paused:
            return
        t = self.transport
        if t is None or t.is_closing():
            return
        self._reading_paused = pause
        if pause:
            t.pause_reading()
        else:
            t.resume_reading()

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def write(self, data: bytes) -> None:
        write = self._transport_write
        if write is not None and not self.lost:
            write(data)

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

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Close now if idle, else after the current response (``Connection: close``)."""
        self.closing = True
        if self.idle:
            self.close()


class Server:
    """The core's server: one handler for every request on ``host:port``.

    ``close()`` stops accepting and closes idle keep-alive connections (busy ones close after
    their current response); ``wait_closed(timeout)`` waits for the requests in flight.

    Client connections are bounded three ways (0 turns one off): a request head must be
    complete within ``header_timeout_s`` (else 408 and close; nginx's client_header_timeout,
    Go's ReadHeaderTimeout: the head only, never the body or the response); a keep-alive
    connection idle between requests for ``keepalive_timeout_s`` is closed (nginx's
    keepalive_timeout); at most ``max_connections`` are open (None: half the open-file limit,
    see :func:`default_max_connections`), and one more is closed at once, unanswered, as nginx
    does when its worker_connections are used up. One sweep per ``_SWEEP_MAX_S`` (or a quarter
    of the shortest timeout) checks every connection's timestamps: nothing is scheduled per
    request, and a timeout fires at most one period or two late.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        pool: UpstreamPool | None = None,
        header_timeout_s: float = 60.0,
        keepalive_timeout_s: float = 75.0,
        max_connections: int | None = None,
        on_bad_request: Callable[[], None] | None = None,
        on_header_timeout: Callable[[], None] | None = None,
        on_connection_refused: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.on_bad_request = on_bad_request
        self.on_header_timeout = on_header_timeout
        self.on_connection_refused = on_connection_refused
        self.pool = pool if pool is not None else UpstreamPool()
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_connections = (
            default_max_connections() if max_connections is None else max_connections
        )
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.bad_requests = 0
        self.header_timeouts = 0  # heads answered 408
        self.refused_connections = 0  # connections closed at once, over max_connections
        self._refused_logged = 0
        # the loop's time at the last sweep: a coarse clock for per-request timestamps
        self.now = 0.0
        shortest = min((t for t in (header_timeout_s, keepalive_timeout_s) if t > 0), default=4.0)
        self._sweep_period = min(max(shortest / 4, 0.05), _SWEEP_MAX_S)
        self._server: asyncio.Server | None = None
        self._idle_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._deadlines: Deadlines | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def start(
        self, host: str, port: int, *, backlog: int = 1024, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port``, or on ``sock`` (a bound socket, e.g. one handed over by file
        descriptor by the process that picked its port; ``host`` and ``port`` are then unused)."""
        loop = asyncio.get_running_loop()
        factory = lambda: cast(asyncio.Protocol, _Connection(self))  # noqa: E731
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=backlog)
        else:
            self._server = await loop.create_server(
                factory, host, port, backlog=backlog, reuse_address=True
            )
        self.now = loop.time()
        if self.header_timeout_s > 0 or self.keepalive_timeout_s > 0 or self.max_connections:
            self._sweep_handle = loop.call_later(self._sweep_period, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections past the header or the idle timeout; log refusals.

        One timer for the server instead of one per request. A later head's start is stamped
        with :attr:`now`, up to one period before its first byte, so its cutoff is one period
        further back: a head times out between ``header_timeout_s`` and that plus two periods
        after it began; an idle connection between ``keepalive_timeout_s`` and that plus one
        period after its last response.
        """
        now = self.now = loop.time()
        period = self._sweep_period
        header, keepalive = self.header_timeout_s, self.keepalive_timeout_s
        head_cutoff = now - header - period
        idle_cutoff = now - keepalive
        slow: list[_Connection] = []
        idle: list[_Connection] = []
        for c in self.connections:
            since = c._head_since
            if since > 0.0:
                if c._current is not None:
                    # a pipelined head behind a response in progress (reading pauses): its
                    # clock starts again once that response ends
                    c._head_since = now
                elif header > 0 and since <= head_cutoff:
                    slow.append(c)
                    continue
            if keepalive > 0 and c.idle and c.idle_since <= idle_cutoff:
                idle.append(c)
        for c in slow:
            c.head_timeout()
        for c in idle:
            c.close()
        refused = self.refused_connections - self._refused_logged
        if refused:
            self._refused_logged = self.refused_connections
            log.warning(
                "client connections refused over the limit",
                extra={"refused": refused, "max_connections": self.max_connections},
            )
        self._sweep_handle = loop.call_later(period, self._sweep, loop)

    def refuse(self, conn: _Connection) -> None:
        """A connection over ``max_connections``: closed at once, unanswered, and counted."""
        self.refused_connections += 1
        conn.close()
        if self.on_connection_refused is not None:
            self.on_connection_refused()

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def deadlines(self) -> Deadlines:
        """The total and response-start timeouts of this server's forwarded requests."""
        d = self._deadlines
        if d is None:
            d = self._deadlines = Deadlines(asyncio.get_running_loop())
        return d

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task the server keeps a reference to until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle_event is not None:
            self._idle_event.set()

    def close(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()

    async def wait_closed(self, timeout_s: float | None = None) -> bool:
        """Wait until no request is in flight (True), or ``timeout_s`` passes (False); then
        close every connection left."""
        ok = True
        if self.in_flight:
            self._idle_event = asyncio.Event()
            try:
                async with asyncio.timeout(timeout_s):
                    while self.in_flight:
                        self._idle_event.clear()
                        await self._idle_event.wait()
            except TimeoutError:
                ok = False
        for conn in list(self.connections):
            if conn.idle or not ok:
                conn.abort() if not ok else conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.pool.close()
        if self._deadlines is not None:
            self._deadlines.close()
        return ok


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    pool: UpstreamPool | None = None,
    header_timeout_s: float = 60.0,
    keepalive_timeout_s: float = 75.0,
    max_connections: int | None = None,
    on_bad_request: Callable[[], None] | None = None,
    on_header_timeout: Callable[[], None] | None = None,
    on_connection_refused: Callable[[], None] | None = None,
) -> Server:
    """Start a :class:`Server` on ``host:port`` (0 = an ephemeral port, see ``Server.port``);
    the limits are :class:`Server`'s."""
    server = Server(
        handler,
        pool=pool,
        header_timeout_s=header_timeout_s,
        keepalive_timeout_s=keepalive_timeout_s,
        max_connections=max_connections,
        on_bad_request=on_bad_request,
        on_header_timeout=on_header_timeout,
        on_connection_refused=on_connection_refused,
    )
    await server.start(host, port)
    return server
