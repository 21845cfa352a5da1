"""Run as ``python -m tests.netns_support`` by tests/test_loadtest_peers.py: it moves itself into a
network namespace of its own (``loadtests.peers.own_network_namespace``), as ``bench_hop
--knative`` does, then binds port 8022 on all interfaces (as Knative's queue-proxy does), reaches
it on loopback and prints its namespace."""

from __future__ import annotations

import os
import socket
import sys

from loadtests import peers


def main() -> int:
    rc = peers.own_network_namespace("tests.netns_support", sys.argv[1:], NETNS_SUPPORT_MARK="on")
    if rc is not None:
        return rc
    with socket.socket() as server:
        server.bind(("0.0.0.0", 8022))  # free here even while the test's namespace holds it
        server.listen()
        socket.create_connection(("127.0.0.1", 8022), timeout=5).close()  # loopback is up
    print(os.readlink("/proc/self/ns/net"), os.environ.get("NETNS_SUPPORT_MARK"), *sys.argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
