"""The example saved models: ``python -m examples.make_models`` writes them, the committed copies
in examples/models are served as they are, and both answer alike on the whole iris data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples import make_models
from examples.iris_model import load_iris
from tests.modelserver_support import serving, tensor

DATA = load_iris()
# The first of each class, and two near the versicolor/virginica border.
KNOWN = {0: 0, 50: 1, 100: 2, 51: 1, 149: 2}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    assert make_models.main([str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("directory", "fmt", "input_name", "datatype", "first_output"),
    [
        pytest.param("iris-sklearn", "sklearn", "input-0", "FP64", "predict", id="sklearn"),
        pytest.param("iris-xgboost", "xgboost", "input-0", "FP32", "predict", id="xgboost"),
        pytest.param("iris-onnx", "onnx", "input_0", "FP32", "label", id="onnx"),
    ],
)
async def test_committed_models_answer_like_freshly_made_ones(
    made: Path, directory: str, fmt: str, input_name: str, datatype: str, first_output: str
) -> None:
    committed = make_models.MODELS_DIR / directory
    assert committed.is_dir(), f"{committed} is missing: run python -m examples.make_models"
    rows = list(KNOWN)
    async with (
        serving("iris", fmt, committed) as old,
        serving("iris", fmt, made / directory) as new,
    ):
        old_v2 = await old.v2("iris", [tensor(input_name, DATA.x, datatype)])
        new_v2 = await new.v2("iris", [tensor(input_name, DATA.x, datatype)])
        v1 = await old.v1("iris", DATA.x[rows].tolist())
    assert old_v2 == new_v2, "examples/models is stale: run python -m examples.make_models"
    answers = np.asarray(v1)
    classes = answers if answers.ndim == 1 else answers.argmax(axis=1)  # xgboost: probabilities
    assert classes.tolist() == [KNOWN[r] for r in rows]
    first = old_v2[first_output]
    assert first["shape"][0] == len(DATA.x)
