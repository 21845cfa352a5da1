"""No port is ever held by two live replicas (issue 19, item 1).

The supervisor's :class:`PortTable` keeps each port from the moment it is picked until its replica
has exited; the queue-proxy serves on the listening sockets the supervisor opened (handed over by
descriptor); a model server whose ``$PORT`` another process holds is replaced on a new port, never
marked ready; a queue-proxy refuses a ``USER_PORT`` that is one of its own ports. The end-to-end
check starts 40 replicas of four revisions in the same tick, 20 times over, and asks each replica's
published address who answers: the model server echoes its pod name (tests/echo_pod.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cluster.local.ports import PortTable, listener_owners
from cluster.local.supervisor import LocalSupervisor, Replica, SupervisorSettings
from cluster.spec import Revision, RevisionKey
from queue_proxy.app import QueueProxy
from queue_proxy.config import ConfigError, Settings
from tests.e2e_support import wait_for

ECHO = (sys.executable, "-S", "-m", "tests.echo_pod")


def echo_revision(name: str, **env: str) -> Revision:
    # no readinessProbe: the queue-proxy probes $PORT by TCP, as in the failure
    return Revision(
        namespace="default",
        service=name,
        name=f"{name}-v1",
        timeout_s=10.0,
        command=ECHO,
        env=env,
    )


def settings() -> SupervisorSettings:
    return SupervisorSettings(
        log_children=False,
        drain_quiet_period_s=0.0,
        kill_grace_s=5.0,
        crash_backoff_initial_s=0.05,
    )


# -- the table --------------------------------------------------------------------------------


def test_the_table_never_hands_out_a_port_it_holds() -> None:
    table = PortTable()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for i in range(1000):
            # a model server's port (its socket closed at once: free for the kernel, not for
            # the table), then a queue-proxy's listener: the kernel offers recently closed ports
            ports.append(table.port(f"r{i}"))
            sock = table.listener(f"r{i}")
            held.append(sock)
            ports.append(sock.getsockname()[1])
        assert len(set(ports)) == len(ports)
        assert all(table.owner(p) is not None for p in ports)
    finally:
        for sock in held:
            sock.close()


def test_a_released_port_may_be_handed_out_again() -> None:
    table = PortTable()
    port = table.port("a")
    assert table.owner(port) == "a"
    assert table.held("a") == [port]
    table.release("a")
    assert port not in table
    assert table.held("a") == []


async def test_listener_owners_tells_the_session_from_another_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert listener_owners(port, session=1) is None  # bound, not listening
        sock.listen()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(30)", start_new_session=True
        )
        try:
            found = listener_owners(port, session=proc.pid)
            assert found is not None
            in_session, others = found
            assert not in_session
            assert others == [os.getpid()]
        finally:
            proc.kill()
            await proc.wait()


# -- the queue-proxy ----------------------------------------------------------------------------


def test_queue_proxy_refuses_a_user_port_equal_to_one_of_its_own() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"USER_PORT": "8090", "METRICS_PORT": "8090"})
    assert str(info.value) == (
        "USER_PORT = 8090 is this queue-proxy's own METRICS_PORT (8090): "
        "the model server must listen on another port"
    )


async def test_queue_proxy_refuses_a_handed_over_socket_on_its_user_port() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    qp = QueueProxy(
        Settings(
            user_port=port,
            serving_port=0,
            admin_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            serving_fd=sock.detach(),
        ),
        nvml=None,
    )
    with pytest.raises(
        ConfigError,
        match=rf"USER_PORT = {port} is this queue-proxy's own "
        rf"QUEUE_SERVING_PORT \({port}\)",
    ):
        await qp.start()


# -- the supervisor -----------------------------------------------------------------------------


@pytest.fixture
async def supervisor() -> AsyncIterator[LocalSupervisor]:
    sup = LocalSupervisor(settings())
    await sup.start()
    try:
        yield sup
    finally:
        await sup.close()


async def who_answers(session: aiohttp.ClientSession, replica: Replica) -> str:
    url = f"http://127.0.0.1:{replica.serving_port}/v1/models/m:predict"
    async with session.post(url, data=b'{"instances": [[1]]}') as resp:
        body = await resp.text()
        return body if resp.status == 200 else f"{resp.status} {body}"


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_a_model_server_whose_port_is_taken_is_replaced_never_ready(
    supervisor: LocalSupervisor,
) -> None:
    key = RevisionKey("default", "slow-v1")
    # the model server binds after 1 s: the test takes its port first, as a stray process would
    supervisor.set_revisions({key: echo_revision("slow", ECHO_BIND_DELAY_S="1")})
    ever_published: set[str] = set()
    supervisor.subscribe(lambda eps: ever_published.update(e.name for e in eps.get(key, ())))
    await supervisor.set_scale(key, 1)
    await wait_for(lambda: supervisor.replicas(key), within=10, interval=0.001, what="a replica")
    first = supervisor.replicas(key)[0]
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", first.user_port))
    squatter.listen()
    try:
        await wait_for(
            lambda: any(r.ready for r in supervisor.replicas(key)), within=60, what="a ready one"
        )
        (ready,) = [r for r in supervisor.replicas(key) if r.ready]
        assert ready is not first
        assert ready.user_port != first.user_port
        assert first.name not in ever_published  # the squatter's TCP probe never made it ready
        assert supervisor.crash_count >= 1
        async with aiohttp.ClientSession() as session:
            assert await who_answers(session, ready) == ready.name
    finally:
        squatter.close()


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_forty_replicas_started_together_each_answer_as_themselves(
    supervisor: LocalSupervisor,
) -> None:
    keys = [RevisionKey("default", f"echo{i}-v1") for i in range(4)]
    supervisor.set_revisions({k: echo_revision(f"echo{i}") for i, k in enumerate(keys)})
    shared: set[str] = set()  # "port P: a and b" for each port two live replicas held at once
    asked: list[asyncio.Task[tuple[str, str]]] = []
    seen: set[str] = set()

    def live_ports() -> None:
        owner: dict[int, str] = {}
        for r in (r for k in keys for r in supervisor.replicas(k)):
            for p in (r.user_port, r.serving_port, r.admin_port, r.metrics_port):
                if owner.setdefault(p, r.name) != r.name:
                    shared.add(f"port {p}: {owner[p]} and {r.name}")

    async def ask(replica: Replica) -> tuple[str, str]:
        return replica.name, await who_answers(session, replica)

    def on_endpoints(endpoints: object) -> None:
        # the moment a replica is published, ask it who it is (as the activator would send)
        live_ports()
        for r in (r for k in keys for r in supervisor.replicas(k)):
            if r.ready and not r.stopping and r.name not in seen:
                seen.add(r.name)
                asked.append(asyncio.ensure_future(ask(r)))

    async with aiohttp.ClientSession() as session:
        supervisor.subscribe(on_endpoints)
        for round_ in range(20):
            await asyncio.gather(*(supervisor.set_scale(k, 10) for k in keys))  # the same tick
            await wait_for(
                lambda: sum(len(supervisor.current().get(k, ())) for k in keys) == 40,
                within=120,
                interval=0.05,
                what=f"round {round_}: 40 ready replicas",
            )
            live_ports()
            assert not shared, f"round {round_}: ports held by two live replicas: {shared}"
            answers = await asyncio.gather(*asked)
            asked.clear()
            wrong = [(name, answer) for name, answer in answers if answer != name]
            assert not wrong, f"round {round_}: answered by another replica: {wrong}"
            replicas = [r for k in keys for r in supervisor.replicas(k)]
            await asyncio.gather(*(supervisor.set_scale(k, 0) for k in keys))
            await wait_for(
                lambda: not any(supervisor.replicas(k) for k in keys),
                within=120,
                interval=0.05,
                what=f"round {round_}: all stopped",
            )
            assert not any(supervisor.ports.held(r.name) for r in replicas)
