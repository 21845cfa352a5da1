"""The local runtime's artifact prefetch: each predictor's model is fetched when its revision appears.

A revision with a ``predictor`` (:class:`cluster.spec.Predictor`) names its model by URI. When
the revision is created (the spec loaded at start, or a live reload), its artifact is fetched in
the background into the node's artifact cache by ``python -m modelserver.storage fetch`` (the
code the model server and the Kubernetes init step use), in a child process: the runtime's event
loop (the activator's) never waits for a download, never shares its GIL with one, and a fetch of
a revision that goes away is killed. A later scale from zero then finds the model in the cache.

A failed fetch is retried with a doubling back-off (capped); until it succeeds the revision's
replicas wait before starting (:meth:`ArtifactPrefetcher.wait_ready`, the supervisor's
``before_start``: a pod's init step), and :meth:`ArtifactPrefetcher.not_ready_reason` gives the
failure (``s3://models/iris/model.joblib: 403 AccessDenied``) to ``zeroserve status`` and to the
503 of a request whose wait for a pod timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cluster.local.process import spawn_process
from cluster.spec import Revision, RevisionKey

log = logging.getLogger("zeroserve.prefetch")


class ArtifactFetchError(Exception):
    """One fetch failed; the message starts with the URI, then the reason."""


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """What one fetch gets: an artifact's URI and its optional pin."""

    uri: str
    sha256: str = ""


Fetch = Callable[[ArtifactRef, Mapping[str, str]], Awaitable[Path]]
"""Fetches one artifact into the cache (with the revision's environment) and returns its local
path, or raises :class:`ArtifactFetchError`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchSettings:
    """How artifacts are fetched and retried. Seconds end in ``_s``."""

    backoff_initial_s: float = 1.0
    """Wait after the first failure; doubled after each next one."""
    backoff_max_s: float = 60.0
    """The longest wait between two attempts."""
    command: tuple[str, ...] = (sys.executable, "-m", "modelserver.storage", "fetch")
    """The fetch command; the URI (and ``--sha256 HEX``) are appended. It prints the local path."""


@dataclass(eq=False)
class _Artifact:
    ref: ArtifactRef
    env: Mapping[str, str]
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    path: Path | None = None
    error: str = ""
    attempts: int = 0
    waiters: int = 0
    task: asyncio.Task[None] | None = None


class ArtifactPrefetcher:
    """See the module docstring. ``set_revisions`` follows the revision source; ``start`` and
    ``close`` bracket the fetch tasks."""

    def __init__(
        self, settings: PrefetchSettings | None = None, fetch: Fetch | None = None
    ) -> None:
        self.settings = settings or PrefetchSettings()
        self._fetch: Fetch = fetch or self._fetch_in_child
        self._artifacts: dict[ArtifactRef, _Artifact] = {}
        self._refs: dict[RevisionKey, ArtifactRef] = {}
        self._started = False
        self.on_ready: Callable[[], None] | None = None
        """Called after an artifact reached the cache (the framework zygote then starts the
        parked process that loads it, :mod:`cluster.local.model_zygote`)."""

    # -- the revision set ----------------------------------------------------------------------

    def set_revisions(self, revisions: Mapping[RevisionKey, Revision]) -> None:
        """The revisions now; a new predictor's artifact starts fetching, one no revision names
        any more (and no replica waits for) stops."""
        self._refs = {}
        for key, rev in revisions.items():
            if rev.predictor is None:
                continue
            ref = ArtifactRef(rev.predictor.storage_uri, rev.predictor.sha256)
            self._refs[key] = ref
            if ref not in self._artifacts:
                self._artifacts[ref] = _Artifact(ref, rev.env)
                if self._started:
                    self._spawn(self._artifacts[ref])
        used = set(self._refs.values())
        for ref in list(self._artifacts):
            self._drop_if_unused(ref, used)

    async def start(self) -> None:
        """Start fetching every known artifact (the constructor may run before the loop)."""
        self._started = True
        for art in self._artifacts.values():
            if art.task is None and not art.ready.is_set():
                self._spawn(art)

    async def close(self) -> None:
        """Stop every fetch (a fetch in a child process is killed)."""
        self._started = False
        tasks = [a.task for a in self._artifacts.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what the supervisor, the activator and the status read -------------------------------

    async def wait_ready(self, revision: Revision) -> None:
        """Until ``revision``'s artifact is in the cache (at once without a predictor)."""
        if revision.predictor is None:
            return
        ref = ArtifactRef(revision.predictor.storage_uri, revision.predictor.sha256)
        art = self._artifacts.get(ref)
        if art is None:  # a replica of a revision changed since: fetch what it names
            art = self._artifacts[ref] = _Artifact(ref, revision.env)
            if self._started:
                self._spawn(art)
        if art.ready.is_set():
            return
        log.info(
            "replica waits for its model artifact",
            extra={"revision": str(revision.key), "uri": ref.uri, "error": art.error},
        )
        art.waiters += 1
        try:
            await art.ready.wait()
        finally:
            art.waiters -= 1
            self._drop_if_unused(ref, set(self._refs.values()))

    def not_ready_reason(self, key: RevisionKey) -> str | None:
        """Why ``key``'s replicas cannot start: its artifact's last fetch error, or that it is
        being fetched; None when nothing holds them back."""
        ref = self._refs.get(key)
        art = self._artifacts.get(ref) if ref is not None else None
        if art is None or art.ready.is_set():
            return None
        if art.error:
            return art.error
        return f"{ref.uri}: fetching" if ref is not None else None

    def path(self, key: RevisionKey) -> Path | None:
        """The local path of ``key``'s artifact once fetched."""
        ref = self._refs.get(key)
        art = self._artifacts.get(ref) if ref is not None else None
        return art.path if art is not None else None

    def local_path(self, revision: Revision) -> Path | None:
        """The local path of ``revision``'s artifact once it is in the cache, else None."""
        if revision.predictor is None:
            return None
        ref = ArtifactRef(revision.predictor.storage_uri, revision.predictor.sha256)
        art = self._artifacts.get(ref)
        return art.path if art is not None and art.ready.is_set() else None

    def attempts(self, key: RevisionKey) -> int:
        """How many fetches of ``key``'s artifact were started."""
        ref = self._refs.get(key)
        art = self._artifacts.get(ref) if ref is not None else None
        return art.attempts if art is not None else 0

    # -- fetching --------------------------------------------------------------------------------

    def _spawn(self, art: _Artifact) -> None:
        art.task = asyncio.create_task(self._fetch_until_ready(art), name=f"fetch {art.ref.uri}")

    def _drop_if_unused(self, ref: ArtifactRef, used: set[ArtifactRef]) -> None:
        art = self._artifacts.get(ref)
        if art is None or art.waiters or ref in used:
            return
        del self._artifacts[ref]
        if art.task is not None:
            art.task.cancel()

    async def _fetch_until_ready(self, art: _Artifact) -> None:
        s = self.settings
        delay = s.backoff_initial_s
        while True:
            art.attempts += 1
            try:
                art.path = await self._fetch(art.ref, art.env)
            except ArtifactFetchError as exc:
                art.error = str(exc) or f"{art.ref.uri}: fetch failed"
                log.warning(
                    "artifact fetch failed",
                    extra={
                        "uri": art.ref.uri,
                        "error": art.error,
                        "attempt": art.attempts,
                        "retry_in_s": delay,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.backoff_max_s)
                continue
            art.error = ""
            art.ready.set()
            log.info(
                "artifact fetched",
                extra={"uri": art.ref.uri, "path": str(art.path), "attempt": art.attempts},
            )
            if self.on_ready is not None:
                self.on_ready()
            return

    async def _fetch_in_child(self, ref: ArtifactRef, env: Mapping[str, str]) -> Path:
        """``python -m modelserver.storage fetch URI [--sha256 HEX]`` in a child process that
        dies with the runtime; killed if this task is cancelled."""
        command = [*self.settings.command, ref.uri]
        if ref.sha256:
            command += ["--sha256", ref.sha256]
        proc = await spawn_process(
            command,
            env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        if proc.returncode == 0:
            lines = out.decode(errors="replace").strip().splitlines()
            if lines:
                return Path(lines[-1])
        raise ArtifactFetchError(_reason(ref.uri, err.decode(errors="replace"), proc.returncode))


def _reason(uri: str, stderr: str, code: int | None) -> str:
    """The fetch error's message (``<uri>: <reason>``) out of the child's stderr: the last line
    that names the URI, from the URI on; else its last line; else its exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        at = line.find(uri)
        if at >= 0:
            return line[at:]
    if lines:
        return f"{uri}: {lines[-1]}"
    return f"{uri}: the fetch exited with code {code}"
