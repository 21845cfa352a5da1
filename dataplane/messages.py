"""HTTP/1.1 messages read whole, without the parser: the simple-message passes of the core.

:func:`simple_request` and :func:`simple_response` read a whole request or response that came
in one read, in its most common form, checking every byte as llhttp would; anything else is
left to httptools. :func:`raw_line` and :func:`raw_headers` read the header lines of a head
:func:`simple_request` read. Also the hop-by-hop header sets both directions drop.
"""

from __future__ import annotations

from collections.abc import Iterable

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

_RESPONSE_DROP_B = frozenset(n.encode() for n in _RESPONSE_DROP)


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


class SimpleResponse:
    """A whole response :func:`simple_response` read: its status and status line, its
    end-to-end header lines (as :func:`dataplane.headers.scan_response_headers` gives them),
    its ``Content-Length`` value, its body, and whether the upstream keeps the connection."""

    __slots__ = ("body", "keep_alive", "length", "lines", "status", "status_line")

    def __init__(
        self,
        status: int,
        status_line: bytes,
        lines: bytes,
        length: bytes,
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.status_line = status_line
        self.lines = lines
        self.length = length
        self.body = body
        self.keep_alive = keep_alive

    def astuple(self) -> tuple[int, bytes, bytes, bytes, bytes, bool]:
        return (self.status, self.status_line, self.lines, self.length, self.body, self.keep_alive)


def _new_response(
    status: int, line: bytes, lines: bytes, length: bytes, body: bytes, keep_alive: bool
) -> SimpleResponse:
    """``SimpleResponse(...)``, made without a Python-level call when compiled."""
    r = SimpleResponse.__new__(SimpleResponse)
    r.status = status
    r.status_line = line
    r.lines = lines
    r.length = length
    r.body = body
    r.keep_alive = keep_alive
    return r


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
    return _new_response(status, p[:status_end], lines, length, p[pos + 2 : n], keep_alive)


_METHODS = tuple(
    ((m + " ").encode(), m) for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
)
# The request headers simple_request looks at.
_REQUEST_FIRST, _REQUEST_LENGTH = _table(
    (b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"connection")
)


class SimpleRequest:
    """A whole request :func:`simple_request` read: its method and target, its
    ``Content-Length`` (-1: none), whether it keeps the connection alive, its body, and ``raw``:
    its request line and header lines as they came (for :func:`raw_headers` and
    :func:`dataplane.headers.edited_request_head`)."""

    __slots__ = ("body", "content_length", "keep_alive", "method", "raw", "target")

    def __init__(
        self,
        method: str,
        target: str,
        content_length: int,
        keep_alive: bool,
        body: bytes,
        raw: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.body = body
        self.raw = raw

    def astuple(self) -> tuple[str, str, int, bool, bytes, bytes]:
        return (self.method, self.target, self.content_length, self.keep_alive, self.body, self.raw)


def _new_request(
    method: str, target: str, content_length: int, keep_alive: bool, body: bytes, raw: bytes
) -> SimpleRequest:
    """``SimpleRequest(...)``, made without a Python-level call when compiled."""
    r = SimpleRequest.__new__(SimpleRequest)
    r.method = method
    r.target = target
    r.content_length = content_length
    r.keep_alive = keep_alive
    r.body = body
    r.raw = raw
    return r


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
    return _new_request(method, target, clen, keep_alive, p[pos + 2 : n], p[:pos])


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


class HeaderNames:
    """Header names a handler looks up in every request (:meth:`dataplane.api.Exchange.
    find_headers`), made once: lower-cased, and as bytes for the raw head. It also holds the
    list a lookup fills (one per handler: a request's lookup allocates nothing but the values
    it finds; the event loop runs one handler at a time, which reads it before the next)."""

    __slots__ = ("count", "firsts", "found", "lengths", "lows", "raws")

    def __init__(self, *names: str) -> None:
        self.lows = tuple([n.lower() for n in names])
        self.raws = tuple([n.encode("latin-1") for n in self.lows])
        self.count = len(names)
        self.found: list[str | None] = [None] * self.count
        # the names' first bytes (both cases), and bit min(length, 63) for each name's length:
        # most lines are ruled out by these two alone
        firsts = bytearray(256)
        lengths = 0
        for n in self.raws:
            if n:
                firsts[n[0]] = firsts[ord(chr(n[0]).upper()) & 255] = 1
            lengths |= 1 << min(len(n), 63)
        self.firsts = bytes(firsts)
        self.lengths = lengths

    def clear(self) -> list[str | None]:
        """:attr:`found`, emptied for a lookup."""
        found = self.found
        for i in range(self.count):
            found[i] = None
        return found


def find_raw_headers(raw: bytes, names: HeaderNames) -> list[str | None]:
    """The value of the first header of each of ``names`` in a head :func:`simple_request`
    read (None where there is none), in ``names.found``: one pass over its lines, a value
    decoded only when it is one asked for."""
    found = names.clear()
    p = raw  # (compiled: a pointer to the bytes; every index is checked against n)
    n = len(raw)
    pos = bytescan.find_byte(p, 0, n, 10) + 1  # past the request line
    left = names.count
    raws = names.raws
    firsts = names.firsts
    lengths = names.lengths
    while pos < n and left > 0:
        j, v, end = raw_line(raw, pos)
        length = j - pos
        if not firsts[p[pos]] or not (lengths >> (length if length < 63 else 63)) & 1:
            pos = end + 2
            continue
        for i in range(names.count):
            want = raws[i]
            if len(want) == length and found[i] is None and lower_is(raw, pos, j, want):
                found[i] = p[v:end].decode("latin-1")
                left -= 1
                break
        pos = end + 2
    return found


def find_parsed_headers(headers: Iterable[tuple[str, str]], names: HeaderNames) -> list[str | None]:
    """:func:`find_raw_headers` over headers the parser read (names as sent)."""
    found = names.clear()
    lows = names.lows
    for k, v in headers:
        n = len(k)
        for i in range(names.count):
            low = lows[i]
            if len(low) == n and found[i] is None and k.lower() == low:
                found[i] = v
                break
    return found
