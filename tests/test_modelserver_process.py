"""``python -m modelserver`` as a real process: it listens on $PORT, turns ready after loading and
warming up (logged with load_s and warmup_s), answers as the model does, exits 0 on SIGTERM; a bad
--format or --model is a clear error and a non-zero exit."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import sys
import tarfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import pytest

from tests.examples_support import ROOT, free_port, poll_until_status
from tests.modelserver_support import ROWS, iris, script

pytestmark = pytest.mark.e2e

X, Y = iris()
START_TIMEOUT_S = 60.0


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@asynccontextmanager
async def modelserver(args: Sequence[str], tmp_path: Path, **env: str) -> AsyncIterator[Proc]:
    port = free_port()
    log_path = tmp_path / "modelserver.log"
    full_env = {**os.environ, "PORT": str(port), "LOG_FORMAT": "json", **env}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "modelserver",
            *args,
            cwd=ROOT,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        yield Proc(proc, f"http://127.0.0.1:{port}", log_path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, Y)
    path = tmp_path_factory.mktemp("iris") / "model.joblib"
    joblib.dump(model, path)
    return path, model.predict(X[ROWS]).tolist()


async def test_process_serves_after_warm_up_and_stops_on_sigterm(
    tmp_path: Path, iris_model: tuple[Path, list[int]]
) -> None:
    path, expected = iris_model
    args = ["--name", "iris", "--format", "sklearn", "--model", str(path)]
    async with modelserver(args, tmp_path) as p, aiohttp.ClientSession() as session:
        await poll_until_status(
            session, p.base + "/v2/health/live", 200, timeout_s=START_TIMEOUT_S, what=p.log()
        )
        await poll_until_status(
            session, p.base + "/v2/health/ready", 200, timeout_s=START_TIMEOUT_S, what=p.log()
        )
        body = {"instances": X[ROWS].tolist()}
        async with session.post(p.base + "/v1/models/iris:predict", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["predictions"] == expected
        p.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(p.proc.wait(), 30) == 0
    records = p.records()
    by_msg = {r["msg"]: r for r in records}
    loaded = by_msg["model loaded"]
    assert loaded["model"] == "iris"
    assert loaded["format"] == "sklearn"
    assert loaded["load_s"] >= 0
    assert by_msg["warm-up done"]["warmup_s"] >= 0
    msgs = [r["msg"] for r in records]
    assert msgs.index("model loaded") < msgs.index("warm-up done")


async def test_process_serves_a_file_uri_archive_unpacked_into_the_cache(
    tmp_path: Path, iris_model: tuple[Path, list[int]]
) -> None:
    path, expected = iris_model
    archive = tmp_path / "iris.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(path, arcname="model.joblib")
    cache = tmp_path / "cache"
    port = free_port()  # --port wins over $PORT
    args = [
        "--name",
        "iris",
        "--format",
        "sklearn",
        "--model",
        archive.as_uri(),
        "--port",
        str(port),
    ]
    async with (
        modelserver(args, tmp_path, ZEROSERVE_MODEL_CACHE=str(cache)) as p,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{port}"
        await poll_until_status(
            session, base + "/v2/health/ready", 200, timeout_s=START_TIMEOUT_S, what=p.log()
        )
        body = {"instances": X[ROWS].tolist()}
        async with session.post(base + "/v1/models/iris:predict", json=body) as resp:
            assert (await resp.json())["predictions"] == expected
        unpacked = list(cache.rglob("model.joblib"))
        assert len(unpacked) == 1, "the archive was not unpacked into the cache"
        # While it serves, the server holds the artifact in use: eviction's exclusive lock fails.
        (use_lock,) = cache.rglob("*.use")
        assert not _can_lock_exclusively(use_lock)
        p.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(p.proc.wait(), 30) == 0
    assert _can_lock_exclusively(use_lock)


def _can_lock_exclusively(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def test_process_serves_torchscript_with_an_example_input_shape(tmp_path: Path) -> None:
    import numpy as np
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1)).eval()
    script(module).save(str(tmp_path / "model.pt"))
    batch = X[ROWS].astype(np.float32)
    with torch.inference_mode():
        expected = module(torch.from_numpy(batch)).numpy().tolist()
    # The "=" form: "-1,4" on its own would read as a flag.
    args = ["--name", "ts", "--format", "pytorch", "--model", str(tmp_path / "model.pt")]
    args += ["--example-input-shape=-1,4", "--device", "cpu"]
    async with modelserver(args, tmp_path) as p, aiohttp.ClientSession() as session:
        await poll_until_status(
            session, p.base + "/v2/health/ready", 200, timeout_s=START_TIMEOUT_S, what=p.log()
        )
        body = {"instances": batch.tolist()}
        async with session.post(p.base + "/v1/models/ts:predict", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["predictions"] == expected
        async with session.get(p.base + "/v2/models/ts") as resp:
            meta = await resp.json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    loaded = next(r for r in p.records() if r["msg"] == "model loaded")
    assert loaded["device"] == "cpu"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param(
            ["--name", "m", "--format", "tensorflow", "--model", "x"],
            "argument --format: invalid choice: 'tensorflow'",
            id="unknown-format",
        ),
        pytest.param(
            ["--name", "m", "--format", "sklearn", "--model", "/no/such/model.joblib"],
            "modelserver: --model /no/such/model.joblib: no such file or directory",
            id="missing-model",
        ),
        pytest.param(
            ["--name", "m", "--format", "sklearn"],
            "the following arguments are required: --model",
            id="no-model",
        ),
        pytest.param(
            ["--name", "a/b", "--format", "sklearn", "--model", "x"],
            "modelserver: --name 'a/b': must be non-empty, without '/' or ':'",
            id="bad-name",
        ),
        pytest.param(
            ["--name", "m", "--format", "pytorch", "--model", "x", "--example-input-shape", "4,a"],
            "modelserver: --example-input-shape 4,a: must be comma-separated integers, e.g. =-1,4",
            id="bad-shape",
        ),
        pytest.param(
            ["--name", "m", "--format", "onnx", "--model", "x", "--device", "gpu"],
            "modelserver: --device gpu: must be auto, cpu, cuda or cuda:N",
            id="bad-device",
        ),
    ],
)
async def test_bad_flags_exit_2_with_the_reason(
    tmp_path: Path, args: list[str], error: str
) -> None:
    async with modelserver(args, tmp_path) as p:
        assert await asyncio.wait_for(p.proc.wait(), 30) == 2
    assert error in p.log()


async def test_wrong_format_for_the_file_exits_2_naming_the_suffixes(
    tmp_path: Path, iris_model: tuple[Path, list[int]]
) -> None:
    path, _ = iris_model
    args = ["--name", "m", "--format", "onnx", "--model", str(path.parent)]
    async with modelserver(args, tmp_path) as p:
        assert await asyncio.wait_for(p.proc.wait(), 30) == 2
    assert (
        f"modelserver: --model {path.parent}: a onnx model directory must hold exactly one "
        "model file (.onnx), found no" in p.log()
    )


async def test_a_model_that_fails_to_load_exits_1_after_listening(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"garbage, not a pickle")
    args = ["--name", "m", "--format", "sklearn", "--model", str(tmp_path / "model.joblib")]
    async with modelserver(args, tmp_path) as p:
        assert await asyncio.wait_for(p.proc.wait(), 60) == 1
    failed = [r for r in p.records() if r["msg"] == "model failed to load"]
    assert len(failed) == 1
    assert "cannot load it as sklearn" in failed[0]["error"]
    # It listened first (liveness answered while it loaded), then stopped.
    assert any(r["msg"].startswith("listening on 127.0.0.1:") for r in p.records())


@pytest.mark.parametrize(
    "pinned", [pytest.param(True, id="right"), pytest.param(False, id="wrong")]
)
async def test_a_pinned_sha256_is_checked_before_loading(
    tmp_path: Path, iris_model: tuple[Path, list[int]], pinned: bool
) -> None:
    """ZEROSERVE_MODEL_SHA256 (what the spec loader sets for a predictor's ``sha256:``) is the
    model's pin: the right digest serves, a wrong one never loads and exits 1 naming both."""
    import hashlib

    path, _ = iris_model
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    pin = digest if pinned else "0" * 64
    args = ["--name", "m", "--format", "sklearn", "--model", f"file://{path}"]
    env = {"ZEROSERVE_MODEL_SHA256": pin, "ZEROSERVE_MODEL_CACHE": str(tmp_path / "cache")}
    async with modelserver(args, tmp_path, **env) as p:
        if pinned:
            async with aiohttp.ClientSession() as session:
                await poll_until_status(
                    session, p.base + "/v2/health/ready", 200, timeout_s=START_TIMEOUT_S
                )
        else:
            assert await asyncio.wait_for(p.proc.wait(), 60) == 1
    if not pinned:
        (failed,) = [r for r in p.records() if r["msg"] == "model failed to load"]
        assert digest in failed["error"]
        assert "0" * 64 in failed["error"]


async def test_a_malformed_sha256_flag_exits_2(tmp_path: Path) -> None:
    args = ["--name", "m", "--format", "sklearn", "--model", "x.joblib", "--sha256", "abc"]
    async with modelserver(args, tmp_path) as p:
        assert await asyncio.wait_for(p.proc.wait(), 30) == 2
    assert "--sha256 'abc': must be 64 hex digits" in p.log()


async def test_only_the_format_in_use_is_imported(iris_model: tuple[Path, list[int]]) -> None:
    path, _ = iris_model
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelserver.app import main\n"
        "from modelserver.model import LoadOptions, load\n"
        f"load(Path({str(path)!r}), 'sklearn', LoadOptions())\n"
        "heavy = ('sklearn', 'torch', 'xgboost', 'lightgbm', 'onnxruntime')\n"
        "print(sorted(m for m in sys.modules if m in heavy))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert out.decode().strip() == "['sklearn']"
