"""scikit-learn estimators saved with joblib or pickle (``.joblib``, ``.pkl``, ``.pickle``).

Loading such a file runs code from it: serve only files you trust (docs/model-server.md).
Input ``input-0`` is ``FP64 [-1, n_features_in_]`` (FP32 and integers are converted); outputs are
``predict`` and, when the estimator has it, ``predict_proba``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib

from modelserver.model import LoadOptions, ModelError, as_numpy
from modelserver.tensors import NUMERIC_DATATYPES, Array, TensorSpec

INPUT = "input-0"


class SklearnModel:
    platform = "sklearn"
    outputs: tuple[TensorSpec, ...] = ()

    def __init__(self, estimator: Any, path: Path) -> None:
        n = getattr(estimator, "n_features_in_", None)
        if not callable(getattr(estimator, "predict", None)):
            raise ModelError(f"--model {path}: {type(estimator).__name__} has no predict method")
        if not isinstance(n, int):
            raise ModelError(
                f"--model {path}: {type(estimator).__name__} has no n_features_in_ "
                "(is it fitted?): the server cannot tell its input shape"
            )
        self.estimator = estimator
        self.inputs = (TensorSpec(INPUT, "FP64", (-1, n), accepts=NUMERIC_DATATYPES),)
        self.has_proba = callable(getattr(estimator, "predict_proba", None))

    def predict(self, inputs: Mapping[str, Array], wanted: frozenset[str]) -> dict[str, Array]:
        x = inputs[INPUT]
        out: dict[str, Array] = {}
        if not wanted or "predict" in wanted:
            out["predict"] = as_numpy(self.estimator.predict(x))
        if self.has_proba and (not wanted or "predict_proba" in wanted):
            out["predict_proba"] = as_numpy(self.estimator.predict_proba(x))
        return out


def load(path: Path, options: LoadOptions) -> SklearnModel:
    return SklearnModel(joblib.load(path), path)
