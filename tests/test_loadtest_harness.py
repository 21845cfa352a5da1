"""The hop benchmarks' clients: the open-loop client (``loadtests.harness.open_loop``) must time
every scheduled request once, and only those, or its percentiles mean nothing; hey's CSV must be
read to the precision it was written in, without the dial."""

from __future__ import annotations

import gc
import stat
from pathlib import Path

import pytest
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


_CSV_HEAD = (
    "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset"
)


def _fake_hey(tmp_path: Path, rows: list[str]) -> str:
    """An executable that prints hey's CSV (the columns of hey 0.1.5's ``-o csv``) and records
    its arguments: the parsing and the command line are ours, the timing is not under test."""
    args = tmp_path / "args"
    script = tmp_path / "hey"
    body = "\n".join([_CSV_HEAD, *rows])
    script.write_text(f'#!/bin/sh\necho "$@" > {args}\ncat <<"EOF"\n{body}\nEOF\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_hey_reads_microsecond_times_without_the_dial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        "0.0012345,0.0002000,0.0000000,0.0000100,0.0010000,0.0000100,200,0.0010000",
        "0.0003210,0.0000000,0.0000000,0.0000100,0.0003000,0.0000100,200,0.0110000",
    ]
    monkeypatch.setenv("ZEROSERVE_HEY", _fake_hey(tmp_path, rows))
    monkeypatch.setattr(harness, "HEY_STEPS_MS", set())
    ms = harness.hey(8012, rate=1000, seconds=0.002, workers=2, host="m.test")
    assert ms == pytest.approx([1.0345, 0.321])
    assert len(harness.HEY_STEPS_MS) == 1
    assert min(harness.HEY_STEPS_MS) == pytest.approx(0.0001)
    args = (tmp_path / "args").read_text().split()
    assert args[:6] == ["-z", "0.002s", "-c", "2", "-q", "500"]
    assert args[6:8] == ["-host", "m.test"]
    assert args[-1] == "http://127.0.0.1:8012/"


def test_hey_refuses_answers_other_than_200(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = ["0.0010,0.0000,0.0000,0.0000,0.0010,0.0000,503,0.0010"]
    monkeypatch.setenv("ZEROSERVE_HEY", _fake_hey(tmp_path, rows))
    with pytest.raises(RuntimeError, match="1 non-200 responses"):
        harness.hey(8012, rate=1000, seconds=0.001, workers=1)


@pytest.mark.parametrize(
    ("written", "step_ms"), [("0.0012", 0.1), ("0.0012345", 0.0001), ("1", 1000.0)]
)
def test_hey_step_follows_the_decimals_written(written: str, step_ms: float) -> None:
    assert harness.hey_step_ms(written) == pytest.approx(step_ms)


def test_hey_binary_prefers_the_environment_then_the_build_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = tmp_path / "hey-v0.1.5-us" / "hey"
    monkeypatch.setattr(harness, "_HEY_BUILT", built)
    monkeypatch.delenv("ZEROSERVE_HEY", raising=False)
    assert harness.hey_binary() == "hey"  # nothing built
    built.parent.mkdir()
    built.write_text("")
    assert harness.hey_binary() == "hey"  # not executable
    built.chmod(0o755)
    assert harness.hey_binary() == str(built)
    monkeypatch.setenv("ZEROSERVE_HEY", "/opt/hey")
    assert harness.hey_binary() == "/opt/hey"
