"""XGBoost boosters saved as JSON or UBJSON (``.json``, ``.ubj``), through ``xgboost.Booster``.

Input ``input-0`` is ``FP32 [-1, num_features()]`` (FP64 and integers are converted, as DMatrix
would); the output ``predict`` is ``Booster.predict(DMatrix(x))``: class probabilities for
``multi:softprob``, a probability for ``binary:logistic``, a value for a regression.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import xgboost

from modelserver.model import LoadOptions, as_numpy
from modelserver.tensors import NUMERIC_DATATYPES, Array, TensorSpec

INPUT = "input-0"


class XGBoostModel:
    platform = "xgboost"
    outputs: tuple[TensorSpec, ...] = ()

    def __init__(self, booster: xgboost.Booster) -> None:
        self.booster = booster
        n = booster.num_features()
        self.inputs = (TensorSpec(INPUT, "FP32", (-1, n), accepts=NUMERIC_DATATYPES),)

    def predict(self, inputs: Mapping[str, Array], wanted: frozenset[str]) -> dict[str, Array]:
        return {"predict": as_numpy(self.booster.predict(xgboost.DMatrix(inputs[INPUT])))}


def load(path: Path, options: LoadOptions) -> XGBoostModel:
    booster = xgboost.Booster()
    booster.load_model(str(path))
    return XGBoostModel(booster)
