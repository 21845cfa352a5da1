"""storageUri fetching into the node-local artifact cache (modelserver/cache.py).

``fetch(uri)`` returns a local path for ``file://``, plain paths, ``http(s)://`` and ``s3://``;
``.tar.gz`` / ``.tgz`` / ``.zip`` artifacts are unpacked (safely) into a directory. The model
server's start, the local runtime's prefetch and the Kubernetes init step all call it::

    python -m modelserver.storage fetch URI [--sha256 HEX] [--cache-dir DIR] [--max-bytes N]

prints the local path (exit 1 with the reason on stderr). docs/model-storage.md has the layout and
the guarantees.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import logging
import os
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from modelserver.cache import (
    Cache,
    Entry,
    FetchError,
    default_cache_dir,
    file_sha256,
    fsync_tree,
    hold,
    parse_bytes,
    tree_sha256,
    uri_key,
)

__all__ = ["FetchError", "fetch", "hold", "main"]

log = logging.getLogger("zeroserve.modelserver.storage")

SCHEMES = ("file", "http", "https", "s3")
ARCHIVES = (".tar.gz", ".tgz", ".zip")
HTTP_TIMEOUT_S = 60.0
"""Connect and per-read timeout of an HTTP download: a stalled server fails the fetch."""
CHUNK = 1 << 20


def fetch(
    uri: str,
    *,
    cache_dir: Path | None = None,
    sha256: str | None = None,
    max_bytes: int | None = None,
) -> Path:
    """The local path of the artifact at ``uri``, downloading it into the cache if needed.

    ``sha256`` pins the content (hex, ``sha256:`` prefix allowed): a file's or an archive's bytes,
    or a directory's manifest digest (``cache.tree_sha256``). ``max_bytes`` (default
    ``$ZEROSERVE_MODEL_CACHE_MAX_BYTES``, else no limit) bounds the cache, evicting the least
    recently used artifacts that nobody holds. Local files and directories are used in place.
    Raises FetchError, whose message starts with ``uri``.
    """
    pin = _parse_pin(uri, sha256)
    limit = max_bytes if max_bytes is not None else _env_max_bytes(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    key = uri_key(uri)
    if scheme in ("", "file"):
        path = _local_path(uri)
        if not (path.is_file() and _archive_kind(path.name)):
            return _local(uri, path, pin)
        stat = path.stat()
        # a local archive is unpacked into the cache; a changed file is a new entry
        key = uri_key(f"{uri}\n{stat.st_size}\n{stat.st_mtime_ns}")
        source: Callable[[Path], tuple[Path, str]] = functools.partial(_local_archive, path)
    elif scheme in ("http", "https"):
        source = functools.partial(_http_download, uri)
    elif scheme == "s3":
        source = functools.partial(_s3_download, uri)
    else:
        raise FetchError(uri, f"unsupported scheme {scheme!r} ({', '.join(SCHEMES)})")
    cache = Cache(cache_dir if cache_dir is not None else default_cache_dir())
    entry = _cached(cache, key, uri, pin, source)
    if limit is not None:
        cache.evict(limit, keep=entry.key)
    return entry.path


def _cached(
    cache: Cache,
    key: str,
    uri: str,
    pin: str | None,
    source: Callable[[Path], tuple[Path, str]],
) -> Entry:
    """The entry for ``key``: found, or downloaded once under the key's lock and renamed into place."""
    entry = cache.entry(key)
    if entry is not None and pin in (None, entry.sha256):
        cache.touch(key)
        log.debug("artifact cache hit", extra={"uri": uri, "path": str(entry.path)})
        return entry
    with cache.fetch_lock(key, uri):
        # another process may have fetched it while this one waited for the lock
        entry = cache.entry(key)
        if entry is not None and pin in (None, entry.sha256):
            cache.touch(key)
            return entry
        start = time.monotonic()
        staged = cache.new_tmp(key)
        try:
            raw, digest = source(staged)
            if pin is not None and digest != pin:
                raise FetchError(uri, f"sha256 mismatch: pinned {pin}, got {digest}")
            kind = _archive_kind(raw.name)
            if kind is not None:
                name = raw.name[: -len(kind)] or "model"
                _unpack(uri, kind, raw, staged / name)
                if raw.parent == staged:
                    raw.unlink()
            else:
                name = raw.name
            fsync_tree(staged / name)
            # a cached copy that differs from the pin (or whose meta.json is unreadable) goes
            if (cache.root / key).exists() and not cache.remove(key):
                cached = entry.sha256 if entry is not None else "unknown"
                raise FetchError(
                    uri,
                    f"the cached copy (sha256 {cached}) differs from the pinned {pin} "
                    "and is in use: it cannot be replaced",
                )
            new = cache.commit(key, staged, uri=uri, sha256=digest, name=name)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    log.info(
        "artifact fetched",
        extra={
            "uri": uri,
            "path": str(new.path),
            "bytes": new.size,
            "sha256": digest,
            "seconds": round(time.monotonic() - start, 3),
        },
    )
    return new


def _parse_pin(uri: str, sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    pin = sha256.strip().lower().removeprefix("sha256:")
    if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
        raise FetchError(uri, f"sha256 pin {sha256!r} is not 64 hex digits")
    return pin


def _env_max_bytes(uri: str) -> int | None:
    value = os.environ.get("ZEROSERVE_MODEL_CACHE_MAX_BYTES", "").strip()
    if not value:
        return None
    try:
        return parse_bytes("ZEROSERVE_MODEL_CACHE_MAX_BYTES", value)
    except ValueError as e:
        raise FetchError(uri, str(e)) from None


def _archive_kind(name: str) -> str | None:
    lower = name.lower()
    return next((suffix for suffix in ARCHIVES if lower.endswith(suffix)), None)


# ---------------------------------------------------------------- local files


def _local_path(uri: str) -> Path:
    if "://" not in uri:
        return Path(uri).expanduser().absolute()
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(uri, f"file:// URI names host {parts.netloc!r}: use file:///ABSOLUTE/PATH")
    return Path(unquote(parts.path))


def _local(uri: str, path: Path, pin: str | None) -> Path:
    """A local file or directory is used where it is: no copy, nothing to evict."""
    if not path.exists():
        raise FetchError(uri, f"no such file or directory: {path}")
    if pin is not None:
        digest = tree_sha256(path)
        if digest != pin:
            raise FetchError(uri, f"sha256 mismatch: pinned {pin}, got {digest}")
    return path


def _local_archive(path: Path, _staged: Path) -> tuple[Path, str]:
    """A local archive is unpacked from where it lies: nothing to download."""
    return path, file_sha256(path)


# ---------------------------------------------------------------- http(s)


def _url_name(path: str, default: str = "model") -> str:
    name = PurePosixPath(unquote(path)).name
    return name if name not in ("", ".", "..") else default


def _http_download(uri: str, staged: Path) -> tuple[Path, str]:
    dest = staged / _url_name(urlsplit(uri).path)
    request = urllib.request.Request(uri, headers={"User-Agent": "zeroserve-modelserver"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            digest, got = _copy(response, dest)
    except urllib.error.HTTPError as e:
        e.close()
        raise FetchError(
            uri, f"{e.code} {e.reason}", transient=e.code >= 500 or e.code in (408, 429)
        ) from None
    except urllib.error.URLError as e:
        raise FetchError(uri, _os_reason(e.reason), transient=True) from None
    except http.client.IncompleteRead as e:
        raise FetchError(
            uri, f"connection closed after {len(e.partial)} bytes of a chunk", transient=True
        ) from None
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(uri, _os_reason(e), transient=True) from None
    if expected is not None and expected.isdigit() and got != int(expected):
        raise FetchError(uri, f"connection closed after {got} of {expected} bytes", transient=True)
    return dest, digest


def _copy(stream: Any, dest: Path) -> tuple[str, int]:
    """Copy a readable stream to ``dest`` (fsynced): (sha256 hex, bytes)."""
    digest = hashlib.sha256()
    total = 0
    # read1: what has arrived, so a stalled body is on disk up to where it stalled
    read = getattr(stream, "read1", stream.read)
    with dest.open("wb") as out:
        while chunk := read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            total += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), total


def _os_reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host: {reason.strerror}"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


# ---------------------------------------------------------------- s3


def _s3_client(uri: str) -> Any:
    """boto3's client: credentials from the usual chain, endpoint from AWS_ENDPOINT_URL(_S3)."""
    try:
        import boto3
    except ImportError:
        raise FetchError(uri, "s3:// needs boto3: pip install 'zeroserve[s3]'") from None
    # a fresh session each time: boto3's default one keeps the credentials it first found,
    # and a long-lived caller (the local runtime's prefetch) must see rotated ones
    return boto3.session.Session().client("s3")


def _s3_error(uri: str, e: Exception) -> FetchError:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(e, ClientError):
        error = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        code = error.get("Code", "") or error.get("Message", "")
        transient = isinstance(status, int) and (status >= 500 or status in (408, 429))
        return FetchError(uri, f"{status} {code}".strip(), transient=transient)
    if isinstance(e, NoCredentialsError | PartialCredentialsError):
        return FetchError(
            uri, f"{e} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(e, EndpointConnectionError):
        refused = "refused" in str(e.kwargs.get("error", "")).lower()
        reason = "connection refused" if refused else "cannot connect"
        return FetchError(uri, f"{reason}: {e.kwargs.get('endpoint_url')}", transient=True)
    return FetchError(uri, str(e) or type(e).__name__, transient=True)


def _s3_download(uri: str, staged: Path) -> tuple[Path, str]:
    """``s3://bucket/key``: the object, or every object under ``key/`` as a directory."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket:
        raise FetchError(uri, "s3:// URI has no bucket: use s3://BUCKET/KEY")
    client = _s3_client(uri)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if key and not key.endswith("/"):
            dest = staged / _url_name(key)
            try:
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "NoSuchKey":
                    raise
                # not an object: perhaps a "directory" of objects under key/
                directory = _s3_directory(uri, client, bucket, key + "/", staged)
                if directory is None:
                    raise
                return directory
            with contextlib.closing(body):
                digest, _ = _copy(body, dest)
            return dest, digest
        directory = _s3_directory(uri, client, bucket, key, staged)
        if directory is None:
            raise FetchError(uri, "404 NoSuchKey (no object under this prefix)")
        return directory
    except (ClientError, BotoCoreError) as e:
        raise _s3_error(uri, e) from None


def _s3_directory(
    uri: str, client: Any, bucket: str, prefix: str, staged: Path
) -> tuple[Path, str] | None:
    """Download every object under ``prefix`` into one directory; None when there is none."""
    root = staged / _url_name(prefix.rstrip("/"), default=bucket)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if not rel or rel.endswith("/"):
                continue  # the prefix itself, or a "folder" marker
            _check_member(uri, rel)
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            with contextlib.closing(body):
                _copy(body, dest)
            count += 1
    if count == 0:
        return None
    return root, tree_sha256(root)


# ---------------------------------------------------------------- archives


def _check_member(uri: str, name: str) -> None:
    """Refuse a member name that would land outside the directory it is unpacked into."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise FetchError(uri, f"unsafe archive member {name!r}: absolute path")
    if ".." in path.parts:
        raise FetchError(uri, f"unsafe archive member {name!r}: '..' leaves the directory")


def _inside(base: str, target: str) -> bool:
    """Whether ``target`` (relative to member directory ``base``) stays inside the root."""
    parts: list[str] = []
    for part in (PurePosixPath(base) / target).parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part != ".":
            parts.append(part)
    return True


def _unpack(uri: str, kind: str, archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``: no absolute paths, no ``..``, no links leading out."""
    dest.mkdir()
    try:
        if kind == ".zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(uri, info.filename)
                zf.extractall(dest)
            return
        with tarfile.open(archive, "r:gz") as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(uri, m.name)
                if m.issym():
                    if m.linkname.startswith("/") or not _inside(
                        str(PurePosixPath(m.name).parent), m.linkname
                    ):
                        raise FetchError(
                            uri,
                            f"unsafe archive member {m.name!r}: link to {m.linkname!r} "
                            "leaves the directory",
                        )
                elif m.islnk():
                    _check_member(uri, m.linkname)
                elif not (m.isfile() or m.isdir()):
                    raise FetchError(
                        uri, f"unsafe archive member {m.name!r}: not a file, directory or link"
                    )
            if hasattr(tarfile, "data_filter"):  # 3.11.4+: the same rules, checked again
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older 3.11 patch releases
                tf.extractall(dest, members=members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise FetchError(uri, f"not a valid {kind} archive: {e}") from None


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelserver.storage fetch URI``: print the artifact's local path."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver.storage",
        description="Fetch a storageUri into the node-local artifact cache.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="fetch URI and print its local path")
    p.add_argument("uri", help="file://, http(s)://, s3:// or a plain path")
    p.add_argument("--sha256", help="expected content digest (hex)")
    p.add_argument(
        "--cache-dir", type=Path, help="cache directory (default $ZEROSERVE_MODEL_CACHE)"
    )
    p.add_argument("--max-bytes", help="cache size limit, e.g. 10Gi (default: no limit)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)

    from metrics.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        limit = parse_bytes("--max-bytes", args.max_bytes) if args.max_bytes else None
        path = fetch(args.uri, cache_dir=args.cache_dir, sha256=args.sha256, max_bytes=limit)
    except (FetchError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
