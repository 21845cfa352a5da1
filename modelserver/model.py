"""What every format gives the server: a loaded model with its signature, and how a model file is
found and loaded (its library imported only then, and only for the format in use)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelserver import preload
from modelserver.tensors import NUMPY_DTYPES, Array, TensorSpec, datatype_of

logger = logging.getLogger("zeroserve.modelserver.model")


class ModelError(ValueError):
    """The model cannot be served: no such file, the wrong format, a missing library. The message
    names the path or the option."""


@dataclass(frozen=True, slots=True)
class FormatInfo:
    """A format's module under ``modelserver.formats``, the files it takes, and the packages it
    needs (``pip install 'zeroserve[<extra>]'``)."""

    module: str
    suffixes: tuple[str, ...]
    packages: tuple[str, ...]
    extra: str


FORMATS: Mapping[str, FormatInfo] = {
    "sklearn": FormatInfo(
        "sklearn", (".joblib", ".pkl", ".pickle"), ("sklearn", "joblib"), "sklearn"
    ),
    "xgboost": FormatInfo("xgboost", (".json", ".ubj"), ("xgboost",), "xgboost"),
    "lightgbm": FormatInfo("lightgbm", (".txt", ".lgb", ".model"), ("lightgbm",), "lightgbm"),
    "onnx": FormatInfo("onnx", (".onnx",), ("onnxruntime",), "onnx"),
    "pytorch": FormatInfo("pytorch", (".pt2", ".pt", ".pth", ".ts"), ("torch",), "pytorch"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadOptions:
    """What a format may need beyond the file."""

    device: str = "auto"
    """``auto`` (cuda when torch sees a GPU, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` (pytorch)."""
    example_input_shape: tuple[int, ...] | None = None
    """A TorchScript model's input shape (-1 for any size): its file does not record one."""


class Model(Protocol):
    """A loaded model. ``outputs`` may be empty when the file does not declare them (a scikit-learn
    estimator, a booster, TorchScript): the server then derives them from the warm-up inference."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def predict(self, inputs: Mapping[str, Array], wanted: frozenset[str]) -> dict[str, Array]:
        """The model's outputs for ``inputs`` (arrays already of each input's dtype and shape);
        those named in ``wanted``, or all when it is empty. Blocking: called in a thread."""
        ...


class Loader(Protocol):
    def __call__(self, path: Path, options: LoadOptions) -> Model: ...


def check_format(fmt: str) -> FormatInfo:
    """The format's entry, after checking its libraries are installed (without importing them)."""
    info = FORMATS.get(fmt)
    if info is None:
        raise ModelError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    missing = [p for p in info.packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ModelError(
            f"--format {fmt} needs the {', '.join(missing)} package: "
            f"pip install 'zeroserve[{info.extra}]'"
        )
    return info


def model_file(path: Path, fmt: str) -> Path:
    """The model file at ``path``: the file itself, or the one file with the format's suffix in a
    directory (a directory may also hold other files, e.g. a README)."""
    info = FORMATS[fmt]
    if path.is_file():
        return path
    if not path.exists():
        raise ModelError(f"--model {path}: no such file or directory")
    if not path.is_dir():
        raise ModelError(f"--model {path}: not a file or a directory")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in info.suffixes)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise ModelError(
            f"--model {path}: a {fmt} model directory must hold exactly one model file "
            f"({', '.join(info.suffixes)}), found {what}"
        )
    return found[0]


def load(path: Path, fmt: str, options: LoadOptions) -> Model:
    """Load the model file at ``path`` (a file or a one-model directory) with ``fmt``'s library,
    or take the one the parked process this replica was forked from loaded onto the CPU
    (:mod:`modelserver.preload`) and move it to its device."""
    info = check_format(fmt)
    file = model_file(path, fmt)
    module = importlib.import_module(f"modelserver.formats.{info.module}")
    loader: Loader = module.load
    preloaded = preload.take(fmt, file)
    try:
        if preloaded is not None:  # loaded by the parked process this replica was forked from
            logger.info(
                "model taken from the parked process",
                extra={"format": fmt, "path": str(file), "preloaded": True},
            )
            return module.from_preloaded(preloaded, options)  # type: ignore[no-any-return]
        return loader(file, options)
    except ModelError:
        raise
    except Exception as exc:  # the library's own errors differ per format and version
        raise ModelError(f"--model {file}: cannot load it as {fmt}: {exc}") from exc


def example_inputs(inputs: Sequence[TensorSpec]) -> dict[str, Array]:
    """Inputs made from the signature for the warm-up inference: dynamic dimensions as 1, zeros
    (empty strings for BYTES)."""
    out: dict[str, Array] = {}
    for spec in inputs:
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            out[spec.name] = np.full(shape, "", dtype=object)
        else:
            out[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
    return out


def derived_outputs(results: Mapping[str, Array]) -> tuple[TensorSpec, ...]:
    """Output specs read off one inference's results: the first axis is the batch (-1)."""
    return tuple(
        TensorSpec(name, datatype_of(a.dtype), (-1, *a.shape[1:]) if a.ndim else ())
        for name, a in results.items()
    )


def as_numpy(value: Any) -> Array:
    """A library's result as a numpy array."""
    return np.asarray(value)
