"""The queue-proxy in-process, in front of a real upstream on loopback (reference §3)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cluster.spec import ReadinessProbe
from dataplane.api import NOT_SENT_HEADER
from metrics.clock import ManualClock
from queue_proxy.app import QueueProxy, main
from queue_proxy.config import ConfigError, Settings, parse_probe
from tests.dataplane_fixtures import GATES, parse_echo, poll_until, run_app, upstream_app

BASE = Settings(
    user_port=1,
    serving_port=0,
    admin_port=0,
    metrics_port=0,
    bind_host="127.0.0.1",
    drain_quiet_period_s=0.3,
    pod="pod-1",
    namespace="default",
    revision="iris-00001",
)


@dataclasses.dataclass
class Running:
    qp: QueueProxy
    app: Any
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.qp.serving_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.qp.metrics_port}"


@asynccontextmanager
async def started(
    user_port: int, *, nvml: Any = None, clock: Any = None, **changes: Any
) -> AsyncIterator[QueueProxy]:
    """A queue-proxy in front of ``127.0.0.1:user_port``, running until the block ends."""
    settings = dataclasses.replace(BASE, user_port=user_port, **changes)
    qp = QueueProxy(settings, nvml=nvml, clock=clock, stats_interval_s=None)
    await qp.start()
    task = asyncio.create_task(qp.run())
    try:
        yield qp
    finally:
        qp.request_shutdown()
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def running(
    *, wait_ready: bool = True, nvml: Any = None, clock: Any = None, **changes: Any
) -> AsyncIterator[Running]:
    async with (
        run_app(upstream_app()) as (app, port),
        started(port, nvml=nvml, clock=clock, **changes) as qp,
    ):
        if wait_ready:
            await asyncio.wait_for(qp.readiness.became_ready.wait(), 5)
        async with aiohttp.ClientSession() as session:
            yield Running(qp, app, session)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if absent."""
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                return float(smp.value)
    return None


async def scrape(r: Running) -> str:
    async with r.session.get(r.metrics_url + "/metrics") as resp:
        return await resp.text()


async def scrape_port(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return await resp.text()


async def get(r: Running, path: str, **kw: Any) -> tuple[int, bytes]:
    async with r.session.get(r.url + path, **kw) as resp:
        return resp.status, await resp.read()


async def test_breaker_cc1_serves_eleven_and_refuses_the_twelfth_at_once() -> None:
    async with running(container_concurrency=1) as r:
        tasks = [asyncio.create_task(get(r, "/stream?gate=b")) for _ in range(11)]
        assert r.qp.breaker is not None
        breaker = r.qp.breaker
        await poll_until(lambda: breaker.in_flight == 11)
        t0 = time.monotonic()
        status, body = await get(r, "/echo")
        assert (status, body) == (503, b"pending request queue full\n")
        assert time.monotonic() - t0 < 0.5
        r.app[GATES]["b"].set()
        results = await asyncio.gather(*tasks)
        assert [s for s, _ in results] == [200] * 11
        metrics = await scrape(r)
        assert sample(metrics, "queue_proxy_refusals_total", reason="queue_full") == 1.0
        assert sample(metrics, "queue_proxy_requests_total", code_class="2xx") == 11.0


async def test_stats_on_a_known_concurrency_pattern() -> None:
    clock = ManualClock()
    async with running(clock=clock) as r:
        reporter = r.qp.stats
        reporter.report()  # start a fresh period at t0
        a = asyncio.create_task(get(r, "/stream?gate=a"))
        await poll_until(lambda: reporter.requests.concurrency == 1)
        clock.advance(0.5)
        b = asyncio.create_task(get(r, "/stream?gate=b", headers={"K-Proxy-Request": "activator"}))
        await poll_until(lambda: reporter.requests.concurrency == 2)
        assert (await get(r, "/", headers={"K-Network-Probe": "queue"}))[0] == 200
        clock.advance(0.5)
        stat = reporter.report()
        # A for 1 s, B (proxied) for the last 0.5 s: (1*0.5 + 2*0.5) / 1 = 1.5
        assert stat.average_concurrent_requests == pytest.approx(1.5)
        assert stat.average_proxied_concurrent_requests == pytest.approx(0.5)
        assert (stat.request_count, stat.proxied_request_count) == (2.0, 1.0)
        r.app[GATES]["a"].set()
        r.app[GATES]["b"].set()
        await asyncio.gather(a, b)
        clock.advance(2.0)
        stat = reporter.report()
        assert stat.average_concurrent_requests == 0.0
        assert stat.request_count == 0.0
        assert stat.process_uptime == pytest.approx(3.0)
        async with r.session.get(r.metrics_url + "/stats") as resp:
            served = json.loads(await resp.read())
        assert set(served) == {
            "pod_name",
            "average_concurrent_requests",
            "average_proxied_concurrent_requests",
            "request_count",
            "proxied_request_count",
            "process_uptime",
            "timestamp",
        }
        assert served["pod_name"] == "pod-1"


async def test_probe_contract() -> None:
    async with running(wait_ready=False, readiness_probe=ReadinessProbe(port=1)) as r:
        # port 1: nothing listens, the model server is not ready
        assert await get(r, "/", headers={"K-Network-Probe": "queue"}) == (
            503,
            b"model server not ready\n",
        )
    async with running() as r:
        assert await get(r, "/", headers={"K-Network-Probe": "queue"}) == (200, b"queue")
        assert await get(r, "/", headers={"User-Agent": "kube-probe/1.30"}) == (200, b"queue")
        for agent in ("Knative-Activator-Probe", "Knative-Autoscaling-Probe/1"):
            assert await get(r, "/", headers={"User-Agent": agent}) == (200, b"queue")
        # The KIngress prober: its hash is echoed; 400 without one.
        async with r.session.get(
            r.url + "/", headers={"K-Network-Probe": "probe", "K-Network-Hash": "abc123"}
        ) as resp:
            assert (resp.status, resp.headers.get("K-Network-Hash")) == (200, "abc123")
        status, body = await get(r, "/", headers={"K-Network-Probe": "probe"})
        assert (status, body) == (400, b"no K-Network-Hash header\n")
        status, body = await get(r, "/", headers={"K-Network-Probe": "nope"})
        assert (status, body) == (400, b"unexpected probe header value: nope\n")
        assert r.qp.stats.requests.report(0.0).request_count == 0  # probes are not counted
        drain = asyncio.create_task(r.qp.drainer.drain())
        await poll_until(lambda: r.qp.drainer.draining)
        assert await get(r, "/", headers={"K-Network-Probe": "queue"}) == (503, b"shutting down\n")
        probe_headers = {"K-Network-Probe": "probe", "K-Network-Hash": "abc123"}
        assert await get(r, "/", headers=probe_headers) == (503, b"shutting down\n")
        await drain


async def test_http_probe_path() -> None:
    async with running(readiness_probe=parse_probe('{"httpGet":{"path":"/status/204"}}')) as r:
        assert r.qp.readiness.ready
    async with running(
        wait_ready=False, readiness_probe=parse_probe('{"httpGet":{"path":"/status/500"}}')
    ) as r:
        await asyncio.sleep(0.2)  # several aggressive probes have failed by now (every 50 ms)
        assert not r.qp.readiness.ready


async def test_headers_rewritten_for_the_model_server() -> None:
    async with running() as r:
        status, body = await get(
            r,
            "/echo",
            headers={
                "K-Original-Host": "iris.default.example.com",
                "Knative-Serving-Namespace": "default",
                "Knative-Serving-Revision": "iris-00001",
            },
        )
        assert status == 200
        pairs = parse_echo(body)["headers"]
        assert isinstance(pairs, list)
        got = {k.lower(): v for k, v in pairs}
        assert got["host"] == "iris.default.example.com"
        for gone in ("k-original-host", "knative-serving-namespace", "knative-serving-revision"):
            assert gone not in got
        assert got["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("changes", "path", "body"),
    [
        pytest.param({"timeout_s": 0.3}, "/sleep?s=5", b"request timeout", id="total"),
        pytest.param(
            {"response_start_timeout_s": 0.3},
            "/sleep?s=5",
            b"response start timeout",
            id="response-start",
        ),
        pytest.param({"idle_timeout_s": 0.3}, "/sleep?s=5", b"idle timeout", id="idle"),
    ],
)
async def test_timeouts(changes: dict[str, Any], path: str, body: bytes) -> None:
    async with running(**changes) as r:
        assert await get(r, path) == (504, body)
        metrics = await scrape(r)
        assert sample(metrics, "queue_proxy_refusals_total", reason="timeout") == 1.0


async def test_total_timeout_while_waiting_in_the_breaker() -> None:
    async with running(container_concurrency=1, timeout_s=0.4) as r:
        holder = asyncio.create_task(get(r, "/sleep?s=0.35"))
        assert r.qp.breaker is not None
        breaker = r.qp.breaker
        await poll_until(lambda: breaker.active == 1)
        assert await get(r, "/sleep?s=0.35") == (504, b"request timeout")
        assert (await holder)[0] == 200


async def test_upstream_errors_are_502_and_counted() -> None:
    async with running() as r:
        status, body = await get(r, "/reset")
        assert status == 502
        assert body.startswith(b"upstream error: ")
        reader, writer = await asyncio.open_connection("127.0.0.1", r.qp.serving_port)
        writer.write(b"BAD\x01 request\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        metrics = await scrape(r)
        assert sample(metrics, "queue_proxy_refusals_total", reason="upstream_error") == 1.0
        assert sample(metrics, "queue_proxy_refusals_total", reason="bad_request") == 1.0
        assert sample(metrics, "queue_proxy_requests_total", code_class="5xx") == 1.0
        assert sample(metrics, "queue_proxy_request_duration_seconds_count") == 1.0
        assert sample(metrics, "queue_proxy_queue_depth") == 0.0
        assert sample(metrics, "queue_proxy_gpu_memory_used_bytes") is None


@pytest.mark.parametrize("cc", [0, 1], ids=["no-breaker", "breaker"])
async def test_upstream_down_is_502_connect_error(cc: int) -> None:
    """Both paths (the breaker's wait, and none) mark the 502: nothing went to the model
    server, so the activator may send the request to another pod (dataplane.api.NOT_SENT)."""
    async with run_app(upstream_app()) as (_, port):
        pass  # the port is closed again
    async with started(port, container_concurrency=cc) as qp:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{qp.serving_port}/") as resp,
        ):
            assert resp.status == 502
            assert (await resp.text()).startswith("upstream connect error: dial 127.0.0.1:")
            assert resp.headers.get(NOT_SENT_HEADER) == "upstream-connect"
        metrics = await scrape_port(qp.metrics_port)
        assert sample(metrics, "queue_proxy_refusals_total", reason="upstream_connect") == 1.0
        assert sample(metrics, "queue_proxy_refusals_total", reason="upstream_error") == 0.0


async def test_a_stale_connection_whose_retry_is_refused_counts_as_upstream_connect() -> None:
    """One refusal reason for a refused connection, whichever way the request came to dial it:
    a pooled connection the model server dropped, and the retry on a new one refused."""
    answered = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")  # the next request on it: dropped
        writer.close()

    upstream = await asyncio.start_server(once, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    async with started(port) as qp:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{qp.serving_port}/"
            async with s.get(url) as resp:
                assert (resp.status, await resp.read()) == (200, b"ok")
            upstream.close()  # stops listening; the pooled connection stays open until used
            async with s.get(url) as resp:
                assert resp.status == 502
                assert (await resp.text()).startswith("upstream connect error: dial 127.0.0.1:")
        assert answered == 1
        metrics = await scrape_port(qp.metrics_port)
        assert sample(metrics, "queue_proxy_refusals_total", reason="upstream_connect") == 1.0
        assert sample(metrics, "queue_proxy_refusals_total", reason="upstream_error") == 0.0


class FakeNvml:
    """The parts of pynvml the monitor calls, for two GPUs."""

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=40 + h, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(used=1024 * (h + 1), total=16 * 1024**3, free=0)


async def test_gpu_metrics_with_fake_nvml() -> None:
    async with running(nvml=FakeNvml(), gpu_interval_s=0.05) as r:
        await poll_until(lambda: r.qp.gpu.enabled)
        text = ""
        async with asyncio.timeout(5):
            while sample(text, "queue_proxy_gpu_memory_used_bytes", gpu="1") is None:
                text = await scrape(r)
        assert sample(text, "queue_proxy_gpu_memory_used_bytes", gpu="1") == 2048.0
        assert sample(text, "queue_proxy_gpu_utilization_ratio", gpu="1") == pytest.approx(0.41)
        assert sample(text, "queue_proxy_gpu_memory_total_bytes", gpu="0") == 16 * 1024**3


@pytest.mark.parametrize("nvml", [None, FakeNvml(fail_init=True)], ids=["absent", "no-driver"])
async def test_gpu_metrics_absent_with_one_log_line(
    nvml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zeroserve.queue_proxy.gpu")
    async with running(nvml=nvml, gpu_interval_s=0.05) as r:
        await poll_until(lambda: bool(r.qp.gpu.disabled_reason))
        # A disabled monitor never samples, so no queue_proxy_gpu_* sample may be exported (the
        # gauges' HELP/TYPE lines may stay). With FakeNvml() enabled this fails, as it must.
        text = await scrape(r)
        gpu_samples = [
            smp.name
            for family in text_string_to_metric_families(text)
            for smp in family.samples
            if smp.name.startswith("queue_proxy_gpu_")
        ]
        assert gpu_samples == [], text
    lines = [rec for rec in caplog.records if rec.name == "zeroserve.queue_proxy.gpu"]
    assert len(lines) == 1
    assert lines[0].getMessage() == "gpu metrics disabled"


async def test_drain_serves_in_flight_and_arriving_requests() -> None:
    async with running(drain_quiet_period_s=0.4) as r:
        slow = [asyncio.create_task(get(r, "/sleep?s=0.6")) for _ in range(3)]
        await poll_until(lambda: r.qp.server.in_flight == 3)
        r.qp.request_shutdown()
        await poll_until(lambda: r.qp.drainer.draining)
        arriving = []
        for _ in range(5):  # keep arriving during the quiet period: each one restarts it
            arriving.append(await get(r, "/echo"))
            await asyncio.sleep(0.1)
        assert [s for s, _ in arriving] == [200] * 5
        assert [s for s, _ in await asyncio.gather(*slow)] == [200] * 3
        await asyncio.wait_for(r.qp.stopped.wait(), 5)


@pytest.mark.parametrize(
    ("env", "var"),
    [
        pytest.param({}, "USER_PORT", id="missing-user-port"),
        pytest.param({"USER_PORT": "abc"}, "USER_PORT", id="user-port-not-int"),
        pytest.param({"USER_PORT": "70000"}, "USER_PORT", id="user-port-range"),
        pytest.param(
            {"USER_PORT": "8080", "CONTAINER_CONCURRENCY": "-1"},
            "CONTAINER_CONCURRENCY",
            id="negative-cc",
        ),
        pytest.param(
            {"USER_PORT": "8080", "REVISION_TIMEOUT_SECONDS": "soon"},
            "REVISION_TIMEOUT_SECONDS",
            id="timeout-not-number",
        ),
        pytest.param(
            {"USER_PORT": "8080", "SERVING_READINESS_PROBE": "{not json"},
            "SERVING_READINESS_PROBE",
            id="probe-not-json",
        ),
        pytest.param(
            {"USER_PORT": "8080", "SERVING_READINESS_PROBE": '{"httpGet":{"port":"x"}}'},
            "SERVING_READINESS_PROBE",
            id="probe-port",
        ),
        pytest.param(
            {"USER_PORT": "8012"},
            "USER_PORT = 8012 is this queue-proxy's own QUEUE_SERVING_PORT",
            id="serving-port-equals-user-port",
        ),
    ],
)
def test_bad_environment(env: dict[str, str], var: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=f"^{var}"):
        Settings.from_env(env)
    assert main([], env) == 2
    assert var in capsys.readouterr().err


def test_environment_parsed() -> None:
    s = Settings.from_env(
        {
            "USER_PORT": "8080",
            "CONTAINER_CONCURRENCY": "4",
            "REVISION_TIMEOUT_SECONDS": "60",
            "SERVING_POD": "p",
            "SERVING_READINESS_PROBE": '{"tcpSocket":{"port":8081,"host":"127.0.0.1"},'
            '"periodSeconds":2,"failureThreshold":5}',
        }
    )
    assert (s.user_port, s.serving_port, s.container_concurrency, s.timeout_s) == (
        8080,
        8012,
        4,
        60.0,
    )
    assert s.readiness_probe == ReadinessProbe(
        kind="tcp", port=8081, period_s=2.0, timeout_s=1.0, failure_threshold=5
    )


def test_request_metrics_exposition() -> None:
    """observe() keeps plain counts; the scrape shows Prometheus counters and a cumulative
    histogram with the usual names and labels."""
    from prometheus_client import generate_latest

    from queue_proxy.metrics import QueueMetrics

    m = QueueMetrics(namespace="ns", revision="r-1", pod="p")
    for status, seconds in ((200, 0.0005), (204, 0.003), (503, 0.003), (404, 2.0), (200, 999.0)):
        m.observe(status, seconds)
    text = generate_latest(m.registry).decode()
    labels = {"namespace": "ns", "revision": "r-1", "pod": "p"}
    assert sample(text, "queue_proxy_requests_total", code_class="2xx", **labels) == 3.0
    assert sample(text, "queue_proxy_requests_total", code_class="4xx", **labels) == 1.0
    assert sample(text, "queue_proxy_requests_total", code_class="5xx", **labels) == 1.0
    assert sample(text, "queue_proxy_requests_total", code_class="1xx", **labels) == 0.0
    hist = "queue_proxy_request_duration_seconds_bucket"
    assert sample(text, hist, le="0.001", **labels) == 1.0
    assert sample(text, hist, le="0.0025", **labels) == 1.0
    assert sample(text, hist, le="0.005", **labels) == 3.0
    assert sample(text, hist, le="2.5", **labels) == 4.0
    assert sample(text, hist, le="300.0", **labels) == 4.0
    assert sample(text, hist, le="+Inf", **labels) == 5.0
    assert sample(text, "queue_proxy_request_duration_seconds_count", **labels) == 5.0
    total = sample(text, "queue_proxy_request_duration_seconds_sum", **labels)
    assert total == pytest.approx(1001.0065)


def test_every_way_a_forward_fails_has_a_refusal_reason() -> None:
    """The result's reason is a closed set (``dataplane.api.ForwardReason``); the refusal
    metric names each failing one, so a reason added to the core cannot go uncounted."""
    from typing import get_args

    from dataplane.api import FORWARD_REASONS, ForwardReason
    from queue_proxy.handler import _REFUSAL_BY_REASON
    from queue_proxy.metrics import REFUSAL_REASONS

    assert set(get_args(ForwardReason)) == FORWARD_REASONS
    assert set(_REFUSAL_BY_REASON) == FORWARD_REASONS - {""}
    assert set(_REFUSAL_BY_REASON.values()) <= set(REFUSAL_REASONS)


async def test_a_health_check_probes_the_model_server_afresh_as_knative_does() -> None:
    """The model server stops and comes back on its port (a container restart): the health
    check right after the stop answers 503 (not the last periodic probe's "ready"), and 200
    again once the model server listens (the kubelet would have sent traffic to it)."""

    async def start(port: int = 0) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(upstream_app(), shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        return runner, int(server.sockets[0].getsockname()[1])

    model, port = await start()
    probe = {"K-Network-Probe": "queue"}
    try:
        async with started(port) as qp, aiohttp.ClientSession() as session:
            await asyncio.wait_for(qp.readiness.became_ready.wait(), 5)
            url = f"http://127.0.0.1:{qp.serving_port}/"

            async def health() -> int:
                async with session.get(url, headers=probe) as resp:
                    return resp.status

            assert await health() == 200
            await model.cleanup()  # the model server's container exits
            assert await health() == 503  # at once, not after 3 periodic probes (3 s)
            assert not qp.readiness.ready
            model, _ = await start(port)  # restarted, listening again
            await poll_until(lambda: qp.readiness.ready, 5)
            assert await health() == 200
    finally:
        await model.cleanup()
