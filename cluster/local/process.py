"""Child processes that never outlive the runtime: own process group, and PR_SET_PDEATHSIG on Linux.

A child is either spawned (fork + exec of a command, :func:`spawn`) or forked from a warm fork
server (:mod:`cluster.local.forkserver`); the supervisor handles both through :class:`Child`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def die_with_parent() -> None:  # pragma: no cover - runs in a child right after fork
    """SIGKILL this process when its parent dies, even if the parent was killed with SIGKILL.

    Children also get their own process group (a new session) so Ctrl-C in a terminal reaches
    only the runtime, which then stops replicas in order (queue-proxy drain first).
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Child(Protocol):
    """A child process the supervisor can wait for and signal (its whole process group)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit code (negative: killed by that signal)."""
        ...

    async def wait(self) -> int: ...

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group, unless it has exited already."""
        ...


class Spawned:
    """A :class:`Child` started by :func:`spawn` (an ``asyncio.subprocess.Process``)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal_group(self, sig: int) -> None:
        # This process reaps the child, so its pid (the group id) cannot be reused before
        # returncode is set.
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def resolve_command(command: Sequence[str]) -> list[str]:
    """``python``/``python3`` as the first word means this interpreter (the runtime's venv)."""
    cmd = list(command)
    if cmd and cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    return cmd


async def spawn_process(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    stdin: int | None = asyncio.subprocess.DEVNULL,
    stdout: int | None = None,
    stderr: int | None = None,
    pass_fds: Sequence[int] = (),
) -> asyncio.subprocess.Process:
    """Start a child in its own session that is SIGKILLed if this process dies. It inherits no
    file descriptor but its standard streams and ``pass_fds``."""
    full_env = dict(os.environ)
    full_env.update(env)
    return await asyncio.create_subprocess_exec(
        *resolve_command(command),
        env=full_env,
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=die_with_parent,
        pass_fds=tuple(pass_fds),
    )


async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    stdout: int | None = None,
    pass_fds: Sequence[int] = (),
) -> Spawned:
    """:func:`spawn_process` with stdin from /dev/null and stderr where stdout goes."""
    proc = await spawn_process(
        command,
        env,
        cwd=cwd,
        stdout=stdout,
        stderr=None if stdout is None else asyncio.subprocess.STDOUT,
        pass_fds=pass_fds,
    )
    return Spawned(proc)


async def terminate(child: Child, grace_s: float) -> int:
    """SIGTERM the group, SIGKILL it after ``grace_s``; returns the exit code."""
    if child.returncode is not None:
        return child.returncode
    child.signal_group(signal.SIGTERM)
    try:
        return await asyncio.wait_for(child.wait(), grace_s)
    except TimeoutError:
        child.signal_group(signal.SIGKILL)
        return await child.wait()
