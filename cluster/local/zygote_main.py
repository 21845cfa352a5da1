"""The zygote process: imports an entry point once, then forks a ready child per request.

    python -m cluster.local.zygote_main queue_proxy.app:main
    python -m cluster.local.zygote_main --preload torch,modelserver.app   # a model-server parent
    python -m cluster.local.zygote_main --preload torch,... --model pytorch /cache/bert.pt2

Python's start (interpreter, then ~300 ms of imports for the queue-proxy) would otherwise be paid
by every replica, on the cold-start path. The zygote pays it once, before any request, and
forks: a child starts with everything imported and only has to bind its ports. The runtime's
side of it, and the protocol, are in :mod:`cluster.local.zygote`.

The zygote is single-threaded and starts no event loop (a fork copies only the calling thread,
and a running loop cannot be shared): children create their own. Each child gets what a
spawned replica process gets: its own session (so its own process group), PR_SET_PDEATHSIG
(it dies with the zygote, which dies with the runtime), stdin from /dev/null, stdout and
stderr where the zygote's stderr goes, and its environment on top of the zygote's.

With ``--preload`` there is no entry point: the zygote imports the modules and does their
one-time work (:func:`cluster.local.model_zygote.preload`, which also says whether it is still
safe to fork; with ``--model`` it also loads the revision's model onto the CPU for the
children to take, :mod:`modelserver.preload`), and each request names the module its child
runs as ``python -m`` would (``"module"``, ``"argv"``), the child's whole environment
(``"replace_env"``) and its stdout and stderr (``"stdio"``: the first two descriptors of the
request's datagram).

The reports pipe is moved off descriptor 1 at start (1 then goes where 2 goes), so that a module
that prints while it is imported cannot corrupt the protocol.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
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
_LOG = 2  # stderr: where children's stdout and stderr go (unless a request gives its own)
_reports = 1
"""JSON lines to the runtime (the zygote's and its children's): stdout until :func:`main`
moves it to another descriptor."""

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
    os.write(_reports, (json.dumps(message) + "\n").encode())


class Zygote:
    """The fork loop: requests on stdin, SIGCHLD through a wake-up pipe, reports on stdout."""

    def __init__(self, entry: Entry | None, fds: socket.socket | None = None) -> None:
        self.entry = entry
        """What a child calls with ``[]``; None: each request names a module to run."""
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
        run = _Run(
            module=str(request.get("module") or ""),
            argv=[str(a) for a in request.get("argv") or ()],
            replace_env=bool(request.get("replace_env")),
        )
        inherited: list[int] = []
        try:
            names = [str(n) for n in request.get("fds") or ()]
            stdio = 2 if request.get("stdio") else 0
            if names or stdio:
                inherited = self._receive_fds(request["id"], stdio + len(names))
                run.stdio = inherited[:stdio]
                env.update({n: str(fd) for n, fd in zip(names, inherited[stdio:], strict=True)})
            if not run.module and self.entry is None:
                raise ValueError("no module to run (this zygote has no entry point)")
            pid = os.fork()
        except (OSError, ValueError) as exc:
            _send({"event": "fork-failed", "id": request["id"], "error": str(exc)})
            return
        finally:
            if inherited and os.getpid() == self.pid:
                for fd in inherited:  # the child has its copies; the runtime keeps its own
                    os.close(fd)
        if pid == 0:
            self._child(env, name, str(notify_env) if notify_env else None, run)
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

    def _child(
        self, env: Mapping[str, str], name: str, notify_env: str | None, run: _Run
    ) -> NoReturn:
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
            notify_fd = os.dup(_reports) if notify_env else None
            if _reports != 1:
                os.close(_reports)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, _REQUESTS)
            os.close(devnull)
            if run.stdio:
                for target, fd in zip((1, 2), run.stdio, strict=True):
                    os.dup2(fd, target)
                for fd in set(run.stdio) - {1, 2}:
                    os.close(fd)
            else:
                os.dup2(_LOG, 1)
            if run.replace_env:  # the environment a spawned process would have had
                before = os.environ.get("PYTHONPATH", "")
                os.environ.clear()
                _extend_path(before, env.get("PYTHONPATH", ""))
            os.environ.update(env)
            if notify_env and notify_fd is not None:
                os.environ[notify_env] = str(notify_fd)
            if name:
                _set_comm(name)
            if run.module:
                _set_cmdline([sys.executable, "-m", run.module, *run.argv])
                code = _run_module(run.module, run.argv)
            else:
                assert self.entry is not None
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


class _Run:
    """What a forked child runs: a module as ``python -m`` does, or the zygote's entry point."""

    def __init__(self, *, module: str, argv: list[str], replace_env: bool) -> None:
        self.module = module
        self.argv = argv
        self.replace_env = replace_env
        self.stdio: list[int] = []


def _run_module(module: str, argv: list[str]) -> int:
    """``python -m module argv...`` in this process; its exit code. Exit handlers run as at an
    interpreter's exit (the model server's logging flushes through one)."""
    import atexit

    sys.argv = [module, *argv]  # runpy sets argv[0] to the module's file, as -m does
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    return code


def _extend_path(before: str, after: str) -> None:
    """Entries a replica's ``PYTHONPATH`` adds to the zygote's, put in front of ``sys.path``
    as the interpreter would have (the zygote's own are there already)."""
    known = set(before.split(os.pathsep))
    added = [p for p in after.split(os.pathsep) if p and p not in known]
    sys.path[1:1] = [os.path.abspath(p) for p in added]


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _set_cmdline(words: list[str]) -> None:
    """Show ``words`` as this process's command line (``ps``, ``/proc/PID/cmdline``): written
    over the zygote's own argv, which the runtime padded for it; cut to its length."""
    import ctypes

    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{os.getpid()}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        size = end - start
        if start <= 0 or size <= 0:
            return
        data = b"\0".join(w.encode() for w in words)[: size - 1]
        ctypes.memmove(start, data.ljust(size, b"\0"), size)


def _set_comm(name: str) -> None:
    """The child's name in ``ps -o comm``/``top`` (15 bytes at most)."""
    with contextlib.suppress(OSError), open(f"/proc/{os.getpid()}/comm", "w") as fh:
        fh.write(name[:15])


def main(argv: list[str]) -> int:
    global _reports
    preload = len(argv) >= 2 and argv[0] == "--preload"
    model: tuple[str, str] | None = None
    if preload:  # --preload MODS [PADDING] [--model FORMAT PATH]
        rest = argv[2:]
        if rest and rest[0].strip() == "":
            rest = rest[1:]
        if len(rest) == 3 and rest[0] == "--model":
            model = (rest[1], rest[2])
        elif rest:
            preload = False
    if len(argv) != 1 and not preload:
        print(
            "usage: python -m cluster.local.zygote_main module:function"
            " | --preload mod1,mod2 [--model FORMAT PATH]",
            file=sys.stderr,
        )
        return 2
    _reports = os.dup(1)
    os.dup2(_LOG, 1)  # a print while importing goes to the log, not into the protocol
    t0 = time.perf_counter()
    entry: Entry | None = None
    unsafe = ""
    try:
        if preload:
            from cluster.local.model_zygote import preload as prepare

            unsafe = prepare([m for m in argv[1].split(",") if m], model=model)
        else:
            entry = load_entry(argv[0])
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"zygote: cannot load {argv[-1]}: {exc}", file=sys.stderr, flush=True)
        return 2
    # Objects that exist now are shared copy-on-write with every child: keep the collector
    # from touching (and so copying) their pages.
    fds_fd = os.environ.pop("ZEROSERVE_ZYGOTE_FDS", "")
    fds = socket.socket(fileno=int(fds_fd)) if fds_fd else None
    gc.freeze()
    hello: dict[str, Any] = {
        "event": "hello",
        "pid": os.getpid(),
        "import_s": round(time.perf_counter() - t0, 4),
    }
    if preload:
        hello["unsafe"] = unsafe
    _send(hello)
    code = Zygote(entry, fds).run()
    if preload:  # skip the interpreter's finalisation: seconds, and noise, for a framework
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
