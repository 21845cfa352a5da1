"""Running ``zeroserve up`` as a real process for end-to-end tests, and finding its children."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TAG_VAR = "ZEROSERVE_E2E_TAG"
_BANNER = re.compile(r"ingress (http://\S+)")
_STATUS = re.compile(r"--url (http://\S+/v1/revisions)")


@dataclass
class Runtime:
    """A running ``zeroserve up``: its URLs, its process, its log and the tag of its children."""

    url: str
    status_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    tag: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def revisions(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with session.get(self.status_url) as resp:
            data = await resp.json()
        return {row["revision"]: row for row in data["revisions"]}

    async def ready(self, session: aiohttp.ClientSession, revision: str) -> int:
        row = (await self.revisions(session)).get(revision, {})
        return int(row.get("ready") or 0)


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``ZEROSERVE_E2E_TAG=tag`` (the runtime's children)."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state != b"Z":
            pids.append(int(entry))
    return pids


def child_pids(tag: str, runtime_pid: int, marker: str) -> list[int]:
    """Tagged processes other than the runtime whose command line contains ``marker``."""
    out = []
    for pid in tagged_pids(tag):
        if pid == runtime_pid:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(pid)
    return out


async def wait_for(
    predicate: Callable[[], Any], *, within: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll an (async or sync) predicate until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def _start(
    spec_path: Path, log_path: Path, tag: str, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{TAG_VAR: tag, "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "zeroserve", "up", str(spec_path), "--port", "0"]
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [*cmd, "--status-port", "0", *extra],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.asynccontextmanager
async def zeroserve_up(
    spec_path: Path, log_path: Path, extra: Sequence[str] = (), banner_within_s: float = 30.0
) -> AsyncIterator[Runtime]:
    """Start ``python -m zeroserve up SPEC *extra`` on ephemeral ports; stop it with SIGTERM
    after."""
    tag = uuid.uuid4().hex
    proc = _start(spec_path, log_path, tag, extra)
    try:

        def banner() -> tuple[str, str] | None:
            text = log_path.read_text(errors="replace")
            if proc.poll() is not None:
                raise AssertionError(f"zeroserve up exited with {proc.returncode}:\n{text}")
            m, s = _BANNER.search(text), _STATUS.search(text)
            return (m.group(1), s.group(1)) if m and s else None

        url, status_url = await wait_for(banner, within=banner_within_s, what="the banner")
        yield Runtime(url=url, status_url=status_url, proc=proc, log_path=log_path, tag=tag)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Belt and braces: nothing tagged may outlive a test, whatever it asserted.
        for pid in tagged_pids(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def emulator_spec(
    *,
    name: str = "gpu",
    config: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    cc: int = 0,
    env: dict[str, str] | None = None,
) -> str:
    """A spec for one service of the GPU emulator with short windows (YAML text)."""
    cfg = {"scale-to-zero-grace-period": "2s", **(config or {})}
    ann = {"autoscaling.knative.dev/window": "6s", **(annotations or {})}
    envs = {"SERVICE_TIME_MS": "50", "SLOTS": "1000", "STARTUP_DELAY_SECONDS": "0.2", **(env or {})}
    lines = ["domain: example.com", "config:"]
    lines += [f'  {k}: "{v}"' for k, v in cfg.items()]
    lines += [
        "services:",
        f"  - name: {name}",
        "    revisions:",
        f"      - name: {name}-v1",
        f"        containerConcurrency: {cc}",
        "        timeoutSeconds: 30",
        "        annotations:",
    ]
    lines += [f'          {k}: "{v}"' for k, v in ann.items()]
    lines += [
        "        readinessProbe:",
        "          httpGet: {path: /v2/health/ready}",
        "        command: [python, -m, examples.gpu_emulator]",
        "        env:",
    ]
    lines += [f'          {k}: "{v}"' for k, v in envs.items()]
    return "\n".join(lines) + "\n"
