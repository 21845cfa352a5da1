"""The hop benchmarks' open-loop client (``loadtests.harness.open_loop``): it must time every
scheduled request once, and only those, or its percentiles mean nothing."""

from __future__ import annotations

import gc

from aiohttp import web

from loadtests import harness
from tests.dataplane_fixtures import run_app


def _app(status: int, seen: list[str]) -> web.Application:
    async def root(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Host", ""))
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_get("/", root)
    return app


async def test_open_loop_times_each_scheduled_request_after_one_untimed_per_connection() -> None:
    seen: list[str] = []
    # what the meter reads: the requests the server has answered (a target's CPU, in the bench)
    meter = harness.Meter(lambda: float(len(seen)))
    async with run_app(_app(200, seen)) as (_, port):
        latencies = await harness.open_loop(
            port, rate=200, seconds=0.25, conns=4, host="m.test", meter=meter
        )
    assert len(latencies) == 50
    assert meter.total == 50  # read after the untimed requests and once every answer was in
    assert all(0 <= v < 1 for v in latencies)
    assert len(seen) == 50 + 4  # the timed requests, and one per connection before them
    assert set(seen) == {"m.test"}
    assert gc.isenabled()  # the collector is off only while the requests are timed


async def test_open_loop_marks_answers_other_than_200() -> None:
    seen: list[str] = []
    bad: list[bytes] = []
    async with run_app(_app(503, seen)) as (_, port):
        latencies = await harness.open_loop(port, rate=200, seconds=0.1, conns=2, bad=bad)
    assert latencies == [-1.0] * 20
    assert bad
    assert bad[0].startswith(b"HTTP/1.1 503")
    assert gc.isenabled()
