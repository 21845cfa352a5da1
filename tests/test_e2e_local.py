"""End to end: ``zeroserve up`` as a real process, real replicas, real HTTP on loopback.

Windows are shortened by the spec (stable window 6 s, grace 2 s) so each scenario takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_support import (
    ROOT,
    child_pids,
    emulator_spec,
    tagged_pids,
    wait_for,
    zeroserve_up,
)
from tests.zygote_support import children_of, proc_stat

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HOST = {"Host": "gpu.default.example.com"}


class Load:
    """``concurrency`` clients sending back-to-back requests until stopped; counts outcomes."""

    def __init__(self, session: aiohttp.ClientSession, url: str, concurrency: int) -> None:
        self.session, self.url, self.concurrency = session, url, concurrency
        self.codes: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.session.get(self.url, headers=HOST) as resp:
                    await resp.read()
                    self.codes[resp.status] += 1
                    if resp.status != 200:
                        self.errors.append(f"{resp.status}: {(await resp.text())[:200]}")
            except aiohttp.ClientError as exc:
                self.errors.append(repr(exc))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def failed(self) -> int:
        return len(self.errors)


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


async def test_cold_start_scale_up_settle_and_back_to_zero(tmp_path: Path) -> None:
    # Target 2 concurrent requests per replica at 100 % utilisation: T = 2. Six clients → C = 6:
    # ceil(6/2) = 3 replicas; Knative's e2e bound is [3 - 1, ceil(3 * 1.1)] = [2, 4].
    c, t = 6, 2.0
    spec = emulator_spec(
        config={"allow-zero-initial-scale": "true", "initial-scale": "0"},
        annotations={
            "autoscaling.knative.dev/target": "2",
            "autoscaling.knative.dev/target-utilization-percentage": "100",
            "autoscaling.knative.dev/max-scale": "6",
        },
    )
    async with (
        zeroserve_up(write_spec(tmp_path, spec), tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: rt.revisions(session), within=10, what="the status endpoint")
        assert (
            await rt.ready(session, "gpu-v1") == 0
        )  # initial scale 0: the revision starts at zero

        # The cold start: the first request waits in the activator while a replica starts.
        started = time.monotonic()
        async with session.get(f"{rt.url}/?sleep=10", headers=HOST) as resp:
            assert resp.status == 200, await resp.text()
        cold = time.monotonic() - started
        print(f"\ncold start (first request at zero → response): {cold * 1000:.0f} ms")

        load = Load(session, f"{rt.url}/?sleep=300", c)
        load.start()
        lo, hi = math.ceil(c / t) - 1, math.ceil(math.ceil(c / t) * 1.1)

        async def settled() -> bool:
            return lo <= await rt.ready(session, "gpu-v1") <= hi

        await wait_for(settled, within=60, interval=0.5, what=f"ready within [{lo}, {hi}]")
        # … and stays there (sampled for 8 s, more than a stable window).
        samples = []
        for _ in range(16):
            samples.append(await rt.ready(session, "gpu-v1"))
            await asyncio.sleep(0.5)
        await load.stop()
        assert all(lo <= s <= hi for s in samples), (samples, rt.log()[-3000:])
        assert load.codes[200] > 0

        # No traffic: back to zero after the stable window (6 s) plus the grace period (2 s).
        stopped = time.monotonic()

        async def at_zero() -> bool:
            return await rt.ready(session, "gpu-v1") == 0

        await wait_for(at_zero, within=40, interval=0.5, what="scale to zero")
        to_zero = time.monotonic() - stopped
        assert to_zero >= 6 + 2 - 1, f"at zero after only {to_zero:.1f}s"
        print(f"back to zero {to_zero:.1f} s after the load stopped")

        # Zero failed requests across the cold start, scale up, scale down (drain) and to zero.
        assert load.failed == 0, load.errors[:5]


@pytest.mark.parametrize("cc", [0, 2], ids=["cc0", "cc2-busy"])
async def test_replica_killed_under_load_is_replaced(tmp_path: Path, cc: int) -> None:
    """With CC 2 the 4 clients keep both replicas full: a request the dead one's queue-proxy
    could not deliver waits for the other replica's slot."""
    c = 4
    scale = {"autoscaling.knative.dev/min-scale": "2", "autoscaling.knative.dev/max-scale": "2"}
    spec = emulator_spec(annotations=scale, cc=cc)
    async with (
        zeroserve_up(write_spec(tmp_path, spec), tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):

        async def two_ready() -> bool:
            return await rt.ready(session, "gpu-v1") == 2

        await wait_for(two_ready, within=60, interval=0.3, what="two ready replicas")
        load = Load(session, f"{rt.url}/?sleep=200", c)
        load.start()
        await wait_for(lambda: load.codes[200] >= 8, within=20, what="load flowing")
        victims = child_pids(rt.tag, rt.proc.pid, "examples.gpu_emulator")
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)

        def replaced() -> bool:
            now = child_pids(rt.tag, rt.proc.pid, "examples.gpu_emulator")
            return victims[0] not in now and len(now) == 2

        await wait_for(replaced, within=30, what="a replacement model server")
        await wait_for(two_ready, within=60, interval=0.3, what="two ready replicas again")
        before = load.codes[200]
        await wait_for(lambda: load.codes[200] >= before + 8, within=20, what="load after")
        await load.stop()
        # At most the requests in flight on the killed replica fail (c clients, so at most c);
        # one sent to it after the crash, before it left the endpoints, goes to the other
        # replica (its queue-proxy's 502 says nothing was sent: dataplane.api.NOT_SENT).
        assert load.failed <= c, load.errors
        assert not [e for e in load.errors if "refused" in e], load.errors
        assert "replica failed" in rt.log()


async def test_canary_split_and_tag_routes(tmp_path: Path) -> None:
    spec_path = ROOT / "examples" / "canary.yaml"
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                        "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
    async with (
        zeroserve_up(spec_path, tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):

        async def version(host: str) -> str:
            async with session.post(
                f"{rt.url}/v2/models/iris/infer", json=body, headers={"Host": host}
            ) as resp:
                assert resp.status == 200, await resp.text()
                return str((await resp.json())["model_version"])

        # Tags pin a revision, whatever the split says.
        assert await version("v2-iris.default.example.com") == "2"
        assert await version("v1-iris.default.example.com") == "1"
        # The 90/10 split over 1,000 requests (binomial sd ≈ 0.95 %: ±4 % is over 4 sd).
        sem = asyncio.Semaphore(16)

        async def one() -> str:
            async with sem:
                return await version("iris.default.example.com")

        seen = Counter(await asyncio.gather(*(one() for _ in range(1000))))
        share = seen["1"] / 1000
        assert 0.86 <= share <= 0.94, seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
async def test_stopping_zeroserve_leaves_no_child(tmp_path: Path, sig: signal.Signals) -> None:
    spec = emulator_spec(annotations={"autoscaling.knative.dev/min-scale": "2"})
    async with (
        zeroserve_up(write_spec(tmp_path, spec), tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):

        async def two_ready() -> bool:
            return await rt.ready(session, "gpu-v1") == 2

        await wait_for(two_ready, within=60, interval=0.3, what="two ready replicas")
        # The runtime, the queue-proxy zygote, 2 × (model server, queue-proxy).
        assert len(tagged_pids(rt.tag)) >= 6
        # The queue-proxies are the zygote's children, each in its own process group.
        zygotes = [
            pid
            for pid in child_pids(rt.tag, rt.proc.pid, "cluster.local.zygote_main")
            if proc_stat(pid)["ppid"] == rt.proc.pid
        ]
        assert len(zygotes) == 1, zygotes
        queue_proxies = children_of(zygotes[0])
        assert len(queue_proxies) == 2, queue_proxies
        assert all(proc_stat(pid)["pgid"] == pid for pid in queue_proxies)
        rt.proc.send_signal(sig)
        code = await asyncio.to_thread(rt.proc.wait, 60)
        if sig != signal.SIGKILL:
            assert code == 0, rt.log()[-2000:]
        # SIGKILL gives the runtime no chance: PR_SET_PDEATHSIG must take the children down.
        await wait_for(lambda: not tagged_pids(rt.tag), within=15, what="no child left")


# -- the spec's config: block is checked by the autoscaler's rules (issue 19, item 5) -----------

BAD_CONFIG = {"stable-window": "3s", "max-scale-up-rate": "0.5"}
BAD_CONFIG_ERRORS = (
    "config.stable-window = 3s: must be within [6s, 1h]",
    "config.max-scale-up-rate = 0.5: must be greater than 1",
)


async def test_up_refuses_an_invalid_config_naming_each_key(tmp_path: Path) -> None:
    path = write_spec(tmp_path, emulator_spec(config=BAD_CONFIG))
    tag = uuid.uuid4().hex
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "zeroserve", "up", str(path), "--port", "0", "--status-port", "0"),
        cwd=ROOT,
        env=dict(os.environ, ZEROSERVE_E2E_TAG=tag),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
        raise AssertionError(f"zeroserve up ran on an invalid spec:\n{out.decode()}") from None
    text = out.decode()
    assert proc.returncode == 1, text
    for error in BAD_CONFIG_ERRORS:
        assert f"{path}: {error}" in text, text
    assert "zeroserve is up" not in text
    assert tagged_pids(tag) == []


async def test_live_reload_with_a_bad_config_is_rejected_whole(tmp_path: Path) -> None:
    path = write_spec(tmp_path, emulator_spec())
    async with (
        zeroserve_up(path, tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: rt.revisions(session), within=10, what="the status endpoint")
        # A bad config and a new revision in the same edit: neither applies.
        path.write_text(emulator_spec(name="gpu2", config=BAD_CONFIG))
        await wait_for(
            lambda: "spec rejected, keeping the last good one" in rt.log(),
            within=15,
            what="the rejection",
        )
        text = rt.log()
        for error in BAD_CONFIG_ERRORS:
            assert error in text, text[-3000:]
        assert "spec applied" not in text
        assert "config-autoscaler rejected" not in text  # never offered to the autoscaler
        assert set(await rt.revisions(session)) == {"gpu-v1"}


# -- the activator's metrics are served beside the autoscaler's (issue 19, item 7a) -------------


async def test_status_port_serves_the_activators_metrics(tmp_path: Path) -> None:
    spec = emulator_spec(config={"allow-zero-initial-scale": "true", "initial-scale": "0"})
    async with (
        zeroserve_up(write_spec(tmp_path, spec), tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: rt.revisions(session), within=10, what="the status endpoint")
        async with session.get(f"{rt.url}/", headers=HOST) as resp:  # a cold start
            assert resp.status == 200, await resp.text()
        metrics_url = rt.status_url.replace("/v1/revisions", "/metrics")
        async with session.get(metrics_url) as resp:
            assert resp.status == 200
            text = await resp.text()
        samples = [
            (smp.name, smp.labels, smp.value)
            for family in text_string_to_metric_families(text)
            for smp in family.samples
            if smp.labels.get("revision") == "gpu-v1"
        ]

        def total(name: str, **labels: str) -> float:
            return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())

        assert total("activator_cold_start_wait_seconds_count") == 1.0, text
        assert total("activator_requests_total", code="2xx") == 1.0, text
        assert any(n == "autoscaler_desired_pods" for n, _, _ in samples), text  # still there


# -- one log format for every process of zeroserve up (issue 19, item 7b) -----------------------

# A model server that says something on both streams, then serves as the GPU emulator does.
CHATTY = (
    "import runpy, sys; print('model says hi', flush=True); "
    "print('model warns', file=sys.stderr, flush=True); "
    "runpy.run_module('examples.gpu_emulator', run_name='__main__')"
)


def chatty_spec() -> str:
    spec = emulator_spec()
    old = "        command: [python, -m, examples.gpu_emulator]\n"
    assert old in spec
    return spec.replace(old, f'        command: [python, -c, "{CHATTY}"]\n')


async def test_text_mode_prefixes_model_lines_with_the_pod_and_logs_no_json(
    tmp_path: Path,
) -> None:
    async with (
        zeroserve_up(write_spec(tmp_path, chatty_spec()), tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: rt.ready(session, "gpu-v1"), within=30, what="a ready replica")
        async with session.get(f"{rt.url}/", headers=HOST) as resp:
            assert resp.status == 200
        await wait_for(lambda: "model warns" in rt.log(), within=10, what="the model's lines")
        text = rt.log()
    lines = text.splitlines()
    assert any(re.fullmatch(r"gpu-v1-\d+ \| model says hi", line) for line in lines), text
    assert any(re.fullmatch(r"gpu-v1-\d+ \| model warns", line) for line in lines), text
    assert not [line for line in lines if line.lstrip().startswith("{")], text  # no JSON
    assert re.search(r"^\d\d:\d\d:\d\d info +zeroserve\.queue_proxy", text, re.MULTILINE), text


def _start_json(path: Path, log_path: Path, tag: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "zeroserve", "up", str(path), "--port", "0"]
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [*cmd, "--status-port", "0", "--log-format", "json"],
            cwd=ROOT,
            env=dict(os.environ, ZEROSERVE_E2E_TAG=tag, PYTHONUNBUFFERED="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_json_mode_makes_every_line_json(tmp_path: Path) -> None:
    log_path = tmp_path / "up.log"
    tag = uuid.uuid4().hex
    proc = _start_json(write_spec(tmp_path, chatty_spec()), log_path, tag)

    def records() -> list[dict[str, object]]:
        # Every complete line must be one JSON object (json.loads raises otherwise).
        text = log_path.read_text(errors="replace")
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines()]

    try:
        up = await wait_for(
            lambda: [r for r in records() if r["msg"] == "zeroserve is up"],
            within=30,
            what="the banner record",
        )
        url = str(up[0]["ingress"])
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/", headers=HOST) as resp,
        ):
            assert resp.status == 200
        said = await wait_for(
            lambda: [r for r in records() if r["msg"] in ("model says hi", "model warns")][1:],
            within=15,
            what="the model's records",
        )
        model = [r for r in records() if r["logger"] == "model"]
        assert {(r["msg"], r["stream"]) for r in model} >= {
            ("model says hi", "stdout"),
            ("model warns", "stderr"),
        }, said
        assert all(re.fullmatch(r"gpu-v1-\d+", str(r["pod"])) for r in model), model
        loggers = {str(r["logger"]) for r in records()}
        assert "zeroserve.queue_proxy" in loggers, loggers
        assert "zeroserve.supervisor" in loggers, loggers
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        for pid in tagged_pids(tag):
            os.kill(pid, signal.SIGKILL)
    assert code == 0
    records()  # the shutdown's lines are JSON too


# -- model servers SIGKILLed one at a time under steady load (issue 19, done when) --------------


async def test_model_servers_killed_one_at_a_time_under_load(tmp_path: Path) -> None:
    """Three model servers are SIGKILLed one after another while six clients keep 300 ms
    requests going: only requests on the killed replica fail (none a moment after), the revision
    is back to three ready replicas after each, and stopping leaves no process behind."""
    c, replicas = 6, 3
    spec = emulator_spec(annotations={"autoscaling.knative.dev/min-scale": str(replicas)})
    loop = asyncio.get_running_loop()
    outcomes: list[tuple[float, float, int | str]] = []  # (sent, answered, status or error)
    stop = asyncio.Event()
    async with (
        zeroserve_up(write_spec(tmp_path, spec), tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):

        async def all_ready() -> bool:
            return await rt.ready(session, "gpu-v1") == replicas

        async def client() -> None:
            while not stop.is_set():
                sent = loop.time()
                try:
                    async with session.get(f"{rt.url}/?sleep=300", headers=HOST) as resp:
                        await resp.read()
                        outcomes.append((sent, loop.time(), resp.status))
                except aiohttp.ClientError as exc:
                    outcomes.append((sent, loop.time(), repr(exc)))

        await wait_for(all_ready, within=60, interval=0.3, what="three ready replicas")
        clients = [asyncio.create_task(client()) for _ in range(c)]
        kills: list[float] = []
        for _ in range(3):
            await wait_for(lambda: len(outcomes) >= 10, within=20, what="load flowing")
            victims = child_pids(rt.tag, rt.proc.pid, "examples.gpu_emulator")
            assert len(victims) == replicas, victims
            readies = rt.log().count("replica ready")
            kills.append(loop.time())
            os.kill(victims[0], signal.SIGKILL)

            def replaced(readies: int = readies) -> bool:
                return rt.log().count("replica ready") > readies and (
                    len(child_pids(rt.tag, rt.proc.pid, "examples.gpu_emulator")) == replicas
                )

            await wait_for(replaced, within=60, what="a replacement, ready")
            answered = sum(1 for *_, status in outcomes if status == 200)

            def flowing(answered: int = answered) -> bool:
                return sum(1 for *_, s in outcomes if s == 200) >= answered + 10

            await wait_for(flowing, within=20, what="load after the kill")
        stop.set()
        await asyncio.gather(*clients)
        failed = [(sent, done, status) for sent, done, status in outcomes if status != 200]
        # Each failure was on the killed replica: in flight at the kill, or sent to it in the
        # moment before the supervisor saw its model server die (a few ms here; on Kubernetes,
        # until the probes fail), so answered after a kill and sent at most 0.5 s after it.
        assert all(any(sent < k + 0.5 and k <= done for k in kills) for sent, done, _ in failed), (
            kills,
            failed,
        )
        # At most c at each kill (about c / 3, the killed replica's share); the other
        # replicas' requests finish.
        for k in kills:
            assert sum(1 for sent, done, _ in failed if sent < k + 0.5 and k <= done) <= c
        assert rt.log().count("replica failed") >= len(kills)
        rt.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(rt.proc.wait, 60) == 0
        await wait_for(lambda: not tagged_pids(rt.tag), within=15, what="no process left")


# -- predictor: the built-in model server, its artifact prefetched (issue 20) -------------------

IRIS = {"Host": "iris.default.example.com"}
MODEL_SERVER = "modelserver --name"  # in a model server's command line, not in a fetch's


class ArtifactServer:
    """A loopback HTTP server with one artifact (404 for any other path); counts its downloads."""

    def __init__(self, path: str, body: bytes) -> None:
        self.path, self.body = path, body
        self.downloads = 0
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != self.path:
            return web.Response(status=404, text="no such model\n")
        self.downloads += 1
        return web.Response(body=self.body)

    async def __aenter__(self) -> ArtifactServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(self.runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def predictor_spec(
    uri: str, cache: Path, *, timeout_s: int = 60, initial_zero: bool = True, **env: str
) -> str:
    config = {"scale-to-zero-grace-period": "2s"}
    if initial_zero:
        config |= {"allow-zero-initial-scale": "true", "initial-scale": "0"}
    envs = {"ZEROSERVE_MODEL_CACHE": str(cache), **env}
    return "\n".join(
        [
            "config:",
            *(f'  {k}: "{v}"' for k, v in config.items()),
            "services:",
            "  - name: iris",
            "    revisions:",
            "      - name: iris-v1",
            f"        timeoutSeconds: {timeout_s}",
            '        annotations: {autoscaling.knative.dev/window: "6s"}',
            "        predictor:",
            "          format: sklearn",
            f"          storageUri: {uri}",
            "        env:",
            *(f'          {k}: "{v}"' for k, v in envs.items()),
            "",
        ]
    )


def iris_model(path: Path) -> tuple[list[list[float]], list[int]]:
    """Train and save a scikit-learn iris classifier; some inputs and its own predictions."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    # (by name: whether mypy has joblib's types depends on the extras' overrides)
    joblib = importlib.import_module("joblib")
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    joblib.dump(model, path)
    rows = x[::15]
    return rows.tolist(), [int(p) for p in model.predict(rows)]


async def test_predictor_is_prefetched_once_and_serves_from_zero_twice(tmp_path: Path) -> None:
    """The artifact is downloaded when the revision appears (at zero replicas); the first
    request cold-starts the built-in model server and gets the model's own predictions; after
    scale to zero and back the artifact comes from the cache: one download in all."""
    rows, expected = iris_model(tmp_path / "model.joblib")
    body = (tmp_path / "model.joblib").read_bytes()
    async with ArtifactServer("/models/iris/model.joblib", body) as artifacts:
        uri = f"{artifacts.base}/models/iris/model.joblib"
        spec = write_spec(tmp_path, predictor_spec(uri, tmp_path / "cache"))
        async with (
            zeroserve_up(spec, tmp_path / "up.log") as rt,
            aiohttp.ClientSession() as session,
        ):

            async def fetched() -> bool:
                row = (await rt.revisions(session)).get("iris-v1", {})
                return artifacts.downloads == 1 and row.get("not_ready_reason") is None

            await wait_for(fetched, within=60, what="the artifact prefetched")
            assert "artifact fetched" in rt.log()
            # fetched while the revision is at zero: no model server has run yet
            assert await rt.ready(session, "iris-v1") == 0
            assert child_pids(rt.tag, rt.proc.pid, MODEL_SERVER) == []

            predict = f"{rt.url}/v1/models/iris:predict"
            for attempt in ("cold", "cold again"):
                async with session.post(predict, json={"instances": rows}, headers=IRIS) as resp:
                    assert resp.status == 200, (attempt, await resp.text(), rt.log()[-3000:])
                    assert (await resp.json())["predictions"] == expected
                assert len(child_pids(rt.tag, rt.proc.pid, MODEL_SERVER)) == 1

                async def at_zero() -> bool:
                    return await rt.ready(session, "iris-v1") == 0 and not child_pids(
                        rt.tag, rt.proc.pid, MODEL_SERVER
                    )

                await wait_for(at_zero, within=60, interval=0.5, what="scale to zero")
            assert artifacts.downloads == 1
            assert "replica failed" not in rt.log()


async def _missing_http(tmp_path: Path) -> tuple[str, dict[str, str], contextlib.AsyncExitStack]:
    stack = contextlib.AsyncExitStack()
    artifacts = await stack.enter_async_context(ArtifactServer("/models/iris/model.joblib", b"x"))
    return f"{artifacts.base}/models/missing/model.joblib", {}, stack


async def _missing_s3(tmp_path: Path) -> tuple[str, dict[str, str], contextlib.AsyncExitStack]:
    from moto.server import ThreadedMotoServer

    boto3 = importlib.import_module("boto3")  # (by name, as joblib above)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack = contextlib.AsyncExitStack()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="models")  # the bucket exists; the key does not
    return "s3://models/iris/missing.joblib", env, stack


@pytest.mark.parametrize("source", [_missing_http, _missing_s3], ids=["http-404", "s3-no-key"])
async def test_a_missing_artifact_holds_replicas_shows_in_status_and_503s_with_the_reason(
    tmp_path: Path,
    source: Callable[[Path], Awaitable[tuple[str, dict[str, str], contextlib.AsyncExitStack]]],
) -> None:
    """The fetch fails: the revision's replica is held (no model server started, nothing
    crash-loops), ``zeroserve status`` names the reason, and a request waiting for the revision
    gets 503 with that reason when its timeout ends."""
    uri, env, stack = await source(tmp_path)
    async with stack:
        spec = write_spec(
            tmp_path,
            predictor_spec(uri, tmp_path / "cache", timeout_s=2, initial_zero=False, **env),
        )
        async with (
            zeroserve_up(spec, tmp_path / "up.log") as rt,
            aiohttp.ClientSession() as session,
        ):

            async def reason() -> str | None:
                row = (await rt.revisions(session)).get("iris-v1", {})
                value = row.get("not_ready_reason")
                return value if isinstance(value, str) and value != f"{uri}: fetching" else None

            why = await wait_for(reason, within=60, what="the fetch's failure in the status")
            assert why.startswith(f"{uri}: "), why
            assert "404" in why or "NoSuchKey" in why or "Not Found" in why, why

            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "zeroserve", "status", "--url", rt.status_url),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            table = out.decode()
            assert proc.returncode == 0, table
            assert "NOT READY BECAUSE" in table
            (line,) = [x for x in table.splitlines() if x.startswith("default/iris-v1")]
            assert line.endswith(why), table

            started = time.monotonic()
            predict = f"{rt.url}/v1/models/iris:predict"
            async with session.post(predict, json={"instances": [[1, 2, 3, 4]]}, headers=IRIS) as r:
                text = await r.text()
                assert r.status == 503, text
            waited = time.monotonic() - started
            assert text.startswith(
                "timed out waiting for a ready pod of revision default/iris-v1 after 2s: "
            ), text
            assert uri in text, text
            assert 1.5 <= waited < 15, waited  # the revision's timeout, not a hang

            # held, not crash-looping: asked for one replica, no model server ever started
            row = (await rt.revisions(session))["iris-v1"]
            assert row["desired"] >= 1, row
            assert row["ready"] in (0, None), row
            assert child_pids(rt.tag, rt.proc.pid, MODEL_SERVER) == []
            assert "replica failed" not in rt.log()
            assert rt.log().count("artifact fetch failed") >= 2  # retried


# -- where a cold start goes (issue 26) -----------------------------------------------------------

MODEL_SERVER_PHASES = ["spawn", "imports", "fetch", "load", "warmup", "ready"]  # CPU: no accel


def cold_start_spec(uri: str, cache: Path) -> str:
    """The built-in model server on a file:// model, and a command server (the iris example),
    both from zero."""
    return "\n".join(
        [
            "domain: example.com",
            "config:",
            '  allow-zero-initial-scale: "true"',
            '  initial-scale: "0"',
            "services:",
            "  - name: iris",
            "    revisions:",
            "      - name: iris-v1",
            "        predictor: {format: sklearn, storageUri: " + uri + "}",
            f'        env: {{ZEROSERVE_MODEL_CACHE: "{cache}"}}',
            "  - name: iris-cmd",
            "    revisions:",
            "      - name: iris-cmd-v1",
            "        readinessProbe: {httpGet: {path: /v2/health/ready}}",
            "        command: [python, -m, examples.iris_server]",
            "",
        ]
    )


async def test_cold_start_phases_in_status_cli_and_metrics(tmp_path: Path) -> None:
    """After a cold start from zero, ``/v1/revisions`` has the revision's ``last_cold_start``
    with the built-in model server's phases (spawn, imports, fetch, load, warm-up, ready) and a
    total within the request's own wait; ``zeroserve status`` prints it; ``/metrics`` counts one
    observation per phase. A command server that reports nothing gets spawn and ready only."""
    rows, expected = iris_model(tmp_path / "model.joblib")
    spec = write_spec(tmp_path, cold_start_spec((tmp_path / "model.joblib").as_uri(), tmp_path))
    async with (
        zeroserve_up(spec, tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):

        async def fetched() -> bool:
            row = (await rt.revisions(session)).get("iris-v1", {})
            return bool(row) and row.get("not_ready_reason") is None

        await wait_for(fetched, within=30, what="the artifact prefetched")
        assert (await rt.revisions(session))["iris-v1"]["last_cold_start"] is None

        waits: dict[str, float] = {}
        for revision, host in (
            ("iris-v1", IRIS),
            ("iris-cmd-v1", {"Host": "iris-cmd.default.example.com"}),
        ):
            sent = time.monotonic()
            url = f"{rt.url}/v1/models/iris:predict"
            async with session.post(url, json={"instances": rows}, headers=host) as resp:
                assert resp.status == 200, (revision, await resp.text(), rt.log()[-3000:])
                if revision == "iris-v1":
                    assert (await resp.json())["predictions"] == expected
            waits[revision] = time.monotonic() - sent

        async def recorded() -> dict[str, Any] | None:
            revs = await rt.revisions(session)
            cold = {name: revs[name]["last_cold_start"] for name in waits}
            return cold if all(cold.values()) else None

        cold = await wait_for(recorded, within=10, what="the cold starts recorded")
        model, command = cold["iris-v1"], cold["iris-cmd-v1"]
        assert list(model["phases"]) == MODEL_SERVER_PHASES, model
        assert list(command["phases"]) == ["spawn", "ready"], command
        for name, one in cold.items():
            phases, total = one["phases"], one["total_s"]
            assert all(s >= 0 for s in phases.values()), one
            # the replica's start is the request's wait, less the proxies' share and the
            # inference after it; its phases add up to it (rounding aside)
            assert 0 < total <= waits[name], (one, waits)
            assert total >= waits[name] - 0.5, (one, waits)
            assert abs(sum(phases.values()) - total) < 0.05, one
            assert str(one["pod"]).startswith(name)
        assert model["phases"]["imports"] > 0
        assert "zeroserve.coldstart: cold-start phase" in rt.log()  # the supervisor's lines
        assert "zeroserve.coldstart: cold start" in rt.log()

        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "zeroserve", "status", "--url", rt.status_url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("LAST COLD START"))
        assert "WARMUP" in lines[header]
        shown = {line.split()[0]: line for line in lines[header + 1 :] if line.strip()}
        assert str(model["pod"]) in shown["default/iris-v1"], status.stdout
        assert str(command["pod"]) in shown["default/iris-cmd-v1"], status.stdout

        metrics_url = rt.status_url.replace("/v1/revisions", "/metrics")
        async with session.get(metrics_url) as resp:
            text = await resp.text()
        counts = {
            (smp.labels["revision"], smp.labels["phase"]): smp.value
            for family in text_string_to_metric_families(text)
            for smp in family.samples
            if smp.name == "zeroserve_cold_start_phase_seconds_count"
            and smp.labels.get("namespace") == "default"
        }
        assert counts == {
            **{("iris-v1", phase): 1.0 for phase in MODEL_SERVER_PHASES},
            ("iris-cmd-v1", "spawn"): 1.0,
            ("iris-cmd-v1", "ready"): 1.0,
        }, text
