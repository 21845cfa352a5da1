"""A real OTLP/HTTP trace receiver on loopback for the tracing tests: it decodes the protobuf
``ExportTraceServiceRequest`` each exporter posts to ``/v1/traces`` (as an OpenTelemetry
collector's ``otlphttp`` receiver does) and keeps every span as a :class:`Received`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.dataplane_fixtures import run_app

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it (ids in hex, times in unix nanoseconds)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass
class Receiver:
    url: str
    spans: list[Received] = field(default_factory=list)
    posts: int = 0

    def named(self, name: str) -> list[Received]:
        return [s for s in self.spans if s.name == name]

    async def until(
        self, predicate: Callable[[list[Received]], bool], within: float = 15.0
    ) -> None:
        async with asyncio.timeout(within):
            while not predicate(self.spans):  # noqa: ASYNC110 - polling with a deadline
                await asyncio.sleep(0.05)


@asynccontextmanager
async def otlp_receiver(host: str = "127.0.0.1") -> AsyncIterator[Receiver]:
    """An OTLP/HTTP receiver listening on ``host`` (a free port)."""
    holder: list[Receiver] = []

    async def traces(request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"not protobuf: {request.content_type}")
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        receiver = holder[0]
        receiver.posts += 1
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    receiver.spans.append(
                        Received(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            kind=KINDS.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=[
                                (
                                    e.name,
                                    e.time_unix_nano,
                                    {a.key: _value(a.value) for a in e.attributes},
                                )
                                for e in s.events
                            ],
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    async with run_app(app, host) as (_, port):
        holder.append(Receiver(url=f"http://{host}:{port}/v1/traces"))
        yield holder[0]
