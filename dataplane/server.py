"""The forwarding core's server: listens, accepts :class:`dataplane.connection.Connection`s,
bounds them (header and idle timeouts, a connection cap) and drains them (see ``api.py``)."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Callable
from typing import cast

from dataplane.api import Handler
from dataplane.connection import Connection, ServerState
from dataplane.request import ForwardContext
from dataplane.upstream import UpstreamPool

log = logging.getLogger("zeroserve.dataplane.server")

_SWEEP_MAX_S = 1.0  # the longest period of the connection sweep (header and idle timeouts)


def default_max_connections() -> int:
    """The client connections a server takes when not told (0: no cap): half the process's
    soft open-file limit, since each proxied request holds a client and an upstream socket
    (1024 → 512, nginx's ``worker_connections`` default; Kubernetes' usual 1048576 → 524288).
    Past it a connection is refused cleanly rather than the process failing with EMFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else soft // 2


class Server(ServerState):
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
        super().__init__(
            handler,
            pool if pool is not None else UpstreamPool(),
            header_timeout_s=header_timeout_s,
            keepalive_timeout_s=keepalive_timeout_s,
            max_connections=(
                default_max_connections() if max_connections is None else max_connections
            ),
            on_bad_request=on_bad_request,
            on_header_timeout=on_header_timeout,
            on_connection_refused=on_connection_refused,
        )
        self._refused_logged = 0
        shortest = min((t for t in (header_timeout_s, keepalive_timeout_s) if t > 0), default=4.0)
        self._sweep_period = min(max(shortest / 4, 0.05), _SWEEP_MAX_S)
        self._server: asyncio.Server | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def start(
        self, host: str, port: int, *, backlog: int = 1024, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port``, or on ``sock`` (a bound socket, e.g. one handed over by file
        descriptor by the process that picked its port; ``host`` and ``port`` are then unused)."""
        loop = asyncio.get_running_loop()
        self.ctx = ForwardContext(self.pool, loop)
        factory = lambda: cast(asyncio.Protocol, Connection(self))  # noqa: E731
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
        slow: list[Connection] = []
        idle: list[Connection] = []
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

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

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
        if self.ctx is not None:
            self.ctx.close()
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
