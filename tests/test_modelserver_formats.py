"""Each format, through its real library: a model trained and saved in the test's tmp dir, served by
the model server on loopback, answers V1 and V2 exactly as the library's own predict does for the
same inputs, and its V2 metadata is the model's own signature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.modelserver_support import ROWS, iris, script, serving, tensor

X, Y = iris()
BATCH = X[ROWS]


def _meta(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


# --- scikit-learn --------------------------------------------------------------------------------


def _sklearn_models() -> list[Any]:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression

    return [
        pytest.param(LogisticRegression(max_iter=1000), id="logistic-regression"),
        pytest.param(RandomForestClassifier(n_estimators=10, random_state=0), id="random-forest"),
        pytest.param(RandomForestRegressor(n_estimators=5, random_state=0), id="rf-regressor"),
    ]


@pytest.mark.parametrize("estimator", _sklearn_models())
async def test_sklearn_predicts_as_the_estimator_does(tmp_path: Path, estimator: Any) -> None:
    import joblib

    estimator.fit(X, Y)
    joblib.dump(estimator, tmp_path / "model.joblib")
    expected = estimator.predict(BATCH)
    has_proba = hasattr(estimator, "predict_proba")
    async with serving("iris", "sklearn", tmp_path / "model.joblib") as s:
        assert await s.v1("iris", BATCH.tolist()) == expected.tolist()
        outputs = await s.v2("iris", [tensor("input-0", BATCH, "FP64")])
        assert outputs["predict"]["data"] == expected.tolist()
        assert outputs["predict"]["shape"] == [len(ROWS)]
        if has_proba:
            proba = estimator.predict_proba(BATCH)
            assert outputs["predict_proba"]["data"] == proba.ravel().tolist()
            assert outputs["predict_proba"]["shape"] == [len(ROWS), 3]
            assert outputs["predict_proba"]["datatype"] == "FP64"
        else:
            assert set(outputs) == {"predict"}
        # Only the output asked for.
        only = await s.v2("iris", [tensor("input-0", BATCH, "FP32")], outputs=[{"name": "predict"}])
        assert set(only) == {"predict"}
        assert only["predict"]["data"] == estimator.predict(BATCH.astype(np.float32)).tolist()
        status, meta, _ = await s.get("/v2/models/iris")
    assert status == 200
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [_meta("input-0", "FP64", [-1, 4])]
    predict_type = "INT64" if has_proba else "FP64"
    expected_outputs = [_meta("predict", predict_type, [-1])]
    if has_proba:
        expected_outputs.append(_meta("predict_proba", "FP64", [-1, 3]))
    assert meta["outputs"] == expected_outputs


async def test_sklearn_string_classes_come_back_as_bytes(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    species = np.array(["setosa", "versicolor", "virginica"])[Y]
    model = LogisticRegression(max_iter=1000).fit(X, species)
    joblib.dump(model, tmp_path / "model.pkl")
    async with serving("iris", "sklearn", tmp_path) as s:  # a one-model directory
        assert await s.v1("iris", BATCH.tolist()) == model.predict(BATCH).tolist()
        outputs = await s.v2("iris", [tensor("input-0", BATCH, "FP64")])
    assert outputs["predict"]["datatype"] == "BYTES"
    assert outputs["predict"]["data"] == model.predict(BATCH).tolist()


# --- XGBoost -------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["model.json", "model.ubj"])
async def test_xgboost_booster_predicts_as_booster_predict(tmp_path: Path, filename: str) -> None:
    import xgboost

    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1}
    booster = xgboost.train(params, xgboost.DMatrix(X, label=Y), num_boost_round=8)
    booster.save_model(str(tmp_path / filename))
    expected = booster.predict(xgboost.DMatrix(BATCH))
    async with serving("iris-xgb", "xgboost", tmp_path / filename) as s:
        assert await s.v1("iris-xgb", BATCH.tolist()) == expected.tolist()
        outputs = await s.v2("iris-xgb", [tensor("input-0", BATCH.astype(np.float32), "FP32")])
        status, meta, _ = await s.get("/v2/models/iris-xgb")
    assert outputs["predict"] == {
        "name": "predict",
        "datatype": "FP32",
        "shape": [len(ROWS), 3],
        "data": expected.ravel().tolist(),
    }
    assert status == 200
    assert meta["platform"] == "xgboost"
    assert meta["inputs"] == [_meta("input-0", "FP32", [-1, 4])]
    assert meta["outputs"] == [_meta("predict", "FP32", [-1, 3])]


# --- LightGBM ------------------------------------------------------------------------------------


async def test_lightgbm_booster_predicts_as_booster_predict(tmp_path: Path) -> None:
    import lightgbm

    params = {
        "objective": "multiclass",
        "num_class": 3,
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "num_threads": 1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(X, label=Y), num_boost_round=10)
    booster.save_model(str(tmp_path / "model.txt"))
    expected = np.asarray(booster.predict(BATCH))
    async with serving("iris-lgb", "lightgbm", tmp_path / "model.txt") as s:
        assert await s.v1("iris-lgb", BATCH.tolist()) == expected.tolist()
        outputs = await s.v2("iris-lgb", [tensor("input-0", BATCH, "FP64")])
        status, meta, _ = await s.get("/v2/models/iris-lgb")
    assert outputs["predict"]["data"] == expected.ravel().tolist()
    assert outputs["predict"]["shape"] == [len(ROWS), 3]
    assert status == 200
    assert meta["platform"] == "lightgbm"
    assert meta["inputs"] == [_meta("input-0", "FP64", [-1, 4])]
    assert meta["outputs"] == [_meta("predict", "FP64", [-1, 3])]


# --- ONNX ----------------------------------------------------------------------------------------


async def test_onnx_from_skl2onnx_predicts_as_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000).fit(X, Y)
    onx = convert_sklearn(
        model,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"float_input": BATCH.astype(np.float32)})
    async with serving("iris-onnx", "onnx", path) as s:
        assert await s.v1("iris-onnx", BATCH.tolist()) == label.tolist()
        outputs = await s.v2("iris-onnx", [tensor("float_input", BATCH, "FP32")])
        status, meta, _ = await s.get("/v2/models/iris-onnx")
    assert outputs["label"]["data"] == label.tolist()
    assert outputs["probabilities"]["data"] == proba.ravel().tolist()
    assert outputs["probabilities"]["shape"] == [len(ROWS), 3]
    assert status == 200
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [_meta("float_input", "FP32", [-1, 4])]
    assert meta["outputs"] == [
        _meta("label", "INT64", [-1]),
        _meta("probabilities", "FP32", [-1, 3]),
    ]


def _typed_graph(path: Path) -> None:
    """An ONNX graph with one input of each of several datatypes, each passed through (the BOOL
    one negated), and two float inputs added: V2's datatypes end to end."""
    import onnx
    from onnx import TensorProto, helper

    kinds: list[tuple[str, int, list[str | int | None]]] = [
        ("flag", TensorProto.BOOL, ["N"]),
        ("small", TensorProto.INT8, ["N", 2]),
        ("count", TensorProto.INT32, ["N"]),
        ("big", TensorProto.UINT64, ["N"]),
        ("half", TensorProto.FLOAT16, ["N"]),
        ("text", TensorProto.STRING, ["N"]),
        ("a", TensorProto.FLOAT, ["N", 3]),
        ("b", TensorProto.FLOAT, ["N", 3]),
    ]
    nodes = [helper.make_node("Not", ["flag"], ["flag_out"])]
    for name in ("small", "count", "big", "half", "text"):
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    nodes.append(helper.make_node("Add", ["a", "b"], ["sum"]))
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, s) for n, t, s in kinds[:6]]
    outputs.append(helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(
        nodes,
        "typed",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in kinds],
        outputs,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


async def test_onnx_several_inputs_of_every_kind_of_datatype(tmp_path: Path) -> None:
    _typed_graph(tmp_path / "typed.onnx")
    a = np.array([[1.5, 2.0, -3.0], [0.25, 0.0, 8.0]], dtype=np.float32)
    b = np.array([[0.5, 1.0, 1.0], [0.25, 2.0, -8.0]], dtype=np.float32)
    inputs = [
        {"name": "flag", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "small", "datatype": "INT8", "shape": [2, 2], "data": [[-128, 127], [0, 1]]},
        {"name": "count", "datatype": "INT32", "shape": [2], "data": [2**31 - 1, -5]},
        {"name": "big", "datatype": "UINT64", "shape": [2], "data": [2**64 - 1, 0]},
        {"name": "half", "datatype": "FP16", "shape": [2], "data": [0.5, -65504.0]},
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["setosa", "ünïcode"]},
        tensor("a", a, "FP32"),
        tensor("b", b, "FP32"),
    ]
    async with serving("typed", "onnx", tmp_path) as s:
        outputs = await s.v2("typed", inputs)
        v1 = await s.v1(
            "typed",
            [
                {
                    "flag": True,
                    "small": [1, 2],
                    "count": 3,
                    "big": 4,
                    "half": 0.5,
                    "text": "x",
                    "a": [1, 2, 3],
                    "b": [1, 1, 1],
                }
            ],
        )
        status, meta, _ = await s.get("/v2/models/typed")
    assert outputs["flag_out"] == {
        "name": "flag_out",
        "datatype": "BOOL",
        "shape": [2],
        "data": [False, True],
    }
    assert outputs["small_out"]["data"] == [-128, 127, 0, 1]
    assert outputs["small_out"]["shape"] == [2, 2]
    assert outputs["count_out"]["data"] == [2**31 - 1, -5]
    assert outputs["big_out"] == {
        "name": "big_out",
        "datatype": "UINT64",
        "shape": [2],
        "data": [2**64 - 1, 0],
    }
    assert outputs["half_out"]["datatype"] == "FP16"
    assert outputs["half_out"]["data"] == [0.5, -65504.0]
    assert outputs["text_out"]["datatype"] == "BYTES"
    assert outputs["text_out"]["data"] == ["setosa", "ünïcode"]
    assert outputs["sum"]["data"] == (a + b).ravel().tolist()
    assert v1 == [False]  # V1 answers with the first output, flag_out
    assert status == 200
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("flag", "BOOL", [-1]),
        ("small", "INT8", [-1, 2]),
        ("count", "INT32", [-1]),
        ("big", "UINT64", [-1]),
        ("half", "FP16", [-1]),
        ("text", "BYTES", [-1]),
        ("a", "FP32", [-1, 3]),
        ("b", "FP32", [-1, 3]),
    ]


# --- PyTorch -------------------------------------------------------------------------------------


def _torch_module() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Softmax(dim=1)
    ).eval()


async def test_torchscript_predicts_as_the_module(tmp_path: Path) -> None:
    import torch

    module = _torch_module()
    scripted = script(module)
    scripted.save(str(tmp_path / "model.pt"))
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(BATCH.astype(np.float32))).numpy()
    async with serving(
        "iris-ts", "pytorch", tmp_path / "model.pt", device="cpu", example_input_shape=(-1, 4)
    ) as s:
        assert await s.v1("iris-ts", BATCH.tolist()) == expected.tolist()
        outputs = await s.v2("iris-ts", [tensor("input", BATCH, "FP32")])
        status, meta, _ = await s.get("/v2/models/iris-ts")
    assert outputs["output-0"]["data"] == expected.ravel().tolist()
    assert status == 200
    assert meta["platform"] == "pytorch_torchscript"
    # The name is forward's own argument; the shape is --example-input-shape.
    assert meta["inputs"] == [_meta("input", "FP32", [-1, 4])]
    assert meta["outputs"] == [_meta("output-0", "FP32", [-1, 3])]


async def test_torchscript_signature_sidecar_names_several_inputs(tmp_path: Path) -> None:
    import torch

    class Scale(torch.nn.Module):
        def forward(
            self, x: torch.Tensor, factor: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return x * factor.unsqueeze(1), factor.sum().reshape(1)

    script(Scale()).save(str(tmp_path / "model.pt"))
    signature = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "factor", "datatype": "INT64", "shape": [-1]},
        ]
    }
    (tmp_path / "signature.json").write_text(json.dumps(signature))
    async with serving("scale", "pytorch", tmp_path, device="cpu") as s:
        outputs = await s.v2(
            "scale",
            [
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
                {"name": "factor", "datatype": "INT64", "shape": [2], "data": [10, -1]},
            ],
        )
        status, meta, _ = await s.get("/v2/models/scale")
    assert status == 200
    assert outputs["output-0"]["data"] == [10.0, 20.0, -3.0, -4.0]
    assert outputs["output-1"] == {
        "name": "output-1",
        "datatype": "INT64",
        "shape": [1],
        "data": [9],
    }
    assert meta["inputs"] == signature["inputs"]


async def test_torch_export_program_predicts_as_its_module(tmp_path: Path) -> None:
    import torch

    module = _torch_module()
    example = torch.from_numpy(X[:2].astype(np.float32))
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (example,), dynamic_shapes={"input": {0: batch}})
    torch.export.save(program, str(tmp_path / "model.pt2"))
    with torch.inference_mode():
        expected = program.module()(torch.from_numpy(BATCH.astype(np.float32))).numpy()
    async with serving("iris-pt2", "pytorch", tmp_path / "model.pt2", device="cpu") as s:
        assert await s.v1("iris-pt2", BATCH.tolist()) == expected.tolist()
        outputs = await s.v2("iris-pt2", [tensor("input", BATCH, "FP32")])
        status, meta, _ = await s.get("/v2/models/iris-pt2")
    assert outputs["output-0"]["data"] == expected.ravel().tolist()
    assert status == 200
    assert meta["platform"] == "pytorch_export"
    assert meta["inputs"] == [_meta("input", "FP32", [-1, 4])]
    assert meta["outputs"] == [_meta("output-0", "FP32", [-1, 3])]
