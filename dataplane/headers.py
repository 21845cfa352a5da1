"""Header rules of a reverse proxy: hop-by-hop removal, X-Forwarded-For and ``Forwarded``.

Pure functions over ``(name, value)`` pairs; the server calls them once per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

from dataplane import bytescan
from dataplane.messages import (
    _REQUEST_DROP,
    _RESPONSE_DROP,
    _RESPONSE_DROP_B,
    raw_headers,
    raw_line,
)

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
_REQUEST_SPECIAL = set(_REQUEST_DROP | {_XFF, _XFH, _XFP, _FWD})  # (a set: a faster lookup)


_RESPONSE_FIRSTS = "".join(
    sorted({c for n in (*_RESPONSE_DROP, "proxy-") for c in (n[0], n[0].upper())})
).encode()

_ALL_LENGTHS = (1 << 32) - 1


def _look_masks(names: Iterable[str], prefixes: Iterable[str]) -> tuple[int, ...]:
    """Which request header names :func:`edited_request_head` must look at: per first byte
    (both cases), a mask of name lengths (bit ``min(length, 31)``). ``names`` are looked at by
    their length, ``prefixes`` at every length from theirs; a name with no bit set passes on
    as it came without being lowered or decoded (most of them)."""
    masks = [0] * 256
    for n, bits in (
        *((n, 1 << min(len(n), 31)) for n in names),
        *((p, _ALL_LENGTHS & ~((1 << min(len(p), 31)) - 1)) for p in prefixes),
    ):
        if not n:  # an empty prefix removes every header: each is looked at
            return (_ALL_LENGTHS,) * 256
        for c in {ord(n[0]), ord(n[0].upper()), ord(n[0].lower())}:
            if c < 256:
                masks[c] |= bits
    return tuple(masks)


class Edits:
    """What a handler asks to change in a request head, in the forms the head pass reads: the
    headers to set, the lower-cased names and prefixes to remove, and the name lengths to look
    at per first byte (:func:`_look_masks`). Made once per route (:class:`dataplane.route.Route`),
    not per request."""

    __slots__ = ("masks", "prefixes", "removed", "sets")

    def __init__(
        self,
        sets: tuple[tuple[str, str], ...],
        removed: frozenset[str],
        prefixes: tuple[str, ...],
        masks: tuple[int, ...],
    ) -> None:
        self.sets = sets
        self.removed = removed
        self.prefixes = prefixes
        self.masks = masks

    def with_sets(self, sets: tuple[tuple[str, str], ...]) -> Edits:
        """These edits with ``sets`` set (``sets``' names among the removed already)."""
        return Edits(sets, self.removed, self.prefixes, self.masks)


def request_edits(
    set_headers: Iterable[tuple[str, str]] = (),
    remove_headers: Iterable[str] = (),
    remove_prefixes: Iterable[str] = (),
) -> Edits:
    """The edits for :func:`edited_request_head`: ``remove_headers`` and ``remove_prefixes``
    (any letter case) dropped, then ``set_headers`` set (replacing a header of their name)."""
    sets = tuple(set_headers)
    removed = frozenset([n.lower() for n in remove_headers] + [name.lower() for name, _ in sets])
    prefixes = tuple([p.lower() for p in remove_prefixes])
    masks = _look_masks((*_REQUEST_SPECIAL, *removed), ("proxy-", *prefixes))
    return Edits(sets, removed, prefixes, masks)


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
    edits = request_edits(set_headers, remove_headers, remove_prefixes)
    return edited_request_head(
        method, target, headers, client, xff_line(client), framing, edits, upgrade
    )


def edited_request_head(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] | None,
    client: str,
    client_xff: bytes,
    framing: bytes,
    edits: Edits,
    upgrade: str | None,
    raw: bytes | None = None,
) -> bytes:
    """:func:`request_head` with its edits made by :func:`request_edits`.

    ``raw``, when the request was read by :func:`simple_request`, is its request line and header
    lines as they came: the lines are then read from it (``headers`` is not needed) and those
    kept are copied, a run of them as one slice, instead of being written anew. Only the lines
    whose name the edits look at (by first letter and length) are decoded. ``client_xff`` is
    :func:`xff_line` of ``client`` (the client connection keeps it).
    """
    sets = edits.sets
    removed = edits.removed
    prefixes = edits.prefixes
    masks = edits.masks
    out: list[str] = []  # without raw: the head written anew
    parts: list[bytes] = []  # with raw: the slices kept
    xff: list[str] | None = None
    xfh = xfp = None
    has_forwarded = False
    tokens: frozenset[str] = frozenset()
    name = value = ""
    i = count = j = v = 0
    if raw is None:
        assert headers is not None
        out += (method, " ", target, " HTTP/1.1\r\n")
        p = b""
        n = off = line_end = 0
        count = len(headers)
    else:
        p = raw
        n = len(raw)
        off = bytescan.find_byte(p, 0, n, 10) + 1  # past the request line: kept as it came
    run = 0  # with raw: where the current run of lines kept as they came starts
    while True:
        if raw is None:
            if i == count:
                break
            name, value = headers[i]  # type: ignore[index]
            i += 1
            c = ord(name[0]) if name else 0
            length = len(name)
        else:
            if off >= n:
                break
            j, v, line_end = raw_line(raw, off)
            c = p[off]
            length = j - off
        if c == 0 or c > 255:
            look = True
        else:
            mask = masks[c]
            look = (mask >> (length if length < 31 else 31)) & 1 != 0
        if not look:
            keep = True
        else:
            if raw is not None:
                name = p[off:j].decode("latin-1")
                value = p[v:line_end].decode("latin-1")
            keep = False
            low = name.lower()
            if low in _REQUEST_SPECIAL:
                if low == _XFF:
                    if xff is None:
                        xff = []
                    xff.append(value)
                elif low == _XFH:
                    xfh = value
                    keep = True
                elif low == _XFP:
                    xfp = value
                    keep = True
                elif low == _FWD:
                    has_forwarded = True
                    keep = True
                elif low == "connection" and value.lower() not in ("keep-alive", "close"):
                    tokens = tokens | connection_tokens(((name, value),))
            elif not low.startswith("proxy-"):
                keep = True
            if keep and ((removed and low in removed) or (prefixes and low.startswith(prefixes))):
                keep = False
        if raw is None:
            if keep:
                out += (name, ": ", value, "\r\n")
        else:
            if not keep and run >= 0:
                parts.append(p[run:off])
                run = -1
            elif keep and run < 0:
                run = off
            off = line_end + 2
    if tokens and tokens - _REQUEST_DROP:
        kept = [
            (hn, hv)
            for hn, hv in (raw_headers(raw) if raw is not None else headers or ())
            if hn.lower() not in tokens and hn.lower() != "connection"
        ]
        return edited_request_head(
            method, target, kept, client, client_xff, framing, edits, upgrade
        )
    if raw is not None:
        if run == 0:  # every line kept (the common case): the head as it came
            parts.append(raw)
        elif run > 0:
            parts.append(p[run:n])
    if not has_forwarded and (xff or xfh or xfp) and not (removed and _FWD in removed):
        out += ("Forwarded: ", synthesize_forwarded(xff or (), xfh, xfp), "\r\n")
    if not (removed and _XFF in removed):
        if xff:
            out += ("X-Forwarded-For: ", ", ".join(xff), ", ", client, "\r\n")
        elif not out:
            parts.append(client_xff)
        else:
            parts.append("".join(out).encode("latin-1"))
            out = []
            parts.append(client_xff)
    for name, value in sets:
        out += (name, ": ", value, "\r\n")
    if upgrade is not None:
        out += ("Connection: Upgrade\r\nUpgrade: ", upgrade, "\r\n")
    if out:
        parts.append("".join(out).encode("latin-1"))
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


def xff_line(client: str) -> bytes:
    """``X-Forwarded-For: <client>`` for a request without one."""
    return b"X-Forwarded-For: " + client.encode("latin-1") + b"\r\n"


def scan_response_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes, bool]:
    """One pass over the upstream's response headers: the end-to-end header lines to send on
    (hop-by-hop and framing dropped), the ``Content-Length`` value (b"" if none) and whether
    the body is chunked."""
    parts: list[bytes] = []
    length = b""
    chunked = False
    tokens: frozenset[str] = frozenset()
    for name, value in headers:
        if name and name[0] not in _RESPONSE_FIRSTS:
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
            continue
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
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
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


NOT_SENT_HEADER = "Zeroserve-Not-Sent"
"""(:data:`dataplane.api.NOT_SENT_HEADER`, defined here beside its scanner.)"""
_NOT_SENT = NOT_SENT_HEADER.lower().encode()
_NOT_SENT_LINE = b"\r\n" + _NOT_SENT + b":"


def says_not_sent(headers: Sequence[tuple[bytes, bytes]] | None, lines: bytes = b"") -> bool:
    """Whether a response carries :data:`NOT_SENT_HEADER`: in its parsed ``headers``, or (when
    None) in its end-to-end header ``lines`` (each ending in CRLF). Asked of a 502 only."""
    if headers is not None:
        return any(name.lower() == _NOT_SENT for name, _ in headers)
    return _NOT_SENT_LINE in b"\r\n" + lines.lower()
