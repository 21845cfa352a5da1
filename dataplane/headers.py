"""Header rules of a reverse proxy: hop-by-hop removal, X-Forwarded-For and ``Forwarded``.

Pure functions over ``(name, value)`` pairs; the server calls them once per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

# RFC 9110 §7.6.1 plus what Go's ReverseProxy drops. Transfer-Encoding is re-framed by the core;
# Expect is answered by the core (100-continue), so the upstream never sends its own 100.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {"expect", "content-length"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop too)."""
    tokens: set[str] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def _node(addr: str) -> str:
    addr = addr.strip()
    if ":" in addr and not addr.startswith("["):
        return f'"[{addr}]"'  # IPv6 nodes are quoted and bracketed (RFC 7239 §6)
    return addr


def synthesize_forwarded(xff: Sequence[str], xfh: str | None, xfp: str | None) -> str:
    """Knative's forwarded shim: ``for=<n1>;host=<xfh>;proto=<xfp>, for=<n2>, …``."""
    nodes = [n for value in xff for n in (p.strip() for p in value.split(",")) if n]
    first: list[str] = []
    if nodes:
        first.append("for=" + _node(nodes[0]))
    if xfh:
        first.append("host=" + xfh)
    if xfp:
        first.append("proto=" + xfp)
    elements = [";".join(first)] if first else []
    elements.extend("for=" + _node(n) for n in nodes[1:])
    return ", ".join(elements)


_XFF, _XFH, _XFP, _FWD = "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"
_REQUEST_SPECIAL = _REQUEST_DROP | {_XFF, _XFH, _XFP, _FWD}
_RESPONSE_DROP_B = frozenset(n.encode() for n in _RESPONSE_DROP)


_LOWERED: dict[tuple[str, ...], tuple[tuple[str, ...], frozenset[str]]] = {}
_CACHE_MAX = 256  # components pass the same few header-name tuples on every request


def _lowered(names: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    """``names`` in lower case, as a tuple and as a set (cached)."""
    low = _LOWERED.get(names)
    if low is None:
        t = tuple(n.lower() for n in names)
        low = (t, frozenset(t))
        if len(_LOWERED) < _CACHE_MAX:
            _LOWERED[names] = low
    return low


def request_head(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    client: str,
    *,
    framing: bytes,
    set_headers: Iterable[tuple[str, str]] = (),
    remove_headers: Iterable[str] = (),
    remove_prefixes: Iterable[str] = (),
    upgrade: str | None = None,
) -> bytes:
    """The head sent upstream: hop-by-hop dropped, edits applied, XFF appended, ``framing``
    (``b"Content-Length: n\\r\\n"``, ``b"Transfer-Encoding: chunked\\r\\n"`` or ``b""``) added.

    One pass over the headers; names listed in ``Connection`` beyond the fixed hop-by-hop set
    (rare) are dropped by a second pass. ``upgrade`` (the client's ``Upgrade`` value) asks the
    upstream to switch protocols: ``Connection: Upgrade`` and ``Upgrade`` are sent.
    """
    sets = set_headers if isinstance(set_headers, tuple) else tuple(set_headers)
    removed: frozenset[str] = frozenset()
    if remove_headers or sets:
        names = (*remove_headers, *(name for name, _ in sets))
        removed = _lowered(names)[1]
    prefixes = _lowered(tuple(remove_prefixes))[0] if remove_prefixes else ()
    out: list[str] = [method, " ", target, " HTTP/1.1\r\n"]
    xff: list[str] = []
    xfh = xfp = None
    has_forwarded = False
    tokens: frozenset[str] = frozenset()
    for name, value in headers:
        low = name.lower()
        if low in _REQUEST_SPECIAL:
            if low == _XFF:
                xff.append(value)
                continue
            if low == _XFH:
                xfh = value
            elif low == _XFP:
                xfp = value
            elif low == _FWD:
                has_forwarded = True
            else:
                if low == "connection" and value.lower() not in ("keep-alive", "close"):
                    tokens = tokens | connection_tokens(((name, value),))
                continue
        elif low.startswith("proxy-"):
            continue
        if (removed and low in removed) or (prefixes and low.startswith(prefixes)):
            continue
        out += (name, ": ", value, "\r\n")
    if tokens - _REQUEST_DROP:
        return request_head(
            method,
            target,
            [(n, v) for n, v in headers if n.lower() not in tokens and n.lower() != "connection"],
            client,
            framing=framing,
            set_headers=sets,
            remove_headers=removed,
            remove_prefixes=prefixes,
            upgrade=upgrade,
        )
    if not has_forwarded and (xff or xfh or xfp) and _FWD not in removed:
        out += ("Forwarded: ", synthesize_forwarded(xff, xfh, xfp), "\r\n")
    if _XFF not in removed:
        xff.append(client)
        out += ("X-Forwarded-For: ", ", ".join(xff), "\r\n")
    for name, value in sets:
        out += (name, ": ", value, "\r\n")
    if upgrade is not None:
        out += ("Connection: Upgrade\r\nUpgrade: ", upgrade, "\r\n")
    return "".join(out).encode("latin-1") + framing + b"\r\n"


def scan_response_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes, bool]:
    """One pass over the upstream's response headers: the end-to-end header lines to send on
    (hop-by-hop and framing dropped), the ``Content-Length`` value (b"" if none) and whether
    the body is chunked."""
    parts: list[bytes] = []
    length = b""
    chunked = False
    tokens: frozenset[str] = frozenset()
    for name, value in headers:
        low = name.lower()
        if low in _RESPONSE_DROP_B:
            if low == b"content-length":
                length = value
            elif low == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif low == b"connection" and value.lower() not in (b"keep-alive", b"close"):
                tokens = tokens | connection_tokens((("connection", value.decode("latin-1")),))
            continue
        if low.startswith(b"proxy-"):
            continue
        parts += (name, b": ", value, b"\r\n")
    if tokens - _RESPONSE_DROP:
        kept = [
            (n, v)
            for n, v in headers
            if n.lower() != b"connection" and n.lower().decode("latin-1") not in tokens
        ]
        return scan_response_headers(kept)[0], length, chunked
    return b"".join(parts), length, chunked


def status_line(status: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))


def response_head(
    status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], framing: bytes
) -> bytes:
    """The head sent to the client: hop-by-hop dropped (raw bytes in, raw bytes out)."""
    return status_line(status, reason) + scan_response_headers(headers)[0] + framing + b"\r\n"
