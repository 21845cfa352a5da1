"""The node-local artifact cache: layout, locks, entries, least-recently-used eviction.

One directory shared by every replica on a machine (``~/.cache/zeroserve/models`` locally, a node
path on Kubernetes)::

    <cache>/<key>/meta.json         {"uri", "sha256", "size", "name"}: present = the entry is complete
    <cache>/<key>/<name>            the artifact: a file, or the directory an archive unpacked into
    <cache>/.locks/<key>.fetch      exclusive flock while one process downloads <key>
    <cache>/.locks/<key>.use        shared flock held by each process using <key> (``hold``)
    <cache>/.tmp/<key>-<pid>-<rand> a download in progress, renamed to <cache>/<key> when complete

``key`` is the sha256 of the URI, so a cached artifact is found without the network; the content's
own sha256 is recorded in ``meta.json`` and checked against a pin. An entry appears by one
``rename`` of a complete, fsynced directory, so a reader sees all of it or none of it. Lock files
are never deleted (unlinking a lock file while another process opens it splits the lock).

Everything here is blocking file-system work; the callers run it at start-up or in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("zeroserve.modelserver.storage")

META = "meta.json"
LOCKS = ".locks"
TMP = ".tmp"
TRASH = ".trash"


class FetchError(ValueError):
    """An artifact could not be fetched: the message starts with the URI, then the reason.

    ``transient`` is True where trying again later may succeed (connection refused, 5xx, a body
    cut short) and False where it will not without a change (404, 403, a sha256 mismatch, a bad
    URI); the caller owns retries and their back-off.
    """

    def __init__(self, uri: str, reason: str, *, transient: bool = False) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One complete cache entry, as its ``meta.json`` records it."""

    key: str
    """sha256 of the URI, the entry's directory name."""
    uri: str
    sha256: str
    """Digest of the content: the downloaded bytes (a file or an archive), or a directory's
    manifest (see ``tree_sha256``)."""
    size: int
    """Bytes the artifact takes in the cache (an unpacked archive: the sum of its files)."""
    name: str
    """File or directory name of the artifact inside the entry."""
    path: Path
    """The artifact itself: ``<cache>/<key>/<name>``."""
    last_used: float
    """The entry directory's mtime, touched on every fetch that finds it (LRU order)."""


def uri_key(uri: str) -> str:
    """The cache key of a URI: its sha256 in hex."""
    return hashlib.sha256(uri.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$ZEROSERVE_MODEL_CACHE``, else ``~/.cache/zeroserve/models``."""
    env = os.environ.get("ZEROSERVE_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "zeroserve" / "models"


_UNITS = {
    "": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_bytes(name: str, value: str) -> int:
    """``10Gi`` → 10737418240: whole bytes with an optional Kubernetes suffix (K, Ki, M, Mi, ...).

    The error names the setting and echoes the value: ``ZEROSERVE_MODEL_CACHE_MAX_BYTES = '1.5x'``.
    """
    text = value.strip()
    digits = text.rstrip("KMGTi")
    unit = text[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS or int(digits) <= 0:
        raise ValueError(
            f"{name} = {value!r}: must be a positive whole number of bytes, optionally with a "
            "suffix K, M, G, T, Ki, Mi, Gi or Ti (e.g. 10Gi)"
        )
    return int(digits) * _UNITS[unit]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (an unpacked archive before its rename)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def tree_size(path: Path) -> int:
    """Bytes of a file, or of the regular files under a directory."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            file = Path(dirpath, name)
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: Path) -> str:
    """A directory's digest: the sha256 of its ``sha256sum``-style manifest.

    The manifest has one line ``<file sha256>  ./<relative path>\\n`` per regular file, sorted by
    path bytes, which is what ``cd DIR && find . -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum | sha256sum`` prints. A file's digest is the plain sha256 of its bytes.
    """
    if not path.is_dir():
        return file_sha256(path)
    files: list[str] = []
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            file = Path(dirpath, name)
            if file.is_file() and not file.is_symlink():
                files.append("./" + file.relative_to(path).as_posix())
    manifest = "".join(
        f"{file_sha256(path / rel[2:])}  {rel}\n" for rel in sorted(files, key=os.fsencode)
    )
    return hashlib.sha256(manifest.encode()).hexdigest()


class Cache:
    """The cache directory: lookups, one-download-at-a-time locks, entries, eviction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in (LOCKS, TMP, TRASH):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Entry | None:
        """The complete entry for ``key``, or None (absent, or its meta.json unreadable)."""
        base = self.root / key
        try:
            meta = json.loads((base / META).read_text())
            stat = base.stat()
            return Entry(
                key=key,
                uri=str(meta["uri"]),
                sha256=str(meta["sha256"]),
                size=int(meta["size"]),
                name=str(meta["name"]),
                path=base / str(meta["name"]),
                last_used=stat.st_mtime,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def entries(self) -> list[Entry]:
        found = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            entry = self.entry(child.name)
            if entry is not None:
                found.append(entry)
        return found

    def touch(self, key: str) -> None:
        """Record a use: the entry's mtime orders eviction.

        An explicit nanosecond stamp: a plain utime() takes the kernel's coarse clock, which gives
        two uses a few milliseconds apart the same mtime.
        """
        now = time.time_ns()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.root / key, ns=(now, now))

    @contextlib.contextmanager
    def fetch_lock(self, key: str, uri: str) -> Iterator[None]:
        """Exclusive while downloading ``key``: replicas starting together download once."""
        fd = os.open(self.root / LOCKS / f"{key}.fetch", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process fetching the artifact", extra={"uri": uri})
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def new_tmp(self, key: str) -> Path:
        """A fresh staging directory for ``key``, after removing any a crashed process left.

        Called under ``fetch_lock(key)``, so every other ``<key>-*`` directory is stale.
        """
        tmp_root = self.root / TMP
        for stale in tmp_root.glob(f"{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        path = tmp_root / f"{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def commit(self, key: str, staged: Path, *, uri: str, sha256: str, name: str) -> Entry:
        """Write meta.json into ``staged`` and rename it to ``<cache>/<key>``: the entry appears whole."""
        size = tree_size(staged / name)
        meta = staged / META
        with meta.open("w") as f:
            json.dump({"uri": uri, "sha256": sha256, "size": size, "name": name}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(staged)
        os.rename(staged, self.root / key)
        fsync_dir(self.root)
        self.touch(key)
        entry = self.entry(key)
        assert entry is not None  # just renamed into place under the fetch lock
        return entry

    def remove(self, key: str) -> bool:
        """Remove ``key``'s entry unless a process holds it; False when held.

        The entry is renamed out of the way first, so no reader finds half of it.
        """
        fd = os.open(self.root / LOCKS / f"{key}.use", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            trash = self.root / TRASH / f"{key}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.root / key, trash)
            except FileNotFoundError:
                return True
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def evict(self, max_bytes: int, *, keep: str) -> list[Entry]:
        """Remove least-recently-used entries until the total fits ``max_bytes``.

        Never the entry ``keep`` (the one just fetched) nor one that a process holds; when those
        alone exceed the limit the cache stays over it. Returns the entries removed.
        """
        for crashed in (self.root / TRASH).iterdir():  # a removal that a crash cut short
            shutil.rmtree(crashed, ignore_errors=True)
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        removed = []
        for entry in entries:
            if total <= max_bytes:
                break
            if entry.key == keep or not self.remove(entry.key):
                continue
            total -= entry.size
            removed.append(entry)
            log.info(
                "artifact evicted",
                extra={"uri": entry.uri, "bytes": entry.size, "cache_bytes": total},
            )
        if total > max_bytes:
            log.warning(
                "artifact cache over its limit: the rest is in use",
                extra={"cache_bytes": total, "max_bytes": max_bytes},
            )
        return removed


def _entry_of(path: Path) -> tuple[Path, str] | None:
    """(cache root, key) when ``path`` is an artifact inside a cache, else None."""
    entry_dir = path.parent
    key = entry_dir.name
    is_key = len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    if is_key and (entry_dir.parent / LOCKS).is_dir():
        return entry_dir.parent, key
    return None


@contextlib.contextmanager
def hold(path: Path | str) -> Iterator[Path]:
    """Mark the artifact ``path`` (as ``fetch`` returned it) in use while the block runs.

    A shared flock on ``<cache>/.locks/<key>.use``: eviction takes that lock exclusively without
    waiting and skips what it cannot take, so a held artifact is never removed. A model server
    holds its artifact for its whole life. A path outside a cache (a local file served in place)
    needs no protection and is yielded as it is. Raises FetchError when the artifact was evicted
    between ``fetch`` and ``hold``: fetch it again.
    """
    artifact = Path(path).absolute()
    where = _entry_of(artifact)
    if where is None:
        yield artifact
        return
    root, key = where
    fd = os.open(root / LOCKS / f"{key}.use", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not artifact.exists():
            raise FetchError(
                str(artifact), "evicted from the cache before it was held; fetch again"
            )
        yield artifact
    finally:
        os.close(fd)
