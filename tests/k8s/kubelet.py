"""Scheduler and kubelet of one test node whose pods are real processes (issue 25).

:class:`Kubelet` binds every pending pod to its node and runs the pods bound there: each in a
network namespace of its own on the test's bridge (netns.py), with the pod IP it reports; each
container a process started from its ``command``/``args``/``env`` (containers.py maps the image).
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
import os
import signal
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from cluster.kubernetes.api import PODS, AioKubeApi, ApiError, NotFoundError, Resource
from tests.k8s.containers import REPO, ImageError, argv, environment
from tests.k8s.netns import GATEWAY, KUBERNETES_SERVICE_IP, NodeNetwork, PodNetwork

log = logging.getLogger("zeroserve.tests.kubelet")

NODES = Resource("", "v1", "nodes")
SERVICES = Resource("", "v1", "services")
PROBE_USER_AGENT = "kube-probe/1.37"
# A kubelet notices a container's exit when its PLEG relists the runtime's containers, every
# second, and restarts it in the pod sync that follows: the restart comes this long after the
# exit, which is published at once.
RELIST_S = 1.0
Obj = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # start_new_session: the container's process leads its own group, so its children go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Container:
    """One container of a pod: its process, restarts, probes and status."""

    def __init__(self, pod: PodWorker, spec: Obj) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restart_count = 0
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.task: asyncio.Task[None] | None = None
        self.log_path = pod.dir / f"{self.name}.log"

    def status(self) -> Obj:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"zeroserve://{self.proc.pid}" if self.proc else "",
            "ready": self.ready,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.pod.changed()

    async def supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while not self.pod.stopping.is_set():
            try:
                env = self.pod.environment(self.spec)
                cmd = argv(self.spec, env)
            except ImageError as exc:
                self.state = {"waiting": {"reason": "ErrImagePull", "message": str(exc)}}
                self.pod.changed()
                return
            except ValueError as exc:
                self.state = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
                }
                self.pod.changed()
                return
            with self.log_path.open("ab") as out:
                self.proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", self.pod.net.netns, *cmd,
                    env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            started, started_at = loop.time(), now()
            self.state = {"running": {"startedAt": started_at}}
            self.pod.changed()
            probes = [
                asyncio.create_task(self._readiness()),
                asyncio.create_task(self._liveness()),
            ]
            code = await self.proc.wait()
            for p in probes:
                p.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            self.ready = False
            exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
            terminated = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": started_at,
                    "finishedAt": now(),
                }
            }
            self.state = terminated
            await self.pod.publish()  # the exit is in the pod's status before any restart
            policy = self.pod.spec.get("restartPolicy", "Always")
            if (
                self.pod.stopping.is_set()
                or policy == "Never"
                or (policy == "OnFailure" and exit_code == 0)
            ):
                return
            if loop.time() - started >= 600:
                backoff = 0.0
            self.last_state = terminated
            if backoff:
                self.state = {"waiting": {"reason": "CrashLoopBackOff"}}
                self.pod.changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pod.stopping.wait(), RELIST_S + backoff)
            backoff = min(max(2 * backoff, 10.0), 300.0)
            self.restart_count += 1

    async def _readiness(self) -> None:
        probe = self.spec.get("readinessProbe")
        if not probe:
            self._set_ready(True)
            return
        successes = failures = 0
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        while True:
            if await self.pod.probe(self.spec, probe):
                successes, failures = successes + 1, 0
                if successes >= int(probe.get("successThreshold", 1)):
                    self._set_ready(True)
            else:
                successes, failures = 0, failures + 1
                if failures >= int(probe.get("failureThreshold", 3)):
                    self._set_ready(False)
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _liveness(self) -> None:
        probe = self.spec.get("livenessProbe")
        if not probe:
            return
        failures = 0
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        while True:
            failures = 0 if await self.pod.probe(self.spec, probe) else failures + 1
            if failures >= int(probe.get("failureThreshold", 3)):
                log.warning("liveness failed", extra={"pod": self.pod.name, "container": self.name})
                grace = float(self.pod.spec.get("terminationGracePeriodSeconds", 30))
                # stop() waits for the process, and supervise() (which awaits it too) cancels
                # this task once it exits: shield the stop from that.
                await asyncio.shield(self.stop(asyncio.get_running_loop().time() + grace, False))
                return
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def stop(self, deadline: float, pre_stop: bool = True) -> None:
        """preStop (if ``pre_stop``), SIGTERM, SIGKILL at ``deadline`` (loop time)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        loop = asyncio.get_running_loop()
        hook = ((self.spec.get("lifecycle") or {}).get("preStop")) if pre_stop else None
        if hook:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.pod.run_handler(self.spec, hook), deadline - loop.time()
                )
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(0.0, deadline - loop.time()))
        except TimeoutError:
            _signal_group(proc, signal.SIGKILL)
            await proc.wait()


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

    # --- probes and hooks ------------------------------------------------------------------

    def _port(self, container: Mapping[str, Any], port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"container {container['name']}: no port named {port!r}")

    async def _http(
        self, container: Mapping[str, Any], get: Mapping[str, Any], timeout_s: float
    ) -> bool:
        host = get.get("host") or self.ip
        url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{self._port(container, get['port'])}{get.get('path', '/')}"
        headers = {"User-Agent": PROBE_USER_AGENT, "Accept": "*/*"}
        headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.kubelet.http.get(url, headers=headers, timeout=timeout) as resp:
            await resp.read()
            return 200 <= resp.status < 400

    async def run_handler(
        self, container: Mapping[str, Any], handler: Mapping[str, Any], timeout_s: float = 3600
    ) -> bool:
        """A probe's or a lifecycle hook's action; True on success."""
        try:
            if "httpGet" in handler:
                return await self._http(container, handler["httpGet"], timeout_s)
            if "tcpSocket" in handler:
                port = self._port(container, handler["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.ip, port), timeout_s
                )
                writer.close()
                return True
            if "exec" in handler:
                proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", self.net.netns, *handler["exec"]["command"],
                    env=self.environment(container), cwd=REPO,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    return await asyncio.wait_for(proc.wait(), timeout_s) == 0
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
        except (OSError, TimeoutError, aiohttp.ClientError):
            return False
        raise ValueError(f"unsupported handler {sorted(handler)}")

    async def probe(self, container: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
        return await self.run_handler(container, probe, float(probe.get("timeoutSeconds", 1)))

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
                _signal_group(c.proc, signal.SIGKILL)
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
