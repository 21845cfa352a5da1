"""The local runtime's artifact prefetch (zeroserve.prefetch) and the hooks it drives: the
supervisor's ``before_start`` gate, the activator's "why not ready" in a timed-out 503 and the
``not_ready_reason`` of ``zeroserve status``. Real processes and real HTTP on loopback: the fetch
is ``python -m modelserver.storage fetch`` against an aiohttp server the test runs."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from activator.app import ActivatorSettings, build_activator
from activator.sinks import InProcessStatSink
from autoscaler.status import RevisionStatus
from cluster.local.supervisor import LocalSupervisor, SupervisorSettings
from cluster.memory import MemoryEndpoints, MemoryRoutes
from cluster.spec import Predictor, Revision, RevisionKey, Service, TrafficTarget
from metrics.stat import WireStat
from tests.e2e_support import wait_for
from zeroserve.prefetch import ArtifactPrefetcher, PrefetchSettings
from zeroserve.status import render

pytestmark = [pytest.mark.timeout(90)]

KEY = RevisionKey("default", "iris-v1")
BODY = b"not really a model, but bytes to cache\n" * 100


async def until(predicate: Callable[[], object], what: str, within: float = 30.0) -> None:
    await wait_for(predicate, within=within, interval=0.02, what=what)


@dataclass
class ArtifactServer:
    """An HTTP server with one artifact: 404 until ``body`` is set; counts the 200s it sent."""

    body: bytes | None = None
    downloads: int = 0
    requests: int = 0
    hang: asyncio.Event | None = None
    runner: web.AppRunner | None = None
    base: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.body is None:
            return web.Response(status=404, text="no such model\n")
        self.downloads += 1
        return web.Response(body=self.body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def artifacts() -> AsyncIterator[ArtifactServer]:
    server = ArtifactServer()
    await server.start()
    try:
        yield server
    finally:
        if server.hang is not None:
            server.hang.set()
        assert server.runner is not None
        await server.runner.cleanup()


def predictor_revision(uri: str, cache: Path, name: str = "iris-v1") -> Revision:
    return Revision(
        namespace="default",
        service="iris",
        name=name,
        timeout_s=10.0,
        env={"ZEROSERVE_MODEL_CACHE": str(cache)},
        predictor=Predictor(format="sklearn", storage_uri=uri),
    )


def fast() -> PrefetchSettings:
    return PrefetchSettings(backoff_initial_s=0.05, backoff_max_s=0.2)


async def test_a_failing_fetch_holds_the_revision_and_is_retried_until_it_succeeds(
    artifacts: ArtifactServer, tmp_path: Path
) -> None:
    uri = f"{artifacts.base}/models/iris/model.joblib"
    rev = predictor_revision(uri, tmp_path / "cache")
    prefetch = ArtifactPrefetcher(fast())
    prefetch.set_revisions({KEY: rev})
    await prefetch.start()
    try:
        await until(lambda: prefetch.attempts(KEY) >= 2, "a second attempt after the 404")
        reason = prefetch.not_ready_reason(KEY)
        assert reason is not None
        assert reason.startswith(f"{uri}: ")
        assert "404" in reason
        waiter = asyncio.create_task(prefetch.wait_ready(rev))
        await until(lambda: prefetch.attempts(KEY) >= 3, "a third attempt")
        assert not waiter.done()  # replicas stay held while the artifact is missing

        artifacts.body = BODY  # the model is uploaded: the next retry gets it
        await asyncio.wait_for(waiter, 30)
        assert prefetch.not_ready_reason(KEY) is None
        path = prefetch.path(KEY)
        assert path is not None
        assert path.read_bytes() == BODY
        assert path.is_relative_to(tmp_path / "cache")
        assert artifacts.downloads == 1
        # a revision created later with the same artifact waits for nothing
        await asyncio.wait_for(prefetch.wait_ready(rev), 1)
    finally:
        await prefetch.close()


async def test_a_revision_without_a_predictor_is_never_held() -> None:
    rev = Revision(namespace="default", service="web", name="web-v1", command=("true",))
    prefetch = ArtifactPrefetcher(fast())
    prefetch.set_revisions({rev.key: rev})
    await prefetch.start()
    await asyncio.wait_for(prefetch.wait_ready(rev), 1)
    assert prefetch.not_ready_reason(rev.key) is None
    assert prefetch.attempts(rev.key) == 0
    await prefetch.close()


def _fetch_children(uri: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().split(b"\0")
        except OSError:
            continue
        if uri.encode() in cmd and b"modelserver.storage" in cmd:
            pids.append(int(entry))
    return pids


async def test_a_revision_that_goes_away_stops_its_fetch(
    artifacts: ArtifactServer, tmp_path: Path
) -> None:
    artifacts.hang = asyncio.Event()  # the download never answers
    uri = f"{artifacts.base}/models/slow/model.joblib"
    prefetch = ArtifactPrefetcher(fast())
    prefetch.set_revisions({KEY: predictor_revision(uri, tmp_path / "cache")})
    await prefetch.start()
    try:
        await until(lambda: artifacts.requests == 1, "the fetch's request")
        assert prefetch.not_ready_reason(KEY) == f"{uri}: fetching"
        assert len(_fetch_children(uri)) == 1
        prefetch.set_revisions({})
        await until(lambda: not _fetch_children(uri), "the fetch process killed")
        assert prefetch.not_ready_reason(KEY) is None
    finally:
        await prefetch.close()


# -- the supervisor holds a replica's processes until before_start returns --------------------

MODEL = (
    "import os, http.server as h; "
    "h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
    "h.SimpleHTTPRequestHandler).serve_forever()"
)
WEB = Revision(
    namespace="default",
    service="web",
    name="web-v1",
    timeout_s=10.0,
    command=(sys.executable, "-c", MODEL),
)


async def test_the_supervisor_starts_no_process_before_the_gate_opens() -> None:
    sup = LocalSupervisor(
        SupervisorSettings(log_children=False, drain_quiet_period_s=0.1, kill_grace_s=5.0)
    )
    gate = asyncio.Event()
    entered: list[str] = []

    async def before_start(rev: Revision) -> None:
        entered.append(rev.name)
        await gate.wait()

    sup.before_start = before_start
    await sup.start()
    sup.set_revisions({WEB.key: WEB})
    try:
        await sup.set_scale(WEB.key, 1)
        await until(lambda: entered == ["web-v1"], "the replica at the gate")
        (held,) = sup.replicas(WEB.key)
        assert held.model is None
        assert held.queue_proxy is None
        assert await sup.ready_pods(WEB.key) == 0

        # scaled to zero while held: it goes without a process ever started, and no crash
        await sup.set_scale(WEB.key, 0)
        await until(lambda: not sup.replicas(WEB.key), "the held replica gone")
        assert held.model is None
        assert sup.crash_count == 0

        gate.set()
        await sup.set_scale(WEB.key, 1)
        await until(lambda: WEB.key in sup.current(), "a ready replica once the gate is open")
        assert sup.crash_count == 0
    finally:
        await sup.close()


# -- the activator's timed-out 503 says why, where the runtime knows ---------------------------


async def test_a_timed_out_request_gets_the_not_ready_reason() -> None:
    revs = tuple(
        Revision(namespace="default", service=svc, name=f"{svc}-v1", timeout_s=0.3)
        for svc in ("iris", "web")
    )
    services = [
        Service(
            namespace="default",
            name=r.service,
            revisions=(r,),
            traffic=(TrafficTarget(revision=r.name, percent=100),),
        )
        for r in revs
    ]
    why = "s3://models/iris/model.joblib: 403 AccessDenied"
    asked: list[RevisionKey] = []

    def not_ready(key: RevisionKey) -> str | None:
        asked.append(key)
        return why if key.name == "iris-v1" else None

    stats: list[WireStat] = []
    act = build_activator(
        MemoryRoutes(services),
        MemoryEndpoints(),
        InProcessStatSink(stats.extend),
        settings=ActivatorSettings(pod_name="activator-0", drain_quiet_period_s=0.05),
        not_ready_reason=not_ready,
    )
    await act.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{act.port}/v1/models/x:predict"
            async with session.post(url, headers={"Host": "iris.default.example.com"}) as resp:
                assert resp.status == 503
                assert await resp.text() == (
                    "timed out waiting for a ready pod of revision default/iris-v1 after 0.3s: "
                    f"{why}\n"
                )
            async with session.post(url, headers={"Host": "web.default.example.com"}) as resp:
                assert resp.status == 503
                assert await resp.text() == (
                    "timed out waiting for a ready pod of revision default/web-v1 after 0.3s\n"
                )
        # read by the timeout answers only: once per timed-out request
        assert asked == [RevisionKey("default", "iris-v1"), RevisionKey("default", "web-v1")]
    finally:
        await act.close()


def test_status_table_shows_the_reason() -> None:
    base = RevisionStatus(
        namespace="default",
        revision="iris-v1",
        desired=1,
        applied=1,
        ready=0,
        panicking=False,
        metric="concurrency",
        target=100.0,
        excess_burst_capacity=0.0,
        stable_concurrency=0.0,
        panic_concurrency=0.0,
        stable_rps=0.0,
        panic_rps=0.0,
        has_data=False,
        last_change=None,
        not_ready_reason="s3://models/iris/model.joblib: 403 AccessDenied",
    )
    row = base.to_dict()
    assert row["not_ready_reason"] == "s3://models/iris/model.joblib: 403 AccessDenied"
    header, line = render([row]).splitlines()
    assert header.endswith("NOT READY BECAUSE")
    assert line.endswith("s3://models/iris/model.joblib: 403 AccessDenied")


# -- the runtime: a revision added by a live reload has its artifact fetched at once ----------


def reload_spec(cache: Path, predictors: dict[str, str]) -> str:
    lines = [
        "config:",
        '  allow-zero-initial-scale: "true"',
        '  initial-scale: "0"',
        "services:",
        "  - name: web",
        "    revisions:",
        "      - name: web-v1",
        f"        command: [{sys.executable}, -c, 'import time; time.sleep(60)']",
    ]
    for name, uri in predictors.items():
        lines += [
            f"  - name: {name}",
            "    revisions:",
            f"      - name: {name}-v1",
            "        predictor: {format: sklearn, storageUri: '" + uri + "'}",
            f"        env: {{ZEROSERVE_MODEL_CACHE: '{cache}'}}",
        ]
    return "\n".join(lines) + "\n"


async def test_a_live_reload_fetches_a_new_predictors_artifact_and_status_shows_failures(
    artifacts: ArtifactServer, tmp_path: Path
) -> None:
    from zeroserve.runtime import LocalRuntime, RuntimeSettings

    artifacts.body = BODY
    spec = tmp_path / "spec.yaml"
    spec.write_text(reload_spec(tmp_path / "cache", {}))
    rt = LocalRuntime(
        spec,
        RuntimeSettings(
            port=0,
            status_port=0,
            watch_spec_s=0,
            supervisor=SupervisorSettings(log_children=False),
            prefetch=fast(),
        ),
    )
    await rt.start()
    try:
        good = f"{artifacts.base}/models/iris/model.joblib"
        with socket.socket() as closed:  # bound, never listening: connections are refused
            closed.bind(("127.0.0.1", 0))
            bad = f"http://127.0.0.1:{closed.getsockname()[1]}/models/iris/model.joblib"
            spec.write_text(reload_spec(tmp_path / "cache", {"iris": good, "bad": bad}))
            assert rt.reload()
            iris, broken = RevisionKey("default", "iris-v1"), RevisionKey("default", "bad-v1")
            await until(lambda: rt.prefetch.path(iris) is not None, "the new artifact fetched")
            await until(lambda: rt.prefetch.attempts(broken) >= 2, "the bad one retried")
        assert artifacts.downloads == 1
        # nothing scaled up: fetched at zero replicas
        assert rt.supervisor.replicas(iris) == []
        rows = {row.revision: row for row in rt.status()}
        assert rows["iris-v1"].not_ready_reason is None
        assert rows["web-v1"].not_ready_reason is None
        reason = rows["bad-v1"].not_ready_reason
        assert reason is not None
        assert reason == f"{bad}: connection refused", reason
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{rt.status_port}/v1/revisions") as resp,
        ):
            served = {r["revision"]: r for r in (await resp.json())["revisions"]}
        assert served["bad-v1"]["not_ready_reason"].startswith(f"{bad}: ")
        assert served["iris-v1"]["not_ready_reason"] is None
    finally:
        await rt.close()
