"""storageUri fetching and the node-local artifact cache (modelserver/storage.py, cache.py).

Real servers on loopback: an http.server that counts requests (and can cut or stall a body), and
moto's S3 server in its own process. Concurrency and "in use" run real processes.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelserver import storage
from modelserver.cache import LOCKS, TMP, Cache, tree_sha256, uri_key
from modelserver.storage import FetchError, fetch, hold

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- an HTTP server on loopback


class FileServer(ThreadingHTTPServer):
    """Serves ``files``; counts GETs per path; ``/cut/...`` closes mid-body; gated paths stall."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.hits[self.path] += 1
        if self.path in srv.status:
            self.send_error(srv.status[self.path])
            return
        cut = self.path.startswith("/cut/")
        body = srv.files.get(self.path.removeprefix("/cut") if cut else self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        half = len(body) // 2
        self.wfile.write(body[:half])
        self.wfile.flush()
        if cut:
            return  # HTTP/1.0: the connection closes with half the promised body
        gate = srv.gates.get(self.path)
        if gate is not None and not gate.wait(DEADLINE_S):
            return
        with contextlib.suppress(OSError):
            self.wfile.write(body[half:])


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        for gate in srv.gates.values():
            gate.set()
        srv.shutdown()
        srv.server_close()
        thread.join(DEADLINE_S)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def leftovers(cache_dir: Path) -> list[str]:
    """Anything in the cache besides complete entries and lock files."""
    found = [p.name for p in (cache_dir / TMP).iterdir()] if (cache_dir / TMP).exists() else []
    if cache_dir.exists():
        found += [
            p.name
            for p in cache_dir.iterdir()
            if p.name not in (LOCKS, TMP, ".trash") and not (p / "meta.json").is_file()
        ]
    return found


def entry_keys(cache_dir: Path) -> set[str]:
    return {e.key for e in Cache(cache_dir).entries()}


# ---------------------------------------------------------------- archives


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


MODEL_FILES = {"model/model.json": b'{"trees": []}', "model/meta/labels.txt": b"setosa\n"}


# ---------------------------------------------------------------- http(s)


def test_http_file_is_fetched_once_then_found_without_the_network(
    server: FileServer, cache_dir: Path
) -> None:
    body = os.urandom(300_000)
    server.files["/iris/model.joblib"] = body
    uri = f"{server.base}/iris/model.joblib"

    path = fetch(uri, cache_dir=cache_dir)

    assert path.name == "model.joblib"  # the name keeps its extension: formats dispatch on it
    assert path.read_bytes() == body
    assert path.parent == cache_dir / uri_key(uri)
    assert Cache(cache_dir).entry(uri_key(uri)).sha256 == sha(body)  # type: ignore[union-attr]
    server.shutdown()  # no network from here on
    assert fetch(uri, cache_dir=cache_dir) == path
    assert server.hits["/iris/model.joblib"] == 1
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("model.tar.gz", tar_gz(MODEL_FILES), id="tar.gz"),
        pytest.param("model.tgz", tar_gz(MODEL_FILES), id="tgz"),
        pytest.param("model.zip", zip_bytes(MODEL_FILES), id="zip"),
    ],
)
def test_http_archives_are_unpacked_into_a_directory(
    server: FileServer, cache_dir: Path, name: str, data: bytes
) -> None:
    server.files[f"/{name}"] = data

    path = fetch(f"{server.base}/{name}", cache_dir=cache_dir, sha256=sha(data))

    assert path.is_dir()
    assert path.name == "model"
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert files == MODEL_FILES
    assert not list(path.parent.glob(name))  # the archive itself is not kept
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        pytest.param(
            "a.tar.gz", tar_gz({"../escaped": b"x"}), "'../escaped': '..'", id="tar-dotdot"
        ),
        pytest.param(
            "a.tar.gz", tar_gz({"/tmp/escaped": b"x"}), "'/tmp/escaped': absolute", id="tar-abs"
        ),
        pytest.param(
            "a.tar.gz",
            tar_gz({"m/ok": b"x"}, links={"m/link": "../../outside"}),
            "'m/link': link to '../../outside' leaves",
            id="tar-symlink-out",
        ),
        pytest.param(
            "a.tar.gz",
            tar_gz({}, links={"link": "/etc/passwd"}),
            "'link': link to '/etc/passwd' leaves",
            id="tar-symlink-abs",
        ),
        pytest.param(
            "a.zip", zip_bytes({"ok": b"x", "../escaped": b"x"}), "'../escaped'", id="zip-dotdot"
        ),
        pytest.param("a.zip", b"not a zip at all", "not a valid .zip archive", id="zip-garbage"),
    ],
)
def test_unsafe_or_broken_archives_are_refused_and_leave_nothing(
    server: FileServer, tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    cache_dir = tmp_path / "deep" / "er" / "cache"
    server.files[f"/{name}"] = data
    uri = f"{server.base}/{name}"

    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)

    assert str(err.value).startswith(f"{uri}: ")
    assert reason in str(err.value)
    assert not err.value.transient
    assert entry_keys(cache_dir) == set()
    assert leftovers(cache_dir) == []
    assert not list(tmp_path.rglob("escaped"))


def test_a_symlink_inside_the_archive_is_kept(server: FileServer, cache_dir: Path) -> None:
    data = tar_gz({"m/v1/model.onnx": b"onnx"}, links={"m/current": "v1"})
    server.files["/m.tar.gz"] = data

    path = fetch(f"{server.base}/m.tar.gz", cache_dir=cache_dir)

    assert (path / "m" / "current" / "model.onnx").read_bytes() == b"onnx"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("path", "status", "reason", "transient"),
    [
        pytest.param("/m.joblib", None, "404 Not Found", False, id="404"),
        pytest.param("/m.joblib", 403, "403 Forbidden", False, id="403"),
        pytest.param("/m.joblib", 503, "503 Service Unavailable", True, id="503"),
        pytest.param("/cut/m.joblib", None, "connection closed after 500 of 1000 bytes", True,
                     id="body-cut-short"),
    ],
)  # fmt: skip
def test_http_errors_name_the_uri_and_the_reason(
    server: FileServer,
    cache_dir: Path,
    path: str,
    status: int | None,
    reason: str,
    transient: bool,
) -> None:
    if path.startswith("/cut"):
        server.files["/m.joblib"] = b"x" * 1000
    if status is not None:
        server.status[path] = status
    uri = f"{server.base}{path}"

    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)

    assert str(err.value) == f"{uri}: {reason}"
    assert err.value.transient is transient
    assert entry_keys(cache_dir) == set()
    assert leftovers(cache_dir) == []


def test_connection_refused(cache_dir: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}/m.joblib"

    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)

    assert str(err.value) == f"{uri}: connection refused"
    assert err.value.transient


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        pytest.param("ftp://x", "ftp://x: unsupported scheme 'ftp' (file, http, https, s3)",
                     id="ftp"),
        pytest.param("gs://b/m", "gs://b/m: unsupported scheme 'gs' (file, http, https, s3)",
                     id="gs"),
        pytest.param("file://host/m", "file://host/m: file:// URI names host 'host': "
                     "use file:///ABSOLUTE/PATH", id="file-with-host"),
        pytest.param("s3:///key", "s3:///key: s3:// URI has no bucket: use s3://BUCKET/KEY",
                     id="s3-no-bucket"),
    ],
)  # fmt: skip
def test_bad_uris(cache_dir: Path, uri: str, message: str) -> None:
    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)
    assert str(err.value) == message
    assert not err.value.transient


# ---------------------------------------------------------------- sha256 pins


def test_a_pin_is_verified_and_a_mismatch_leaves_nothing(
    server: FileServer, cache_dir: Path
) -> None:
    body = b"model bytes"
    server.files["/m.joblib"] = body
    uri = f"{server.base}/m.joblib"
    wrong = "0" * 64

    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir, sha256=wrong)

    assert str(err.value) == f"{uri}: sha256 mismatch: pinned {wrong}, got {sha(body)}"
    assert not err.value.transient
    assert entry_keys(cache_dir) == set()
    assert leftovers(cache_dir) == []
    assert (
        fetch(uri, cache_dir=cache_dir, sha256=f"sha256:{sha(body).upper()}").read_bytes() == body
    )


def test_a_pin_that_differs_from_the_cached_copy_fetches_again(
    server: FileServer, cache_dir: Path
) -> None:
    uri = f"{server.base}/m.joblib"
    server.files["/m.joblib"] = b"v1"
    assert fetch(uri, cache_dir=cache_dir).read_bytes() == b"v1"
    server.files["/m.joblib"] = b"v2"

    assert fetch(uri, cache_dir=cache_dir).read_bytes() == b"v1"  # unpinned: the cache answers
    assert fetch(uri, cache_dir=cache_dir, sha256=sha(b"v2")).read_bytes() == b"v2"
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(uri, cache_dir=cache_dir, sha256=sha(b"v1"))
    assert server.hits["/m.joblib"] == 3
    assert fetch(uri, cache_dir=cache_dir).read_bytes() == b"v2"


def test_a_malformed_pin_is_refused(cache_dir: Path) -> None:
    with pytest.raises(FetchError, match=r"^ftp://x: sha256 pin 'abc' is not 64 hex digits$"):
        fetch("ftp://x", cache_dir=cache_dir, sha256="abc")


# ---------------------------------------------------------------- local files


def test_local_files_and_directories_are_used_in_place(tmp_path: Path, cache_dir: Path) -> None:
    model = tmp_path / "model.joblib"
    model.write_bytes(b"local")
    directory = tmp_path / "dir"
    (directory / "sub").mkdir(parents=True)
    (directory / "a.bin").write_bytes(b"a")
    (directory / "sub" / "b.bin").write_bytes(b"b")

    assert fetch(str(model), cache_dir=cache_dir) == model
    assert fetch(f"file://{model}", cache_dir=cache_dir, sha256=sha(b"local")) == model
    assert fetch(f"file://{directory}", cache_dir=cache_dir) == directory
    assert not cache_dir.exists()  # nothing copied
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(str(model), cache_dir=cache_dir, sha256=sha(b"other"))
    missing = tmp_path / "missing.joblib"
    with pytest.raises(FetchError) as err:
        fetch(str(missing), cache_dir=cache_dir)
    assert str(err.value) == f"{missing}: no such file or directory: {missing}"


def test_a_directory_digest_is_what_the_documented_shell_pipeline_prints(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    (directory / "B").mkdir(parents=True)
    (directory / "a b.txt").write_bytes(b"space")
    (directory / "B" / "x").write_bytes(b"x")
    (directory / "_").write_bytes(b"")

    shell = subprocess.run(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum",
        shell=True,
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )

    assert tree_sha256(directory) == shell.stdout.split()[0]


def test_a_local_archive_is_unpacked_into_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_gz(MODEL_FILES))

    path = fetch(str(archive), cache_dir=cache_dir)

    assert path.parent.parent == cache_dir
    assert (path / "model" / "model.json").read_bytes() == MODEL_FILES["model/model.json"]
    archive.write_bytes(tar_gz({"model/model.json": b"new"}))  # a changed file: a new entry
    assert (
        fetch(str(archive), cache_dir=cache_dir) / "model" / "model.json"
    ).read_bytes() == b"new"


def test_the_cache_dir_defaults_to_the_environment(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROSERVE_MODEL_CACHE", str(tmp_path / "env-cache"))
    server.files["/m.joblib"] = b"m"

    path = fetch(f"{server.base}/m.joblib")

    assert path.parent.parent == tmp_path / "env-cache"


# ---------------------------------------------------------------- CLI


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelserver.storage", "fetch", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_cli_prints_the_path_and_exits_1_with_the_reason(
    server: FileServer, cache_dir: Path
) -> None:
    server.files["/m.joblib"] = b"m"
    uri = f"{server.base}/m.joblib"

    ok = cli(uri, "--cache-dir", str(cache_dir), "--sha256", sha(b"m"))
    out, _ = ok.communicate(timeout=DEADLINE_S)
    assert ok.returncode == 0
    assert Path(out.strip()).read_bytes() == b"m"

    missing = f"{server.base}/missing.joblib"
    bad = cli(missing, "--cache-dir", str(cache_dir))
    out, err = bad.communicate(timeout=DEADLINE_S)
    assert bad.returncode == 1
    assert out == ""
    assert err.splitlines()[-1] == f"{missing}: 404 Not Found"


def test_cli_refuses_a_bad_size_limit(cache_dir: Path) -> None:
    proc = cli("ftp://x", "--cache-dir", str(cache_dir), "--max-bytes", "10GB")
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 1
    assert "--max-bytes = '10GB': must be a positive whole number of bytes" in err


def test_a_bad_size_limit_in_the_environment_is_named(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROSERVE_MODEL_CACHE_MAX_BYTES", "lots")
    with pytest.raises(FetchError, match=r"ZEROSERVE_MODEL_CACHE_MAX_BYTES = 'lots': must be"):
        fetch("http://127.0.0.1:1/m", cache_dir=cache_dir)


# ---------------------------------------------------------------- one download, atomic entries


class Replica:
    """A CLI fetch in its own process; its stderr is read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = cli(*args)
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def waiting(self) -> bool:
        return any("waiting for another process fetching the artifact" in x for x in self.stderr)

    def finish(self) -> tuple[int, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(DEADLINE_S)
        self.reader.join(DEADLINE_S)
        self.proc.stdout.close()
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.proc.returncode, out


def test_replicas_starting_together_download_once(server: FileServer, cache_dir: Path) -> None:
    body = os.urandom(1_000_000)
    server.files["/big.joblib"] = body
    gate = server.gates["/big.joblib"] = threading.Event()
    uri = f"{server.base}/big.joblib"
    count = 4

    replicas = [Replica(uri, "--cache-dir", str(cache_dir)) for _ in range(count)]
    # The first replica's download stalls halfway until the others have found its lock taken
    # (or, were there no lock, until they all asked the server too).
    try:
        wait_until(
            lambda: (
                sum(r.waiting() for r in replicas) == count - 1
                or server.hits["/big.joblib"] == count
            ),
            "the other replicas to wait for the first one's download",
        )
    finally:
        gate.set()
        results = [r.finish() for r in replicas]

    assert [rc for rc, _ in results] == [0] * count, [r.stderr for r in replicas]
    assert server.hits["/big.joblib"] == 1
    paths = {Path(out.strip()) for _, out in results}
    assert len(paths) == 1
    assert paths.pop().read_bytes() == body


def test_a_download_killed_midway_leaves_no_entry(server: FileServer, cache_dir: Path) -> None:
    body = os.urandom(200_000)
    server.files["/m.joblib"] = body
    server.gates["/m.joblib"] = threading.Event()  # never set: the body stalls halfway
    uri = f"{server.base}/m.joblib"

    proc = cli(uri, "--cache-dir", str(cache_dir))
    staged = cache_dir / TMP
    try:
        wait_until(
            lambda: any(p.stat().st_size > 0 for p in staged.rglob("m.joblib")),
            "half the body on disk",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=DEADLINE_S)

    assert entry_keys(cache_dir) == set()  # a crash leaves a staging directory, never an entry
    server.gates["/m.joblib"].set()
    assert fetch(uri, cache_dir=cache_dir).read_bytes() == body
    assert leftovers(cache_dir) == []  # the next fetch of that key cleared the crashed one's


# ---------------------------------------------------------------- size limit and eviction


def holder(path: Path) -> subprocess.Popen[str]:
    """A process that holds ``path`` until its stdin closes, like a model server for its life."""
    code = (
        "import sys\n"
        "from modelserver.storage import hold\n"
        "with hold(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    proc.wait(DEADLINE_S)
    proc.stdout.close()


def test_the_least_recently_used_artifact_is_evicted_but_never_one_in_use(
    server: FileServer, cache_dir: Path
) -> None:
    for name in "abcde":
        server.files[f"/{name}.bin"] = name.encode() * 100
    uri = {name: f"{server.base}/{name}.bin" for name in "abcde"}
    key = {name: uri_key(u) for name, u in uri.items()}

    def get(name: str) -> Path:
        return fetch(uri[name], cache_dir=cache_dir, max_bytes=250)

    a, b = get("a"), get("b")
    get("a")  # a is now more recently used than b
    get("c")  # 300 bytes > 250: the least recently used goes
    assert entry_keys(cache_dir) == {key["a"], key["c"]}

    held = holder(a)  # a is now the least recently used, but in use by another process
    try:
        get("d")
        assert entry_keys(cache_dir) == {key["a"], key["d"]}
        assert a.read_bytes() == b"a" * 100
    finally:
        release(held)
    get("e")
    assert entry_keys(cache_dir) == {key["d"], key["e"]}
    assert not b.exists()
    assert leftovers(cache_dir) == []


def test_a_pinned_refetch_never_replaces_a_copy_in_use(server: FileServer, cache_dir: Path) -> None:
    uri = f"{server.base}/m.joblib"
    server.files["/m.joblib"] = b"v1"
    path = fetch(uri, cache_dir=cache_dir)
    server.files["/m.joblib"] = b"v2"

    held = holder(path)
    try:
        with pytest.raises(FetchError) as err:
            fetch(uri, cache_dir=cache_dir, sha256=sha(b"v2"))
    finally:
        release(held)

    assert str(err.value) == (
        f"{uri}: the cached copy (sha256 {sha(b'v1')}) differs from the pinned {sha(b'v2')} "
        "and is in use: it cannot be replaced"
    )
    assert path.read_bytes() == b"v1"
    assert leftovers(cache_dir) == []
    assert fetch(uri, cache_dir=cache_dir, sha256=sha(b"v2")).read_bytes() == b"v2"


def test_an_entry_with_an_unreadable_record_is_fetched_again(
    server: FileServer, cache_dir: Path
) -> None:
    uri = f"{server.base}/m.joblib"
    server.files["/m.joblib"] = b"m"
    path = fetch(uri, cache_dir=cache_dir)
    (path.parent / "meta.json").write_text("{not json")

    assert fetch(uri, cache_dir=cache_dir).read_bytes() == b"m"
    assert server.hits["/m.joblib"] == 2


def test_an_artifact_larger_than_the_limit_is_kept(server: FileServer, cache_dir: Path) -> None:
    server.files["/big.bin"] = b"x" * 1000

    path = fetch(f"{server.base}/big.bin", cache_dir=cache_dir, max_bytes=10)

    assert path.read_bytes() == b"x" * 1000


def test_the_size_limit_comes_from_the_environment(
    server: FileServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROSERVE_MODEL_CACHE_MAX_BYTES", "1Ki")
    server.files["/a.bin"] = b"a" * 1000
    server.files["/b.bin"] = b"b" * 1000

    a = fetch(f"{server.base}/a.bin", cache_dir=cache_dir)
    fetch(f"{server.base}/b.bin", cache_dir=cache_dir)

    assert not a.exists()


def test_hold_refuses_an_artifact_evicted_before_it_was_held(
    server: FileServer, cache_dir: Path, tmp_path: Path
) -> None:
    server.files["/a.bin"] = b"a"
    server.files["/b.bin"] = b"b"
    a = fetch(f"{server.base}/a.bin", cache_dir=cache_dir)
    fetch(f"{server.base}/b.bin", cache_dir=cache_dir, max_bytes=1)

    with pytest.raises(FetchError, match="evicted from the cache before it was held"), hold(a):
        pass
    local = tmp_path / "local.joblib"
    with hold(local) as held:  # outside a cache: nothing to protect
        assert held == local


def test_storage_exports_the_public_api() -> None:
    assert storage.__all__ == ["FetchError", "fetch", "hold", "main"]
    assert issubclass(FetchError, ValueError)


# ---------------------------------------------------------------- s3:// against moto's server


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3-compatible server in its own process, on an ephemeral loopback port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        endpoint = ""
        for line in proc.stderr:  # werkzeug prints " * Running on http://127.0.0.1:PORT"
            if "Running on http://" in line:
                endpoint = line.split("Running on ", 1)[1].strip()
                break
        assert endpoint, "moto's server did not start"
        # keep reading its log so that it never blocks on a full pipe
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(DEADLINE_S)
        proc.stderr.close()


S3_OBJECTS = {
    "iris/model.joblib": b"joblib bytes",
    "iris-dir/": b"",  # a "folder" marker, as consoles create
    "iris-dir/model.json": b'{"booster": 1}',
    "iris-dir/sub/labels.txt": b"setosa\n",
    "iris-dir2/other.bin": b"not part of iris-dir",
    "packed/model.tar.gz": tar_gz(MODEL_FILES),
}


@pytest.fixture
def s3(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A bucket ``models`` with S3_OBJECTS; the environment points boto3 at moto."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",  # loopback only: never ask an instance for keys
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.session.Session().client("s3")
    if "models" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket="models")
        for key, body in S3_OBJECTS.items():
            client.put_object(Bucket="models", Key=key, Body=body)
    return client


def test_s3_object_is_fetched_then_found_without_the_network(
    s3: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "s3://models/iris/model.joblib"
    body = S3_OBJECTS["iris/model.joblib"]

    path = fetch(uri, cache_dir=cache_dir, sha256=sha(body))

    assert path.name == "model.joblib"
    assert path.read_bytes() == body
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    assert fetch(uri, cache_dir=cache_dir) == path


@pytest.mark.parametrize("uri", ["s3://models/iris-dir", "s3://models/iris-dir/"])
def test_s3_prefix_is_fetched_as_a_directory(s3: Any, cache_dir: Path, uri: str) -> None:
    path = fetch(uri, cache_dir=cache_dir)

    assert path.is_dir()
    assert path.name == "iris-dir"
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert files == {"model.json": b'{"booster": 1}', "sub/labels.txt": b"setosa\n"}
    # a directory's pin is its manifest digest, the same wherever the files came from
    assert Cache(cache_dir).entry(uri_key(uri)).sha256 == tree_sha256(path)  # type: ignore[union-attr]


def test_s3_prefix_pin_is_verified(s3: Any, cache_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "iris-dir"
    (local / "sub").mkdir(parents=True)
    (local / "model.json").write_bytes(b'{"booster": 1}')
    (local / "sub" / "labels.txt").write_bytes(b"setosa\n")

    path = fetch("s3://models/iris-dir", cache_dir=cache_dir, sha256=tree_sha256(local))
    assert path.is_dir()
    with pytest.raises(FetchError, match=r"^s3://models/iris-dir/: sha256 mismatch: pinned 0{64}"):
        fetch("s3://models/iris-dir/", cache_dir=cache_dir, sha256="0" * 64)


def test_s3_archive_is_unpacked(s3: Any, cache_dir: Path) -> None:
    path = fetch("s3://models/packed/model.tar.gz", cache_dir=cache_dir)

    assert (path / "model" / "model.json").read_bytes() == MODEL_FILES["model/model.json"]


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        pytest.param("s3://models/iris/missing.joblib", "404 NoSuchKey", id="no-such-key"),
        pytest.param("s3://models/nothing/", "404 NoSuchKey (no object under this prefix)",
                     id="empty-prefix"),
        pytest.param("s3://no-such-bucket/m.joblib", "404 NoSuchBucket", id="no-such-bucket"),
    ],
)  # fmt: skip
def test_s3_errors_name_the_uri_and_the_code(
    s3: Any, cache_dir: Path, uri: str, reason: str
) -> None:
    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)

    assert str(err.value) == f"{uri}: {reason}"
    assert not err.value.transient
    assert entry_keys(cache_dir) == set()
    assert leftovers(cache_dir) == []


def moto_auth(endpoint: str, free_actions: str) -> None:
    """Turn moto's IAM checks on ("0") or off ("inf") for every request from now on."""
    import urllib.request

    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=free_actions.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
        response.read()


def test_s3_access_denied(
    s3: Any, moto_endpoint: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    iam = boto3.session.Session().client("iam")
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_user(UserName="no-policy")
    key = iam.create_access_key(UserName="no-policy")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    uri = "s3://models/iris/model.joblib"

    moto_auth(moto_endpoint, "0")
    try:
        with pytest.raises(FetchError) as err:
            fetch(uri, cache_dir=cache_dir)
    finally:
        moto_auth(moto_endpoint, "inf")

    assert str(err.value) == f"{uri}: 403 AccessDenied"
    assert not err.value.transient


def test_s3_connection_refused(s3: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    uri = "s3://models/iris/model.joblib"

    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)

    assert str(err.value) == f"{uri}: connection refused: {endpoint}/models/iris/model.joblib"
    assert err.value.transient


def test_s3_without_credentials(s3: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    uri = "s3://models/iris/model.joblib"

    with pytest.raises(FetchError) as err:
        fetch(uri, cache_dir=cache_dir)

    assert str(err.value) == (
        f"{uri}: Unable to locate credentials "
        "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    )
