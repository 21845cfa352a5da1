"""The fast paths that read a whole message without the parser (``simple_response`` for the
upstream's responses, ``simple_request`` for the clients' requests), checked against the parser
(httptools) on the same bytes: whatever they accept, the parser reads whole and the same way
(status, head lines, framing, body, keep-alive; method, target, headers), and they do accept
the common messages (else the fast paths would be dead code)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import httptools

import dataplane
from dataplane import messages
from dataplane.api import Exchange
from dataplane.headers import (
    edited_request_head,
    request_edits,
    scan_response_headers,
    status_line,
    xff_line,
)
from dataplane.messages import (
    HeaderNames,
    SimpleRequest,
    find_raw_headers,
    raw_headers,
    simple_request,
    simple_response,
)
from dataplane.route import Route
from dataplane.server import serve
from tests.dataplane_fixtures import raw_exchange

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 03:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
    b'{"predictions":1}'
)


@dataclass
class _Parsed:
    """What the parser saw: one message, complete exactly at the end of the bytes."""

    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: int = 0
    keep_alive: bool = False
    status: int = 0
    parser: httptools.HttpResponseParser | None = None

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.complete += 1
        self.keep_alive = self.parser.should_keep_alive()  # (reset once the message is done)
        self.status = self.parser.get_status_code()


def _parse(data: bytes) -> tuple[int, bytes, bytes, bytes, bytes, bool] | None:
    """The parser's reading of ``data`` as the core's slow path makes it, or None if the parser
    rejects it or it is not exactly one complete message."""
    p = _Parsed()
    p.parser = httptools.HttpResponseParser(p)
    try:
        p.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if p.complete != 1:
        return None
    lines, length, chunked = scan_response_headers(p.headers)
    assert not chunked
    return p.status, status_line(p.status, p.reason), lines, length, p.body, p.keep_alive


def test_nginx_response_is_read_whole_and_its_lines_kept_as_one_slice() -> None:
    got = simple_response(NGINX)
    assert got is not None
    assert got.astuple() == (
        200,
        b"HTTP/1.1 200 OK\r\n",
        b"Server: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 03:00:00 GMT\r\n"
        b"Content-Type: application/json\r\n",
        b"17",
        b'{"predictions":1}',
        True,
    )
    assert got.astuple() == _parse(NGINX)


def test_uvicorn_style_lower_case_and_connection_close() -> None:
    data = (
        b"HTTP/1.1 503 Service Unavailable\r\ndate: x\r\nserver: uvicorn\r\n"
        b"content-length: 2\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nno"
    )
    got = simple_response(data)
    assert got is not None
    assert got.status == 503
    assert got.keep_alive is False  # not kept alive
    assert got.lines == b"date: x\r\nserver: uvicorn\r\ncontent-type: text/plain\r\n"
    assert got.astuple() == _parse(data)


def test_what_it_leaves_to_the_parser() -> None:
    body = b"hello"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert simple_response(head + body) is not None
    for data in (
        head + body[:3],  # body split over reads
        head[:-2],  # head split over reads
        head + body + b"HTTP/1.1 200 OK\r\n",  # more than the message
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nhello",  # no length: the close ends the body
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 100 Continue\r\n\r\n" + head + body,
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello",  # no reason phrase
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5 \r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX Y: a\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    ):
        assert simple_response(data) is None, data


_NAMES = [
    b"Server", b"Date", b"Content-Type", b"X-Request-Id", b"Cache-Control", b"Vary",
    b"Connection", b"Keep-Alive", b"Proxy-Authenticate", b"Proxy-X", b"TE", b"Trailer",
    b"Upgrade", b"Transfer-Encoding", b"Set-Cookie", b"Content-Encoding", b"K-Network-Hash",
    b"content-length", b"X Bad", b"X@", b"",
]  # fmt: skip
_VALUES = [
    b"text/plain", b"", b" padded ", b"\ttabbed", b"a\tb", b"caf\xc3\xa9", b"x\x80y",
    b"keep-alive", b"close", b"Close", b"keep-alive, x", b"chunked", b"a\x01b", b"a\x7fb",
    b"5", b"  7",
]  # fmt: skip
_SEPS = [b": ", b":", b":  ", b":\t", b" : "]


def _random_response(rng: random.Random) -> bytes:
    status = rng.choice([200, 200, 201, 404, 500, 503, 599, 204, 304, 100, 101, 999, 600])
    version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0"])
    reason = rng.choice([b"OK", b"Not Found", b"", b"Weird\tReason", b"r\x80", b"bad\x01"])
    body = rng.choice([b"", b"x", b'{"a":1}', b"\r\n\r\n", bytes(range(256))])
    lines = [b"%b %d %b" % (version, status, reason)]
    for _ in range(rng.randrange(0, 7)):
        name = bytes(c ^ 32 if rng.random() < 0.2 and 65 <= (c | 32) - 32 <= 90 else c
                     for c in rng.choice(_NAMES))  # fmt: skip
        lines.append(name + rng.choice(_SEPS) + rng.choice(_VALUES))
    length = len(body) + rng.choice([0, 0, 0, 0, 1, -1])
    if rng.random() < 0.9:
        lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: %d" % max(length, 0))
    if rng.random() < 0.1:
        lines.insert(1, b"Content-Length: %d" % max(length, 0))
    eol = b"\r\n" if rng.random() < 0.97 else b"\n"
    tail = b"" if rng.random() < 0.95 else b"HTTP/1.1 200 OK\r\n"
    return eol.join(lines) + eol + eol + body + tail


def test_random_responses_against_the_parser() -> None:
    rng = random.Random(20261123)
    accepted = valid = 0
    for _ in range(4000):
        data = _random_response(rng)
        got = simple_response(data)
        want = _parse(data)
        if want is not None:
            valid += 1
        if got is None:
            continue
        accepted += 1
        assert got.astuple() == want, data
    # it does take a share of what the parser reads whole (the rest: 1.0, 1xx, 204/304, odd
    # Connection tokens, control bytes in a reason phrase the parser lets through)
    assert accepted > 0.25 * valid, (accepted, valid)


def test_every_plain_response_is_taken() -> None:
    """HTTP/1.1, a reason, token names, printable values, one right Content-Length: always read
    without the parser, and read as the parser reads it."""
    rng = random.Random(7)
    names = [n for n in _NAMES if n and b" " not in n and b"@" not in n]
    for _ in range(1000):
        body = rng.randbytes(rng.randrange(0, 300))
        lines = [b"HTTP/1.1 %d %b" % (rng.choice([200, 201, 400, 404, 500, 503]), b"Some Reason")]
        for _ in range(rng.randrange(0, 8)):
            name = rng.choice(names)
            if name.lower() in (b"transfer-encoding", b"content-length"):
                continue
            value = b"close" if name == b"Connection" else rng.choice([b"v", b"a b", b"x\x80"])
            lines.append(name + rng.choice(_SEPS[:4]) + value)
        lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: %d" % len(body))
        data = b"\r\n".join(lines) + b"\r\n\r\n" + body
        got = simple_response(data)
        assert got is not None, data
        assert got.astuple() == _parse(data), data


# --- requests ---------------------------------------------------------------------------------


@dataclass
class _ParsedRequest:
    url: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: int = 0
    keep_alive: bool = False
    method: str = ""
    parser: httptools.HttpRequestParser | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.complete += 1
        self.keep_alive = self.parser.should_keep_alive()
        self.method = self.parser.get_method().decode()


def _parse_request(data: bytes) -> tuple[str, str, list[tuple[str, str]], int, bool, bytes] | None:
    """The parser's reading of one whole request, as the core's callbacks take it."""
    p = _ParsedRequest()
    p.parser = httptools.HttpRequestParser(p)
    try:
        p.parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if p.complete != 1:
        return None
    lengths = [int(v) for n, v in p.headers if n.lower() == "content-length"]
    length = lengths[0] if lengths else -1
    return p.method, p.url.decode("latin-1"), p.headers, length, p.keep_alive, p.body


def _as_parsed(
    got: SimpleRequest,
) -> tuple[str, str, list[tuple[str, str]], int, bool, bytes]:
    """A :func:`simple_request` result in :func:`_parse_request`'s form (its headers made from
    the raw head, as the core makes them when a handler asks)."""
    method, target, length, keep_alive, body, raw = got.astuple()
    return method, target, raw_headers(raw), length, keep_alive, body


def test_a_typical_request_is_read_whole() -> None:
    data = (
        b"POST /v1/models/m:predict?x=1 HTTP/1.1\r\nHost: m.default.example.com\r\n"
        b"User-Agent: hey/0.0.1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
        b'Accept-Encoding:  gzip \r\n\r\n{"a":1}'
    )
    got = simple_request(data)
    assert got is not None
    # the request line and header lines as they came (for the head sent upstream)
    assert got.raw == data[: data.index(b"\r\n\r\n") + 2]
    assert _as_parsed(got) == (
        "POST",
        "/v1/models/m:predict?x=1",
        [
            ("Host", "m.default.example.com"),
            ("User-Agent", "hey/0.0.1"),
            ("Content-Type", "application/json"),
            ("Content-Length", "7"),
            ("Accept-Encoding", "gzip "),
        ],
        7,
        True,
        b'{"a":1}',
    )
    assert _as_parsed(got) == _parse_request(data)


def test_requests_left_to_the_parser() -> None:
    assert simple_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is not None
    for data in (
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # head split over reads
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n",  # pipelined
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",  # body split over reads
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: keep-alive, x-hop\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
    ):
        assert simple_request(data) is None, data


_REQ_NAMES = [
    b"Host", b"User-Agent", b"Accept", b"Content-Type", b"X-Request-Id", b"Cookie",
    b"Connection", b"Keep-Alive", b"TE", b"Upgrade", b"Expect", b"Transfer-Encoding",
    b"content-length", b"Knative-Serving-Revision", b"K-Original-Host", b"X Bad", b"",
]  # fmt: skip


def _random_request(rng: random.Random) -> bytes:
    method = rng.choice([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS",
                         b"CONNECT", b"get", b"FOO"])  # fmt: skip
    target = rng.choice([b"/", b"/v1/models/m:predict", b"/a?b=c&d=%20", b"*", b"http://h/x",
                         b"/caf\xc3\xa9", b"/a\x7fb", b"/{}|^`"])  # fmt: skip
    version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0"])
    body = rng.choice([b"", b"", b"x", b'{"a":1}', b"\r\n\r\n"])
    lines = [method + b" " + target + b" " + version]
    for _ in range(rng.randrange(0, 6)):
        lines.append(rng.choice(_REQ_NAMES) + rng.choice(_SEPS) + rng.choice(_VALUES))
    length = len(body) + rng.choice([0, 0, 0, 0, 1, -1])
    if body or rng.random() < 0.3:
        lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: %d" % max(length, 0))
    eol = b"\r\n" if rng.random() < 0.97 else b"\n"
    tail = b"" if rng.random() < 0.95 else b"GET / HTTP/1.1\r\n\r\n"
    return eol.join(lines) + eol + eol + body + tail


def test_random_requests_against_the_parser() -> None:
    rng = random.Random(11)
    accepted = valid = 0
    for _ in range(4000):
        data = _random_request(rng)
        got = simple_request(data)
        want = _parse_request(data)
        if want is not None:
            valid += 1
        if got is None:
            continue
        accepted += 1
        assert _as_parsed(got) == want, data
    assert accepted > 0.25 * valid, (accepted, valid)


def test_every_plain_request_is_taken() -> None:
    rng = random.Random(5)
    names = [n for n in _REQ_NAMES if n and b" " not in n]
    names = [n for n in names if n.lower() not in
             (b"connection", b"upgrade", b"expect", b"transfer-encoding", b"content-length")]  # fmt: skip
    for _ in range(1000):
        body = rng.randbytes(rng.randrange(0, 300))
        lines = [rng.choice([b"GET", b"POST", b"PUT"]) + b" /v1/models/m:predict HTTP/1.1"]
        for _ in range(rng.randrange(0, 8)):
            lines.append(rng.choice(names) + rng.choice(_SEPS[:4]) + rng.choice([b"v", b"a b"]))
        if body:
            lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: %d" % len(body))
        data = b"\r\n".join(lines) + b"\r\n\r\n" + body
        got = simple_request(data)
        assert got is not None, data
        assert _as_parsed(got) == _parse_request(data), data


# --- the head sent upstream, from the lines as they came --------------------------------------

_EDIT_NAMES = [
    b"Host", b"User-Agent", b"Content-Type", b"X-Forwarded-For", b"x-forwarded-host",
    b"X-Forwarded-Proto", b"Forwarded", b"Knative-Serving-Revision", b"K-Original-Host",
    b"K-Proxy-Request", b"Proxy-Authorization", b"TE", b"Keep-Alive", b"Trailer", b"Accept",
    b"Cookie", b"X-Request-Id",
]  # fmt: skip
_EDITS = [
    {},
    {"set_headers": (("Host", "model.example"),), "remove_headers": ("K-Original-Host",)},
    {"remove_prefixes": ("knative-serving-", "k-")},
    {"set_headers": (("K-Proxy-Request", "activator"),), "remove_prefixes": ("k-",)},
    {"remove_headers": ("x-forwarded-for", "Forwarded")},
    {"remove_prefixes": ("",)},
]


def test_head_from_the_raw_lines_reads_as_the_head_written_anew() -> None:
    """For requests read whole, the head sent upstream copies the kept lines as they came; the
    parser must read it exactly as the head written from the (name, value) pairs."""
    rng = random.Random(3)
    for _ in range(1500):
        lines = [rng.choice([b"GET", b"POST"]) + b" /v1/models/m:predict?a=b HTTP/1.1"]
        for _ in range(rng.randrange(0, 9)):
            value = rng.choice([b"v", b" 10.0.0.1, 10.0.0.2 ", b"for=1.2.3.4", b"a\tb", b""])
            lines.append(rng.choice(_EDIT_NAMES) + rng.choice(_SEPS[:4]) + value)
        if rng.random() < 0.3:
            lines.append(b"Connection: " + rng.choice([b"keep-alive", b"close"]))
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        req = simple_request(data)
        assert req is not None, data
        method, target, raw = req.method, req.target, req.raw
        edits = request_edits(**rng.choice(_EDITS))  # type: ignore[arg-type]
        framing = rng.choice([b"", b"Content-Length: 3\r\n"])
        client = ("10.1.2.3", xff_line("10.1.2.3"))
        from_raw = edited_request_head(method, target, None, *client, framing, edits, None, raw)
        anew = edited_request_head(method, target, raw_headers(raw), *client, framing, edits, None)
        assert _parse_request(from_raw + b"abc"[: 3 if framing else 0]) == _parse_request(
            anew + b"abc"[: 3 if framing else 0]
        ), (data, edits)


_EDIT_ARGS: list[tuple[tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]]] = [
    ((), (), ()),
    ((("Host", "model.example"),), ("K-Original-Host",), ()),
    ((), (), ("knative-serving-",)),
    ((), ("K-Original-Host",), ("knative-serving-", "k-")),
    ((("K-Proxy-Request", "activator"),), (), ("k-",)),
    ((), ("x-forwarded-for", "Forwarded"), ()),
]


def test_a_routes_edits_follow_each_requests_headers_however_they_alternate() -> None:
    """A route keeps the edits of each set of names a request sets or removes: alternating
    between them (and equal tuples made anew) gives each request its own edits every time."""
    raw = (
        b"GET / HTTP/1.1\r\nKnative-Serving-Rev: r1\r\nK-Original-Host: h\r\n"
        b"X-Forwarded-For: 9.9.9.9\r\n"
    )
    rng = random.Random(5)
    routes: dict[tuple[str, ...], Route] = {}
    client = ("10.1.2.3", xff_line("10.1.2.3"))
    for _ in range(300):
        sets, removes, prefixes = rng.choice(_EDIT_ARGS)
        if rng.random() < 0.5:  # equal, but not the same tuples
            sets, removes, prefixes = tuple(list(sets)), tuple(list(removes)), tuple(list(prefixes))
        route = routes.setdefault(prefixes, Route(remove_prefixes=prefixes))
        edits = route.edits_for(sets, removes)
        head = edited_request_head("GET", "/", None, *client, b"", edits, None, raw).lower()
        gone = {n.lower() for n in removes}
        for name in ("knative-serving-rev", "k-original-host"):
            kept = name not in gone and not any(name.startswith(p) for p in prefixes)
            assert (name.encode() + b":" in head) == kept, (sets, removes, prefixes, head)
        for name, value in sets:
            assert f"{name}: {value}".lower().encode() in head, (sets, head)
        assert (b"x-forwarded-for: 9.9.9.9" in head) == ("x-forwarded-for" not in gone)


def test_the_core_takes_the_simple_paths_only_when_compiled() -> None:
    # Run by the interpreter, the byte loops cost more than the parser's callbacks.
    assert messages.SIMPLE_PATHS is dataplane.compiled()


# --- the queue-proxy's marks, read from the raw head ------------------------------------------

_MARK_NAMES = [
    b"K-Proxy-Request", b"k-proxy-request", b"K-Original-Host", b"K-Network-Probe",
    b"K-Kubelet-Probe", b"User-Agent", b"user-agent", b"K-Network-Hash", b"K-Proxy-Requests",
    b"Host", b"Kube", b"U",
]  # fmt: skip
_MARK_VALUES = [
    b"activator", b"Activator", b"activator ", b"queue", b"probe", b"kube-probe/1.30",
    b"Knative-Activator-Probe", b"knative-activator-probe", b"hey/0.0.1", b"", b"k",
    b"m.default.example.com",
]  # fmt: skip


def _random_raw_heads(
    seed: int, names: list[bytes], values: list[bytes], count: int = 3000
) -> Iterator[bytes]:
    """Raw heads (as ``simple_request`` gives them) of up to 6 lines mixing ``names`` and
    ``values``."""
    rng = random.Random(seed)
    for _ in range(count):
        lines = [b"GET / HTTP/1.1"]
        for _ in range(rng.randrange(0, 7)):
            lines.append(rng.choice(names) + rng.choice(_SEPS[:4]) + rng.choice(values))
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        req = simple_request(data)
        assert req is not None, data
        yield req.raw


_ACT_NAMES = [
    b"Host", b"host", b"HOST", b"K-Network-Probe", b"k-network-probe", b"K-Kubelet-Probe",
    b"User-Agent", b"user-agent", b"K-Network-Hash", b"Hosts", b"Kube", b"K-Original-Host",
]  # fmt: skip
_ACT_VALUES = [
    b"m.default.example.com", b"probe", b"queue", b"activator", b"", b"kube-probe/1.30",
    b"Kube-probe/1.30", b"hey/0.0.1", b"x",
]  # fmt: skip


def _first_values(headers: list[tuple[str, str]], names: HeaderNames) -> list[str | None]:
    """The value of the first header of each name, case-insensitively: what find_headers
    must give."""
    found: list[str | None] = []
    for low in names.lows:
        found.append(next((v for k, v in headers if k.lower() == low), None))
    return found


def test_find_headers_reads_the_first_of_each_name_from_the_raw_head() -> None:
    """What both proxies read of every request (their marks) comes from this one pass: it
    must give what the decoded headers give, for every mix of names, cases and values."""
    names = HeaderNames(
        "Host", "K-Network-Probe", "k-kubelet-probe", "User-Agent", "K-Original-Host"
    )
    for raw in _random_raw_heads(11, _MARK_NAMES + _ACT_NAMES, _MARK_VALUES + _ACT_VALUES):
        assert find_raw_headers(raw, names) == _first_values(raw_headers(raw), names), raw
    head = b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\nUser-Agent:  kube-probe/1.30\r\n"
    assert find_raw_headers(head, names) == ["a", None, None, "kube-probe/1.30", None]
    assert find_raw_headers(b"GET / HTTP/1.1\r\n", names) == [None] * 5


async def test_exchange_find_headers_is_the_same_read_whole_or_parsed() -> None:
    """Exchange.find_headers over a request read whole (its raw head) and over one the parser
    read (a chunked body sends it there) gives the same values."""
    names = HeaderNames("host", "X-A", "x-missing")
    seen: list[list[str | None]] = []

    def handler(ex: Exchange) -> None:
        seen.append(list(ex.find_headers(names)))  # (the names' own list: copied)
        ex.respond_now(200, b"ok")

    server = await serve(handler, "127.0.0.1", 0)
    try:
        heads = [
            b"GET / HTTP/1.1\r\nHost: h\r\nx-a: 1\r\nX-A: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nx-a: 1\r\nX-A: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]
        for head in heads:
            answer = await raw_exchange(server.port, head)
            assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        server.close()
        await server.wait_closed(2)
    assert seen == [["h", "1", None], ["h", "1", None]]
