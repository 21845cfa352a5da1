"""cluster.local.output: a child's lines re-emitted with its pod name, or as JSON records."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys

import pytest

from cluster.local.output import (
    MAX_LINE,
    format_line,
    relay_lines,
    spawn_relayed,
)

SCRIPT = """
import sys
print("hello from stdout")
print("a warning", file=sys.stderr)
sys.stdout.write("no newline at the end")
"""


def test_format_line_text_is_compose_style() -> None:
    line = format_line("ready", pod="iris-v1-3", revision="default/iris-v1", stream="stdout",
                       fmt="text", now=0.0)  # fmt: skip
    assert line == "iris-v1-3 | ready"


def test_format_line_json_is_one_record_with_the_pod() -> None:
    line = format_line(
        'said "hi" ✓', pod="iris-v1-3", revision="default/iris-v1", stream="stderr",
        fmt="json", now=12.3456,
    )  # fmt: skip
    assert json.loads(line) == {
        "ts": 12.346,
        "level": "info",
        "logger": "model",
        "msg": 'said "hi" ✓',
        "pod": "iris-v1-3",
        "revision": "default/iris-v1",
        "stream": "stderr",
    }


async def _relay(data: bytes) -> list[str]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    lines: list[str] = []
    await relay_lines(reader, lines.append)
    return lines


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        pytest.param(b"a\nb\n", ["a", "b"], id="two-lines"),
        pytest.param(b"a\r\nb", ["a", "b"], id="crlf-and-last-line-without-newline"),
        pytest.param(b"\n\n", ["", ""], id="empty-lines-kept"),
        pytest.param(b"\xffok\n", ["\ufffdok"], id="not-utf8-replaced"),
        pytest.param(b"", [], id="nothing"),
    ],
)
async def test_relay_lines(data: bytes, lines: list[str]) -> None:
    assert await _relay(data) == lines


async def test_a_long_line_is_cut_not_lost() -> None:
    lines = await _relay(b"x" * (2 * MAX_LINE + 5) + b"\nend\n")
    assert [len(line) for line in lines] == [MAX_LINE, MAX_LINE, 5, 3]
    assert lines[-1] == "end"


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_real_child_s_lines_carry_its_pod_name(fmt: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    child = await spawn_relayed(
        [sys.executable, "-c", SCRIPT],
        {},
        pod="iris-v1-7",
        revision="default/iris-v1",
        fmt="json" if fmt == "json" else "text",
        stdout=out,
        stderr=err,
    )
    assert await asyncio.wait_for(child.wait(), 10) == 0
    # wait() returns after the relays have written the child's last lines.
    if fmt == "text":
        assert out.getvalue().splitlines() == [
            "iris-v1-7 | hello from stdout",
            "iris-v1-7 | no newline at the end",
        ]
        assert err.getvalue().splitlines() == ["iris-v1-7 | a warning"]
    else:
        assert out.getvalue() == ""  # JSON records all go to the log stream
        records = [json.loads(line) for line in err.getvalue().splitlines()]
        assert sorted((r["stream"], r["msg"]) for r in records) == [
            ("stderr", "a warning"),
            ("stdout", "hello from stdout"),
            ("stdout", "no newline at the end"),
        ]
        assert {(r["pod"], r["revision"], r["logger"]) for r in records} == {
            ("iris-v1-7", "default/iris-v1", "model")
        }


async def test_wait_does_not_hang_on_a_grandchild_holding_the_pipe() -> None:
    # The child exits at once; its grandchild keeps stdout open for 30 s.
    script = (
        "import subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); print('bye')"
    )
    out = io.StringIO()
    child = await spawn_relayed(
        [sys.executable, "-c", script],
        {},
        pod="p-1",
        revision="default/p",
        fmt="text",
        stdout=out,
        stderr=io.StringIO(),
    )
    try:
        assert await asyncio.wait_for(child.wait(), 10) == 0
        assert out.getvalue() == "p-1 | bye\n"
        assert all(task.done() for task in child.relays)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the grandchild is in the child's process group
