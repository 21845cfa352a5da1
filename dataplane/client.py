"""Requests a component makes itself, with the whole body and the whole response in hand (a
batch sent to the model server, a mirrored copy, an event to a sink), on the core's upstream
connections and pool: :func:`fetch`.

Not the forwarding path (that streams a client's request and its response through
:mod:`dataplane.forward`): here a response is collected whole, up to a size limit, by a
:class:`dataplane.upstream.ResponseSink` of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import NamedTuple

from dataplane.api import UpstreamConnectError
from dataplane.messages import SimpleResponse
from dataplane.upstream import ResponseSink, UpstreamConnection, UpstreamPool

MAX_BODY = 64 * 1024 * 1024
"""The largest response body :func:`fetch` collects by default."""


class UpstreamFailedError(Exception):
    """The upstream failed after the request went out: it closed early, answered something
    that is not HTTP, or sent a body over the limit. The message says which."""


class ClientResponse(NamedTuple):
    """A whole response: its status, its headers as received (names as sent), its body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header, looked up case-insensitively."""
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None


class _Collect(ResponseSink):
    """Collects one response on one connection into a future: the response, None when a
    reused connection closed before any of it (the caller tries a fresh one), or an error."""

    __slots__ = ("chunks", "conn", "future", "keep_alive", "max_body", "received", "size", "status")

    def __init__(
        self, conn: UpstreamConnection, future: asyncio.Future[ClientResponse | None], max_body: int
    ) -> None:
        super().__init__()
        self.conn = conn
        self.future = future
        self.max_body = max_body
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.received = False  # any byte of the response
        self.keep_alive = False  # the connection may carry another request after this one

    def _fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def on_headers_complete(self) -> None:
        self.received = True
        self.status = self.conn.parser.get_status_code()

    def on_simple_response(self, response: SimpleResponse) -> None:  # (simple_ok is False)
        raise RuntimeError("a collected response is always parsed")

    def on_body(self, body: bytes) -> None:
        self.received = True
        self.size += len(body)
        if self.size > self.max_body:
            self.conn.abort()
            self._fail(UpstreamFailedError(f"response body over {self.max_body} bytes"))
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.conn.parser.should_keep_alive()  # (read while in the callback)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.conn.headers]
        if not self.future.done():
            self.future.set_result(ClientResponse(self.status, headers, b"".join(self.chunks)))

    def on_upgraded(self, rest: bytes) -> None:
        self.conn.abort()
        self._fail(UpstreamFailedError("the upstream switched protocols"))

    def on_tunnel_data(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.future.done():
            return
        if self.conn.reused and not self.received:
            self.future.set_result(None)  # stale keep-alive connection: try a fresh one
            return
        detail = f": {exc}" if exc is not None else ""
        self._fail(UpstreamFailedError(f"the upstream closed the connection early{detail}"))

    def upstream_error(self, reason: str) -> None:
        self._fail(UpstreamFailedError(reason))

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


def request_head(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]], length: int
) -> bytes:
    """An HTTP/1.1 request head with ``Host`` and ``Content-Length`` (any of ``headers`` by
    those names, or hop-by-hop ``Connection``/``Transfer-Encoding``, is left out)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"]
    for name, value in headers:
        if name.lower() not in _FRAMING:
            lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


_FRAMING = frozenset(("host", "content-length", "transfer-encoding", "connection"))


async def fetch(
    pool: UpstreamPool,
    hostport: str,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str | None = None,
    max_body: int = MAX_BODY,
) -> ClientResponse:
    """Send one request to ``hostport`` on a pooled keep-alive connection (or a new one) and
    collect its whole response. A pooled connection found closed before any response byte is
    retried once on a new one. Raises :class:`UpstreamConnectError` when a new connection is
    refused (nothing sent) and :class:`UpstreamFailedError` when the upstream fails after the
    request went out. Bound the time with ``asyncio.timeout``: a cancelled fetch aborts its
    connection."""
    head = request_head(method, target, host or hostport, headers, len(body))
    message = head + body if body else head
    loop = asyncio.get_running_loop()
    conn = pool.take_idle(hostport, loop.time())
    for _ in range(2):
        if conn is None:
            conn = await pool.connect(hostport)
        future: asyncio.Future[ClientResponse | None] = loop.create_future()
        sink = conn.sink = _Collect(conn, future, max_body)
        conn.write(message)
        try:
            response = await future
        except BaseException:
            conn.abort()
            raise
        if response is None:  # a stale pooled connection: once more on a new one
            conn = None
            continue
        if conn.closed or not sink.keep_alive:
            conn.sink = None
            conn.close()
        else:
            pool.release(conn, loop.time())
        return response
    raise UpstreamConnectError(f"{hostport} closed a new connection before answering")
