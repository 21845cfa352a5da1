"""The locustfile, shapes and plot in their own environment, against a fake model server.

These need ``loadtests/.venv`` (``bash loadtests/setup.sh``, which the test runs: idempotent) but
not the zeroserve runtime: a local aiohttp server answers like the activator would, and records
which Host and path each request used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from loadtests import report

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "loadtests" / ".venv"


def setup_loadtest_env() -> None:
    subprocess.run(["bash", str(ROOT / "loadtests" / "setup.sh")], check=True, timeout=600)


def test_locust_never_enters_the_main_environment() -> None:
    # gevent monkey-patches sockets in any process that imports locust: not in the test process.
    assert importlib.util.find_spec("locust") is None
    assert importlib.util.find_spec("gevent") is None


class FakeIngress:
    """Answers V1 predict, V2 infer and ``?sleep=`` like the example models through the activator."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", self.v2)
        app.router.add_post("/v1/models/{model}:predict", self.v1)
        app.router.add_get("/", self.sleep)
        return app

    def record(self, request: web.Request) -> None:
        self.seen[(request.host, request.path)] += 1

    async def v2(self, request: web.Request) -> web.Response:
        self.record(request)
        body = await request.json()
        assert body["inputs"][0]["shape"] == [1, 4]
        return web.json_response({"model_name": request.match_info["model"], "outputs": []})

    async def v1(self, request: web.Request) -> web.Response:
        self.record(request)
        body = await request.json()
        return web.json_response({"predictions": [0] * len(body["instances"])})

    async def sleep(self, request: web.Request) -> web.Response:
        self.record(request)
        await asyncio.sleep(int(request.query["sleep"]) / 1000)
        return web.json_response({"slept_ms": request.query["sleep"]})


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_every_user_through_the_step_shape_then_report_and_plot(tmp_path: Path) -> None:
    await asyncio.to_thread(setup_loadtest_env)
    fake = FakeIngress()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    users = [
        "InferV2ByPath",
        "InferV2ByHost",
        "PredictV1ByPath",
        "PredictV1ByHost",
        "PredictV1Tagged",
        "SleepByHost",
    ]
    cmd = [
        str(VENV / "bin" / "locust"),
        "-f",
        str(ROOT / "loadtests" / "locust" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--host",
        f"http://127.0.0.1:{port}",
        "--csv",
        str(tmp_path / report.LOCUST_PREFIX),
        "--csv-full-history",
        "--stop-timeout",
        "5",
        "--zs-service=svc",
        "--zs-tags=v1,v2",
        "--zs-sleep-ms=20",
        "--zs-duration=8",
        "--zs-rps=36",
        "--zs-user-rps=3",
        "--zs-steps=2",
        "--zs-step-s=3",
        f"--zs-requests-csv={tmp_path / report.REQUESTS_CSV}",
        *users,
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=ROOT,
            env=dict(os.environ, ZS_SHAPE="step"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await runner.cleanup()
    log = out.decode(errors="replace")
    assert proc.returncode == 0, log

    records = report.read_requests(tmp_path / report.REQUESTS_CSV)
    assert records, log
    assert [r.error for r in records if not r.ok] == []
    names = Counter(r.name for r in records)
    assert set(names) == {
        "v2 infer (path)",
        "v2 infer (host)",
        "v1 predict (path)",
        "v1 predict (host)",
        "v1 predict (tag v1)",
        "v1 predict (tag v2)",
        "GET /?sleep=20 (host)",
    }, names
    hosts = {host for host, _ in fake.seen}
    assert {"svc.default.example.com", "v1-svc.default.example.com", f"127.0.0.1:{port}"} <= hosts
    paths = {path for _, path in fake.seen}
    assert {"/v2/models/svc/infer", "/v1/models/svc:predict", "/"} <= paths
    # Step: 18 rps (6 users) for 3 s, 36 rps (12 users) for 3 s, then none for the last 2 s.
    # Constant throughput of 3 req/s per user makes ~18·3 + 36·3 ≈ 160 requests.
    assert 90 <= len(records) <= 200, len(records)

    (tmp_path / report.META_JSON).write_text('{"shape": "step", "spec": "fake"}')
    summary = report.build_report(tmp_path, report.Gates(max_p95_ms=1000))
    assert summary["passed"], report.format_summary(summary)
    assert summary["max_users"] == 12
    assert summary["locust"]["requests"] == len(records)

    plot = await asyncio.create_subprocess_exec(
        str(VENV / "bin" / "python"),
        str(ROOT / "loadtests" / "locust" / "plot.py"),
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    plot_out, _ = await asyncio.wait_for(plot.communicate(), 120)
    assert plot.returncode == 0, plot_out.decode(errors="replace")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
