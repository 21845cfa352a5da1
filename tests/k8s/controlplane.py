"""A real control plane on loopback for tests: etcd, kube-apiserver, kube-controller-manager.

The binaries come from ``tests/k8s/build-control-plane.sh`` (cached in
``~/.cache/zeroserve/k8s/<version>/``). Authentication is a static token file (an admin token in
``system:masters``); authorization is RBAC, so impersonating a ServiceAccount shows exactly what
its Roles allow. The service-account key is made with openssl. The controller manager runs only
the controllers zeroserve relies on: Deployments → ReplicaSets → Pods, and Services → EndpointSlices.

There is no kubelet and no scheduler: :class:`NodeAgent` plays both for one fake node. It binds
pending pods to it and marks them Running and Ready with an address in 10.244.0.0/24 (the API
server rejects loopback addresses in EndpointSlices), so EndpointSlices fill as in a cluster.
The controller manager also runs the serviceaccount controller: without a ``default``
ServiceAccount the ReplicaSet controller cannot create pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster.kubernetes.api import PODS, AioKubeApi, NotFoundError, Resource

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")
BUILD_SCRIPT = Path(__file__).resolve().parent / "build-control-plane.sh"
NODES = Resource("", "v1", "nodes")
ADMIN_TOKEN = "zeroserve-admin-token"


def binary_dir() -> Path:
    cache = os.environ.get("ZEROSERVE_K8S_CACHE") or str(Path.home() / ".cache/zeroserve/k8s")
    return Path(cache) / K8S_VERSION


def built() -> bool:
    d = binary_dir()
    return all((d / b).exists() for b in ("etcd", "kube-apiserver", "kube-controller-manager"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ControlPlane:
    url: str
    workdir: Path
    admin_kubeconfig: Path
    pids: list[int] = field(default_factory=list)
    """etcd's, kube-apiserver's, kube-controller-manager's."""

    def api(self, impersonate: str | None = None) -> AioKubeApi:
        from kubernetes.aio import client

        cfg = client.Configuration(host=self.url)
        cfg.verify_ssl = False
        cfg.api_key = {"BearerToken": ADMIN_TOKEN}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        api_client = client.ApiClient(cfg)
        if impersonate:
            api_client.set_default_header("Impersonate-User", impersonate)  # type: ignore[no-untyped-call]
        return AioKubeApi(api_client)


def _wait_http(url: str, timeout_s: float) -> None:
    import ssl
    import time
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(request, context=ctx, timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s}s")
        time.sleep(0.2)


@contextlib.contextmanager
def control_plane(address: str = "127.0.0.1") -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver and kube-controller-manager; stop them on exit.

    The API server listens on ``address``: loopback by default. The end-to-end tests
    (``traffic.py``) pass the gateway of the bridge they create, so that pods in their network
    namespaces reach it as the ``kubernetes`` Service (10.96.0.1:443), whose endpoint the API
    server then maintains itself (its default lease reconciler; a loopback address may not be
    an endpoint, so the loopback plane has none).
    """
    bins = binary_dir()
    with tempfile.TemporaryDirectory(prefix="zeroserve-k8s-") as tmp:
        work = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        log = (work / "control-plane.log").open("wb")
        try:
            subprocess.run(
                ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"],
                check=True,
                capture_output=True,
            )
            (work / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
            etcd_client, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
            loopback = address.startswith("127.")
            procs.append(
                subprocess.Popen(
                    [
                        str(bins / "etcd"),
                        f"--data-dir={work / 'etcd'}",
                        f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                        f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                        f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                        f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
            procs.append(
                subprocess.Popen(
                    [
                        str(bins / "kube-apiserver"),
                        f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                        f"--bind-address={address}",
                        f"--secure-port={api_port}",
                        f"--cert-dir={work / 'certs'}",
                        f"--token-auth-file={work / 'tokens.csv'}",
                        "--authorization-mode=RBAC",
                        f"--service-account-key-file={work / 'sa.key'}",
                        f"--service-account-signing-key-file={work / 'sa.key'}",
                        "--service-account-issuer=https://kubernetes.default.svc",
                        "--service-cluster-ip-range=10.96.0.0/16",
                        f"--advertise-address={address}",
                        f"--endpoint-reconciler-type={'none' if loopback else 'lease'}",
                        "--enable-priority-and-fairness=false",
                        # so that a test sees 410 Gone within seconds
                        "--etcd-compaction-interval=2s",
                        "--watch-cache=false",
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
            url = f"https://{address}:{api_port}"
            try:
                _wait_http(f"{url}/readyz", 90)
            except TimeoutError as exc:
                log.flush()
                tail = (work / "control-plane.log").read_text(errors="replace")[-3000:]
                raise TimeoutError(f"{exc}; log:\n{tail}") from exc
            kubeconfig = work / "admin.kubeconfig"
            kubeconfig.write_text(
                "apiVersion: v1\nkind: Config\n"
                f"clusters: [{{name: local, cluster: {{server: '{url}', insecure-skip-tls-verify: true}}}}]\n"
                f"users: [{{name: admin, user: {{token: {ADMIN_TOKEN}}}}}]\n"
                "contexts: [{name: local, context: {cluster: local, user: admin}}]\n"
                "current-context: local\n"
            )
            procs.append(
                subprocess.Popen(
                    [
                        str(bins / "kube-controller-manager"),
                        f"--kubeconfig={kubeconfig}",
                        "--leader-elect=false",
                        "--controllers=deployment,replicaset,endpointslice,serviceaccount,serviceaccount-token",
                        f"--service-account-private-key-file={work / 'sa.key'}",
                        "--bind-address=127.0.0.1",
                        f"--secure-port={_free_port()}",
                        "--concurrent-deployment-syncs=2",
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
            yield ControlPlane(
                url=url, workdir=work, admin_kubeconfig=kubeconfig, pids=[p.pid for p in procs]
            )
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in reversed(procs):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    """Kubelet and scheduler for one fake node: pods become Running and Ready on 10.244.0.x."""

    def __init__(self, api: AioKubeApi, node: str = "agent") -> None:
        self.api = api
        self.node = node
        self._next_ip = 2
        self._ips: dict[tuple[str, str], str] = {}

    async def run(self) -> None:
        await self._ensure_node()
        while True:
            pods = await self.api.list(PODS, None)
            for pod in pods.items:
                await self._reconcile(pod)
            await asyncio.sleep(0.2)

    async def _ensure_node(self) -> None:
        try:
            await self.api.get(NODES, "", self.node)
        except NotFoundError:
            await self.api.create(NODES, "", {"metadata": {"name": self.node}})
        ready = {"type": "Ready", "status": "True", "lastHeartbeatTime": _now()}
        await self.api.patch(
            NODES, "", self.node, {"status": {"conditions": [ready]}}, subresource="status"
        )

    async def _reconcile(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        if meta.get("deletionTimestamp"):
            with contextlib.suppress(NotFoundError):
                await self.api.delete(PODS, key[0], key[1], grace_period_s=0)
            return
        if not spec.get("nodeName"):
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": key[1], "namespace": key[0]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            }
            await self.api.create(Resource("", "v1", f"pods/{key[1]}/binding"), key[0], binding)
            return
        if (pod.get("status") or {}).get("phase") == "Running":
            return
        # Not loopback: EndpointSlice validation rejects 127.0.0.0/8 ("may not be in the loopback
        # range"), so the agent hands out pod-CIDR-like addresses; tests read them, never dial them.
        ip = self._ips.setdefault(key, f"10.244.0.{self._next_ip}")
        self._next_ip += 1
        status = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "127.0.0.1",
            "startTime": _now(),
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": _now()}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
        }
        await self.api.patch(PODS, key[0], key[1], {"status": status}, subresource="status")
