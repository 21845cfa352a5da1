"""Slow, idle and surplus client connections (issue 19, item 4), against real servers on loopback.

The core closes a request head not complete within its header timeout (408 once a request line
has started), a keep-alive connection idle past its idle timeout, and refuses connections over
its cap (closed at once, counted); a head that completes in time, a slow body and a long
response are never cut. The same limits are wired into the queue-proxy (environment variables)
and the activator (flags and environment), with their metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from activator.app import (
    Activator,
    ActivatorSettings,
    build_activator,
    parse_args,
    settings_from_args,
)
from activator.app import (
    ConfigError as ActivatorConfigError,
)
from activator.sinks import InProcessStatSink
from cluster.memory import MemoryEndpoints, MemoryRoutes
from dataplane.api import Exchange
from dataplane.server import Server, default_max_connections, serve
from queue_proxy.app import QueueProxy
from queue_proxy.config import ConfigError, Settings
from tests.dataplane_fixtures import poll_until, run_app, upstream_app

HALF_HEAD = b"POST /predict HTTP/1.1\r\nHost: iris.default.example.com\r\nContent-Le"


async def _ok(ex: Exchange) -> None:
    await ex.respond(200, b"ok")


@asynccontextmanager
async def core(handler: object = _ok, **kwargs: object) -> AsyncIterator[Server]:
    server = await serve(handler, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed(2)


async def read_to_close(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything until the server closes (a reset counts as a close)."""
    out = b""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


async def get_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert await reader.readexactly(2) == b"ok"
    return head


# --- the core ------------------------------------------------------------------------------


async def test_800_half_sent_heads_get_408_and_close_after_the_header_timeout() -> None:
    timeout = 1.0
    refused: list[int] = []
    async with core(header_timeout_s=timeout, on_header_timeout=lambda: refused.append(1)) as s:
        loop = asyncio.get_running_loop()
        opened = loop.time()  # (the first head's clock starts at accept, after this)
        clients = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(800)]
        for _, writer in clients:
            writer.write(HALF_HEAD)
        sent = loop.time()

        async def closed_at(reader: asyncio.StreamReader) -> tuple[bytes, float]:
            data = await read_to_close(reader, timeout + 10)
            return data, loop.time()

        results = await asyncio.gather(*(closed_at(r) for r, _ in clients))
        for _, writer in clients:
            writer.close()
        for data, at in results:
            assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
            assert b"Connection: close\r\n" in data
            assert at - opened >= timeout - 0.05  # never before the timeout
        assert max(at for _, at in results) - sent < timeout + 5
        assert s.header_timeouts == 800
        assert len(refused) == 800
        await poll_until(lambda: not s.connections)


async def test_request_line_without_a_version_gets_408() -> None:
    async with core(header_timeout_s=0.3) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"GET /\r\n")
        data = await read_to_close(reader, 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
        assert s.header_timeouts == 1


async def test_a_connection_that_sends_nothing_closes_after_the_header_timeout() -> None:
    """Like Go's ReadHeaderTimeout (and nginx's client_header_timeout), the first head's clock
    starts at accept: a silent connection is closed without a response, before the idle
    timeout."""
    async with core(header_timeout_s=0.3, keepalive_timeout_s=75) as s:
        loop = asyncio.get_running_loop()
        start = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        assert await read_to_close(reader, 5) == b""
        assert 0.25 <= loop.time() - start < 3
        writer.close()


async def test_idle_keep_alive_closes_after_the_idle_timeout_not_the_header_timeout() -> None:
    async with core(header_timeout_s=30, keepalive_timeout_s=0.3) as s:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        await get_ok(reader, writer)
        idle_from = loop.time()
        assert await read_to_close(reader, 5) == b""
        assert 0.25 <= loop.time() - idle_from < 3
        assert s.header_timeouts == 0
        writer.close()


async def test_slow_but_progressing_request_and_long_responses_are_not_cut() -> None:
    """The header timeout covers the head only, the idle timeout only the time between
    requests: a head sent in pieces within the timeout, a body that trickles for longer than
    either timeout, and responses that take longer (a gap mid-stream, a long inference) all
    complete on one connection."""

    async with run_app(upstream_app()) as (_, upstream_port):

        async def handler(ex: Exchange) -> None:
            await ex.forward(f"127.0.0.1:{upstream_port}")

        async with core(handler, header_timeout_s=0.6, keepalive_timeout_s=0.3) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            # the head in two pieces, 0.3 s apart (the pause is the client's pace, not a wait)
            writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\n")
            await asyncio.sleep(0.3)
            writer.write(b"Content-Length: 50\r\n\r\n")
            for _ in range(5):  # the body over 1.5 s: longer than both timeouts
                await asyncio.sleep(0.3)
                writer.write(b"x" * 10)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert await reader.readexactly(2) == b"50"
            # a response with a 1.2 s gap mid-stream, then a 1.2 s inference
            writer.write(b"GET /drip?s=1.2 HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == (
                b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"
            )
            writer.write(b"GET /sleep?s=1.2 HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert await reader.readexactly(5) == b"slept"
            writer.close()
            assert s.header_timeouts == 0


async def test_connections_over_the_cap_are_closed_at_once_and_counted() -> None:
    refused: list[int] = []
    async with core(max_connections=4, on_connection_refused=lambda: refused.append(1)) as s:
        clients = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(4)]
        for reader, writer in clients:
            await get_ok(reader, writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        with suppress(ConnectionResetError):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_to_close(reader, 5) == b""  # no answer: closed at once
        writer.close()
        assert s.refused_connections == 1
        assert refused == [1]
        for reader, writer in clients:  # the ones under the cap are untouched
            await get_ok(reader, writer)
        clients[0][1].close()
        await poll_until(lambda: len(s.connections) == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        await get_ok(reader, writer)  # room again
        writer.close()
        for _, w in clients[1:]:
            w.close()


def test_the_default_cap_is_half_the_open_file_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == (0 if soft == resource.RLIM_INFINITY else soft // 2)


# --- the queue-proxy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "field", "want"),
    [
        pytest.param({}, "header_timeout_s", 60.0, id="header-default-60s"),
        pytest.param({}, "keepalive_timeout_s", 75.0, id="keepalive-default-75s"),
        pytest.param({}, "max_connections", None, id="cap-default-auto"),
        pytest.param({"QUEUE_HEADER_TIMEOUT_SECONDS": "5"}, "header_timeout_s", 5.0, id="header"),
        pytest.param(
            {"QUEUE_KEEPALIVE_TIMEOUT_SECONDS": "0"}, "keepalive_timeout_s", 0.0, id="keepalive-off"
        ),
        pytest.param({"QUEUE_MAX_CONNECTIONS": "100"}, "max_connections", 100, id="cap"),
        pytest.param({"QUEUE_MAX_CONNECTIONS": "0"}, "max_connections", 0, id="cap-off"),
    ],
)
def test_queue_proxy_reads_its_connection_limits(
    env: dict[str, str], field: str, want: object
) -> None:
    assert getattr(Settings.from_env({"USER_PORT": "8080", **env}), field) == want


@pytest.mark.parametrize(
    ("var", "raw", "message"),
    [
        pytest.param(
            "QUEUE_HEADER_TIMEOUT_SECONDS", "1m", "must be a number of seconds", id="header-unit"
        ),
        pytest.param("QUEUE_KEEPALIVE_TIMEOUT_SECONDS", "-1", ">= 0", id="keepalive-negative"),
        pytest.param("QUEUE_MAX_CONNECTIONS", "many", "must be an integer", id="cap-text"),
        pytest.param("QUEUE_MAX_CONNECTIONS", "-5", "must be >= 0", id="cap-negative"),
    ],
)
def test_queue_proxy_connection_limit_errors_name_the_variable(
    var: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"USER_PORT": "8080", var: raw})
    assert str(err.value).startswith(f"{var} = {raw!r}: ")
    assert message in str(err.value)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The value of the one sample named ``name`` whose labels include ``labels``."""
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


async def test_queue_proxy_applies_its_limits_and_counts_refusals() -> None:
    async with run_app(upstream_app()) as (_, port):
        settings = Settings(
            user_port=port,
            serving_port=0,
            admin_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            pod="pod-1",
            drain_quiet_period_s=0.1,
            header_timeout_s=1.0,
            keepalive_timeout_s=1.0,
            max_connections=2,
        )
        qp = QueueProxy(settings, nvml=None, stats_interval_s=None)
        await qp.start()
        task = asyncio.create_task(qp.run())
        try:
            registry = qp.metrics.registry
            slow = await asyncio.open_connection("127.0.0.1", qp.serving_port)
            slow[1].write(HALF_HEAD)
            assert (await read_to_close(slow[0], 5)).startswith(b"HTTP/1.1 408")
            assert _sample(registry, "queue_proxy_refusals_total", reason="header_timeout") == 1
            slow[1].close()
            await poll_until(lambda: not qp.server.connections)
            kept = [await asyncio.open_connection("127.0.0.1", qp.serving_port) for _ in range(2)]
            for reader, writer in kept:
                writer.write(b"GET /sleep?s=0 HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert await reader.readexactly(5) == b"slept"
            over = await asyncio.open_connection("127.0.0.1", qp.serving_port)
            assert await read_to_close(over[0], 5) == b""
            over[1].close()
            assert _sample(registry, "queue_proxy_refusals_total", reason="connection_limit") == 1
            for reader, _ in kept:  # idle past the keep-alive timeout: closed
                assert await read_to_close(reader, 5) == b""
            for _, w in kept:
                w.close()
        finally:
            qp.request_shutdown()
            await asyncio.wait_for(task, 10)


# --- the activator -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "want"),
    [
        pytest.param(
            [],
            {},
            {"header_timeout_s": 60.0, "keepalive_timeout_s": 75.0, "max_connections": None},
            id="defaults-nginx-and-knative",
        ),
        pytest.param(
            [],
            {
                "ACTIVATOR_HEADER_TIMEOUT_SECONDS": "10",
                "ACTIVATOR_KEEPALIVE_TIMEOUT_SECONDS": "20",
                "ACTIVATOR_MAX_CONNECTIONS": "30",
            },
            {"header_timeout_s": 10.0, "keepalive_timeout_s": 20.0, "max_connections": 30},
            id="environment",
        ),
        pytest.param(
            ["--header-timeout", "1.5", "--keepalive-timeout", "0", "--max-connections", "0"],
            {"ACTIVATOR_HEADER_TIMEOUT_SECONDS": "10"},
            {"header_timeout_s": 1.5, "keepalive_timeout_s": 0.0, "max_connections": 0},
            id="flags-win",
        ),
    ],
)
def test_activator_reads_its_connection_limits(
    argv: list[str], env: dict[str, str], want: dict[str, object]
) -> None:
    settings = settings_from_args(parse_args(argv), env)
    assert {k: getattr(settings, k) for k in want} == want


@pytest.mark.parametrize(
    ("argv", "env", "prefix"),
    [
        pytest.param(
            [],
            {"ACTIVATOR_HEADER_TIMEOUT_SECONDS": "soon"},
            "ACTIVATOR_HEADER_TIMEOUT_SECONDS = 'soon': ",
            id="env-header",
        ),
        pytest.param(
            [],
            {"ACTIVATOR_MAX_CONNECTIONS": "-1"},
            "ACTIVATOR_MAX_CONNECTIONS = '-1': ",
            id="env-cap",
        ),
        pytest.param(
            ["--keepalive-timeout", "inf"], {}, "--keepalive-timeout = 'inf': ", id="flag-keepalive"
        ),
    ],
)
def test_activator_connection_limit_errors_name_the_setting(
    argv: list[str], env: dict[str, str], prefix: str
) -> None:
    with pytest.raises(ActivatorConfigError) as err:
        settings_from_args(parse_args(argv), env)
    assert str(err.value).startswith(prefix)


@asynccontextmanager
async def activator(**settings: object) -> AsyncIterator[Activator]:
    stats: list[object] = []
    act = build_activator(
        MemoryRoutes(),
        MemoryEndpoints(),
        InProcessStatSink(stats.extend),
        settings=ActivatorSettings(**settings),  # type: ignore[arg-type]
    )
    await act.start("127.0.0.1", 0)
    try:
        yield act
    finally:
        await act.close()


async def test_activator_applies_its_limits_and_counts_refusals() -> None:
    async with activator(header_timeout_s=1.0, keepalive_timeout_s=1.0, max_connections=2) as act:
        assert act.server is not None
        server = act.server
        registry = act.metrics.registry
        reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
        writer.write(b"GET /\r\n")
        assert (await read_to_close(reader, 5)).startswith(b"HTTP/1.1 408")
        writer.close()
        assert _sample(registry, "activator_refusals_total", reason="header_timeout") == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
        writer.write(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        assert (await read_to_close(reader, 5)).startswith(b"HTTP/1.1 400")
        writer.close()
        assert _sample(registry, "activator_refusals_total", reason="bad_request") == 1
        await poll_until(lambda: not server.connections)
        kept = [await asyncio.open_connection("127.0.0.1", act.port) for _ in range(2)]
        await poll_until(lambda: len(server.connections) == 2)
        over = await asyncio.open_connection("127.0.0.1", act.port)
        assert await read_to_close(over[0], 5) == b""
        over[1].close()
        assert _sample(registry, "activator_refusals_total", reason="connection_limit") == 1
        waits: list[Awaitable[bytes]] = [read_to_close(r, 5) for r, _ in kept]
        assert await asyncio.gather(*waits) == [b"", b""]  # silent: closed by the header timeout
        for _, w in kept:
            w.close()
        assert b"activator_refusals_total" in generate_latest(registry)


def test_activator_settings_default_to_the_documented_values() -> None:
    s = ActivatorSettings()
    assert (s.header_timeout_s, s.keepalive_timeout_s, s.max_connections) == (60.0, 75.0, None)
    assert dataclasses.replace(s, max_connections=0).max_connections == 0
