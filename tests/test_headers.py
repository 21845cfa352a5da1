"""The header passes of the forwarding core, called directly: every header name is looked at in
any letter case (the passes skip the lowering of names that cannot match, which must not change
what they drop), and a random comparison against a plain statement of the rules."""

from __future__ import annotations

import random

from dataplane.headers import request_head, scan_response_headers


def _lines(head: bytes) -> list[str]:
    text = head.decode("latin-1")
    assert text.endswith("\r\n\r\n")
    return text[: -len("\r\n\r\n")].split("\r\n")


def test_hop_by_hop_dropped_in_any_case_and_others_kept_in_order() -> None:
    headers = [
        ("Host", "svc.example"),
        ("CONNECTION", "keep-alive"),
        ("keep-ALIVE", "timeout=5"),
        ("Proxy-Authorization", "Basic x"),
        ("pRoXy-Connection", "close"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("transfer-ENCODING", "chunked"),
        ("UPGRADE", "h2c"),
        ("Expect", "100-continue"),
        ("content-LENGTH", "5"),
        ("Content-Type", "application/json"),
        ("accept", "*/*"),
        ("X-Request-Id", "abc"),
    ]
    head = request_head("POST", "/v1/models/m:predict", headers, "10.0.0.9", framing=b"")
    assert _lines(head) == [
        "POST /v1/models/m:predict HTTP/1.1",
        "Host: svc.example",
        "Content-Type: application/json",
        "accept: */*",
        "X-Request-Id: abc",
        "X-Forwarded-For: 10.0.0.9",
    ]


def test_removed_names_and_prefixes_match_in_any_case() -> None:
    headers = [
        ("k-original-host", "a"),
        ("K-ORIGINAL-HOST", "b"),
        ("Knative-Serving-Revision", "r"),
        ("KNATIVE-SERVING-NAMESPACE", "n"),
        ("zz-secret", "1"),
        ("ZZ-Other", "2"),
        ("Zebra", "kept"),
        ("knative-other", "kept"),
    ]
    head = request_head(
        "GET",
        "/",
        headers,
        "1.2.3.4",
        framing=b"",
        remove_headers=("K-Original-Host",),
        remove_prefixes=("Knative-Serving-", "Zz-"),
    )
    assert _lines(head)[1:] == ["Zebra: kept", "knative-other: kept", "X-Forwarded-For: 1.2.3.4"]


def test_set_headers_replace_the_clients_in_any_case_and_framing_ends_the_head() -> None:
    headers = [("host", "old"), ("HOST", "older"), ("User-Agent", "ua")]
    head = request_head(
        "PUT",
        "/x",
        headers,
        "::1",
        framing=b"Content-Length: 3\r\n",
        set_headers=[("Host", "new")],
    )
    assert _lines(head) == [
        "PUT /x HTTP/1.1",
        "User-Agent: ua",
        "X-Forwarded-For: ::1",
        "Host: new",
        "Content-Length: 3",
    ]


def test_an_empty_prefix_removes_every_client_header() -> None:
    headers = [("Accept", "x"), ("B", "y")]
    head = request_head("GET", "/", headers, "c", framing=b"", remove_prefixes=("",))
    assert _lines(head) == ["GET / HTTP/1.1", "X-Forwarded-For: c"]


def test_forwarded_for_appended_and_forwarded_synthesized() -> None:
    headers = [
        ("x-forwarded-FOR", "203.0.113.7"),
        ("X-Forwarded-For", "10.1.1.1, 10.2.2.2"),
        ("X-FORWARDED-PROTO", "https"),
        ("x-forwarded-host", "svc.example"),
        ("Accept", "*/*"),
    ]
    head = request_head("GET", "/", headers, "127.0.0.1", framing=b"")
    assert _lines(head)[1:] == [  # X-Forwarded-Host and -Proto pass on; -For is rewritten
        "X-FORWARDED-PROTO: https",
        "x-forwarded-host: svc.example",
        "Accept: */*",
        "Forwarded: for=203.0.113.7;host=svc.example;proto=https, for=10.1.1.1, for=10.2.2.2",
        "X-Forwarded-For: 203.0.113.7, 10.1.1.1, 10.2.2.2, 127.0.0.1",
    ]
    # A client's own Forwarded is passed on as it is, not synthesized.
    kept = request_head("GET", "/", [*headers, ("FORWARDED", "for=x")], "c", framing=b"")
    assert [line for line in _lines(kept) if line.lower().startswith("forwarded")] == [
        "FORWARDED: for=x"
    ]


def test_names_listed_in_connection_are_dropped_in_any_case() -> None:
    headers = [("Connection", "X-Custom, Keep-Alive"), ("x-CUSTOM", "1"), ("Other", "2")]
    head = request_head("GET", "/", headers, "c", framing=b"")
    assert _lines(head)[1:] == ["Other: 2", "X-Forwarded-For: c"]


def test_response_headers_drop_framing_and_hop_by_hop_in_any_case() -> None:
    lines, length, chunked = scan_response_headers(
        [
            (b"Server", b"model"),
            (b"CONTENT-LENGTH", b"11"),
            (b"connection", b"X-Hop"),
            (b"x-hop", b"dropped"),
            (b"Proxy-Thing", b"dropped"),
            (b"KEEP-ALIVE", b"timeout=5"),
            (b"Content-Type", b"application/json"),
            (b"trailer", b"x"),
            (b"Upgrade", b"h2c"),
        ]
    )
    assert lines == b"Server: model\r\nContent-Type: application/json\r\n"
    assert (length, chunked) == (b"11", False)
    _, length, chunked = scan_response_headers([(b"Transfer-Encoding", b"gzip, Chunked")])
    assert (length, chunked) == (b"", True)


_NAMES = [
    "Host",
    "Accept",
    "Content-Type",
    "Connection",
    "Keep-Alive",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Expect",
    "Content-Length",
    "K-Original-Host",
    "Knative-Serving-Revision",
    "X-Request-Id",
    "Authorization",
    "Cookie",
    "Zz-Thing",
    "User-Agent",
]
_DROP = {
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}


def _cased(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def test_random_headers_against_the_rules() -> None:
    """Random names in random case: kept exactly when no rule names them, in order."""
    rng = random.Random(7)
    for _ in range(300):
        headers = [(_cased(rng.choice(_NAMES), rng), f"v{i}") for i in range(rng.randint(0, 12))]
        headers = [(n, "keep-alive") if n.lower() == "connection" else (n, v) for n, v in headers]
        removes = tuple(_cased("K-Original-Host", rng) for _ in range(rng.randint(0, 1)))
        prefixes = tuple(_cased(p, rng) for p in ("knative-serving-", "zz-") if rng.random() < 0.5)
        head = request_head(
            "GET",
            "/",
            headers,
            "c",
            framing=b"",
            remove_headers=removes,
            remove_prefixes=prefixes,
        )
        removed = {r.lower() for r in removes}
        expected = [
            f"{n}: {v}"
            for n, v in headers
            if n.lower() not in _DROP
            and not n.lower().startswith("proxy-")
            and n.lower() not in removed
            and not n.lower().startswith(tuple(p.lower() for p in prefixes))
        ]
        assert _lines(head)[1:-1] == expected, (headers, removes, prefixes)

        lines, _, _ = scan_response_headers([(n.encode(), v.encode()) for n, v in headers])
        kept = [
            f"{n}: {v}\r\n"
            for n, v in headers
            if n.lower() not in _DROP - {"expect"} and not n.lower().startswith("proxy-")
        ]
        assert lines == "".join(kept).encode()
