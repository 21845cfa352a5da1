"""The V2 tensor and V1 instance codec alone: every datatype decodes to its numpy dtype within its
range, shapes and nesting are checked, outputs encode back to V2 JSON."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelserver.tensors import (
    NUMERIC_DATATYPES,
    RequestError,
    TensorSpec,
    accepted,
    decode_tensor,
    encode_tensor,
    parse_v1_instances,
)


def _spec(datatype: str, shape: tuple[int, ...] = (-1,)) -> TensorSpec:
    return TensorSpec("t", datatype, shape, accepts=accepted(datatype))


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        pytest.param("BOOL", [True, False], np.bool_, id="bool"),
        pytest.param("INT8", [-128, 127], np.int8, id="int8-range"),
        pytest.param("INT16", [-(2**15), 2**15 - 1], np.int16, id="int16-range"),
        pytest.param("INT32", [-(2**31), 2**31 - 1], np.int32, id="int32-range"),
        pytest.param("INT64", [-(2**63), 2**63 - 1], np.int64, id="int64-range"),
        pytest.param("UINT8", [0, 255], np.uint8, id="uint8-range"),
        pytest.param("UINT16", [0, 2**16 - 1], np.uint16, id="uint16-range"),
        pytest.param("UINT32", [0, 2**32 - 1], np.uint32, id="uint32-range"),
        pytest.param("UINT64", [0, 2**64 - 1], np.uint64, id="uint64-range"),
        pytest.param("FP16", [0.5, -65504.0], np.float16, id="fp16"),
        pytest.param("FP32", [0.1, 3], np.float32, id="fp32-int-literal"),
        pytest.param("FP64", [0.1, -1e300], np.float64, id="fp64"),
        pytest.param("BYTES", ["a", ""], object, id="bytes"),
    ],
)
def test_each_datatype_decodes_to_its_dtype(datatype: str, data: list[Any], dtype: Any) -> None:
    array = decode_tensor({"datatype": datatype, "shape": [2], "data": data}, _spec(datatype))
    assert array.dtype == np.dtype(dtype)
    assert array.tolist() == np.array(data, dtype=dtype).tolist()
    # Back to JSON: the same datatype and shape, and values exactly as the dtype holds them
    # (FP32 0.1 is 0.10000000149011612).
    assert encode_tensor("t", array) == {
        "name": "t",
        "datatype": datatype,
        "shape": [2],
        "data": np.array(data, dtype=dtype).tolist(),
    }


@pytest.mark.parametrize(
    ("datatype", "value", "error"),
    [
        pytest.param(
            "INT8", 128, "input 't' data[0] = 128 is out of range for INT8", id="int8-over"
        ),
        pytest.param(
            "UINT8", -1, "input 't' data[0] = -1 is out of range for UINT8", id="uint-neg"
        ),
        pytest.param(
            "UINT64",
            2**64,
            "input 't' data[0] = 18446744073709551616 is out of range for UINT64",
            id="uint64-over",
        ),
        pytest.param(
            "FP16", 70000.0, "input 't' data[0] = 70000.0 is out of range for FP16", id="fp16-over"
        ),
        pytest.param(
            "FP32", 1e39, "input 't' data[0] = 1e+39 is out of range for FP32", id="fp32-over"
        ),
        pytest.param(
            "INT32",
            True,
            "input 't' data[0] = true is not an integer, as INT32 requires",
            id="bool-in-int",
        ),
        pytest.param(
            "FP64",
            True,
            "input 't' data[0] = true is not a number, as FP64 requires",
            id="bool-in-float",
        ),
        pytest.param(
            "BOOL", 1, "input 't' data[0] = 1 is not a boolean, as BOOL requires", id="int-in-bool"
        ),
        pytest.param(
            "BYTES",
            1,
            "input 't' data[0] = 1 is not a string, as BYTES requires",
            id="int-in-bytes",
        ),
        pytest.param(
            "FP64", None, "input 't' data[0] = null is not a number, as FP64 requires", id="null"
        ),
    ],
)
def test_values_out_of_kind_or_range_are_refused(datatype: str, value: Any, error: str) -> None:
    with pytest.raises(RequestError) as excinfo:
        decode_tensor({"datatype": datatype, "shape": [1], "data": [value]}, _spec(datatype))
    assert str(excinfo.value) == error


def test_nested_data_must_follow_the_shape() -> None:
    spec = _spec("INT64", (-1, 2))
    nested = decode_tensor({"datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}, spec)
    flat = decode_tensor({"datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}, spec)
    assert nested.tolist() == flat.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(
        RequestError, match=r"data has 3 values at depth 1 but shape \[2, 2\] says 2"
    ):
        decode_tensor({"datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4, 5]]}, spec)
    with pytest.raises(RequestError, match="nested deeper than its shape"):
        decode_tensor({"datatype": "INT64", "shape": [1, 2], "data": [[[1], [2]]]}, spec)
    with pytest.raises(RequestError, match="mixes lists and values"):
        decode_tensor({"datatype": "INT64", "shape": [2, 2], "data": [1, [2, 3], 4]}, spec)


def test_a_float_input_takes_any_number_and_converts() -> None:
    spec = _spec("FP32", (-1, 2))
    assert spec.accepts == NUMERIC_DATATYPES
    array = decode_tensor({"datatype": "INT64", "shape": [1, 2], "data": [1, 2]}, spec)
    assert array.dtype == np.float32
    assert _spec("INT64").accepts == frozenset()


def test_v1_rows_of_several_inputs_are_stacked_per_input() -> None:
    specs = [TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT64", (-1,))]
    arrays = parse_v1_instances(
        {"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}]}, specs
    )
    assert arrays["a"].tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert arrays["b"].dtype == np.int64
    assert arrays["b"].tolist() == [3, 6]
    with pytest.raises(RequestError, match="instance 1 is missing input 'b'"):
        parse_v1_instances({"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5]}]}, specs)
    with pytest.raises(RequestError, match="instance 0 has unknown input 'c'"):
        parse_v1_instances({"instances": [{"a": [1, 2], "b": 3, "c": 1}]}, specs)
    with pytest.raises(RequestError, match="instance 0 must be an object keyed by input name"):
        parse_v1_instances({"instances": [[1, 2]]}, specs)


def test_encode_reports_shape_and_datatype() -> None:
    out = encode_tensor("p", np.array([[1, 2, 3]], dtype=np.uint16))
    assert out == {"name": "p", "datatype": "UINT16", "shape": [1, 3], "data": [1, 2, 3]}
    strings = encode_tensor("s", np.array(["setosa", "virginica"]))
    assert strings == {
        "name": "s",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["setosa", "virginica"],
    }
