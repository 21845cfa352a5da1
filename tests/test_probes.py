"""The probe answers both proxies share (``dataplane.probes``), each proxy's as Knative's.

The proxies' own tests (``test_queue_proxy.test_probe_contract``,
``test_activator_component.test_probes_health_and_drain``) ask them over HTTP; these ask the
answers directly, every branch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import pytest

from activator.handler import MARK_HEADERS as ACT_MARKS
from activator.handler import header_marks
from dataplane import probes
from dataplane.api import Exchange
from dataplane.messages import find_raw_headers
from queue_proxy.handler import MARK_HEADERS as QP_MARKS
from queue_proxy.handler import request_marks

Answer = tuple[int, bytes, tuple[tuple[str, str], ...]]


class _Exchange:
    """What a probe answer uses of an exchange: its headers, and ``respond_now``."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.answers: list[Answer] = []

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def respond_now(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.answers.append((status, body, tuple(headers)))


def _answer(answer: Callable[[Exchange], None], **headers: str) -> Answer:
    ex = _Exchange({k.replace("_", "-"): v for k, v in headers.items()})
    answer(cast(Exchange, ex))
    [one] = ex.answers
    return one


HASH = {"K_Network_Hash": "h-1"}


@pytest.mark.parametrize(
    ("draining", "headers", "expected"),
    [
        pytest.param(False, HASH, (200, b"", (("K-Network-Hash", "h-1"),)), id="hash-echoed"),
        pytest.param(False, {}, (400, b"no K-Network-Hash header\n", ()), id="no-hash"),
        pytest.param(False, {"K_Network_Hash": ""}, (400, b"no K-Network-Hash header\n", ()), id="empty-hash"),
        pytest.param(True, HASH, (503, b"drained\n", ()), id="draining"),
    ],
)  # fmt: skip
def test_kingress_probe(draining: bool, headers: dict[str, str], expected: Answer) -> None:
    def answer(ex: Exchange) -> None:
        probes.kingress_probe(ex, draining=draining, draining_body=b"drained\n")

    assert _answer(answer, **headers) == expected


@pytest.mark.parametrize(
    ("probe", "draining", "ready", "expected"),
    [
        pytest.param(None, False, True, (200, b"queue"), id="health-check-ready"),
        pytest.param("queue", False, True, (200, b"queue"), id="queue-probe-ready"),
        pytest.param("queue", False, False, (503, b"model server not ready\n"), id="not-ready"),
        pytest.param(None, True, True, (503, b"shutting down\n"), id="draining"),
        pytest.param("queue", True, False, (503, b"shutting down\n"), id="draining-not-ready"),
        pytest.param("nope", False, True, (400, b"unexpected probe header value: nope\n"), id="bad-value"),
        # (as the queue-proxy answered before this module: the value is checked first)
        pytest.param("x", True, True, (400, b"unexpected probe header value: x\n"), id="bad-value-draining"),
    ],
)  # fmt: skip
def test_queue_health(
    probe: str | None, draining: bool, ready: bool, expected: tuple[int, bytes]
) -> None:
    def answer(ex: Exchange) -> None:
        probes.queue_health(ex, probe, draining=draining, ready=ready)

    assert _answer(answer) == (*expected, ())


@pytest.mark.parametrize(
    ("draining", "connected", "expected"),
    [
        pytest.param(False, True, (200, b"ok\n"), id="ok"),
        pytest.param(False, False, (500, b"not connected to the autoscaler\n"), id="no-autoscaler"),
        pytest.param(True, True, (503, b"draining\n"), id="draining"),
        pytest.param(True, False, (503, b"draining\n"), id="draining-no-autoscaler"),
    ],
)  # fmt: skip
def test_activator_health(draining: bool, connected: bool, expected: tuple[int, bytes]) -> None:
    def answer(ex: Exchange) -> None:
        probes.activator_health(ex, draining=draining, connected=connected)

    assert _answer(answer) == (*expected, ())


@pytest.mark.parametrize(
    ("probe", "draining", "headers", "expected"),
    [
        pytest.param("activator", False, {}, (200, b"activator", ()), id="activator"),
        pytest.param("probe", False, HASH, (200, b"", (("K-Network-Hash", "h-1"),)), id="kingress"),
        pytest.param("probe", True, HASH, (503, b"draining\n", ()), id="kingress-draining"),
        pytest.param("queue", False, {}, (400, b"unexpected probe header value: queue\n", ()), id="queue"),
    ],
)  # fmt: skip
def test_activator_probe(
    probe: str, draining: bool, headers: dict[str, str], expected: Answer
) -> None:
    def answer(ex: Exchange) -> None:
        probes.activator_probe(ex, probe, draining=draining)

    assert _answer(answer, **headers) == expected


@pytest.mark.parametrize(
    ("headers", "queue_proxy", "activator"),
    [
        pytest.param([("User-Agent", "kube-probe/1.30")], True, True, id="kubelet"),
        pytest.param([("User-Agent", "Knative-Activator-Probe")], True, False, id="activator-agent"),
        pytest.param([("User-Agent", "Knative-Autoscaling-Probe")], True, False, id="autoscaler-agent"),
        pytest.param([("User-Agent", "hey/0.0.1")], False, False, id="other-agent"),
        pytest.param([("K-Kubelet-Probe", "1")], True, True, id="kubelet-header"),
        # Knative's IsKubeletProbe: the header's value must be non-empty (for both)
        pytest.param([("K-Kubelet-Probe", "")], False, False, id="empty-kubelet-header"),
    ],
)  # fmt: skip
def test_what_each_proxy_counts_as_a_health_check(
    headers: list[tuple[str, str]], queue_proxy: bool, activator: bool
) -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
    assert request_marks(find_raw_headers(raw, QP_MARKS))[3] is queue_proxy
    assert header_marks(find_raw_headers(raw, ACT_MARKS))[2] is activator


def test_each_proxy_reads_the_first_of_each_header_it_marks() -> None:
    """As Go's Header.Get (Knative's proxies): the first value of a repeated header counts,
    in both proxies alike, whatever the letter case."""
    raw = (
        b"GET / HTTP/1.1\r\nhost: a.example\r\nHost: b.example\r\nk-proxy-request: activator\r\n"
        b"K-Proxy-Request: other\r\nK-Original-Host: m.example\r\nk-network-probe: queue\r\n"
        b"K-Network-Probe: probe\r\n"
    )
    assert request_marks(find_raw_headers(raw, QP_MARKS)) == (True, "m.example", "queue", False)
    assert header_marks(find_raw_headers(raw, ACT_MARKS)) == ("a.example", "queue", False)
