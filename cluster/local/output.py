"""A child's output, re-emitted line by line in the runtime's log format: the model servers' lines.

``zeroserve up`` runs model servers that log in their own formats. Their stdout and stderr are
read from pipes and each line is written again, as docker compose does:

* ``text``: ``<pod> | <line>``, stdout lines on the runtime's stdout, stderr lines on its stderr;
* ``json``: one JSON object per line on the runtime's stderr (where its own JSON log records
  go), in :class:`metrics.logs.JsonFormatter`'s shape: ``{"ts", "level": "info", "logger":
  "model", "msg": <line>, "pod", "revision", "stream": "stdout"|"stderr"}``.

A line longer than :data:`MAX_LINE` bytes is cut into pieces of that size (a model server that
prints a large array must not stop the relay, nor grow its buffer without bound); bytes that are
not UTF-8 are replaced. A last line without a newline is still emitted at EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TextIO

from cluster.local.process import Spawned, spawn_process

LogFormat = Literal["text", "json"]
Stream = Literal["stdout", "stderr"]

MAX_LINE = 64 * 1024
"""The longest line emitted as one; a longer one is cut into pieces of this many bytes."""
CHUNK = 64 * 1024
DRAIN_S = 1.0
"""After the child exits, how long its last output may take to reach the relay (a grandchild
that keeps the pipe open does not hold :meth:`RelayedChild.wait` longer than this)."""


def format_line(
    line: str,
    *,
    pod: str,
    revision: str,
    stream: Stream,
    fmt: LogFormat,
    now: float,
) -> str:
    """One output line of a child as the runtime writes it (without the newline)."""
    if fmt == "json":
        record = {
            "ts": round(now, 3),
            "level": "info",
            "logger": "model",
            "msg": line,
            "pod": pod,
            "revision": revision,
            "stream": stream,
        }
        return json.dumps(record, ensure_ascii=False)
    return f"{pod} | {line}"


async def relay_lines(reader: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    """Call ``emit`` with each line of ``reader`` (no newline) until EOF; see the module doc."""
    pending = b""
    while chunk := await reader.read(CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            _emit_cut(raw, emit)
        while len(pending) >= MAX_LINE:
            emit(pending[:MAX_LINE].decode(errors="replace"))
            pending = pending[MAX_LINE:]
    if pending:
        _emit_cut(pending, emit)


def _emit_cut(raw: bytes, emit: Callable[[str], None]) -> None:
    raw = raw.removesuffix(b"\r")
    for start in range(0, max(len(raw), 1), MAX_LINE):
        emit(raw[start : start + MAX_LINE].decode(errors="replace"))


def line_writer(
    *, pod: str, revision: str, stream: Stream, fmt: LogFormat, out: TextIO
) -> Callable[[str], None]:
    """An ``emit`` for :func:`relay_lines` that writes each line to ``out`` in ``fmt``."""

    def emit(line: str) -> None:
        text = format_line(
            line, pod=pod, revision=revision, stream=stream, fmt=fmt, now=time.time()
        )
        out.write(text + "\n")
        out.flush()

    return emit


class RelayedChild(Spawned):
    """A spawned child whose stdout and stderr are relayed (a :class:`cluster.local.process.Child`).

    :meth:`wait` returns once the child has exited and its relays have reached EOF (or
    :data:`DRAIN_S` later), so a crash's last lines are written before the exit is reported.
    The pipes are the relay's own (not asyncio's ``PIPE``), so that a grandchild holding one open
    delays neither the exit nor :meth:`wait`.
    """

    def __init__(self, proc: asyncio.subprocess.Process, relays: list[asyncio.Task[None]]) -> None:
        super().__init__(proc)
        self.relays = relays

    async def wait(self) -> int:
        code = await self.proc.wait()
        await drain_relays(self.relays)
        return code


async def drain_relays(relays: list[asyncio.Task[None]]) -> None:
    """After a child exited: let its relays emit what is left in the pipes, for at most
    ``DRAIN_S`` (a grandchild may hold a pipe open), then stop them."""
    if not relays:
        return
    _, pending = await asyncio.wait(relays, timeout=DRAIN_S)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _relay_pipe(fd: int, emit: Callable[[str], None]) -> None:
    """Read the pipe ``fd`` (owned from now on) to EOF, emitting its lines; closed at the end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    try:
        pipe = os.fdopen(fd, "rb", buffering=0)
    except OSError:
        os.close(fd)
        raise
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        await relay_lines(reader, emit)
    finally:
        transport.close()


async def spawn_relayed(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    pod: str,
    revision: str,
    fmt: LogFormat,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    cwd: str | None = None,
) -> RelayedChild:
    """:func:`cluster.local.process.spawn_process` with each output line re-emitted in ``fmt``.

    ``stdout``/``stderr`` are where the lines go (default: this process's); in ``json`` both
    streams go to ``stderr``, beside the runtime's own JSON records.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await spawn_process(command, env, cwd=cwd, stdout=out_w, stderr=err_w)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:  # the child has its copies; EOF comes when the child (and its children) close them
        os.close(out_w)
        os.close(err_w)
    targets: tuple[tuple[int, Stream, TextIO], ...] = (
        (out_r, "stdout", err if fmt == "json" else out),
        (err_r, "stderr", err),
    )
    relays = [
        asyncio.create_task(
            _relay_pipe(
                fd, line_writer(pod=pod, revision=revision, stream=stream, fmt=fmt, out=target)
            ),
            name=f"output-{pod}-{stream}",
        )
        for fd, stream, target in targets
    ]
    return RelayedChild(proc, relays)
