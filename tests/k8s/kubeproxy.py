"""The real kube-proxy (iptables mode, built by build-control-plane.sh) for the test node.

It runs on the host, like a node's kube-proxy, and translates Service IPs (10.96.0.0/16) to ready
endpoints in the host's nat table: a pod's packet to a Service IP goes to the bridge gateway (its
only route there, netns.py), is translated in PREROUTING, and goes back out on the bridge.

Flags, and why:

* ``--masquerade-all``: the client pod and the endpoint pod share the bridge, so without it the
  reply would be bridged straight back, skip the host's conntrack and reach the client from the
  pod's own address (a kubenet node sets ``bridge-nf-call-iptables`` for this instead, a
  machine-wide switch this test does not touch);
* ``--conntrack-*=0``, ``--iptables-localhost-nodeports=false``, ``--nodeport-addresses`` the
  gateway: kube-proxy then writes no sysctl (conntrack table sizes and timeouts,
  ``route_localnet``) and no NodePort rule for the host's other addresses.

On exit ``kube-proxy --cleanup`` removes its chains; the empty ``KUBE-FIREWALL`` chain it leaves
in the filter table (a kubelet's, on a real node) is removed too when it was not there before.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.k8s.controlplane import ControlPlane, binary_dir
from tests.k8s.netns import GATEWAY, POD_CIDR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _has_firewall_chain(tool: str) -> bool:
    out = subprocess.run([tool, "-S", "INPUT"], capture_output=True, text=True, check=False)
    return "KUBE-FIREWALL" in out.stdout


def _remove_firewall_chain(tool: str) -> None:
    for chain in ("INPUT", "OUTPUT"):
        while (
            subprocess.run(
                [tool, "-D", chain, "-j", "KUBE-FIREWALL"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            pass
    subprocess.run([tool, "-F", "KUBE-FIREWALL"], capture_output=True, check=False)
    subprocess.run([tool, "-X", "KUBE-FIREWALL"], capture_output=True, check=False)


def cleanup() -> None:
    """Remove every rule kube-proxy writes (idempotent; also what a killed run left)."""
    subprocess.run(
        [str(binary_dir() / "kube-proxy"), "--cleanup"], capture_output=True, check=False
    )


@contextlib.contextmanager
def kube_proxy(plane: ControlPlane, node: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """kube-proxy for ``node`` until the block ends; its rules are removed after, even on error."""
    tools = ("iptables", "ip6tables")
    had_firewall = {t: _has_firewall_chain(t) for t in tools}
    cleanup()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(binary_dir() / "kube-proxy"),
                f"--kubeconfig={plane.admin_kubeconfig}",
                "--proxy-mode=iptables",
                f"--hostname-override={node}",
                f"--cluster-cidr={POD_CIDR}",
                "--masquerade-all",
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-close-wait=0s",
                "--conntrack-tcp-timeout-established=0s",
                "--iptables-localhost-nodeports=false",
                f"--nodeport-addresses={GATEWAY}/32",
                # rules follow endpoint changes within this long (the default 1 s, made explicit)
                "--iptables-min-sync-period=1s",
                f"--metrics-bind-address=127.0.0.1:{_free_port()}",
                f"--healthz-bind-address=127.0.0.1:{_free_port()}",
                "-v=2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            cleanup()
            for tool in tools:
                if not had_firewall[tool]:
                    _remove_firewall_chain(tool)
