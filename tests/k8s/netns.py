"""The test node's network: one bridge, and one network namespace per pod on it.

Everything here lives on addresses the tests create and remove:

* the bridge ``zs-br0`` with the node's address ``10.244.0.1/16`` (the gateway of the pod CIDR;
  the e2e control plane's API server listens there too, see ``controlplane.control_plane``);
* per pod, a network namespace ``zs-<n>`` with a veth pair: ``eth0`` inside (the pod IP, in
  10.244.0.0/16) and ``zsv<n>`` on the bridge;
* Service IPs (10.96.0.0/16) are routed from a pod to the node, where kube-proxy's rules translate
  them. A pod has no other route: nothing it sends can leave the bridge.

``ip netns exec`` bind-mounts ``/etc/netns/<namespace>/{hosts,resolv.conf}`` over ``/etc``'s: the
pod's host names (its own and ``<service>.<namespace>.svc``, the stand-in for cluster DNS) and a
resolver that answers nothing (127.0.0.1 in the pod, where nothing listens).

One run at a time per machine (a lock file), and whatever an earlier run left behind (a killed
test cannot clean up) is removed before and after: namespaces with their processes, the bridge,
the hosts files. kube-proxy's own rules are removed by ``kube-proxy --cleanup`` (kubeproxy.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "zs-br0"
GATEWAY = "10.244.0.1"
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR (the API server's)
PREFIX = "zs-"
ETC_NETNS = Path("/etc/netns")
LOCK = Path("/tmp/zeroserve-k8s-traffic.lock")


class NetworkError(RuntimeError):
    """A network command failed; the message has the command and its stderr."""


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def preflight() -> None:
    """Root and the tools, with a message that says what is missing (``make k8s`` installs them)."""
    if os.geteuid() != 0:
        raise NetworkError("the end-to-end Kubernetes tests need root (network namespaces)")
    missing = [t for t in ("ip", "iptables", "ip6tables") if shutil.which(t) is None]
    if missing:
        raise NetworkError(f"missing {missing}: apt-get install iproute2 iptables")


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def kill_namespace(ns: str) -> None:
    """SIGKILL every process left in ``ns``, then delete it and its /etc/netns files."""
    with contextlib.suppress(NetworkError):
        for pid in sh("ip", "netns", "pids", ns).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(NetworkError):
        sh("ip", "netns", "delete", ns)
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)


def remove_all() -> None:
    """Every namespace, veth and file of this module, and the bridge; idempotent."""
    for ns in namespaces():
        kill_namespace(ns)
    for etc in ETC_NETNS.glob(f"{PREFIX}*") if ETC_NETNS.exists() else ():
        shutil.rmtree(etc, ignore_errors=True)
    with contextlib.suppress(NetworkError):
        sh("ip", "link", "delete", BRIDGE)
    with contextlib.suppress(OSError):  # only if empty: it may hold others' namespaces' files
        ETC_NETNS.rmdir()


@dataclass(frozen=True)
class PodNetwork:
    """One pod's network namespace and address."""

    netns: str
    ip: str
    host_veth: str


class NodeNetwork:
    """The bridge, and the pods' namespaces on it. Pod addresses are never reused in a run."""

    def __init__(self) -> None:
        self._next = 0
        self._pool = ipaddress.ip_network(POD_CIDR)

    def add_pod(self, hostname: str, hosts: dict[str, str]) -> PodNetwork:
        """A namespace with ``eth0`` on the bridge; ``hosts`` maps names to addresses."""
        self._next += 1
        n = self._next
        ip = str(self._pool[n + 1])  # .2, .3, ...: .1 is the gateway
        pod = PodNetwork(netns=f"{PREFIX}{n}", ip=ip, host_veth=f"zsv{n}")
        try:
            sh("ip", "netns", "add", pod.netns)
            sh("ip", "link", "add", pod.host_veth, "type", "veth", "peer", "name", "eth0",
               "netns", pod.netns)  # fmt: skip
            sh("ip", "link", "set", pod.host_veth, "master", BRIDGE, "up")
            sh("ip", "-n", pod.netns, "addr", "add", f"{ip}/16", "dev", "eth0")
            sh("ip", "-n", pod.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", pod.netns, "link", "set", "lo", "up")
            sh("ip", "-n", pod.netns, "route", "add", SERVICE_CIDR, "via", GATEWAY)
            etc = ETC_NETNS / pod.netns
            etc.mkdir(parents=True, exist_ok=True)
            lines = ["127.0.0.1 localhost", f"{ip} {hostname}"]
            lines += [f"{addr} {name}" for name, addr in sorted(hosts.items())]
            (etc / "hosts").write_text("\n".join(lines) + "\n")
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        except BaseException:
            kill_namespace(pod.netns)
            raise
        return pod

    def remove_pod(self, pod: PodNetwork) -> None:
        kill_namespace(pod.netns)


@contextlib.contextmanager
def node_network() -> Iterator[NodeNetwork]:
    """The bridge for the duration of the block, alone on this machine; everything removed after."""
    preflight()
    LOCK.touch()
    with LOCK.open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run on this machine finishes first
        remove_all()
        try:
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE)
            sh("ip", "link", "set", BRIDGE, "up")
            # A pod's packet to a Service IP arrives on the bridge and, translated, leaves on it:
            # forwarding on this interface only (the host's other interfaces are left as they are).
            Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1\n")
            yield NodeNetwork()
        finally:
            remove_all()
