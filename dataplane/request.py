"""What a forward needs of the client side, below the classes that implement it.

:class:`Request` holds one request's facts and owns its response's progress (started, done,
closing, the body held for a forward); :class:`ClientConnection` is the client connection's
writes and flow control; :class:`ForwardContext` is what every forward of one server shares.
:class:`dataplane.exchange.HttpExchange` and :class:`dataplane.connection.Connection` derive
from the first two; :mod:`dataplane.forward` depends only on this module (and the upstream
side), so the core's modules import one way: request ← forward ← exchange ← connection ← server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from dataplane.api import ForwardResult, UpstreamConnectError
from dataplane.deadlines import Deadlines
from dataplane.headers import REASONS
from dataplane.upstream import UpstreamPool

_DISCARD_MAX = 256 * 1024  # body left unread after an early answer: read and drop, else close
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY: list[bytes] = []  # what _take_body gives when nothing is buffered (never added to)


class ForwardContext:
    """What every forward of one server is handed when it is made: the upstream pool, the
    deadlines of the forwards' timeouts, the loop and its clock, and a home for the tasks a
    forward starts (a dial)."""

    __slots__ = ("_deadlines", "_tasks", "loop", "pool", "time")

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.time: Callable[[], float] = loop.time  # (bound once: a lookup per call costs)
        self._deadlines: Deadlines | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def deadlines(self) -> Deadlines:
        """The total and response-start timeouts of the forwards (made on first use)."""
        d = self._deadlines
        if d is None:
            d = self._deadlines = Deadlines(self.loop)
        return d

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task kept referenced until it ends."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._deadlines is not None:
            self._deadlines.close()


class ClientConnection:
    """The client connection as a forward and a request see it (the base of
    :class:`dataplane.connection.Connection`, which parses and runs the handler): writes,
    aborting, and reading paused while the request's body waits or the upstream is slow."""

    __slots__ = (
        "_loop",
        "_pause_body",
        "_pause_pipeline",
        "_pause_upstream",
        "_reading_paused",
        "_time",
        "_transport_write",
        "_write_paused",
        "client_ip",
        "closing",
        "ctx",
        "lost",
        "transport",
        "xff",
    )

    def __init__(self, ctx: ForwardContext) -> None:
        self._init_client(ctx)

    def _init_client(self, ctx: ForwardContext) -> None:
        self.ctx = ctx
        self._loop = ctx.loop
        self._time = ctx.time
        self._transport_write: Callable[[bytes], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.xff = b""  # the X-Forwarded-For line of a request from client_ip without one
        self._pause_body = self._pause_upstream = self._pause_pipeline = False
        self._reading_paused = False  # what this protocol last asked of its transport
        self._write_paused = False
        self.closing = False
        self.lost = False

    # --- what the subclass does: requests and their handlers ---
    def exchange_response_done(self, ex: Request) -> None:
        raise NotImplementedError

    def call_handler(
        self, ex: Request, handler: Callable[[Any], Awaitable[None] | None], arg: object
    ) -> None:
        raise NotImplementedError

    def sync_request_done(self, ex: Request) -> None:
        raise NotImplementedError

    def start_tunnel(self, fwd: Any) -> None:
        raise NotImplementedError

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

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Request:
    """One request on a client connection: what was read of it, and its response's progress
    (the one owner of both: the connection parses into it, a forward and the handler's
    answers move it on). The base of :class:`dataplane.exchange.HttpExchange`."""

    __slots__ = (
        "_body_buf",
        "_body_bytes",
        "_body_done",
        "_body_limit",
        "_body_read",
        "_body_waiter",
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
        "_tee",
        "_upgrade",
        "arrived_at",
        "raw_head",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self._init(conn)

    def _init(self, conn: ClientConnection) -> None:
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
        # a handler's read_body: woken with True when the body is complete, False when over
        self._body_waiter: asyncio.Future[bool] | None = None
        self._body_limit = 0
        self._continue_sent = False
        self._forward: Any = None  # its dataplane.forward.Forward, while one runs
        self._started = False  # a response head went out
        self._response_done = False
        self._response_close = False
        self._task: asyncio.Task[None] | None = None
        # the request's dataplane.api.Tee, dataplane.tee.NO_TEE when its route's factory
        # declined, None before its first forward asked (only a route with a tee asks)
        self._tee: Any = None

    def respond_now(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Answer at once (content-type text/plain unless given); the body left unread is
        discarded. Nothing happens once a response has started or the client has left."""
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

    # --- what a forward reports (the subclass hands it on) ---
    def _forward_refused(self, fwd: Any, exc: UpstreamConnectError) -> None:
        raise NotImplementedError

    def _forward_done(self, fwd: Any, result: ForwardResult) -> None:
        raise NotImplementedError

    # --- body plumbing ---
    def _send_continue(self) -> None:
        """``100 Continue`` to a client that asked for it, once, before any body byte."""
        if self._expect_continue and not self._continue_sent and self._body_read == 0:
            self._continue_sent = True
            self._conn.write(_CONTINUE)

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
