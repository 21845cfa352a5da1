"""A forward that copies its bytes as they pass: :class:`TeeForward`, made in place of a
:class:`dataplane.forward.Forward` for a request whose route has a tee (``Route(tee=...)``, a
:class:`dataplane.api.TeeFactory`) that wanted it.

The copy is taken where the bytes go on their way, never on a path of its own: the request's
body where a forward writes it upstream (the held chunks when the connection is attached, each
streamed chunk after), the response's head and unframed body where the forward writes them to
the client. Nothing waits for the tee, and what it raises is logged and dropped. A forward
without a tee is the plain :class:`Forward`: the one cost of the feature when it is off is the
test of ``route.tee`` when a forward is made (:func:`dataplane.exchange.new_forward`).
"""

from __future__ import annotations

import logging
from typing import Any

from dataplane.api import ForwardResult, Tee
from dataplane.forward import Forward
from dataplane.request import Request
from dataplane.upstream import UpstreamConnection

log = logging.getLogger("zeroserve.dataplane.tee")

NO_TEE: Any = object()
"""``Request._tee`` of a request whose route's factory declined (asked once per request)."""


def tee_forward(ex: Request, factory: Any) -> Forward:
    """A new forward for ``ex`` (not yet initialised), whose route has the tee ``factory``:
    a :class:`TeeForward` when the request has a tee (the factory is asked on the request's
    first forward; a retry keeps its answer), else a plain :class:`Forward`."""
    tee = ex._tee
    if tee is None:
        try:
            tee = factory.start(ex)
        except Exception:
            log.exception("tee factory failed", extra={"target": ex._target})
            tee = None
        if tee is None:
            tee = NO_TEE
        ex._tee = tee
    if tee is NO_TEE:
        return Forward.__new__(Forward)
    fwd = TeeForward.__new__(TeeForward)
    fwd.tee = tee
    return fwd


class TeeForward(Forward):
    """A :class:`Forward` that hands a copy of what passes to its ``tee`` (a
    :class:`dataplane.api.Tee`); see the module doc."""

    __slots__ = ("tee",)  # set by tee_forward

    tee: Tee

    def _may_resend(self) -> bool:
        """Only a body that went whole: a streamed one's first bytes were copied already, and
        a resend would copy them again."""
        return self._replay is not None and self.tee.request_done

    def _failed(self, what: str) -> None:
        log.exception("tee failed", extra={"call": what, "target": self._ex._target})

    # --- the request's body, as it goes upstream ---
    def _attach(self, conn: UpstreamConnection, replay: list[bytes] | None) -> None:
        tee = self.tee
        if replay is None and not tee.request_done:  # (a replay went out before: seen)
            ex = self._ex
            try:
                held = ex._body_buf
                if held:
                    for chunk in held:
                        tee.request_body(chunk)
                if ex._body_done:
                    tee.request_end()
            except Exception:
                self._failed("request")
        Forward._attach(self, conn, replay)

    def send_body(self, data: bytes) -> None:
        tee = self.tee
        if not tee.request_done:
            try:
                tee.request_body(data)
            except Exception:
                self._failed("request_body")
        Forward.send_body(self, data)

    def end_body(self) -> None:
        tee = self.tee
        if not tee.request_done:
            try:
                tee.request_end()
            except Exception:
                self._failed("request_end")
        Forward.end_body(self)

    # --- the response, as it goes to the client ---
    def _response_head(
        self,
        status: int,
        line: bytes,
        lines: bytes,
        length: bytes,
        chunked: bool,
        body: bytes = b"",
    ) -> None:
        try:
            self.tee.response_head(status, lines)
            if body:
                self.tee.response_body(body)
        except Exception:
            self._failed("response_head")
        Forward._response_head(self, status, line, lines, length, chunked, body)

    def on_body(self, body: bytes) -> None:
        if not self._informational:
            try:
                self.tee.response_body(body)
            except Exception:
                self._failed("response_body")
        Forward.on_body(self, body)

    def _finish(self, result: ForwardResult, answered: bool = True) -> None:
        ending = not self._resolved
        Forward._finish(self, result, answered)  # the client's first
        if ending:
            try:
                self.tee.end(result)
            except Exception:
                self._failed("end")
