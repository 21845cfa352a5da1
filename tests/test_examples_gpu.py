"""The GPU emulator: slots that serialise work, ``?sleep=``, streaming, counters, start-up, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from examples.gpu_emulator import (
    EmulatorConfig,
    make_app,
    parse_sleep_ms,
    settings_from_env,
)
from examples.serving import ConfigError, ServerSettings
from tests.examples_support import poll_until_status, serve_in_process, start_server_process

Client = tuple[str, aiohttp.ClientSession]


@asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[Client]:
    async with serve_in_process(make_app(EmulatorConfig(**config))) as client:
        yield client


async def get_json(client: Client, path: str, method: str = "GET", **kw: Any) -> tuple[int, Any]:
    base, session = client
    async with session.request(method, base + path, **kw) as resp:
        return resp.status, await resp.json()


async def timed_get(client: Client, path: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    status, body = await get_json(client, path)
    assert status == 200, body
    return time.monotonic() - started, body


# --- ?sleep= ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        pytest.param("100", 100.0, id="bare-ms"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("2.5", 2.5, id="fractional-ms"),
        pytest.param(" 100 ", 100.0, id="spaces"),
        pytest.param("100ms", 100.0, id="ms-unit"),
        pytest.param("1s", 1000.0, id="seconds"),
        pytest.param("1.5s", 1500.0, id="fractional-seconds"),
        pytest.param("1m30s", 90_000.0, id="go-compound"),
        pytest.param("250us", 0.25, id="micro"),
        pytest.param("500µs", 0.5, id="micro-sign"),
        pytest.param("2000000ns", 2.0, id="nano"),
        pytest.param("10m", 600_000.0, id="the-maximum"),
    ],
)
def test_parse_sleep_ms(text: str, ms: float) -> None:
    assert parse_sleep_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="word"),
        pytest.param("-5", id="negative"),
        pytest.param("-5ms", id="negative-duration"),
        pytest.param("1x", id="unknown-unit"),
        pytest.param("ms", id="unit-only"),
        pytest.param("1s2", id="trailing-number"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="infinite"),
        pytest.param("11m", id="over-the-maximum"),
    ],
)
def test_parse_sleep_ms_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=f"sleep = {text}: must be milliseconds"):
        parse_sleep_ms(text)


async def test_sleep_query_param_sets_the_service_time() -> None:
    async with emulator(service_time_ms=1000) as client:
        _, body = await timed_get(client, "/?sleep=30ms")
        assert body["service_time_ms"] == 30.0
        _, body = await timed_get(client, "/?sleep=0")
        assert body["service_time_ms"] == 0.0
        status, body = await get_json(client, "/?sleep=20", method="POST", data=b"tensor bytes")
        assert (status, body["service_time_ms"]) == (200, 20.0)
        status, body = await get_json(client, "/?sleep=soon")
        assert status == 400
        assert body["error"].startswith("sleep = soon:")


async def test_default_service_time() -> None:
    async with emulator(service_time_ms=40) as client:
        elapsed, body = await timed_get(client, "/")
    assert body["service_time_ms"] == 40.0
    assert body["elapsed_ms"] >= 39.0
    assert elapsed >= 0.039


# --- slots and the concurrency counter --------------------------------------------------------


async def test_one_slot_serialises_concurrent_requests() -> None:
    async with emulator(service_time_ms=100, slots=1) as client:
        results = await asyncio.gather(*(timed_get(client, "/") for _ in range(3)))
        _, counters = await get_json(client, "/debug/concurrency")
    # All three were in the server at once, but only one ever held the slot.
    assert counters["max_seen"] == 3
    assert counters["max_busy_slots"] == 1
    assert counters["current"] == 0
    assert counters["served"] == 3
    waits = sorted(body["slot_wait_ms"] for _, body in results)
    assert waits[0] < 50
    assert waits[1] >= 90
    assert waits[2] >= 180
    assert max(elapsed for elapsed, _ in results) >= 0.28


async def test_enough_slots_run_requests_in_parallel() -> None:
    async with emulator(service_time_ms=100, slots=3) as client:
        results = await asyncio.gather(*(timed_get(client, "/") for _ in range(3)))
        _, counters = await get_json(client, "/debug/concurrency")
    assert counters["max_busy_slots"] == 3
    assert all(body["slot_wait_ms"] < 50 for _, body in results)


async def test_sequential_requests_are_never_concurrent() -> None:
    # What a CC=1 test reads: one request at a time in front → max_seen stays 1.
    async with emulator(service_time_ms=10, slots=4) as client:
        for _ in range(3):
            await timed_get(client, "/")
        _, counters = await get_json(client, "/debug/concurrency")
        assert (counters["max_seen"], counters["served"]) == (1, 3)
        await asyncio.gather(timed_get(client, "/"), timed_get(client, "/"))
        _, counters = await get_json(client, "/debug/concurrency")
        assert counters["max_seen"] == 2
        status, counters = await get_json(client, "/debug/concurrency", method="DELETE")
        assert (status, counters["max_seen"], counters["max_busy_slots"]) == (200, 0, 0)


async def test_counters_see_a_request_in_flight() -> None:
    async with emulator(service_time_ms=10_000, slots=1) as client:
        task = asyncio.create_task(timed_get(client, "/?sleep=300"))
        deadline = time.monotonic() + 5
        while True:
            _, counters = await get_json(client, "/debug/concurrency")
            if counters["current"] == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert (counters["current"], counters["busy_slots"]) == (1, 1)
        _, body = await task
        assert body["service_time_ms"] == 300.0


# --- V2 and health ----------------------------------------------------------------------------


async def test_v2_infer_answers_any_model_by_default() -> None:
    async with emulator(service_time_ms=5) as client:
        status, body = await get_json(
            client,
            "/v2/models/llama/infer?sleep=15",
            method="POST",
            json={"id": "r1", "inputs": []},
        )
    assert status == 200
    assert body["model_name"] == "llama"
    assert body["id"] == "r1"
    assert body["outputs"][0]["name"] == "output-0"
    assert body["parameters"]["service_time_ms"] == 15.0
    assert "slot_wait_ms" in body["parameters"]


async def test_v2_infer_with_model_name_refuses_others() -> None:
    async with emulator(service_time_ms=5, model_name="gpt") as client:
        status, body = await get_json(client, "/v2/models/gpt/infer", method="POST", data=b"x")
        assert status == 200
        assert "id" not in body
        status, body = await get_json(client, "/v2/models/bert/infer", method="POST", data=b"{}")
        assert status == 404
        assert "'bert' not found" in body["error"]


async def test_health_and_refusals() -> None:
    async with emulator() as client:
        assert await get_json(client, "/v2/health/live") == (200, {"live": True})
        assert await get_json(client, "/v2/health/ready") == (200, {"ready": True})
        status, body = await get_json(client, "/", method="PUT")
        assert status == 405
        assert "method PUT is not allowed" in body["error"]
        assert await get_json(client, "/nothing") == (404, {"error": "no route for /nothing"})


# --- streaming --------------------------------------------------------------------------------


async def test_stream_chunks_arrive_one_by_one() -> None:
    async with emulator() as (base, session):
        started = time.monotonic()
        arrivals: list[float] = []
        chunks: list[dict[str, Any]] = []
        async with session.get(base + "/stream?tokens=5&interval_ms=150") as resp:
            assert resp.status == 200
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            async for line in resp.content:
                arrivals.append(time.monotonic() - started)
                chunks.append(json.loads(line))
    assert [c["index"] for c in chunks] == [0, 1, 2, 3, 4]
    assert [c["token"] for c in chunks] == ["tok0", "tok1", "tok2", "tok3", "tok4"]
    # The last chunk was sent ~600 ms in; the first one had arrived long before that.
    last_sent_s = chunks[-1]["ms_since_start"] / 1000
    assert last_sent_s >= 0.55
    assert arrivals[0] < last_sent_s - 0.3
    assert arrivals[-1] - arrivals[0] >= 0.45


async def test_a_stream_holds_its_slot() -> None:
    async with emulator(service_time_ms=10, slots=1) as (base, session):
        async with session.get(base + "/stream?tokens=3&interval_ms=100") as resp:
            await resp.content.readline()  # the stream has the slot now
            other = asyncio.create_task(timed_get((base, session), "/"))
            await resp.read()
        _, body = await other
    assert body["slot_wait_ms"] >= 150


@pytest.mark.parametrize(
    ("query", "words"),
    [
        pytest.param("tokens=0", "tokens = 0: must be an integer", id="zero-tokens"),
        pytest.param("tokens=many", "tokens = many", id="word-tokens"),
        pytest.param("tokens=1.5", "tokens = 1.5", id="fractional-tokens"),
        pytest.param(
            "interval_ms=-1", "interval_ms = -1: must be a number", id="negative-interval"
        ),
        pytest.param("interval_ms=nan", "interval_ms = nan", id="nan-interval"),
    ],
)
async def test_stream_refuses_bad_parameters(query: str, words: str) -> None:
    async with emulator() as client:
        status, body = await get_json(client, "/stream?" + query)
    assert status == 400
    assert body["error"].startswith(words)


# --- configuration and the real process --------------------------------------------------------


def test_settings_from_env() -> None:
    assert settings_from_env({}) == (EmulatorConfig(), ServerSettings(startup_delay_s=2.0))
    config, server = settings_from_env(
        {"SERVICE_TIME_MS": "250", "SLOTS": "4", "STARTUP_DELAY_SECONDS": "0", "PORT": "9000"}
    )
    assert (config.service_time_ms, config.slots) == (250.0, 4)
    assert (server.startup_delay_s, server.port) == (0.0, 9000)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        pytest.param({"SLOTS": "0"}, "SLOTS = 0", id="no-slots"),
        pytest.param({"SLOTS": "two"}, "SLOTS = two", id="word-slots"),
        pytest.param({"SERVICE_TIME_MS": "-3"}, "SERVICE_TIME_MS = -3", id="negative-service"),
        pytest.param({"STARTUP_DELAY_SECONDS": "x"}, "STARTUP_DELAY_SECONDS = x", id="word-delay"),
    ],
)
def test_settings_from_env_refuses(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        settings_from_env(env)


@pytest.mark.e2e
async def test_gpu_emulator_process(tmp_path: Path) -> None:
    env = {"STARTUP_DELAY_SECONDS": "1", "SLOTS": "1", "SERVICE_TIME_MS": "20"}
    async with (
        start_server_process("examples.gpu_emulator", env, tmp_path / "gpu.log") as server,
        aiohttp.ClientSession() as session,
    ):
        url = server.base_url
        # Not even listening while the "model loads".
        seen = await poll_until_status(
            session, url + "/v2/health/ready", 200, timeout_s=15, what=server.log()
        )
        loaded_after = asyncio.get_running_loop().time() - server.started_at
        assert seen[0] is None, seen
        assert loaded_after >= 1.0

        # SIGTERM with a request in flight: it finishes, then the process exits 0.
        async def slow() -> tuple[int, Any]:
            async with session.get(url + "/?sleep=600ms") as resp:
                return resp.status, await resp.json()

        in_flight = asyncio.create_task(slow())
        deadline = time.monotonic() + 5
        while True:
            status, counters = await get_json((url, session), "/debug/concurrency")
            if counters["current"] == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert counters["current"] == 1
        assert await server.terminate() == 0, server.log()
        status, body = await in_flight
        assert (status, body["service_time_ms"]) == (200, 600.0)
    assert "shutdown signal received" in server.log()


@pytest.mark.e2e
async def test_sigterm_while_loading_exits_at_once(tmp_path: Path) -> None:
    env = {"STARTUP_DELAY_SECONDS": "60"}
    async with start_server_process("examples.gpu_emulator", env, tmp_path / "gpu.log") as server:
        deadline = time.monotonic() + 10
        while "before listening" not in server.log():
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.02)
        started = time.monotonic()
        assert await server.terminate() == 0, server.log()
        assert time.monotonic() - started < 5
    assert "listening on" not in server.log()


# --- the batch cost model ---------------------------------------------------------------------


async def test_batch_cost_model_charges_a_call_plus_each_row() -> None:
    async with emulator(call_cost_ms=5, row_cost_ms=2) as client:
        v2 = {"inputs": [{"name": "x", "shape": [4, 2], "datatype": "FP32", "data": [0] * 8}]}
        status, body = await get_json(client, "/v2/models/m/infer", method="POST", json=v2)
        assert status == 200
        assert body["parameters"]["service_time_ms"] == 13.0  # 5 + 4 x 2
        assert body["outputs"][0]["shape"] == [4]
        assert body["outputs"][0]["data"] == [13.0] * 4
        v1 = {"instances": [[1, 2], [3, 4.5], [0]]}
        status, body = await get_json(client, "/v1/models/m:predict", method="POST", json=v1)
        assert (status, body) == (200, {"predictions": [3.0, 7.5, 0.0]})
        status, body = await get_json(
            client, "/v1/models/m:predict", method="POST", json={"instances": []}
        )
        assert status == 400
        assert "at least one instance" in body["error"]
