"""Parsing KServe V1 and Open Inference Protocol V2 request bodies into a feature matrix.

Pure: no HTTP. Every refusal is an :class:`InferenceRequestError` whose message names what was
wrong (the server answers it as 400 ``{"error": message}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The JSON body and its errors are the built-in model server's (modelserver.tensors); what is
# iris-specific here is the feature matrix a request must carry.
from modelserver.tensors import RequestError as InferenceRequestError
from modelserver.tensors import json_type as _json_type
from modelserver.tensors import parse_json_object

__all__ = [
    "InferenceRequestError",
    "V2Request",
    "parse_json_object",
    "parse_v1_instances",
    "parse_v2_request",
]

# The V2 tensor datatypes a numeric feature matrix may arrive in. BOOL, BYTES and the 16-bit
# float are refused: BYTES is not numbers, and the others are not what a client of this model sends.
INTEGER_DATATYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
FLOAT_DATATYPES = frozenset({"FP32", "FP64"})
SUPPORTED_DATATYPES = FLOAT_DATATYPES | INTEGER_DATATYPES
KNOWN_DATATYPES = SUPPORTED_DATATYPES | {"BOOL", "BYTES", "FP16", "BF16"}


@dataclass(frozen=True, slots=True)
class V2Request:
    """A parsed V2 infer request: the features (N, n_features), the request id if one was given,
    and the names of the requested outputs (empty: the server's default)."""

    features: NDArray[np.float64]
    request_id: str | None
    outputs: tuple[str, ...]


def parse_v1_instances(body: dict[str, Any], n_features: int) -> NDArray[np.float64]:
    """``{"instances": [[f1, ..., fn], ...]}`` → an (N, n_features) matrix."""
    if "instances" not in body:
        raise InferenceRequestError(
            "missing 'instances': expected {\"instances\": [["
            + _feature_hint(n_features)
            + "], ...]}"
        )
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InferenceRequestError(
            f"'instances' must be a list of rows, got {_json_type(instances)}"
        )
    if not instances:
        raise InferenceRequestError("'instances' is an empty batch: send at least one row")
    rows: list[list[float]] = []
    for i, row in enumerate(instances):
        where = f"instance {i}"
        if not isinstance(row, list):
            raise InferenceRequestError(
                f"{where} must be a list of {n_features} numbers, got {_json_type(row)}"
            )
        if len(row) != n_features:
            raise InferenceRequestError(f"{where} has {len(row)} features, expected {n_features}")
        rows.append([_number(v, f"{where} feature {j}") for j, v in enumerate(row)])
    return np.array(rows, dtype=np.float64)


def parse_v2_request(body: dict[str, Any], n_features: int) -> V2Request:
    """``{"inputs": [{"name", "shape": [N, n], "datatype", "data"}], "id"?, "outputs"?}``.

    ``data`` may be flat (row-major, N*n values) or nested to match ``shape``.
    """
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferenceRequestError(f"'id' must be a string, got {_json_type(request_id)}")
    if "inputs" not in body:
        raise InferenceRequestError(
            'missing \'inputs\': expected {"inputs": [{"name", "shape", "datatype", "data"}]}'
        )
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise InferenceRequestError("'inputs' must be a non-empty list of tensors")
    if len(inputs) != 1:
        raise InferenceRequestError(f"expected exactly 1 input tensor, got {len(inputs)}")
    features = _parse_v2_tensor(inputs[0], n_features)
    return V2Request(features, request_id, _parse_requested_outputs(body.get("outputs")))


def _parse_v2_tensor(tensor: Any, n_features: int) -> NDArray[np.float64]:
    if not isinstance(tensor, dict):
        raise InferenceRequestError(f"input 0 must be a JSON object, got {_json_type(tensor)}")
    name = tensor.get("name", "input-0")
    if not isinstance(name, str):
        raise InferenceRequestError(f"input 0 'name' must be a string, got {_json_type(name)}")
    where = f"input '{name}'"
    for field in ("shape", "datatype", "data"):
        if field not in tensor:
            raise InferenceRequestError(f"{where} is missing '{field}'")

    datatype = tensor["datatype"]
    if not isinstance(datatype, str) or datatype not in SUPPORTED_DATATYPES:
        kind = "unknown" if datatype not in KNOWN_DATATYPES else "unsupported"
        raise InferenceRequestError(
            f"{where} has {kind} datatype {json.dumps(datatype)}: "
            f"supported are {', '.join(sorted(SUPPORTED_DATATYPES))}"
        )

    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InferenceRequestError(
            f"{where} shape must be a list of non-negative integers, got {json.dumps(shape)}"
        )
    if len(shape) != 2 or shape[1] != n_features:
        raise InferenceRequestError(
            f"{where} has shape {shape}: expected [N, {n_features}] ({n_features} features per row)"
        )
    if shape[0] == 0:
        raise InferenceRequestError(f"{where} has shape {shape}: an empty batch, send N ≥ 1 rows")

    data = tensor["data"]
    if not isinstance(data, list):
        raise InferenceRequestError(f"{where} data must be a list, got {_json_type(data)}")
    if data and isinstance(data[0], list):
        _check_nesting(data, shape, where)
    flat: list[float] = []
    _flatten(data, flat, where, integral=datatype in INTEGER_DATATYPES)
    expected = shape[0] * shape[1]
    if len(flat) != expected:
        raise InferenceRequestError(
            f"{where} data has {len(flat)} values but shape {shape} needs {expected}"
        )
    return np.array(flat, dtype=np.float64).reshape(shape[0], shape[1])


def _parse_requested_outputs(outputs: Any) -> tuple[str, ...]:
    if outputs is None:
        return ()
    if not isinstance(outputs, list):
        raise InferenceRequestError(f"'outputs' must be a list, got {_json_type(outputs)}")
    names: list[str] = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InferenceRequestError(f"output {i} must be an object with a string 'name'")
        names.append(out["name"])
    return tuple(names)


def _check_nesting(data: list[Any], shape: Sequence[int], where: str) -> None:
    """Nested data must have exactly the lengths of ``shape`` at every level."""
    if len(data) != shape[0]:
        raise InferenceRequestError(
            f"{where} data has {len(data)} rows but shape {list(shape)} says {shape[0]}"
        )
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != shape[1]:
            got = f"{len(row)} values" if isinstance(row, list) else _json_type(row)
            raise InferenceRequestError(
                f"{where} data row {i} has {got} but shape {list(shape)} says {shape[1]}"
            )


def _flatten(data: list[Any], out: list[float], where: str, *, integral: bool) -> None:
    for v in data:
        if isinstance(v, list):
            _flatten(v, out, where, integral=integral)
            continue
        x = _number(v, f"{where} data[{len(out)}]")
        if integral and not x.is_integer():
            raise InferenceRequestError(
                f"{where} data[{len(out)}] = {v} is not an integer, as its datatype requires"
            )
        out.append(x)


def _number(v: Any, where: str) -> float:
    # bool is an int in Python but not a number in JSON.
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InferenceRequestError(f"{where} is not a number: {json.dumps(v)}")
    try:
        x = float(v)
    except OverflowError:  # an integer literal beyond float's range
        x = math.inf
    if not math.isfinite(x):
        raise InferenceRequestError(f"{where} is not a finite number")
    return x


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _feature_hint(n_features: int) -> str:
    return ", ".join(f"f{i}" for i in range(1, n_features + 1))
