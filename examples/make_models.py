"""Make the example saved models from the bundled iris data (``examples/data/iris.csv``).

``python -m examples.make_models [OUT_DIR]`` (default ``examples/models``) writes, each in a
directory of its own so that the directory is a valid ``--model`` / ``storageUri``:

- ``iris-sklearn/model.joblib``: a scikit-learn LogisticRegression (outputs ``predict``, the class
  index, and ``predict_proba``);
- ``iris-xgboost/model.json``: an XGBoost booster, ``multi:softprob`` (``predict``: the three class
  probabilities);
- ``iris-onnx/model.onnx``: the same LogisticRegression converted by skl2onnx without ZipMap
  (input ``input_0``; outputs ``label`` and ``probabilities``).

The files are committed, so ``make run`` needs no training step; run this again after changing it
or after upgrading scikit-learn (a joblib file is tied to the scikit-learn that wrote it). Needs
the ``models`` extra plus skl2onnx (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from examples.iris_model import DATA_PATH, load_iris

MODELS_DIR = Path(__file__).resolve().parent / "models"
SEED = 0


def make_sklearn(out: Path) -> Path:
    import joblib
    from sklearn.linear_model import LogisticRegression

    data = load_iris(DATA_PATH)
    model = LogisticRegression(max_iter=1000, random_state=SEED).fit(data.x, data.y)
    path = out / "iris-sklearn" / "model.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def make_xgboost(out: Path) -> Path:
    import xgboost

    data = load_iris(DATA_PATH)
    params = {
        "objective": "multi:softprob",
        "num_class": 3,
        "max_depth": 3,
        "eta": 0.3,
        "seed": SEED,
        "nthread": 1,
    }
    booster = xgboost.train(params, xgboost.DMatrix(data.x, label=data.y), num_boost_round=10)
    path = out / "iris-xgboost" / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def make_onnx(out: Path) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    data = load_iris(DATA_PATH)
    model = LogisticRegression(max_iter=1000, random_state=SEED).fit(data.x, data.y)
    onx = convert_sklearn(
        model,
        initial_types=[("input_0", FloatTensorType([None, 4]))],
        # ZipMap would make the probabilities a sequence of maps, which is not a V2 tensor.
        options={id(model): {"zipmap": False}},
        target_opset=17,
        name="iris",  # else a random graph name: the same model, other bytes on every run
    )
    path = out / "iris-onnx" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(args[0]) if args else MODELS_DIR
    for make in (make_sklearn, make_xgboost, make_onnx):
        path = make(out)
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
