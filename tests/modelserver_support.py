"""Helpers for the model-server tests: the iris data, models saved in a test's tmp dir, serving them
in-process, and an estimator whose loading and predicting wait on a gate the test opens."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from numpy.typing import NDArray

from modelserver.model import LoadOptions
from modelserver.server import STATE, ModelConfig, make_app
from tests.examples_support import serve_in_process

READY_TIMEOUT_S = 60.0


def iris() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Fisher's iris data as scikit-learn ships it (150 rows, 4 features, classes 0..2)."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.int64)


# A few rows of each class and some near the class borders: the requests' inputs.
ROWS = [0, 1, 50, 51, 70, 83, 100, 119, 133, 149]


@dataclass
class Served:
    """A model server app on loopback: its base URL, a client session, and the app."""

    base: str
    session: aiohttp.ClientSession
    app: Any

    async def get(self, path: str) -> tuple[int, Any, dict[str, str]]:
        async with self.session.get(self.base + path) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def post(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.base + path, data=data) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def v1(self, name: str, instances: Any) -> list[Any]:
        status, body, _ = await self.post(f"/v1/models/{name}:predict", {"instances": instances})
        assert status == 200, body
        predictions: list[Any] = body["predictions"]
        return predictions

    async def v2(self, name: str, inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        status, body, _ = await self.post(f"/v2/models/{name}/infer", {"inputs": inputs, **extra})
        assert status == 200, body
        outputs = {o["name"]: o for o in body["outputs"]}
        return outputs


@asynccontextmanager
async def serving(
    name: str, fmt: str, model: Path | str, *, wait_ready: bool = True, **options: Any
) -> AsyncIterator[Served]:
    """Serve ``model`` in-process on 127.0.0.1; by default wait until it is warm."""
    config = ModelConfig(name=name, format=fmt, model=str(model), options=LoadOptions(**options))
    app = make_app(config)
    async with serve_in_process(app) as (base, session):
        if wait_ready:
            await asyncio.wait_for(app[STATE].ready_event.wait(), READY_TIMEOUT_S)
        yield Served(base, session, app)


def script(module: Any) -> Any:
    """``torch.jit.script(module)``: torch ≥ 2.9 deprecates TorchScript (a FutureWarning), and the
    server still loads it."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)


def tensor(name: str, array: NDArray[Any], datatype: str) -> dict[str, Any]:
    """A V2 input tensor with flat data."""
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel().tolist(),
    }


# --- a gated estimator -----------------------------------------------------------------------

GATES: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


class GatedEstimator:
    """A scikit-learn-style classifier (predict, n_features_in_) that, once unpickled in this
    process, waits for ``gate(load_gate)`` while it loads and for ``gate(predict_gate)`` before it
    predicts: the test opens them to step the server through loading and warm-up. With
    ``fail_on_zeros`` its predict raises on an all-zero row (the warm-up's input)."""

    n_features_in_ = 4

    def __init__(
        self, load_gate: str = "", predict_gate: str = "", *, fail_on_zeros: bool = False
    ) -> None:
        self.load_gate = load_gate
        self.predict_gate = predict_gate
        self.fail_on_zeros = fail_on_zeros

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.load_gate:
            gate(self.load_gate).wait(READY_TIMEOUT_S)

    def predict(self, x: NDArray[np.float64]) -> NDArray[np.int64]:
        if self.predict_gate:
            gate(self.predict_gate).wait(READY_TIMEOUT_S)
        if self.fail_on_zeros and not x.any():
            raise ValueError("all-zero rows are not iris flowers")
        return (x[:, 2] > 2.5).astype(np.int64)
