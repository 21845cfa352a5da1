"""Helpers for the example-server tests: serve an app in-process, or run a server as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def serve_in_process(
    app: web.Application,
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """Serve ``app`` on 127.0.0.1 at an ephemeral port; yield its base URL and a client session."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield str(server.make_url("")).rstrip("/"), session
    finally:
        await server.close()


def free_port() -> int:
    """A port that was free a moment ago (the OS does not hand it out again at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A model server running as a child process on ``base_url``; its stderr goes to ``log_path``."""

    proc: asyncio.subprocess.Process
    base_url: str
    log_path: Path
    started_at: float = field(default=0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then the exit status (within ``timeout_s``)."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


@asynccontextmanager
async def start_server_process(
    module: str, env: Mapping[str, str], log_path: Path
) -> AsyncIterator[ServerProcess]:
    """Start ``python -m module`` with ``env`` (plus PORT, a free port); kill it if still running."""
    port = free_port()
    full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", **env}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            cwd=ROOT,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    started = asyncio.get_running_loop().time()
    try:
        yield ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, started)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def poll_until_status(
    session: aiohttp.ClientSession,
    url: str,
    status: int,
    *,
    timeout_s: float,
    what: str = "",
) -> list[int | None]:
    """GET ``url`` every 20 ms until it answers ``status``; return every status seen on the way
    (``None``: connection refused). Fails the test after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen: list[int | None] = []
    while True:
        try:
            async with session.get(url) as resp:
                await resp.read()
                seen.append(resp.status)
                if resp.status == status:
                    return seen
        except aiohttp.ClientConnectionError:
            seen.append(None)
        if loop.time() > deadline:
            raise AssertionError(
                f"{url} did not answer {status} within {timeout_s}s (seen {seen[-5:]}) {what}"
            )
        await asyncio.sleep(0.02)
