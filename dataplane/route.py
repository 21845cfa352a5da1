"""Per-route forwarding values, made once per revision rather than per request (and the
:class:`Timeouts` a handler gives, which ``dataplane.api`` names as part of the contract).

A :class:`Route` is what a handler forwards a revision's requests with: the request-head edits
(:class:`dataplane.headers.Edits`) and the timeouts, in the forms the core reads per request.
Headers a request sets that depend on the request itself (``Host`` from ``K-Original-Host``,
the pod's address) go with each forward; their edits are made once per distinct set of names
and kept by the route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.headers import Edits, request_edits


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Deadlines for one forwarded request, in seconds (0 = none).

    ``total_s`` counts from when the request arrived; ``response_start_s`` from when it was sent
    upstream until the first response byte; ``idle_s`` between two writes to the client. Each
    ends the request with 504 (if the response has not started) and a body that names it.
    """

    total_s: float = 0.0
    response_start_s: float = 0.0
    idle_s: float = 0.0
    body_prefix: str = ""  # "activator " gives "activator request timeout", as Knative


NO_TIMEOUTS = Timeouts()
_NAMED_MAX = 64  # distinct name sets a route keeps edits for (handlers use one or two)


class Route:
    """How a handler forwards one revision's requests (see the module doc)."""

    __slots__ = (
        "_named",
        "_prefixes",
        "_removes",
        "body_prefix",
        "edits",
        "idle_s",
        "response_start_s",
        "tee",
        "timeouts",
        "total_s",
    )

    def __init__(
        self,
        *,
        remove_headers: Iterable[str] = (),
        remove_prefixes: Iterable[str] = (),
        timeouts: Timeouts = NO_TIMEOUTS,
        tee: object = None,
    ) -> None:
        self._removes = tuple(remove_headers)
        self._prefixes = tuple(remove_prefixes)
        self.edits = request_edits((), self._removes, self._prefixes)
        # (name sets, extra removed names) → their edits
        self._named: dict[tuple[tuple[str, ...], tuple[str, ...]], Edits] = {}
        self.timeouts = timeouts
        # the durations as plain floats (a frozen dataclass's field is a generic lookup)
        self.total_s = timeouts.total_s
        self.response_start_s = timeouts.response_start_s
        self.idle_s = timeouts.idle_s
        self.body_prefix = timeouts.body_prefix
        # a dataplane.api.TeeFactory, or None: whether a request's bytes are copied (payload
        # logging, shadow comparison); typed object here, as api imports this module
        self.tee = tee

    def edits_for(
        self, set_headers: tuple[tuple[str, str], ...], remove_headers: tuple[str, ...]
    ) -> Edits:
        """The route's edits with this request's ``set_headers`` (each replacing any header of
        its name) and ``remove_headers`` on top."""
        if not set_headers and not remove_headers:
            return self.edits
        key = (tuple([name for name, _ in set_headers]), remove_headers)
        edits = self._named.get(key)
        if edits is None:
            edits = request_edits((), self._removes + key[0] + remove_headers, self._prefixes)
            if len(self._named) < _NAMED_MAX:
                self._named[key] = edits
        return edits.with_sets(set_headers)
