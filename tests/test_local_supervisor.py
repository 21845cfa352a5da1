"""The local supervisor with real processes: each replica's queue-proxy is forked from the zygote
(its child, own environment and process group), a crashed queue-proxy or a dead zygote is seen and
replaced, stopping leaves no process behind, and ``prefork=False`` still spawns them."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from cluster.local.process import Spawned
from cluster.local.supervisor import LocalSupervisor, Replica, SupervisorSettings
from cluster.local.zygote import ForkedChild
from cluster.spec import Revision, RevisionKey
from tests.e2e_support import wait_for
from tests.zygote_support import alive, proc_stat

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

KEY = RevisionKey("default", "web-v1")
# A model server that starts in ~50 ms: the standard library's HTTP server on $PORT.
MODEL = (
    "import os, http.server as h; "
    "h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
    "h.SimpleHTTPRequestHandler).serve_forever()"
)
REVISION = Revision(
    namespace="default",
    service="web",
    name="web-v1",
    timeout_s=10.0,
    command=(sys.executable, "-c", MODEL),
)
PROBE = {"K-Network-Probe": "queue"}


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll with a deadline (tests/e2e_support.py), never a bare sleep."""
    await wait_for(predicate, within=within, interval=0.02, what=what)


def settings(**changes: object) -> SupervisorSettings:
    base: dict[str, object] = {
        "log_children": False,
        "drain_quiet_period_s": 0.1,
        "kill_grace_s": 5.0,
        "crash_backoff_initial_s": 0.05,
    }
    base.update(changes)
    return SupervisorSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def supervisor() -> AsyncIterator[LocalSupervisor]:
    sup = LocalSupervisor(settings())
    await sup.start()
    sup.set_revisions({KEY: REVISION})
    try:
        yield sup
    finally:
        await sup.close()


def ready_replicas(sup: LocalSupervisor) -> list[Replica]:
    return [r for r in sup.replicas(KEY) if r.ready and not r.stopping]


async def serve_one(sup: LocalSupervisor) -> Replica:
    await sup.set_scale(KEY, 1)
    await until(lambda: len(ready_replicas(sup)) == 1, "one ready replica")
    return ready_replicas(sup)[0]


async def check_serves(replica: Replica) -> None:
    base = f"http://127.0.0.1:{replica.serving_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/", headers=PROBE) as resp:
            assert (resp.status, await resp.text()) == (200, "queue")
        async with session.get(base + "/") as resp:
            assert resp.status == 200  # through the queue-proxy to the model server
        async with session.get(f"http://127.0.0.1:{replica.metrics_port}/stats") as resp:
            assert (await resp.json())["pod_name"] == replica.name  # its own environment


async def test_queue_proxy_is_forked_from_the_zygote_in_its_own_group(
    supervisor: LocalSupervisor,
) -> None:
    replica = await serve_one(supervisor)
    qp, model, zygote = replica.queue_proxy, replica.model, supervisor.zygote
    assert isinstance(qp, ForkedChild)
    assert isinstance(model, Spawned)
    assert zygote is not None
    assert zygote.pid is not None
    assert proc_stat(qp.pid)["ppid"] == zygote.pid
    assert proc_stat(qp.pid)["pgid"] == qp.pid  # its own process group (and session)
    assert proc_stat(model.pid)["ppid"] == os.getpid()
    assert proc_stat(model.pid)["pgid"] == model.pid
    assert qp.ready.is_set()  # the queue-proxy said so itself
    assert [p.address for p in supervisor.current()[KEY]] == [f"127.0.0.1:{replica.serving_port}"]
    await check_serves(replica)

    # Scale to zero: drained and stopped exactly as a spawned one (queue-proxy first, exit 0).
    await supervisor.set_scale(KEY, 0)
    await until(lambda: not supervisor.replicas(KEY), "the replica gone")
    assert qp.returncode == 0
    assert not alive(qp.pid)
    assert not alive(model.pid)
    assert KEY not in supervisor.current()
    assert supervisor.crash_count == 0


async def test_a_crashed_queue_proxy_is_seen_and_replaced(supervisor: LocalSupervisor) -> None:
    crashes: list[tuple[RevisionKey, str, int | None]] = []
    supervisor.on_crash = lambda key, pod, code: crashes.append((key, pod, code))
    first = await serve_one(supervisor)
    assert first.queue_proxy is not None
    assert first.model is not None
    os.kill(first.queue_proxy.pid, signal.SIGKILL)
    await until(lambda: crashes != [], "the crash seen")
    assert crashes == [(KEY, first.name, -signal.SIGKILL)]
    assert KEY not in supervisor.current() or all(
        p.name != first.name for p in supervisor.current()[KEY]
    )

    await until(
        lambda: [r.name for r in ready_replicas(supervisor)] not in ([], [first.name]),
        "a replacement",
    )
    second = ready_replicas(supervisor)[0]
    assert isinstance(second.queue_proxy, ForkedChild)
    assert supervisor.zygote is not None
    assert supervisor.zygote.starts == 1
    model_pid = first.model.pid
    await until(lambda: not alive(model_pid), "the crashed replica's model server stopped")
    await check_serves(second)


async def test_a_dead_zygote_is_replaced_with_its_replicas(supervisor: LocalSupervisor) -> None:
    first = await serve_one(supervisor)
    zygote = supervisor.zygote
    assert zygote is not None
    assert zygote.pid is not None
    assert first.queue_proxy is not None
    old_zygote, old_qp = zygote.pid, first.queue_proxy.pid
    os.kill(old_zygote, signal.SIGKILL)
    await until(lambda: not alive(old_qp), "its queue-proxy dead with it (PDEATHSIG)")
    await until(
        lambda: any(r.name != first.name for r in ready_replicas(supervisor)),
        "a replacement from a new zygote",
    )
    assert supervisor.crash_count == 1
    assert zygote.starts == 2
    assert zygote.pid not in (None, old_zygote)
    second = ready_replicas(supervisor)[0]
    assert second.queue_proxy is not None
    assert proc_stat(second.queue_proxy.pid)["ppid"] == zygote.pid
    await check_serves(second)


async def test_close_leaves_no_process() -> None:
    sup = LocalSupervisor(settings())
    await sup.start()
    sup.set_revisions({KEY: REVISION})
    await sup.set_scale(KEY, 2)
    await until(lambda: len(ready_replicas(sup)) == 2, "two ready replicas")
    assert sup.zygote is not None
    assert sup.zygote.pid is not None
    pids = [sup.zygote.pid]
    for r in sup.replicas(KEY):
        assert r.queue_proxy is not None
        assert r.model is not None
        pids += [r.queue_proxy.pid, r.model.pid]
    await sup.close()
    assert [p for p in pids if alive(p)] == []


async def test_without_prefork_the_queue_proxy_is_spawned() -> None:
    sup = LocalSupervisor(settings(prefork=False))
    await sup.start()
    sup.set_revisions({KEY: REVISION})
    try:
        assert sup.zygote is None
        replica = await serve_one(sup)
        qp = replica.queue_proxy
        assert isinstance(qp, Spawned)
        assert proc_stat(qp.pid)["ppid"] == os.getpid()
        assert proc_stat(qp.pid)["pgid"] == qp.pid
        await check_serves(replica)
    finally:
        await sup.close()
