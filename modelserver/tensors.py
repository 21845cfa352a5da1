"""Open Inference Protocol V2 tensors in JSON, and KServe V1 instances, to and from numpy.

Pure: no HTTP, no model library. Every refusal is a :class:`RequestError` whose message names the
input and says what was expected and what was received (the server answers it as 400
``{"error": message}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# V2's datatypes (Open Inference Protocol, "Tensor Data Types") and the numpy dtype each decodes
# to. BYTES elements are JSON strings (numpy object arrays of str). BF16 has no numpy dtype.
NUMPY_DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = frozenset(NUMPY_DTYPES)
KNOWN_DATATYPES = DATATYPES | {"BF16"}
INTEGER_DATATYPES = frozenset(d for d in DATATYPES if d.startswith(("INT", "UINT")))
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
NUMERIC_DATATYPES = INTEGER_DATATYPES | FLOAT_DATATYPES

Array = NDArray[Any]


class RequestError(ValueError):
    """The request is malformed or does not fit the model; the message says what and where."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model, as V2 model metadata reports it.

    ``shape`` uses -1 for a dimension of any size (the batch, a dynamic axis). ``accepts`` lists
    the other datatypes a request may send for this input, converted to ``datatype`` before the
    model sees them (a tree model takes FP32 as well as FP64); empty means ``datatype`` only.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: frozenset[str] = frozenset()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"


def accepted(datatype: str) -> frozenset[str]:
    """What a model input declared as ``datatype`` also takes, converted: a float input takes any
    number (JSON does not tell 0.5 as FP32 from 0.5 as FP64); others only themselves."""
    return NUMERIC_DATATYPES if datatype in FLOAT_DATATYPES else frozenset()


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The V2 datatype of a numpy dtype; str/bytes/object are BYTES."""
    if dtype.kind in "USO":
        return "BYTES"
    for name, candidate in NUMPY_DTYPES.items():
        if name != "BYTES" and candidate == dtype:
            return name
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN and Infinity are refused like any other invalid JSON."""
    if not body.strip():
        raise RequestError("request body is empty: expected a JSON object")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8 text: expected a JSON object") from None
    except ValueError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError(f"request body must be a JSON object, got {json_type(value)}")
    return value


# --- V2 -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed V2 infer request: one array per model input, the request id if one was given, and
    the requested output names (empty: all of them)."""

    inputs: dict[str, Array]
    request_id: str | None
    outputs: tuple[str, ...]


def parse_infer_request(
    body: Mapping[str, Any], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> InferRequest:
    """``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}, ...], "outputs"?: [{"name"}]}``
    checked against the model's ``inputs`` and ``outputs``."""
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' must be a string, got {json_type(request_id)}")
    if "inputs" not in body:
        raise RequestError(
            'missing \'inputs\': expected {"inputs": [{"name", "shape", "datatype", "data"}]}'
        )
    tensors = body["inputs"]
    if not isinstance(tensors, list) or not tensors:
        raise RequestError("'inputs' must be a non-empty list of tensors")
    by_name = {spec.name: spec for spec in inputs}
    arrays: dict[str, Array] = {}
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise RequestError(f"input {i} must be a JSON object, got {json_type(tensor)}")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise RequestError(f"input {i} 'name' must be a string, got {json_type(name)}")
        spec = by_name.get(name)
        if spec is None:
            raise RequestError(f"unknown input {name!r}: this model's inputs are {_names(inputs)}")
        if name in arrays:
            raise RequestError(f"input {name!r} is given twice")
        arrays[name] = decode_tensor(tensor, spec)
    for spec in inputs:
        if spec.name not in arrays:
            raise RequestError(f"missing input {spec.name!r}: expected {spec.describe()}")
    wanted = _requested_outputs(body.get("outputs"))
    known = {spec.name for spec in outputs}
    for name in wanted:
        if name not in known:
            raise RequestError(
                f"unknown output {name!r}: this model's outputs are {_names(outputs)}"
            )
    return InferRequest(arrays, request_id, wanted)


def decode_tensor(tensor: Mapping[str, Any], spec: TensorSpec) -> Array:
    """One V2 JSON tensor as an array of ``spec``'s dtype, after checking its datatype, its shape
    against ``spec.shape`` and that ``data`` (flat row-major, or nested like ``shape``) fits."""
    where = f"input {spec.name!r}"
    for field in ("shape", "datatype", "data"):
        if field not in tensor:
            raise RequestError(f"{where} is missing '{field}'")
    datatype = tensor["datatype"]
    if not isinstance(datatype, str) or datatype not in KNOWN_DATATYPES:
        raise RequestError(
            f"{where} has unknown datatype {json.dumps(datatype)}: "
            f"expected {_accepted(spec)} (V2 datatypes are {', '.join(sorted(KNOWN_DATATYPES))})"
        )
    if datatype != spec.datatype and datatype not in spec.accepts:
        raise RequestError(f"{where}: expected datatype {_accepted(spec)}, got {datatype}")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise RequestError(
            f"{where} shape must be a list of non-negative integers, got {json.dumps(shape)}"
        )
    check_shape(where, spec.shape, shape)
    data = tensor["data"]
    if not isinstance(data, list):
        raise RequestError(f"{where} data must be a list, got {json_type(data)}")
    flat = _flatten(data, shape, where)
    expected = math.prod(shape)
    if len(flat) != expected:
        raise RequestError(
            f"{where} data has {len(flat)} values but shape {shape} needs {expected}"
        )
    values = _values(flat, datatype, where)
    target = NUMPY_DTYPES[spec.datatype]
    return values.astype(target, copy=False).reshape(shape)


def check_shape(where: str, expected: Sequence[int], got: Sequence[int]) -> None:
    """``got`` must have ``expected``'s rank and its fixed dimensions (-1 matches any size), and
    no empty batch."""
    fits = len(got) == len(expected) and all(
        e in (-1, g) for e, g in zip(expected, got, strict=True)
    )
    if not fits:
        raise RequestError(f"{where}: expected shape {list(expected)}, got {list(got)}")
    if got and got[0] == 0:
        raise RequestError(f"{where} has shape {list(got)}: an empty batch, send at least one row")


def encode_tensor(name: str, array: Array) -> dict[str, Any]:
    """An output array as a V2 JSON tensor (flat row-major data)."""
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        data: list[Any] = [_text(v) for v in array.ravel().tolist()]
    else:
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _requested_outputs(outputs: Any) -> tuple[str, ...]:
    if outputs is None:
        return ()
    if not isinstance(outputs, list):
        raise RequestError(f"'outputs' must be a list, got {json_type(outputs)}")
    names: list[str] = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise RequestError(f"output {i} must be an object with a string 'name'")
        names.append(out["name"])
    return tuple(names)


# --- V1 -----------------------------------------------------------------------------------------


def parse_v1_instances(body: Mapping[str, Any], inputs: Sequence[TensorSpec]) -> dict[str, Array]:
    """``{"instances": [...]}``: one row per instance, stacked along the batch axis. A model with
    one input takes each instance as that input's row (``[5.1, 3.5, 1.4, 0.2]``); a model with
    several takes objects keyed by input name (``{"a": [...], "b": [...]}``). The values must fit
    each input's shape and datatype like a V2 tensor's."""
    if "instances" not in body:
        raise RequestError("missing 'instances': expected {\"instances\": [row, ...]}")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise RequestError(f"'instances' must be a list of rows, got {json_type(instances)}")
    if not instances:
        raise RequestError("'instances' is an empty batch: send at least one row")
    if len(inputs) == 1:
        return {inputs[0].name: _stack(instances, inputs[0], "instances")}
    columns: dict[str, list[Any]] = {spec.name: [] for spec in inputs}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RequestError(
                f"instance {i} must be an object keyed by input name ({_names(inputs)}), "
                f"got {json_type(instance)}"
            )
        for name in instance:
            if name not in columns:
                raise RequestError(
                    f"instance {i} has unknown input {name!r}: this model's inputs are "
                    f"{_names(inputs)}"
                )
        for spec in inputs:
            if spec.name not in instance:
                raise RequestError(f"instance {i} is missing input {spec.name!r}")
            columns[spec.name].append(instance[spec.name])
    return {spec.name: _stack(columns[spec.name], spec, "instances") for spec in inputs}


def v1_predictions(array: Array) -> list[Any]:
    """An output array as V1 ``predictions``: one entry per row."""
    if datatype_of(array.dtype) == "BYTES":
        return [_nested_text(row) for row in array.tolist()]
    out: list[Any] = array.tolist()
    return out


def _stack(rows: list[Any], spec: TensorSpec, where: str) -> Array:
    # A V1 batch is a V2 tensor whose shape is read off the nesting and whose datatype is the
    # input's own: the same checks, the same messages.
    shape = [len(rows)]
    probe: Any = rows
    while len(shape) < len(spec.shape) and isinstance(probe, list) and probe:
        probe = probe[0]
        if not isinstance(probe, list):
            break
        shape.append(len(probe))
    tensor = {"datatype": spec.datatype, "shape": shape, "data": rows}
    return decode_tensor(tensor, spec)


# --- values -------------------------------------------------------------------------------------


def _flatten(data: list[Any], shape: Sequence[int], where: str) -> list[Any]:
    """Flat data as it is; nested data must have exactly the lengths of ``shape`` at every level."""
    if not data or not isinstance(data[0], list):
        for v in data:
            if isinstance(v, list):
                raise RequestError(f"{where} data mixes lists and values")
        return data
    out: list[Any] = []
    _walk(data, shape, 0, where, out)
    return out


def _walk(data: Any, shape: Sequence[int], depth: int, where: str, out: list[Any]) -> None:
    if depth == len(shape):
        if isinstance(data, list):
            raise RequestError(
                f"{where} data is nested deeper than its shape {list(shape)} ({len(shape)} levels)"
            )
        out.append(data)
        return
    if not isinstance(data, list) or len(data) != shape[depth]:
        got = f"{len(data)} values" if isinstance(data, list) else json_type(data)
        raise RequestError(
            f"{where} data has {got} at depth {depth} but shape {list(shape)} says {shape[depth]}"
        )
    for item in data:
        _walk(item, shape, depth + 1, where, out)


def _values(flat: list[Any], datatype: str, where: str) -> Array:
    """The flat values as an array of ``datatype``'s dtype; each value must be of its JSON kind."""
    if datatype == "BYTES":
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise RequestError(
                    f"{where} data[{i}] = {_show(v)} is not a string, as BYTES requires"
                )
        return np.array(flat, dtype=object)
    if datatype == "BOOL":
        for i, v in enumerate(flat):
            if not isinstance(v, bool):
                raise RequestError(
                    f"{where} data[{i}] = {_show(v)} is not a boolean, as BOOL requires"
                )
        return np.array(flat, dtype=np.bool_)
    if datatype == "BF16":
        raise RequestError(f"{where}: datatype BF16 is not supported (numpy has no bfloat16)")
    dtype = NUMPY_DTYPES[datatype]
    if datatype in INTEGER_DATATYPES:
        info = np.iinfo(dtype)
        for i, v in enumerate(flat):
            if type(v) is not int:  # bool is an int in Python but not a number in JSON
                raise RequestError(
                    f"{where} data[{i}] = {_show(v)} is not an integer, as {datatype} requires"
                )
            if not info.min <= v <= info.max:
                raise RequestError(f"{where} data[{i}] = {v} is out of range for {datatype}")
        return np.array(flat, dtype=dtype)
    for i, v in enumerate(flat):
        if type(v) is not float and type(v) is not int:
            raise RequestError(
                f"{where} data[{i}] = {_show(v)} is not a number, as {datatype} requires"
            )
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer literal beyond float64's range
        wide = np.array([float("inf")])
    with np.errstate(over="ignore"):
        values = wide.astype(dtype)
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0]) if len(values) == len(flat) else 0
        raise RequestError(f"{where} data[{i}] = {_show(flat[i])} is out of range for {datatype}")
    return values


def _accepted(spec: TensorSpec) -> str:
    others = sorted(spec.accepts - {spec.datatype})
    return spec.datatype + (f" (or {', '.join(others)})" if others else "")


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(s.name) for s in specs)


def _text(v: Any) -> str:
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


def _nested_text(v: Any) -> Any:
    return [_nested_text(x) for x in v] if isinstance(v, list) else _text(v)


def _show(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def json_type(v: Any) -> str:
    """How a JSON value reads in an error message: ``a string``, ``a list``, ``null``…"""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "an object"
