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

On exit ``kube-proxy --cleanup`` removes its chains (and at the start, after stopping a
kube-proxy that a killed run left running), and then the ``KUBE-FIREWALL`` chain it leaves
empty in the filter table.
"""

from __future__ import annotations

import contextlib
import os
import signal
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


def _remove_empty_firewall_chain(tool: str) -> None:
    """``KUBE-FIREWALL`` and its jumps, if the chain holds no rule (kube-proxy leaves it so)."""
    rules = subprocess.run(
        [tool, "-S", "KUBE-FIREWALL"], capture_output=True, text=True, check=False
    )
    if rules.returncode != 0 or any(line.startswith("-A") for line in rules.stdout.splitlines()):
        return
    for chain in ("INPUT", "OUTPUT"):
        while (
            subprocess.run(
                [tool, "-D", chain, "-j", "KUBE-FIREWALL"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            pass
    subprocess.run([tool, "-X", "KUBE-FIREWALL"], capture_output=True, check=False)


PIDFILE = Path("/tmp/zeroserve-k8s-traffic.kube-proxy.pid")


def _kill_leftover() -> None:
    """A kube-proxy a killed run left behind would write its rules again: stop it (by the pid
    that run recorded, if that process is still a kube-proxy)."""
    try:
        pid = int(PIDFILE.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        cmdline = b""
    if b"kube-proxy" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)


def cleanup() -> None:
    """Remove every rule kube-proxy writes (idempotent; also what a killed run left)."""
    subprocess.run(
        [str(binary_dir() / "kube-proxy"), "--cleanup"], capture_output=True, check=False
    )
    for tool in ("iptables", "ip6tables"):
        _remove_empty_firewall_chain(tool)


@contextlib.contextmanager
def kube_proxy(plane: ControlPlane, node: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """kube-proxy for ``node`` until the block ends; its rules are removed after, even on error."""
    _kill_leftover()
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
        PIDFILE.write_text(str(proc.pid))
        try:
            yield proc
        finally:
            PIDFILE.unlink(missing_ok=True)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            cleanup()
