"""Request batching (issue 22): the annotations' rules, and a real queue-proxy in process in
front of a real model server on loopback that records every call it gets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cluster.batching import (
    ENV,
    MAX_BATCH_SIZE,
    MAX_LATENCY,
    MODE,
    Batching,
    BatchingError,
    batching_env,
    batching_from_env,
    parse_batching,
)
from cluster.inferenceservice import translate
from cluster.kubernetes.render import render
from cluster.kubernetes.scheme import SchemeError, revision_from_deployment
from cluster.payload_logging import parse_logger
from cluster.spec_loader import SpecError, parse_spec
from dataplane.api import NOT_SENT_HEADER
from queue_proxy.batching import read_member
from queue_proxy.config import ConfigError, Settings
from queue_proxy.payload_log import REQUEST_TYPE, RESPONSE_TYPE
from tests.dataplane_fixtures import poll_until, run_app
from tests.e2e_support import emulator_spec, wait_for, zeroserve_up
from tests.test_payload_log import sink
from tests.test_queue_proxy import sample, scrape_port, started

# --- the annotations ---------------------------------------------------------------------------


def test_batching_is_off_without_max_batch_size_and_has_defaults() -> None:
    assert parse_batching({}) is None
    assert parse_batching({"autoscaling.knative.dev/target": "5"}) is None
    assert parse_batching({MAX_BATCH_SIZE: "8"}) == Batching(
        max_batch_size=8, max_latency_s=0.1, mode="adaptive"
    )
    got = parse_batching({MAX_BATCH_SIZE: "32", MAX_LATENCY: "1.5s", MODE: "static"})
    assert got == Batching(max_batch_size=32, max_latency_s=1.5, mode="static")


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({MAX_BATCH_SIZE: "0"}, f"{MAX_BATCH_SIZE} = '0': must be an integer within [1, 100000]"),
        ({MAX_BATCH_SIZE: "x"}, f"{MAX_BATCH_SIZE} = 'x': must be an integer"),
        ({MAX_BATCH_SIZE: "4", MAX_LATENCY: "5"}, f"{MAX_LATENCY} = '5': not a duration"),
        ({MAX_BATCH_SIZE: "4", MAX_LATENCY: "0s"}, f"{MAX_LATENCY} = '0s': must be a duration"),
        ({MAX_BATCH_SIZE: "4", MODE: "eager"}, f"{MODE} = 'eager': must be adaptive or static"),
        ({MAX_LATENCY: "10ms"}, f"{MAX_LATENCY}: needs {MAX_BATCH_SIZE}"),
        ({"batching.zeroserve.dev/max-size": "4"}, "batching.zeroserve.dev/max-size: unknown key"),
    ],
)
def test_bad_batching_annotations_name_the_key(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(BatchingError) as err:
        parse_batching(annotations)
    assert any(e.startswith(message) for e in err.value.errors), err.value.errors


def test_the_queue_proxy_reads_the_annotations_from_its_environment() -> None:
    ann = {MAX_BATCH_SIZE: "16", MAX_LATENCY: "20ms", "autoscaling.knative.dev/target": "3"}
    env = batching_env(ann)
    assert env == {"QUEUE_BATCH_MAX_SIZE": "16", "QUEUE_BATCH_MAX_LATENCY": "20ms"}
    assert batching_from_env(env) == Batching(max_batch_size=16, max_latency_s=0.02)
    settings = Settings.from_env({"USER_PORT": "8080", **env})
    assert settings.batching == Batching(max_batch_size=16, max_latency_s=0.02)
    with pytest.raises(ConfigError, match=r"QUEUE_BATCH_MODE = 'x': must be adaptive or static"):
        Settings.from_env({"USER_PORT": "8080", ENV[MAX_BATCH_SIZE]: "4", ENV[MODE]: "x"})


# --- a model server that records its calls ---------------------------------------------------


@dataclass
class Model:
    """What the model server got: each call's path and body; ``gate`` holds calls while clear."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most_in_flight: int = 0

    def sizes(self) -> list[int]:
        out = []
        for _, body in self.calls:
            if "instances" in body:
                out.append(len(body["instances"]))
            else:
                out.append(body["inputs"][0]["shape"][0])
        return out


MODEL = web.AppKey("model", Model)


def model_app(model: Model) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        model.calls.append((request.path, body))
        model.in_flight += 1
        model.most_in_flight = max(model.most_in_flight, model.in_flight)
        try:
            await model.gate.wait()
        finally:
            model.in_flight -= 1
        rows = body["instances"]
        if any(not isinstance(x, list) for x in rows):
            return web.json_response({"error": "instances must be lists of numbers"}, status=400)
        predictions = [sum(x) for x in rows]
        if request.match_info["name"] == "short":
            predictions = predictions[:-1]
        return web.json_response({"predictions": predictions, "model": "m"})

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        model.calls.append((request.path, body))
        await model.gate.wait()
        x = body["inputs"][0]
        rows, width = x["shape"][0], x["shape"][1]
        data = (
            [v for row in x["data"] for v in row] if isinstance(x["data"][0], list) else x["data"]
        )
        sums = [sum(data[r * width : (r + 1) * width]) for r in range(rows)]
        scale = (body.get("parameters") or {}).get("scale", 1)
        return web.json_response(
            {
                "model_name": request.match_info["name"],
                "id": body.get("id", "none"),
                "outputs": [
                    {"name": "sum", "shape": [rows, 1], "datatype": "FP64", "data": sums},
                    {
                        "name": "scaled",
                        "shape": [rows],
                        "datatype": "FP64",
                        "data": [s * scale for s in sums],
                    },
                ],
            }
        )

    app = web.Application()
    app.router.add_post("/v1/models/{name}:predict", predict)
    app.router.add_post("/v2/models/{name}/infer", infer)

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"]})

    app.router.add_get("/v1/models/{name}", metadata)
    return app


@dataclass
class Rig:
    model: Model
    session: aiohttp.ClientSession
    url: str
    metrics_port: int

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        async with self.session.post(self.url + path, json=body) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@asynccontextmanager
async def rig(
    size: int = 8, *, mode: str = "adaptive", latency: str = "100ms", **changes: Any
) -> AsyncIterator[Rig]:
    model = Model()
    model.gate.set()
    batching = parse_batching({MAX_BATCH_SIZE: str(size), MAX_LATENCY: latency, MODE: mode})
    async with (
        run_app(model_app(model)) as (_, port),
        started(port, batching=batching, **changes) as qp,
        aiohttp.ClientSession() as session,
    ):
        await asyncio.wait_for(qp.readiness.became_ready.wait(), 5)
        yield Rig(model, session, f"http://127.0.0.1:{qp.serving_port}", qp.metrics_port)


async def _held(r: Rig, n: int) -> None:
    """Wait until the model server holds ``n`` calls at its gate."""
    await poll_until(lambda: len(r.model.calls) >= n)


# --- V1 ------------------------------------------------------------------------------------------


async def test_adaptive_sends_at_once_then_joins_what_arrives_while_busy() -> None:
    """CC 1: the first request goes alone at once; the five that arrive while it is at the
    model server go together in the next call, each answered with exactly its own rows."""
    async with rig(8, container_concurrency=1) as r:
        r.model.gate.clear()
        first = asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[1, 2]]}))
        await _held(r, 1)
        rows = {k: [[k, 1]] * (1 + k % 2) for k in range(5)}
        rest = [
            asyncio.create_task(r.post("/v1/models/m:predict", {"instances": rows[k]}))
            for k in range(5)
        ]
        await poll_until(lambda: sum(1 for t in rest if not t.done()) == 5)
        await asyncio.sleep(0.05)  # (they are all queued: nothing more reaches the model)
        assert len(r.model.calls) == 1
        r.model.gate.set()
        assert await first == (200, {"predictions": [3], "model": "m"})
        for k, task in enumerate(rest):
            assert await task == (200, {"predictions": [k + 1] * (1 + k % 2), "model": "m"})
        assert r.model.sizes() == [1, 7]  # 1 + 2 + 1 + 2 + 1 rows in one call
        text = await scrape_port(r.metrics_port)
        assert sample(text, "queue_proxy_batch_requests_count") == 2
        assert sample(text, "queue_proxy_batch_rows_sum") == 8
        # the autoscaler's and the request metrics see requests, not batches
        assert sample(text, "queue_proxy_requests_total", code_class="2xx") == 6


async def test_batches_take_at_most_the_limit_and_up_to_cc_go_at_once() -> None:
    async with rig(3, container_concurrency=2) as r:
        r.model.gate.clear()
        tasks = [
            asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[k]]}))
            for k in range(10)
        ]
        await _held(r, 2)
        await asyncio.sleep(0.05)
        assert len(r.model.calls) == 2  # CC batches in flight, the rest accumulate
        r.model.gate.set()
        answers = await asyncio.gather(*tasks)
        assert answers == [(200, {"predictions": [k], "model": "m"}) for k in range(10)]
        assert max(r.model.sizes()) <= 3
        assert sum(r.model.sizes()) == 10
        assert r.model.most_in_flight == 2


_BINARY_V2 = {  # (asks for a binary output: passes through, not batched)
    "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}],
    "outputs": [{"name": "sum", "parameters": {"binary_data": True}}],
}


async def test_batches_and_passing_requests_share_the_breakers_cc() -> None:
    """CC 1 is the model server's limit, batches or not: a request that passes through waits
    for the batch at the model server, and a batch waits its turn behind one that passes."""
    async with rig(8, container_concurrency=1) as r:
        r.model.gate.clear()
        batched = asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[1]]}))
        await _held(r, 1)
        passing = asyncio.create_task(r.post("/v2/models/m/infer", _BINARY_V2))
        await asyncio.sleep(0.1)
        assert len(r.model.calls) == 1  # it waits in the breaker's queue behind the batch
        r.model.gate.set()
        assert await batched == (200, {"predictions": [1], "model": "m"})
        assert (await passing)[0] == 200
        r.model.gate.clear()
        passing = asyncio.create_task(r.post("/v2/models/m/infer", _BINARY_V2))
        await _held(r, 3)
        three = [
            asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[k]]}))
            for k in range(3)
        ]
        await asyncio.sleep(0.1)
        assert len(r.model.calls) == 3  # the batch waits for the slot
        r.model.gate.set()
        assert (await passing)[0] == 200
        answers = await asyncio.gather(*three)
        assert answers == [(200, {"predictions": [k], "model": "m"}) for k in range(3)]
        assert r.model.sizes()[3:] == [3]  # what arrived while it waited went together
        text = await scrape_port(r.metrics_port)
        assert sample(text, "queue_proxy_queue_depth") == 0


async def test_a_batch_is_refused_503_when_the_breakers_queue_is_full() -> None:
    """CC 1: one request at the model server and ten waiting fill the breaker; a batch that
    must wait for a slot is refused as a request would be."""
    async with rig(8, container_concurrency=1) as r:
        r.model.gate.clear()
        passing = [asyncio.create_task(r.post("/v2/models/m/infer", _BINARY_V2)) for _ in range(11)]
        await _held(r, 1)
        await asyncio.sleep(0.1)
        assert await r.post("/v1/models/m:predict", {"instances": [[1]]}) == (
            503,
            "pending request queue full\n",
        )
        r.model.gate.set()
        assert [(await t)[0] for t in passing] == [200] * 11
        text = await scrape_port(r.metrics_port)
        assert sample(text, "queue_proxy_refusals_total", reason="queue_full") == 1


async def test_static_waits_for_a_full_batch_or_max_latency() -> None:
    async with rig(4, mode="static", latency="30s") as r:
        tasks = [
            asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[k]]}))
            for k in range(4)
        ]
        answers = await asyncio.gather(*tasks)  # full at 4 rows: sent without the 30 s wait
        assert answers == [(200, {"predictions": [k], "model": "m"}) for k in range(4)]
        assert r.model.sizes() == [4]
    async with rig(4, mode="static", latency="50ms") as r:
        assert await r.post("/v1/models/m:predict", {"instances": [[7]]}) == (
            200,
            {"predictions": [7], "model": "m"},
        )
        assert r.model.sizes() == [1]  # sent alone once it had waited max-latency


async def test_a_request_never_waits_past_its_own_deadline() -> None:
    """Static with a 30 s max-latency and a 0.3 s revision timeout: 504 at the deadline."""
    async with rig(4, mode="static", latency="30s", timeout_s=0.3) as r:
        status, body = await asyncio.wait_for(
            r.post("/v1/models/m:predict", {"instances": [[1]]}), 5
        )
        assert status == 504
        assert "request timeout" in body


async def test_a_4xx_batch_is_retried_one_request_at_a_time() -> None:
    async with rig(8, container_concurrency=1) as r:
        r.model.gate.clear()
        blocker = asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[0]]}))
        await _held(r, 1)
        good = [
            asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[k, k]]}))
            for k in (1, 2)
        ]
        bad = asyncio.create_task(r.post("/v1/models/m:predict", {"instances": ["oops"]}))
        await asyncio.sleep(0.1)
        r.model.gate.set()
        await blocker
        assert [await t for t in good] == [
            (200, {"predictions": [2], "model": "m"}),
            (200, {"predictions": [4], "model": "m"}),
        ]
        assert await bad == (400, {"error": "instances must be lists of numbers"})
        assert r.model.sizes() == [1, 3, 1, 1, 1]  # the batch of 3, then each alone
        text = await scrape_port(r.metrics_port)
        assert sample(text, "queue_proxy_batch_retried_requests_total") == 3


async def test_an_answer_with_the_wrong_row_count_is_502_for_each_caller() -> None:
    async with rig(8, container_concurrency=1) as r:
        r.model.gate.clear()
        blocker = asyncio.create_task(r.post("/v1/models/short:predict", {"instances": [[0]]}))
        await _held(r, 1)
        tasks = [
            asyncio.create_task(r.post("/v1/models/short:predict", {"instances": [[k]]}))
            for k in range(3)
        ]
        await asyncio.sleep(0.1)
        r.model.gate.set()
        await blocker  # (alone: its answer passes through as the model server gave it)
        for task in tasks:
            status, body = await task
            assert status == 502
            assert "answered 2 predictions for a batch of 3 instances" in body
        text = await scrape_port(r.metrics_port)
        assert sample(text, "queue_proxy_refusals_total", reason="upstream_error") == 3


async def test_a_refused_batch_is_a_marked_502_for_each_caller() -> None:
    """The model server stops listening: nothing of the batch went out, so each caller's 502
    says so (dataplane.api.NOT_SENT), and the activator may send it to another pod."""
    batching = parse_batching({MAX_BATCH_SIZE: "8", MAX_LATENCY: "100ms"})
    async with run_app(model_app(Model())) as (_, port):
        pass  # the port is closed again
    async with (
        started(port, batching=batching) as qp,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{qp.serving_port}/v1/models/m:predict"
        for _ in range(2):
            async with session.post(url, json={"instances": [[1]]}) as resp:
                assert resp.status == 502
                assert (await resp.text()).startswith("upstream connect error: dial 127.0.0.1:")
                assert resp.headers.get(NOT_SENT_HEADER) == "upstream-connect"
        text = await scrape_port(qp.metrics_port)
        assert sample(text, "queue_proxy_refusals_total", reason="upstream_connect") == 2


async def test_what_cannot_be_batched_passes_through() -> None:
    async with rig(8) as r:
        async with r.session.get(r.url + "/v1/models/m") as resp:
            assert resp.status == 200
            assert await resp.json() == {"name": "m"}
        async with r.session.post(
            r.url + "/v1/models/m:predict", data=b"not json", headers={"X-Mine": "1"}
        ) as resp:
            assert resp.status == 500  # the model server's own answer to a body it can't read
        assert r.model.calls == []
        assert sample(await scrape_port(r.metrics_port), "queue_proxy_batch_requests_count") == 0


# --- V2 ------------------------------------------------------------------------------------------


def _v2(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "shape": [len(rows), 2], "datatype": "FP64", "data": rows}],
        **extra,
    }


async def test_v2_inputs_are_joined_and_outputs_split_with_each_callers_id() -> None:
    async with rig(8, container_concurrency=1) as r:
        r.model.gate.clear()
        blocker = asyncio.create_task(r.post("/v2/models/m/infer", _v2([[0, 0]])))
        await _held(r, 1)
        a = asyncio.create_task(r.post("/v2/models/m/infer", _v2([[1, 2], [3, 4]], id="a")))
        b = asyncio.create_task(r.post("/v2/models/m/infer", _v2([[5, 6]], id="b")))
        other = asyncio.create_task(
            r.post("/v2/models/m/infer", _v2([[1, 1]], id="c", parameters={"scale": 10}))
        )
        await asyncio.sleep(0.1)
        r.model.gate.set()
        await blocker
        status, got_a = await a
        assert status == 200
        assert got_a["id"] == "a"
        assert got_a["outputs"] == [
            {"name": "sum", "shape": [2, 1], "datatype": "FP64", "data": [3, 7]},
            {"name": "scaled", "shape": [2], "datatype": "FP64", "data": [3, 7]},
        ]
        status, got_b = await b
        assert got_b["id"] == "b"
        assert [o["data"] for o in got_b["outputs"]] == [[11], [11]]
        status, got_c = await other  # other parameters: a batch of its own
        assert got_c["outputs"][1]["data"] == [20]
        assert sorted(r.model.sizes()) == [1, 1, 3]
        joined = next(body for _, body in r.model.calls if body["inputs"][0]["shape"][0] == 3)
        assert joined["inputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
        assert "id" not in joined


# --- zeroserve up: the annotations reach the queue-proxy ----------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_zeroserve_up_batches_a_revision_with_the_annotations(tmp_path: Path) -> None:
    """The emulator's batch cost model (50 ms a call + 1 ms a row, one slot) behind the local
    runtime with ``max-batch-size: 16``: 12 requests at once take fewer calls than requests,
    each answered with its own predictions."""
    spec = emulator_spec(
        name="emu",
        cc=1,
        annotations={"autoscaling.knative.dev/min-scale": "1", MAX_BATCH_SIZE: "16"},
        env={"CALL_COST_MS": "50", "ROW_COST_MS": "1", "SLOTS": "1"},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(spec)
    async with (
        zeroserve_up(spec_path, tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):

        async def one_ready() -> bool:
            return await rt.ready(session, "emu-v1") == 1

        await wait_for(one_ready, within=60, interval=0.3, what="one ready replica")

        async def predict(k: int) -> tuple[int, Any]:
            body = {"instances": [[k, 1], [k, 2]]}
            async with session.post(f"{rt.url}/v1/models/emu:predict", json=body) as resp:
                return resp.status, await resp.json()

        answers = await asyncio.gather(*(predict(k) for k in range(12)))
        assert answers == [(200, {"predictions": [k + 1.0, k + 2.0]}) for k in range(12)]
        host = {"Host": "emu.default.example.com"}
        async with session.get(f"{rt.url}/debug/concurrency", headers=host) as resp:
            assert resp.status == 200, await resp.text()
            calls = (await resp.json())["served"]
        assert 2 <= calls < 12  # the first alone, the rest joined while the slot was busy


# --- the spec, the InferenceService form, Kubernetes -----------------------------------------


def _spec(annotations: dict[str, str]) -> dict[str, Any]:
    revision = {"name": "m-v1", "command": ["model"], "annotations": annotations}
    return {"services": [{"name": "m", "revisions": [revision]}]}


def test_the_spec_loader_refuses_bad_batching_annotations_naming_the_path() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec({MAX_BATCH_SIZE: "0", MODE: "eager"}))
    path = "services[0].revisions[0].annotations"
    assert (
        f"{path}: {MAX_BATCH_SIZE} = '0': must be an integer within [1, 100000] (rows per batch)"
        in (err.value.errors)
    )
    assert f"{path}: {MODE} = 'eager': must be adaptive or static" in err.value.errors


def _isvc(predictor: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris"},
        "spec": {"predictor": {"sklearn": {"storageUri": "file:///m"}, **predictor}},
    }


def test_kserves_batcher_field_becomes_the_annotations() -> None:
    def annotations(predictor: dict[str, Any]) -> dict[str, str]:
        [svc] = parse_spec(translate([_isvc(predictor)]).spec).services
        return {k: v for k, v in svc.revisions[0].annotations.items() if k.startswith("batching")}

    assert annotations({}) == {}
    assert annotations({"batcher": {}}) == {MAX_BATCH_SIZE: "32", MAX_LATENCY: "5000ms"}
    got = annotations(
        {"batcher": {"maxBatchSize": 8, "maxLatency": 20}, "annotations": {MODE: "static"}}
    )
    assert got == {MAX_BATCH_SIZE: "8", MAX_LATENCY: "20ms", MODE: "static"}
    with pytest.raises(SpecError) as err:
        translate([_isvc({"batcher": {"maxBatchSize": 0, "size": 3}})])
    assert any(
        "spec.predictor.batcher.maxBatchSize = 0: must be at least 1" in e for e in err.value.errors
    )
    assert any("spec.predictor.batcher.size" in e for e in err.value.errors)


def test_render_hands_the_annotations_to_the_queue_proxy_and_the_scheme_checks_them() -> None:
    spec = parse_spec(_spec({MAX_BATCH_SIZE: "4", MAX_LATENCY: "10ms"}))
    [deployment] = [o for o in render(spec, image="zeroserve:test") if o["kind"] == "Deployment"]
    assert deployment["metadata"]["annotations"][MAX_BATCH_SIZE] == "4"
    [qp] = [
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == "queue-proxy"
    ]
    env = {e["name"]: e.get("value") for e in qp["env"]}
    assert batching_from_env(env) == Batching(max_batch_size=4, max_latency_s=0.01)
    assert revision_from_deployment(deployment).annotations[MAX_BATCH_SIZE] == "4"
    for e in qp["env"]:
        if e["name"] == "QUEUE_BATCH_MAX_SIZE":
            e["value"] = "8"
    with pytest.raises(SchemeError, match=r"env\[QUEUE_BATCH_MAX_SIZE\] = '8': must agree"):
        revision_from_deployment(deployment)
    deployment["metadata"]["annotations"][MODE] = "eager"
    with pytest.raises(SchemeError, match=f"{MODE} = 'eager'"):
        revision_from_deployment(deployment)


def test_v2_requests_that_cannot_be_split_here_pass_through() -> None:
    row = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
    assert read_member("/v2/models/m/infer", json.dumps({"inputs": [row]}).encode()) is not None
    binary = {"inputs": [row], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    uneven = {"inputs": [row, {**row, "name": "z", "shape": [2, 1]}]}
    wrong_size = {"inputs": [{**row, "shape": [1, 3]}]}
    docs: list[object] = [binary, uneven, wrong_size, {"inputs": []}, [row]]
    for doc in docs:
        assert read_member("/v2/models/m/infer", json.dumps(doc).encode()) is None, doc
    assert read_member("/v2/models/m/infer", b"\x00binary tensor") is None


async def test_batched_requests_are_payload_logged_each_with_its_own_answer() -> None:
    """Batching and payload logging together: each caller's request and its own share of the
    batch's answer reach the sink as one pair of events."""
    async with sink() as s:
        logger = parse_logger({"logger.zeroserve.dev/url": s.url})
        async with rig(8, container_concurrency=1, payload_logging=logger) as r:
            r.model.gate.clear()
            blocker = asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[9]]}))
            await _held(r, 1)
            tasks = [
                asyncio.create_task(r.post("/v1/models/m:predict", {"instances": [[k, k]]}))
                for k in (1, 2, 3)
            ]
            await asyncio.sleep(0.1)
            r.model.gate.set()
            await blocker
            assert [await t for t in tasks] == [
                (200, {"predictions": [2 * k], "model": "m"}) for k in (1, 2, 3)
            ]
            assert r.model.sizes() == [1, 3]
            await poll_until(lambda: len(s.events) == 8)
    pairs = s.pairs()
    answered = sorted(
        (json.loads(p[REQUEST_TYPE].data)["instances"], json.loads(p[RESPONSE_TYPE].data))
        for p in pairs.values()
    )
    assert answered == [
        ([[1, 1]], {"predictions": [2], "model": "m"}),
        ([[2, 2]], {"predictions": [4], "model": "m"}),
        ([[3, 3]], {"predictions": [6], "model": "m"}),
        ([[9]], {"predictions": [9], "model": "m"}),
    ]
    assert all(p[RESPONSE_TYPE].attributes["statuscode"] == "200" for p in pairs.values())
