"""The model server's behaviour around the model: readiness only after loading and the warm-up
inference, 503 with Retry-After before, 404 for another model's name, 400 naming the input with
what was expected and what was received, and a model that fails to load or to warm up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from modelserver.server import STATE, Hooks, ModelConfig, make_app
from tests.examples_support import serve_in_process
from tests.modelserver_support import (
    GatedEstimator,
    Served,
    gate,
    iris,
    serving,
    tensor,
)

X, Y = iris()


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.linear_model import LogisticRegression

    path = tmp_path_factory.mktemp("iris") / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=1000).fit(X, Y), path)
    return path


@pytest.fixture
async def iris_server(iris_model: Path) -> AsyncIterator[Served]:
    async with serving("iris", "sklearn", iris_model) as s:
        yield s


async def _poll(s: Served, path: str, status: int, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await s.get(path))[0] != status:
        assert loop.time() < deadline, f"{path} did not answer {status} within {timeout_s}s"
        await asyncio.sleep(0.01)


# --- readiness -----------------------------------------------------------------------------------


async def test_ready_only_after_load_and_warm_up(tmp_path: Path, request: Any) -> None:
    load_gate, predict_gate = f"{request.node.name}-load", f"{request.node.name}-predict"
    joblib.dump(GatedEstimator(load_gate, predict_gate), tmp_path / "model.joblib")
    try:
        async with serving("gated", "sklearn", tmp_path, wait_ready=False) as s:
            state = s.app[STATE]
            # Loading (unpickling waits on its gate): alive, not ready, inference refused.
            assert (await s.get("/v2/health/live"))[0] == 200
            for path in ("/v2/health/ready", "/v2/models/gated/ready", "/v1/models/gated"):
                status, body, _ = await s.get(path)
                assert status == 503, path
                assert body["ready"] is False
            status, body, headers = await s.post(
                "/v2/models/gated/infer", {"inputs": [tensor("input-0", X[:1], "FP64")]}
            )
            assert (status, headers.get("Retry-After")) == (503, "1")
            assert body["error"] == "model 'gated' is not loaded yet (loading)"
            status, body, headers = await s.post(
                "/v1/models/gated:predict", {"instances": X[:1].tolist()}
            )
            assert (status, headers.get("Retry-After")) == (503, "1")
            status, body, headers = await s.get("/v2/models/gated")
            assert (status, headers.get("Retry-After")) == (503, "1")

            # Loaded, warming up (the warm-up's predict waits on its gate): still not ready.
            gate(load_gate).set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while state.phase != "warming":
                assert loop.time() < deadline, state.phase
                await asyncio.sleep(0.01)
            assert (await s.get("/v2/health/ready"))[0] == 503
            status, body, headers = await s.post(
                "/v1/models/gated:predict", {"instances": X[:1].tolist()}
            )
            assert (status, headers.get("Retry-After")) == (503, "1")
            assert body["error"] == "model 'gated' is not loaded yet (warming)"

            # Warm: ready everywhere, and it answers.
            gate(predict_gate).set()
            await _poll(s, "/v2/health/ready", 200)
            assert (await s.get("/v2/models/gated/ready"))[1] == {"name": "gated", "ready": True}
            assert (await s.get("/v1/models/gated"))[1] == {"name": "gated", "ready": True}
            assert await s.v1("gated", X[[0, 100]].tolist()) == [0, 1]
    finally:
        gate(load_gate).set()
        gate(predict_gate).set()


async def test_failed_warm_up_keeps_it_unready_and_says_why(tmp_path: Path) -> None:
    joblib.dump(GatedEstimator(fail_on_zeros=True), tmp_path / "model.joblib")
    failed = asyncio.Event()
    config = ModelConfig(name="bad", format="sklearn", model=str(tmp_path))
    app = make_app(config, hooks=Hooks(on_load_error=failed.set))
    async with serve_in_process(app) as (base, session):
        await asyncio.wait_for(failed.wait(), 30)
        s = Served(base, session, app)
        status, body, _ = await s.get("/v2/health/ready")
        assert status == 503
        assert body["error"] == (
            "model 'bad' failed to load: warm-up inference failed: all-zero rows are not iris flowers"
        )
        status, body, _ = await s.get("/v2/health/live")
        assert status == 500
        status, body, headers = await s.post(
            "/v1/models/bad:predict", {"instances": [[1, 2, 3, 4]]}
        )
        assert status == 503
        assert "Retry-After" not in headers  # retrying will not help
        assert "warm-up inference failed" in body["error"]


async def test_corrupt_model_file_fails_to_load_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not a pickle at all")
    failed = asyncio.Event()
    config = ModelConfig(name="bad", format="sklearn", model=str(tmp_path))
    app = make_app(config, hooks=Hooks(on_load_error=failed.set))
    async with serve_in_process(app):
        await asyncio.wait_for(failed.wait(), 30)
        error = app[STATE].load_error
    assert error is not None
    assert error.startswith(f"model 'bad' failed to load: --model {tmp_path / 'model.joblib'}: ")
    assert "cannot load it as sklearn" in error


async def test_draining_turns_readiness_off_but_still_serves(iris_server: Served) -> None:
    iris_server.app[STATE].draining = True
    assert (await iris_server.get("/v2/health/ready"))[0] == 503
    assert await iris_server.v1("iris", X[:1].tolist()) == [0]


# --- 404 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/v2/models/wine", id="v2-metadata"),
        pytest.param("GET", "/v2/models/wine/ready", id="v2-ready"),
        pytest.param("POST", "/v2/models/wine/infer", id="v2-infer"),
        pytest.param("GET", "/v1/models/wine", id="v1-model"),
        pytest.param("POST", "/v1/models/wine:predict", id="v1-predict"),
    ],
)
async def test_unknown_model_is_404(iris_server: Served, method: str, path: str) -> None:
    if method == "GET":
        status, body, _ = await iris_server.get(path)
    else:
        status, body, _ = await iris_server.post(path, {"instances": [[1, 2, 3, 4]]})
    assert status == 404
    assert body == {"error": "model 'wine' not found: this server serves 'iris'"}


async def test_server_metadata_and_model_list(iris_server: Served) -> None:
    status, body, _ = await iris_server.get("/v2")
    assert status == 200
    assert body["name"] == "zeroserve-modelserver"
    assert body["extensions"] == []
    assert (await iris_server.get("/v1/models"))[1] == {"models": ["iris"]}


# --- 400 -----------------------------------------------------------------------------------------

ROW = [5.1, 3.5, 1.4, 0.2]


def _v2(**tensor: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": ROW, **tensor}]
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            _v2(shape=[1, 3], data=ROW[:3]),
            "input 'input-0': expected shape [-1, 4], got [1, 3]",
            id="wrong-width",
        ),
        pytest.param(
            _v2(shape=[4], data=ROW),
            "input 'input-0': expected shape [-1, 4], got [4]",
            id="wrong-rank",
        ),
        pytest.param(
            _v2(datatype="BYTES", data=["a", "b", "c", "d"]),
            "input 'input-0': expected datatype FP64 (or FP16, FP32, INT16, INT32, INT64, INT8, "
            "UINT16, UINT32, UINT64, UINT8), got BYTES",
            id="wrong-datatype",
        ),
        pytest.param(
            _v2(datatype="FP128"),
            "input 'input-0' has unknown datatype \"FP128\": expected FP64 (or FP16, FP32, INT16, "
            "INT32, INT64, INT8, UINT16, UINT32, UINT64, UINT8) (V2 datatypes are BF16, BOOL, "
            "BYTES, FP16, FP32, FP64, INT16, INT32, INT64, INT8, UINT16, UINT32, UINT64, UINT8)",
            id="unknown-datatype",
        ),
        pytest.param(
            _v2(shape=[2, 4]),
            "input 'input-0' data has 4 values but shape [2, 4] needs 8",
            id="data-shorter-than-shape",
        ),
        pytest.param(
            _v2(datatype="INT64", data=[5, 3, 1.5, 0]),
            "input 'input-0' data[2] = 1.5 is not an integer, as INT64 requires",
            id="float-in-int",
        ),
        pytest.param(
            _v2(data=[5.1, "3.5", 1.4, 0.2]),
            "input 'input-0' data[1] = \"3.5\" is not a number, as FP64 requires",
            id="string-in-float",
        ),
        pytest.param(
            _v2(shape=[0, 4], data=[]),
            "input 'input-0' has shape [0, 4]: an empty batch, send at least one row",
            id="empty-batch",
        ),
        pytest.param(
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": ROW}]},
            "unknown input 'x': this model's inputs are 'input-0'",
            id="unknown-input",
        ),
        pytest.param(
            {**_v2(), "outputs": [{"name": "logits"}]},
            "unknown output 'logits': this model's outputs are 'predict', 'predict_proba'",
            id="unknown-output",
        ),
        pytest.param(
            {"instances": [ROW]},
            'missing \'inputs\': expected {"inputs": [{"name", "shape", "datatype", "data"}]}',
            id="v1-body-on-v2",
        ),
    ],
)
async def test_v2_bad_input_is_400_naming_it(
    iris_server: Served, body: dict[str, Any], error: str
) -> None:
    status, answer, _ = await iris_server.post("/v2/models/iris/infer", body)
    assert (status, answer) == (400, {"error": error})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            {"instances": [ROW, ROW[:3]]},
            "input 'input-0' data has 3 values at depth 1 but shape [2, 4] says 4",
            id="ragged",
        ),
        pytest.param(
            {"instances": [ROW[:3]]},
            "input 'input-0': expected shape [-1, 4], got [1, 3]",
            id="short-row",
        ),
        pytest.param(
            {"instances": []}, "'instances' is an empty batch: send at least one row", id="empty"
        ),
        pytest.param(
            {"rows": [ROW]},
            "missing 'instances': expected {\"instances\": [row, ...]}",
            id="missing",
        ),
        pytest.param(b"{not json", None, id="not-json"),
    ],
)
async def test_v1_bad_input_is_400_naming_it(
    iris_server: Served, body: Any, error: str | None
) -> None:
    status, answer, _ = await iris_server.post("/v1/models/iris:predict", body)
    assert status == 400
    if error is None:
        assert answer["error"].startswith("request body is not valid JSON")
    else:
        assert answer == {"error": error}


async def test_onnx_integer_input_refuses_floats(tmp_path: Path) -> None:
    from tests.test_modelserver_formats import _typed_graph

    _typed_graph(tmp_path / "typed.onnx")
    async with serving("typed", "onnx", tmp_path) as s:
        status, body, _ = await s.post(
            "/v2/models/typed/infer",
            {"inputs": [{"name": "count", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        )
        assert (status, body) == (
            400,
            {"error": "input 'count': expected datatype INT32, got FP32"},
        )
        inputs = [
            {"name": "flag", "datatype": "BOOL", "shape": [1], "data": [True]},
            {"name": "count", "datatype": "INT32", "shape": [1], "data": [1]},
        ]
        status, body, _ = await s.post("/v2/models/typed/infer", {"inputs": inputs})
        assert status == 400
        assert body["error"] == "missing input 'small': expected INT8 [-1, 2]"


async def test_model_dir_with_two_models_or_none_is_refused(tmp_path: Path) -> None:
    from modelserver.model import ModelError, model_file

    (tmp_path / "a.joblib").write_bytes(b"")
    (tmp_path / "b.pkl").write_bytes(b"")
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelError) as excinfo:
        model_file(tmp_path, "sklearn")
    assert str(excinfo.value) == (
        f"--model {tmp_path}: a sklearn model directory must hold exactly one model file "
        "(.joblib, .pkl, .pickle), found 2 (a.joblib, b.pkl)"
    )
    with pytest.raises(ModelError, match=r"found no$"):
        model_file(tmp_path, "onnx")
    (tmp_path / "b.pkl").unlink()
    assert model_file(tmp_path, "sklearn") == tmp_path / "a.joblib"


async def test_inference_answers_during_a_slow_prediction(tmp_path: Path, request: Any) -> None:
    # A prediction runs in a thread: while one waits, health checks still answer.
    predict_gate = f"{request.node.name}-predict"
    joblib.dump(GatedEstimator(predict_gate=predict_gate), tmp_path / "model.joblib")
    try:
        async with serving("gated", "sklearn", tmp_path, wait_ready=False) as s:
            gate(predict_gate).set()  # let the warm-up through
            await asyncio.wait_for(s.app[STATE].ready_event.wait(), 30)
            gate(predict_gate).clear()
            slow = asyncio.create_task(s.v1("gated", X[[100]].tolist()))
            assert (await s.get("/v2/health/ready"))[0] == 200
            assert not slow.done()
            gate(predict_gate).set()
            assert await slow == [1]
    finally:
        gate(predict_gate).set()


def test_predict_result_of_v1_is_the_first_output() -> None:
    from modelserver.tensors import v1_predictions

    assert v1_predictions(np.array([[1.0, 2.0]], dtype=np.float32)) == [[1.0, 2.0]]
    assert v1_predictions(np.array([b"a", b"b"], dtype=object)) == ["a", "b"]
