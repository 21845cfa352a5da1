"""One forwarded request: request head and body upstream, response back, timeouts, one retry.

Driven by callbacks from both sides (no per-chunk awaits): the client's body chunks are written
upstream as they are parsed and the upstream's response chunks are written to the client as they
are parsed; each side's write back-pressure pauses reading on the other side.
"""

from __future__ import annotations

from dataplane.api import (
    CLIENT_DISCONNECTED,
    TIMEOUT_IDLE,
    TIMEOUT_RESPONSE_START,
    TIMEOUT_TOTAL,
    UPSTREAM_ERROR,
    ForwardReason,
    ForwardResult,
    UpstreamConnectError,
)
from dataplane.deadlines import new_deadline
from dataplane.forward_state import ForwardState
from dataplane.headers import response_head, says_not_sent, scan_response_headers, status_line
from dataplane.messages import SimpleResponse
from dataplane.upstream import UpstreamConnection

# a deadline's kind → the result's reason and the 504's body
_TIMEOUT_KINDS: dict[str, tuple[ForwardReason, str]] = {
    "total": (TIMEOUT_TOTAL, "request timeout"),
    "response-start": (TIMEOUT_RESPONSE_START, "response start timeout"),
    "idle": (TIMEOUT_IDLE, "idle timeout"),
}
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
# The result of a response that went out whole, made once per status at import (a named tuple
# runs a Python-level ``__new__`` each time it is made): a constant table, not a cache.
_COMPLETED: dict[int, ForwardResult] = {s: ForwardResult(s, True) for s in range(100, 600)}


def _completed(status: int) -> ForwardResult:
    result = _COMPLETED.get(status)
    return result if result is not None else ForwardResult(status, True)


_LAST_CHUNK = b"0\r\n\r\n"
_KEEP_MAX = 64 * 1024
"""A streamed request body is kept (for a retry after a not-sent 502) up to this many bytes."""


class Forward(ForwardState):
    """The state of one forwarded request (a :class:`dataplane.upstream.ResponseSink`).

    One way to drive it: :meth:`start` (``Exchange.forward_now``) takes an idle pooled
    connection, or dials one in a task of the server's, and the result goes to the exchange
    (``Request._forward_done``), which calls ``on_done`` or, for ``Exchange.forward``, sets
    the future it awaits. A connection refused before any byte went out goes to
    ``Request._forward_refused``. It is handed its server's :class:`ForwardContext` (the pool,
    the deadlines, the clock) when made, and sees the client side only through
    :class:`dataplane.request.Request` and its connection. Its fields are
    :class:`dataplane.forward_state.ForwardState`'s.
    """

    __slots__ = ()

    def start(self, upstream: str) -> None:
        """Forward to ``upstream`` (``host:port``): on its newest idle pooled connection, else
        on a new one, dialed in a task (the request's total timeout runs meanwhile)."""
        self._upstream = upstream
        self._arm_total()
        ctx = self._ctx
        conn = ctx.pool.take_idle(upstream, ctx.time())
        if conn is not None:
            self._attach(conn, None)
        else:
            ctx.spawn(self._dial(None))

    async def _dial(self, replay: list[bytes] | None) -> None:
        """A new connection: the first (no idle one), or the one retry after a stale pooled
        connection failed (``replay``: the body that went out on it). If it is refused, the
        exchange decides (:meth:`Request._forward_refused`): nothing has been answered."""
        try:
            conn = await self._ctx.pool.connect(self._upstream)
        except UpstreamConnectError as exc:
            if self._resolved:  # the total timeout or the client's leaving ended it meanwhile
                return
            self._resolved = True
            self.cleanup_timers()
            if replay:
                self._ex._restore_body(replay)
            self._ex._forward_refused(self, exc)
            return
        if self._resolved:
            conn.close()
            return
        self._attach(conn, replay)

    def _arm_total(self) -> None:
        total_s = self._total_s
        if total_s > 0:
            d = self._total
            if d is None:
                d = self._total = new_deadline(self, "total")
            self._ctx.deadlines().add(d, self._ex.arrived_at, total_s)

    def expire(self, kind: str) -> None:
        """A deadline of the server's :class:`Deadlines` (``total``, ``response-start``)."""
        self._on_timeout(kind)

    def _resolve(self, result: ForwardResult | None) -> None:
        """The single exit: a result, or None to retry once on a fresh connection."""
        if result is None:
            replay = self._replay or []
            self._replay = None
            self._ctx.spawn(self._dial(replay))
            return
        self._resolved = True
        self.cleanup()
        self._ex._forward_done(self, result)

    def _attach(self, conn: UpstreamConnection, replay: list[bytes] | None) -> None:
        ex = self._ex
        self._conn = conn
        conn.sink = self
        if ex._expect_continue:
            ex._send_continue()
        chunks = replay if replay is not None else ex._take_body()
        assert conn.transport is not None
        if not chunks and not self._chunked_in:
            conn.write(self._head)  # (no body, or none yet: the head alone, without a join)
        else:
            parts = [self._head]
            if self._chunked_in:
                for c in chunks:
                    parts += (b"%x\r\n" % len(c), c, b"\r\n")
                if ex._body_done:
                    parts.append(_LAST_CHUNK)
            else:
                parts += chunks
            conn.write(b"".join(parts))
        if ex._body_done:
            self._replay = chunks
            self._request_sent = True
        else:
            self._body_sent = bool(chunks)
            self.streaming_body = True
            size = sum([len(c) for c in chunks]) if chunks else 0
            if size <= _KEEP_MAX:
                self._kept = list(chunks)
                self._kept_bytes = size
        if self._start_s > 0 or self._idle_s > 0:
            now = self._ctx.time()
            if self._start_s > 0:
                d = self._start
                if d is None:
                    d = self._start = new_deadline(self, "response-start")
                self._ctx.deadlines().add(d, now, self._start_s)
            if self._idle_s > 0:
                self._last_write = now
                self._idle_handle = self._loop.call_at(now + self._idle_s, self._on_idle)
        if ex._conn._write_paused:
            conn.transport.pause_reading()

    # --- request body, from the client connection ---
    def send_body(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or conn.transport is None:
            return
        self._body_sent = True
        kept = self._kept
        if kept is not None:
            n = self._kept_bytes + len(data)
            if n <= _KEEP_MAX:
                kept.append(data)
                self._kept_bytes = n
            else:
                self._kept = None
        if self._chunked_in:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)

    def end_body(self) -> None:
        self.streaming_body = False
        conn = self._conn
        if conn is None or conn.transport is None:
            return
        if self._chunked_in:
            conn.write(_LAST_CHUNK)
        self._request_sent = True
        if self._kept is not None:  # a small streamed body: now whole, as one that came whole
            self._replay = self._kept
            self._kept = None

    def upstream_pause_writing(self) -> None:
        self._ex._conn.pause_for_upstream(True)

    def upstream_resume_writing(self) -> None:
        self._ex._conn.pause_for_upstream(False)

    def client_pause_writing(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.pause_reading()

    def client_resume_writing(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.resume_reading()

    # --- response, from the upstream connection ---
    def on_headers_complete(self) -> None:
        conn = self._conn
        assert conn is not None
        status = conn.parser.get_status_code()
        if status == 101 and self._ex._upgrade:
            self._switch_protocols(conn)
            return
        if status < 200:  # 1xx: the core answered Expect itself; drop the upstream's
            self._informational = True
            return
        if status == 502 and self._may_resend() and says_not_sent(conn.headers):
            self._not_sent()
            return
        self._headers = conn.headers
        lines, length, chunked = scan_response_headers(conn.headers)
        self._response_head(status, status_line(status, conn.reason), lines, length, chunked)

    def on_simple_response(self, response: SimpleResponse) -> None:
        """A whole response read at once without the parser (:func:`simple_response`): what
        ``on_headers_complete``, ``on_body`` and ``on_message_complete`` would do for it."""
        if response.status == 502 and self._may_resend() and says_not_sent(None, response.lines):
            self._not_sent()
            return
        self._response_head(
            response.status,
            response.status_line,
            response.lines,
            response.length,
            False,
            response.body,
        )
        self._response_end(response.keep_alive)

    def _may_resend(self) -> bool:
        """Whether the request could go again: its whole body is here (it came whole, or
        streamed and was kept), or it is still streaming and what went out so far is kept."""
        return self._replay is not None or self._kept is not None

    def _not_sent(self) -> None:
        """The upstream answered 502 with :data:`dataplane.api.NOT_SENT_HEADER` (its own
        upstream refused the connection: the request went no further) and the body that went
        out is still here: as a refused connection (``Request._forward_refused``), so the
        handler may send the request to another upstream. Nothing was written to the client.
        A body still streaming in is held by the exchange from here, after what was kept, as
        it is before a forward."""
        replay = self._replay if self._replay is not None else self._kept
        self._replay = None
        self._kept = None
        self._detach(reuse=False)
        self._resolved = True
        self.cleanup_timers()
        if replay:
            self._ex._restore_body(replay)
        exc = UpstreamConnectError(f"{self._upstream} answered that its upstream refused")
        self._ex._forward_refused(self, exc)

    def _response_head(
        self,
        status: int,
        line: bytes,
        lines: bytes,
        length: bytes,
        chunked: bool,
        body: bytes = b"",
    ) -> None:
        """The client's response head, from the upstream's status line and end-to-end lines
        (and ``body``, a whole body read with the head, in the same bytes)."""
        self._replay = None
        self._kept = None
        self._status = status
        if self._start is not None:
            self._cancel_start_timer()
        ex = self._ex
        head_only = ex._method == "HEAD"
        framing = b""
        if head_only or status in (204, 304):
            if not head_only:
                length = b""
        elif length and not chunked:
            pass
        elif ex._http10:
            length = b""
            self._close_delimited = True
            ex._response_close = True
        else:
            length = b""
            framing = _CHUNKED
            self._chunked_out = True
        end = b"Connection: close\r\n\r\n" if ex._close_after_response() else b"\r\n"
        ex._started = True
        if length:
            head = (line, lines, b"Content-Length: ", length, b"\r\n", end, body)
            self._out.append(b"".join(head))
        else:
            self._out.append(b"".join((line, lines, framing, end, body)))
        if self._idle_handle is not None:
            self._last_write = self._ctx.time()
        if head_only:  # httptools cannot skip a HEAD response's body: this connection is done
            self.flush()
            self._detach(reuse=False)
            self._finish(_completed(status))

    def on_body(self, body: bytes) -> None:
        if self._informational:
            return
        if self._chunked_out:
            self._out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._out.append(body)
        if self._idle_handle is not None:
            self._last_write = self._ctx.time()

    def flush(self) -> None:
        """Write what one upstream read produced to the client in one write (head and body
        of a small response go out together; a streamed response goes out read by read)."""
        out = self._out
        if out:
            self._ex._conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def on_message_complete(self) -> None:
        if self._tunnel:
            return  # the 101 head ended; the tunnel opens in on_upgraded
        if self._informational:
            self._informational = False
            return
        conn = self._conn
        self._response_end(conn is not None and conn.parser.should_keep_alive())

    def _response_end(self, keep_alive: bool) -> None:
        """The response is complete: out to the client; the connection back to the pool if
        the request went out whole and the upstream keeps it alive."""
        if self._chunked_out:
            self._out.append(_LAST_CHUNK)
        self.flush()
        self._detach(reuse=keep_alive and self._conn is not None and self._request_sent)
        self._finish(_completed(self._status))

    # --- a tunnel (``Connection: Upgrade`` answered 101, e.g. a websocket) ---
    def _switch_protocols(self, conn: UpstreamConnection) -> None:
        """The 101 head goes to the client; no timeout applies to the tunnel (as Knative's
        timeout handler after a hijack); the client connection closes when the tunnel ends."""
        self._tunnel = True
        self._status = 101
        self._replay = None
        self.cleanup_timers()
        ex = self._ex
        upgrade = next((v for n, v in conn.headers if n.lower() == b"upgrade"), b"")
        ex._started = True
        ex._response_close = True
        framing = b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"
        self._out.append(response_head(101, conn.reason, conn.headers, framing))

    def on_upgraded(self, rest: bytes) -> None:
        """The upstream parser stopped after a 101: ``rest`` is the tunnel's first bytes."""
        if not self._tunnel:
            self.upstream_error("upstream switched protocols without being asked to")
            return
        if rest:
            self._out.append(rest)
        self.flush()
        self._ex._conn.start_tunnel(self)

    def on_tunnel_data(self, data: bytes) -> None:
        """Bytes from the upstream, through the tunnel."""
        self._ex._conn.write(data)

    def tunnel_to_upstream(self, data: bytes) -> None:
        """Bytes from the client, through the tunnel."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.write(data)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._tunnel:  # the upstream ended the tunnel: so does the client connection
            self._conn = None
            self._ex._conn.pause_for_upstream(False)
            if not self._resolved:
                self._finish(ForwardResult(101, True))
            return
        conn = self._conn
        self._conn = None
        self.streaming_body = False
        self._ex._conn.pause_for_upstream(False)
        if self._resolved:
            return
        if self._status == 0:
            if (
                conn is not None
                and conn.reused
                and not self._body_sent
                and (conn.reason == b"" and not conn.headers)
            ):
                self._cancel_start_timer()
                self._resolve(None)  # stale keep-alive connection: retry once
                return
            why = f": {exc}" if exc else ""
            self._fail(f"upstream closed the connection before responding{why}")
        elif self._close_delimited or (self._chunked_out and not self._has_length()):
            self.on_message_complete()  # no length: the close ends the body
        else:
            self._fail(f"upstream closed the connection mid-response: {exc or 'EOF'}")

    def upstream_error(self, reason: str) -> None:
        self._conn = None
        self._ex._conn.pause_for_upstream(False)
        if not self._resolved:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        ex = self._ex
        if ex._started:
            ex._conn.abort()  # the response is cut short: the client must see it fail
            ex._response_done = True
            self._finish(ForwardResult(self._status, False, UPSTREAM_ERROR), answered=False)
        else:
            ex.respond_now(502, f"upstream error: {reason}\n".encode("latin-1", "replace"))
            self._finish(ForwardResult(502, False, UPSTREAM_ERROR), answered=False)

    # --- timeouts and the client leaving ---
    def _on_idle(self) -> None:
        self._idle_handle = None
        due = self._last_write + self._idle_s
        if self._ctx.time() < due:
            self._idle_handle = self._loop.call_at(due, self._on_idle)
        else:
            self._on_timeout("idle")

    def _on_timeout(self, kind: str) -> None:
        if self._resolved:
            return
        self._detach(reuse=False)
        ex = self._ex
        reason, text = _TIMEOUT_KINDS[kind]
        if ex._started:
            ex._conn.abort()
            ex._response_done = True
            self._finish(ForwardResult(self._status, False, reason), answered=False)
        else:
            body = self._route.body_prefix + text
            ex.respond_now(504, body.encode())
            self._finish(ForwardResult(504, False, reason), answered=False)

    def client_lost(self) -> None:
        if self._tunnel:  # the client ended the tunnel: close upstream after what is queued
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.sink = None
                conn.close()
            if not self._resolved:
                self._finish(ForwardResult(101, True), answered=False)
            return
        self._detach(reuse=False)
        if not self._resolved:
            self._finish(
                ForwardResult(self._status or 499, False, CLIENT_DISCONNECTED), answered=False
            )

    # --- ending ---
    def _detach(self, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        self.streaming_body = False
        if conn is None:
            return
        conn.sink = None
        if reuse:
            client = self._ex._conn
            if client._write_paused and conn.transport is not None:
                # The response's last bytes paused the client's writes, and with them this
                # connection's reading (client_pause_writing): nothing resumes it once pooled,
                # and the next response on it would never be read.
                conn.transport.resume_reading()
            self._ctx.pool.release(conn, self._ctx.time())
        else:
            conn.abort()
        self._ex._conn.pause_for_upstream(False)

    def _finish(self, result: ForwardResult, answered: bool = True) -> None:
        self.cleanup_timers()
        if answered:
            self._ex._response_finished()
        if not self._resolved:
            self._resolve(result)

    def cleanup(self) -> None:
        """Ended (or abandoned by a cancelled ``Exchange.forward``): no timer left, no
        connection held, and a dial still under way closes what it gets."""
        self._resolved = True
        self.cleanup_timers()
        if self._conn is not None:
            self._detach(reuse=False)
