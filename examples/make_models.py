"""Make the example saved models from the bundled iris data (``examples/data/iris.csv``).

``python -m examples.make_models [OUT_DIR]`` (default ``examples/models``) writes, each in a
directory of its own so that the directory is a valid ``--model`` / ``storageUri``:

- ``iris-sklearn/model.joblib``: a scikit-learn LogisticRegression (outputs ``predict``, the class
  index, and ``predict_proba``);
- ``iris-xgboost/model.json``: an XGBoost booster, ``multi:softprob`` (``predict``: the three class
  probabilities);
- ``iris-onnx/model.onnx``: the same LogisticRegression converted by skl2onnx without ZipMap
  (input ``input_0``; outputs ``label`` and ``probabilities``).

Two more are made on demand and not committed (``loadtests/bench_models.py`` writes them into a
temporary directory): :func:`make_lightgbm` (``iris-lightgbm/model.txt``, a LightGBM multiclass
booster) and :func:`make_pytorch` (``iris-pytorch/model.pt2``, a ``torch.export`` MLP with a
dynamic batch dimension; its size is a parameter, so the same code makes a large model for a load
benchmark). A ``.pt2`` file is tied to the torch that wrote it, which is why it is not committed.

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


def make_lightgbm(out: Path) -> Path:
    import lightgbm

    data = load_iris(DATA_PATH)
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "seed": SEED,
        "deterministic": True,
        "verbose": -1,
        "num_threads": 1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(data.x, label=data.y), num_boost_round=10)
    path = out / "iris-lightgbm" / "model.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def make_pytorch(out: Path, *, hidden: int = 16, depth: int = 2, train_steps: int = 300) -> Path:
    """An MLP 4 → ``hidden`` (× ``depth`` layers, ReLU) → 3 logits, trained on iris for
    ``train_steps`` full-batch Adam steps (0: left at its seeded initial weights, for a large model
    whose answers do not matter), exported with ``torch.export`` (input ``x`` FP32 ``[-1, 4]``,
    output ``output-0`` FP32 ``[-1, 3]``). Its size is about ``4 * hidden**2 * (depth - 1)``
    bytes: ``hidden=4096, depth=5`` is 268 MB."""
    import numpy as np
    import torch

    class MLP(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # "x": the V2 input's name
            out: torch.Tensor = self.net(x)
            return out

    torch.manual_seed(SEED)
    layers: list[torch.nn.Module] = [torch.nn.Linear(4, hidden), torch.nn.ReLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
    model = MLP(torch.nn.Sequential(*layers, torch.nn.Linear(hidden, 3)))
    data = load_iris(DATA_PATH)
    x = torch.from_numpy(data.x.astype(np.float32))
    if train_steps:
        y = torch.from_numpy(data.y)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(train_steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    model.eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: batch}})
    path = out / "iris-pytorch" / "model.pt2"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
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
