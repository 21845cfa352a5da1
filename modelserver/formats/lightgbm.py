"""LightGBM boosters saved as text model files (``Booster.save_model``: ``.txt``, ``.lgb``,
``.model``), through ``lightgbm.Booster(model_file=...)``.

Input ``input-0`` is ``FP64 [-1, num_feature()]`` (FP32 and integers are converted); the output
``predict`` is ``Booster.predict(x)``: class probabilities for a multiclass objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightgbm

from modelserver.model import LoadOptions, as_numpy
from modelserver.tensors import NUMERIC_DATATYPES, Array, TensorSpec

INPUT = "input-0"


class LightGBMModel:
    platform = "lightgbm"
    outputs: tuple[TensorSpec, ...] = ()

    def __init__(self, booster: lightgbm.Booster) -> None:
        self.booster = booster
        n = booster.num_feature()
        self.inputs = (TensorSpec(INPUT, "FP64", (-1, n), accepts=NUMERIC_DATATYPES),)

    def predict(self, inputs: Mapping[str, Array], wanted: frozenset[str]) -> dict[str, Array]:
        return {"predict": as_numpy(self.booster.predict(inputs[INPUT]))}


def load(path: Path, options: LoadOptions) -> LightGBMModel:
    return LightGBMModel(lightgbm.Booster(model_file=str(path)))
