"""The contract of the forwarding core, shared by the queue-proxy and the activator.

The core (``dataplane.server``) parses HTTP/1.1 itself (uvloop protocols + httptools) and, per
request, calls the component's :data:`Handler` with an :class:`Exchange`. The handler decides:
answer at once (``respond``), or wait (breaker, buffering, load balancing: as long as it likes) and
then ``forward`` to an upstream of its choice, keeping its breaker slot for as long as ``forward``
runs. Bodies stream both ways; the core drops hop-by-hop headers and maintains
``X-Forwarded-For``/``Forwarded``.

The implementation is :func:`dataplane.server.serve` (or :class:`dataplane.server.Server`:
``start``, ``port``, ``in_flight``, ``close()``, ``wait_closed(timeout_s)``). Its rules beyond
this contract: if the client disconnects while the handler waits (before ``forward``), the
handler's task is cancelled, so a breaker slot is given back at once; during ``forward`` the
result says ``client-disconnected`` (status 499 when no response was sent). A handler that
returns without answering gets 500. A ``Connection: Upgrade`` request (a websocket) is
forwarded with its ``Upgrade``; if the upstream answers 101 the two connections become one
byte tunnel, with flow control and no timeout, until either side closes; the request then ends
as ``ForwardResult(101, True)`` (its breaker slot is held as long). Any other answer is passed
on and the client connection closes after it. A stale pooled upstream connection that fails
before any response byte is retried once on a fresh one when no body byte was streamed yet
(bodies received whole are replayed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, Literal, NamedTuple, Protocol

from dataplane.headers import NOT_SENT_HEADER as _NOT_SENT_HEADER
from dataplane.messages import HeaderNames
from dataplane.route import NO_TIMEOUTS, Route
from dataplane.route import Timeouts as Timeouts  # (part of the contract: re-exported)


class UpstreamConnectError(Exception):
    """The upstream refused the connection before any byte of the request was sent.

    Nothing was written to the client: the handler may retry on another upstream, or answer.
    """


ForwardReason = Literal[
    "",
    "timeout:total",
    "timeout:response-start",
    "timeout:idle",
    "upstream-connect",
    "upstream-error",
    "client-disconnected",
]
"""Why a forwarded request did not complete ("" when it did): a closed set."""
TIMEOUT_TOTAL: Final = "timeout:total"
"""The request's total timeout passed (504, or the response cut short)."""
TIMEOUT_RESPONSE_START: Final = "timeout:response-start"
"""No response byte within the response-start timeout after the request went upstream (504)."""
TIMEOUT_IDLE: Final = "timeout:idle"
"""Nothing written to the client for the idle timeout (504, or the response cut short)."""
UPSTREAM_CONNECT: Final = "upstream-connect"
"""A new connection to the upstream was refused and nothing was sent (502 from the core: a
``forward_now`` without ``on_refused``)."""
UPSTREAM_ERROR: Final = "upstream-error"
"""The upstream failed after the request went out: closed early, or a malformed response (502,
or the response cut short)."""
CLIENT_DISCONNECTED: Final = "client-disconnected"
"""The client left first (status 499 when no response was sent)."""
FORWARD_REASONS: frozenset[ForwardReason] = frozenset(
    (
        "",
        TIMEOUT_TOTAL,
        TIMEOUT_RESPONSE_START,
        TIMEOUT_IDLE,
        UPSTREAM_CONNECT,
        UPSTREAM_ERROR,
        CLIENT_DISCONNECTED,
    )
)


NOT_SENT_HEADER: Final = _NOT_SENT_HEADER
"""``Zeroserve-Not-Sent``: a header on the 502 a component answers when its upstream refused a new connection (its
value: ``upstream-connect``): nothing of the request went further, so whoever sent it may send
it to another upstream. A forward that still holds the whole request body treats such a 502
from its upstream as a refused connection (:class:`UpstreamConnectError`): the activator then
retries the request on another pod, as it does when the pod itself refuses. It covers the
moment between a model server's crash and its pod leaving the endpoints."""
NOT_SENT: Final = ((NOT_SENT_HEADER, UPSTREAM_CONNECT),)
"""The headers of such a 502."""


class ForwardResult(NamedTuple):
    """How a forwarded request ended: the status sent to the client and whether it completed.

    (A named tuple: one per request, and a frozen dataclass costs several times more to make.)
    """

    status: int
    completed: bool
    reason: ForwardReason = ""  # one of FORWARD_REASONS


class Exchange(Protocol):
    """One client request, as the core hands it to a component's handler."""

    @property
    def method(self) -> str: ...

    @property
    def target(self) -> str:
        """The raw request target (path and query)."""
        ...

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        """The request headers as received, in order (names as sent)."""
        ...

    @property
    def raw_head(self) -> bytes | None:
        """The request line and header lines (each ending in CRLF) exactly as received, when
        the request was read whole in its plain form (``dataplane.messages.simple_request``;
        ``dataplane.messages.raw_line`` reads its lines); else None. A handler on the hot path
        may read the few headers it needs here instead of having ``headers`` made."""
        ...

    @property
    def client(self) -> str:
        """The client's IP address."""
        ...

    @property
    def arrived_at(self) -> float:
        """Loop time when the request head was parsed."""
        ...

    def header(self, name: str) -> str | None:
        """The first value of a header, looked up case-insensitively."""
        ...

    async def respond(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Answer at once (content-type text/plain unless given); the request body is discarded."""
        ...

    def respond_now(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """:meth:`respond` without the await."""
        ...

    def find_headers(self, names: HeaderNames) -> list[str | None]:
        """The value of the first header of each of ``names`` (a
        :class:`dataplane.messages.HeaderNames` made once), None where there is none: the one
        header scan a handler's hot path needs, over the raw head when there is one. The list
        is the names' own (``names.found``), refilled by the next lookup: read it at once."""
        ...

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body (``b""`` when none) once it has arrived, or None when it is
        longer than ``limit`` bytes. What was read stays held: a later :meth:`forward` sends
        it, then streams the rest. Only before the request is forwarded or answered."""
        ...

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
        """Send the request to ``upstream`` (``host:port``) and stream the response back.

        Raises :class:`UpstreamConnectError` if the connection failed before anything was sent
        (retry allowed). Any later failure is answered by the core (502 with the reason, 504
        for a timeout) and reported in the result. ``route`` (a
        :class:`dataplane.route.Route`, made once per revision) gives the header edits and the
        timeouts; without one, ``remove_prefixes`` and ``timeouts`` make one for this call.
        Header edits: ``remove_headers`` and the route's removals (case-insensitive) are
        dropped, then ``set_headers`` replace any header of the same name (a ``Host`` here sets
        the upstream Host).
        """
        ...

    def forward_now(
        self,
        upstream: str,
        on_done: Callable[[ForwardResult], None],
        route: Route,
        set_headers: tuple[tuple[str, str], ...] = (),
        remove_headers: tuple[str, ...] = (),
        on_refused: Callable[[UpstreamConnectError], Awaitable[None]] | None = None,
    ) -> None:
        """:meth:`forward` without a task: for a handler that need not wait, and returns None
        after calling it (from a handler's coroutine, await :meth:`forward`: RuntimeError).

        The arguments may also be given by position, in this order (a hot path does: no
        keyword dictionary is made per call).

        The request goes out at once on an idle pooled connection to ``upstream``, or on a new
        one dialed meanwhile; ``on_done`` is called exactly once with the result (at once if
        the client has already left), and the request ends after ``on_done`` returns. A stale
        pooled connection is retried once on a new one. If a new connection is refused:
        without ``on_refused`` the core answers 502 (the result's reason is
        ``upstream-connect``); with it, nothing is answered and ``on_done`` is not called:
        ``on_refused(error)`` returns a coroutine that continues the request as the handler's
        own would (the request body is kept for :meth:`forward`), or None having answered.
        """
        ...


class Tee(Protocol):
    """A copy of one forwarded request's bytes and its response's, as they pass (payload
    logging, the primary's side of a shadow comparison): made by a :class:`TeeFactory` when the
    request's first forward is made, and kept for its retries. Called in the event loop by the
    core, after the bytes went on their way; it must not block, and what it raises is logged
    and dropped (the request goes on). The request body's bytes come once, even when a retry
    sends them again: after :meth:`request_end` (``request_done`` true) no more come."""

    request_done: bool
    """The request's body has been seen whole (set by :meth:`request_end`)."""

    def request_body(self, chunk: bytes) -> None:
        """Some of the request's body, in order (as it went upstream)."""
        ...

    def request_end(self) -> None:
        """The request's body is complete (also for a request without one)."""
        ...

    def response_head(self, status: int, lines: bytes) -> None:
        """The upstream's response head: its status and its end-to-end header lines as
        received (``Name: value`` lines, each ending in CRLF)."""
        ...

    def response_body(self, chunk: bytes) -> None:
        """Some of the response's body, unframed, in order (as it went to the client)."""
        ...

    def end(self, result: ForwardResult) -> None:
        """The forward ended (after the client got what it got): the result says how. A
        response the core answered itself (502, 504) comes without a head."""
        ...


class TeeFactory(Protocol):
    """Given to a :class:`dataplane.route.Route` (``tee=``): decides per request whether a
    copy of its bytes is wanted. With none (the usual case) a forward costs one attribute test
    more."""

    def start(self, ex: Exchange) -> Tee | None:
        """A tee for this request (called once, when its first forward is made), or None."""
        ...


Handler = Callable[[Exchange], Awaitable[None] | None]
"""Called once per request. It returns an awaitable (a coroutine) when it must wait, which
the core runs in a task; or None when it has already answered (``respond_now``) or handed the
request to :meth:`Exchange.forward_now`."""
