"""The framework zygote with real processes: built-in model servers (pytorch, sklearn) forked from
the parked process for their preload set, serving correctly and stopping with the runtime; a parked
process that started a thread is not forked from (one log line, replicas spawned); a parked process
killed is restarted; the ``preload:`` field's validation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from cluster.local.model_zygote import RelayedFork, preload_set
from cluster.local.process import Spawned
from cluster.local.supervisor import LocalSupervisor, Replica, SupervisorSettings
from cluster.local.zygote import ForkedChild, Zygote
from cluster.spec import Predictor, Revision, RevisionKey
from cluster.spec_loader import PREDICTOR_PROBE, SpecError, parse_spec, predictor_command
from tests.e2e_support import wait_for
from tests.modelserver_support import ROWS, iris, script
from tests.zygote_support import alive, comm, proc_stat

X, Y = iris()
BATCH = X[ROWS]


def settings(**changes: object) -> SupervisorSettings:
    base: dict[str, object] = {
        "log_children": False,
        "drain_quiet_period_s": 0.1,
        "kill_grace_s": 5.0,
        "crash_backoff_initial_s": 0.05,
    }
    base.update(changes)
    return SupervisorSettings(**base)  # type: ignore[arg-type]


def builtin(service: str, fmt: str, model: Path, **changes: Any) -> Revision:
    """A revision of the built-in model server, as the spec loader makes it from ``predictor:``."""
    predictor = Predictor(format=fmt, storage_uri=str(model))
    return Revision(
        namespace="default",
        service=service,
        name=f"{service}-v1",
        timeout_s=10.0,
        command=predictor_command(service, predictor),
        readiness_probe=PREDICTOR_PROBE,
        predictor=predictor,
        **changes,
    )


async def until(predicate: Callable[[], object], what: str, within: float = 25.0) -> None:
    await wait_for(predicate, within=within, interval=0.02, what=what)


def ready(sup: LocalSupervisor, key: RevisionKey) -> list[Replica]:
    return [r for r in sup.replicas(key) if r.ready and not r.stopping]


async def serve_one(sup: LocalSupervisor, key: RevisionKey, within: float = 25.0) -> Replica:
    await sup.set_scale(key, 1)
    await until(lambda: len(ready(sup, key)) == 1, f"a ready replica of {key}", within)
    return ready(sup, key)[0]


async def predict(replica: Replica, name: str, rows: Any) -> list[Any]:
    """V1 predict through the replica's queue-proxy."""
    url = f"http://127.0.0.1:{replica.serving_port}/v1/models/{name}:predict"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"instances": rows}) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
    predictions: list[Any] = body["predictions"]
    return predictions


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [part.decode() for part in fh.read().split(b"\0") if part]


def parked(sup: LocalSupervisor, rev: Revision) -> Zygote:
    assert sup.models is not None
    zygote = sup.models.parked(rev)
    assert zygote is not None
    assert zygote.pid is not None
    return zygote


def assert_forked(replica: Replica, zygote: Zygote) -> int:
    """The model server is the parked process's child, named after its pod, in its own group."""
    model = replica.model
    assert isinstance(model, (RelayedFork, ForkedChild)), model
    stat = proc_stat(model.pid)
    assert stat["ppid"] == zygote.pid
    assert cmdline(zygote.pid or 0)[1:4] == ["-m", "cluster.local.zygote_main", "--preload"]
    assert stat["pgid"] == model.pid  # its own process group (and session)
    assert stat["sid"] == model.pid
    assert comm(model.pid) == replica.name[:15]
    assert cmdline(model.pid)[1:3] == ["-m", "modelserver"]  # ps shows the server's command
    return model.pid


def torch_model(tmp_path: Path) -> tuple[Path, list[list[float]]]:
    """A TorchScript iris-shaped module with a signature sidecar, and its expected outputs."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Softmax(dim=1)
    ).eval()
    scripted = script(module)
    path = tmp_path / "torch" / "model.pt"
    path.parent.mkdir()
    scripted.save(str(path))
    signature = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]}
    (path.parent / "signature.json").write_text(json.dumps(signature))
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(BATCH.astype(np.float32))).numpy()
    return path, expected.tolist()


def sklearn_model(tmp_path: Path) -> tuple[Path, list[int]]:
    import joblib
    from sklearn.linear_model import LogisticRegression

    estimator = LogisticRegression(max_iter=1000).fit(X, Y)
    path = tmp_path / "sk" / "model.joblib"
    path.parent.mkdir()
    joblib.dump(estimator, path)
    return path, estimator.predict(BATCH).tolist()


# -- which commands are forked, with what -----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "preload", "expected"),
    [
        pytest.param(
            ("python", "-m", "modelserver", "--format", "sklearn", "--model", "m"),
            (),
            ("joblib", "modelserver.app", "modelserver.formats.sklearn", "numpy", "sklearn"),
            id="builtin-sklearn",
        ),
        pytest.param(
            (sys.executable, "-m", "modelserver", "--format=onnx", "--model", "m"),
            ("transformers",),
            (
                "modelserver.app",
                "modelserver.formats.onnx",
                "numpy",
                "onnxruntime",
                "transformers",
            ),
            id="builtin-onnx-plus-own",
        ),
        pytest.param(
            ("python3", "-m", "my.server"), ("torch", "torch"), ("torch",), id="own-module"
        ),
        pytest.param(("python", "-m", "my.server"), (), None, id="nothing-to-preload"),
        pytest.param(("python", "-c", "pass"), ("torch",), None, id="not-python-m"),
        pytest.param(("./serve", "-m", "x"), (), None, id="not-python"),
    ],
)
def test_preload_set(
    command: tuple[str, ...], preload: tuple[str, ...], expected: tuple[str, ...] | None
) -> None:
    rev = Revision(namespace="n", service="s", name="s-v1", command=command, preload=preload)
    assert preload_set(rev) == expected


@pytest.mark.parametrize(
    ("preload", "errors"),
    [
        pytest.param(
            "torch",
            ["preload = 'torch': must be a list of Python module names (torch, transformers)"],
            id="not-a-list",
        ),
        pytest.param(
            ["torch", "1x", 3, "a..b"],
            [
                "preload[1] = '1x': must be a Python module name (torch, torch.nn)",
                "preload[2] = 3: must be a Python module name (torch, torch.nn)",
                "preload[3] = 'a..b': must be a Python module name (torch, torch.nn)",
            ],
            id="bad-names",
        ),
    ],
)
def test_preload_validation_names_the_field(preload: object, errors: list[str]) -> None:
    rev = {"name": "s-v1", "command": ["python", "-m", "s"], "preload": preload}
    with pytest.raises(SpecError) as info:
        parse_spec({"services": [{"name": "s", "revisions": [rev]}]})
    assert list(info.value.errors) == [f"services[0].revisions[0].{e}" for e in errors]


def test_preload_is_kept_in_order_once() -> None:
    rev = {"name": "s-v1", "command": ["python", "-m", "s"], "preload": ["torch", "x.y", "torch"]}
    spec = parse_spec({"services": [{"name": "s", "revisions": [rev]}]})
    assert spec.services[0].revisions[0].preload == ("torch", "x.y")


# -- with real processes ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_builtin_servers_fork_from_their_parked_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch_path, torch_expected = torch_model(tmp_path)
    sk_path, sk_expected = sklearn_model(tmp_path)
    tv1 = builtin("tiris", "pytorch", torch_path)
    sv1 = builtin("siris", "sklearn", sk_path)
    sup = LocalSupervisor(settings(log_children=True))
    sup.set_revisions({tv1.key: tv1, sv1.key: sv1})
    pids: list[int] = []
    try:
        t_replica, s_replica = await asyncio.gather(
            serve_one(sup, tv1.key, 40.0), serve_one(sup, sv1.key, 40.0)
        )
        t_zygote, s_zygote = parked(sup, tv1), parked(sup, sv1)
        assert t_zygote is not s_zygote  # one parked process per preload set
        pids += [t_zygote.pid or 0, s_zygote.pid or 0]
        pids.append(assert_forked(t_replica, t_zygote))
        pids.append(assert_forked(s_replica, s_zygote))
        got = await predict(t_replica, "tiris", BATCH.tolist())
        assert np.allclose(got, torch_expected, atol=1e-6)
        assert await predict(s_replica, "siris", BATCH.tolist()) == sk_expected
        assert sup.models is not None
        assert sup.models.unsafe(tv1) == ""
        assert sup.crash_count == 0
    finally:
        await sup.close()
    assert [p for p in pids if alive(p)] == []  # replicas and parked processes stopped
    err = capsys.readouterr().err
    assert f"{t_replica.name} | " in err  # the forked servers' output is relayed as a spawned one's


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_a_killed_parked_process_takes_its_replicas_and_is_restarted(
    tmp_path: Path,
) -> None:
    sk_path, sk_expected = sklearn_model(tmp_path)
    rev = builtin("kiris", "sklearn", sk_path)
    sup = LocalSupervisor(settings())
    sup.set_revisions({rev.key: rev})
    try:
        first = await serve_one(sup, rev.key)
        zygote = parked(sup, rev)
        old_zygote = zygote.pid or 0
        old_model = assert_forked(first, zygote)
        os.kill(old_zygote, signal.SIGKILL)
        await until(lambda: not alive(old_model), "its model server dead with it (PDEATHSIG)")
        await until(
            lambda: any(r.name != first.name for r in ready(sup, rev.key)),
            "a replacement forked from a new parked process",
        )
        second = ready(sup, rev.key)[0]
        assert zygote.starts == 2
        assert zygote.pid not in (None, old_zygote)
        assert_forked(second, zygote)
        assert await predict(second, "kiris", BATCH.tolist()) == sk_expected

        # A new preload set: the next replica forks from a new parked process for it.
        changed = builtin("kiris", "sklearn", sk_path, preload=("json",))
        sup.set_revisions({rev.key: changed})
        await sup.set_scale(rev.key, 0)
        await until(lambda: not sup.replicas(rev.key), "scaled to zero")
        third = await serve_one(sup, rev.key)
        new = parked(sup, changed)
        assert new is not zygote
        assert_forked(third, new)
        assert "json" in cmdline(new.pid or 0)[4].split(",")
        sup.set_revisions({rev.key: changed})  # the old set's process has no replica: closed
        await until(lambda: not alive(zygote.pid or old_zygote), "the unused parked process closed")
    finally:
        await sup.close()


THREADED = """
import threading, time
threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
"""
SERVER = """
import http.server, os
http.server.HTTPServer(
    ("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler
).serve_forever()
"""


# CUDA cannot be initialised on a machine without a GPU: a stand-in ``torch`` package, first on
# the parked process's path, answers ``torch.cuda.is_initialized()`` with True, as a real one
# does after a preloaded module has touched the GPU. The parked process's own torch work (the
# meta-device warm-up, the libraries' read-ahead) finds nothing to do in it and goes on.
CUDA_TORCH = {
    "torch/__init__.py": "from torch import cuda, nn\n",
    "torch/cuda.py": "def is_initialized():\n    return True\n",
    "torch/nn.py": "",
}


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("files", "preload", "problem"),
    [
        ({"threaded_mod.py": THREADED}, "threaded_mod", "threads started: 2"),
        (CUDA_TORCH, "torch", "CUDA initialised"),
    ],
    ids=["thread", "cuda"],
)
async def test_a_parked_process_that_cannot_fork_is_not_forked_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    files: dict[str, str],
    preload: str,
    problem: str,
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "tiny_server.py").write_text(SERVER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rev = Revision(
        namespace="default",
        service="thr",
        name="thr-v1",
        timeout_s=10.0,
        command=("python", "-m", "tiny_server"),
        preload=(preload,),
    )
    caplog.set_level(logging.INFO, logger="zeroserve.model_zygote")
    sup = LocalSupervisor(settings())
    sup.set_revisions({rev.key: rev})
    try:
        replica = await serve_one(sup, rev.key)
        assert isinstance(replica.model, Spawned)  # the current spawn path
        assert proc_stat(replica.model.pid)["ppid"] == os.getpid()
        assert sup.models is not None
        assert sup.models.unsafe(rev) == problem
        lines = [r.getMessage() for r in caplog.records if "unsafe" in r.getMessage()]
        assert lines == [
            f"model-server zygote unsafe to fork: {problem}; replicas start as fresh processes"
        ]
        url = f"http://127.0.0.1:{replica.serving_port}/"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200  # still serves, through its queue-proxy
    finally:
        await sup.close()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_parked_processes_start_with_the_supervisor_before_any_replica(tmp_path: Path) -> None:
    # As zeroserve up does: the revisions are set before the event loop runs.
    sk_path, _ = sklearn_model(tmp_path)
    rev = builtin("eager", "sklearn", sk_path)
    sup = LocalSupervisor(settings())
    sup.set_revisions({rev.key: rev})

    async def body() -> None:
        try:
            await sup.start()
            assert sup.models is not None
            await until(lambda: sup.models and sup.models.parked(rev), "a parked process")
            zygote = sup.models.parked(rev)
            assert zygote is not None
            assert await zygote.hello(30) == ""  # imported, with no replica asked for
            assert sup.replicas(rev.key) == []
        finally:
            await sup.close()

    asyncio.run(body())


# -- the model loaded by the parked process (issue 26) -------------------------------------------


def exported_mlp(path: Path, seed: int = 0) -> list[list[float]]:
    """A ``torch.export`` MLP of ~46 MB (11 × 1024² FP32 weights) taking iris rows, saved at
    ``path``: big enough that loading it shows next to taking it. Its outputs for BATCH."""
    import torch

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(4, 1024), torch.nn.ReLU()]
    for _ in range(11):
        layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers, torch.nn.Linear(1024, 3)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = torch.zeros(2, 4)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    with torch.inference_mode():
        expected = module(torch.from_numpy(BATCH.astype(np.float32))).numpy()
    return expected.tolist()  # type: ignore[no-any-return]


def fresh_load_s(path: Path) -> float:
    """What the replica's ``load`` phase costs without the parked process's copy."""
    import time

    import torch

    began = time.monotonic()
    torch.export.load(str(path)).module()
    return time.monotonic() - began


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        pytest.param("pytorch", "m.pt2", "model", id="pytorch-export-preloaded"),
        pytest.param("pytorch", "m.pt", None, id="torchscript-not"),
        pytest.param("sklearn", "m.joblib", None, id="sklearn-not"),
        pytest.param("pytorch", "", None, id="not-fetched-yet"),
    ],
)
def test_park_key_names_the_model_a_parked_process_loads(
    tmp_path: Path, fmt: str, name: str, expected: str | None
) -> None:
    from cluster.local.model_zygote import park_key

    artifact = tmp_path / (name or "absent")
    if name:
        artifact.write_bytes(b"x")
    rev = builtin("k", fmt, artifact)
    key = park_key(rev, artifact if name else None)
    assert key is not None
    assert key[0] == preload_set(rev)
    assert key[1] == ((fmt, str(artifact)) if expected else None)


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_a_replica_takes_the_model_its_parked_process_loaded(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mlp" / "model.pt2"
    expected = exported_mlp(path)
    fresh_s = fresh_load_s(path)
    rev = builtin("big", "pytorch", path)
    sup = LocalSupervisor(settings(log_children=True))
    sup.set_revisions({rev.key: rev})
    try:
        replica = await serve_one(sup, rev.key, 40.0)
        zygote = parked(sup, rev)
        assert sup.models is not None
        assert sup.models.key(rev) == (preload_set(rev), ("pytorch", str(path)))
        assert_forked(replica, zygote)
        # its hello came after the load: no CUDA context, one Python thread (fork_problem)
        assert zygote.unsafe == ""
        assert sup.models.unsafe(rev) == ""
        got = await predict(replica, "big", BATCH.tolist())
        assert np.allclose(got, expected, atol=1e-5)
        await until(lambda: sup.cold_starts.last("default", "big-v1"), "the cold start recorded")
        cold = sup.cold_starts.last("default", "big-v1")
        assert cold is not None
        load_s = dict(cold.phases)["load"]
        assert load_s < 0.5 * fresh_s, (load_s, fresh_s)
    finally:
        await sup.close()
    err = capfd.readouterr().err
    taken = [line for line in err.splitlines() if "model taken from the parked process" in line]
    assert len(taken) == 1, err[-2000:]
    assert taken[0].startswith(f"{replica.name} | ")  # the replica's own log line


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_a_new_artifact_gets_a_new_parked_process_and_the_old_one_closes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    old_path, new_path = tmp_path / "a" / "model.pt2", tmp_path / "b" / "model.pt2"
    exported_mlp(old_path, seed=0)
    new_expected = exported_mlp(new_path, seed=1)
    v1 = builtin("edit", "pytorch", old_path)
    v2 = builtin("edit", "pytorch", new_path)
    sup = LocalSupervisor(settings(log_children=True))
    sup.set_revisions({v1.key: v1})
    try:
        await serve_one(sup, v1.key, 40.0)
        old = parked(sup, v1)
        old_pid = old.pid or 0
        # the edit: the same revision now names another artifact
        sup.set_revisions({v2.key: v2})
        await sup.set_scale(v2.key, 0)
        await until(lambda: not sup.replicas(v2.key), "the old replica gone")
        replica = await serve_one(sup, v2.key, 40.0)
        new = parked(sup, v2)
        assert new is not old
        assert_forked(replica, new)
        await until(lambda: not alive(old_pid), "the old parked process closed")
        assert np.allclose(await predict(replica, "edit", BATCH.tolist()), new_expected, atol=1e-5)
    finally:
        await sup.close()
    taken = [line for line in capfd.readouterr().err.splitlines() if "parked process" in line]
    assert sum("model taken from the parked process" in line for line in taken) == 2


def test_the_runtime_names_the_model_servers_loader_and_formats_as_it_has_them() -> None:
    """cluster never imports modelserver: it names its loader and copies its preloadable formats;
    both must match what modelserver has."""
    from cluster.local import model_zygote
    from modelserver import loader, preload

    module, _, function = model_zygote.MODEL_LOADER.partition(":")
    assert module == loader.__name__
    assert getattr(loader, function) is loader.load_model
    assert dict(model_zygote.PRELOADABLE) == dict(preload.PRELOADABLE)
