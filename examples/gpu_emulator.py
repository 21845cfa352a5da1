"""A model server that behaves like one on a GPU, for load tests: few parallel slots, fixed work.

``python -m examples.gpu_emulator``. Each request waits for one of ``SLOTS`` slots (an
``asyncio.Semaphore``, as a GPU runs a fixed number of batches at once), holds it for the service
time, and answers JSON with how long it waited and worked. Beyond ``SLOTS`` requests, latency grows
with load: with SLOTS=1 and 100 ms of work, three requests at once finish after ~100, ~200 and
~300 ms. The server listens only after ``STARTUP_DELAY_SECONDS`` (standing for loading the model
onto the GPU), so even a TCP readiness probe sees the cold start.

Environment: ``PORT`` (8080), ``HOST`` (127.0.0.1), ``SERVICE_TIME_MS`` (100), ``SLOTS`` (1),
``STARTUP_DELAY_SECONDS`` (2), ``MODEL_NAME`` (empty: answer every model name),
``SHUTDOWN_TIMEOUT_SECONDS`` (30), ``CALL_COST_MS`` and ``ROW_COST_MS`` (0: the batch cost model,
below).

The batch cost model (``CALL_COST_MS``/``ROW_COST_MS`` not both 0): a call's work is the call's
cost plus the row's cost times its rows (V1 ``instances``, V2 the first input's first dimension),
as a GPU's time for a batch grows little with its size; with one slot that is what request
batching (docs/batching.md) is measured on.

Endpoints: ``GET|POST /``, ``POST /v1/models/<m>:predict`` (one prediction per instance: the
sum of its numbers) and ``POST /v2/models/<m>/infer`` (one output value per row; all work; ``?sleep=`` overrides the
service time, in ms or as a duration like ``250ms``/``1.5s``, as Knative's autoscale test image
takes it), ``GET /stream?tokens=N&interval_ms=M`` (N chunks, one every M ms, like an LLM's
tokens), ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /debug/concurrency`` (the most
concurrent requests ever seen, and now) and ``DELETE /debug/concurrency`` (reset the maxima).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from examples.serving import (
    ConfigError,
    ServerSettings,
    env_float,
    env_int,
    json_error,
    json_errors,
    run,
    serve_until_signal,
    server_settings_from_env,
)

MAX_SLEEP_MS = 600_000.0
"""The longest ``?sleep=`` accepted: 10 minutes."""
MAX_TOKENS = 100_000
MAX_INTERVAL_MS = 60_000.0

# A Go duration (``time.ParseDuration``): one or more <number><unit>, e.g. "1m30s", "1.5s", "250ms".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_sleep_ms(text: str) -> float:
    """``?sleep=`` as milliseconds: a bare number is ms (``100``), else a Go duration (``1s``).

    Raises ``ValueError`` saying what is accepted: ``parse_sleep_ms("1x")`` → "sleep = 1x: ...".
    """
    raw = text.strip()
    accepted = f"must be milliseconds (e.g. 100) or a duration (e.g. 100ms, 1.5s) within [0, {MAX_SLEEP_MS:g}] ms"
    value: float | None
    try:
        value = float(raw)
    except ValueError:
        value = _parse_go_duration_ms(raw)
    if value is None or not (math.isfinite(value) and 0 <= value <= MAX_SLEEP_MS):
        raise ValueError(f"sleep = {text}: {accepted}")
    return value


def _parse_go_duration_ms(text: str) -> float | None:
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    return total if text else None


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatorConfig:
    """How the emulated GPU model behaves, read from the environment by :func:`main`."""

    service_time_ms: float = 100.0
    """Work per request, in ms, unless the request's ``?sleep=`` says otherwise."""
    slots: int = 1
    """Requests served in parallel; later ones wait for a slot."""
    model_name: str = ""
    """The model name the V2 infer path answers to; empty answers any name."""
    call_cost_ms: float = 0.0
    """With ``row_cost_ms``, the batch cost model: a call's work is ``call_cost_ms`` plus
    ``row_cost_ms`` per row (V1 instances, V2 first dimension) instead of the service time."""
    row_cost_ms: float = 0.0

    @property
    def batch_costs(self) -> bool:
        return self.call_cost_ms > 0 or self.row_cost_ms > 0


class GpuState:
    """The emulator's counters: requests in flight (waiting or working) and busy slots, with the
    most of each ever seen. ``max_seen`` is what a CC=1 test reads: it must stay 1."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.semaphore = asyncio.Semaphore(slots)
        self.current = 0
        self.max_seen = 0
        self.busy_slots = 0
        self.max_busy_slots = 0
        self.served = 0
        self.draining = False

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        self.current += 1
        self.max_seen = max(self.max_seen, self.current)
        try:
            yield
        finally:
            self.current -= 1
            self.served += 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self.semaphore:
            self.busy_slots += 1
            self.max_busy_slots = max(self.max_busy_slots, self.busy_slots)
            try:
                yield
            finally:
                self.busy_slots -= 1

    def snapshot(self) -> dict[str, int]:
        return {
            "current": self.current,
            "max_seen": self.max_seen,
            "busy_slots": self.busy_slots,
            "max_busy_slots": self.max_busy_slots,
            "slots": self.slots,
            "served": self.served,
        }

    def reset(self) -> None:
        self.max_seen = self.current
        self.max_busy_slots = self.busy_slots


CONFIG = web.AppKey("gpu_config", EmulatorConfig)
STATE = web.AppKey("gpu_state", GpuState)


def make_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator's application (its GpuState is created here, on the running loop)."""
    config = config or EmulatorConfig()
    app = web.Application(middlewares=[json_errors])
    app[CONFIG] = config
    app[STATE] = GpuState(config.slots)
    app.router.add_route("GET", "/", work)
    app.router.add_route("POST", "/", work)
    app.router.add_post("/v2/models/{model}/infer", v2_infer)
    app.router.add_post("/v1/models/{model}", v1_predict)  # ({model} ends in ":predict")
    app.router.add_get("/stream", stream)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/debug/concurrency", concurrency)
    app.router.add_delete("/debug/concurrency", reset_concurrency)
    return app


async def _serve_one(request: web.Request, rows: int = 1) -> dict[str, float] | web.Response:
    """Wait for a slot and work; the timings, or a 400 for a bad ``?sleep=``. The work is the
    service time, or with the batch cost model the call's cost plus ``rows`` times the row's."""
    config = request.app[CONFIG]
    service_ms = config.service_time_ms
    if config.batch_costs:
        service_ms = config.call_cost_ms + config.row_cost_ms * rows
    if "sleep" in request.query:
        try:
            service_ms = parse_sleep_ms(request.query["sleep"])
        except ValueError as exc:
            return json_error(400, str(exc))
    await request.read()  # the body is the "tensor": read it all, as a real server would
    state = request.app[STATE]
    # time.monotonic(), not loop.time(): uvloop's clock moves in 1 ms steps, and the waits reported
    # here are what load tests plot.
    with state.in_flight():
        arrived = time.monotonic()
        async with state.slot():
            started = time.monotonic()
            await asyncio.sleep(service_ms / 1000)
        done = time.monotonic()
    return {
        "slot_wait_ms": round((started - arrived) * 1000, 3),
        "service_time_ms": service_ms,
        "elapsed_ms": round((done - arrived) * 1000, 3),
    }


async def work(request: web.Request) -> web.Response:
    timings = await _serve_one(request)
    if isinstance(timings, web.Response):
        return timings
    return web.json_response({**timings, "slots": request.app[CONFIG].slots})


async def v1_predict(request: web.Request) -> web.Response:
    """KServe V1: one prediction per instance (the sum of its numbers), after the work."""
    name = request.match_info["model"].removesuffix(":predict")
    served = request.app[CONFIG].model_name
    if served and name != served:
        return json_error(404, f"model {name!r} not found: this server serves {served!r}")
    doc = _json(await request.read())
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        return json_error(400, 'the body must be {"instances": [...]} with at least one instance')
    timings = await _serve_one(request, rows=len(instances))
    if isinstance(timings, web.Response):
        return timings
    return web.json_response({"predictions": [_sum(x) for x in instances]})


def _sum(value: object) -> float:
    if isinstance(value, list):
        return sum(_sum(v) for v in value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


async def v2_infer(request: web.Request) -> web.Response:
    served = request.app[CONFIG].model_name
    name = request.match_info["model"]
    if served and name != served:
        return json_error(404, f"model {name!r} not found: this server serves {served!r}")
    doc = _json(await request.read())
    rows = _rows(doc)
    timings = await _serve_one(request, rows=rows or 1)
    if isinstance(timings, web.Response):
        return timings
    request_id = doc.get("id") if isinstance(doc, dict) else None
    return web.json_response(
        {
            "model_name": name,
            "model_version": "1",
            **({"id": request_id} if isinstance(request_id, str) else {}),
            "outputs": [
                {
                    # one value per row of the input (a request without inputs: one)
                    "name": "output-0",
                    "shape": [rows] if rows else [1],
                    "datatype": "FP64",
                    "data": [timings["service_time_ms"]] * (rows or 1),
                }
            ],
            "parameters": timings,
        }
    )


def _json(body: bytes) -> object:
    # Any body is accepted (the emulator does no real inference): None when it is not JSON.
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _rows(doc: object) -> int:
    """A V2 request's rows: its first input's first dimension (0 when it has none)."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        return 0
    shape = inputs[0].get("shape")
    if isinstance(shape, list) and shape and isinstance(shape[0], int) and shape[0] > 0:
        return shape[0]
    return 0


async def stream(request: web.Request) -> web.StreamResponse:
    """N newline-delimited JSON chunks, one every ``interval_ms``, each flushed on its own
    (chunked transfer encoding), while holding a slot as a generating LLM holds its GPU."""
    try:
        tokens = _query_number(request, "tokens", 10, low=1, high=MAX_TOKENS, integer=True)
        interval_ms = _query_number(request, "interval_ms", 50.0, low=0, high=MAX_INTERVAL_MS)
    except ValueError as exc:
        return json_error(400, str(exc))
    state = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    with state.in_flight():
        arrived = time.monotonic()
        async with state.slot():
            started = time.monotonic()
            await response.prepare(request)
            for i in range(int(tokens)):
                if i > 0:
                    await asyncio.sleep(interval_ms / 1000)
                chunk = {
                    "index": i,
                    "token": f"tok{i}",
                    "ms_since_start": round((time.monotonic() - started) * 1000, 3),
                    "slot_wait_ms": round((started - arrived) * 1000, 3),
                }
                try:
                    await response.write(json.dumps(chunk).encode() + b"\n")
                except ConnectionResetError:  # the client went away: stop generating
                    return response
    await response.write_eof()
    return response


def _query_number(
    request: web.Request,
    key: str,
    default: float,
    *,
    low: float,
    high: float,
    integer: bool = False,
) -> float:
    raw = request.query.get(key)
    if raw is None:
        return default
    kind = "an integer" if integer else "a number"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ValueError(f"{key} = {raw}: must be {kind} in [{low:g}, {high:g}]") from None
    if not low <= value <= high:  # also refuses NaN
        raise ValueError(f"{key} = {raw}: must be {kind} in [{low:g}, {high:g}]")
    return value


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    # Listening at all means the model is loaded (the start-up delay comes before listening).
    draining = request.app[STATE].draining
    return web.json_response({"ready": not draining}, status=503 if draining else 200)


async def concurrency(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def reset_concurrency(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response(state.snapshot())


# --- composition root ------------------------------------------------------------------------


def settings_from_env(env: Mapping[str, str]) -> tuple[EmulatorConfig, ServerSettings]:
    """Read the environment; a bad value is a :class:`ConfigError` naming the variable."""
    name = env.get("MODEL_NAME", "").strip()
    if "/" in name:
        raise ConfigError(f"MODEL_NAME = {name}: must not contain '/'")
    config = EmulatorConfig(
        service_time_ms=env_float(env, "SERVICE_TIME_MS", 100.0, low=0.0, high=MAX_SLEEP_MS),
        slots=env_int(env, "SLOTS", 1, low=1, high=100_000),
        model_name=name,
        call_cost_ms=env_float(env, "CALL_COST_MS", 0.0, low=0.0, high=MAX_SLEEP_MS),
        row_cost_ms=env_float(env, "ROW_COST_MS", 0.0, low=0.0, high=MAX_SLEEP_MS),
    )
    server = server_settings_from_env(env, startup_delay_default=2.0)
    return config, server


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, server = settings_from_env(os.environ)
    except ConfigError as exc:
        print(f"gpu_emulator: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        # The app (and its Semaphore) is built on the running loop.
        app = make_app(config)

        def drain() -> None:
            app[STATE].draining = True

        await serve_until_signal(
            app,
            host=server.host,
            port=server.port,
            startup_delay_s=server.startup_delay_s,
            shutdown_timeout_s=server.shutdown_timeout_s,
            on_drain=drain,
            access_log=None,
        )

    return run(serve)


if __name__ == "__main__":
    sys.exit(main())
