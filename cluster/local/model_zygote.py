"""The framework zygote: model servers forked from a parked process that has imported their framework.

``import torch`` costs 3-5 s and the first use of ``torch.nn`` more; a process forked from a
parent that paid both once reaches its first forward pass in under a second
(``shared/reference/gpu-measurements.md``). The local runtime keeps one parked process per
distinct preload set (a :class:`cluster.local.zygote.Zygote` started with ``--preload``), and a
replica whose command is ``python -m MODULE args...`` with something to preload is forked from
the one for its set and runs ``MODULE`` as ``python -m`` would, with the environment a spawned
process would have, its own session, PR_SET_PDEATHSIG, its pod's name as its ``comm``, and
stdout/stderr on pipes the runtime relays (:mod:`cluster.local.output`). Any other command is
spawned as before.

A revision's preload set is its ``preload:`` list plus, for the built-in model server, what its
format needs (:data:`FORMAT_PRELOAD`) and the server itself. The parked process imports the set,
then does the framework's one-time work that touches no accelerator (:func:`preload`: for torch,
nn modules built on the meta device; the CUDA libraries' files read ahead into the page cache).
With ``model_preload`` (the supervisor's setting, on by default) a built-in pytorch server's
parked process also loads the revision's ``.pt2`` model onto the CPU once its artifact is in the
cache (:data:`MODEL_LOADER`, ``modelserver.loader.load_model``: ``torch.export.load(...).module()``, no tensor
operation, no CUDA), so that a replica only moves it to its device: the parked process is then
keyed by its preload set and the artifact's local path (:func:`park_key`), started when the
artifact is ready and closed when no revision names it and no replica it forked is left. It holds
one CPU copy of the model (the file's size, roughly) for as long as it is parked.
A fork copies only the calling thread, and a CUDA context does not survive one: a parked process
that has started a thread or initialised CUDA says so in its hello, the runtime logs why in one
line and spawns that set's replicas instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from cluster.local.output import LogFormat, Stream, _relay_pipe, drain_relays, line_writer
from cluster.local.zygote import ForkedChild, Zygote
from cluster.spec import Revision

log = logging.getLogger("zeroserve.model_zygote")

MODEL_SERVER = "modelserver"
"""The built-in model server's module (``python -m modelserver``)."""

# The model server is named, not imported: ``cluster`` never imports it (DESIGN.md, the
# dependencies point one way), as the supervisor names the queue-proxy's entry point.
MODEL_LOADER = "modelserver.loader:load_model"
"""What a parked process calls to load a revision's model onto the CPU (imported there only)."""
PRELOADABLE: Mapping[str, tuple[str, ...]] = {"pytorch": (".pt2",)}
"""The formats (and model-file suffixes) the loader takes: ``modelserver.preload.PRELOADABLE``
(tests/test_model_zygote.py checks that the two agree)."""

FORMAT_PRELOAD: Mapping[str, tuple[str, ...]] = {
    "pytorch": ("torch", "torch.nn", "torch.export"),
    "onnx": ("onnxruntime", "numpy"),
    "sklearn": ("sklearn", "joblib", "numpy"),
    "xgboost": ("xgboost", "numpy"),
    "lightgbm": ("lightgbm", "numpy"),
}
"""What each format of the built-in model server imports; its own modules come on top."""

PreloadSet = tuple[str, ...]

ModelArtifact = tuple[str, str]
"""``(format, local path)`` of a model a parked process loads before it forks."""

ParkKey = tuple[PreloadSet, ModelArtifact | None]
"""What one parked process is for: its preload set, and the model it loaded (if any)."""

ArtifactPath = Callable[[Revision], Path | None]
"""The local path of a revision's model artifact once it is in the cache (None until then)."""

_PYTHONS = ("python", "python3")


def python_module(command: Sequence[str]) -> tuple[str, list[str]] | None:
    """``python -m MODULE args...`` → ``(MODULE, args)``; None for any other command."""
    if len(command) < 3 or command[1] != "-m" or not command[2]:
        return None
    if command[0] not in _PYTHONS and command[0] != sys.executable:
        return None
    return command[2], list(command[3:])


def _format(rev: Revision, module: str, args: Sequence[str]) -> str:
    if rev.predictor is not None:
        return rev.predictor.format
    if module != MODEL_SERVER:
        return ""
    for n, arg in enumerate(args):
        if arg == "--format" and n + 1 < len(args):
            return args[n + 1]
        if arg.startswith("--format="):
            return arg.partition("=")[2]
    return ""


def preload_set(rev: Revision) -> PreloadSet | None:
    """The modules the parked process for ``rev``'s replicas imports (sorted, each once), or
    None when its command is not ``python -m MODULE`` or there is nothing to preload (its
    replicas are spawned: a fork would save only the interpreter's start, ~30 ms, and the model
    server would no longer show its own command line in ``ps``)."""
    parsed = python_module(rev.command)
    if parsed is None:
        return None
    module, args = parsed
    names = set(rev.preload)
    fmt = _format(rev, module, args)
    if fmt in FORMAT_PRELOAD:
        names.update(FORMAT_PRELOAD[fmt])
        names.update((f"{MODEL_SERVER}.app", f"{MODEL_SERVER}.formats.{fmt}"))
    return tuple(sorted(names)) or None


def local_artifact(rev: Revision) -> Path | None:
    """A predictor's artifact when its URI is a local path or ``file://`` (no fetch needed):
    the default :data:`ArtifactPath` where no prefetcher says where the cache put it."""
    if rev.predictor is None:
        return None
    uri = rev.predictor.storage_uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        return None
    path = Path(uri)
    return path if path.exists() else None


def park_key(rev: Revision, artifact: Path | None) -> ParkKey | None:
    """The parked process ``rev``'s replicas fork from: its preload set, plus its model when
    it is the built-in server's, of a preloadable format (:data:`PRELOADABLE`),
    and ``artifact`` (its local path) is known. None: its replicas are spawned."""
    modules = preload_set(rev)
    parsed = python_module(rev.command)
    if modules is None or parsed is None:
        return None
    module, args = parsed
    fmt = _format(rev, module, args)
    suffixes = PRELOADABLE.get(fmt, ())
    if module != MODEL_SERVER or artifact is None or not suffixes:
        return (modules, None)
    if artifact.is_file() and artifact.suffix.lower() not in suffixes:
        return (modules, None)  # a TorchScript file: loaded by each replica, as before
    return (modules, (fmt, str(artifact)))


# -- in the parked process -------------------------------------------------------------------------


def preload(modules: Sequence[str], model: ModelArtifact | None = None) -> str:
    """Import ``modules``, do their one-time work, load ``model`` onto the CPU; "" if the
    process may still fork, else why not.

    Runs in the parked process (``python -m cluster.local.zygote_main --preload a,b``). An
    import error propagates (the zygote exits, replicas are spawned and show the error); a model
    that cannot be loaded is said in one line, and each replica then loads (and reports) it.
    """
    for name in modules:
        importlib.import_module(name)
    if "torch" in sys.modules:
        _warm_torch()
        _read_ahead(_torch_libraries())
    if model is not None:
        module, _, function = MODEL_LOADER.partition(":")
        fmt, path = model
        try:
            getattr(importlib.import_module(module), function)(fmt, Path(path))
        except Exception as exc:  # the replicas load it themselves, and say why it fails
            print(f"zygote: model not preloaded: {exc}", file=sys.stderr, flush=True)
    return fork_problem()


def fork_problem() -> str:
    """Why this process must not be forked from ("" if it may): a CUDA context or a thread."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_initialized():
                return "CUDA initialised"
    threads = threading.active_count()
    if threads != 1:
        return f"threads started: {threads}"
    return ""


def _warm_torch() -> None:
    """Build representative nn modules on the meta device and run them once: the Python-side
    first-use initialisation (module construction, dispatcher paths, parameter init) is paid
    here, without allocating memory, starting a thread pool or touching CUDA."""
    import torch
    from torch import nn

    try:
        with torch.device("meta"), torch.no_grad():
            encoder = nn.TransformerEncoderLayer(
                d_model=64, nhead=4, dim_feedforward=128, batch_first=True
            )
            embed = nn.Sequential(nn.Embedding(128, 64), nn.LayerNorm(64))
            head = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 2))
            conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            head(encoder(embed(torch.zeros(2, 8, dtype=torch.long))))
            conv(torch.zeros(1, 3, 8, 8))
    except Exception as exc:  # an older torch without a meta kernel: the imports still count
        print(f"zygote: torch warm-up on the meta device: {exc!r}", file=sys.stderr, flush=True)


def _torch_libraries() -> list[Path]:
    """The shared libraries under ``torch/lib`` and ``nvidia/*/lib`` (never loaded here)."""
    dirs: list[Path] = []
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is not None and torch_spec.origin:
        dirs.append(Path(torch_spec.origin).parent / "lib")
    with contextlib.suppress(ImportError, ValueError):
        nvidia = importlib.util.find_spec("nvidia")
        for root in (nvidia.submodule_search_locations or ()) if nvidia else ():
            dirs.extend(Path(root).glob("*/lib"))
            dirs.extend(Path(root).glob("*/*/lib"))  # nvidia/cu13/lib
    return [p for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if ".so" in p.name]


def _read_ahead(paths: Iterable[Path]) -> None:
    """Ask the kernel to read each file into the page cache (``POSIX_FADV_WILLNEED``: the
    kernel's own read-ahead, no copy into this process and no thread here), so that the first
    child's ``dlopen`` of the CUDA libraries does not wait on the disk. Never loads them."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            else:  # pragma: no cover - no fadvise: read it once
                while os.read(fd, 1 << 20):
                    pass
        except OSError:
            pass
        finally:
            os.close(fd)


# -- in the runtime ----------------------------------------------------------------------------------


class RelayedFork:
    """A forked model server whose stdout and stderr are relayed (a
    :class:`cluster.local.process.Child`); :meth:`wait` as :class:`cluster.local.output.RelayedChild`'s."""

    def __init__(self, child: ForkedChild, relays: list[asyncio.Task[None]]) -> None:
        self.child = child
        self.relays = relays

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def signal_group(self, sig: int) -> None:
        self.child.signal_group(sig)

    async def wait(self) -> int:
        code = await self.child.wait()
        await drain_relays(self.relays)
        return code


class ModelZygotes:
    """The parked processes, one per preload set; see the module doc."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        import_timeout_s: float = 300.0,
        model_preload: bool = True,
        artifact: ArtifactPath = local_artifact,
    ) -> None:
        self.quiet = quiet
        """True: a parked process's own output goes to /dev/null."""
        self.import_timeout_s = import_timeout_s
        """How long a parked process may take to import its set before replicas are spawned."""
        self.model_preload = model_preload
        """True: a built-in pytorch server's parked process loads its model (see the module doc)."""
        self.artifact = artifact
        """Where a revision's artifact is once fetched (the runtime's prefetcher's answer)."""
        self._parked: dict[ParkKey, Zygote] = {}
        self._unsafe: dict[ParkKey, str] = {}
        self._wanted: set[ParkKey] = set()
        self._revisions: list[Revision] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._retirers: set[asyncio.Task[None]] = set()
        self._closed = False

    def parked(self, rev: Revision) -> Zygote | None:
        """The parked process ``rev``'s replicas are forked from (None: they are spawned)."""
        key = self.key(rev)
        return None if key is None else self._parked.get(key)

    def unsafe(self, rev: Revision) -> str:
        """Why ``rev``'s replicas are spawned although their command could be forked ("")."""
        key = self.key(rev)
        return "" if key is None else self._unsafe.get(key, "")

    def key(self, rev: Revision) -> ParkKey | None:
        """:func:`park_key` of ``rev``, its model left out unless :attr:`model_preload`."""
        if not self.model_preload:
            modules = preload_set(rev)
            return None if modules is None else (modules, None)
        return park_key(rev, self.artifact(rev))

    def want(self, revisions: Iterable[Revision]) -> None:
        """The revisions that may start replicas: start (in the background, when a loop runs)
        a parked process for each of their preload sets, and close the ones none needs that
        have no replica left."""
        self._revisions = list(revisions)
        # A revision whose model is still being fetched gets its parked process once the
        # artifact is ready (:meth:`artifact_ready`): one torch import, not two.
        self._wanted = {
            k
            for rev in self._revisions
            if (k := self.key(rev)) is not None and not (k[1] is None and self._awaits(rev))
        }
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # told before the loop runs: :meth:`start` starts them
            return
        for key in self._wanted:
            if key not in self._unsafe:
                self._background(self._check(self._zygote(key)))
        self._retire()

    def start(self) -> None:
        """Start the parked processes for the revisions :meth:`want` was last told of (in the
        background: they import while the runtime starts)."""
        self.want(self._revisions)

    def _awaits(self, rev: Revision) -> bool:
        """True: ``rev``'s parked process will load its model once the artifact is known."""
        parsed = python_module(rev.command)
        if not self.model_preload or parsed is None or parsed[0] != MODEL_SERVER:
            return False
        return _format(rev, *parsed) in PRELOADABLE and self.artifact(rev) is None

    def artifact_ready(self) -> None:
        """A revision's artifact reached the cache: start the parked process that loads it
        (and retire the one it replaces)."""
        self.want(self._revisions)

    def _zygote(self, key: ParkKey) -> Zygote:
        zygote = self._parked.get(key)
        if zygote is None:
            modules, model = key
            zygote = Zygote(
                "",
                quiet=self.quiet,
                preload=modules,
                preload_args=("--model", *model) if model is not None else (),
                fork_timeout_s=self.import_timeout_s,
            )
            self._parked[key] = zygote
        return zygote

    def _retire(self) -> None:
        for key, zygote in list(self._parked.items()):
            if key not in self._wanted and zygote.children == 0:
                del self._parked[key]
                self._background(zygote.close())

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, zygote: Zygote) -> None:
        """Start ``zygote``, wait for its hello; when it is unsafe, log why and close it."""
        key = next((k for k, z in self._parked.items() if z is zygote), None)
        if key is None:  # retired meanwhile
            return
        try:
            problem = await zygote.hello(self.import_timeout_s)
        except OSError as exc:
            log.warning(
                "model-server zygote did not start; replicas start as fresh processes",
                extra={"preload": ",".join(key[0]), "error": str(exc)},
            )
            return
        if problem and key not in self._unsafe:
            self._unsafe[key] = problem
            log.warning(
                "model-server zygote unsafe to fork: %s; replicas start as fresh processes",
                problem,
                extra={"preload": ",".join(key[0])},
            )
            if self._parked.get(key) is zygote:
                del self._parked[key]
            await zygote.close()

    async def fork(
        self,
        rev: Revision,
        env: Mapping[str, str],
        *,
        pod: str,
        revision: str,
        fmt: LogFormat,
        relay: bool,
    ) -> RelayedFork | ForkedChild | None:
        """``rev``'s model server forked from its parked process, with ``env`` on top of this
        process's environment (as :func:`cluster.local.process.spawn_process` gives it) and its
        output relayed (``relay``) or discarded; None when it must be spawned instead."""
        key = self.key(rev)
        parsed = python_module(rev.command)
        if key is None or parsed is None or self._closed or key in self._unsafe:
            return None
        module, args = parsed
        full_env = dict(os.environ)
        full_env.update(env)
        for attempt in (1, 2):  # a parked process that died since its hello is restarted once
            zygote = self._zygote(key)
            await self._check(zygote)
            if key in self._unsafe or zygote.pid is None:
                return None
            try:
                forked = await self._fork_one(
                    zygote, full_env, module, args, pod=pod, revision=revision, fmt=fmt, relay=relay
                )
            except OSError as exc:
                if attempt == 2:
                    log.warning(
                        "model-server zygote could not fork; spawning the replica",
                        extra={"pod": pod, "preload": ",".join(key[0]), "error": str(exc)},
                    )
                continue
            # a parked process no revision wants any more goes with its last replica
            retirer = asyncio.create_task(self._retire_after(forked))
            self._retirers.add(retirer)
            retirer.add_done_callback(self._retirers.discard)
            return forked
        return None

    async def _retire_after(self, forked: RelayedFork | ForkedChild) -> None:
        await (forked.child if isinstance(forked, RelayedFork) else forked).wait()
        if not self._closed:
            self._retire()

    async def _fork_one(
        self,
        zygote: Zygote,
        env: Mapping[str, str],
        module: str,
        args: list[str],
        *,
        pod: str,
        revision: str,
        fmt: LogFormat,
        relay: bool,
    ) -> RelayedFork | ForkedChild:
        if not relay:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                return await zygote.fork(
                    env,
                    name=pod,
                    module=module,
                    argv=args,
                    replace_env=True,
                    stdio=(devnull, devnull),
                )
            finally:
                os.close(devnull)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = await zygote.fork(
                env, name=pod, module=module, argv=args, replace_env=True, stdio=(out_w, err_w)
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:  # the child has its copies: EOF comes when it (and its children) close them
            os.close(out_w)
            os.close(err_w)
        targets: tuple[tuple[int, Stream, TextIO], ...] = (
            (out_r, "stdout", sys.stderr if fmt == "json" else sys.stdout),
            (err_r, "stderr", sys.stderr),
        )
        relays = [
            asyncio.create_task(
                _relay_pipe(
                    fd,
                    line_writer(pod=pod, revision=revision, stream=stream, fmt=fmt, out=target),
                ),
                name=f"output-{pod}-{stream}",
            )
            for fd, stream, target in targets
        ]
        return RelayedFork(child, relays)

    async def close(self) -> None:
        """Close every parked process (after the supervisor has stopped their replicas)."""
        self._closed = True
        for task in list(self._retirers):  # they would wait for replicas still running
            task.cancel()
        await asyncio.gather(*self._retirers, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        parked = list(self._parked.values())
        self._parked.clear()
        await asyncio.gather(*(z.close() for z in parked), return_exceptions=True)
