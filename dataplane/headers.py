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
) -> bytes:
    """The head sent upstream: hop-by-hop dropped, edits applied, XFF appended, ``framing``
    (``b"Content-Length: n\\r\\n"``, ``b"Transfer-Encoding: chunked\\r\\n"`` or ``b""``) added."""
    drop = connection_tokens(headers)
    sets = list(set_headers)
    removed = {h.lower() for h in remove_headers}
    removed.update(name.lower() for name, _ in sets)
    prefixes = tuple(p.lower() for p in remove_prefixes)
    out: list[str] = [f"{method} {target} HTTP/1.1\r\n"]
    xff: list[str] = []
    xfh = xfp = None
    has_forwarded = False
    for name, value in headers:
        low = name.lower()
        if low in _REQUEST_DROP or low in drop or low.startswith("proxy-"):
            continue
        if low == "x-forwarded-for":
            xff.append(value)
            continue
        if low == "x-forwarded-host":
            xfh = value
        elif low == "x-forwarded-proto":
            xfp = value
        elif low == "forwarded":
            has_forwarded = True
        if low in removed or (prefixes and low.startswith(prefixes)):
            continue
        out.append(f"{name}: {value}\r\n")
    if not has_forwarded and (xff or xfh or xfp) and "forwarded" not in removed:
        out.append(f"Forwarded: {synthesize_forwarded(xff, xfh, xfp)}\r\n")
    if "x-forwarded-for" not in removed:
        xff.append(client)
        out.append(f"X-Forwarded-For: {', '.join(xff)}\r\n")
    for name, value in sets:
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1") + framing + b"\r\n"


def response_head(
    status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], framing: bytes
) -> bytes:
    """The head sent to the client: hop-by-hop dropped (raw bytes in, raw bytes out)."""
    drop: frozenset[str] = frozenset()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            drop = drop | connection_tokens([("connection", value.decode("latin-1"))])
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))]
    for name, value in headers:
        low = name.lower().decode("latin-1")
        if low in _RESPONSE_DROP or low in drop or low.startswith("proxy-"):
            continue
        parts.append(name + b": " + value + b"\r\n")
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)
