"""Child processes that never outlive the runtime: own process group, and PR_SET_PDEATHSIG on Linux."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence

_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # SIGKILL when the parent dies, even if the parent itself was killed with SIGKILL. The child
    # also gets its own process group (start_new_session) so Ctrl-C in a terminal reaches only the
    # runtime, which then stops replicas in order (queue-proxy drain first).
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def resolve_command(command: Sequence[str]) -> list[str]:
    """``python``/``python3`` as the first word means this interpreter (the runtime's venv)."""
    cmd = list(command)
    if cmd and cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    return cmd


async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    stdout: int | None = None,
) -> asyncio.subprocess.Process:
    """Start a child in its own session that is SIGKILLed if this process dies."""
    full_env = dict(os.environ)
    full_env.update(env)
    return await asyncio.create_subprocess_exec(
        *resolve_command(command),
        env=full_env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=None if stdout is None else asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Send ``sig`` to the child's whole process group (its own children included)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> int:
    """SIGTERM the group, SIGKILL it after ``grace_s``; returns the exit code."""
    if proc.returncode is not None:
        return proc.returncode
    signal_group(proc, signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        signal_group(proc, signal.SIGKILL)
        return await proc.wait()
