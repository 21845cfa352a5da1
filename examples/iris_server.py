"""The iris model server: a softmax regression served over KServe V1 and Open Inference Protocol V2.

``python -m examples.iris_server``. Environment: ``PORT`` (8080), ``HOST`` (127.0.0.1),
``MODEL_NAME`` (iris), ``STARTUP_DELAY_SECONDS`` (0), ``SHUTDOWN_TIMEOUT_SECONDS`` (30).

Start-up: the server listens at once and loads the model in the background (it waits
``STARTUP_DELAY_SECONDS``, standing for fetching weights, then trains on the bundled data). Until
then ``/v2/health/ready`` and the model's ready endpoints answer 503 and inference answers 503, so an
HTTP readiness probe (``GET /v2/health/ready``) tells "process up" from "model loaded"; liveness
(``/v2/health/live``) is 200 from the start. After SIGTERM readiness answers 503 again while
in-flight requests finish; then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from examples.inference_requests import (
    InferenceRequestError,
    parse_json_object,
    parse_v1_instances,
    parse_v2_request,
)
from examples.iris_model import CLASSES, DATA_PATH, FEATURES, SoftmaxModel, load_iris, train
from examples.serving import (
    ConfigError,
    ServerSettings,
    env_float,
    json_error,
    json_errors,
    run,
    serve_until_signal,
    server_settings_from_env,
)

logger = logging.getLogger("zeroserve.examples.iris_server")

MODEL_VERSION = "1"
PLATFORM = "numpy_softmax"
INPUT_NAME = "input-0"
OUTPUTS = ("predict", "probabilities")
DEFAULT_OUTPUTS = ("predict",)


@dataclass(frozen=True, slots=True, kw_only=True)
class IrisConfig:
    """What the iris server needs to know, read from the environment by :func:`main`."""

    model_name: str = "iris"
    """The one model this server serves; other names are 404 (KServe: model name = service name)."""
    model_version: str = MODEL_VERSION
    """The version V2 metadata and responses report (``MODEL_VERSION``): a canary's v2 says 2."""
    startup_delay_s: float = 0.0
    """Seconds the (background) model load takes before training; readiness is 503 meanwhile."""
    data_path: Path = DATA_PATH
    """The iris CSV to train on."""


@dataclass(slots=True)
class ModelState:
    """The server's mutable state: the model once loaded, and whether it is draining."""

    model: SoftmaxModel | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    load_error: str | None = None
    """Why loading failed; liveness then answers 500, so a supervisor restarts the server."""

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining


CONFIG = web.AppKey("iris_config", IrisConfig)
STATE = web.AppKey("iris_state", ModelState)


def make_app(config: IrisConfig | None = None) -> web.Application:
    """The iris server's application; the model starts loading when the app starts up."""
    app = web.Application(middlewares=[json_errors])
    app[CONFIG] = config or IrisConfig()
    app[STATE] = ModelState()
    app.cleanup_ctx.append(_load_model_in_background)
    app.router.add_get("/", root)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2/models/{model}", model_metadata)
    app.router.add_get("/v2/models/{model}/ready", model_ready)
    app.router.add_post("/v2/models/{model}/infer", v2_infer)
    app.router.add_get("/v1/models", v1_list)
    app.router.add_get("/v1/models/{model:[^/:]+}", v1_model)
    app.router.add_post("/v1/models/{model:[^/:]+}:predict", v1_predict)
    return app


async def _load_model_in_background(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_load_model(app[CONFIG], app[STATE]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _load_model(config: IrisConfig, state: ModelState) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    if config.startup_delay_s > 0:
        await asyncio.sleep(config.startup_delay_s)
    try:
        model, accuracy = await asyncio.to_thread(_trained_model, config.data_path)
    except (OSError, ValueError) as exc:
        state.load_error = f"model {config.model_name!r} failed to load: {exc}"
        logger.exception("model failed to load", extra={"model": config.model_name})
        return
    state.model = model
    state.loaded.set()
    logger.info(
        "model %s loaded in %.3fs, training accuracy %.4f",
        config.model_name,
        loop.time() - started,
        accuracy,
    )


@functools.cache
def _trained_model(data_path: Path) -> tuple[SoftmaxModel, float]:
    # Training is deterministic, so apps in one process (the in-process tests) can share it.
    data = load_iris(data_path)
    model = train(data)
    return model, model.accuracy(data)


# --- health and metadata ---------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def live(request: web.Request) -> web.Response:
    error = request.app[STATE].load_error
    if error is not None:
        return web.json_response({"live": False, "error": error}, status=500)
    return web.json_response({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.load_error is not None:
        return web.json_response({"ready": False, "error": state.load_error}, status=503)
    return web.json_response({"ready": state.ready}, status=200 if state.ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "zeroserve-iris", "version": "0.1.0", "extensions": []})


async def model_metadata(request: web.Request) -> web.Response:
    name = request.app[CONFIG].model_name
    if (missing := _unknown_model(request)) is not None:
        return missing
    return web.json_response(
        {
            "name": name,
            "versions": [request.app[CONFIG].model_version],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(FEATURES)]}],
            "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASSES)]},
            ],
            "parameters": {"features": list(FEATURES), "classes": list(CLASSES)},
        }
    )


async def model_ready(request: web.Request) -> web.Response:
    if (missing := _unknown_model(request)) is not None:
        return missing
    ready = request.app[STATE].ready
    body = {"name": request.app[CONFIG].model_name, "ready": ready}
    return web.json_response(body, status=200 if ready else 503)


async def v1_list(request: web.Request) -> web.Response:
    return web.json_response({"models": [request.app[CONFIG].model_name]})


async def v1_model(request: web.Request) -> web.Response:
    return await model_ready(request)


# --- inference -------------------------------------------------------------------------------


async def v2_infer(request: web.Request) -> web.Response:
    refused = _unknown_model(request) or _not_loaded(request)
    if refused is not None:
        return refused
    model = request.app[STATE].model
    assert model is not None  # _not_loaded checked it
    try:
        parsed = parse_v2_request(parse_json_object(await request.read()), len(FEATURES))
    except InferenceRequestError as exc:
        return json_error(400, str(exc))
    wanted = parsed.outputs or DEFAULT_OUTPUTS
    unknown = [name for name in wanted if name not in OUTPUTS]
    if unknown:
        return json_error(
            400, f"unknown output {unknown[0]!r}: this model has outputs {', '.join(OUTPUTS)}"
        )
    proba = model.probabilities(parsed.features)
    n = proba.shape[0]
    tensors: dict[str, dict[str, Any]] = {
        "predict": {
            "name": "predict",
            "shape": [n],
            "datatype": "INT64",
            "data": np.argmax(proba, axis=1).tolist(),
        },
        "probabilities": {
            "name": "probabilities",
            "shape": [n, len(CLASSES)],
            "datatype": "FP32",
            "data": proba.astype(np.float32).ravel().tolist(),
        },
    }
    return web.json_response(
        {
            "model_name": request.app[CONFIG].model_name,
            "model_version": request.app[CONFIG].model_version,
            "id": parsed.request_id if parsed.request_id is not None else str(uuid.uuid4()),
            "outputs": [tensors[name] for name in wanted],
        }
    )


async def v1_predict(request: web.Request) -> web.Response:
    refused = _unknown_model(request) or _not_loaded(request)
    if refused is not None:
        return refused
    model = request.app[STATE].model
    assert model is not None  # _not_loaded checked it
    try:
        features = parse_v1_instances(parse_json_object(await request.read()), len(FEATURES))
    except InferenceRequestError as exc:
        return json_error(400, str(exc))
    return web.json_response({"predictions": model.predict(features).tolist()})


def _unknown_model(request: web.Request) -> web.Response | None:
    served = request.app[CONFIG].model_name
    asked = request.match_info["model"]
    if asked == served:
        return None
    return json_error(404, f"model {asked!r} not found: this server serves {served!r}")


def _not_loaded(request: web.Request) -> web.Response | None:
    state = request.app[STATE]
    if state.model is not None:
        return None
    if state.load_error is not None:
        return json_error(503, state.load_error)
    name = request.app[CONFIG].model_name
    return json_error(503, f"model {name!r} is not loaded yet", **{"Retry-After": "1"})


# --- composition root ------------------------------------------------------------------------


def settings_from_env(env: Mapping[str, str]) -> tuple[IrisConfig, ServerSettings]:
    """Read the environment; a bad value is a :class:`ConfigError` naming the variable."""
    name = env.get("MODEL_NAME", "").strip() or "iris"
    if "/" in name or ":" in name:
        raise ConfigError(f"MODEL_NAME = {name}: must not contain '/' or ':'")
    config = IrisConfig(
        model_name=name,
        model_version=env.get("MODEL_VERSION", "").strip() or MODEL_VERSION,
        startup_delay_s=env_float(env, "STARTUP_DELAY_SECONDS", 0.0, low=0.0, high=3600.0),
    )
    server = server_settings_from_env(env)  # iris loads while listening (readiness 503)
    return config, server


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, server = settings_from_env(os.environ)
    except ConfigError as exc:
        print(f"iris_server: {exc}", file=sys.stderr)
        return 2
    app = make_app(config)

    def drain() -> None:
        app[STATE].draining = True

    return run(
        lambda: serve_until_signal(
            app,
            host=server.host,
            port=server.port,
            shutdown_timeout_s=server.shutdown_timeout_s,
            on_drain=drain,
            access_log=None,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
