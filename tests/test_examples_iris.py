"""The iris example: its data, its model, and its server over KServe V1 and Open Inference V2."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from examples.inference_requests import (
    InferenceRequestError,
    parse_json_object,
    parse_v1_instances,
    parse_v2_request,
)
from examples.iris_model import CLASSES, load_iris, train
from examples.iris_server import STATE, IrisConfig, make_app, settings_from_env
from examples.serving import ConfigError
from tests.examples_support import poll_until_status, serve_in_process, start_server_process

# Rows of Fisher's data and their species: the first of each class, and a few near the borders.
SETOSA_0 = [5.1, 3.5, 1.4, 0.2]  # row 0
VERSICOLOR_50 = [7.0, 3.2, 4.7, 1.4]  # row 50
VIRGINICA_100 = [6.3, 3.3, 6.0, 2.5]  # row 100
VERSICOLOR_52 = [6.4, 3.2, 4.5, 1.5]  # row 51
VIRGINICA_149 = [5.9, 3.0, 5.1, 1.8]  # row 149
KNOWN = [
    (SETOSA_0, 0),
    (VERSICOLOR_50, 1),
    (VIRGINICA_100, 2),
    (VERSICOLOR_52, 1),
    (VIRGINICA_149, 2),
]


Client = tuple[str, aiohttp.ClientSession]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    app = make_app(IrisConfig())
    async with serve_in_process(app) as (base, session):
        await asyncio.wait_for(app[STATE].loaded.wait(), 10)
        yield base, session


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    base, session = client
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(base + path, data=data) as resp:
        return resp.status, await resp.json()


async def get(client: Client, path: str) -> tuple[int, Any]:
    base, session = client
    async with session.get(base + path) as resp:
        return resp.status, await resp.json()


# --- the data and the model --------------------------------------------------------------------


def test_data_is_fishers_iris() -> None:
    data = load_iris()
    assert data.x.shape == (150, 4)
    assert np.bincount(data.y).tolist() == [50, 50, 50]
    # The well-known column means (Fisher's 1936 values, as scikit-learn ships them).
    assert np.round(data.x.mean(axis=0), 3).tolist() == [5.843, 3.057, 3.758, 1.199]
    # ...and per class, which catches a row moved between classes.
    means = [np.round(data.x[data.y == k].mean(axis=0), 3).tolist() for k in range(3)]
    assert means == [
        [5.006, 3.428, 1.462, 0.246],
        [5.936, 2.770, 4.260, 1.326],
        [6.588, 2.974, 5.552, 2.026],
    ]
    assert data.x[0].tolist() == SETOSA_0
    assert data.x[50].tolist() == VERSICOLOR_50
    assert data.x[100].tolist() == VIRGINICA_100


def test_training_accuracy_and_reproducibility() -> None:
    data = load_iris()
    model = train(data)
    assert model.accuracy(data) >= 0.95
    again = train(data)
    assert np.array_equal(model.w, again.w)
    assert np.array_equal(model.b, again.b)
    proba = model.probabilities(data.x)
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_untrained_model_is_not_accurate() -> None:
    # Shows the accuracy test can fail: no training steps → uniform probabilities → class 0.
    data = load_iris()
    assert train(data, epochs=0).accuracy(data) == pytest.approx(1 / 3)


# --- V1 and V2 predictions ----------------------------------------------------------------------


async def test_v1_predicts_known_rows(client: Client) -> None:
    status, body = await post(
        client, "/v1/models/iris:predict", {"instances": [row for row, _ in KNOWN]}
    )
    assert status == 200
    assert body == {"predictions": [label for _, label in KNOWN]}


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_v2_predicts_known_rows(client: Client, datatype: str, nested: bool) -> None:
    rows = [row for row, _ in KNOWN]
    data: list[Any] = rows if nested else [v for row in rows for v in row]
    request = {
        "id": "req-42",
        "inputs": [
            {"name": "input-0", "shape": [len(rows), 4], "datatype": datatype, "data": data}
        ],
    }
    status, body = await post(client, "/v2/models/iris/infer", request)
    assert status == 200
    assert body == {
        "model_name": "iris",
        "model_version": "1",
        "id": "req-42",
        "outputs": [
            {
                "name": "predict",
                "shape": [len(rows)],
                "datatype": "INT64",
                "data": [label for _, label in KNOWN],
            }
        ],
    }


async def test_v2_probabilities_output_and_generated_id(client: Client) -> None:
    request = {
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": SETOSA_0 + VIRGINICA_100}
        ],
        "outputs": [{"name": "probabilities"}, {"name": "predict"}],
    }
    status, body = await post(client, "/v2/models/iris/infer", request)
    assert status == 200
    assert isinstance(body["id"], str)
    assert body["id"]
    proba, predict = body["outputs"]
    assert predict["data"] == [0, 2]
    assert proba["name"] == "probabilities"
    assert proba["shape"] == [2, 3]
    assert proba["datatype"] == "FP32"
    p = np.array(proba["data"]).reshape(2, 3)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert p[0, 0] > 0.9
    assert p[1, 2] > 0.9


async def test_metadata_and_readiness(client: Client) -> None:
    assert await get(client, "/v2/health/live") == (200, {"live": True})
    assert await get(client, "/v2/health/ready") == (200, {"ready": True})
    assert await get(client, "/v2/models/iris/ready") == (200, {"name": "iris", "ready": True})
    assert await get(client, "/v1/models/iris") == (200, {"name": "iris", "ready": True})
    assert await get(client, "/v1/models") == (200, {"models": ["iris"]})
    status, meta = await get(client, "/v2/models/iris")
    assert status == 200
    assert meta["name"] == "iris"
    assert meta["versions"] == ["1"]
    assert meta["platform"]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"][0] == {"name": "predict", "datatype": "INT64", "shape": [-1]}
    assert meta["parameters"]["classes"] == list(CLASSES)


async def test_model_name_comes_from_config() -> None:
    app = make_app(IrisConfig(model_name="flowers"))
    async with serve_in_process(app) as (base, session):
        await asyncio.wait_for(app[STATE].loaded.wait(), 10)
        client = (base, session)
        status, body = await post(client, "/v1/models/flowers:predict", {"instances": [SETOSA_0]})
        assert (status, body) == (200, {"predictions": [0]})
        status, body = await post(client, "/v1/models/iris:predict", {"instances": [SETOSA_0]})
        assert status == 404


# --- refusals ---------------------------------------------------------------------------------


def v2(tensor: dict[str, Any]) -> dict[str, Any]:
    base = {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": SETOSA_0}
    return {"inputs": [{**base, **tensor}]}


MALFORMED = [
    # (path, body, words the error must contain)
    pytest.param("v1", b"{not json", "not valid JSON", id="v1-not-json"),
    pytest.param("v1", b"", "empty", id="v1-empty-body"),
    pytest.param("v1", b"[1, 2]", "JSON object", id="v1-not-an-object"),
    pytest.param("v1", {"inputs": [SETOSA_0]}, "missing 'instances'", id="v1-missing-instances"),
    pytest.param("v1", {"instances": []}, "empty batch", id="v1-empty-batch"),
    pytest.param("v1", {"instances": SETOSA_0}, "instance 0 must be a list", id="v1-flat-row"),
    pytest.param("v1", {"instances": [[1, 2, 3]]}, "instance 0 has 3 features, expected 4", id="v1-3-features"),
    pytest.param("v1", {"instances": [SETOSA_0, [1, 2, 3, 4, 5]]}, "instance 1 has 5 features", id="v1-5-features"),
    pytest.param("v1", {"instances": [[1, "a", 3, 4]]}, "instance 0 feature 1 is not a number", id="v1-string"),
    pytest.param("v1", {"instances": [[1, True, 3, 4]]}, "feature 1 is not a number", id="v1-bool"),
    pytest.param("v1", {"instances": [[1, None, 3, 4]]}, "feature 1 is not a number", id="v1-null"),
    pytest.param("v1", b'{"instances": [[1, NaN, 3, 4]]}', "not valid JSON", id="v1-nan"),
    pytest.param("v1", b'{"instances": [[1, 1e999, 3, 4]]}', "not a finite number", id="v1-overflow"),
    pytest.param("v2", b"{not json", "not valid JSON", id="v2-not-json"),
    pytest.param("v2", b"\xff\xfe", "not UTF-8", id="v2-binary"),
    pytest.param("v2", {"instances": [SETOSA_0]}, "missing 'inputs'", id="v2-missing-inputs"),
    pytest.param("v2", {"inputs": []}, "non-empty list", id="v2-no-tensors"),
    pytest.param("v2", {"inputs": [v2({})["inputs"][0]] * 2}, "exactly 1 input", id="v2-two-tensors"),
    pytest.param("v2", {"inputs": ["x"]}, "input 0 must be a JSON object", id="v2-tensor-not-object"),
    pytest.param("v2", v2({"shape": [1, 3], "data": [1, 2, 3]}), "shape [1, 3]: expected [N, 4]", id="v2-3-features"),
    pytest.param("v2", v2({"shape": [4]}), "shape [4]: expected [N, 4]", id="v2-1d-shape"),
    pytest.param("v2", v2({"shape": [1, 2, 2]}), "expected [N, 4]", id="v2-3d-shape"),
    pytest.param("v2", v2({"shape": [-1, 4]}), "non-negative integers", id="v2-negative-dim"),
    pytest.param("v2", v2({"shape": "1,4"}), "shape must be a list", id="v2-shape-string"),
    pytest.param("v2", v2({"shape": [0, 4], "data": []}), "empty batch", id="v2-empty-batch"),
    pytest.param("v2", v2({"data": [1, 2, "x", 4]}), "data[2] is not a number", id="v2-string-data"),
    pytest.param("v2", v2({"data": [1, 2, [3, "y"]]}), "is not a number", id="v2-nested-string"),
    pytest.param("v2", v2({"data": "1,2,3,4"}), "data must be a list", id="v2-data-string"),
    pytest.param("v2", v2({"data": [1, 2, 3]}), "data has 3 values but shape [1, 4] needs 4", id="v2-short-data"),
    pytest.param("v2", v2({"shape": [2, 4]}), "data has 4 values but shape [2, 4] needs 8", id="v2-shape-too-big"),
    pytest.param("v2", v2({"data": [[1, 2], [3, 4]]}), "data has 2 rows but shape [1, 4] says 1", id="v2-bad-nesting"),
    pytest.param(
        "v2",
        v2({"shape": [2, 4], "data": [[1, 2, 3], [4, 5, 6, 7, 8]]}),
        "data row 0 has 3 values",
        id="v2-ragged",
    ),
    pytest.param("v2", v2({"datatype": "BYTES"}), "unsupported datatype \"BYTES\"", id="v2-bytes"),
    pytest.param("v2", v2({"datatype": "FLOAT"}), "unknown datatype \"FLOAT\"", id="v2-unknown-datatype"),
    pytest.param("v2", v2({"datatype": "INT64", "data": [1, 2.5, 3, 4]}), "not an integer", id="v2-int-fraction"),
    pytest.param("v2", {"inputs": [{"shape": [1, 4], "data": SETOSA_0}]}, "missing 'datatype'", id="v2-no-datatype"),
    pytest.param("v2", {**v2({}), "id": 7}, "'id' must be a string", id="v2-numeric-id"),
    pytest.param("v2", {**v2({}), "outputs": [{"name": "logits"}]}, "unknown output 'logits'", id="v2-unknown-output"),
]  # fmt: skip


@pytest.mark.parametrize(("protocol", "body", "reason"), MALFORMED)
async def test_malformed_requests_are_400_naming_the_problem(
    client: Client, protocol: str, body: Any, reason: str
) -> None:
    path = "/v1/models/iris:predict" if protocol == "v1" else "/v2/models/iris/infer"
    status, answer = await post(client, path, body)
    assert status == 400, answer
    assert set(answer) == {"error"}
    assert reason in answer["error"]


def test_integer_datatypes_accept_integral_values() -> None:
    parsed = parse_v2_request(v2({"datatype": "INT32", "data": [5, 3, 1, 0]}), 4)
    assert parsed.features.tolist() == [[5.0, 3.0, 1.0, 0.0]]


def test_parsers_raise_their_own_error() -> None:
    with pytest.raises(InferenceRequestError, match="missing 'instances'"):
        parse_v1_instances(parse_json_object(b"{}"), 4)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/v2/models/nope/infer", id="v2-infer"),
        pytest.param("GET", "/v2/models/nope", id="v2-metadata"),
        pytest.param("GET", "/v2/models/nope/ready", id="v2-ready"),
        pytest.param("POST", "/v1/models/nope:predict", id="v1-predict"),
        pytest.param("GET", "/v1/models/nope", id="v1-model"),
    ],
)
async def test_unknown_model_is_404(client: Client, method: str, path: str) -> None:
    base, session = client
    async with session.request(method, base + path, json={"instances": [SETOSA_0]}) as resp:
        assert resp.status == 404
        body = await resp.json()
    assert "'nope' not found" in body["error"]
    assert "'iris'" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("GET", "/v1/models/iris:predict", "POST", id="get-predict"),
        pytest.param("GET", "/v2/models/iris/infer", "POST", id="get-infer"),
        pytest.param("POST", "/v2/health/ready", "GET", id="post-ready"),
        pytest.param("DELETE", "/v1/models/iris", "GET", id="delete-model"),
    ],
)
async def test_wrong_method_is_405(client: Client, method: str, path: str, allowed: str) -> None:
    base, session = client
    async with session.request(method, base + path) as resp:
        assert resp.status == 405
        assert allowed in resp.headers["Allow"]
        body = await resp.json()
    assert f"method {method} is not allowed" in body["error"]


async def test_unknown_path_is_404_json(client: Client) -> None:
    assert await get(client, "/v3/nothing") == (404, {"error": "no route for /v3/nothing"})


# --- start-up and configuration --------------------------------------------------------------


async def test_not_ready_until_the_model_is_loaded() -> None:
    app = make_app(IrisConfig(startup_delay_s=0.5))
    async with serve_in_process(app) as (base, session):
        client = (base, session)
        assert await get(client, "/v2/health/live") == (200, {"live": True})
        assert await get(client, "/v2/health/ready") == (503, {"ready": False})
        assert await get(client, "/v1/models/iris") == (503, {"name": "iris", "ready": False})
        status, body = await post(client, "/v1/models/iris:predict", {"instances": [SETOSA_0]})
        assert status == 503
        assert "not loaded yet" in body["error"]
        await poll_until_status(session, base + "/v2/health/ready", 200, timeout_s=10)
        assert await post(client, "/v1/models/iris:predict", {"instances": [SETOSA_0]}) == (
            200,
            {"predictions": [0]},
        )


async def test_a_model_that_fails_to_load_is_not_live(tmp_path: Path) -> None:
    app = make_app(IrisConfig(data_path=tmp_path / "missing.csv"))
    async with serve_in_process(app) as (base, session):
        client = (base, session)
        status, body = await poll_until_status_json(client, "/v2/health/live", 500)
        assert "failed to load" in body["error"]
        assert "missing.csv" in body["error"]
        status, body = await get(client, "/v2/health/ready")
        assert (status, body["ready"]) == (503, False)
        status, body = await post(client, "/v1/models/iris:predict", {"instances": [SETOSA_0]})
        assert status == 503
        assert "failed to load" in body["error"]


async def poll_until_status_json(client: Client, path: str, status: int) -> tuple[int, Any]:
    base, session = client
    await poll_until_status(session, base + path, status, timeout_s=10)
    return await get(client, path)


def test_settings_from_env_defaults() -> None:
    config, server = settings_from_env({})
    assert config == IrisConfig()
    assert (server.host, server.port, server.shutdown_timeout_s) == ("127.0.0.1", 8080, 30.0)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        pytest.param({"PORT": "http"}, "PORT = http", id="port-not-int"),
        pytest.param({"PORT": "70000"}, "PORT = 70000", id="port-too-big"),
        pytest.param(
            {"STARTUP_DELAY_SECONDS": "-1"}, "STARTUP_DELAY_SECONDS = -1", id="negative-delay"
        ),
        pytest.param(
            {"STARTUP_DELAY_SECONDS": "nan"}, "STARTUP_DELAY_SECONDS = nan", id="nan-delay"
        ),
        pytest.param({"MODEL_NAME": "a/b"}, "MODEL_NAME = a/b", id="slash-in-name"),
    ],
)
def test_settings_from_env_refuses_bad_values(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("/", ".")):
        settings_from_env(env)


# --- as a real process -----------------------------------------------------------------------


@pytest.mark.e2e
async def test_iris_server_process(tmp_path: Path) -> None:
    env = {"STARTUP_DELAY_SECONDS": "1", "MODEL_NAME": "iris"}
    async with (
        start_server_process("examples.iris_server", env, tmp_path / "iris.log") as server,
        aiohttp.ClientSession() as session,
    ):
        # Listening long before the model is loaded: readiness is 503 first, then 200.
        await poll_until_status(
            session, server.base_url + "/v2/health/live", 200, timeout_s=10, what=server.log()
        )
        seen = await poll_until_status(
            session, server.base_url + "/v2/health/ready", 200, timeout_s=10, what=server.log()
        )
        assert seen[0] == 503, seen
        client = (server.base_url, session)
        status, body = await post(
            client,
            "/v1/models/iris:predict",
            {"instances": [SETOSA_0, VERSICOLOR_50, VIRGINICA_100]},
        )
        assert (status, body) == (200, {"predictions": [0, 1, 2]})
        status, body = await post(
            client,
            "/v2/models/iris/infer",
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": VIRGINICA_100}
                ]
            },
        )
        assert status == 200
        assert body["outputs"][0]["data"] == [2]
        assert await server.terminate() == 0, server.log()
    log = server.log()
    assert "listening on 127.0.0.1:" in log
    assert "training accuracy" in log
