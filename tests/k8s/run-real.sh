#!/usr/bin/env bash
# The tests against a real control plane: build it once (cached in ~/.cache/zeroserve/k8s;
# niced, one core: tens of minutes on a fresh machine), then run tests/k8s/real_control_plane.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/k8s/build-control-plane.sh >&2
exec .venv/bin/pytest -q -p no:cacheprovider --timeout 300 tests/k8s/real_control_plane.py "$@"
