"""Header rules of a reverse proxy: hop-by-hop removal, X-Forwarded-For and ``Forwarded``.

Pure functions over ``(name, value)`` pairs; the server calls them once per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

from dataplane import bytescan

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
_REQUEST_SPECIAL = set(_REQUEST_DROP | {_XFF, _XFH, _XFP, _FWD})  # (a set: a faster lookup)
_RESPONSE_DROP_B = frozenset(n.encode() for n in _RESPONSE_DROP)


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


RequestEdits = tuple[tuple[tuple[str, str], ...], frozenset[str], tuple[str, ...], tuple[int, ...]]
"""What a handler asks to change in a request head: the headers to set, the lower-cased names
and prefixes to remove, and the name lengths to look at per first byte (:func:`_look_masks`)."""

_EDITS: dict[tuple[tuple[str, ...], tuple[str, ...]], RequestEdits] = {}
# the (remove_headers, remove_prefixes) tuples asked for last without set_headers, and their
# edits: found by identity, without the key's hash and the dict's lookup
_LAST_EDITS: tuple[tuple[str, ...], tuple[str, ...], RequestEdits] | None = None
_NO_EDITS: RequestEdits = ((), frozenset(), (), _look_masks(_REQUEST_SPECIAL, ("proxy-",)))
_CACHE_MAX = 256  # components pass the same few header-name tuples on every request


def request_edits(
    set_headers: Iterable[tuple[str, str]] = (),
    remove_headers: Iterable[str] = (),
    remove_prefixes: Iterable[str] = (),
) -> RequestEdits:
    """The edits for :func:`edited_request_head` (their lower-cased forms are cached by name)."""
    global _LAST_EDITS
    sets = set_headers if isinstance(set_headers, tuple) else tuple(set_headers)
    removes = remove_headers if isinstance(remove_headers, tuple) else tuple(remove_headers)
    prefixes = remove_prefixes if isinstance(remove_prefixes, tuple) else tuple(remove_prefixes)
    if not (sets or removes or prefixes):
        return _NO_EDITS
    last = _LAST_EDITS
    if not sets and last is not None and removes is last[0] and prefixes is last[1]:
        return last[2]  # the same tuples as last time (a proxy passes its constants)
    if sets:
        removes = removes + tuple([name for name, _ in sets])
    key = (removes, prefixes)
    edits = _EDITS.get(key)
    if edits is None:
        edits = _new_edits(removes, prefixes)
        if len(_EDITS) < _CACHE_MAX:
            _EDITS[key] = edits
    if sets:
        return (sets, edits[1], edits[2], edits[3])
    _LAST_EDITS = (removes, prefixes, edits)
    return edits


def _new_edits(removes: tuple[str, ...], prefixes: tuple[str, ...]) -> RequestEdits:
    removed = frozenset(n.lower() for n in removes)
    low_prefixes = tuple(p.lower() for p in prefixes)
    masks = _look_masks((*_REQUEST_SPECIAL, *removed), ("proxy-", *low_prefixes))
    return ((), removed, low_prefixes, masks)


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
    return edited_request_head(method, target, headers, client, framing, edits, upgrade)


def edited_request_head(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] | None,
    client: str,
    framing: bytes,
    edits: RequestEdits,
    upgrade: str | None,
    raw: bytes | None = None,
) -> bytes:
    """:func:`request_head` with its edits made by :func:`request_edits`.

    ``raw``, when the request was read by :func:`simple_request`, is its request line and header
    lines as they came: the lines are then read from it (``headers`` is not needed) and those
    kept are copied, a run of them as one slice, instead of being written anew. Only the lines
    whose name the edits look at (by first letter and length) are decoded.
    """
    sets, removed, prefixes, masks = edits
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
        return edited_request_head(method, target, kept, client, framing, edits, upgrade)
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
            parts.append(_xff_line(client))
        else:
            parts.append("".join(out).encode("latin-1"))
            out = []
            parts.append(_xff_line(client))
    for name, value in sets:
        out += (name, ": ", value, "\r\n")
    if upgrade is not None:
        out += ("Connection: Upgrade\r\nUpgrade: ", upgrade, "\r\n")
    if out:
        parts.append("".join(out).encode("latin-1"))
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


_XFF_LINES: dict[str, bytes] = {}


def _xff_line(client: str) -> bytes:
    """``X-Forwarded-For: <client>`` for a request without one (the same few clients again and
    again: kept per client, up to a bound)."""
    line = _XFF_LINES.get(client)
    if line is None:
        line = b"X-Forwarded-For: " + client.encode("latin-1") + b"\r\n"
        if len(_XFF_LINES) < _CACHE_MAX:
            _XFF_LINES[client] = line
    return line


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


# Which bytes may appear where in a response head (RFC 9110 §5.1, §5.5; what llhttp accepts):
# a header name is a token; a value or a reason phrase has no control character but HTAB.
_TCHAR = bytes(
    1 if (c < 128 and chr(c).isalnum()) or chr(c) in "!#$%&'*+-.^_`|~" else 0 for c in range(256)
)
_VCHAR = bytes(1 if c == 9 or 32 <= c <= 126 or c >= 128 else 0 for c in range(256))


def _table(names: Iterable[bytes]) -> tuple[bytes, bytes]:
    """Two byte tables that rule out most names cheaply: their first letters (both cases) and
    their lengths (up to 31; a longer name is looked at whatever its length)."""
    firsts = {c for n in names for c in (n[0], n[0] ^ 32)}
    lengths = {len(n) for n in names}
    return (
        bytes(1 if c in firsts else 0 for c in range(256)),
        bytes(1 if i in lengths or i == 31 else 0 for i in range(32)),
    )


# The response headers scan_response_headers drops (a "proxy-" name: whatever its length).
_RESPONSE_FIRST, _RESPONSE_LENGTH = _table((*_RESPONSE_DROP_B, b"proxy-"))


def lower_is(data: bytes, start: int, end: int, low: bytes) -> bool:
    """``data[start:end]`` is ``low`` (lower-case; no CR in ``data`` there) in any letter case."""
    if end - start != len(low):
        return False
    p = data  # (compiled: a pointer to the bytes; every index is checked against the length)
    for k in range(end - start):  # noqa: SIM110 (a C loop once compiled; all() is a generator)
        if p[start + k] | 32 != low[k]:
            return False
    return True


# The simple-message passes pay off compiled only: run by the interpreter, their byte loops
# cost more than the parser's callbacks, so the core takes them only in a compiled build.
SIMPLE_PATHS = not (__file__ or "").endswith(".py")


def _header_line(data: bytes, pos: int) -> tuple[int, int, int]:
    """The header line at ``pos``, each byte checked as llhttp checks it: (the end of its name,
    the start of its value past the leading whitespace, the value's end at the line's CRLF), or
    (-1, -1, -1) when it is not a valid ``name: value`` line."""
    p = data
    n = len(data)
    tchar = _TCHAR
    vchar = _VCHAR
    j = pos
    while j < n and tchar[p[j]]:
        j += 1
    if j == pos or j >= n or p[j] != 58:  # a name, then ":"
        return -1, -1, -1
    v = j + 1
    while v < n and (p[v] == 32 or p[v] == 9):
        v += 1
    end = v
    while end < n and vchar[p[end]]:
        end += 1
    if end + 1 >= n or p[end] != 13 or p[end + 1] != 10:
        return -1, -1, -1
    return j, v, end


def _digits(data: bytes, start: int, end: int) -> int:
    """A ``Content-Length`` value: ``data[start:end]``, 1 to 15 digits; else -1."""
    p = data
    if start == end or end - start > 15:
        return -1
    value = 0
    for k in range(start, end):
        if p[k] < 48 or p[k] > 57:
            return -1
        value = value * 10 + p[k] - 48
    return value


def _keep_alive(data: bytes, start: int, end: int) -> int:
    """A ``Connection`` value the simple paths take: 1 for keep-alive, 0 for close, -1 else."""
    if lower_is(data, start, end, b"keep-alive"):
        return 1
    return 0 if lower_is(data, start, end, b"close") else -1


SimpleResponse = tuple[int, bytes, bytes, bytes, bytes, bool]
"""(status, status line, end-to-end header lines, Content-Length value, body, keep-alive)."""


def simple_response(data: bytes) -> SimpleResponse | None:
    """A whole response in one read, in its most common form, read without the parser.

    The form: ``HTTP/1.1``, a status of 200–599 but 204 and 304, a ``Content-Length`` (one, digits
    only) and no ``Transfer-Encoding``, ``Connection`` absent or one of keep-alive and close, and
    exactly the announced body after the head (nothing more). Every byte is checked as llhttp
    checks it. Anything else (a head or body split over reads, chunked, 1xx, a malformed head)
    gives None: the parser takes the response then, as every response before.

    The header lines are those of :func:`scan_response_headers`, byte for byte: hop-by-hop and
    framing headers dropped, the others as ``name: value`` (leading whitespace of the value
    dropped as llhttp drops it). A run of lines kept as they came is one slice of ``data``.
    """
    n = len(data)
    p = data  # (compiled: a pointer to the bytes; every index is checked against n)
    if n < 19 or not data.startswith(b"HTTP/1.1 ") or p[12] != 32:  # "HTTP/1.1 200 "
        return None
    d0 = p[9] - 48
    d1 = p[10] - 48
    d2 = p[11] - 48
    if d0 < 2 or d0 > 5 or d1 < 0 or d1 > 9 or d2 < 0 or d2 > 9:
        return None
    status = d0 * 100 + d1 * 10 + d2
    if status == 204 or status == 304:
        return None
    vchar = _VCHAR
    first = _RESPONSE_FIRST
    lengths = _RESPONSE_LENGTH
    i = 13
    while i < n and vchar[p[i]]:
        i += 1
    # a reason phrase (without one, the parser's path writes the standard one), then CRLF
    if i == 13 or i + 1 >= n or p[i] != 13 or p[i + 1] != 10:
        return None
    status_end = i + 2
    parts: list[bytes] = []
    run = -1  # where the current run of lines kept as they came starts
    length = b""
    clen = 0
    keep_alive = True
    pos = status_end
    while True:
        if pos + 1 >= n:
            return None
        if p[pos] == 13:  # the empty line: the head ends
            if p[pos + 1] != 10:
                return None
            break
        j, v, line_end = _header_line(data, pos)
        if j < 0:
            return None
        if first[p[pos]] and (
            lengths[j - pos if j - pos < 31 else 31] or p[pos] | 32 == 112  # "p"
        ):
            if lower_is(data, pos, j, b"content-length"):
                clen = -1 if length else _digits(data, v, line_end)
                if clen < 0:
                    return None
                length = p[v:line_end]
                drop = True
            elif lower_is(data, pos, j, b"connection"):
                token = _keep_alive(data, v, line_end)
                if token < 0:
                    return None
                keep_alive = token == 1
                drop = True
            else:
                low = data[pos:j].lower()
                if low == b"transfer-encoding":
                    return None
                drop = low in _RESPONSE_DROP_B or low.startswith(b"proxy-")
            if drop:
                if run >= 0:
                    parts.append(p[run:pos])
                    run = -1
                pos = line_end + 2
                continue
        if v == j + 2 and p[j + 1] == 32:  # "name: value" already
            if run < 0:
                run = pos
        else:
            if run >= 0:
                parts.append(p[run:pos])
                run = -1
            parts.append(p[pos:j] + b": " + p[v : line_end + 2])
        pos = line_end + 2
    if not length or n - (pos + 2) != clen:
        return None
    if run >= 0:
        parts.append(p[run:pos])
    lines = parts[0] if len(parts) == 1 else b"".join(parts)
    return status, p[:status_end], lines, length, p[pos + 2 : n], keep_alive


_METHODS = tuple(
    ((m + " ").encode(), m) for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
)
# The request headers simple_request looks at.
_REQUEST_FIRST, _REQUEST_LENGTH = _table(
    (b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"connection")
)

SimpleRequest = tuple[str, str, int, bool, bytes, bytes]
"""(method, target, Content-Length or -1, keep-alive, body, ``raw``: the request line and header
lines as they came, for :func:`raw_headers` and :func:`edited_request_head`)."""


def simple_request(data: bytes) -> SimpleRequest | None:
    """A whole request in one read, in its most common form, read without the parser.

    The form: a common method, an origin-form target (``/`` then printable ASCII), ``HTTP/1.1``,
    no ``Transfer-Encoding``, ``Upgrade`` or ``Expect``, ``Connection`` absent or one of
    keep-alive and close, at most one ``Content-Length`` (digits only) and exactly that many
    body bytes after the head (nothing more: a pipelined request goes to the parser). Bytes
    are checked as llhttp checks them; :func:`raw_headers` gives the headers as the parser's
    callbacks give them (names as sent, values without leading whitespace, latin-1), when they
    are wanted. Anything else is None.
    """
    n = len(data)
    p = data  # (compiled: a pointer to the bytes; every index is checked against n)
    method = ""
    for prefix, name in _METHODS:
        if data.startswith(prefix):
            method = name
            break
    if not method:
        return None
    t = len(method) + 1
    if t >= n or p[t] != 47:  # "/"
        return None
    i = t
    while i < n and 33 <= p[i] <= 126:
        i += 1
    if not data.startswith(b" HTTP/1.1\r\n", i):
        return None
    target = p[t:i].decode("latin-1")
    first = _REQUEST_FIRST
    lengths = _REQUEST_LENGTH
    clen = -1
    keep_alive = True
    pos = i + 11
    while True:
        if pos + 1 >= n:
            return None
        if p[pos] == 13:  # the empty line: the head ends
            if p[pos + 1] != 10:
                return None
            break
        j, v, line_end = _header_line(data, pos)
        if j < 0:
            return None
        if first[p[pos]] and lengths[j - pos if j - pos < 31 else 31]:
            if lower_is(data, pos, j, b"content-length"):
                clen = -1 if clen >= 0 else _digits(data, v, line_end)
                if clen < 0:
                    return None
            elif lower_is(data, pos, j, b"connection"):
                token = _keep_alive(data, v, line_end)
                if token < 0:
                    return None
                keep_alive = token == 1
            elif (
                lower_is(data, pos, j, b"transfer-encoding")
                or lower_is(data, pos, j, b"upgrade")
                or lower_is(data, pos, j, b"expect")
            ):
                return None
        pos = line_end + 2
    if n - (pos + 2) != (clen if clen > 0 else 0):
        return None
    return method, target, clen, keep_alive, p[pos + 2 : n], p[:pos]


def raw_line(raw: bytes, pos: int) -> tuple[int, int, int]:
    """The header line at ``pos`` of a head :func:`simple_request` read (so a valid one): (the
    end of its name at ":", the start of its value past the leading whitespace, the value's end
    at the line's CR)."""
    p = raw  # (compiled: a pointer to the bytes; every index is checked against n)
    n = len(raw)
    j = bytescan.find_byte(p, pos, n, 58)
    v = j + 1
    while v < n and (p[v] == 32 or p[v] == 9):
        v += 1
    return j, v, bytescan.find_byte(p, v, n, 13)


def raw_headers(raw: bytes) -> list[tuple[str, str]]:
    """The headers of a head :func:`simple_request` read, as the parser's callbacks give them."""
    p = raw
    n = len(raw)
    pos = bytescan.find_byte(p, 0, n, 10) + 1  # past the request line
    headers: list[tuple[str, str]] = []
    while pos < n:
        j, v, end = raw_line(raw, pos)
        headers.append((p[pos:j].decode("latin-1"), p[v:end].decode("latin-1")))
        pos = end + 2
    return headers


def status_line(status: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))


def response_head(
    status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], framing: bytes
) -> bytes:
    """The head sent to the client: hop-by-hop dropped (raw bytes in, raw bytes out)."""
    return status_line(status, reason) + scan_response_headers(headers)[0] + framing + b"\r\n"
