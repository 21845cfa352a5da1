"""The model server's HTTP application: KServe V1 and Open Inference Protocol V2 over one model.

The app listens before the model is loaded: liveness (``/v2/health/live``) answers at once, and
the model is fetched, loaded and warmed up in a thread. Readiness (``/v2/health/ready``,
``/v2/models/<name>/ready``, V1 ``GET /v1/models/<name>``) turns true only once one warm-up
inference on inputs made from the model's signature has run; until then inference answers 503
with ``Retry-After``. After SIGTERM readiness answers 503 again while requests are still served.

Each phase of the start (:mod:`modelserver.phases`: imports, accelerator init, fetch, load,
warm-up) is logged as it ends (``cold-start phase``) and listed at ``GET /zeroserve/phases``,
outside the protocols' paths, where the local supervisor collects them once the replica is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from modelserver.http import json_error, json_errors
from modelserver.model import (
    LoadOptions,
    Model,
    check_format,
    derived_outputs,
    example_inputs,
    load,
)
from modelserver.phases import Phase, PhaseClock
from modelserver.tensors import (
    RequestError,
    TensorSpec,
    encode_tensor,
    parse_infer_request,
    parse_json_object,
    parse_v1_instances,
    v1_predictions,
)

logger = logging.getLogger("zeroserve.modelserver")

SERVER_NAME = "zeroserve-modelserver"
SERVER_VERSION = "0.1.0"
MAX_REQUEST_BYTES = 64 * 1024 * 1024
RETRY_AFTER_S = "1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Which model this server serves and how to load it."""

    name: str
    """The model's name in every path (KServe: the service name); other names are 404."""
    format: str
    """sklearn | xgboost | lightgbm | onnx | pytorch."""
    model: str
    """A local file or one-model directory, or a storage URI (file://, http(s)://, s3://)."""
    options: LoadOptions = field(default_factory=LoadOptions)
    sha256: str | None = None
    """The artifact's pinned digest (hex), checked by :func:`modelserver.storage.fetch`."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """Calls the server makes while it starts."""

    on_load_error: Callable[[], None] | None = None
    """Called when the model failed to load (``main`` then stops the server: exit status 1)."""


@dataclass(slots=True)
class ModelState:
    """The server's mutable state: the model once warm, its outputs, and whether it drains."""

    model: Model | None = None
    """Set only after the warm-up inference: inference and readiness wait for it."""
    outputs: tuple[TensorSpec, ...] = ()
    phase: str = "loading"
    """loading → warming → ready, or failed."""
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    load_error: str | None = None
    """Why loading failed; liveness then answers 500 and the process exits non-zero."""
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """What the server holds while it serves (the artifact's in-use lock)."""
    phases: PhaseClock = field(default_factory=PhaseClock)
    """The start's phases so far (``GET /zeroserve/phases``)."""

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining


CONFIG = web.AppKey("modelserver_config", ModelConfig)
STATE = web.AppKey("modelserver_state", ModelState)
PHASES_PATH = "/zeroserve/phases"
"""Where the start's phases are listed (JSON: ``started_at``, ``done``, ``phases``)."""
HOOKS = web.AppKey("modelserver_hooks", Hooks)


def make_app(config: ModelConfig, *, hooks: Hooks | None = None) -> web.Application:
    """The server's application; the model starts loading when the app starts up."""
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_REQUEST_BYTES)
    app[CONFIG] = config
    app[STATE] = ModelState()
    app[HOOKS] = hooks or Hooks()
    app.cleanup_ctx.append(_load_in_background)
    app.router.add_get("/", root)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2/models/{model}", model_metadata)
    app.router.add_get("/v2/models/{model}/ready", model_ready)
    app.router.add_post("/v2/models/{model}/infer", v2_infer)
    app.router.add_get("/v1/models", v1_list)
    app.router.add_get("/v1/models/{model:[^/:]+}", model_ready)
    app.router.add_post("/v1/models/{model:[^/:]+}:predict", v1_predict)
    app.router.add_get(PHASES_PATH, phases)
    return app


# --- loading -----------------------------------------------------------------------------------


async def _load_in_background(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    task = asyncio.create_task(_load(app[CONFIG], state, app[HOOKS]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    state.resources.close()


async def _load(config: ModelConfig, state: ModelState, hooks: Hooks) -> None:
    fields: dict[str, Any] = {"model": config.name, "format": config.format, "uri": config.model}
    clock = state.phases
    try:
        model = await asyncio.to_thread(_open, config, state.resources, clock, fields)
        load_s = clock.phases[-1].seconds
        device = str(getattr(model, "device", "cpu"))  # pytorch and onnx may run on cuda
        logger.info(
            "model loaded",
            extra={
                **fields,
                "platform": model.platform,
                "device": device,
                "load_s": round(load_s, 4),
            },
        )
        state.phase = "warming"
        warm_started = time.monotonic()
        try:
            results = await asyncio.to_thread(
                model.predict, example_inputs(model.inputs), frozenset()
            )
        except Exception as exc:
            raise RuntimeError(f"warm-up inference failed: {exc}") from exc
        state.outputs = model.outputs or derived_outputs(results)
        warmup = _phase_done(clock, "warmup", warm_started, fields)
        logger.info("warm-up done", extra={**fields, "warmup_s": round(warmup.seconds, 4)})
    except Exception as exc:
        state.phase = "failed"
        state.phases.done = True
        state.load_error = f"model {config.name!r} failed to load: {exc}"
        logger.error("model failed to load", extra={**fields, "error": str(exc)})
        if hooks.on_load_error is not None:
            hooks.on_load_error()
        return
    state.model = model
    state.phase = "ready"
    state.phases.done = True
    state.ready_event.set()


def _open(
    config: ModelConfig,
    resources: contextlib.ExitStack,
    clock: PhaseClock,
    fields: dict[str, Any],
) -> Model:
    """Import, initialise the accelerator, fetch and load, each a timed phase (in a thread)."""
    # imports: from the process's start, so the interpreter's own start counts too
    info = check_format(config.format)
    importlib.import_module(f"modelserver.formats.{info.module}")
    _phase_done(clock, "imports", clock.started, fields)
    began = time.monotonic()
    if _init_accelerator(config):
        _phase_done(clock, "accelerator_init", began, fields)
    began = time.monotonic()
    path = resources.enter_context(local_model(config.model, config.sha256))
    _phase_done(clock, "fetch", began, fields)
    began = time.monotonic()
    model = load(path, config.format, config.options)
    _phase_done(clock, "load", began, fields)
    return model


def _init_accelerator(config: ModelConfig) -> bool:
    """Create the CUDA context now when the model will run on a GPU, so that its cost shows
    apart from loading; False (nothing done) on the CPU. Only PyTorch is timed this way:
    onnxruntime creates its CUDA context inside the session, i.e. in ``load``."""
    device = config.options.device
    if config.format != "pytorch" or device == "cpu":
        return False
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return False
        device = "cuda"
    torch.cuda.init()  # type: ignore[no-untyped-call]
    torch.zeros(1, device=device)  # the context is made on the first tensor on the device
    torch.cuda.synchronize(device)
    return True


def _phase_done(clock: PhaseClock, phase: str, began: float, fields: dict[str, Any]) -> Phase:
    done = clock.end(phase, began)
    logger.info(
        "cold-start phase",
        extra={
            **fields,
            "phase": phase,
            "seconds": round(done.seconds, 4),
            "since_start_s": round(done.since_start_s, 4),
        },
    )
    return done


@contextlib.contextmanager
def local_model(uri: str, sha256: str | None = None) -> Iterator[Path]:
    """The local path of ``uri``, held in use (never evicted from the artifact cache) while the
    context is open, its digest checked against ``sha256`` when pinned. The one place that talks
    to :mod:`modelserver.storage`."""
    if "://" not in uri and sha256 is None:
        yield Path(uri)
        return
    from modelserver import storage

    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(storage.hold(storage.fetch(uri, sha256=sha256)))
        except storage.FetchError:  # evicted between fetch and hold: fetch it again, once
            held = stack.enter_context(storage.hold(storage.fetch(uri, sha256=sha256)))
        yield held


# --- health and metadata -----------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def live(request: web.Request) -> web.Response:
    error = request.app[STATE].load_error
    if error is not None:
        return web.json_response({"live": False, "error": error}, status=500)
    return web.json_response({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {"ready": state.ready}
    if state.load_error is not None:
        body["error"] = state.load_error
    return web.json_response(body, status=200 if state.ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


async def model_metadata(request: web.Request) -> web.Response:
    refused = _unknown_model(request) or _not_ready(request)
    if refused is not None:
        return refused
    state = request.app[STATE]
    assert state.model is not None  # _not_ready checked it
    return web.json_response(
        {
            "name": request.app[CONFIG].name,
            "platform": state.model.platform,
            "inputs": [s.metadata() for s in state.model.inputs],
            "outputs": [s.metadata() for s in state.outputs],
        }
    )


async def phases(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].phases.to_dict())


async def model_ready(request: web.Request) -> web.Response:
    if (missing := _unknown_model(request)) is not None:
        return missing
    ready = request.app[STATE].ready
    body = {"name": request.app[CONFIG].name, "ready": ready}
    return web.json_response(body, status=200 if ready else 503)


async def v1_list(request: web.Request) -> web.Response:
    return web.json_response({"models": [request.app[CONFIG].name]})


# --- inference ---------------------------------------------------------------------------------


async def v2_infer(request: web.Request) -> web.Response:
    refused = _unknown_model(request) or _not_ready(request)
    if refused is not None:
        return refused
    state = request.app[STATE]
    model = state.model
    assert model is not None  # _not_ready checked it
    try:
        parsed = parse_infer_request(
            parse_json_object(await request.read()), model.inputs, state.outputs
        )
    except RequestError as exc:
        return json_error(400, str(exc))
    wanted = parsed.outputs or tuple(s.name for s in state.outputs)
    results = await _predict(request, model, parsed.inputs, frozenset(parsed.outputs))
    if isinstance(results, web.Response):
        return results
    return web.json_response(
        {
            "model_name": request.app[CONFIG].name,
            "id": parsed.request_id if parsed.request_id is not None else str(uuid.uuid4()),
            "outputs": [encode_tensor(name, results[name]) for name in wanted if name in results],
        }
    )


async def v1_predict(request: web.Request) -> web.Response:
    refused = _unknown_model(request) or _not_ready(request)
    if refused is not None:
        return refused
    state = request.app[STATE]
    model = state.model
    assert model is not None  # _not_ready checked it
    try:
        inputs = parse_v1_instances(parse_json_object(await request.read()), model.inputs)
    except RequestError as exc:
        return json_error(400, str(exc))
    # V1 has one answer per instance: the model's first output (scikit-learn: predict).
    first = state.outputs[0].name
    results = await _predict(request, model, inputs, frozenset({first}))
    if isinstance(results, web.Response):
        return results
    return web.json_response({"predictions": v1_predictions(results[first])})


async def _predict(
    request: web.Request, model: Model, inputs: dict[str, Any], wanted: frozenset[str]
) -> dict[str, Any] | web.Response:
    # In a thread: a long inference must not stop the health checks from answering.
    try:
        return await asyncio.to_thread(model.predict, inputs, wanted)
    except Exception as exc:  # the library's own error: the inputs fit the signature
        logger.exception(
            "inference failed", extra={"model": request.app[CONFIG].name, "error": str(exc)}
        )
        return json_error(500, f"inference failed: {exc}")


def _unknown_model(request: web.Request) -> web.Response | None:
    served = request.app[CONFIG].name
    asked = request.match_info["model"]
    if asked == served:
        return None
    return json_error(404, f"model {asked!r} not found: this server serves {served!r}")


def _not_ready(request: web.Request) -> web.Response | None:
    state = request.app[STATE]
    if state.model is not None:
        return None
    if state.load_error is not None:
        return json_error(503, state.load_error)
    name = request.app[CONFIG].name
    return json_error(
        503, f"model {name!r} is not loaded yet ({state.phase})", **{"Retry-After": RETRY_AFTER_S}
    )
