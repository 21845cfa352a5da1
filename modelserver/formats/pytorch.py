"""PyTorch models: ``torch.export`` programs (``.pt2``, ``torch.export.load``) and TorchScript
modules (``.pt``, ``.pth``, ``.ts``, ``torch.jit.load``), on ``cuda`` when torch sees a GPU, else
on the CPU (``--device`` forces one).

An exported program records its inputs and outputs (names, dtypes, shapes; a dimension exported
as dynamic is -1). A TorchScript file records only its inputs' names, so its shapes come from
``--example-input-shape=-1,4`` (one FP32 input; the ``=`` keeps the leading minus from reading
as a flag) or from a ``signature.json`` beside the model file:
``{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}``. Outputs are
``output-0``, ``output-1``… (a tensor, or a tuple/list of them), or a returned dict's keys.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelserver.model import LoadOptions, ModelError
from modelserver.tensors import Array, TensorSpec, accepted

logger = logging.getLogger("zeroserve.modelserver.formats.pytorch")

SIGNATURE_FILE = "signature.json"

DATATYPES: Mapping[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.uint8: "UINT8",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}


class TorchModel:
    def __init__(
        self,
        module: Any,
        *,
        platform: str,
        device: torch.device,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...] = (),
        preloaded: bool = False,
    ) -> None:
        self.module = module
        self.preloaded = preloaded
        """True: taken from the parked process's registry (:mod:`modelserver.preload`)."""
        self.platform = platform
        self.device = device
        self.inputs = inputs
        self.outputs = outputs

    def predict(self, inputs: Mapping[str, Array], wanted: frozenset[str]) -> dict[str, Array]:
        args = [
            torch.from_numpy(np.ascontiguousarray(inputs[s.name])).to(self.device)
            for s in self.inputs
        ]
        with torch.inference_mode():
            result = self.module(*args)
        out = _named(result)
        return {k: v for k, v in out.items() if not wanted or k in wanted}


def _named(result: Any) -> dict[str, Array]:
    if isinstance(result, torch.Tensor):
        return {"output-0": _numpy(result)}
    if isinstance(result, tuple | list):
        return {f"output-{i}": _numpy(t) for i, t in enumerate(result)}
    if isinstance(result, dict):
        return {str(k): _numpy(t) for k, t in result.items()}
    raise TypeError(f"the model returned {type(result).__name__}, not tensors")


def _numpy(t: Any) -> Array:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"the model returned {type(t).__name__}, not a tensor")
    return t.detach().cpu().numpy()


def pick_device(requested: str) -> torch.device:
    """``auto``: cuda when torch sees a GPU, else cpu; ``cuda``/``cuda:N`` must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {requested}: torch sees no CUDA device")
    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise ModelError(f"--device {requested}: {exc}") from None


def load(path: Path, options: LoadOptions) -> TorchModel:
    device = pick_device(options.device)
    if path.suffix == ".pt2":
        return _load_exported(path, device)
    return _load_torchscript(path, device, options)


def load_on_cpu(path: Path) -> TorchModel:
    """A ``.pt2`` program's module on the CPU, for a parked process to keep
    (:func:`modelserver.loader.load_model`): it only loads, runs no tensor operation."""
    return _load_exported(path, torch.device("cpu"))


def from_preloaded(model: TorchModel, options: LoadOptions) -> TorchModel:
    """A model a parked process loaded onto the CPU, on ``options.device`` (as is on the CPU)."""
    device = pick_device(options.device)
    module = model.module if device.type == "cpu" else model.module.to(device)
    return TorchModel(
        module,
        platform=model.platform,
        device=device,
        inputs=model.inputs,
        outputs=model.outputs,
        preloaded=True,
    )


def _load_exported(path: Path, device: torch.device) -> TorchModel:
    program = torch.export.load(str(path))
    graph = program.graph_module.graph
    user_inputs = set(program.graph_signature.user_inputs)
    inputs: list[TensorSpec] = []
    for node in graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            inputs.append(_spec(node.name, node.meta.get("val"), path, "input"))
    outputs: list[TensorSpec] = []
    for node in graph.nodes:
        if node.op == "output":
            values = node.args[0]
            user = len(program.graph_signature.user_outputs)
            # Buffer mutations come first in the output node; the user's outputs are the last.
            for i, value in enumerate(list(values)[-user:]):
                outputs.append(_spec(f"output-{i}", value.meta.get("val"), path, "output"))
    module = program.module()
    if device.type != "cpu":
        module = module.to(device)
    return TorchModel(
        module,
        platform="pytorch_export",
        device=device,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )


def _spec(name: str, val: Any, path: Path, kind: str) -> TensorSpec:
    if not isinstance(val, torch.Tensor):
        raise ModelError(f"--model {path}: {kind} {name!r} is not a tensor")
    datatype = DATATYPES.get(val.dtype)
    if datatype is None:
        raise ModelError(f"--model {path}: {kind} {name!r} has dtype {val.dtype}, not supported")
    # A dimension exported as dynamic is a SymInt, not an int.
    shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
    return TensorSpec(name, datatype, shape, accepts=accepted(datatype))


def _load_torchscript(path: Path, device: torch.device, options: LoadOptions) -> TorchModel:
    with warnings.catch_warnings():
        # Recent torch deprecates TorchScript (a FutureWarning on every load): said once, in our
        # log, rather than as a warning a strict process turns into an error.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
        module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    logger.warning(
        "TorchScript is deprecated by torch: prefer a torch.export program (.pt2)",
        extra={"path": str(path), "torch": torch.__version__},
    )
    module.eval()
    names = [a.name for a in module.forward.schema.arguments[1:]]  # [0] is self
    sidecar = path.parent / SIGNATURE_FILE
    if sidecar.is_file():
        inputs = _read_signature(sidecar, names)
    elif options.example_input_shape is not None:
        if len(names) != 1:
            raise ModelError(
                f"--example-input-shape describes one input, but {path.name} takes "
                f"{len(names)} ({', '.join(names)}): write {SIGNATURE_FILE} beside it"
            )
        shape = options.example_input_shape
        inputs = (TensorSpec(names[0], "FP32", shape, accepts=accepted("FP32")),)
    else:
        raise ModelError(
            f"--model {path}: a TorchScript file does not record its input shapes; "
            f"give --example-input-shape=-1,4 (for example) or write {SIGNATURE_FILE} beside it"
        )
    return TorchModel(module, platform="pytorch_torchscript", device=device, inputs=inputs)


def _read_signature(path: Path, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    try:
        doc = json.loads(path.read_text())
        specs = tuple(
            TensorSpec(
                str(i["name"]),
                str(i["datatype"]),
                tuple(int(d) for d in i["shape"]),
                accepts=accepted(str(i["datatype"])),
            )
            for i in doc["inputs"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f'{path}: expected {{"inputs": [{{"name", "datatype", "shape"}}]}}: {exc}'
        ) from None
    for spec in specs:
        if spec.datatype not in DATATYPES.values():
            raise ModelError(
                f"{path}: input {spec.name!r} datatype {spec.datatype} is not supported"
            )
    if [s.name for s in specs] != list(names):
        raise ModelError(
            f"{path}: inputs {[s.name for s in specs]} do not match the module's forward "
            f"arguments {list(names)}"
        )
    return specs
