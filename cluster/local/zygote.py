"""The runtime's side of the zygote (:mod:`cluster.local.zygote_main`): a warm child per replica.

The zygote is one long-lived process that has imported an entry point (the queue-proxy's
``main``); each :meth:`Zygote.fork` makes it fork a child that runs the entry point with the
replica's environment, skipping the interpreter start and the imports (~300 ms of CPU for the
queue-proxy) on the cold-start path.

Protocol, one JSON object per line. To the zygote (its stdin)::

    {"op": "fork", "id": 1, "name": "gpu-v1-3", "env": {...}, "notify_env": "QUEUE_READY_FD",
     "fds": ["QUEUE_SERVING_FD", ...]}                # optional: descriptors the child inherits
    {"op": "signal", "pid": 4242, "sig": 15}         # to the child's process group

From the zygote (its stdout)::

    {"event": "hello", "pid": 4200, "import_s": 0.31}  # once, the entry point is imported
                                                       # (+ "unsafe": "" or why, with preload)
    {"event": "forked", "id": 1, "pid": 4242}          # or "fork-failed" with "error"
    {"event": "exit", "pid": 4242, "code": 0}          # reaped (negative code: killed by signal)

and from a child, on the same pipe (its file descriptor is in the child's ``notify_env``)::

    {"event": "ready", "pid": 4242}                    # sd_notify's READY=1

A fork with ``fds`` is preceded by one datagram on a Unix socket pair (``SOCK_SEQPACKET``; the
zygote's end is named by ``ZEROSERVE_ZYGOTE_FDS`` in its environment) that carries the request's
id and, as ``SCM_RIGHTS``, the descriptors in that order: the child finds each one's number in
the environment variable of that name (the local supervisor hands a queue-proxy the listening
sockets it opened itself this way, so that their ports are never free in between). A zygote
started with ``preload`` (a model server's parent, :mod:`cluster.local.model_zygote`) has no
entry point: each fork names a ``module`` run as ``python -m`` would, with ``argv``, the whole
environment (``replace_env``) and its own stdout and stderr (``stdio``: they lead the datagram).

The zygote reaps its children, so signals go through it: it signals only a child it has not
reaped, whose pid cannot have been reused. If the zygote dies, its children die with it
(PR_SET_PDEATHSIG): each is reported exited with code -9, and the next fork starts a new zygote.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.local.process import spawn_process

log = logging.getLogger("zeroserve.zygote")


class ForkedChild:
    """A :class:`cluster.local.process.Child` forked by the zygote."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self._pid = pid
        self._code: int | None = None
        self._exited = asyncio.Event()
        self.ready = asyncio.Event()
        """Set when the child wrote its ``ready`` line."""

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._code

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._code is not None
        return self._code

    def signal_group(self, sig: int) -> None:
        if self._code is None:
            self._zygote.signal(self._pid, sig)

    def _exit(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._exited.set()


class Zygote:
    """Starts the zygote process on demand and forks children from it; see the module doc."""

    def __init__(
        self,
        entry: str,
        *,
        quiet: bool = False,
        python: str = sys.executable,
        fork_timeout_s: float = 60.0,
        preload: Sequence[str] | None = None,
        preload_args: Sequence[str] = (),
    ) -> None:
        self.entry = entry
        """``module:function`` the zygote imports and each child calls with ``[]``."""
        self.preload = None if preload is None else tuple(preload)
        """Instead of an entry point: modules the zygote imports (``--preload``); each fork then
        names the module its child runs."""
        self.preload_args = tuple(preload_args)
        """With ``preload``: more arguments for ``zygote_main`` (``--model FORMAT PATH``)."""
        self.unsafe = ""
        """With ``preload``: why the zygote's last hello said it is unsafe to fork ("" if safe)."""
        self.quiet = quiet
        """True: the children's output goes to /dev/null (else to this process's stderr)."""
        self.python = python
        self.fork_timeout_s = fork_timeout_s
        self.starts = 0
        """How many zygote processes were started (a second one means the first died)."""
        self._proc: asyncio.subprocess.Process | None = None
        self._fds: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._hello = False
        self._hello_seen: asyncio.Future[str] | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[ForkedChild]] = {}
        self._children: dict[int, ForkedChild] = {}
        self._early_ready: set[int] = set()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        return None if self._proc is None else self._proc.pid

    @property
    def children(self) -> int:
        """How many of its children have not exited."""
        return len(self._children)

    async def start(self) -> None:
        """Start the zygote process unless it runs (it imports in the background)."""
        async with self._lock:
            if self._proc is not None or self._closed:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                proc = await self._spawn(theirs.fileno())
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            if self._fds is not None:
                self._fds.close()
            self._fds = ours
            self._proc = proc
            self._hello = False
            self._hello_seen = asyncio.get_running_loop().create_future()
            self.starts += 1
            self._reader = asyncio.create_task(self._read(proc), name="zygote reader")

    async def hello(self, timeout_s: float | None = None) -> str:
        """Start the zygote unless it runs, wait until it has imported; "" or why it is unsafe
        to fork from. Raises OSError if it exits first or is not done within ``timeout_s``."""
        await self.start()
        seen = self._hello_seen
        if seen is None:
            raise OSError("the zygote is not running")
        try:
            return await asyncio.wait_for(asyncio.shield(seen), timeout_s)
        except TimeoutError:
            raise OSError(f"the zygote did not import within {timeout_s:g}s") from None

    async def _spawn(self, fds_fd: int) -> asyncio.subprocess.Process:
        what = [self.entry]
        if self.preload is not None:  # room for each child's own command line (zygote_main)
            what = ["--preload", ",".join(self.preload), " " * 1024, *self.preload_args]
        return await spawn_process(
            # -O as this interpreter has it (the asserts the runtime runs without)
            [
                self.python,
                *["-O"] * sys.flags.optimize,
                "-m",
                "cluster.local.zygote_main",
                *what,
            ],
            {"ZEROSERVE_ZYGOTE_FDS": str(fds_fd)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL if self.quiet else None,
            pass_fds=(fds_fd,),
        )

    async def fork(
        self,
        env: Mapping[str, str],
        *,
        name: str = "",
        notify_env: str | None = None,
        fds: Mapping[str, int] | None = None,
        module: str = "",
        argv: Sequence[str] = (),
        replace_env: bool = False,
        stdio: tuple[int, int] | None = None,
    ) -> ForkedChild:
        """A new child running the entry point with ``env`` on top of the zygote's environment,
        and a copy of each descriptor of ``fds`` (its number in the child goes in the variable
        that names it). The caller keeps its own descriptors.

        ``module``/``argv``: the child runs ``python -m module argv...`` instead (a ``preload``
        zygote's children); ``replace_env``: ``env`` is the child's whole environment;
        ``stdio``: descriptors that become the child's stdout and stderr.

        Raises OSError if the zygote cannot fork (or died, or did not answer in time).
        """
        if self._closed:
            raise OSError("the zygote is closed")
        await self.start()
        fid = next(self._ids)
        fut: asyncio.Future[ForkedChild] = asyncio.get_running_loop().create_future()
        self._pending[fid] = fut
        request: dict[str, Any] = {"op": "fork", "id": fid, "name": name, "env": dict(env)}
        if notify_env:
            request["notify_env"] = notify_env
        if module:
            request.update(module=module, argv=list(argv))
        if replace_env:
            request["replace_env"] = True
        if stdio:
            request["stdio"] = True
        if fds:
            request["fds"] = list(fds)
        passed = [*(stdio or ()), *(fds or {}).values()]
        if passed:
            if self._fds is None:
                raise OSError("the zygote is not running")
            # before the line that asks for them: the zygote reads them when it reads the line
            socket.send_fds(self._fds, [str(fid).encode()], passed)
        self._send(request)
        try:
            return await asyncio.wait_for(fut, self.fork_timeout_s)
        except TimeoutError:
            if not self._hello and self._proc is not None:
                # Stuck before its first fork (importing): it has no child to lose.
                self._proc.kill()
            raise OSError(f"the zygote did not fork within {self.fork_timeout_s:g}s") from None
        finally:
            self._pending.pop(fid, None)

    def signal(self, pid: int, sig: int) -> None:
        """Ask the zygote to signal the process group of its child ``pid``."""
        with contextlib.suppress(OSError):
            self._send({"op": "signal", "pid": pid, "sig": int(sig)})

    async def close(self, timeout_s: float = 10.0) -> None:
        """Close the zygote's stdin (it kills any child left and exits), and wait for it."""
        self._closed = True
        async with self._lock:  # a start under way finishes first: its process is closed too
            proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if self._fds is not None:
            self._fds.close()
            self._fds = None
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- the pipes ------------------------------------------------------------------------------

    def _send(self, message: Mapping[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            raise OSError("the zygote is not running")
        proc.stdin.write((json.dumps(message) + "\n").encode())

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                try:
                    self._dispatch(json.loads(line))
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning(
                        "zygote: bad line", extra={"line": line[:200].decode(errors="replace")}
                    )
        finally:
            code = await proc.wait()
            self._gone(proc, code)

    def _dispatch(self, msg: Mapping[str, Any]) -> None:
        event = msg["event"]
        if event == "hello":
            self._hello = True
            self.unsafe = str(msg.get("unsafe") or "")
            if self._hello_seen is not None and not self._hello_seen.done():
                self._hello_seen.set_result(self.unsafe)
            log.info(
                "zygote ready",
                extra={
                    "zygote_pid": msg["pid"],
                    "import_s": msg["import_s"],
                    "preload": ",".join(self.preload or ()),
                },
            )
        elif event == "forked":
            pid = int(msg["pid"])
            child = ForkedChild(self, pid)
            self._children[pid] = child
            if pid in self._early_ready:
                self._early_ready.discard(pid)
                child.ready.set()
            fut = self._pending.pop(int(msg["id"]), None)
            if fut is None or fut.done():  # its replica gave up meanwhile: nobody owns it
                child.signal_group(signal.SIGKILL)
            else:
                fut.set_result(child)
        elif event == "fork-failed":
            fut = self._pending.pop(int(msg["id"]), None)
            if fut is not None and not fut.done():
                fut.set_exception(OSError(f"the zygote could not fork: {msg.get('error')}"))
        elif event == "exit":
            exited = self._children.pop(int(msg["pid"]), None)
            if exited is not None:
                exited._exit(int(msg["code"]))
        elif event == "ready":
            pid = int(msg["pid"])
            known = self._children.get(pid)
            if known is not None:
                known.ready.set()
            else:  # the child was faster than the zygote's "forked" line
                self._early_ready.add(pid)

    def _gone(self, proc: asyncio.subprocess.Process, code: int) -> None:
        """The zygote exited: its children died with it (PR_SET_PDEATHSIG)."""
        current = self._proc is proc
        if current:
            self._proc = None
            if self._fds is not None:
                self._fds.close()
                self._fds = None
        children = list(self._children.values())
        self._children.clear()
        self._early_ready.clear()
        for child in children:
            child._exit(-signal.SIGKILL)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(OSError(f"the zygote exited with code {code}"))
        seen = self._hello_seen
        if current and seen is not None and not seen.done():
            seen.set_exception(OSError(f"the zygote exited with code {code} before it imported"))
            seen.exception()  # retrieved: nobody may be waiting
        if not self._closed:
            log.warning("zygote exited", extra={"code": code, "children_lost": len(children)})
