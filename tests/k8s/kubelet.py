"""Scheduler and kubelet of one test node whose pods are real processes (issue 25).

:class:`Kubelet` binds every pending pod to its node and runs the pods bound there: each in a
network namespace of its own on the test's bridge (netns.py), with the pod IP it reports; each
container a process started from its ``command``/``args``/``env`` (containers.py maps the image;
runner.py runs it).
It follows a kubelet's rules where the tests can see them:

* **credentials**: a TokenRequest for the pod's ServiceAccount bound to the pod (what a kubelet's
  projected token is: RBAC sees ``system:serviceaccount:<ns>:<name>``, and the token dies with the
  pod), written with the API server's CA as ``token``/``ca.crt``/``namespace`` and as a
  kubeconfig whose server is the ``kubernetes`` Service, 10.96.0.1:443 (through kube-proxy);
  ``KUBECONFIG`` names it, since without a mount namespace a process cannot find the in-cluster
  files at /var/run/secrets;
* **probes**: ``readinessProbe`` and ``livenessProbe`` (httpGet with named or numbered ports and
  headers, tcpSocket, exec), from the host as a kubelet probes: ``initialDelaySeconds``,
  ``periodSeconds``, ``timeoutSeconds``, ``successThreshold``, ``failureThreshold``. A container
  without a readiness probe is ready while it runs; the pod is Ready when all its containers are;
* **restarts**: an exited container is restarted per ``restartPolicy`` (Always, OnFailure, Never),
  the first time at the next PLEG relist (1 s), then after 10 s more, doubling to 5 min
  (CrashLoopBackOff), the back-off reset after 10 min of running; the exit is in the pod's status
  (not ready, ``terminated``) before the restart; a failed liveness probe stops the container
  and the policy restarts it;
* **deletion**: a pod with a ``deletionTimestamp`` gets, per container at once, its ``preStop``
  hook, then SIGTERM, and SIGKILL when its grace period (``deletionGracePeriodSeconds``) ends;
  then its namespace is removed and the pod deleted for good (grace 0). A pod that vanishes from
  the API is killed at once.

Not done: init containers (refused with a reason in the pod's status), volumes, resources,
``securityContext`` (see containers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from cluster.kubernetes.api import PODS, AioKubeApi, ApiError, NotFoundError, Resource
from tests.k8s.containers import environment
from tests.k8s.netns import GATEWAY, KUBERNETES_SERVICE_IP, NodeNetwork, PodNetwork
from tests.k8s.runner import Container, Obj, now, signal_group

log = logging.getLogger("zeroserve.tests.kubelet")

NODES = Resource("", "v1", "nodes")
SERVICES = Resource("", "v1", "services")


class PodWorker:
    """One pod on the node, from its namespace to its final delete."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.spec: Obj = pod.get("spec") or {}
        self.dir = kubelet.workdir / f"{self.namespace}_{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.containers = [Container(self, c) for c in self.spec.get("containers") or []]
        self.stopping = asyncio.Event()
        self.terminated = asyncio.Event()
        self._net: PodNetwork | None = None
        self._services: list[Obj] = []
        self._kubeconfig: Path | None = None
        self._dirty = asyncio.Event()
        self._conditions: dict[str, Obj] = {}
        self._start_time = now()
        self._reason: Obj = {}
        self.task = asyncio.create_task(self._run(), name=f"pod-{self.name}")

    @property
    def net(self) -> PodNetwork:
        assert self._net is not None, "the pod's network is made first"
        return self._net

    @property
    def ip(self) -> str:
        return self.net.ip

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.kubelet.http

    def changed(self) -> None:
        self._dirty.set()

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)

    # --- start and status ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._start()
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self.publish()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod worker failed", extra={"pod": self.name})
            raise

    async def _start(self) -> None:
        api = self.kubelet.api
        services = (await api.list(SERVICES, None)).items
        self._services = [s for s in services if s["metadata"]["namespace"] == self.namespace]
        hosts: dict[str, str] = {}
        for svc in services:
            ip = (svc.get("spec") or {}).get("clusterIP")
            if ip and ip != "None":
                m = svc["metadata"]
                hosts[f"{m['name']}.{m['namespace']}.svc"] = ip
                hosts[f"{m['name']}.{m['namespace']}.svc.cluster.local"] = ip
        self._net = await asyncio.to_thread(self.kubelet.network.add_pod, self.name, hosts)
        self.pod.setdefault("status", {}).update(
            {"podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": GATEWAY}
        )
        if self.spec.get("initContainers"):
            self._reason = {"reason": "InitContainersUnsupported",
                            "message": "this test node does not run init containers"}  # fmt: skip
            self.changed()
            return
        self._kubeconfig = await self._credentials()
        for c in self.containers:
            c.task = asyncio.create_task(c.supervise(), name=f"{self.name}/{c.name}")
        self.changed()

    async def _credentials(self) -> Path | None:
        if self.spec.get("automountServiceAccountToken") is False:
            return None
        sa = self.spec.get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }  # fmt: skip
        token_resource = Resource("", "v1", f"serviceaccounts/{sa}/token")
        granted = await self.kubelet.api.create(token_resource, self.namespace, request)
        secrets = self.dir / "serviceaccount"
        secrets.mkdir(exist_ok=True)
        token = granted["status"]["token"]
        (secrets / "token").write_text(token)
        (secrets / "ca.crt").write_bytes(self.kubelet.ca_file.read_bytes())
        (secrets / "namespace").write_text(self.namespace)
        kubeconfig = secrets / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: in-cluster, cluster: {{server: 'https://{KUBERNETES_SERVICE_IP}:443',"
            f" certificate-authority: '{secrets / 'ca.crt'}'}}}}]\n"
            f"users: [{{name: {sa}, user: {{token: '{token}'}}}}]\n"
            f"contexts: [{{name: in-cluster, context: {{cluster: in-cluster, user: {sa},"
            f" namespace: {self.namespace}}}}}]\n"
            "current-context: in-cluster\n"
        )
        return kubeconfig

    def environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        return environment(
            self.pod,
            container,
            services=self._services,
            kubernetes_service=(KUBERNETES_SERVICE_IP, 443),
            kubeconfig=self._kubeconfig,
        )

    def _condition(self, kind: str, ok: bool) -> Obj:
        status = "True" if ok else "False"
        old = self._conditions.get(kind)
        if old is None or old["status"] != status:
            self._conditions[kind] = {"type": kind, "status": status, "lastTransitionTime": now()}
        return self._conditions[kind]

    def status(self) -> Obj:
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        statuses = [c.status() for c in self.containers]
        done = [c for c in self.containers if "terminated" in c.state]
        phase = (
            "Running"
            if self._net and any("running" in c.state for c in self.containers)
            else "Pending"
        )
        if (
            self.containers
            and len(done) == len(self.containers)
            and (self.stopping.is_set() or self.spec.get("restartPolicy") == "Never")
        ):
            ok = all(c.state["terminated"]["exitCode"] == 0 for c in done)
            phase = "Succeeded" if ok else "Failed"
        status: Obj = {
            "phase": phase,
            "hostIP": GATEWAY,
            "hostIPs": [{"ip": GATEWAY}],
            "startTime": self._start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", self._net is not None),
                self._condition("Initialized", True),
                self._condition("Ready", ready),
                self._condition("ContainersReady", ready),
                self._condition("PodScheduled", True),
            ],
            "containerStatuses": statuses,
            **self._reason,
        }
        if self._net is not None:
            status.update({"podIP": self.ip, "podIPs": [{"ip": self.ip}]})
        return status

    async def publish(self) -> None:
        with contextlib.suppress(NotFoundError):
            await self.kubelet.api.patch(
                PODS, self.namespace, self.name, {"status": self.status()}, subresource="status"
            )

    # --- the end ---------------------------------------------------------------------------

    async def terminate(self, grace_s: float) -> None:
        """The pod was deleted: preStop, SIGTERM, SIGKILL after ``grace_s``; then delete it."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        deadline = asyncio.get_running_loop().time() + grace_s
        await asyncio.gather(*(c.stop(deadline) for c in self.containers))
        await asyncio.gather(*(c.task for c in self.containers if c.task), return_exceptions=True)
        await self.publish()
        await self._finish()
        with contextlib.suppress(NotFoundError):
            await self.kubelet.api.delete(PODS, self.namespace, self.name, grace_period_s=0)
        self.terminated.set()

    async def kill(self) -> None:
        """Gone from the API (or the test ends): SIGKILL everything now."""
        self.stopping.set()
        for c in self.containers:
            if c.proc is not None and c.proc.returncode is None:
                signal_group(c.proc, signal.SIGKILL)
        await asyncio.gather(*(c.task for c in self.containers if c.task), return_exceptions=True)
        await self._finish()
        self.terminated.set()

    async def _finish(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        if self._net is not None:
            await asyncio.to_thread(self.kubelet.network.remove_pod, self._net)


class Kubelet:
    """Scheduler and kubelet for one node: see the module's docstring."""

    def __init__(
        self,
        api: AioKubeApi,
        network: NodeNetwork,
        workdir: Path,
        ca_file: Path,
        node: str = "node-1",
    ) -> None:
        self.api = api
        self.network = network
        self.workdir = workdir
        self.ca_file = ca_file
        self.node = node
        self.pods: dict[str, PodWorker] = {}
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "run() first"
        return self._http

    def worker(self, namespace: str, name: str) -> PodWorker:
        """The live worker of a pod (KeyError if none)."""
        for w in self.pods.values():
            if (w.namespace, w.name) == (namespace, name) and not w.terminated.is_set():
                return w
        raise KeyError(f"{namespace}/{name}")

    async def ensure_node(self) -> None:
        try:
            await self.api.get(NODES, "", self.node)
        except NotFoundError:
            await self.api.create(
                NODES,
                "",
                {"metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}}},
            )
        status = {
            "addresses": [
                {"type": "InternalIP", "address": GATEWAY},
                {"type": "Hostname", "address": self.node},
            ],
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now()}],
        }
        await self.api.patch(NODES, "", self.node, {"status": status}, subresource="status")

    async def run(self) -> None:
        # no connection pool: every probe on a fresh connection, as a kubelet's
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            await self.ensure_node()
            while True:
                pods = await self.api.list(PODS, None)
                seen = set()
                for pod in pods.items:
                    seen.add(pod["metadata"]["uid"])
                    try:
                        await self._reconcile(pod)
                    except (ApiError, NotFoundError) as exc:
                        log.warning(
                            "reconcile failed",
                            extra={"pod": pod["metadata"]["name"], "error": str(exc)},
                        )
                for uid in [u for u in self.pods if u not in seen]:
                    worker = self.pods.pop(uid)
                    if not worker.stopping.is_set():
                        self._spawn(worker.kill())
                await asyncio.sleep(0.2)
        finally:
            await self.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconcile(self, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if not spec.get("nodeName"):
            if meta.get("deletionTimestamp"):
                return
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            }
            await self.api.create(
                Resource("", "v1", f"pods/{meta['name']}/binding"), meta["namespace"], binding
            )
            return
        if spec["nodeName"] != self.node:
            return
        worker = self.pods.get(meta["uid"])
        if meta.get("deletionTimestamp"):
            if worker is None:
                with contextlib.suppress(NotFoundError):
                    await self.api.delete(PODS, meta["namespace"], meta["name"], grace_period_s=0)
            elif not worker.stopping.is_set():
                grace = meta.get(
                    "deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30)
                )
                self._spawn(worker.terminate(float(grace)))
            return
        if worker is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self.pods[meta["uid"]] = PodWorker(self, pod)

    async def close(self) -> None:
        """Kill every pod now and remove its namespace (the end of the test)."""
        workers = list(self.pods.values())
        self.pods.clear()
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
