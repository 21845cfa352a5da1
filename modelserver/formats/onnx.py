"""ONNX models (``.onnx``) through onnxruntime's ``InferenceSession``.

Inputs and outputs, with their names, datatypes and shapes, are the session's own (a symbolic or
unknown dimension is -1). A float input also takes the other float and the integer datatypes
(converted); an integer, BOOL or BYTES input takes only its own. Outputs that
are not tensors (a scikit-learn classifier converted with ZipMap gives a sequence of maps) are not
served: convert with ``options={id(model): {"zipmap": False}}`` to get a probability tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnxruntime

from modelserver.model import LoadOptions, ModelError, as_numpy
from modelserver.tensors import Array, TensorSpec, accepted

logger = logging.getLogger("zeroserve.modelserver.formats.onnx")

# onnxruntime's type strings → V2 datatypes.
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxModel:
    platform = "onnxruntime_onnx"

    def __init__(self, session: onnxruntime.InferenceSession, path: Path) -> None:
        self.session = session
        self.device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        inputs: list[TensorSpec] = []
        for arg in session.get_inputs():
            datatype = DATATYPES.get(arg.type)
            if datatype is None:
                raise ModelError(
                    f"--model {path}: input {arg.name!r} has type {arg.type}, not a tensor"
                )
            inputs.append(
                TensorSpec(arg.name, datatype, _shape(arg.shape), accepts=accepted(datatype))
            )
        outputs: list[TensorSpec] = []
        for arg in session.get_outputs():
            datatype = DATATYPES.get(arg.type)
            if datatype is None:
                logger.warning(
                    "output is not a tensor: not served",
                    extra={"output": arg.name, "type": arg.type, "path": str(path)},
                )
                continue
            outputs.append(TensorSpec(arg.name, datatype, _shape(arg.shape)))
        if not outputs:
            raise ModelError(f"--model {path}: no output is a tensor")
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)

    def predict(self, inputs: Mapping[str, Array], wanted: frozenset[str]) -> dict[str, Array]:
        names = [o.name for o in self.outputs if not wanted or o.name in wanted]
        # BYTES arrive as object arrays of str, which onnxruntime takes for tensor(string).
        results = self.session.run(names, dict(inputs))
        return {name: as_numpy(r) for name, r in zip(names, results, strict=True)}


def _shape(dims: list[Any]) -> tuple[int, ...]:
    # None or a symbolic name ("N", "batch_size") is a dynamic dimension.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


def load(path: Path, options: LoadOptions) -> OnnxModel:
    available = onnxruntime.get_available_providers()
    if options.device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"--device {options.device}: onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif options.device == "auto" and "CUDAExecutionProvider" in available:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), providers=providers)
    return OnnxModel(session, path)
