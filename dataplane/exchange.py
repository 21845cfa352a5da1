"""The request as a component's handler sees it: :class:`HttpExchange` implements
:class:`dataplane.api.Exchange` (its answers, and its forwards through :mod:`dataplane.forward`),
with the base classes a compiled handler and ``forward_now`` callback derive from
(:class:`DirectHandler`, :class:`ForwardDone`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import cast

from dataplane.api import (
    CLIENT_DISCONNECTED,
    NOT_SENT,
    UPSTREAM_CONNECT,
    Exchange,
    ForwardResult,
    Timeouts,
    UpstreamConnectError,
)
from dataplane.forward import Forward
from dataplane.headers import Edits, edited_request_head
from dataplane.messages import HeaderNames, find_parsed_headers, find_raw_headers, raw_headers
from dataplane.request import ClientConnection, ForwardContext, Request
from dataplane.route import NO_TIMEOUTS, Route
from dataplane.tee import tee_forward

log = logging.getLogger("zeroserve.dataplane.exchange")

_BODY_HIGH = 256 * 1024  # request-body bytes held for a handler that has not forwarded yet
_CLIENT_GONE = 499  # status in a ForwardResult when the client left first (nginx's convention)


def new_forward(
    ctx: ForwardContext,
    ex: Request,
    head: bytes,
    route: Route,
    on_done: Callable[[ForwardResult], None] | None = None,
    on_refused: Callable[[UpstreamConnectError], Awaitable[None]] | None = None,
    waiter: asyncio.Future[ForwardResult] | None = None,
) -> Forward:
    """``Forward(ctx, ex, head, route, on_done, on_refused, waiter)``, made without a
    Python-level call (nor its keyword parsing) when compiled; a
    :class:`dataplane.tee.TeeForward` when the route's tee wants the request's bytes."""
    # (route.tee: the one cost of tees when none is set)
    fwd = Forward.__new__(Forward) if route.tee is None else tee_forward(ex, route.tee)
    fwd._init(ctx, ex, head, route, on_done, on_refused, waiter)
    return fwd


def new_exchange(conn: ClientConnection) -> HttpExchange:
    """``HttpExchange(conn)``, made without a Python-level call when compiled."""
    ex = HttpExchange.__new__(HttpExchange)
    ex._init(conn)
    return ex


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


class HttpExchange(Request):
    """One request on a client connection, as the handler sees it: implements
    :class:`dataplane.api.Exchange` over the :class:`dataplane.request.Request` it is."""

    __slots__ = ()

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

    def find_headers(self, names: HeaderNames) -> list[str | None]:
        """The value of the first header of each of ``names`` (None where there is none), in
        one pass: over the raw head when the request was read whole (a value decoded only
        when asked for), else over the parsed headers. The list is ``names.found``, refilled by
        the next lookup with the same names: read it before the handler returns."""
        raw = self.raw_head
        if raw is not None:
            return find_raw_headers(raw, names)
        return find_parsed_headers(self._header_list(), names)

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

    def _request_head(self, edits: Edits) -> bytes:
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
            self._conn.xff,
            framing,
            edits,
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
        route: Route | None = None,
        set_headers: Iterable[tuple[str, str]] = (),
        remove_headers: Iterable[str] = (),
        remove_prefixes: Iterable[str] = (),
        timeouts: Timeouts = NO_TIMEOUTS,
    ) -> ForwardResult:
        if route is None:
            route = Route(
                remove_headers=remove_headers, remove_prefixes=remove_prefixes, timeouts=timeouts
            )
            remove_headers = ()
        elif remove_prefixes or timeouts is not NO_TIMEOUTS:
            raise TypeError("forward: with a route, its prefixes and timeouts are the route's")
        refused = self._refusal()
        if refused is not None:
            return refused
        edits = route.edits_for(tuple(set_headers), tuple(remove_headers))
        head = self._request_head(edits)
        waiter: asyncio.Future[ForwardResult] = self._conn._loop.create_future()
        fwd = new_forward(self._conn.ctx, self, head, route, None, None, waiter)
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
        route: Route,
        set_headers: tuple[tuple[str, str], ...] = (),
        remove_headers: tuple[str, ...] = (),
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
        head = self._request_head(route.edits_for(set_headers, remove_headers))
        fwd = new_forward(self._conn.ctx, self, head, route, on_done, on_refused, None)
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
        self.respond_now(502, f"upstream connect error: {exc}\n".encode(), NOT_SENT)
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

    # --- the body, from the connection's parser ---
    def on_body(self, data: bytes) -> None:
        self._body_read += len(data)
        fwd: Forward | None = self._forward
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
            if self._body_waiter is not None:  # read_body: held up to its limit
                if self._body_bytes > self._body_limit:
                    self._wake_body_reader(False)
                    self._conn.pause_for_body()
            elif self._body_bytes > _BODY_HIGH:
                self._conn.pause_for_body()

    def on_message_complete(self) -> None:
        self._body_done = True
        fwd: Forward | None = self._forward
        if fwd is not None and fwd.streaming_body:
            fwd.end_body()
        elif self._body_waiter is not None:
            self._wake_body_reader(True)

    def _wake_body_reader(self, complete: bool) -> None:
        waiter = self._body_waiter
        self._body_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(complete)

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body (``b""`` when there is none), once it has all arrived; None
        when it is longer than ``limit`` bytes (said by its ``Content-Length`` at once, else
        when that much has arrived). Either way what was read stays held for a later
        :meth:`forward` (which sends it, then streams the rest), so a handler may look at a
        body and still forward the request as it came. Before any forward or answer."""
        if self._forward is not None or self._started:
            raise RuntimeError("read_body: the request was already forwarded or answered")
        if not self._body_done:
            if self._content_length > limit or self._body_bytes > limit:
                return None
            self._send_continue()
            waiter: asyncio.Future[bool] = self._conn._loop.create_future()
            self._body_waiter = waiter
            self._body_limit = limit
            self._conn.resume_for_body()
            try:
                if not await waiter:
                    return None
            finally:
                self._body_waiter = None
        buf = self._body_buf
        if not buf:
            return b""
        if len(buf) == 1:
            return bytes(buf[0])
        body = b"".join(buf)
        self._body_buf = [body]
        return body
