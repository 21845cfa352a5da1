"""The parts of the end-to-end tests (traffic.py): the cluster, its load, what they record.

:func:`cluster` starts, in this order, and stops in reverse even on failure: the node's bridge
(netns.py), a control plane whose API server listens on the bridge's gateway, kube-proxy, the test
node's :class:`~tests.k8s.kubelet.Kubelet`; then it applies ``deploy/`` (server-side apply, what
``kubectl apply --server-side -k deploy/`` sends) and the example revision, and waits for the
activators and autoscalers to be ready. The tests' own settings, to fit CI's time:

* ``config-autoscaler``: ``stable-window: 10s`` and ``scale-to-zero-grace-period: 5s`` (Knative's
  60 s and 30 s), so a revision scales to zero within seconds of its last request;
* the queue-proxy's ``QUEUE_DRAIN_QUIET_PERIOD_SECONDS: 3`` and the activator's
  ``DRAIN_QUIET_PERIOD_SECONDS: 5`` (30 s each in deploy/): a deleted pod stops within seconds.

``ZEROSERVE_K8S_LOGS=<dir>`` keeps every container's log (and kube-proxy's) there after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.kubernetes.api import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    PODS,
    AioKubeApi,
    Resource,
)
from cluster.kubernetes.informer import Change, Informer
from cluster.kubernetes.scheme import REVISION_LABEL
from tests.k8s.containers import PYTHON, REPO
from tests.k8s.controlplane import ControlPlane, control_plane
from tests.k8s.kubelet import Kubelet
from tests.k8s.kubeproxy import kube_proxy
from tests.k8s.netns import GATEWAY, NodeNetwork, PodNetwork, node_network
from tests.k8s.real_control_plane import apply_all
from tests.test_kubernetes_deploy import DEPLOY, render

NS = "zeroserve-system"
SERVICES = Resource("", "v1", "services")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
STABLE_WINDOW_S = 10
GRACE_S = 5
Obj = dict[str, Any]


async def eventually(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Poll ``check`` (sync or async) every 0.1 s until true; the loop time it became true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time()
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.1)


def _set_env(container: Obj, name: str, value: str) -> None:
    env = container.setdefault("env", [])
    env[:] = [e for e in env if e["name"] != name]
    env.append({"name": name, "value": value})


def manifests() -> list[Obj]:
    """deploy/ and the example revision with the tests' settings, and a second revision
    ``iris-00002`` (the canary: the same, with ``MODEL_VERSION=2``) at zero."""
    base = render(DEPLOY)
    example = render(DEPLOY / "examples" / "iris")
    for doc in base:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "config-autoscaler":
            doc["data"].update(
                {
                    "stable-window": f"{STABLE_WINDOW_S}s",
                    "scale-to-zero-grace-period": f"{GRACE_S}s",
                }
            )
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "activator":
            _set_env(
                doc["spec"]["template"]["spec"]["containers"][0], "DRAIN_QUIET_PERIOD_SECONDS", "5"
            )
    for doc in example:
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "queue-proxy":
                    _set_env(c, "QUEUE_DRAIN_QUIET_PERIOD_SECONDS", "3")
    canary = [
        json.loads(json.dumps(d).replace("iris-00001", "iris-00002"))
        for d in example
        if d["kind"] in ("Deployment", "Service")
    ]
    for doc in canary:
        if doc["kind"] == "Deployment":
            _set_env(doc["spec"]["template"]["spec"]["containers"][0], "MODEL_VERSION", "2")
    return base + example + canary


@dataclass
class Record:
    """One request of the load (loadclient.py's line)."""

    i: int
    start: float
    end: float
    status: int
    version: str
    attempts: int
    error: str


class Load:
    """One run of the load client in its namespace; its records arrive as they finish."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[Record] = []
        self.summary: Obj = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            doc = json.loads(line)
            if doc.get("summary"):
                self.summary = doc
            else:
                self.records.append(Record(**doc))

    async def finish(self, timeout_s: float) -> list[Record]:
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        assert self.proc.returncode == 0, f"load client exited {self.proc.returncode}"
        return sorted(self.records, key=lambda r: r.start)

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records if r.status != 200]


@dataclass
class Timeline:
    """Every change of the revisions' Deployments and EndpointSlices, with loop times."""

    deployments: list[tuple[float, str, int, int]] = field(default_factory=list)
    """(time, revision, spec.replicas, status.readyReplicas)"""
    endpoints: list[tuple[float, str, int]] = field(default_factory=list)
    """(time, revision, ready addresses in its EndpointSlices)"""
    _slices: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def on_deployments(self, changes: Sequence[Change]) -> None:
        t = asyncio.get_running_loop().time()
        for c in changes:
            obj = c.object
            rev = obj["metadata"]["name"]
            self.deployments.append(
                (
                    t,
                    rev,
                    int(obj["spec"].get("replicas", 1)),
                    int((obj.get("status") or {}).get("readyReplicas") or 0),
                )
            )

    def on_slices(self, changes: Sequence[Change]) -> None:
        t = asyncio.get_running_loop().time()
        touched = set()
        for c in changes:
            obj = c.object
            rev = obj["metadata"]["labels"][REVISION_LABEL]
            ready = sum(
                1
                for e in obj.get("endpoints") or []
                if (e.get("conditions") or {}).get("ready") is not False
            )
            if c.type == "deleted":
                self._slices.pop(c.key, None)
            else:
                self._slices[c.key] = (rev, ready)
            touched.add(rev)
        for rev in touched:
            self.endpoints.append((t, rev, self.ready_endpoints(rev)))

    def ready_endpoints(self, revision: str) -> int:
        return sum(n for rev, n in self._slices.values() if rev == revision)

    def replicas(self, revision: str) -> tuple[int, int]:
        """The latest (spec.replicas, readyReplicas)."""
        for _, rev, spec, ready in reversed(self.deployments):
            if rev == revision:
                return spec, ready
        return -1, -1


@dataclass
class Cluster:
    plane: ControlPlane
    admin: AioKubeApi
    kubelet: Kubelet
    network: NodeNetwork
    client_net: PodNetwork
    timeline: Timeline
    workdir: Path
    activator_url: str = ""

    async def load(
        self, *, count: int, rate: float, concurrency: int = 4, deadline_s: float = 60
    ) -> Load:
        """Start the load client in its namespace (bounded: ``count`` requests, ``deadline_s``)."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.client_net.netns, PYTHON, "-m", "tests.k8s.loadclient",
            f"--url={self.activator_url}/v2/models/iris/infer", f"--count={count}", f"--rate={rate}",
            f"--concurrency={concurrency}", f"--deadline={deadline_s}",
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return Load(proc)

    async def pods(self, namespace: str, selector: str) -> list[Obj]:
        return list((await self.admin.list(PODS, namespace, label_selector=selector)).items)

    async def ready_pods(self, namespace: str, selector: str) -> list[Obj]:
        def ready(p: Obj) -> bool:
            conds = (p.get("status") or {}).get("conditions") or []
            return not p["metadata"].get("deletionTimestamp") and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conds
            )

        return [p for p in await self.pods(namespace, selector) if ready(p)]

    async def lease_holder(self) -> str:
        lease = await self.admin.get(LEASES, NS, "zeroserve-autoscaler")
        return str(lease["spec"].get("holderIdentity") or "")

    async def set_annotation(self, revision: str, key: str, value: str | None) -> None:
        """Set (None: remove) an annotation of a revision's Deployment."""
        patch = {"metadata": {"annotations": {key: value}}}
        await self.admin.patch(DEPLOYMENTS, "default", revision, patch)

    async def set_route(self, traffic: str) -> None:
        await self.admin.patch(CONFIGMAPS, "default", "route-iris", {"data": {"traffic": traffic}})

    def logs(self, limit: int = 3000) -> str:
        """The tail of every container's log (for a failure's message)."""
        out = []
        for path in sorted(self.workdir.glob("pods/*/*.log")):
            out.append(
                f"--- {path.parent.name}/{path.name}\n{path.read_text(errors='replace')[-limit:]}"
            )
        return "\n".join(out)


async def metric(cluster: Cluster, pod_ip: str, name: str, label: str = "") -> int:
    """The sum of a metric's samples on a pod's ``:9090/metrics`` (only those with a label value
    ``label``, e.g. ``"2xx"``, if given); -1 if the pod does not answer."""
    try:
        async with cluster.kubelet.http.get(f"http://{pod_ip}:9090/metrics") as resp:
            text = await resp.text()
    except OSError:
        return -1
    lines = re.findall(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M)
    return sum(int(float(n)) for labels, n in lines if not label or f'"{label}"' in labels)


PIDFILE = Path("/tmp/zeroserve-k8s-traffic.control-plane.pids")


def kill_leftover_control_plane() -> None:
    """The control plane of a run that was killed (SIGKILL: no teardown) is still running: stop
    it, by the pids that run recorded, if they are still the cached binaries."""
    with contextlib.suppress(OSError, ValueError):
        for pid in [int(p) for p in PIDFILE.read_text().split()]:
            with contextlib.suppress(OSError):
                if b"/zeroserve/k8s/" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)


def record_control_plane(plane: ControlPlane) -> None:
    PIDFILE.write_text(" ".join(map(str, plane.pids)))


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    """The whole node and its control plane, for the duration of the block (module docstring)."""
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(node_network())  # (holds the machine's lock from here)
        kill_leftover_control_plane()
        plane = stack.enter_context(control_plane(GATEWAY))
        record_control_plane(plane)
        stack.callback(PIDFILE.unlink, missing_ok=True)
        workdir = plane.workdir
        stack.enter_context(kube_proxy(plane, "node-1", workdir / "kube-proxy.log"))
        admin = plane.api()
        kubelet = Kubelet(
            admin, network, workdir / "pods", plane.workdir / "certs" / "apiserver.crt"
        )
        kubelet_task = asyncio.create_task(kubelet.run(), name="kubelet")
        timeline = Timeline()
        deployments = Informer(admin, DEPLOYMENTS, "default", label_selector=REVISION_LABEL)
        slices = Informer(admin, ENDPOINTSLICES, "default", label_selector=REVISION_LABEL)
        deployments.add_handler(timeline.on_deployments)
        slices.add_handler(timeline.on_slices)
        try:
            docs = manifests()
            await apply_all(admin, [d for d in docs if d["kind"] == "Namespace"], dry_run=False)
            await apply_all(admin, docs, dry_run=False)
            deployments.start()
            slices.start()
            client_net = await asyncio.to_thread(network.add_pod, "load-client", {})
            c = Cluster(plane, admin, kubelet, network, client_net, timeline, workdir)
            svc = await admin.get(SERVICES, NS, "activator")
            c.activator_url = f"http://{svc['spec']['clusterIP']}:80"

            async def system_ready() -> bool:
                ready = [
                    await c.ready_pods(NS, f"app.kubernetes.io/name={n}")
                    for n in ("activator", "autoscaler")
                ]
                return all(len(r) == 2 for r in ready) and bool(await c.lease_holder())

            try:
                await eventually(
                    system_ready, 120, "2 activators and 2 autoscalers ready, a leader"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{c.logs()}") from None
            yield c
        finally:
            keep = os.environ.get("ZEROSERVE_K8S_LOGS")
            if keep:  # every container's log and kube-proxy's, for a look after the run
                shutil.copytree(
                    workdir, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("etcd")
                )
            kubelet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kubelet_task
            await deployments.stop()
            await slices.stop()
            await admin.close()
