#!/usr/bin/env bash
# The tests against a real control plane: build it once (cached in ~/.cache/zeroserve/k8s;
# niced, one core: tens of minutes on a fresh machine), then run tests/k8s/real_control_plane.py
# and, as root, the end-to-end traffic tests tests/k8s/traffic.py (pods in network namespaces,
# kube-proxy; each prints its numbers: -s). Arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/k8s/build-control-plane.sh >&2
status=0
.venv/bin/pytest -q -p no:cacheprovider --timeout 300 tests/k8s/real_control_plane.py "$@" || status=$?
.venv/bin/pytest -q -s -p no:cacheprovider tests/k8s/traffic.py "$@" || status=$?
exit $status
