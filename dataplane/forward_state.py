"""The state of one forwarded request (the base of :class:`dataplane.forward.Forward`, which
drives it): what it was handed when made, how far the request and the response have gone, and
its timers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dataplane.api import ForwardResult, UpstreamConnectError
from dataplane.deadlines import Deadline
from dataplane.request import ForwardContext, Request
from dataplane.route import Route
from dataplane.upstream import ResponseSink, UpstreamConnection

_NO_HEADERS: list[tuple[bytes, bytes]] = []  # shared, never added to


class ForwardState(ResponseSink):
    """See the module doc; a :class:`dataplane.upstream.ResponseSink` by its subclass."""

    __slots__ = (
        "_body_sent",
        "_chunked_in",
        "_chunked_out",
        "_close_delimited",
        "_conn",
        "_ctx",
        "_ex",
        "_head",
        "_headers",
        "_idle_handle",
        "_idle_s",
        "_informational",
        "_kept",
        "_kept_bytes",
        "_last_write",
        "_loop",
        "_on_done",
        "_on_refused",
        "_out",
        "_replay",
        "_request_sent",
        "_resolved",
        "_route",
        "_start",
        "_start_s",
        "_status",
        "_total",
        "_total_s",
        "_tunnel",
        "_upstream",
        "_waiter",
        "streaming_body",
    )

    def __init__(
        self,
        ctx: ForwardContext,
        ex: Request,
        head: bytes,
        route: Route,
        on_done: Callable[[ForwardResult], None] | None = None,
        on_refused: Callable[[UpstreamConnectError], Awaitable[None]] | None = None,
        waiter: asyncio.Future[ForwardResult] | None = None,
    ) -> None:
        self._init(ctx, ex, head, route, on_done, on_refused, waiter)

    def _init(
        self,
        ctx: ForwardContext,
        ex: Request,
        head: bytes,
        route: Route,
        on_done: Callable[[ForwardResult], None] | None,
        on_refused: Callable[[UpstreamConnectError], Awaitable[None]] | None,
        waiter: asyncio.Future[ForwardResult] | None,
    ) -> None:
        self._ctx = ctx
        self._ex = ex  # (typed from here: read it back rather than the argument)
        self._head = head
        self._route = route
        self._total_s = self._route.total_s
        self._start_s = self._route.response_start_s
        self._idle_s = self._route.idle_s
        self._loop = self._ctx.loop
        self._conn: UpstreamConnection | None = None
        self._on_done = on_done
        self._on_refused = on_refused
        self._waiter = waiter  # Exchange.forward's: the result, or the refusal, goes here
        self._upstream = ""
        self._resolved = False
        self._chunked_in = self._ex._chunked
        # the upstream connection may read a whole simple response without its parser (not
        # for HEAD, whose response announces a body it does not have, nor for an upgrade)
        self.simple_ok = self._ex._method != "HEAD" and not self._ex._upgrade
        self.streaming_body = False  # client body chunks go straight upstream
        self._replay: list[bytes] | None = None  # the whole body, kept until a response byte
        # a streamed body's bytes that went upstream, while they are few (forward._KEEP_MAX)
        self._kept: list[bytes] | None = None
        self._kept_bytes = 0
        self._body_sent = False  # streamed body bytes went upstream: no retry
        self._request_sent = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = _NO_HEADERS  # (the parser's, once read)
        self._informational = False
        self._tunnel = False  # the upstream answered 101 to an upgrade: bytes flow both ways
        self._chunked_out = False
        self._close_delimited = False
        self._out: list[bytes] = []  # response bytes parsed from one upstream read, not yet written
        self._last_write = 0.0
        # its total and response-start deadlines in the server's Deadlines (made when armed)
        self._total: Deadline | None = None
        self._start: Deadline | None = None
        self._idle_handle: asyncio.TimerHandle | None = None

    def _cancel_start_timer(self) -> None:
        d = self._start
        if d is not None and d.queue is not None:
            self._ctx.deadlines().remove(d)

    def cleanup_timers(self) -> None:
        total = self._total
        start = self._start
        if (total is not None and total.queue is not None) or (
            start is not None and start.queue is not None
        ):
            deadlines = self._ctx.deadlines()
            if total is not None:
                deadlines.remove(total)
            if start is not None:
                deadlines.remove(start)
        # (a deadline refers to this forward: dropped, they leave no cycle for the collector)
        self._total = self._start = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _has_length(self) -> bool:
        return any(
            len(n) == 17 and n.lower() == b"transfer-encoding" for n, _ in self._headers
        ) or any(len(n) == 14 and n.lower() == b"content-length" for n, _ in self._headers)
