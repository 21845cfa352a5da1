"""The zygote process: imports an entry point once, then forks a ready child per request.

    python -m cluster.local.zygote_main queue_proxy.app:main

Python's start (interpreter, then ~300 ms of imports for the queue-proxy) would otherwise be paid
by every replica, on the cold-start path. The zygote pays it once, before any request, and
forks: a child starts with everything imported and only has to bind its ports. The runtime's
side of it, and the protocol, are in :mod:`cluster.local.zygote`.

The zygote is single-threaded and starts no event loop (a fork copies only the calling thread,
and a running loop cannot be shared): children create their own. Each child gets what a
spawned replica process gets: its own session (so its own process group), PR_SET_PDEATHSIG
(it dies with the zygote, which dies with the runtime), stdin from /dev/null, stdout and
stderr where the zygote's stderr goes, and its environment on top of the zygote's.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from cluster.local.process import die_with_parent

_REQUESTS = 0  # stdin: JSON lines from the runtime
_REPORTS = 1  # stdout: JSON lines to the runtime (the zygote's and its children's)
_LOG = 2  # stderr: where children's stdout and stderr go

Entry = Callable[[list[str]], Any]


def load_entry(spec: str) -> Entry:
    """``package.module:function`` → the function (imported now: that is the point)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"entry point {spec!r}: must be module:function")
    entry = getattr(importlib.import_module(module), name)
    if not callable(entry):
        raise ValueError(f"entry point {spec!r}: not callable")
    return entry  # type: ignore[no-any-return]


def _send(message: Mapping[str, Any]) -> None:
    # One write per line, well under PIPE_BUF (4 KiB): lines from the zygote and its children
    # (a child's "ready") never interleave.
    os.write(_REPORTS, (json.dumps(message) + "\n").encode())


class Zygote:
    """The fork loop: requests on stdin, SIGCHLD through a wake-up pipe, reports on stdout."""

    def __init__(self, entry: Entry, fds: socket.socket | None = None) -> None:
        self.entry = entry
        self.fds = fds
        """Where descriptors for the children arrive (``ZEROSERVE_ZYGOTE_FDS``)."""
        self.pid = os.getpid()
        self.children: set[int] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    def run(self) -> int:
        """Serve requests until stdin closes; then stop the children left and exit 0."""
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd does the work
        signal.set_wakeup_fd(self._wake_w)
        buffer = b""
        while True:
            readable, _, _ = select.select([_REQUESTS, self._wake_r], [], [])
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                self._reap()
            if _REQUESTS in readable:
                data = os.read(_REQUESTS, 65536)
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._handle_line(line)
        self._stop_all()
        return 0

    def _handle_line(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            self._handle(request)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"zygote: bad request {line[:200]!r}: {exc}", file=sys.stderr, flush=True)

    def _handle(self, request: Mapping[str, Any]) -> None:
        op = request.get("op")
        if op == "fork":
            self._fork(request)
        elif op == "signal":
            pid = int(request["pid"])
            # Only a child not yet reaped: its pid (= its group id) cannot have been reused.
            if pid in self.children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, int(request["sig"]))
        else:
            print(f"zygote: unknown request {request!r}", file=sys.stderr, flush=True)

    def _fork(self, request: Mapping[str, Any]) -> None:
        env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}
        name = str(request.get("name") or "")
        notify_env = request.get("notify_env")
        inherited: list[int] = []
        try:
            names = [str(n) for n in request.get("fds") or ()]
            if names:
                inherited = self._receive_fds(request["id"], len(names))
                env.update({n: str(fd) for n, fd in zip(names, inherited, strict=True)})
            pid = os.fork()
        except (OSError, ValueError) as exc:
            _send({"event": "fork-failed", "id": request["id"], "error": str(exc)})
            return
        finally:
            if inherited and os.getpid() == self.pid:
                for fd in inherited:  # the child has its copies; the runtime keeps its own
                    os.close(fd)
        if pid == 0:
            self._child(env, name, str(notify_env) if notify_env else None)
        self.children.add(pid)
        _send({"event": "forked", "id": request["id"], "pid": pid})

    def _receive_fds(self, request_id: object, count: int) -> list[int]:
        """The descriptors the runtime sent for this request, just before its line."""
        if self.fds is None:
            raise OSError("descriptors asked for, but ZEROSERVE_ZYGOTE_FDS is not set")
        message, fds, _, _ = socket.recv_fds(self.fds, 64, count)
        if message != str(request_id).encode() or len(fds) != count:
            for fd in fds:
                os.close(fd)
            raise ValueError(
                f"descriptors for request {message!r} ({len(fds)}), expected {request_id} ({count})"
            )
        return fds

    def _child(self, env: Mapping[str, str], name: str, notify_env: str | None) -> NoReturn:
        code = 1
        try:
            os.setsid()
            die_with_parent()
            if os.getppid() != self.pid:  # the zygote died before PDEATHSIG was set
                os._exit(1)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self.fds is not None:
                self.fds.close()
            notify_fd = os.dup(_REPORTS) if notify_env else None
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, _REQUESTS)
            os.close(devnull)
            os.dup2(_LOG, _REPORTS)
            os.environ.update(env)
            if notify_env and notify_fd is not None:
                os.environ[notify_env] = str(notify_fd)
            if name:
                _set_comm(name)
            code = _exit_code(self.entry([]))
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)  # never back into the zygote's loop

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                _send({"event": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def _stop_all(self) -> None:
        """The runtime closed the pipe with children left (it drains them first): kill them."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _set_comm(name: str) -> None:
    """The child's name in ``ps -o comm``/``top`` (15 bytes at most)."""
    with contextlib.suppress(OSError), open(f"/proc/{os.getpid()}/comm", "w") as fh:
        fh.write(name[:15])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cluster.local.zygote_main module:function", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        entry = load_entry(argv[0])
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"zygote: cannot load {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return 2
    # Objects that exist now are shared copy-on-write with every child: keep the collector
    # from touching (and so copying) their pages.
    fds_fd = os.environ.pop("ZEROSERVE_ZYGOTE_FDS", "")
    fds = socket.socket(fileno=int(fds_fd)) if fds_fd else None
    gc.freeze()
    _send({"event": "hello", "pid": os.getpid(), "import_s": round(time.perf_counter() - t0, 4)})
    return Zygote(entry, fds).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
