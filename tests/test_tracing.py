"""Tracing (issue 24): the ``config-observability`` keys, the tracer's sampling and
propagation, against a real OTLP/HTTP receiver on loopback that decodes what the exporter
sends (tests/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.observability import (
    ENDPOINT,
    PROTOCOL,
    SAMPLING_RATE,
    ObservabilityError,
    Tracing,
    folder_stamp,
    parse_tracing,
    read_folder,
    tracing_data,
    write_folder,
)
from dataplane.tracing import Tracer
from tests.otlp_receiver import otlp_receiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

# --- the keys --------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_reads_knatives_keys() -> None:
    assert parse_tracing({}) == Tracing()
    assert not parse_tracing({}).enabled
    on = parse_tracing(
        {PROTOCOL: "http/protobuf", ENDPOINT: "http://otel:4318/v1/traces", SAMPLING_RATE: "0.5"}
    )
    assert on == Tracing(
        protocol="http/protobuf", endpoint="http://otel:4318/v1/traces", sampling_rate=0.5
    )
    assert on.enabled
    assert parse_tracing(tracing_data(on)) == on


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({PROTOCOL: "zipkin"}, "tracing-protocol = 'zipkin': must be none or http/protobuf"),
        ({PROTOCOL: "grpc", ENDPOINT: "http://x:4317"}, "tracing-protocol = 'grpc': not supported"),
        ({PROTOCOL: "http/protobuf"}, "tracing-endpoint: required when tracing-protocol is"),
        ({ENDPOINT: "otel:4318"}, "tracing-endpoint = 'otel:4318': must be an http(s) URL"),
        ({SAMPLING_RATE: "2"}, "tracing-sampling-rate = '2': must be a number within [0, 1]"),
        ({SAMPLING_RATE: "x"}, "tracing-sampling-rate = 'x': must be a number within [0, 1]"),
        ({"tracing-rate": "1"}, "tracing-rate: unknown key"),
    ],
)
def test_bad_keys_are_named(data: dict[str, str], message: str) -> None:
    with pytest.raises(ObservabilityError) as err:
        parse_tracing(data)
    assert any(e.startswith(message) for e in err.value.errors), err.value.errors


def test_a_configmap_may_hold_knatives_other_keys_but_the_spec_may_not() -> None:
    data = {"logging.enable-request-log": "false", "_example": "..."}
    assert parse_tracing(data, strict=False) == Tracing()
    with pytest.raises(ObservabilityError, match=r"logging\.enable-request-log: unknown key"):
        parse_tracing(data)


def test_a_folder_of_one_file_per_key_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "observability"
    on = Tracing(protocol="http/protobuf", endpoint="http://127.0.0.1:1/v1/traces", sampling_rate=1)
    write_folder(folder, tracing_data(on))
    before = folder_stamp(folder)
    assert parse_tracing(read_folder(folder)) == on
    write_folder(folder, tracing_data(Tracing()))
    assert parse_tracing(read_folder(folder)) == Tracing()
    assert folder_stamp(folder) != before
    assert read_folder(tmp_path / "missing") == {}


# --- the tracer --------------------------------------------------------------------------------


async def test_sampling_follows_the_parent_then_the_rate() -> None:
    tracer = Tracer("activator")
    assert tracer.begin([("traceparent", f"00-{TRACE}-{PARENT}-01")]) is None  # off
    tracer.configure(Tracing(protocol="http/protobuf", endpoint="http://127.0.0.1:9/v1/traces"))
    try:
        assert tracer.on
        assert tracer.begin([("traceparent", f"00-{TRACE}-{PARENT}-01")]) is not None
        assert tracer.begin([("Traceparent", f"00-{TRACE}-{PARENT}-00")]) is None  # not sampled
        assert tracer.begin([]) is None  # rate 0, no parent
        assert (
            tracer.begin([("X-B3-TraceId", TRACE), ("X-B3-SpanId", PARENT), ("X-B3-Sampled", "1")])
            is not None
        )
        assert tracer.begin([("b3", f"{TRACE}-{PARENT}-0")]) is None
        tracer.configure(
            Tracing(
                protocol="http/protobuf", endpoint="http://127.0.0.1:9/v1/traces", sampling_rate=1
            )
        )
        assert tracer.begin([]) is not None
        tracer.configure(Tracing())
        assert not tracer.on
        assert tracer.begin([]) is None
    finally:
        tracer.close()


async def test_spans_reach_a_real_receiver_with_their_parents() -> None:
    async with otlp_receiver() as receiver:
        tracer = Tracer("queue-proxy", {"k8s.pod.name": "pod-1"})
        tracer.configure(Tracing(protocol="http/protobuf", endpoint=receiver.url, sampling_rate=1))
        try:
            ctx = tracer.begin([("traceparent", f"00-{TRACE}-{PARENT}-01")])
            assert ctx is not None
            loop = asyncio.get_running_loop()
            arrived = loop.time()
            root = tracer.span(
                "queue_proxy",
                ctx,
                kind="server",
                start_ns=tracer.wall_ns(arrived, loop.time()),
                attributes={"http.request.method": "POST"},
            )
            child = tracer.span("queue_forward", root, kind="client")
            headers = dict(tracer.headers(child))
            child.end()
            root.end()
            assert await asyncio.to_thread(tracer.flush)
            await receiver.until(lambda spans: len(spans) == 2)
        finally:
            tracer.close()
    by_name = {s.name: s for s in receiver.spans}
    server, client = by_name["queue_proxy"], by_name["queue_forward"]
    assert server.trace_id == client.trace_id == TRACE
    assert server.parent_id == PARENT
    assert client.parent_id == server.span_id
    assert (server.kind, client.kind) == ("server", "client")
    assert server.service == "queue-proxy"
    assert server.attributes == {"http.request.method": "POST"}
    assert headers["traceparent"] == f"00-{TRACE}-{client.span_id}-01"
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
